r"""Importance sampling of t for L_vlb (Nichol & Dhariwal 2021, Sec. 3.3).

L_vlb = sum_t L_t is estimated from one t per example. Drawn uniformly, its variance is huge: the terms near t = 0
are orders of magnitude larger than the rest. Drawing t with probability p_t and weighting the term by 1 / (T p_t)
keeps the estimate unbiased, E_{t ~ p}[T L_t / (T p_t)] = sum_t L_t, and p_t proportional to sqrt(E[L_t^2]) makes
its variance least (the optimal proposal for a one-sample estimate). E[L_t^2] is estimated from the last 10 losses
seen at each t; until every t has 10, t is uniform (weights 1). As the original code does, p is mixed with the
uniform distribution by 0.001, so no t's probability falls to zero.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import torch
from torch import Tensor

from ddpm._util import check_mode

__all__ = ["ImportanceSampler", "TimestepSampling", "TIMESTEP_SAMPLERS", "timestep_sampler"]

TimestepSampling = Literal["uniform", "importance"]
TIMESTEP_SAMPLERS: tuple[str, ...] = get_args(TimestepSampling)


class ImportanceSampler:
    """p_t proportional to sqrt(mean of the last ``history`` values of L_t^2), mixed with ``uniform_prob`` of the
    uniform distribution; uniform until every t has ``history`` values. Its state travels in a checkpoint."""

    def __init__(self, T: int, history: int = 10, uniform_prob: float = 0.001):
        if T < 1 or history < 1 or not 0 <= uniform_prob <= 1:
            raise ValueError(f"need T >= 1, history >= 1 and uniform_prob in [0, 1], got {T}, {history}, "
                             f"{uniform_prob}")
        self.T, self.uniform_prob = T, uniform_prob
        self.losses = torch.zeros(T, history, dtype=torch.float64)  # a ring buffer per t
        self.seen = torch.zeros(T, dtype=torch.long)

    def warmed_up(self) -> bool:
        return bool((self.seen >= self.losses.shape[1]).all())

    def probabilities(self) -> Tensor:
        """p [T] (float64), summing to 1."""
        if not self.warmed_up():
            return torch.full((self.T,), 1.0 / self.T, dtype=torch.float64)
        p = self.losses.pow(2).mean(dim=1).sqrt()
        p = p / p.sum()
        return p * (1 - self.uniform_prob) + self.uniform_prob / self.T

    def draw(self, n: int, device=None, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(t [n] int64, weights [n] float32 = 1 / (T p_t)): the mean of weights * L_t over the draws estimates
        the mean of L_t over all t without bias."""
        p = self.probabilities()
        t = torch.multinomial(p, n, replacement=True, generator=generator)
        weights = 1.0 / (self.T * p[t])
        return t.to(device), weights.to(device, torch.float32)

    def update(self, t: Tensor, losses: Tensor) -> None:
        """Record each example's loss (unweighted) at its t."""
        for ti, li in zip(t.tolist(), losses.detach().double().cpu().tolist(), strict=True):
            self.losses[ti, self.seen[ti] % self.losses.shape[1]] = li
            self.seen[ti] += 1

    def state_dict(self) -> dict[str, Any]:
        return {"losses": self.losses.clone(), "seen": self.seen.clone(), "uniform_prob": self.uniform_prob}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if tuple(state["losses"].shape) != tuple(self.losses.shape):
            raise ValueError(f"an importance sampler's state for {tuple(state['losses'].shape)} losses, this one "
                             f"keeps {tuple(self.losses.shape)}")
        self.losses, self.seen = state["losses"].double().cpu(), state["seen"].long().cpu()
        self.uniform_prob = float(state["uniform_prob"])


def timestep_sampler(timesteps: TimestepSampling, T: int) -> ImportanceSampler | None:
    """The trainer's sampler of t: None for "uniform" (the loss draws t ~ U{0..T-1}, Algorithm 1), else an
    ImportanceSampler."""
    return None if check_mode(timesteps, TIMESTEP_SAMPLERS, "timesteps") == "uniform" else ImportanceSampler(T)
