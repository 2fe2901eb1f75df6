"""The forward chain, the posterior, the reverse step and the losses of GaussianDiffusion; the bound on top of it
(ddpm.likelihood)."""

import math

import pytest
import torch

from ddpm.diffusion import GaussianDiffusion
from ddpm.likelihood import bits_per_dim, discretized_gaussian_log_likelihood, normal_kl, prior_bpd
from ddpm.schedules import make_betas


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion(make_betas("linear", 1000))


def test_buffers_are_float64_and_move_with_the_module(diffusion):
    assert diffusion.alpha_bar.dtype == torch.float64
    names = dict(diffusion.named_buffers())
    assert {"betas", "alpha_bar", "posterior_variance", "posterior_log_variance"} <= set(names)
    moved = GaussianDiffusion(make_betas("cosine", 10)).to(torch.device("meta"))
    assert moved.alpha_bar.device.type == "meta"


def test_posterior_variance_golden_values(diffusion):
    assert diffusion.posterior_variance[0].item() == 0.0
    assert diffusion.posterior_variance[1].item() == pytest.approx(5.45319e-05, rel=1e-5)
    # log(0) replaced by log(beta_tilde at index 1), as in the original code
    assert diffusion.posterior_log_variance[0].item() == pytest.approx(math.log(5.45319e-05), rel=1e-6)


def test_iterating_q_step_matches_q_sample_in_distribution(diffusion):
    """Markov chain (Eq. 2) iterated t+1 times from a fixed x0 has the moments of the closed form (Eq. 4)."""
    g = torch.Generator().manual_seed(0)
    n = 8000
    x0 = torch.tensor([1.0, -0.5, 0.0, 0.8], dtype=torch.float64).expand(n, 4)
    x = x0.clone()
    checkpoints = {9: None, 99: None, 299: None}
    for i in range(300):
        t = torch.full((n,), i, dtype=torch.long)
        x = diffusion.q_step(x, t, torch.randn(x.shape, generator=g, dtype=torch.float64))
        if i in checkpoints:
            checkpoints[i] = x.clone()
    for i, xi in checkpoints.items():
        t = torch.full((n,), i, dtype=torch.long)
        closed = diffusion.q_sample(x0, t, torch.randn(x0.shape, generator=g, dtype=torch.float64))
        abar = diffusion.alpha_bar[i].item()
        se_mean = math.sqrt((1 - abar) / n)
        # both agree with the analytic moments within 5 standard errors
        for sample in (xi, closed):
            assert torch.allclose(sample.mean(0), math.sqrt(abar) * x0[0], atol=5 * se_mean)
            assert torch.allclose(sample.var(0), torch.full((4,), 1 - abar, dtype=torch.float64),
                                  rtol=5 * math.sqrt(2 / n))


def test_q_posterior_matches_bayes_rule(diffusion):
    """q(x_{t-1}|x_t,x0) ∝ q(x_t|x_{t-1}) q(x_{t-1}|x0): a product of two Gaussians in x_{t-1}."""
    g = torch.Generator().manual_seed(1)
    t = torch.tensor([1, 2, 10, 100, 500, 999])
    x0 = torch.randn(6, 3, generator=g, dtype=torch.float64)
    x_t = torch.randn(6, 3, generator=g, dtype=torch.float64)
    mean, var, log_var = diffusion.q_posterior(x0, x_t, t)
    betas = diffusion.betas[t].unsqueeze(1)
    abar_prev = diffusion.alpha_bar[t - 1].unsqueeze(1)  # independent of the alpha_bar_prev buffer
    # likelihood in x_{t-1}: N(x_t; sqrt(1-beta) x_{t-1}, beta) -> precision (1-beta)/beta
    prec_lik, prec_prior = (1 - betas) / betas, 1 / (1 - abar_prev)
    bayes_var = 1 / (prec_lik + prec_prior)
    bayes_mean = bayes_var * (torch.sqrt(1 - betas) * x_t / betas + torch.sqrt(abar_prev) * x0 / (1 - abar_prev))
    assert torch.allclose(mean, bayes_mean, rtol=1e-10, atol=1e-12)
    assert torch.allclose(var, bayes_var.expand_as(var), rtol=1e-10)
    assert torch.allclose(log_var, torch.log(bayes_var).expand_as(var), rtol=1e-10)


