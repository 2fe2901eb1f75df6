"""SDE-DPM-Solver++(2M) against an independent formulation of its law, and its identity with DDIM at eta = 1."""

import math

import pytest
import torch
from test_samplers import MU, SHAPE, SIGMA, GaussianOracle, _check_gaussian, _error, _law

from ddpm.diffusion import GaussianDiffusion
from ddpm.samplers import (
    ddim_sample,
    dpmpp_2m_sde_sample,
    dpmpp_2m_sde_sample_progressive,
    dpmpp_sample,
    sample,
    space_timesteps,
)
from ddpm.schedules import make_betas


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion(make_betas("linear", 1000))


def _sde_2m_law(diffusion, steps, spacing="uniform", mu=MU, sigma=SIGMA, order=2, eta=1.0):
    """The exact law of SDE-DPM-Solver++(2M) with the oracle, written out from the paper's update independently.

    Every quantity is an affine map of all the randomness w = (x_T, z_1, ..., z_{S-1}) ~ N(0, I): x = M w + c, so
    the output is N(c, M M^T). The data prediction is the Gaussian posterior mean
    D(x) = mu + alpha Sigma (alpha^2 Sigma + sigma^2 I)^{-1} (x - alpha mu); the step is
    x_t = (sigma_t / sigma_s) e^{-eta h} x_s + alpha_t (1 - e^{-(1 + eta) h}) D + sigma_t sqrt(1 - e^{-2 eta h}) z
    with D of order 1
    at the first step and order 2 after (order 1 at the last solver step with fewer than 15 steps), x_0 = D at the
    end. ``order`` 1: every step of order 1 (DDIM with eta = 1).
    """
    D = len(mu)
    eye = torch.eye(D, dtype=torch.float64)
    use = space_timesteps(diffusion.T, steps, spacing, diffusion.alpha_bar)[::-1]
    alpha = [diffusion.alpha_bar[i].item() ** 0.5 for i in use]
    sig = [(1 - a * a) ** 0.5 for a in alpha]
    lam = [math.log(a / s) for a, s in zip(alpha, sig, strict=True)]
    width = D * len(use)  # x_T and one z per step but the last
    M, c = torch.zeros(D, width, dtype=torch.float64), torch.zeros(D, dtype=torch.float64)
    M[:, :D] = eye
    denoised = []
    for k, a in enumerate(alpha):
        G = a * sigma @ torch.linalg.inv(a * a * sigma + sig[k] ** 2 * eye)
        denoised.append((G @ M, mu + G @ (c - a * mu)))
        if k == len(use) - 1:
            MD, cD = denoised[-1]
            return cD, MD @ MD.T
        h = lam[k + 1] - lam[k]
        second_order = order == 2 and k > 0 and not (k == len(use) - 2 and len(use) - 1 < 15)
        w = 1 / (2 * (lam[k] - lam[k - 1]) / h) if second_order else 0.0
        MD = (1 + w) * denoised[-1][0] - w * (denoised[-2][0] if second_order else 0)
        cD = (1 + w) * denoised[-1][1] - w * (denoised[-2][1] if second_order else 0)
        keep, into = sig[k + 1] / sig[k] * math.exp(-eta * h), alpha[k + 1] * (1 - math.exp(-(1 + eta) * h))
        M, c = keep * M + into * MD, keep * c + into * cD
        M[:, D * (k + 1):D * (k + 2)] += sig[k + 1] * math.sqrt(1 - math.exp(-2 * eta * h)) * eye
    raise AssertionError("unreachable")


