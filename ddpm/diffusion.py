"""The Gaussian diffusion process of Ho et al. (2020): forward chain, posterior, reverse step, losses.

Timestep convention: ``t`` is an int64 tensor [B] of indices in {0..T-1}; index 0 is the paper's
t = 1 (see ddpm.schedules). ``alpha_bar_prev[0] = 1`` (the paper's alpha_bar_0).

The process knows nothing about the network: the reverse-process functions take the network's
*output* (p_mean_variance, p_sample), and the loss, which needs the network itself (training_loss), takes
any callable ``model(x_t, t, cond) -> output`` [B, C, H, W]. The variational bound (Eq. 5, bits/dim) sits
on top of the process, in ddpm.likelihood; the samplers in ddpm.samplers.
Every coefficient is computed once in float64 and stored as a buffer, so ``.to(device)`` moves them;
``extract`` gathers them at t and casts them to the dtype of x.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor, nn

from ddpm._util import check_mode
from ddpm.schedules import alpha_bar as _alpha_bar

Prediction = Literal["eps", "x0", "v"]
Variance = Literal["fixed_small", "fixed_large", "learned_range"]
PREDICTIONS: tuple[str, ...] = get_args(Prediction)
VARIANCES: tuple[str, ...] = get_args(Variance)

__all__ = ["GaussianDiffusion", "extract", "Prediction", "Variance", "PREDICTIONS", "VARIANCES", "check_mode"]


def extract(a: Tensor, t: Tensor, x: Tensor) -> Tensor:
    """a[t] reshaped to [B, 1, 1, ...] to broadcast against x [B, ...], in x's dtype and device."""
    # gather, not a[t]: advanced indexing with repeated indices is ~200x slower on CPU
    out = a.to(x.device).gather(0, t.to(x.device).long())
    return out.to(x.dtype).reshape(t.shape[0], *([1] * (x.dim() - 1)))


