"""DDIM (Song et al. 2021): the deterministic (eta = 0) or stochastic sampler on S of the T timesteps."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor

from ddpm.diffusion import GaussianDiffusion
from ddpm.samplers.steps import SamplerOptions, Step, last

__all__ = ["ddim_sample_progressive", "ddim_sample"]


def ddim_sample_progressive(model: Callable, diffusion: GaussianDiffusion, shape: Sequence[int], cond=None, *,
                            steps: int = 50, eta: float = 0.0, **options) -> Iterator[Step]:
    """DDIM on ``steps`` timesteps (a respaced process), with noise eta sigma_tilde_t: eta = 0 is deterministic
    given x_T; eta = 1 over the same timesteps is the ancestral sampler with sigma_t^2 = beta_tilde_t.

    Yields a Step (t, x_t, pred_x0, x_{t-1}) after every step; the last one's x_prev is x_0. ``options``: the
    keyword arguments every sampler takes (ddpm.samplers.SamplerOptions: spacing, guidance_scale, threshold, x_T,
    generator, device, dtype, progress, ...); pred_eps follows the thresholded pred_x0.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    return _ddim(model, diffusion, shape, cond, steps, eta, SamplerOptions.of("ddim_sample_progressive", options))


@torch.no_grad()
def _ddim(model: Callable, diffusion: GaussianDiffusion, shape: Sequence[int], cond, steps: int, eta: float,
          opts: SamplerOptions) -> Iterator[Step]:
    r"""DDIM, Song et al. 2021, Eq. 12 (with Eq. 16 for sigma_t), from x_T ~ N(0, I):

        x_{t-1} = sqrt(alpha_bar_{t-1}) pred_x0 + sqrt(1 - alpha_bar_{t-1} - sigma_t^2) pred_eps + sigma_t z,
        sigma_t = eta sqrt((1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_{t-1}),

    z ~ N(0, I), z = 0 at the last step (there sigma_t = 0 anyway, since alpha_bar_{t-1} = 1).
    """
    process, model, x = opts.start(model, diffusion, shape, steps)
    for i, t in opts.countdown(process, x, "sampling (DDIM)"):
        output = model(x, process.model_t(t), cond)
        pred_x0, pred_eps = opts.denoise(process, output, x, t)
        abar, abar_prev = float(process.alpha_bar[i]), float(process.alpha_bar_prev[i])
        sigma = eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)) ** 0.5
        x_prev = abar_prev**0.5 * pred_x0 + max(1 - abar_prev - sigma**2, 0.0) ** 0.5 * pred_eps
        if sigma > 0 and i > 0:
            x_prev = x_prev + sigma * opts.noise(x)
        x_prev = opts.keep_known(process, x_prev, i)  # inpainting: the known region (Eq. 8 of RePaint)
        yield Step(int(process.timestep_map[i]), x, pred_x0, x_prev)
        x = x_prev


def ddim_sample(model: Callable, diffusion: GaussianDiffusion, shape: Sequence[int], cond=None, **kwargs) -> Tensor:
    """x_0 [B, C, H, W] from DDIM; see ddim_sample_progressive for the arguments."""
    return last(ddim_sample_progressive(model, diffusion, shape, cond, **kwargs))
