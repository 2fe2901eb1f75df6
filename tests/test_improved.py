"""Improved DDPM (Nichol & Dhariwal 2021): the learned variance of Eq. 15, the hybrid loss, L_vlb with importance
sampling of t, and a learned-variance model in the samplers, the bound and the trainer."""

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from ddpm.checkpoints import load_checkpoint
from ddpm.datasets import load_dataset, to_float
from ddpm.diffusion import GaussianDiffusion
from ddpm.improved import HYBRID_LAMBDA, ImportanceSampler, improved_losses
from ddpm.likelihood import bits_per_dim, vb_term_bpd
from ddpm.nn.unet import UNet, UNetConfig
from ddpm.presets import get_preset
from ddpm.runlog import RunLog
from ddpm.samplers import ancestral_sample, ddim_sample, guided, respace
from ddpm.schedules import make_betas
from ddpm.training import Trainer

T = 1000


@pytest.fixture(scope="module")
def learned():
    return GaussianDiffusion(make_betas("linear", T), learned_variance=True)


def _with_v(mean_model, v_value):
    """A learned-variance network: mean_model's output, then the constant v output v_value."""
    def model(x_t, t, cond=None):
        out = mean_model(x_t, t, cond)
        return torch.cat([out, torch.full_like(out, v_value)], dim=1)
    return model


def _eps_model(x_t, t, cond=None):
    return 0.3 * x_t + 0.01 * t.view(-1, 1, 1, 1).to(x_t.dtype) / T


# ------------------------------------------------------------------ Eq. 15
@pytest.mark.parametrize("process", ["full", "respaced"])
def test_the_range_ends_are_beta_and_beta_tilde_at_every_t(learned, process):
    """out = +1 (v = 1) gives log beta_t, out = -1 (v = 0) log beta_tilde_t with its floor at index 0, exactly;
    for a respaced process, its own recomputed beta and beta_tilde."""
    d = learned if process == "full" else respace(learned, 50)
    t = torch.arange(d.T)
    x = torch.zeros(d.T, 1, 2, 2, dtype=torch.float64)
    top = d.p_log_variance(x, t, "learned_range", torch.cat([x, torch.ones_like(x)], 1))
    bottom = d.p_log_variance(x, t, "learned_range", torch.cat([x, -torch.ones_like(x)], 1))
    assert torch.equal(top[:, 0, 0, 0], d.betas.log())
    tilde = d.posterior_variance.clone()
    tilde[0] = d.posterior_variance[1]  # the floor the fixed variance uses at index 0
    assert torch.equal(bottom[:, 0, 0, 0], tilde.log())
    assert torch.equal(bottom[:, 0, 0, 0], d.p_log_variance(x, t, "fixed_small").flatten())
    mid = d.p_log_variance(x, t, "learned_range", torch.cat([x, torch.zeros_like(x)], 1))[:, 0, 0, 0]
    torch.testing.assert_close(mid, (d.betas.log() + tilde.log()) / 2)  # v = 1/2: the geometric mean


def test_the_variance_is_per_element_and_the_mean_ignores_v(learned):
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    t = torch.tensor([1, 10, 500])
    v = torch.rand_like(x) * 2 - 1
    out = learned.p_mean_variance(torch.cat([_eps_model(x, t), v], 1), x, t)  # None: learned_range
    assert out["log_variance"].shape == x.shape
    assert not torch.equal(out["log_variance"][:, 0], out["log_variance"][:, 1])
    fixed = GaussianDiffusion(make_betas("linear", T)).p_mean_variance(_eps_model(x, t), x, t)
    assert torch.equal(out["mean"], fixed["mean"]) and torch.equal(out["pred_x0"], fixed["pred_x0"])


def test_a_learned_range_needs_a_variance_output():
    fixed = GaussianDiffusion(make_betas("linear", 25))
    with pytest.raises(ValueError, match="needs a network that outputs its variance"):
        fixed.p_log_variance(torch.zeros(1, 1, 2, 2), torch.zeros(1, dtype=torch.long), "learned_range")
    learned = GaussianDiffusion(make_betas("linear", 25), learned_variance=True)
    with pytest.raises(ValueError, match="2C output channels"):
        learned.p_mean_variance(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="two values per input element"):
        learned.training_loss(lambda x, t, c: x, torch.zeros(2, 1, 2, 2))