class GaussianDiffusion(nn.Module):
    r"""The forward process q and the reverse process p_theta of DDPM, for a given beta schedule.

    Args:
        betas: float tensor (T,), betas[i] = paper's beta_{i+1} (see ddpm.schedules.make_betas).
        prediction: what the network outputs: "eps" (the paper's epsilon_theta), "x0", or "v"
            (v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0, Salimans & Ho 2022).
        timestep_map: for a respaced process (ddpm.samplers.respace), the original timestep index of
            each of its steps, passed to the network; identity by default.
        learned_variance: the network also outputs v, one value per input element (2C channels: the mean's
            output first, then v), and Sigma_theta interpolates between beta_tilde_t and beta_t (Nichol &
            Dhariwal 2021, Eq. 15; the variance "learned_range").
    """

    def __init__(self, betas: Tensor, prediction: Prediction = "eps", timestep_map: Tensor | None = None,
                 learned_variance: bool = False):
        super().__init__()
        self.prediction = check_mode(prediction, PREDICTIONS, "prediction")
        self.learned_variance = bool(learned_variance)
        betas = torch.as_tensor(betas, dtype=torch.float64).cpu()
        if betas.dim() != 1 or betas.numel() < 1:
            raise ValueError(f"betas must be a 1-D tensor of T values, got shape {tuple(betas.shape)}")
        if not (bool((betas > 0).all()) and bool((betas <= 1).all())):
            raise ValueError("every beta must lie in (0, 1]; make them with ddpm.schedules.make_betas")
        self.T = betas.numel()
        abar = _alpha_bar(betas)
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        if prediction == "eps" and abar[-1] == 0:
            raise ValueError("this schedule has zero terminal SNR (alpha_bar_T = 0), where x0 cannot be recovered "
                             "from an eps prediction; use prediction='v'")

        # q(x_t | x_{t-1}) and q(x_t | x_0)
        self.register_buffer("betas", betas)
        self.register_buffer("alphas", 1 - betas)
        self.register_buffer("alpha_bar", abar)
        self.register_buffer("alpha_bar_prev", abar_prev)
        self.register_buffer("sqrt_alpha_bar", abar.sqrt())
        self.register_buffer("sqrt_one_minus_alpha_bar", (1 - abar).sqrt())

        # q(x_{t-1} | x_t, x_0), Eq. 6-7:  beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * beta_t
        posterior_variance = betas * (1 - abar_prev) / (1 - abar)
        self.register_buffer("posterior_variance", posterior_variance)
        # beta_tilde at index 0 (paper t = 1) is 0; like the original code use the value at index 1 in the log
        # (only the decoder L_0 reads it; sampling adds no noise at the last step).
        floor = posterior_variance[1] if self.T > 1 else betas[0]
        self.register_buffer("posterior_log_variance", torch.log(torch.cat([floor.view(1), posterior_variance[1:]])))
        self.register_buffer("posterior_mean_coef_x0", betas * abar_prev.sqrt() / (1 - abar))
        self.register_buffer("posterior_mean_coef_xt", (1 - abar_prev) * (1 - betas).sqrt() / (1 - abar))
        # "fixed_large" sigma_t^2 = beta_t, with beta_tilde[1] at index 0 as the original code does
        self.register_buffer("large_variance", torch.cat([floor.view(1), betas[1:]]))
        self.register_buffer("large_log_variance", torch.log(self.large_variance))
        self.register_buffer("log_betas", torch.log(betas))  # the upper end of Eq. 15's range (unclipped at index 0)

        if timestep_map is None:
            timestep_map = torch.arange(self.T)
        self.register_buffer("timestep_map", torch.as_tensor(timestep_map, dtype=torch.long).cpu())

    # ------------------------------------------------------------------ the forward process q
    def q_step(self, x_prev: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """One Markov step, Eq. 2: q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I). [B, ...] -> [B, ...]"""
        return extract(self.alphas.sqrt(), t, x_prev) * x_prev + extract(self.betas.sqrt(), t, x_prev) * noise

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Closed form, Eq. 4: x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps. [B, ...] -> [B, ...]"""
        return extract(self.sqrt_alpha_bar, t, x0) * x0 + extract(self.sqrt_one_minus_alpha_bar, t, x0) * noise

    def q_jump(self, x_s: Tensor, s: int, t: int, noise: Tensor) -> Tensor:
        """q(x_t | x_s) for indices s < t, Eq. 2 composed over the steps between (Eq. 4 with x_s for x0 is s = -1):
        x_t = sqrt(alpha_bar_t / alpha_bar_s) x_s + sqrt(1 - alpha_bar_t / alpha_bar_s) eps."""
        if not -1 <= s < t < self.T:
            raise ValueError(f"q_jump goes up the process: need -1 <= s < t < T={self.T}, got s={s}, t={t}")
        ratio = float(self.alpha_bar[t] / (self.alpha_bar[s] if s >= 0 else 1.0))
        return ratio**0.5 * x_s + (1 - ratio) ** 0.5 * noise

    def q_mean_variance(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and log-variance of q(x_t | x_0) (Eq. 4)."""
        abar = extract(self.alpha_bar, t, x0)
        return abar.sqrt() * x0, (1 - abar).expand_as(x0), torch.log1p(-abar).expand_as(x0)

    def q_posterior(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        r"""q(x_{t-1} | x_t, x_0) = N(mu_tilde, beta_tilde I), Eq. 6-7:

            mu_tilde = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x0
                       + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) x_t,
            beta_tilde = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t.

        Returns (mean, variance, log_variance), each broadcast to x_t's shape. At t = 0 the variance
        is 0 and the log-variance is log(beta_tilde) of the next step (the original code's choice).
        """
        mean = self.q_posterior_mean(x0, x_t, t)
        variance = extract(self.posterior_variance, t, x_t).expand_as(x_t)
        log_variance = extract(self.posterior_log_variance, t, x_t).expand_as(x_t)
        return mean, variance, log_variance

    def q_posterior_mean(self, x0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """mu_tilde(x_t, x0) of Eq. 7 alone (what the reverse step needs every step)."""
        return extract(self.posterior_mean_coef_x0, t, x_t) * x0 + extract(self.posterior_mean_coef_xt, t, x_t) * x_t

    # ------------------------------------------------------------------ eps / x0 / v conversions
    def x0_from_eps(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """Eq. 4 solved for x0: x0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)."""
        return (x_t - extract(self.sqrt_one_minus_alpha_bar, t, x_t) * eps) / extract(self.sqrt_alpha_bar, t, x_t)

    def eps_from_x0(self, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        """Eq. 4 solved for eps: eps = (x_t - sqrt(alpha_bar_t) x0) / sqrt(1 - alpha_bar_t)."""
        return (x_t - extract(self.sqrt_alpha_bar, t, x_t) * x0) / extract(self.sqrt_one_minus_alpha_bar, t, x_t)

    def v_from_x0_eps(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x0 (Salimans & Ho 2022)."""
        return extract(self.sqrt_alpha_bar, t, x0) * eps - extract(self.sqrt_one_minus_alpha_bar, t, x0) * x0

    def x0_from_v(self, x_t: Tensor, t: Tensor, v: Tensor) -> Tensor:
        """x0 = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v."""
        return extract(self.sqrt_alpha_bar, t, x_t) * x_t - extract(self.sqrt_one_minus_alpha_bar, t, x_t) * v

    def eps_from_v(self, x_t: Tensor, t: Tensor, v: Tensor) -> Tensor:
        """eps = sqrt(1 - alpha_bar_t) x_t + sqrt(alpha_bar_t) v."""
        return extract(self.sqrt_one_minus_alpha_bar, t, x_t) * x_t + extract(self.sqrt_alpha_bar, t, x_t) * v

    def split_output(self, model_output: Tensor) -> tuple[Tensor, Tensor | None]:
        """(the mean's output [B, C, ...], v [B, C, ...] or None): a learned-variance network's 2C output channels
        split in two; any other network's output as it is, with None."""
        if not self.learned_variance:
            return model_output, None
        if model_output.shape[1] % 2:
            raise ValueError(f"a learned-variance process takes 2C output channels (the mean's, then v), got "
                             f"{model_output.shape[1]}")
        mean_output, v = model_output.chunk(2, dim=1)
        return mean_output, v

    def pred_x0_eps(self, model_output: Tensor, x_t: Tensor, t: Tensor, clip_denoised: bool = False):
        """(pred_x0, pred_eps) from the network output, for any parameterization (a learned variance's v channels
        are dropped: DDIM and DPM-Solver++ read only this, so they ignore a learned variance).

        With clip_denoised, pred_x0 is clipped to the data range [-1, 1] and pred_eps is recomputed from
        the clipped x0, so that x_t = sqrt(alpha_bar) pred_x0 + sqrt(1 - alpha_bar) pred_eps still holds.
        """
        model_output = self.split_output(model_output)[0]
        if self.prediction == "eps":
            pred_x0 = self.x0_from_eps(x_t, t, model_output)
            pred_eps = model_output
        elif self.prediction == "x0":
            pred_x0 = model_output
            pred_eps = None
        else:  # "v"
            pred_x0 = self.x0_from_v(x_t, t, model_output)
            pred_eps = self.eps_from_v(x_t, t, model_output)
        if clip_denoised:
            pred_x0 = pred_x0.clamp(-1.0, 1.0)
            pred_eps = None
        if pred_eps is None:
            pred_eps = self.eps_from_x0(x_t, t, pred_x0)
        return pred_x0, pred_eps

    def target(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """What the network should output for this parameterization (the regression target of L_simple)."""
        if self.prediction == "eps":
            return eps
        if self.prediction == "x0":
            return x0
        return self.v_from_x0_eps(x0, t, eps)

    # ------------------------------------------------------------------ the reverse process p_theta
    def p_mean_variance(self, model_output: Tensor, x_t: Tensor, t: Tensor, clip_denoised: bool = True,
                        variance: Variance | None = None) -> dict[str, Tensor]:
        r"""p_theta(x_{t-1} | x_t) = N(mu_theta, sigma_t^2 I), Sec. 3.2.

        mu_theta = mu_tilde(pred_x0, x_t): the posterior mean with the predicted x0 plugged in. For eps
        prediction without clipping this is exactly Eq. 11,
            mu_theta = 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_theta).
        sigma_t^2 = beta_tilde_t ("fixed_small") or beta_t ("fixed_large"). At index 0 (paper t = 1) both use
        beta_tilde of the next step, as the original code does: beta_tilde_1 is 0, whose log the decoder L_0
        could not take; sampling adds no noise there anyway. "learned_range" (or None for a learned-variance
        process) is Eq. 15 of Nichol & Dhariwal (see p_log_variance). ``variance`` is always exp(log_variance).

        Returns dict(mean, variance, log_variance, pred_x0, pred_eps), each [B, ...] like x_t.
        """
        log_var = self.p_log_variance(x_t, t, variance, model_output)
        pred_x0, pred_eps = self.pred_x0_eps(model_output, x_t, t, clip_denoised)
        mean = self.q_posterior_mean(pred_x0, x_t, t)
        var = torch.exp(log_var)
        return {"mean": mean, "variance": var.expand_as(x_t), "log_variance": log_var.expand_as(x_t),
                "pred_x0": pred_x0, "pred_eps": pred_eps}

    def resolve_variance(self, variance: Variance | None, fixed: Variance = "fixed_small") -> Variance:
        """The variance mode to use: ``variance`` checked, or for None "learned_range" on a learned-variance
        process and ``fixed`` on any other."""
        if variance is None:
            return "learned_range" if self.learned_variance else fixed
        check_mode(variance, VARIANCES, "variance")
        if variance == "learned_range" and not self.learned_variance:
            raise ValueError("variance 'learned_range' needs a network that outputs its variance (a learned-variance "
                             "model, e.g. the preset mnist-hybrid); use 'fixed_small' or 'fixed_large'")
        return variance

    def p_log_variance(self, x_t: Tensor, t: Tensor, variance: Variance | None = None,
                       model_output: Tensor | None = None) -> Tensor:
        r"""log sigma_t^2 of p_theta(x_{t-1} | x_t) in x_t's dtype: log beta_tilde_t ("fixed_small") or log beta_t
        ("fixed_large"), both with log beta_tilde of the next step at index 0 (see p_mean_variance), [B, 1, ...];
        or, for "learned_range", Nichol & Dhariwal's Eq. 15 with the network's v = model_output's second half,
        mapped from the network's unconstrained output by v = (out + 1) / 2 as the original code does, [B, C, ...]:

            log Sigma_theta = v log beta_t + (1 - v) log beta_tilde_t   (beta_tilde with its floor at index 0)
        """
        variance = self.resolve_variance(variance)
        if variance != "learned_range":
            table = self.posterior_log_variance if variance == "fixed_small" else self.large_log_variance
            return extract(table, t, x_t)
        if model_output is None:
            raise ValueError("the variance 'learned_range' is read from the network's output: pass model_output")
        v = (self.split_output(model_output)[1].to(x_t.dtype) + 1) / 2
        return v * extract(self.log_betas, t, x_t) + (1 - v) * extract(self.posterior_log_variance, t, x_t)

    def p_sample(self, model_output: Tensor, x_t: Tensor, t: Tensor, noise: Tensor | None,
                 clip_denoised: bool = True, variance: Variance | None = None) -> tuple[Tensor, Tensor]:
        """One ancestral step, Algorithm 2 line 4: x_{t-1} = mu_theta + sigma_t z, z ~ N(0, I).

        No noise is added where t == 0 (the last step returns the mean). noise may be None only if every
        t is 0. Returns (x_{t-1}, pred_x0).
        """
        out = self.p_mean_variance(model_output, x_t, t, clip_denoised, variance)
        nonzero = (t != 0).to(x_t.dtype).reshape(-1, *([1] * (x_t.dim() - 1)))
        if noise is None:
            if bool((t != 0).any()):
                raise ValueError("p_sample needs noise for steps with t > 0")
            return out["mean"], out["pred_x0"]
        return out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * noise, out["pred_x0"]

    # ------------------------------------------------------------------ training
    def checked_output(self, output: Tensor, x0: Tensor) -> Tensor:
        """The network's output, if it has the shape this process reads (x0's, twice the channels with a learned
        variance); a ValueError saying what it should be otherwise."""
        want = (x0.shape[0], x0.shape[1] * (2 if self.learned_variance else 1), *x0.shape[2:])
        if tuple(output.shape) != want:
            each = "two values per input element (the mean's output, then v)" if self.learned_variance else \
                "one value per input element"
            raise ValueError(f"the model returned shape {tuple(output.shape)} for input {tuple(x0.shape)}; "
                             f"it must return {each}")
        return output

    def sample_timesteps(self, batch_size: int, device=None, generator: torch.Generator | None = None) -> Tensor:
        """t ~ Uniform{0..T-1} (Algorithm 1 line 3: every step, including the paper's t = 1)."""
        return torch.randint(0, self.T, (batch_size,), device=device, generator=generator)

    def model_t(self, t: Tensor) -> Tensor:
        """The timestep index the network sees (the original index for a respaced process)."""
        return self.timestep_map.to(t.device).gather(0, t)

    def training_loss(self, model, x0: Tensor, cond=None, *, t: Tensor | None = None, noise: Tensor | None = None,
                      reduction: Literal["mean", "none"] = "mean", min_snr_gamma: float | None = None) -> Tensor:
        r"""L_simple, Algorithm 1 / Eq. 14:  E_{t, x0, eps} || target - model(x_t, t, cond) ||^2,

        with t ~ U{0..T-1}, eps ~ N(0, I), x_t = q_sample(x0, t, eps) and target = eps, x0 or v.
        min_snr_gamma (Hang et al. 2023) weights each example by min(SNR_t, gamma) / SNR_t for eps
        (/ 1 for x0, / (SNR_t + 1) for v). reduction="none" gives per-example losses [B].
        """
        check_mode(reduction, ("mean", "none"), "reduction")
        if t is None:
            t = self.sample_timesteps(x0.shape[0], device=x0.device)
        if noise is None:
            noise = torch.randn_like(x0)
        x_t = self.q_sample(x0, t, noise)
        output = self.split_output(self.checked_output(model(x_t, self.model_t(t), cond), x0))[0]
        losses = ((self.target(x0, t, noise) - output.float()) ** 2).flatten(1).mean(dim=1)
        if min_snr_gamma is not None:
            s = extract(self.alpha_bar / (1 - self.alpha_bar), t, losses).reshape(-1)
            weight = torch.clamp(s, max=min_snr_gamma)
            weight = weight / {"eps": s, "x0": torch.ones_like(s), "v": s + 1}[self.prediction]
            losses = losses * weight
        return losses.mean() if reduction == "mean" else losses
