"""Images on a grid: make_grid / save_grid (uint8 mosaics, PNG files) and the figures built on them
(plot_images, plot_image_table), with the helpers every figure of ddpm.viz shares."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image, ImageDraw
from torch import Tensor

from ddpm._files import atomic_write
from ddpm.conditions import balanced_labels, condition_for_labels, num_conditions
from ddpm.datasets import to_float, to_uint8
from ddpm.samplers import ddim_sample

__all__ = ["make_grid", "save_grid", "save_panels", "plot_images", "plot_image_table", "class_grid"]

PathLike = str | os.PathLike


# ---------------------------------------------------------------------------------------------- helpers
def _finish(fig: Figure, path: PathLike | None, dpi: int = 110) -> Figure | Path:
    """The figure itself (for notebooks), or saved to `path` (PNG unless the suffix says otherwise)."""
    if path is None:
        return fig
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    return atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=dpi, bbox_inches="tight"))


def _as_float(images: Tensor) -> Tensor:
    """uint8 images -> float in [-1, 1]; float images unchanged (detached, on the CPU)."""
    images = images.detach().cpu()
    return to_float(images)


def _check_images(images: Tensor, what: str, dims: int = 4) -> None:
    if not isinstance(images, Tensor) or images.dim() != dims:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        names = "[N, C, H, W]" if dims == 4 else "[rows, cols, C, H, W]"
        raise ValueError(f"{what} expects images {names}, got {shape}")


def _paper_t(index: int) -> int:
    """Code index 0..T-1 -> the paper's t = 1..T."""
    return int(index) + 1


def _t_batch(t: int, n: int, device) -> Tensor:
    """The timestep index t for each of n examples: int64 [n]."""
    return torch.full((n,), int(t), dtype=torch.long, device=device)