def test_q_posterior_at_t0_is_x0(diffusion):
    x0, x_t = torch.randn(2, 5, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    mean, var, _ = diffusion.q_posterior(x0, x_t, torch.zeros(2, dtype=torch.long))
    assert torch.allclose(mean, x0, atol=1e-12) and (var == 0).all()


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_parameterizations_round_trip(prediction):
    d = GaussianDiffusion(make_betas("cosine", 1000), prediction=prediction)
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(5, 1, 4, 4, generator=g, dtype=torch.float64).clamp(-1, 1)
    eps = torch.randn(5, 1, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 10, 300, 700, 999])
    x_t = d.q_sample(x0, t, eps)
    target = d.target(x0, t, eps)
    pred_x0, pred_eps = d.pred_x0_eps(target, x_t, t, clip_denoised=False)
    assert torch.allclose(pred_x0, x0, atol=1e-8) and torch.allclose(pred_eps, eps, atol=1e-6)
    v = d.v_from_x0_eps(x0, t, eps)
    assert torch.allclose(d.x0_from_v(x_t, t, v), x0, atol=1e-10)
    assert torch.allclose(d.eps_from_v(x_t, t, v), eps, atol=1e-10)
    assert torch.allclose(d.eps_from_x0(x_t, t, d.x0_from_eps(x_t, t, eps)), eps, atol=1e-6)