# ------------------------------------------------------------------ samplers
def test_ancestral_with_v_at_the_ends_is_the_fixed_variances(learned):
    fixed = GaussianDiffusion(make_betas("linear", T))
    x_T = torch.randn(4, 1, 2, 2)

    def run(process, model, steps, **kw):
        return ancestral_sample(model, process, x_T.shape, x_T=x_T, steps=steps, threshold="none",
                                generator=torch.Generator().manual_seed(3), **kw)

    for steps in (None, 25):
        assert torch.equal(run(learned, _with_v(_eps_model, -1.0), steps),
                           run(fixed, _eps_model, steps, variance="fixed_small"))
    # v = 1: beta_t; at index 0 no noise is added, so the floor of fixed_large does not matter
    assert torch.equal(run(learned, _with_v(_eps_model, 1.0), None),
                       run(fixed, _eps_model, None, variance="fixed_large"))
    assert not torch.equal(run(learned, _with_v(_eps_model, 1.0), 25), run(learned, _with_v(_eps_model, -1.0), 25))


def test_ddim_ignores_the_variance_and_guidance_keeps_the_conditional_v(learned):
    x_T = torch.randn(2, 1, 2, 2)
    a = ddim_sample(_with_v(_eps_model, 0.7), learned, x_T.shape, x_T=x_T, steps=10)
    b = ddim_sample(_eps_model, GaussianDiffusion(make_betas("linear", T)), x_T.shape, x_T=x_T, steps=10)
    assert torch.equal(a, b)

    def net(x_t, t, cond=None):
        scale = 1.0 if cond is None else 2.0
        return torch.cat([scale * x_t, torch.full_like(x_t, -0.5 if cond is None else 0.5)], 1)

    x, t = torch.randn(2, 1, 2, 2), torch.tensor([5, 5])
    out = guided(net, 3.0, learned_variance=True)(x, t, torch.tensor([1, 2]))
    assert torch.allclose(out[:, :1], x + 3.0 * (2 * x - x)) and torch.equal(out[:, 1:], torch.full_like(x, 0.5))


# ------------------------------------------------------------------ the bound
def test_a_learned_variance_bound_equals_an_independent_computation():
    """bits_per_dim of a learned-variance model term by term, against torch.distributions' Gaussian KL and CDF."""
    d = GaussianDiffusion(make_betas("linear", 25), learned_variance=True)
    g = torch.Generator().manual_seed(0)
    v_table = torch.rand(25, generator=g, dtype=torch.float64) * 2 - 1

    def net(x_t, t, cond=None):
        return torch.cat([0.5 * x_t, v_table[t].view(-1, 1, 1, 1).expand_as(x_t)], 1)

    x0 = (torch.randint(0, 256, (3, 1, 2, 2), generator=g).double() / 127.5 - 1)
    got = bits_per_dim(net, d, x0, generator=torch.Generator().manual_seed(5), clip_denoised=False)
    noise_gen = torch.Generator().manual_seed(5)
    b, abar = d.betas, d.alpha_bar
    for i in range(25):
        eps = torch.randn(x0.shape, generator=noise_gen, dtype=x0.dtype)
        x_t = abar[i].sqrt() * x0 + (1 - abar[i]).sqrt() * eps
        pred_x0 = (x_t - (1 - abar[i]).sqrt() * 0.5 * x_t) / abar[i].sqrt()
        prev = abar[i - 1] if i > 0 else torch.tensor(1.0, dtype=torch.float64)
        mean = (prev.sqrt() * b[i] * pred_x0 + (1 - b[i]).sqrt() * (1 - prev) * x_t) / (1 - abar[i])
        tilde = b[i] * (1 - prev) / (1 - abar[i]) if i > 0 else b[1] * (1 - abar[0]) / (1 - abar[1])
        frac = (v_table[i] + 1) / 2
        std = torch.exp(0.5 * (frac * b[i].log() + (1 - frac) * tilde.log()))
        if i == 0:  # the discretized decoder, Eq. 13, from the Normal's CDF
            p = Normal(mean, std)
            upper = torch.where(x0 > 0.999, torch.ones_like(x0), p.cdf(x0 + 1 / 255))
            lower = torch.where(x0 < -0.999, torch.zeros_like(x0), p.cdf(x0 - 1 / 255))
            want = -torch.log(upper - lower).flatten(1).mean(1) / math.log(2)
        else:
            true_mean = (prev.sqrt() * b[i] * x0 + (1 - b[i]).sqrt() * (1 - prev) * x_t) / (1 - abar[i])
            want = kl_divergence(Normal(true_mean, tilde.sqrt()), Normal(mean, std)).flatten(1).mean(1) / math.log(2)
        torch.testing.assert_close(got["terms"][:, i], want, rtol=1e-6, atol=1e-9)


