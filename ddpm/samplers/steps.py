"""What every sampler shares: the Step it yields, its start (process, guided model, x_T) and its loop.

A sampler is an ``update(i, t, x_t, output) -> (pred_x0, x_prev)`` plugged into ``reverse_loop``, which calls
the network once per step (with the original timestep index) and yields a Step. ``i`` counts the steps of the
(respaced) process down from S - 1 to 0; ``t`` is i as an int64 tensor [B].
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ddpm._util import check_mode
from ddpm.diffusion import GaussianDiffusion
from ddpm.samplers.guidance import guided, in_precision
from ddpm.samplers.respacing import SPACINGS, Spacing, respace

__all__ = ["Step", "Update", "noise", "prepare", "reverse_loop", "last"]


class Step(NamedTuple):
    """One step of a reverse trajectory, from x_t to the next state x_prev.

    t: the timestep index of x_t in the *original* process, 0..T-1 (the paper's t is t + 1), also for a
       respaced sampler; -1 marks the finished sample x_0 (the paper's t = 0; see ``final``).
    x_t: the state the step starts from [B, ...].
    pred_x0: the network's prediction of x_0 from x_t (Eq. 4 solved for x_0; thresholded as the sampler
       thresholds, see ddpm.samplers.thresholding).
    x_prev: the state the step produces: x at the next kept timestep, or x_0 after the last step.
    """

    t: int
    x_t: Tensor
    pred_x0: Tensor
    x_prev: Tensor

    @staticmethod
    def final(x0: Tensor) -> Step:
        """The finished sample as a Step of its own (t = -1), for trajectories that show x_0 last."""
        return Step(-1, x0, x0, x0)


# update(i, t, x_t, network output) -> (pred_x0, x_prev)
Update = Callable[[int, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


def noise(shape: Sequence[int], device, dtype, generator: torch.Generator | None) -> Tensor:
    """z ~ N(0, I) from ``generator`` (on ``device``): the same seed gives the same images."""
    return torch.randn(tuple(shape), device=device, dtype=dtype, generator=generator)


def prepare(model: Callable, diffusion: GaussianDiffusion, shape: Sequence[int], *, steps: int | None,
            spacing: Spacing, guidance_scale: float | None, x_T: Tensor | None,
            generator: torch.Generator | None, device, dtype, precision: str = "fp32",
            batched_guidance: bool = False) -> tuple[GaussianDiffusion, Callable, Tensor]:
    """The start every sampler shares: (process, model, x_T).

    process: the diffusion respaced to ``steps`` timesteps chosen by ``spacing`` (the full process for steps
    None or T); model: with classifier-free guidance at ``guidance_scale`` (two calls, or one stacked call with
    batched_guidance), run in ``precision`` ("fp32" | "bf16"); x_T: the given one, or N(0, I), on ``device``
    (default: the diffusion's) in ``dtype``.
    """
    check_mode(spacing, SPACINGS, "spacing")
    device = device if device is not None else diffusion.betas.device
    process = diffusion if steps is None or steps == diffusion.T else respace(diffusion, steps, spacing)
    model = guided(in_precision(model, precision), guidance_scale, batched=batched_guidance)
    x = noise(shape, device, dtype, generator) if x_T is None else x_T.to(device, dtype)
    return process, model, x


def reverse_loop(model: Callable, process: GaussianDiffusion, x: Tensor, cond, update: Update, *,
                 progress: bool = False, desc: str = "sampling") -> Iterator[Step]:
    """For i = S-1..0: one network call on x at the original index of step i, then ``update``; yields a Step."""
    indices = range(process.T - 1, -1, -1)
    for i in tqdm(indices, desc=desc, total=process.T, leave=False) if progress else indices:
        t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
        output = model(x, process.model_t(t), cond)
        pred_x0, x_prev = update(i, t, x, output)
        yield Step(int(process.timestep_map[i]), x, pred_x0, x_prev)
        x = x_prev


def last(steps: Iterator[Step]) -> Tensor:
    """Run a sampler's steps to the end and return x_0 (the last step's x_prev)."""
    (final,) = deque(steps, maxlen=1)  # keeps only the final step
    return final.x_prev
