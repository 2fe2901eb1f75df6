"""Samplers against an analytic oracle, and the exact identities between them."""

import math

import pytest
import torch

from ddpm.diffusion import GaussianDiffusion
from ddpm.samplers import (
    ancestral_sample,
    ancestral_sample_progressive,
    ddim_sample,
    ddim_sample_progressive,
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
    result = diffusion.bits_per_dim(oracle, x0.view(n, 1, 8, 8), generator=g)
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
    assert all(torch.equal(a.x_t, b.x_t) for a, b in zip(*runs, strict=True))
    steps = runs[0]
    assert [s.t for s in steps] == list(range(29, -1, -1))
    last = steps[-1]
    assert torch.equal(last.x_t, last.pred_x0)  # t = 0: the mean, which is pred_x0 itself
    other = ancestral_sample(model, diffusion, (3, *SHAPE), generator=torch.Generator().manual_seed(6), steps=30)
    assert not torch.equal(other, last.x_t)


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


def test_guidance_moves_an_oracle_mixture_towards_its_class():
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
    plain = ddim_sample(model, d, (2000, *SHAPE), cond, steps=30, generator=torch.Generator().manual_seed(0),
                        dtype=torch.float64)
    strong = ddim_sample(model, d, (2000, *SHAPE), cond, steps=30, guidance_scale=3.0,
                         generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    proj = lambda x: (x.flatten(1) @ MU).mean().item()  # noqa: E731
    assert proj(strong) > proj(plain) > 0.5 * (MU @ MU).item()


def test_sample_dispatch_and_modes(diffusion):
    model = GaussianOracle(diffusion)
    x = sample(model, diffusion, (2, *SHAPE), sampler="ddim", steps=5)
    assert x.shape == (2, *SHAPE)
    with pytest.raises(ValueError, match="ancestral, ddim"):
        sample(model, diffusion, (2, *SHAPE), sampler="euler")
    with pytest.raises(ValueError, match="fixed_small, fixed_large"):
        ancestral_sample(model, diffusion, (2, *SHAPE), variance="learned")
