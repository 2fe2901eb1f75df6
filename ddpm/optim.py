"""The optimization helpers of training: the learning-rate schedule and the EMA of the weights."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

__all__ = ["lr_factor", "EMA", "steps_for_budget"]


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """Linear warmup over `warmup` steps, then constant or cosine decay to 0 at `total`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class EMA:
    """Exponential moving average of the weights: theta_ema <- d theta_ema + (1 - d) theta.

    With warmup, d_k = min(decay, (1 + k) / (10 + k)) at update k, so the average is not dominated by
    the random initial weights early in training (sampling from an un-warmed EMA gives pure noise).
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True):
        self.decay, self.warmup = decay, warmup
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates)) if self.warmup else self.decay
        ema_params = list(self.model.parameters())
        params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1 - d)
        for b_ema, b in zip(self.model.buffers(), model.buffers(), strict=True):
            b_ema.copy_(b)
        self.updates += 1


def steps_for_budget(seconds_left: float, s_per_step: float, step: int, sample_steps: int, batch_size: int) -> int:
    """The total step count of a run at ``step`` that ends within ``seconds_left`` at ``s_per_step``, leaving
    time for the final grid: 80 guided images over sample_steps, each forward about a third of a training
    image's forward + backward, so about 2 * sample_steps * 80 / (3 * batch_size) training steps' time."""
    grid = s_per_step * 2 * sample_steps * 80 / (3 * batch_size)
    return max(step + int((seconds_left - grid) / s_per_step), step, 1)