def test_posterior_mean_from_x0_and_from_eps_agree(diffusion):
    """Eq. 11: mu_theta = 1/sqrt(alpha_t) (x_t - beta_t/sqrt(1-alpha_bar_t) eps) equals mu_tilde(x0(eps), x_t)."""
    g = torch.Generator().manual_seed(3)
    t = torch.tensor([0, 1, 50, 400, 999])
    x_t = torch.randn(5, 2, 3, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(5, 2, 3, 3, generator=g, dtype=torch.float64)
    out = diffusion.p_mean_variance(eps, x_t, t, clip_denoised=False)
    alpha, beta, abar = (diffusion.alphas[t], diffusion.betas[t], diffusion.alpha_bar[t])
    shape = (-1, 1, 1, 1)
    eq11 = (x_t - (beta / (1 - abar).sqrt()).view(shape) * eps) / alpha.sqrt().view(shape)
    assert torch.allclose(out["mean"], eq11, rtol=1e-9, atol=1e-9)


def test_variances(diffusion):
    x = torch.zeros(3, 1, 2, 2, dtype=torch.float64)
    t = torch.tensor([0, 1, 999])
    small = diffusion.p_mean_variance(x, x, t, variance="fixed_small")
    large = diffusion.p_mean_variance(x, x, t, variance="fixed_large")
    assert small["variance"][1, 0, 0, 0].item() == pytest.approx(diffusion.posterior_variance[1].item())
    assert large["variance"][2, 0, 0, 0].item() == pytest.approx(0.02)
    # at index 0 both log-variances use beta_tilde at index 1 (the original code)
    assert large["log_variance"][0, 0, 0, 0].item() == pytest.approx(small["log_variance"][0, 0, 0, 0].item())
    with pytest.raises(ValueError, match="fixed_small, fixed_large"):
        diffusion.p_mean_variance(x, x, t, variance="learned")


def test_p_sample_adds_noise_except_at_t0(diffusion):
    x_t, eps = torch.randn(2, 1, 3, 3), torch.randn(2, 1, 3, 3)
    noise = torch.randn(2, 1, 3, 3)
    t = torch.tensor([0, 5])
    x_prev, pred_x0 = diffusion.p_sample(eps, x_t, t, noise)
    mean = diffusion.p_mean_variance(eps, x_t, t)["mean"]
    assert torch.equal(x_prev[0], mean[0])  # no noise at the last step
    sigma = diffusion.posterior_variance[5].sqrt().item()
    assert torch.allclose(x_prev[1], mean[1] + sigma * noise[1], atol=1e-6)
    assert pred_x0.abs().max() <= 1.0  # clipped by default


def test_clipping_keeps_pred_x0_in_range_and_consistent(diffusion):
    x_t = 3 * torch.randn(4, 1, 5, 5, dtype=torch.float64)
    t = torch.tensor([3, 30, 300, 900])
    out = torch.randn_like(x_t)
    x0, eps = diffusion.pred_x0_eps(out, x_t, t, clip_denoised=True)
    assert x0.abs().max() <= 1
    assert torch.allclose(diffusion.q_sample(x0, t, eps), x_t)


def test_training_loss_is_l_simple(diffusion):
    g = torch.Generator().manual_seed(4)
    x0 = torch.rand(6, 1, 4, 4, generator=g) * 2 - 1
    noise, t = torch.randn(6, 1, 4, 4, generator=g), torch.randint(0, 1000, (6,), generator=g)
    seen = {}

    def model(x_t, t_in, cond):
        seen["x_t"], seen["t"], seen["cond"] = x_t, t_in, cond
        return torch.zeros_like(x_t)

    per_example = diffusion.training_loss(model, x0, "c", t=t, noise=noise, reduction="none")
    assert torch.allclose(seen["x_t"], diffusion.q_sample(x0, t, noise)) and torch.equal(seen["t"], t)
    assert seen["cond"] == "c"
    assert torch.allclose(per_example, (noise**2).flatten(1).mean(1))
    assert diffusion.training_loss(model, x0, t=t, noise=noise).item() == pytest.approx(per_example.mean().item())
    # a perfect eps-predictor has zero loss
    perfect = diffusion.training_loss(lambda x, tt, c: noise, x0, t=t, noise=noise)
    assert perfect.item() == 0.0


def test_training_loss_targets_for_x0_and_v():
    g = torch.Generator().manual_seed(5)
    x0, noise = torch.rand(4, 1, 2, 2, generator=g) * 2 - 1, torch.randn(4, 1, 2, 2, generator=g)
    t = torch.tensor([0, 100, 500, 999])
    for prediction in ("x0", "v"):
        d = GaussianDiffusion(make_betas("linear", 1000), prediction=prediction)
        target = x0 if prediction == "x0" else d.v_from_x0_eps(x0, t, noise)
        assert d.training_loss(lambda x, tt, c, y=target: y, x0, t=t, noise=noise).item() < 1e-12
        assert d.training_loss(lambda x, tt, c: noise, x0, t=t, noise=noise).item() > 1e-3


def test_min_snr_weighting(diffusion):
    x0, noise = torch.zeros(3, 1, 2, 2), torch.ones(3, 1, 2, 2)
    t = torch.tensor([0, 500, 999])
    zero = lambda x, tt, c: torch.zeros_like(x)  # noqa: E731 - per-example loss is 1
    w = diffusion.training_loss(zero, x0, t=t, noise=noise, reduction="none", min_snr_gamma=5.0)
    s = (diffusion.alpha_bar / (1 - diffusion.alpha_bar))[t].float()
    assert torch.allclose(w, torch.clamp(s, max=5.0) / s)
    assert w[0].item() < 1e-3 and w[2].item() == pytest.approx(1.0)


def test_training_samples_every_timestep_including_the_first(diffusion):
    t = diffusion.sample_timesteps(200000, generator=torch.Generator().manual_seed(6))
    assert t.min().item() == 0 and t.max().item() == 999


def test_unknown_modes_and_bad_betas_raise():
    with pytest.raises(ValueError, match="eps, x0, v"):
        GaussianDiffusion(make_betas("linear", 100), prediction="score")
    with pytest.raises(ValueError, match="prediction='v'"):
        GaussianDiffusion(make_betas("linear", 100, zero_terminal_snr=True), prediction="eps")
    GaussianDiffusion(make_betas("linear", 100, zero_terminal_snr=True), prediction="v")
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        GaussianDiffusion(torch.tensor([0.1, 1.5]))


def test_model_output_shape_is_checked(diffusion):
    with pytest.raises(ValueError, match="returned shape"):
        diffusion.training_loss(lambda x, t, c: x[:, :1], torch.zeros(2, 3, 4, 4))


def test_normal_kl_and_decoder_likelihood():
    m1, m2 = torch.tensor([0.3]), torch.tensor([-0.2])
    lv1, lv2 = torch.tensor([math.log(0.5)]), torch.tensor([math.log(2.0)])
    expected = math.log(2.0 / 0.5) / 2 + (0.5 + 0.25) / (2 * 2.0) - 0.5
    assert normal_kl(m1, lv1, m2, lv2).item() == pytest.approx(expected)
    assert normal_kl(m1, lv1, m1, lv1).item() == 0.0
    # the 256 bin probabilities of the discretized Gaussian sum to one
    levels = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    for mean, log_scale in ((0.1, math.log(0.3)), (0.98, math.log(0.01)), (-1.0, math.log(2.0))):
        logp = discretized_gaussian_log_likelihood(levels, torch.tensor(mean, dtype=torch.float64),
                                                   torch.tensor(log_scale, dtype=torch.float64))
        assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-9)


