r"""SDEdit (Meng et al. 2022, "SDEdit: Guided Image Synthesis and Editing with Stochastic Differential Equations").

Noise the image part of the way and let the model denoise it: a strength s in (0, 1] is a noise level, the
fraction of the process the image is sent up,

    t_0 = ceil(s T)                                  (the paper's t_0 in (0, 1], times T; index t_0 - 1 here)
    x_{t_0} ~ q(x_{t_0} | x) = N(sqrt(alpha_bar_{t_0}) x, (1 - alpha_bar_{t_0}) I)          (Eq. 4)
    x_0     = any sampler from x_{t_0} down, on the timesteps below t_0, with any condition and guidance

Small s keeps the input's layout and changes details (faithful); large s keeps less and obeys the condition
more (realistic); at s = 1 nothing of the input survives and the edit is ordinary sampling from N(0, I) (the
paper's x_1 ~ N(0, I); q(x_T | x) differs from it by sqrt(alpha_bar_T) ~ 0.006 x). The sampler's steps are the
steps it runs: 15 DPM-Solver++ steps at s = 0.3 are 15 steps spaced over the lowest 300 timesteps.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ddpm.diffusion import GaussianDiffusion
from ddpm.samplers import sample

__all__ = ["strength_index", "sdedit"]


def strength_index(strength: float, T: int) -> int:
    """The timestep index t_0 - 1 that strength s sends an image to: ceil(s T) - 1 (T - 1 for s = 1)."""
    if not (isinstance(strength, int | float) and 0 < strength <= 1):
        raise ValueError(f"the strength must lie in (0, 1] (a fraction of the T={T} steps), got {strength}")
    return max(math.ceil(strength * T) - 1, 0)


def sdedit(model: Callable, diffusion: GaussianDiffusion, x: Tensor, cond=None, *, strength: float,
           sampler: str = "dpmpp-2m", steps: int | None = None, generator: torch.Generator | None = None,
           **options) -> Tensor:
    """x [B, C, H, W] (in the model's space: pixels in [-1, 1], or latents) edited at ``strength``: x_0.

    steps: the steps the sampler runs from t_0 (default: all timesteps below t_0 for "ancestral", else the
    sampler's own default), never more than the t_0 timesteps there are. ``options``: the samplers' keyword
    arguments (guidance_scale, threshold, eta, ...); the same generator draws the noise of q, then the sampler's.
    """
    t0 = strength_index(strength, diffusion.T)
    if steps is not None:
        steps = min(steps, t0 + 1)
    if t0 == diffusion.T - 1:  # s = 1: ordinary sampling, from N(0, I)
        return sample(model, diffusion, x.shape, cond, sampler=sampler, steps=steps, generator=generator,
                      device=x.device, dtype=x.dtype, **options)
    noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
    x_t0 = diffusion.q_sample(x, torch.full((x.shape[0],), t0, device=x.device, dtype=torch.long), noise)
    return sample(model, diffusion, x.shape, cond, sampler=sampler, steps=steps, t_start=t0, x_T=x_t0,
                  generator=generator, dtype=x.dtype, **options)
