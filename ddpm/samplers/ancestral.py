"""The ancestral sampler of DDPM (Ho et al. 2020, Algorithm 2), on all T steps or a respaced subsequence."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor

from ddpm._util import check_mode
from ddpm.diffusion import VARIANCES, GaussianDiffusion, Variance, extract
from ddpm.samplers.respacing import Spacing
from ddpm.samplers.steps import Step, last, noise, prepare, reverse_loop
from ddpm.samplers.thresholding import DEFAULT_PERCENTILE, Threshold, denoise, resolve_threshold

__all__ = ["ancestral_sample_progressive", "ancestral_sample"]


@torch.no_grad()
def ancestral_sample_progressive(model: Callable, diffusion: GaussianDiffusion, shape: Sequence[int], cond=None, *,
                                 steps: int | None = None, spacing: Spacing = "uniform",
                                 guidance_scale: float | None = None, variance: Variance = "fixed_small",
                                 clip_denoised: bool | None = None, threshold: Threshold | None = None,
                                 percentile: float = DEFAULT_PERCENTILE, x_T: Tensor | None = None,
                                 generator: torch.Generator | None = None, device=None, dtype=torch.float32,
                                 precision: str = "fp32", batched_guidance: bool = False,
                                 progress: bool = False) -> Iterator[Step]:
    """Algorithm 2: x_T ~ N(0, I); for t = T..1: x_{t-1} = mu_theta(x_t, t) + sigma_t z (z = 0 at t = 1).

    Yields a Step (t, x_t, pred_x0, x_{t-1}) after every step (the last one's x_prev is x_0). ``steps`` < T samples
    a respaced process on timesteps chosen by ``spacing`` (fixed_small is much better than fixed_large there).
    ``threshold`` ("clip" default | "dynamic" | "none", or the old ``clip_denoised``) acts on pred_x0 before it
    enters the posterior mean mu_tilde(pred_x0, x_t) of Eq. 7. Noise comes from ``generator`` (on ``device``):
    the same seed gives the same images.
    """
    check_mode(variance, VARIANCES, "variance")
    threshold = resolve_threshold(clip_denoised, threshold)
    process, model, x = prepare(model, diffusion, shape, steps=steps, spacing=spacing, guidance_scale=guidance_scale,
                                x_T=x_T, generator=generator, device=device, dtype=dtype,
                                precision=precision, batched_guidance=batched_guidance)

    def update(i: int, t: Tensor, x: Tensor, output: Tensor) -> tuple[Tensor, Tensor]:
        z = noise(x.shape, x.device, x.dtype, generator) if i > 0 else None
        if threshold != "dynamic":
            x_prev, pred_x0 = process.p_sample(output, x, t, z, threshold == "clip", variance)
            return pred_x0, x_prev
        pred_x0, _ = denoise(process, output, x, t, threshold, percentile)
        return pred_x0, _posterior_sample(process, pred_x0, x, t, z, variance)

    yield from reverse_loop(model, process, x, cond, update, progress=progress, desc="sampling (ancestral)")


def _posterior_sample(process: GaussianDiffusion, pred_x0: Tensor, x_t: Tensor, t: Tensor, z: Tensor | None,
                      variance: Variance) -> Tensor:
    """GaussianDiffusion.p_sample with a given (thresholded) pred_x0: mu_tilde(pred_x0, x_t) + sigma_t z, Eq. 7;
    sigma_t^2 from the same tables as p_mean_variance; z None (no noise) at the last step."""
    mean = process.q_posterior_mean(pred_x0, x_t, t)
    if z is None:
        return mean
    table = process.posterior_log_variance if variance == "fixed_small" else process.large_log_variance
    return mean + torch.exp(0.5 * extract(table, t, x_t)) * z


def ancestral_sample(model: Callable, diffusion: GaussianDiffusion, shape: Sequence[int], cond=None,
                     **kwargs) -> Tensor:
    """x_0 [B, C, H, W] from Algorithm 2; see ancestral_sample_progressive for the arguments."""
    return last(ancestral_sample_progressive(model, diffusion, shape, cond, **kwargs))