# ------------------------------------------------------------------ losses
def test_the_hybrid_loss_sends_no_vlb_gradient_into_the_mean(learned):
    a = torch.tensor(0.3, requires_grad=True)  # the mean's parameter
    b = torch.tensor(0.2, requires_grad=True)  # v's parameter

    def net(x_t, t, cond=None):
        return torch.cat([a * x_t, b * torch.ones_like(x_t)], 1)

    x0 = torch.rand(8, 1, 3, 3) * 2 - 1
    t, noise = torch.randint(0, T, (8,), generator=torch.Generator().manual_seed(1)), torch.randn(8, 1, 3, 3)
    hybrid = improved_losses(net, learned, x0, None, t, noise, "hybrid")
    mse = learned.training_loss(net, x0, t=t, noise=noise, reduction="none")
    x_t = learned.q_sample(x0, t, noise)
    vb = vb_term_bpd(learned, net(x_t, t).detach(), x0, x_t, t, clip_denoised=False)
    torch.testing.assert_close(hybrid, mse + HYBRID_LAMBDA * T * vb)
    grad_a_hybrid, grad_b = torch.autograd.grad(hybrid.mean(), (a, b))
    (grad_a_mse,) = torch.autograd.grad(mse.mean(), (a,))
    assert torch.equal(grad_a_hybrid, grad_a_mse) and grad_b != 0
    vlb = improved_losses(net, learned, x0, None, t, noise, "vlb")  # the bound reaches the mean too
    (grad_a_vlb,) = torch.autograd.grad(vlb.mean(), (a,))
    assert grad_a_vlb != 0
    with pytest.raises(ValueError, match="learn_sigma"):
        improved_losses(_eps_model, GaussianDiffusion(make_betas("linear", T)), x0, None, t, noise, "hybrid")


@pytest.mark.parametrize("data", ["gaussian", "point"])
def test_a_model_trained_on_the_hybrid_loss_learns_the_variance_the_data_calls_for(data):
    """With the exact mean, L_hybrid's L_vlb moves v to the optimum: Sigma = beta_t for N(0, I) data (the chain is
    stationary, q(x_{t-1} | x_t) = N(sqrt(alpha_t) x_t, beta_t)) and beta_tilde_t for a point mass (x_0 known).
    Fails if the variance head were ignored (v stays at its start, halfway) or fixed (one end for both)."""
    d = GaussianDiffusion(make_betas("linear", 20, beta_start=0.01, beta_end=0.3), learned_variance=True)
    abar = d.alpha_bar.float()
    v = torch.zeros(20, requires_grad=True)  # the network's v output, one per t (a table)

    def net(x_t, t, cond=None):
        s = abar[t].view(-1, 1, 1, 1)
        eps = (1 - s).sqrt() * x_t if data == "gaussian" else (x_t - s.sqrt() * 0.5) / (1 - s).sqrt()
        return torch.cat([eps, v[t].view(-1, 1, 1, 1).expand_as(x_t)], 1)  # E[eps | x_t] exactly, then v

    opt = torch.optim.Adam([v], lr=0.05)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        x0 = torch.randn(64, 1, 4, 4, generator=g) if data == "gaussian" else torch.full((64, 1, 4, 4), 0.5)
        t = torch.randint(1, 20, (64,), generator=g)
        loss = improved_losses(net, d, x0, None, t, torch.randn(x0.shape, generator=g), "hybrid").mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    frac = (v.detach()[1:10] + 1) / 2  # where beta and beta_tilde differ most (small t)
    if data == "gaussian":
        assert (frac > 0.85).all(), frac
    else:
        assert (frac < 0.15).all(), frac


# ------------------------------------------------------------------ importance sampling
def test_importance_sampling_is_uniform_until_every_t_has_its_history():
    s = ImportanceSampler(5, history=2)
    s.update(torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3]), torch.arange(9.0))
    assert not s.warmed_up() and torch.equal(s.probabilities(), torch.full((5,), 0.2, dtype=torch.float64))
    t, w = s.draw(100, generator=torch.Generator().manual_seed(0))
    assert torch.equal(w, torch.ones(100))
    s.update(torch.tensor([4]), torch.tensor([1.0]))
    assert s.warmed_up()