def _noise_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def _show_grid(ax, grid: np.ndarray) -> None:
    """imshow a uint8 grid [H, W, C] without interpolation; grayscale for C = 1."""
    if grid.shape[2] == 1:
        ax.imshow(grid[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(grid, interpolation="nearest")
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.tick_params(length=0, labelsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def _table_on_axes(ax, images: Tensor, row_labels: Sequence[str] | None, col_labels: Sequence[str] | None,
                   pad: int = 2) -> None:
    """Draw images [R, K, C, H, W] as one mosaic on `ax`, with a label per row (left) and column (top)."""
    R, K, _, h, w = images.shape
    grid = make_grid(images.reshape(R * K, *images.shape[2:]), nrow=K, pad=pad)
    _show_grid(ax, grid)
    if col_labels is not None:
        if len(col_labels) != K:
            raise ValueError(f"{len(col_labels)} column labels for {K} columns")
        ax.set_xticks([pad + j * (w + pad) + (w - 1) / 2 for j in range(K)], list(col_labels))
        ax.xaxis.tick_top()
    if row_labels is not None:
        if len(row_labels) != R:
            raise ValueError(f"{len(row_labels)} row labels for {R} rows")
        ax.set_yticks([pad + i * (h + pad) + (h - 1) / 2 for i in range(R)], list(row_labels))


# ---------------------------------------------------------------------------------------------- grids
def make_grid(images: torch.Tensor, nrow: int = 8, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """Tile images [N, C, H, W] in [-1, 1] (or uint8) into one uint8 array [rows*(H+pad)+pad, ..., C].

    `nrow` is the number of images per row (as in torchvision); the last row may be partly empty.
    """
    _check_images(images, "make_grid")
    if images.shape[0] == 0:
        raise ValueError("make_grid needs at least one image")
    x = images.detach().cpu() if images.dtype == torch.uint8 else to_uint8(images.detach().float().cpu())
    n, c, h, w = x.shape
    ncol = max(1, min(nrow, n))
    rows = -(-n // ncol)
    grid = np.full((rows * (h + pad) + pad, ncol * (w + pad) + pad, c), pad_value, dtype=np.uint8)
    arr = x.permute(0, 2, 3, 1).numpy()
    for i in range(n):
        r, col = divmod(i, ncol)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[top:top + h, left:left + w] = arr[i]
    return grid


def save_grid(images: torch.Tensor, path: PathLike, nrow: int = 8, scale: int = 2) -> Path:
    """Write images [N, C, H, W] in [-1, 1] as one PNG grid (nearest-neighbour upscaled by `scale`)."""
    grid = make_grid(images, nrow)
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    image = Image.fromarray(grid[..., 0] if grid.shape[2] == 1 else grid)
    return atomic_write(path, lambda f: image.save(f, format="PNG"))  # a killed write leaves the old file


def save_panels(panels: Sequence[Tensor], path: PathLike, nrow: int = 8, titles: Sequence[str] | None = None,
                scale: int = 2, gap: int = 12) -> Path:
    """Write grids side by side as one PNG: e.g. a cascade's low-res samples, their refinements, the originals.
    Each panel [N, C, h, w] (the same N) is enlarged to the largest panel's size by repeating pixels (so a low-res
    panel shows its own pixels), tiled like save_grid, with a title above each one."""
    if not panels:
        raise ValueError("save_panels needs at least one panel")
    size = max(p.shape[-1] for p in panels)
    grids = [make_grid(p if p.shape[-1] == size else torch.nn.functional.interpolate(
        to_float(p), size=(size, size), mode="nearest"), nrow)
        for p in panels]
    h, c = grids[0].shape[0], grids[0].shape[2]
    top = 14 if titles else 0
    canvas = np.full((h + top, sum(g.shape[1] for g in grids) + gap * (len(grids) - 1), c), 255, dtype=np.uint8)
    left = 0
    for g in grids:
        canvas[top:, left:left + g.shape[1]] = g
        left += g.shape[1] + gap
    if scale > 1:
        canvas = canvas.repeat(scale, axis=0).repeat(scale, axis=1)
    image = Image.fromarray(canvas[..., 0] if c == 1 else canvas)
    if titles:
        draw, left = ImageDraw.Draw(image), 0
        for g, title in zip(grids, titles, strict=True):
            draw.text((left * scale + 4, 2), title, fill=0 if c == 1 else (0, 0, 0))
            left += g.shape[1] + gap
    return atomic_write(path, lambda f: image.save(f, format="PNG"))


def plot_images(images: Tensor, nrow: int = 8, title: str | None = None, path: PathLike | None = None,
                cell: float = 0.6) -> Figure | Path:
    """Images [N, C, H, W] as a grid of `nrow` per row, with a title."""
    _check_images(images, "plot_images")
    n = images.shape[0]
    ncol, nrows = min(nrow, n), -(-n // min(nrow, n))
    cell = min(cell, 10.0 / ncol)
    fig = Figure(figsize=(ncol * cell + 0.2, nrows * cell + (0.4 if title else 0.1)), layout="constrained")
    ax = fig.add_subplot()
    _show_grid(ax, make_grid(images, nrow))
    if title:
        ax.set_title(title, fontsize=10)
    return _finish(fig, path)


def plot_image_table(images: Tensor, row_labels: Sequence[str] | None = None,
                     col_labels: Sequence[str] | None = None, title: str | None = None,
                     path: PathLike | None = None, cell: float = 0.7) -> Figure | Path:
    """A labelled table of images [R, K, C, H, W]: R rows of K images (trajectories, guidance sweeps, ...).

    Row labels go on the left, column labels on top; everything is drawn as one mosaic, so even a
    large table renders quickly.
    """
    _check_images(images, "plot_image_table", dims=5)
    R, K = images.shape[:2]
    cell = min(cell, 11.0 / K)
    lines = max((str(c).count("\n") + 1 for c in col_labels), default=0) if col_labels is not None else 0
    width = K * cell + (1.1 if row_labels is not None else 0.2)
    height = R * cell * images.shape[3] / images.shape[4] + 0.2 * lines + (0.35 if title else 0.1)
    fig = Figure(figsize=(width, height), layout="constrained")
    ax = fig.add_subplot()
    _table_on_axes(ax, images, row_labels, col_labels)
    if title:
        ax.set_title(title, fontsize=10)
    return _finish(fig, path)


@torch.no_grad()
def class_grid(model, diffusion, shape: Sequence[int], mode: str, label_names: Sequence[str], dataset: str,
               num_classes: int = 0, *, steps: int = 50, guidance: float | None = None, per_class: int = 8,
               seed: int = 1234, device=None, **kwargs) -> tuple[Tensor, int]:
    """Samples for a grid with one row of ``per_class`` images per class (DDIM, guided), or 64 images of an
    unconditional model. shape is one image's (C, H, W); kwargs go to the sampler (e.g. threshold). Returns
    (images [N, C, H, W], images per row)."""
    device = device if device is not None else diffusion.betas.device
    classes = num_conditions(mode, num_classes, label_names)
    labels = balanced_labels(per_class * classes, classes, grouped=True) if classes else None
    cond = condition_for_labels(mode, labels, label_names, dataset) if classes else None
    if isinstance(cond, Tensor):
        cond = cond.to(device)
    n = 64 if cond is None else len(labels)
    x = ddim_sample(model, diffusion, (n, *shape), cond, steps=steps,
                    guidance_scale=guidance if cond is not None else None,
                    generator=torch.Generator(device).manual_seed(seed), device=device, **kwargs)
    return x, (per_class if cond is not None else 8)
