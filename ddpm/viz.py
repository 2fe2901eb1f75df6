"""Pictures: image grids, point clouds and loss curves (matplotlib's object API, no global pyplot state).

Every function writes a file and returns its path (or returns a matplotlib Figure for notebooks).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from ddpm.datasets import to_uint8

__all__ = ["make_grid", "save_grid", "save_points", "plot_loss_curve"]


def make_grid(images: torch.Tensor, nrow: int = 8, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """Tile images [N, C, H, W] in [-1, 1] (or uint8) into one uint8 array [rows*(H+pad)+pad, ..., C]."""
    if images.dim() != 4:
        raise ValueError(f"make_grid expects images [N, C, H, W], got shape {tuple(images.shape)}")
    x = images if images.dtype == torch.uint8 else to_uint8(images.detach().float().cpu())
    n, c, h, w = x.shape
    ncol = min(nrow, n)
    rows = -(-n // ncol)
    grid = np.full((rows * (h + pad) + pad, ncol * (w + pad) + pad, c), pad_value, dtype=np.uint8)
    arr = x.permute(0, 2, 3, 1).numpy()
    for i in range(n):
        r, col = divmod(i, ncol)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = arr[i]
    return grid


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int = 8, scale: int = 2) -> Path:
    """Write images [N, C, H, W] in [-1, 1] as one PNG grid (nearest-neighbour upscaled by `scale`)."""
    from PIL import Image

    grid = make_grid(images, nrow)
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid[..., 0] if grid.shape[2] == 1 else grid).save(path)
    return path


def save_points(points: torch.Tensor, path: str | os.PathLike, title: str = "", lim: float = 3.0) -> Path:
    """Scatter plot of 2D points [N, 2] to a PNG."""
    fig = Figure(figsize=(4, 4))
    ax = fig.add_subplot()
    p = points.detach().float().cpu().numpy()
    ax.scatter(p[:, 0], p[:, 1], s=2, alpha=0.5)
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", title=title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def plot_loss_curve(log_csv: str | os.PathLike, path: str | os.PathLike | None = None) -> Figure | Path:
    """Training loss against step from a run's log.csv (log scale); saved if `path` is given."""
    with Path(log_csv).open(newline="") as f:
        rows = list(csv.DictReader(f))
    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    if rows:
        ax.plot([int(r["step"]) for r in rows], [float(r["loss"]) for r in rows])
    ax.set(xlabel="step", ylabel="L_simple (MSE)", yscale="log", title="training loss")
    ax.grid(True, alpha=0.3)
    if path is None:
        return fig
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def save_reverse_animation(frames: list[torch.Tensor], ts: list[int], path: str | os.PathLike, nrow: int = 8,
                           fps: int = 10) -> Path:
    """The reverse process as a GIF: frames[i] is x_t [N, C, H, W] at step ts[i] (matplotlib PillowWriter)."""
    from matplotlib.animation import FuncAnimation, PillowWriter

    if not frames:
        raise ValueError("save_reverse_animation needs at least one frame")
    grids = [make_grid(f, nrow) for f in frames]
    fig = Figure(figsize=(grids[0].shape[1] / 60, grids[0].shape[0] / 60 + 0.4))
    ax = fig.add_axes((0, 0, 1, 0.92))
    ax.axis("off")
    cmap = "gray" if grids[0].shape[2] == 1 else None
    im = ax.imshow(grids[0][..., 0] if cmap else grids[0], cmap=cmap, vmin=0, vmax=255)
    title = fig.suptitle("")

    def draw(i):
        im.set_data(grids[i][..., 0] if cmap else grids[i])
        title.set_text(f"t = {ts[i]}" if ts[i] > 0 else "x_0")
        return (im, title)

    hold = [len(grids) - 1] * max(1, fps)  # linger on the final samples for a second
    anim = FuncAnimation(fig, draw, frames=list(range(len(grids))) + hold, blit=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    anim.save(str(path), writer=PillowWriter(fps=fps), dpi=60)
    return path
