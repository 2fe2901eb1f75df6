"""DDIM (Song et al. 2021): the deterministic (eta = 0) or stochastic sampler on S of the T timesteps."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor

from ddpm.diffusion import GaussianDiffusion
from ddpm.samplers.respacing import Spacing
from ddpm.samplers.steps import Step, last, noise, prepare, reverse_loop
from ddpm.samplers.thresholding import DEFAULT_PERCENTILE, Threshold, denoise, resolve_threshold

__all__ = ["ddim_sample_progressive", "ddim_sample"]


@torch.no_grad()
def ddim_sample_progressive(model: Callable, diffusion: GaussianDiffusion, shape: Sequence[int], cond=None, *,
                            steps: int = 50, eta: float = 0.0, spacing: Spacing = "uniform",
                            guidance_scale: float | None = None, clip_denoised: bool | None = None,
                            threshold: Threshold | None = None, percentile: float = DEFAULT_PERCENTILE,
                            x_T: Tensor | None = None, generator: torch.Generator | None = None, device=None,
                            dtype=torch.float32, precision: str = "fp32", batched_guidance: bool = False,
                            progress: bool = False) -> Iterator[Step]:
    r"""DDIM (Song et al. 2021, Eq. 12) on S = ``steps`` timesteps chosen by ``spacing`` (a respaced process):

        x_{t-1} = sqrt(alpha_bar_{t-1}) pred_x0 + sqrt(1 - alpha_bar_{t-1} - sigma_t^2) pred_eps + sigma_t z,
        sigma_t = eta sqrt((1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_{t-1}).

    eta = 0 is deterministic given x_T; eta = 1 over all T steps is the ancestral sampler with
    sigma_t^2 = beta_tilde_t. ``threshold`` ("clip" default | "dynamic" | "none", or the old ``clip_denoised``)
    acts on pred_x0, and pred_eps follows it. Yields a Step (t, x_t, pred_x0, x_{t-1}) after every step.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    threshold = resolve_threshold(clip_denoised, threshold)
    process, model, x = prepare(model, diffusion, shape, steps=steps, spacing=spacing, guidance_scale=guidance_scale,
                                x_T=x_T, generator=generator, device=device, dtype=dtype,
                                precision=precision, batched_guidance=batched_guidance)

    def update(i: int, t: Tensor, x: Tensor, output: Tensor) -> tuple[Tensor, Tensor]:
        pred_x0, pred_eps = denoise(process, output, x, t, threshold, percentile)
        abar = float(process.alpha_bar[i])
        abar_prev = float(process.alpha_bar_prev[i])
        sigma = eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)) ** 0.5
        x_prev = abar_prev**0.5 * pred_x0 + max(1 - abar_prev - sigma**2, 0.0) ** 0.5 * pred_eps
        if sigma > 0 and i > 0:
            x_prev = x_prev + sigma * noise(x.shape, x.device, x.dtype, generator)
        return pred_x0, x_prev

    yield from reverse_loop(model, process, x, cond, update, progress=progress, desc="sampling (DDIM)")


def ddim_sample(model: Callable, diffusion: GaussianDiffusion, shape: Sequence[int], cond=None, **kwargs) -> Tensor:
    """x_0 [B, C, H, W] from DDIM; see ddim_sample_progressive for the arguments."""
    return last(ddim_sample_progressive(model, diffusion, shape, cond, **kwargs))