def test_first_order_sde_is_ddim_with_eta_1_draw_for_draw(diffusion):
    """Order 1 is the ancestral step with beta_tilde on the respaced process (DDIM, eta = 1), with the same draws in
    the same order (x_T, then one z per step but the last), for any spacing and a network's arbitrary output."""
    model = lambda x, t, c: torch.sin(3 * x) + 0.01 * t.view(-1, 1, 1, 1)  # noqa: E731
    for steps, spacing in ((10, "uniform"), (50, "karras"), (7, "lambda")):
        kw = dict(steps=steps, spacing=spacing, dtype=torch.float64, threshold="none")
        a = ddim_sample(model, diffusion, (6, *SHAPE), eta=1.0, generator=torch.Generator().manual_seed(2), **kw)
        b = dpmpp_sample(model, diffusion, (6, *SHAPE), order=1, eta=1.0, generator=torch.Generator().manual_seed(2),
                         **kw)
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("steps,spacing,eta", [(15, "uniform", 1.0), (15, "lambda", 1.0), (25, "karras", 1.0),
                                               (15, "uniform", 0.4)])
def test_sde_2m_samples_follow_the_exact_law_of_their_discretization(diffusion, steps, spacing, eta):
    m, P = _sde_2m_law(diffusion, steps, spacing, eta=eta)
    x = dpmpp_2m_sde_sample(GaussianOracle(diffusion), diffusion, (4000, *SHAPE), steps=steps, spacing=spacing,
                            eta=eta, generator=torch.Generator().manual_seed(5), dtype=torch.float64,
                            threshold="none")
    _check_gaussian(x, m, P)
    if spacing == "uniform" and eta == 1:  # the check tells it from the ODE solver's law on the same steps
        with pytest.raises(AssertionError):
            _check_gaussian(x, *_law("dpmpp-2m", diffusion, steps, spacing))


def test_the_independent_law_at_eta_0_is_the_ode_solvers(diffusion):
    """The bookkeeping above, with no noise, gives the ODE solver's law as the sampler computes it: the two
    formulations agree, so the SDE law checks the same code path with noise added."""
    for steps, spacing in ((15, "uniform"), (25, "karras")):
        m, P = _sde_2m_law(diffusion, steps, spacing, eta=0.0)
        m_ode, P_ode = _law("dpmpp-2m", diffusion, steps, spacing)
        assert torch.allclose(m, m_ode, rtol=1e-9, atol=1e-12) and torch.allclose(P, P_ode, rtol=1e-9, atol=1e-12)


def test_sde_2m_converges_to_the_data_and_beats_first_order(diffusion):
    """With more steps the law approaches the data; at each step count the second-order SDE solver is closer than
    the first-order one (DDIM with eta = 1)."""
    errors = [_error(*_sde_2m_law(diffusion, n, "lambda")) for n in (10, 20, 40)]
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[-1] < 0.2 * errors[0], errors
    first = [_error(*_sde_2m_law(diffusion, n, "lambda", order=1)) for n in (10, 20, 40)]
    assert all(e2 < e1 for e2, e1 in zip(errors, first, strict=True)), (errors, first)


def test_sde_2m_is_stochastic_and_seeded(diffusion):
    model = GaussianOracle(diffusion)
    x_T = torch.randn(8, *SHAPE, generator=torch.Generator().manual_seed(0))
    run = lambda seed: dpmpp_2m_sde_sample(model, diffusion, x_T.shape, steps=10, x_T=x_T,  # noqa: E731
                                           generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(1), run(1)) and not torch.allclose(run(1), run(2))
    steps = list(dpmpp_2m_sde_sample_progressive(model, diffusion, x_T.shape, steps=10, x_T=x_T,
                                                 generator=torch.Generator().manual_seed(1)))
    assert torch.equal(steps[-1].x_prev, steps[-1].pred_x0)  # no noise at the last step: x_0 = D_0
    assert torch.equal(sample(model, diffusion, x_T.shape, sampler="dpmpp-2m-sde", steps=10, x_T=x_T,
                              generator=torch.Generator().manual_seed(1)), run(1))


def test_sde_arguments():
    d = GaussianDiffusion(make_betas("linear", 50))
    with pytest.raises(ValueError, match="order 1 or 2"):
        dpmpp_sample(lambda x, t, c: x, d, (1, *SHAPE), order=3, eta=0.5)
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="eta"):
            dpmpp_2m_sde_sample(lambda x, t, c: x, d, (1, *SHAPE), eta=bad)
