"""The optimization helpers of training: parameter groups, the learning-rate schedule, the EMA of the weights
and the time budget."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

__all__ = ["param_groups", "lr_factor", "EMA", "steps_for_budget", "TimeBudget", "BUDGET_WARMUP", "BUDGET_TIMED",
           "MAX_MINUTES"]

BUDGET_WARMUP, BUDGET_TIMED = 2, 8  # steps run before timing (one-time costs), and steps timed, for a time budget


def param_groups(model: nn.Module, lr: float, cond_lr_scale: float) -> list[dict]:
    """The optimizer's parameter groups: the conditioner (a text encoder: its own learning rate,
    cond_lr_scale x lr) and the rest. Adam moves every weight by about lr per step whatever its gradient,
    so a text encoder trained at the U-Net's lr rewrites its codes within tens of steps and the U-Net
    chases a moving target (docs/results.md, "Why the text path learned slowly")."""
    named = list(model.named_parameters())
    cond = [p for n, p in named if n.startswith("conditioner.")]
    if cond_lr_scale == 1.0 or not cond:
        return [{"params": [p for _, p in named]}]  # one group (as checkpoints before cond_lr_scale have)
    rest = [p for n, p in named if not n.startswith("conditioner.")]
    return [{"params": rest, "lr": lr}, {"params": cond, "lr": lr * cond_lr_scale}]


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

    @staticmethod
    def binds_from(decay: float) -> int:
        """The first update k at which the warmup's (1 + k) / (10 + k) reaches ``decay``: before it the warmup
        sets the average (k = 890 for 0.99, 1790 for 0.995), so a shorter run never uses ``decay`` at all."""
        return math.ceil((10 * decay - 1) / (1 - decay) - 1e-9)

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


MAX_MINUTES = 7 * 24 * 60  # a week: the longest time budget (a longer run: give --steps)


class TimeBudget:
    """The total step count of a run that should end after ``minutes`` of wall time, planned twice: after
    BUDGET_WARMUP untimed and BUDGET_TIMED timed steps, and again when the learning-rate warmup ends, from
    the pace since the first plan (the first steps may have shared the machine with whatever ran just
    before). The lr during the warmup does not depend on the total, so the second plan changes no step taken."""

    def __init__(self, minutes: float, first_step: int, start_time: float, sample_steps: int, batch_size: int):
        if not 0 < minutes <= MAX_MINUTES:
            raise ValueError(f"a time budget must be more than 0 and at most {MAX_MINUTES} minutes (a week), "
                             f"got {minutes:g}")
        self.minutes, self.first, self.start = minutes, first_step, start_time
        self.sample_steps, self.batch_size = sample_steps, batch_size
        self.plans, self.timed_from, self.planned_at, self.planned_time = 0, 0.0, 0, 0.0

    def plan(self, step: int, now: float, warmup: int) -> tuple[int, float] | None:
        """(total steps, measured seconds per step) when a plan is due after ``step``, else None."""
        done = step - self.first
        if done == BUDGET_WARMUP:
            self.timed_from = now
        if done < BUDGET_WARMUP + BUDGET_TIMED:
            return None
        if self.plans == 0:
            per_step = (now - self.timed_from) / BUDGET_TIMED
        elif self.plans == 1 and step == warmup and done - self.planned_at >= BUDGET_TIMED:
            per_step = (now - self.planned_time) / (done - self.planned_at)
        else:
            return None
        self.plans, self.planned_at, self.planned_time = self.plans + 1, done, now
        seconds_left = self.minutes * 60 - (now - self.start)
        return steps_for_budget(seconds_left, per_step, step, self.sample_steps, self.batch_size), per_step
