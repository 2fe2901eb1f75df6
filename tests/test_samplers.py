"""Samplers against an analytic oracle, and the exact identities between them."""

import math

import pytest
import torch

from ddpm.diffusion import GaussianDiffusion
from ddpm.likelihood import bits_per_dim
from ddpm.samplers import (
    SAMPLERS,
    SPACINGS,
    SamplerOptions,
    ancestral_sample,
    ancestral_sample_progressive,
    ddim_sample,
    ddim_sample_progressive,
    dpmpp_2m_sample,
    dpmpp_3m_sample,
    dpmpp_sample,
    dynamic_threshold,
    guided,
    respace,
    sample,
    space_timesteps,
)
from ddpm.schedules import make_betas

# Data: x0 ~ N(mu, Sigma) in D = 4 dimensions, stored as images [B, 1, 2, 2], well inside [-1, 1].
MU = torch.tensor([0.2, -0.3, 0.0, 0.1], dtype=torch.float64)
_A = torch.tensor([[0.20, 0.00, 0.00, 0.00], [0.10, 0.15, 0.00, 0.00], [-0.05, 0.05, 0.25, 0.00],
                   [0.00, 0.08, -0.06, 0.12]], dtype=torch.float64)
SIGMA = _A @ _A.T
SHAPE = (1, 2, 2)


class GaussianOracle:
    """The optimal eps-predictor for Gaussian data, in closed form:

    x_t = sqrt(abar) x0 + sqrt(1 - abar) eps is Gaussian with covariance C_t = abar Sigma + (1 - abar) I and
    Cov(eps, x_t) = sqrt(1 - abar) I, so E[eps | x_t] = sqrt(1 - abar) C_t^{-1} (x_t - sqrt(abar) mu).
    """

    def __init__(self, diffusion, mu=MU, sigma=SIGMA):
        self.abar, self.mu, self.sigma = diffusion.alpha_bar, mu, sigma

    def __call__(self, x_t, t, cond=None):
        flat = x_t.flatten(1).double()
        out = torch.empty_like(flat)
        eye = torch.eye(len(self.mu), dtype=torch.float64)
        groups = [t[0]] if bool((t == t[0]).all()) else t.unique()  # samplers use one t per batch
        for ti in groups:
            rows = t == ti
            abar = self.abar[ti]
            cov = abar * self.sigma + (1 - abar) * eye
            centered = flat[rows] - abar.sqrt() * self.mu
            out[rows] = (1 - abar).sqrt() * torch.linalg.solve(cov, centered.T).T
        return out.to(x_t.dtype).view_as(x_t)


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion(make_betas("linear", 1000))


def _moments(x):
    flat = x.flatten(1).double()
    return flat.mean(0), torch.cov(flat.T)


def _check_gaussian(x, mu=MU, sigma=SIGMA):
    n = x.shape[0]
    mean, cov = _moments(x)
    se_mean = (sigma.diag() / n).sqrt()
    assert ((mean - mu).abs() < 5 * se_mean).all(), (mean, mu)
    # covariance entries: standard error sqrt((S_ii S_jj + S_ij^2) / n)
    se_cov = ((sigma.diag()[:, None] * sigma.diag()[None, :] + sigma**2) / n).sqrt()
    assert ((cov - sigma).abs() < 5 * se_cov + 2e-4).all(), (cov, sigma)


def test_ancestral_sampler_reproduces_the_data_distribution(diffusion):
    n = 4000
    g = torch.Generator().manual_seed(0)
    x = ancestral_sample(GaussianOracle(diffusion), diffusion, (n, *SHAPE), generator=g, dtype=torch.float64)
    _check_gaussian(x)


def _ddim_output_moments(diffusion, steps, mu=MU, sigma=SIGMA):
    """The exact mean and covariance of DDIM(eta=0) with the oracle, from x_T ~ N(0, I), by linear algebra.

    With the oracle each DDIM step is affine in x, x_prev = A x + b, so the output is Gaussian with
    moments propagated step by step (m <- A m + b, P <- A P A^T). An independent formulation of the
    sampler: no clipping, no GaussianDiffusion coefficients, only alpha_bar on the chosen timesteps.
    """
    D = len(mu)
    eye = torch.eye(D, dtype=torch.float64)
    use = space_timesteps(diffusion.T, steps)
    abar = [diffusion.alpha_bar[i].item() for i in use]
    m, P = torch.zeros(D, dtype=torch.float64), eye.clone()
    for k in range(len(use) - 1, -1, -1):
        a, a_prev = abar[k], (abar[k - 1] if k > 0 else 1.0)
        C_inv = torch.linalg.inv(a * sigma + (1 - a) * eye)
        E = math.sqrt(1 - a) * C_inv  # eps_hat = E (x - sqrt(a) mu)
        X = (eye - math.sqrt(1 - a) * E) / math.sqrt(a)  # x0_hat = X x + sqrt(1 - a) E sqrt(a) mu / sqrt(a)
        A = math.sqrt(a_prev) * X + math.sqrt(1 - a_prev) * E
        b = (math.sqrt(a_prev) * math.sqrt(1 - a) / math.sqrt(a) * E - math.sqrt(1 - a_prev) * E) @ (math.sqrt(a) * mu)
        m, P = A @ m + b, A @ P @ A.T
    return m, P