def test_prior_term_is_about_1e5_bits_per_dim(diffusion):
    g = torch.Generator().manual_seed(7)
    x0 = torch.rand(64, 3, 8, 8, generator=g, dtype=torch.float64) * 2 - 1  # CIFAR-like spread
    prior = prior_bpd(diffusion, x0)
    assert 0.5e-5 < prior.mean().item() < 2e-5
    # and it is what the formula gives: 0.5 * alpha_bar_T * E[x0^2] / ln 2 (to first order)
    approx = 0.5 * diffusion.alpha_bar[-1].item() * (x0**2).flatten(1).mean(1) / math.log(2)
    assert torch.allclose(prior, approx, rtol=1e-3)


def test_bits_per_dim_terms_are_nonnegative_for_an_untrained_model():
    d = GaussianDiffusion(make_betas("linear", 50))
    g = torch.Generator().manual_seed(8)
    x0 = (torch.randint(0, 256, (4, 1, 4, 4), generator=g) / 127.5 - 1).double()
    w = torch.randn(1, generator=g, dtype=torch.float64)
    result = bits_per_dim(lambda x, t, c: w * x, d, x0, generator=g)
    assert result["terms"].shape == (4, 50)
    assert (result["terms"][:, 1:] >= 0).all()
    assert torch.allclose(result["total"], result["terms"].sum(1) + result["prior"])
    assert torch.equal(result["decoder"], result["terms"][:, 0])


def test_float32_buffers_still_sample_correctly():
    """On MPS (no float64) the process is stored as float32; the reverse step must agree with float64."""
    d64 = GaussianDiffusion(make_betas("linear", 1000))
    d32 = GaussianDiffusion(make_betas("linear", 1000)).to(torch.float32)
    assert d32.alpha_bar.dtype == torch.float32 and d32.timestep_map.dtype == torch.long
    x_t, eps, noise = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    t = torch.tensor([0, 500, 999])
    a, _ = d64.p_sample(eps, x_t, t, noise)
    b, _ = d32.p_sample(eps, x_t, t, noise)
    assert torch.allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_p_mean_variance_variance_is_exp_log_variance_at_every_t(diffusion, variance):
    x_t = torch.randn(4, 1, 4, 4, dtype=torch.float64)
    for i in (0, 1, 500, diffusion.T - 1):
        t = torch.full((4,), i)
        out = diffusion.p_mean_variance(torch.randn_like(x_t), x_t, t, variance=variance)
        torch.testing.assert_close(out["variance"], out["log_variance"].exp())
    # index 0 uses the next step's beta_tilde (the original code's choice), never 0
    out = diffusion.p_mean_variance(torch.randn_like(x_t), x_t, torch.zeros(4, dtype=torch.long), variance=variance)
    assert float(out["variance"][0, 0, 0, 0]) == pytest.approx(float(diffusion.posterior_variance[1]))


def test_the_process_has_one_name_per_thing_and_knows_nothing_of_the_bound():
    """v_from_x0_eps has no alias; the bound lives in ddpm.likelihood, which imports the process (not back)."""
    import ast
    from pathlib import Path

    import ddpm.diffusion

    assert not hasattr(GaussianDiffusion, "v_from")
    assert not any(hasattr(GaussianDiffusion, name) for name in ("bits_per_dim", "prior_bpd", "vb_term_bpd"))
    tree = ast.parse(Path(ddpm.diffusion.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {f"{n.module}.{a.name}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert not any("likelihood" in name for name in imported), imported


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_p_log_variance_is_the_table_p_mean_variance_reads(diffusion, variance):
    x_t = torch.randn(4, 1, 2, 2)
    t = torch.tensor([0, 1, 500, 999])
    out = diffusion.p_mean_variance(torch.randn_like(x_t), x_t, t, variance=variance)
    log_var = diffusion.p_log_variance(x_t, t, variance)
    assert log_var.shape == (4, 1, 1, 1) and log_var.dtype == torch.float32
    assert torch.equal(out["log_variance"], log_var.expand_as(x_t))
    table = diffusion.betas if variance == "fixed_large" else diffusion.posterior_variance
    assert torch.allclose(log_var[1:].flatten().double(), table[t[1:]].log(), rtol=1e-6)
    with pytest.raises(ValueError, match="fixed_small, fixed_large"):
        diffusion.p_log_variance(x_t, t, "learned")
