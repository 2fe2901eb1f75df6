"""2D toy datasets: see the whole distribution (and the model's samples) in one scatter plot.

They are point clouds float32 [n, 2], not images: ``BatchLoader`` batches them as they are.
"""

from __future__ import annotations

import math

import torch

__all__ = ["TOY2D_NAMES", "toy2d"]

TOY2D_NAMES = ("swiss-roll", "moons", "8gaussians", "checkerboard")


def toy2d(name: str, n: int, seed: int = 0) -> torch.Tensor:
    """n points of a 2D toy distribution, float32 [n, 2], each coordinate with std of about 1.

    swiss-roll: a spiral; moons: two interleaved half circles; 8gaussians: eight small blobs on a
    circle; checkerboard: uniform on the 8 dark squares of a 4x4 board. Same (name, n, seed), same points.
    """
    if name not in TOY2D_NAMES:
        raise ValueError(f"unknown 2D toy dataset {name!r}; choose one of {', '.join(TOY2D_NAMES)}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    g = torch.Generator().manual_seed(seed)
    if name == "swiss-roll":
        t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g, dtype=torch.float64))  # angle = radius
        x = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1)
        x = x + 0.3 * torch.randn(n, 2, generator=g, dtype=torch.float64)
        x = x / 7.0
    elif name == "moons":
        theta = math.pi * torch.rand(n, generator=g, dtype=torch.float64)
        lower = torch.rand(n, generator=g) < 0.5
        upper_xy = torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)
        lower_xy = torch.stack([1 - torch.cos(theta), 0.5 - torch.sin(theta)], dim=1)
        x = torch.where(lower[:, None], lower_xy, upper_xy) - torch.tensor([0.5, 0.25], dtype=torch.float64)
        x = x + 0.05 * torch.randn(n, 2, generator=g, dtype=torch.float64)
        x = x * torch.tensor([1.15, 2.0], dtype=torch.float64)
    elif name == "8gaussians":
        k = torch.randint(0, 8, (n,), generator=g).to(torch.float64)
        angle = k * (math.pi / 4)
        x = 1.4 * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
        x = x + 0.1 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    else:  # checkerboard: pick a dark square (i + j even) of a 4x4 board on [-2, 2]^2, uniform inside
        col = torch.randint(0, 4, (n,), generator=g)
        row = 2 * torch.randint(0, 2, (n,), generator=g) + (col % 2)  # rows with (row + col) even
        u = torch.rand(n, 2, generator=g, dtype=torch.float64)
        x = torch.stack([col + u[:, 0], row + u[:, 1]], dim=1) - 2.0
        x = x * (math.sqrt(3) / 2)  # U(-2, 2) has std 2/sqrt(3)
    return x.to(torch.float32)