def test_ddim_reproduces_the_data_distribution(diffusion):
    """DDIM (eta=0) with the oracle: over all 1000 steps it reproduces the data's mean and covariance.

    With 50 steps the deterministic first-order update has a known discretization bias (for this data the
    variance comes out ~20% low); the sampler must match that exactly-computed 50-step distribution
    within statistical tolerance, and stay within 30% of the data covariance.
    """
    n = 4000
    x = ddim_sample(GaussianOracle(diffusion), diffusion, (n, *SHAPE), steps=1000,
                    generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    _check_gaussian(x)
    x50 = ddim_sample(GaussianOracle(diffusion), diffusion, (n, *SHAPE), steps=50, eta=0.0,
                      generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    m50, P50 = _ddim_output_moments(diffusion, 50)
    _check_gaussian(x50, m50, P50)
    assert torch.allclose(m50, MU, atol=0.02)
    ratio = P50.diag() / SIGMA.diag()
    assert ((ratio > 0.7) & (ratio < 1.0)).all(), ratio


def test_the_oracle_check_has_power(diffusion):
    """A slightly wrong model (its data covariance 1.3x too large) is caught by the same check."""
    wrong = GaussianOracle(diffusion, sigma=1.3 * SIGMA)
    x = ancestral_sample(wrong, diffusion, (4000, *SHAPE), steps=200, generator=torch.Generator().manual_seed(1),
                         dtype=torch.float64)
    with pytest.raises(AssertionError):
        _check_gaussian(x)


def test_bits_per_dim_of_the_oracle_is_close_to_and_above_the_true_entropy(diffusion):
    """The bound L of Eq. 5 for the optimal model is a little above -log P(x0) of the discretized data.

    D = 64 (8x8 images) so that the per-image noise of the one-sample KL and decoder terms averages out.
    """
    g = torch.Generator().manual_seed(2)
    n, D = 300, 64
    idx = torch.arange(D, dtype=torch.float64)
    std = 0.12 + 0.06 * torch.rand(D, generator=g, dtype=torch.float64)
    sigma = std[:, None] * std[None, :] * 0.6 ** (idx[:, None] - idx[None, :]).abs()  # AR(1) correlations
    mu = 0.2 * torch.rand(D, generator=g, dtype=torch.float64) - 0.1  # |mu| + 5 std < 1: no clipping
    x = torch.distributions.MultivariateNormal(mu, sigma).sample((n,))
    x0 = ((x.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1  # 8-bit data in [-1, 1]
    oracle = GaussianOracle(diffusion, mu, sigma)
    result = bits_per_dim(oracle, diffusion, x0.view(n, 1, 8, 8), generator=g)
    # true -log P(x0) per image: the Gaussian density times the bin volume (2/255)^D (the density is smooth
    # on the bin scale: std >= 0.12 vs a bin of 0.008), in bits/dim
    nll_true = -(torch.distributions.MultivariateNormal(mu, sigma).log_prob(x0) + D * math.log(2 / 255))
    nll_true = nll_true / (D * math.log(2))
    gap = result["total"] - nll_true
    se = gap.std().item() / math.sqrt(n)
    assert (result["terms"][:, 1:] >= -1e-12).all()  # every KL is non-negative
    # the bound is above the true NLL (paired comparison on the same images), by more than its noise ...
    assert gap.mean().item() > 3 * se, (gap.mean(), se)
    # ... and close to it: within 0.15 bits/dim of an entropy of ~5 bits/dim
    assert gap.mean().item() < 0.15, gap.mean()
    assert 4 < nll_true.mean().item() < 7
    assert result["prior"].mean().item() < 1e-4


def test_ddim_eta1_over_all_steps_is_the_ancestral_sampler():
    d = GaussianDiffusion(make_betas("linear", 100))
    w = torch.randn(1, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))

    def model(x, t, cond):  # an arbitrary smooth, t-dependent "network"
        return torch.tanh(w * x + t.view(-1, 1, 1, 1) / 100)

    shape = (5, 3, 4, 4)
    a = ancestral_sample(model, d, shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    b = ddim_sample(model, d, shape, steps=100, eta=1.0, generator=torch.Generator().manual_seed(9),
                    dtype=torch.float64)
    assert torch.allclose(a, b, atol=1e-10)
    c = ddim_sample(model, d, shape, steps=100, eta=0.0, generator=torch.Generator().manual_seed(9),
                    dtype=torch.float64)
    assert not torch.allclose(a, c, atol=1e-3)


@pytest.mark.parametrize("steps", [100, 10])
def test_ddim_eta1_is_ancestral_with_beta_tilde_step_by_step_not_with_beta(steps):
    """DDIM's sigma_t(eta = 1)^2 = (1 - abar_{t-1}) / (1 - abar_t) (1 - abar_t / abar_{t-1}) is beta_tilde_t of the
    process it runs on, and its mean sqrt(abar_{t-1}) x0 + sqrt(1 - abar_{t-1} - sigma_t^2) eps is then mu_tilde(x_t,
    x0) (Eq. 7): with the same noise, every step of DDIM(eta = 1) is the ancestral step with variance
    "fixed_small", on all T steps and on a respaced process alike. No eta gives "fixed_large" (beta_t /
    beta_tilde_t = (1 - abar_t) / (1 - abar_{t-1}) changes with t): that sampler differs."""
    d = GaussianDiffusion(make_betas("linear", 100))
    w = torch.randn(1, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    model = lambda x, t, cond: torch.tanh(w * x + t.view(-1, 1, 1, 1) / 100)  # noqa: E731
    run = lambda fn, **kw: list(fn(model, d, (5, 3, 4, 4), steps=steps, dtype=torch.float64,  # noqa: E731
                                   generator=torch.Generator().manual_seed(9), **kw))
    ddim, small = run(ddim_sample_progressive, eta=1.0), run(ancestral_sample_progressive)
    large = run(ancestral_sample_progressive, variance="fixed_large")
    for a, b in zip(ddim, small, strict=True):
        assert a.t == b.t
        torch.testing.assert_close(a.pred_x0, b.pred_x0, rtol=0, atol=1e-10)
        torch.testing.assert_close(a.x_prev, b.x_prev, rtol=0, atol=1e-10)
    assert (ddim[-1].x_prev - large[-1].x_prev).abs().max() > 1e-3


def test_ddim_eta0_is_deterministic_given_x_T():
    d = GaussianDiffusion(make_betas("cosine", 200))
    model = GaussianOracle(d)
    x_T = torch.randn(8, *SHAPE, dtype=torch.float64)
    a = ddim_sample(model, d, x_T.shape, steps=20, x_T=x_T, generator=torch.Generator().manual_seed(1),
                    dtype=torch.float64)
    b = ddim_sample(model, d, x_T.shape, steps=20, x_T=x_T, generator=torch.Generator().manual_seed(2),
                    dtype=torch.float64)
    assert torch.equal(a, b)


def test_same_seed_same_images_and_no_noise_at_the_last_step(diffusion):
    model = GaussianOracle(diffusion)
    runs = [list(ancestral_sample_progressive(model, diffusion, (3, *SHAPE), generator=torch.Generator().manual_seed(5),
                                              steps=30)) for _ in range(2)]
    assert all(torch.equal(a.x_prev, b.x_prev) for a, b in zip(*runs, strict=True))
    steps = runs[0]
    # Step.t is the original index of x_t (respaced: 30 of the 1000), from T-1 down to 0
    assert [s.t for s in steps] == sorted(space_timesteps(diffusion.T, 30), reverse=True)
    assert steps[0].t == diffusion.T - 1 and steps[-1].t == 0
    # each step starts where the previous one ended
    assert all(torch.equal(a.x_prev, b.x_t) for a, b in zip(steps[:-1], steps[1:], strict=True))
    last = steps[-1]
    assert torch.equal(last.x_prev, last.pred_x0)  # t = 0: the mean, which is pred_x0 itself
    other = ancestral_sample(model, diffusion, (3, *SHAPE), generator=torch.Generator().manual_seed(6), steps=30)
    assert not torch.equal(other, last.x_prev)


def test_progressive_yields_pred_x0_for_every_step(diffusion):
    steps = list(ddim_sample_progressive(GaussianOracle(diffusion), diffusion, (2, *SHAPE), steps=10))
    assert len(steps) == 10 and all(s.pred_x0.shape == (2, *SHAPE) for s in steps)


def test_space_timesteps_and_respace(diffusion):
    assert space_timesteps(1000, 1000) == list(range(1000))
    use = space_timesteps(1000, 50)
    assert len(use) == 50 and use[0] == 0 and use[-1] == 999
    with pytest.raises(ValueError, match="between 1 and T=1000"):
        space_timesteps(1000, 0)
    r = respace(diffusion, 50)
    assert r.T == 50 and r.timestep_map.tolist() == use
    # q(x_tau | x0) is unchanged: alpha_bar on the subsequence is kept, betas recomputed from it
    assert torch.allclose(r.alpha_bar, diffusion.alpha_bar[use], rtol=1e-12)
    assert r.betas[1].item() == pytest.approx(1 - (diffusion.alpha_bar[use[1]] / diffusion.alpha_bar[use[0]]).item())
    full = respace(diffusion, 1000)
    assert torch.allclose(full.betas, diffusion.betas, rtol=1e-9)


def test_respaced_ancestral_sampler_calls_the_model_with_original_timesteps(diffusion):
    seen = []

    def model(x, t, cond):
        seen.append(t[0].item())
        return torch.zeros_like(x)

    ancestral_sample(model, diffusion, (1, *SHAPE), steps=5)
    assert seen == [999, 749, 500, 250, 0]  # space_timesteps(1000, 5), last to first


def test_classifier_free_guidance_formula():
    calls = []

    def model(x, t, cond):
        calls.append(cond)
        return torch.full_like(x, 1.0 if cond is None else 3.0)

    x, t = torch.zeros(2, 1, 1, 1), torch.zeros(2, dtype=torch.long)
    assert guided(model, None) is model and guided(model, 1.0) is model
    out = guided(model, 4.0)(x, t, torch.tensor([1, 2]))
    assert torch.allclose(out, torch.full_like(x, 1.0 + 4.0 * (3.0 - 1.0)))  # eps_u + s (eps_c - eps_u)
    assert guided(model, 0.0)(x, t, "c").eq(1.0).all()  # s = 0: unconditional
    calls.clear()
    guided(model, 3.0)(x, t, None)  # nothing to guide towards: one unconditional call
    assert calls == [None]


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp-2m"])
def test_guidance_moves_an_oracle_mixture_towards_its_class(sampler):
    """With two classes of Gaussian data, guidance scale > 1 pushes samples further towards the class mean."""
    d = GaussianDiffusion(make_betas("linear", 1000))
    sigma = 0.04 * torch.eye(4, dtype=torch.float64)
    means = {0: MU, 1: -MU}
    cond_oracles = {k: GaussianOracle(d, m, sigma) for k, m in means.items()}

    def model(x, t, cond):
        if cond is None:  # the unconditional oracle of a 50/50 mixture is not Gaussian; use the midpoint class
            return GaussianOracle(d, torch.zeros(4, dtype=torch.float64), sigma + torch.outer(MU, MU))(x, t)
        return cond_oracles[int(cond[0])](x, t)

    cond = torch.zeros(2000, dtype=torch.long)
    plain = sample(model, d, (2000, *SHAPE), cond, sampler=sampler, steps=30,
                   generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    strong = sample(model, d, (2000, *SHAPE), cond, sampler=sampler, steps=30, guidance_scale=3.0,
                    generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    proj = lambda x: (x.flatten(1) @ MU).mean().item()  # noqa: E731
    assert proj(strong) > proj(plain) > 0.5 * (MU @ MU).item()



# ------------------------------------------------------------------ DPM-Solver++, spacings, thresholding
def _law(sampler, diffusion, steps, spacing="uniform", model=None, **kwargs):
    """The exact output law (mean [D], covariance [D, D]) of a deterministic sampler with the oracle.

    Without thresholding the sampler is affine in x_T, x_0 = M x_T + c, so running it on x_T = 0 and on the D unit
    vectors gives c and M, and x_T ~ N(0, I) gives N(c, M M^T): the sampler's own law, to float64 rounding.
    """
    D = len(MU)
    probe = torch.cat([torch.zeros(1, D), torch.eye(D)]).double().view(D + 1, *SHAPE)
    y = sample(model or GaussianOracle(diffusion), diffusion, probe.shape, sampler=sampler, steps=steps,
               spacing=spacing, x_T=probe, dtype=torch.float64, threshold="none", **kwargs).flatten(1)
    M = (y[1:] - y[0]).T
    return y[0], M @ M.T


def _error(m, P):
    """How far a law is from the data: |mean - mu| + |cov - Sigma|_F."""
    return ((m - MU).norm() + (P - SIGMA).norm()).item()


def _dpmpp_2m_output_moments(diffusion, steps, spacing, mu=MU, sigma=SIGMA):
    """The exact law of DPM-Solver++(2M) with the oracle, from Algorithm 2 of Lu et al. written out independently.

    The data prediction is the Gaussian posterior mean D(x) = mu + alpha Sigma C^{-1} (x - alpha mu) (not the eps
    oracle); x and every D are tracked as affine maps of x_T (x = M x_T + c). Steps: first order, then second
    order, the last step into the last timestep at first order when there are fewer than 15 steps
    (lower_order_final), then x_0 = D at that last timestep.
    """
    D = len(mu)
    eye = torch.eye(D, dtype=torch.float64)
    use = space_timesteps(diffusion.T, steps, spacing, diffusion.alpha_bar)[::-1]  # from T-1 down
    alpha = [diffusion.alpha_bar[i].item() ** 0.5 for i in use]
    sig = [(1 - a * a) ** 0.5 for a in alpha]
    lam = [math.log(a / s) for a, s in zip(alpha, sig, strict=True)]
    M, c = eye.clone(), torch.zeros(D, dtype=torch.float64)
    denoised = []  # (M_D, c_D) at each visited timestep
    for k, a in enumerate(alpha):
        G = a * sigma @ torch.linalg.inv(a * a * sigma + sig[k] ** 2 * eye)
        denoised.append((G @ M, mu + G @ (c - a * mu)))
        if k == len(use) - 1:
            return denoised[-1][1], denoised[-1][0] @ denoised[-1][0].T
        h = lam[k + 1] - lam[k]
        second_order = k > 0 and not (k == len(use) - 2 and len(use) - 1 < 15)
        w = 1 / (2 * (lam[k] - lam[k - 1]) / h) if second_order else 0.0  # 1 / (2 r)
        MD = (1 + w) * denoised[-1][0] - w * (denoised[-2][0] if second_order else 0)
        cD = (1 + w) * denoised[-1][1] - w * (denoised[-2][1] if second_order else 0)
        coef = -alpha[k + 1] * (math.exp(-h) - 1)
        M, c = sig[k + 1] / sig[k] * M + coef * MD, sig[k + 1] / sig[k] * c + coef * cD
    raise AssertionError("unreachable")


@pytest.mark.parametrize("steps,spacing", [(15, "uniform"), (15, "lambda"), (25, "karras"), (2, "uniform")])
def test_dpmpp_2m_reproduces_the_exact_law_of_its_discretization(diffusion, steps, spacing):
    m, P = _dpmpp_2m_output_moments(diffusion, steps, spacing)
    m_s, P_s = _law("dpmpp-2m", diffusion, steps, spacing)
    assert torch.allclose(m_s, m, rtol=1e-9, atol=1e-12) and torch.allclose(P_s, P, rtol=1e-9, atol=1e-12)


def test_dpmpp_2m_samples_follow_that_law_and_beat_ddim_per_model_call(diffusion):
    """Random x_T, default clipping: the samples match the exact 15-step law, which is closer to the data than
    DDIM's after 50 steps (lambda spacing; the uniform one gives a single long last step in lambda here)."""
    x = dpmpp_2m_sample(GaussianOracle(diffusion), diffusion, (4000, *SHAPE), steps=15, spacing="lambda",
                        generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    m, P = _dpmpp_2m_output_moments(diffusion, 15, "lambda")
    _check_gaussian(x, m, P)
    assert _error(m, P) < 0.5 * _error(*_law("ddim", diffusion, 50))


def test_convergence_order_dpmpp_vs_ddim(diffusion):
    """Doubling the steps divides the error to the data by ~4 for 2M (second order), ~2 for DDIM (first order).

    Karras spacing, 20 -> 40 -> 80 steps (measured: 2M 3.8, 3.9; DDIM 1.86, 1.89). Beyond ~100 steps the error
    reaches its floor (x_T ~ N(0, I) is not exactly q(x_T), the last step denoises from t = 0, and near t = 0
    the spacing runs out of distinct indices), so the ratios are measured below that.
    """
    steps = (20, 40, 80)
    err = {s: [_error(*_law(s, diffusion, n, "karras")) for n in steps] for s in ("ddim", "dpmpp-2m", "dpmpp-3m")}
    ratio = {s: [e[k] / e[k + 1] for k in range(len(steps) - 1)] for s, e in err.items()}
    assert all(r > 3.0 for r in ratio["dpmpp-2m"]), ratio
    assert all(1.6 < r < 2.6 for r in ratio["ddim"]), ratio
    # 3M converges at least as fast as 2M: smaller errors, and a larger first ratio (at 80 steps both near the floor)
    assert all(e3 <= e2 for e3, e2 in zip(err["dpmpp-3m"], err["dpmpp-2m"], strict=True)), err
    assert ratio["dpmpp-3m"][0] >= ratio["dpmpp-2m"][0], ratio


def test_dpmpp_first_order_is_ddim_and_2m_approaches_ddim_with_one_step_per_timestep():
    """Order 1 is DDIM (eta = 0) exactly, also with one step per timestep; so are 2M and 3M with <= 2 steps (first
    order, then the final denoise). With one step per timestep 2M agrees with DDIM up to DDIM's own
    first-order error: their difference halves when T doubles (measured 0.040, 0.022, 0.012 for T = 100, 200,
    400, against a data std of ~0.27)."""
    gap = []
    for T in (100, 200, 400):
        d = GaussianDiffusion(make_betas("linear", T))
        model = GaussianOracle(d)
        x_T = torch.randn(200, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(T))
        ddim = ddim_sample(model, d, x_T.shape, steps=T, x_T=x_T, dtype=torch.float64)
        first = dpmpp_sample(model, d, x_T.shape, order=1, steps=T, x_T=x_T, dtype=torch.float64)
        assert torch.allclose(first, ddim, rtol=0, atol=1e-12)
        gap.append((dpmpp_2m_sample(model, d, x_T.shape, steps=T, x_T=x_T, dtype=torch.float64) - ddim).abs().max())
        for n in (1, 2):
            ddim_n = ddim_sample(model, d, x_T.shape, steps=n, x_T=x_T, dtype=torch.float64)
            for fn in (dpmpp_2m_sample, dpmpp_3m_sample):
                assert torch.allclose(fn(model, d, x_T.shape, steps=n, x_T=x_T, dtype=torch.float64), ddim_n,
                                      rtol=0, atol=1e-12)
    assert all(1.6 < a / b < 2.6 for a, b in zip(gap[:-1], gap[1:], strict=True)), gap
    assert gap[-1] < 0.02


@pytest.mark.parametrize("sampler", ["dpmpp-2m", "dpmpp-3m", "ddim"])
def test_samplers_work_on_eps_x0_and_v_models_alike(sampler):
    betas = make_betas("cosine", 200)
    d_eps = GaussianDiffusion(betas)
    eps_model = GaussianOracle(d_eps)

    def x0_model(x, t, cond=None):
        return d_eps.x0_from_eps(x, t, eps_model(x, t))

    def v_model(x, t, cond=None):
        eps = eps_model(x, t)
        return d_eps.v_from_x0_eps(d_eps.x0_from_eps(x, t, eps), t, eps)

    x_T = torch.randn(50, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    outs = [sample(m, GaussianDiffusion(betas, prediction=p), x_T.shape, sampler=sampler, steps=12, x_T=x_T,
                   dtype=torch.float64) for p, m in (("eps", eps_model), ("x0", x0_model), ("v", v_model))]
    assert torch.allclose(outs[0], outs[1], atol=1e-9) and torch.allclose(outs[0], outs[2], atol=1e-9)


def test_dpmpp_on_a_zero_terminal_snr_v_model():
    """alpha_bar_T = 0 (lambda_T = -inf, h = inf): the first step is x_t = sigma_t x_T + alpha_t D_0, and the
    multistep corrections through lambda_T vanish (r = inf); the samples stay finite. Spacing in lambda needs a
    finite lambda_T."""
    d = GaussianDiffusion(make_betas("linear", 100, zero_terminal_snr=True), prediction="v")
    x = dpmpp_3m_sample(lambda x, t, c: 0.1 * x, d, (4, *SHAPE), steps=10, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(x).all()
    with pytest.raises(ValueError, match="zero-terminal-SNR"):
        space_timesteps(100, 10, "lambda", d.alpha_bar)


def _lambda(abar):
    return 0.5 * torch.log(abar / (1 - abar))


def test_spacings_give_distinct_sorted_indices_including_T_minus_1(diffusion):
    abar = diffusion.alpha_bar
    for spacing in SPACINGS:
        for steps in (1, 2, 7, 50, 300, 999, 1000):
            use = space_timesteps(1000, steps, spacing, abar)
            assert len(use) == steps and use == sorted(set(use)) and use[-1] == 999, (spacing, steps)
            assert 0 <= use[0] and (steps == 1 or use[0] == 0)
    # uniform is unchanged: round(i (T - 1) / (S - 1)), Python's round (832.5 -> 832)
    assert space_timesteps(1000, 7) == [0, 166, 333, 500, 666, 832, 999]
    with pytest.raises(ValueError, match="unknown spacing 'cosine'; expected one of: uniform, lambda, karras"):
        space_timesteps(1000, 10, "cosine", abar)
    with pytest.raises(ValueError, match="needs the schedule's alpha_bar"):
        space_timesteps(1000, 10, "lambda")
    with pytest.raises(ValueError, match="unknown spacing"):
        ddim_sample(GaussianOracle(diffusion), diffusion, (1, *SHAPE), steps=1000, spacing="cosine")


def _nearest(lam, target, i):
    """Index i is the nearest to the target in lambda among its neighbours (i.e. rounding, lambda is monotone)."""
    neighbours = [j for j in (i - 1, i + 1) if 0 <= j < len(lam)]
    return all((lam[i] - target).abs() <= (lam[j] - target).abs() for j in neighbours)


@pytest.mark.parametrize("steps", [10, 25])
def test_lambda_and_karras_spacings_follow_their_formulas_up_to_rounding(diffusion, steps):
    lam = _lambda(diffusion.alpha_bar)
    k = torch.arange(steps, dtype=torch.float64) / (steps - 1)
    use = space_timesteps(1000, steps, "lambda", diffusion.alpha_bar)[::-1]  # from T-1 down
    targets = lam[999] + k * (lam[0] - lam[999])  # uniform in lambda
    assert all(_nearest(lam, tgt, i) for tgt, i in zip(targets, use, strict=True))
    assert (lam[use].diff() - (lam[0] - lam[999]) / (steps - 1)).abs().max() < 0.35  # a uniform grid, up to rounding
    sigma = torch.exp(-lam)  # = sqrt((1 - abar) / abar)
    rho = 7.0
    s_max, s_min = sigma[999] ** (1 / rho), sigma[0] ** (1 / rho)
    karras = (s_max + k * (s_min - s_max)) ** rho  # Karras et al. 2022, Eq. 5
    use = space_timesteps(1000, steps, "karras", diffusion.alpha_bar)[::-1]
    assert all(_nearest(lam, -torch.log(s), i) for s, i in zip(karras, use, strict=True))


def test_respace_with_a_spacing_calls_the_model_at_those_timesteps(diffusion):
    seen = []

    def model(x, t, cond):
        seen.append(t[0].item())
        return torch.zeros_like(x)

    dpmpp_2m_sample(model, diffusion, (1, *SHAPE), steps=12, spacing="karras")
    assert seen == space_timesteps(1000, 12, "karras", diffusion.alpha_bar)[::-1]
    assert respace(diffusion, 12, "karras").timestep_map.tolist() == seen[::-1]


def test_dynamic_thresholding():
    g = torch.Generator().manual_seed(0)
    x = 3 * torch.randn(6, 3, 8, 8, generator=g)
    out = dynamic_threshold(x)
    assert out.abs().max() <= 1 and torch.isfinite(out).all()
    inside = torch.rand(4, 1, 5, 5, generator=g) * 2 - 1
    assert torch.equal(dynamic_threshold(inside), inside)  # s = max(percentile, 1) = 1: clamp to [-1, 1], / 1
    # per image: one outlier pixel scales its own image (by s = its percentile), not its neighbour in the batch
    pair = (torch.rand(2, 1, 4, 4, generator=g) - 0.5)
    pair[0, 0, 1, 2] = 3.0
    out = dynamic_threshold(pair, 0.995)
    s = torch.quantile(pair[0].abs().flatten(), 0.995)
    assert 1 < s < 3
    assert torch.allclose(out[0], pair[0].clamp(-s, s) / s) and out[0, 0, 1, 2] == 1
    assert torch.equal(out[1], pair[1])
    assert torch.allclose(dynamic_threshold(pair, 1.0)[0], pair[0] / 3)  # p = 1: s = max |x0|
    with pytest.raises(ValueError, match="percentile"):
        dynamic_threshold(pair, 0.0)


def _wild_x0_model(x, t, cond=None):
    """An x0-predicting "network" whose predictions go far outside [-1, 1]."""
    return 4 * torch.tanh(x) + 0.5


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_threshold_modes_in_every_sampler(sampler):
    d = GaussianDiffusion(make_betas("linear", 100), prediction="x0")
    run = lambda **kw: list(sample(_wild_x0_model, d, (3, *SHAPE), sampler=sampler, steps=10, progressive=True,  # noqa: E731
                                   generator=torch.Generator().manual_seed(1), **kw))
    default, clip, unset = run(), run(threshold="clip"), run(threshold=None)
    dynamic, none = run(threshold="dynamic"), run(threshold="none")
    # the default is plain clipping, bit for bit (threshold=None means the default)
    for steps in (clip, unset):
        assert all(torch.equal(a.x_prev, b.x_prev) for a, b in zip(default, steps, strict=True))
    assert all(s.pred_x0.abs().max() <= 1 for s in dynamic + clip)
    assert max(s.pred_x0.abs().max() for s in none) > 2
    assert not torch.allclose(dynamic[-1].x_prev, clip[-1].x_prev)
    # with predictions inside [-1, 1] dynamic thresholding changes nothing (for the ancestral sampler this also
    # pins its own posterior step against GaussianDiffusion.p_sample, which "none" uses)
    tame = lambda x, t, c=None: 0.5 * _wild_x0_model(x, t) / 4.5  # noqa: E731
    a, b = (sample(tame, d, (3, *SHAPE), sampler=sampler, steps=10, threshold=th,
                   generator=torch.Generator().manual_seed(1)) for th in ("dynamic", "none"))
    assert torch.equal(a, b)


def test_threshold_arguments():
    assert SamplerOptions().threshold == "clip" and SamplerOptions(threshold=None).threshold == "clip"
    assert SamplerOptions(threshold="dynamic").threshold == "dynamic"
    with pytest.raises(ValueError, match="unknown threshold 'static'; expected one of: clip, dynamic, none"):
        SamplerOptions(threshold="static")
    with pytest.raises(ValueError, match="unknown threshold 'static'"):
        ddim_sample_progressive(lambda x, t, c: x, GaussianDiffusion(make_betas("linear", 50)), (1, *SHAPE),
                                steps=5, threshold="static")  # raised at the call, before any step


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_an_unknown_keyword_is_a_type_error_at_the_call(diffusion, sampler):
    """The shared keywords travel as SamplerOptions; anything else (a typo, a removed name, another sampler's own
    parameter) is a TypeError, raised when the sampler is called, not at its first step."""
    from ddpm.samplers import _PROGRESSIVE

    model = GaussianOracle(diffusion)
    other = {"ancestral": "eta", "ddim": "variance", "dpmpp-2m": "variance", "dpmpp-3m": "variance",
             "dpmpp-2m-sde": "variance"}[sampler]
    for bad in ({"stpes": 5}, {"clip_denoised": False}, {other: 0.0}):
        with pytest.raises(TypeError, match=f"unexpected keyword argument '{next(iter(bad))}'"):
            _PROGRESSIVE[sampler](model, diffusion, (1, *SHAPE), **bad)  # not iterated
        with pytest.raises(TypeError, match="unexpected keyword argument"):
            sample(model, diffusion, (1, *SHAPE), sampler=sampler, steps=5, **bad)
    with pytest.raises(TypeError, match="use threshold="):
        sample(model, diffusion, (1, *SHAPE), sampler=sampler, clip_denoised=True)
    for fn in (ancestral_sample, ddim_sample, dpmpp_sample, dpmpp_2m_sample, dpmpp_3m_sample):
        with pytest.raises(TypeError, match="unexpected keyword argument 'guidance'"):
            fn(model, diffusion, (1, *SHAPE), guidance=2.0)


@pytest.mark.parametrize("steps", [20, None])
@pytest.mark.parametrize("threshold,variance", [("clip", "fixed_small"), ("none", "fixed_small"),
                                                ("clip", "fixed_large"), ("none", "fixed_large")])
def test_the_ancestral_loop_is_the_p_sample_loop_step_by_step(threshold, variance, steps):
    """Parity: the sampler's own loop is Algorithm 2 written with GaussianDiffusion.p_sample, to the bit, at every
    step (x_t, pred_x0, x_{t-1}), with the same draws in the same order (x_T, then z for each step but the last)."""
    diffusion = GaussianDiffusion(make_betas("linear", 100))
    model = GaussianOracle(diffusion)
    got = list(ancestral_sample_progressive(model, diffusion, (3, *SHAPE), steps=steps, variance=variance,
                                            threshold=threshold, generator=torch.Generator().manual_seed(7)))
    g = torch.Generator().manual_seed(7)
    process = diffusion if steps is None else respace(diffusion, steps)
    x = torch.randn((3, *SHAPE), generator=g)
    assert len(got) == process.T
    for i, step in zip(reversed(range(process.T)), got, strict=True):
        t = torch.full((3,), i, dtype=torch.long)
        output = model(x, process.model_t(t))
        noise = torch.randn(x.shape, generator=g) if i > 0 else None
        x_prev, pred_x0 = process.p_sample(output, x, t, noise, threshold == "clip", variance)
        assert step.t == int(process.timestep_map[i])
        assert torch.equal(step.x_t, x) and torch.equal(step.pred_x0, pred_x0) and torch.equal(step.x_prev, x_prev)
        x = x_prev


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("spacing", SPACINGS)
def test_every_sampler_yields_steps_in_original_timesteps(diffusion, sampler, spacing):
    model = GaussianOracle(diffusion)
    run = lambda seed: list(sample(model, diffusion, (2, *SHAPE), sampler=sampler, steps=8, spacing=spacing,  # noqa: E731
                                   progressive=True, generator=torch.Generator().manual_seed(seed)))
    steps = run(0)
    assert [s.t for s in steps] == space_timesteps(1000, 8, spacing, diffusion.alpha_bar)[::-1]
    assert all(torch.equal(a.x_prev, b.x_t) for a, b in zip(steps[:-1], steps[1:], strict=True))
    assert torch.equal(steps[-1].x_prev, steps[-1].pred_x0)  # the last step gives pred_x0 at t = 0 itself
    x0 = sample(model, diffusion, (2, *SHAPE), sampler=sampler, steps=8, spacing=spacing,
                generator=torch.Generator().manual_seed(0))
    assert torch.equal(x0, steps[-1].x_prev)  # the same seed, the same images


def test_sample_dispatch_and_modes(diffusion):
    model = GaussianOracle(diffusion)
    for sampler in ("ancestral", "ddim", "dpmpp-2m", "dpmpp-3m", "dpmpp-2m-sde"):
        assert sample(model, diffusion, (2, *SHAPE), sampler=sampler, steps=5).shape == (2, *SHAPE)
    with pytest.raises(ValueError, match="unknown sampler 'euler'; expected one of: ancestral, ddim, dpmpp-2m, "
                                         "dpmpp-3m, dpmpp-2m-sde"):
        sample(model, diffusion, (2, *SHAPE), sampler="euler")
    with pytest.raises(ValueError, match="fixed_small, fixed_large"):
        ancestral_sample(model, diffusion, (2, *SHAPE), variance="learned")
    with pytest.raises(ValueError, match="order of DPM-Solver"):
        dpmpp_sample(model, diffusion, (2, *SHAPE), order=4)


@pytest.mark.parametrize("cond_mode", ["class", "text"])
def test_batched_guidance_and_bf16_are_the_same_function(cond_mode):
    """One stacked call on [cond; null] gives the two-call guidance; bf16 stays close to fp32."""
    from ddpm.nn.unet import UNet
    from ddpm.presets import get_preset
    from ddpm.samplers import guided, in_precision

    torch.manual_seed(0)
    model = UNet(get_preset("tiny", cond=cond_mode).model).eval()
    for p in model.parameters():  # away from the zero init, so the output depends on everything
        p.data.add_(0.05 * torch.randn_like(p))
    x, t = torch.randn(3, 1, 28, 28), torch.tensor([5, 50, 99])
    cond = torch.tensor([1, 7, 3]) if cond_mode == "class" else ["a handwritten one", "the digit 7", "three"]
    with torch.no_grad():
        two = guided(model, 2.5)(x, t, cond)
        one = guided(model, 2.5, batched=True)(x, t, cond)
        half = in_precision(guided(model, 2.5), "bf16")(x, t, cond)
    torch.testing.assert_close(one, two, rtol=1e-4, atol=1e-5)
    assert not torch.equal(two, model(x, t, cond))  # guidance changed something
    assert half.dtype == torch.float32 and (half - two).abs().max() < 0.05 * two.abs().max()
    with torch.no_grad():
        auto = in_precision(guided(model, 2.5), "auto")(x, t, cond)
    from ddpm.samplers.guidance import bf16_is_fast
    torch.testing.assert_close(auto, half if bf16_is_fast("cpu") else two, rtol=0, atol=0)
    with pytest.raises(ValueError, match="precision"):
        in_precision(model, "fp8")


def test_default_steps():
    from ddpm.samplers import default_steps

    assert [default_steps(s, 1000) for s in ("ancestral", "ddim", "dpmpp-2m", "dpmpp-3m", "dpmpp-2m-sde")] == [
        1000, 50, 15, 15, 25]
    assert default_steps("ddim", 30) == 30  # never more than T
    with pytest.raises(ValueError, match="sampler"):
        default_steps("euler", 1000)