def test_importance_weights_are_right_and_the_estimate_is_unbiased_with_less_variance():
    L = torch.tensor([40.0, 8.0, 2.0, 1.0, 0.5, 0.25, 0.2, 0.1], dtype=torch.float64)  # known per-t losses
    s = ImportanceSampler(8, history=10, uniform_prob=0.001)
    for _ in range(10):
        s.update(torch.arange(8), L)
    p = s.probabilities()
    torch.testing.assert_close(p, 0.999 * L / L.sum() + 0.001 / 8)  # sqrt(E[L^2]) = L for a constant loss
    t, w = s.draw(20000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(w.double(), 1 / (8 * p[t]), rtol=1e-6, atol=0)
    estimate = w.double() * L[t]  # each an unbiased estimate of mean_t L_t
    uniform = L[torch.randint(0, 8, (20000,), generator=torch.Generator().manual_seed(1))]
    assert abs(estimate.mean() - L.mean()) < 4 * estimate.std() / math.sqrt(20000) + 1e-9
    assert abs(uniform.mean() - L.mean()) < 4 * uniform.std() / math.sqrt(20000)
    assert estimate.var() < uniform.var() / 100
    again = ImportanceSampler(8, history=10)
    again.load_state_dict(s.state_dict())
    assert torch.equal(again.probabilities(), p)


# ------------------------------------------------------------------ configs and training
def test_configs_say_what_does_not_combine():
    assert get_preset("mnist-hybrid").model.learn_sigma and get_preset("mnist-vlb").diffusion.timesteps == "importance"
    with pytest.raises(ValueError, match="learn_sigma"):
        get_preset("mnist", loss="hybrid")
    with pytest.raises(ValueError, match="min_snr_gamma"):
        get_preset("mnist-vlb", min_snr_gamma=5.0)
    with pytest.raises(ValueError, match="timesteps"):
        get_preset("mnist", timesteps="sorted")
    net = UNet(UNetConfig(in_channels=1, image_size=8, ch=8, ch_mult=(1,), attn_resolutions=(), num_groups=4,
                          learn_sigma=True))
    assert net(torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long)).shape == (2, 2, 8, 8)


@pytest.mark.parametrize("loss", ["hybrid", "vlb"])
def test_an_improved_run_trains_samples_and_resumes_exactly(tmp_path, loss):
    """A tiny learned-variance run (T = 25, so importance sampling leaves its warm-up within the run): its
    interrupted-and-resumed run has the same weights and sampler state as an uninterrupted one."""
    config = get_preset("tiny", steps=20, batch_size=32, log_every=1, ckpt_every=0, T=25, learn_sigma=True, loss=loss,
                        timesteps="importance" if loss == "vlb" else "uniform")
    Trainer(config, tmp_path / "full", device="cpu", progress=False).fit(final_samples=False)
    Trainer(config, tmp_path / "split", device="cpu", progress=False).fit(until=13, final_samples=False)
    Trainer(config, tmp_path / "split", device="cpu", progress=False, resume=True).fit(final_samples=False)
    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "split")
    for key in a["ema"]:
        assert torch.equal(a["ema"][key], b["ema"][key]), key
    if loss == "vlb":
        state = a["timesteps"][0]
        assert (state["seen"] >= 10).all() and torch.equal(state["losses"], b["timesteps"][0]["losses"])
    else:
        assert a["timesteps"] is None


def test_the_log_of_an_importance_sampled_run_is_the_weighted_estimate(tmp_path):
    """Once p_t is no longer uniform, log.csv's loss is mean(w L_t) with w = 1 / (T p_t), the objective (an estimate
    of the uniform-t L_vlb), not mean(L_t) over the drawn t, which follows p_t and is several times larger."""
    config = get_preset("tiny", steps=1, batch_size=32, log_every=1, ckpt_every=0, T=25, learn_sigma=True,
                        loss="vlb", timesteps="importance")
    trainer = Trainer(config, tmp_path / "run", device="cpu", progress=False)
    sampler = trainer.timesteps
    for _ in range(10):  # a warmed-up history: the terms near t = 0 dominate, as in a real run
        sampler.update(torch.arange(25), 1000.0 / (1 + torch.arange(25, dtype=torch.float64)) ** 2)
    assert sampler.warmed_up
    probs = sampler.probabilities().clone()  # p_t of this step's draw (the step then updates the history)
    step = {}
    original = trainer.train_step
    trainer.train_step = lambda *a, **k: step.setdefault("out", original(*a, **k))
    log = RunLog(tmp_path / "run", T=25)
    trainer._run_step(iter([(to_float(load_dataset("mnist", "train").images[:32]), torch.zeros(32, dtype=torch.long))]),
                      log, None)
    losses, t, _ = step["out"]
    weighted = (losses.double() / (25 * probs[t])).mean().item()
    assert log.loss_sum == pytest.approx(weighted, rel=1e-4)
    assert losses.double().mean().item() > 2 * weighted  # what the log showed before: p_t's share of the big terms
