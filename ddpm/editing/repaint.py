r"""Inpainting with RePaint (Lugmayr et al. 2022, "RePaint: Inpainting using Denoising Diffusion Probabilistic
Models"): any unconditional or conditional DDPM fills a masked region, nothing trained for it.

At every reverse step the known region is replaced by the forward process of the original (ddpm.samplers.known,
their Eq. 8). That alone ("naive replacement", r = 1) harmonizes badly: the known pixels are put in after the
model's step, which never saw them, so the drawn region can ignore them and the border shows a seam. RePaint's
remedy is **resampling**: after coming down j steps, go back up j steps with the forward process q(x_{t+j} | x_t)
(their Alg. 1, line 9, applied j steps at once: "jumps") and come down again, r times in all, so the model gets
to see the merged image at each noise level r times before moving on:

    from the top, in segments of j steps:  for k = 1..r: come down j steps (merging the known region each step),
                                           and unless k = r go back up j with q(x_{t+j} | x_t)
    then the last step to x_0, where the known region is the original exactly.

Network calls per image: about r times the sampler's steps (``network_calls`` counts them). The paper uses
T = 250 steps, j = 10, r = 10 on faces and ImageNet. Each segment is an ordinary sampler run (any of them:
t_start / t_stop of ddpm.samplers.SamplerOptions), the ancestral one by default, as in the paper.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ddpm.diffusion import GaussianDiffusion
from ddpm.samplers import respace, sample
from ddpm.samplers.known import Known

__all__ = ["jump_schedule", "network_calls", "repaint"]


def jump_schedule(steps: int, jump: int, resample: int) -> list[tuple[int, int]]:
    """The moves of RePaint on a process of ``steps`` timesteps (indices steps - 1 .. 0), as (from, to) pairs of
    indices: from > to comes down with the sampler, from < to goes up with q. The final step to x_0 is not listed."""
    if jump < 1 or resample < 1:
        raise ValueError(f"RePaint needs a jump length >= 1 and resamplings >= 1, got j={jump}, r={resample}")
    moves = []
    top = steps - 1
    while top > 0:
        bottom = max(top - jump, 0)
        for k in range(resample):
            moves.append((top, bottom))
            if k < resample - 1:
                moves.append((bottom, top))
        top = bottom
    return moves


def network_calls(steps: int, jump: int, resample: int) -> int:
    """Model calls per image (x2 with guidance): every step down, and the last one to x_0."""
    return sum(a - b for a, b in jump_schedule(steps, jump, resample) if a > b) + 1


def repaint(model: Callable, diffusion: GaussianDiffusion, x: Tensor, mask: Tensor, cond=None, *,
            sampler: str = "ancestral", steps: int | None = None, jump: int = 10, resample: int = 10,
            generator: torch.Generator | None = None, **options) -> Tensor:
    """x [B, C, H, W] (the model's space) kept where ``mask`` is 1, the rest drawn: x_0, equal to x on the mask.

    steps: the timesteps of the process it runs on (default: all T; fewer: respaced, as the paper's 250 of
    1000); jump, resample: j and r (r = 1: naive replacement). ``options``: the samplers' keyword arguments.
    """
    process = diffusion if steps is None or steps == diffusion.T else respace(diffusion, steps,
                                                                             options.get("spacing", "uniform"))
    known = Known(x, mask)
    state = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)  # x_T ~ N(0, I)
    run = dict(sampler=sampler, steps=None, generator=generator, known=known, dtype=x.dtype, **options)
    for a, b in jump_schedule(process.T, jump, resample):
        if a > b:
            state = sample(model, process, x.shape, cond, t_start=a, t_stop=b, x_T=state, **run)
        else:
            noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
            state = process.q_jump(state, a, b, noise)
    return sample(model, process, x.shape, cond, t_start=0, x_T=state, **run)  # the last step, to x_0
