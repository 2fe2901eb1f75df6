"""Pictures of diffusion: image grids, forward and reverse trajectories, schedules, losses and 2D toys.

Only matplotlib's object API (``matplotlib.figure.Figure``), never pyplot's global state, so the same
code draws from scripts, tests and notebooks. Conventions:

- ``plot_*`` functions return the Figure (a notebook displays it); given ``path=...`` they save it there
  instead (parent folders created) and return the Path.
- ``save_*`` functions write a file and return its path.
- What a plot needs computing (a forward trajectory, a reverse trajectory, a loss profile) is a separate
  function that returns tensors, so tests can check the numbers and notebooks can reuse them.

Images are [N, C, H, W] floats in [-1, 1] (or uint8). Arguments named ``ts`` hold the code's timestep
indices 0..T-1; titles and labels show the paper's t = index + 1 (see ddpm.schedules), and x_0 is the data.
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from torch import Tensor

from ddpm.datasets import to_float, to_uint8
from ddpm.diffusion import GaussianDiffusion
from ddpm.schedules import SCHEDULES, alpha_bar, log_snr, make_betas

__all__ = [
    "Frame",
    "make_grid",
    "save_grid",
    "save_points",
    "save_reverse_animation",
    "plot_images",
    "plot_image_table",
    "plot_points",
    "plot_loss_curve",
    "plot_loss_by_t",
    "default_timesteps",
    "forward_trajectory",
    "plot_forward_trajectory",
    "plot_chain_vs_closed_form",
    "plot_pixel_histogram",
    "plot_schedules",
    "plot_small_T_pitfall",
    "plot_timestep_embedding",
    "trace_shapes",
    "plot_unet_shapes",
    "reverse_trajectory",
    "plot_reverse_trajectory",
    "loss_profile",
    "plot_loss_profile",
    "plot_vlb_terms",
    "plot_toy_forward",
    "plot_toy_reverse",
    "plot_score_field",
]

PathLike = str | os.PathLike


# ---------------------------------------------------------------------------------------------- helpers
def _finish(fig: Figure, path: PathLike | None, dpi: int = 110) -> Figure | Path:
    """The figure itself (for notebooks), or saved to `path` (PNG unless the suffix says otherwise)."""
    if path is None:
        return fig
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def _as_float(images: Tensor) -> Tensor:
    """uint8 images -> float in [-1, 1]; float images unchanged (detached, on the CPU)."""
    images = images.detach().cpu()
    return to_float(images) if images.dtype == torch.uint8 else images.float()


def _check_images(images: Tensor, what: str, dims: int = 4) -> None:
    if not isinstance(images, Tensor) or images.dim() != dims:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        names = "[N, C, H, W]" if dims == 4 else "[rows, cols, C, H, W]"
        raise ValueError(f"{what} expects images {names}, got {shape}")


def _paper_t(index: int) -> int:
    """Code index 0..T-1 -> the paper's t = 1..T."""
    return int(index) + 1


def default_timesteps(T: int, fractions: Sequence[float] = (0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.6, 1.0)) -> list[int]:
    """Code indices at these fractions of T (paper t = round(f T)); T = 1000: paper t 20, 50, ..., 1000."""
    return sorted({min(T - 1, max(0, round(f * T) - 1)) for f in fractions})


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


def _noise_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def _normal_pdf(x: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * x**2) / math.sqrt(2 * math.pi)


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


# ---------------------------------------------------------------------------------------------- 2D points
def save_points(points: torch.Tensor, path: str | os.PathLike, title: str = "", lim: float = 3.0) -> Path:
    """Scatter plot of 2D points [N, 2] to a PNG."""
    return plot_points(points, title=title, lim=lim, path=path)


def plot_points(points: Tensor | Mapping[str, Tensor], title: str = "", lim: float = 3.0,
                path: PathLike | None = None) -> Figure | Path:
    """Scatter plot of 2D points [N, 2], or one panel per entry of a dict {name: points [N, 2]}."""
    clouds = dict(points) if isinstance(points, Mapping) else {title: points}
    fig = Figure(figsize=(3.2 * len(clouds), 3.3), layout="constrained")
    axes = fig.subplots(1, len(clouds), squeeze=False)[0]
    for ax, (name, p) in zip(axes, clouds.items(), strict=True):
        p = p.detach().float().cpu()
        if p.dim() != 2 or p.shape[1] != 2:
            raise ValueError(f"plot_points expects points [N, 2], got {tuple(p.shape)}")
        ax.scatter(p[:, 0].numpy(), p[:, 1].numpy(), s=2, alpha=0.5, linewidths=0)
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", title=name)
        ax.tick_params(labelsize=7)
    if title and len(clouds) > 1:
        fig.suptitle(title)
    return _finish(fig, path)


# ---------------------------------------------------------------------------------------------- training logs
def _read_csv(path: PathLike) -> list[dict[str, str]]:
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))


def _smooth(y: np.ndarray, alpha: float = 0.9) -> np.ndarray:
    """Exponential moving average with bias correction (like TensorBoard's smoothing)."""
    out, avg = np.empty_like(y), 0.0
    for i, v in enumerate(y):
        avg = alpha * avg + (1 - alpha) * v
        out[i] = avg / (1 - alpha ** (i + 1))
    return out


def plot_loss_curve(log_csv: str | os.PathLike, path: str | os.PathLike | None = None) -> Figure | Path:
    """Training loss against step from a run's log.csv (log scale, raw and smoothed, learning rate on the
    right axis); saved if `path` is given."""
    rows = _read_csv(log_csv)
    fig = Figure(figsize=(6.5, 3.5), layout="constrained")
    ax = fig.add_subplot()
    if rows:
        step = np.array([int(r["step"]) for r in rows])
        loss = np.array([float(r["loss"]) for r in rows])
        ax.plot(step, loss, color="C0", alpha=0.35, lw=1, label="loss (mean over each log interval)")
        if len(loss) > 4:
            ax.plot(step, _smooth(loss), color="C0", lw=2, label="smoothed")
        if rows[0].get("lr"):
            ax2 = ax.twinx()
            ax2.plot(step, [float(r["lr"]) for r in rows], color="C1", lw=1, ls="--")
            ax2.set_ylabel("learning rate", color="C1")
            ax2.tick_params(axis="y", colors="C1", labelsize=8)
        ax.legend(fontsize=8, loc="upper right")
    ax.set(xlabel="step", ylabel=r"$L_{simple}$ (MSE of $\epsilon$)", yscale="log", title="training loss")
    ax.grid(True, alpha=0.3, which="both")
    return _finish(fig, path)


def plot_loss_by_t(loss_by_t_csv: PathLike, path: PathLike | None = None) -> Figure | Path:
    """The training loss of each timestep bucket (a run's loss_by_t.csv) against step: one line per bucket.

    Small t (little noise) is where predicting eps is hardest, so those buckets stay highest.
    """
    rows = _read_csv(loss_by_t_csv)
    fig = Figure(figsize=(6.5, 3.6), layout="constrained")
    ax = fig.add_subplot()
    buckets = [k for k in (rows[0] if rows else {}) if k != "step"]
    cmap = colormaps["viridis"]
    for i, name in enumerate(buckets):
        pts = [(int(r["step"]), float(r[name])) for r in rows if r[name] != ""]
        if pts:
            s, v = zip(*pts, strict=True)
            ax.plot(s, v, color=cmap(i / max(1, len(buckets) - 1)), lw=1.3, label=f"t in {name[1:]} of T")
    ax.set(xlabel="step", ylabel="loss", yscale="log", title="training loss by timestep bucket")
    ax.grid(True, alpha=0.3, which="both")
    if buckets:
        ax.legend(fontsize=7, ncol=2, loc="upper right")
    return _finish(fig, path)


# ------------------------------------------------------------------------------------------ forward process
@torch.no_grad()
def forward_trajectory(diffusion: GaussianDiffusion, x0: Tensor, ts: Sequence[int], method: str = "chain",
                       generator: torch.Generator | None = None, noise: Tensor | None = None) -> Tensor:
    """x_t for each index in ts: [len(ts), B, C, H, W] (or [len(ts), *x0.shape] for any x0 [B, ...]).

    method="chain": one trajectory of the Markov chain, x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) z
    (Eq. 2), run step by step from x0 up to max(ts). method="closed": each x_t drawn directly from
    q(x_t | x_0) (Eq. 4) with fresh noise, or with the same `noise` for every t if it is given.
    Both have the same distribution at every t; only the chain's x_t are correlated across t.
    """
    if method not in ("chain", "closed"):
        raise ValueError(f"unknown method {method!r}; expected 'chain' or 'closed'")
    ts = [int(t) for t in ts]
    if not ts or min(ts) < 0 or max(ts) >= diffusion.T:
        raise ValueError(f"timestep indices must lie in 0..{diffusion.T - 1}, got {ts}")
    x0 = _as_float(x0).to(diffusion.betas.device)
    out = {}
    if method == "closed":
        for t in ts:
            tt = torch.full((x0.shape[0],), t, dtype=torch.long, device=x0.device)
            eps = noise.to(x0) if noise is not None else _noise_like(x0, generator)
            out[t] = diffusion.q_sample(x0, tt, eps)
    else:
        x, wanted = x0, set(ts)
        for i in range(max(ts) + 1):
            x = diffusion.q_step(x, torch.full((x0.shape[0],), i, dtype=torch.long, device=x0.device),
                                 _noise_like(x0, generator))
            if i in wanted:
                out[i] = x
    return torch.stack([out[t] for t in ts]).cpu()


def _t_labels(diffusion: GaussianDiffusion, ts: Sequence[int]) -> list[str]:
    sab = diffusion.sqrt_alpha_bar.cpu()
    return [f"t = {_paper_t(t)}\n" + rf"$\sqrt{{\bar\alpha_t}}$ = {float(sab[t]):.2f}" for t in ts]


def plot_forward_trajectory(diffusion: GaussianDiffusion, x0: Tensor, ts: Sequence[int] | None = None,
                            method: str = "chain", generator: torch.Generator | None = None,
                            title: str | None = None, path: PathLike | None = None) -> Figure | Path:
    """The forward process as a table: one row per image of x0 [B, C, H, W], x_0 then x_t at increasing t.

    Column labels give the paper's t and the signal coefficient sqrt(alpha_bar_t) of Eq. 4.
    """
    _check_images(x0, "plot_forward_trajectory")
    ts = default_timesteps(diffusion.T) if ts is None else list(ts)
    traj = forward_trajectory(diffusion, x0, ts, method, generator)  # [K, B, C, H, W]
    table = torch.cat([_as_float(x0)[None], traj]).transpose(0, 1)  # [B, K + 1, C, H, W]
    how = "Markov chain, Eq. 2" if method == "chain" else r"closed form $q(x_t|x_0)$, Eq. 4"
    title = title or f"forward process ({how}), T = {diffusion.T}"
    return plot_image_table(table, None, ["x_0\n(data)"] + _t_labels(diffusion, ts), title, path)


@torch.no_grad()
def plot_chain_vs_closed_form(diffusion: GaussianDiffusion, x0_values: Sequence[float] = (1.0, 0.0, -1.0),
                              n: int = 2000, generator: torch.Generator | None = None,
                              path: PathLike | None = None) -> Figure | Path:
    """Run the Markov chain (Eq. 2) n times from each starting value and compare the empirical mean and std
    of x_t at every t with the closed form q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t)) (Eq. 4).
    """
    device = diffusion.betas.device
    x = torch.tensor(list(x0_values), dtype=torch.float32, device=device).repeat(n, 1)  # [n, V]
    means, stds = [], []
    for i in range(diffusion.T):
        t = torch.full((n,), i, dtype=torch.long, device=device)
        x = diffusion.q_step(x, t, _noise_like(x, generator))
        means.append(x.mean(0))
        stds.append(x.std(0))
    means, stds = torch.stack(means).cpu().numpy(), torch.stack(stds).cpu().numpy()  # [T, V]
    t = np.arange(1, diffusion.T + 1)
    sab = diffusion.sqrt_alpha_bar.cpu().numpy()
    every = max(1, diffusion.T // 40)
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    ax_m, ax_s = fig.subplots(1, 2)
    for k, v in enumerate(x0_values):
        ax_m.plot(t, sab * v, color=f"C{k}", lw=1.5, label=rf"$\sqrt{{\bar\alpha_t}}\,x_0$, $x_0$ = {v:g}")
        ax_m.plot(t[::every], means[::every, k], "o", color=f"C{k}", ms=3)
    ax_s.plot(t, np.sqrt(1 - sab**2), color="k", lw=1.5, label=r"$\sqrt{1-\bar\alpha_t}$ (Eq. 4)")
    for k, v in enumerate(x0_values):
        ax_s.plot(t[::every], stds[::every, k], "o", color=f"C{k}", ms=3, label=f"chain, $x_0$ = {v:g}")
    ax_m.set(xlabel="t", ylabel="mean of $x_t$", title=f"mean: chain of {n} runs (dots) vs Eq. 4 (lines)")
    ax_s.set(xlabel="t", ylabel="std of $x_t$", title="standard deviation")
    for ax in (ax_m, ax_s):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return _finish(fig, path)


@torch.no_grad()
def plot_pixel_histogram(diffusion: GaussianDiffusion, x0: Tensor, ts: Sequence[int] | None = None,
                         generator: torch.Generator | None = None, bins: int = 80,
                         path: PathLike | None = None) -> Figure | Path:
    """Histograms of all pixel values of x_t ~ q(x_t | x_0) for a batch x0 [B, C, H, W] at several t,
    against the N(0, 1) density: the data's two spikes (background, ink) melt into one standard normal.
    """
    _check_images(x0, "plot_pixel_histogram")
    ts = default_timesteps(diffusion.T, (0.01, 0.05, 0.1, 0.2, 0.4, 1.0)) if ts is None else list(ts)
    traj = forward_trajectory(diffusion, x0, ts, "closed", generator)
    panels = [("x_0 (data)", _as_float(x0))] + [(f"t = {_paper_t(t)}", traj[k]) for k, t in enumerate(ts)]
    fig = Figure(figsize=(2.3 * len(panels), 2.8), layout="constrained")
    axes = fig.subplots(1, len(panels), sharex=True, sharey=True)
    grid = np.linspace(-4, 4, 200)
    for ax, (name, x) in zip(axes, panels, strict=True):
        v = x.flatten().numpy()
        ax.hist(v, bins=bins, range=(-4, 4), density=True, color="C0", alpha=0.75)
        ax.plot(grid, _normal_pdf(grid), "k--", lw=1, label="N(0, 1)")
        ax.set_title(name, fontsize=10)
        ax.text(0.03, 0.97, f"mean {v.mean():+.2f}\nstd {v.std():.2f}", transform=ax.transAxes, va="top",
                fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_yticks([])
    axes[0].set_ylim(0, 1.0)  # the data's spikes at -1 and 1 go off the top
    axes[-1].legend(fontsize=7, loc="upper right")
    fig.suptitle(f"pixel values of $x_t$ converge to N(0, 1)  ({x0.shape[0]} images, T = {diffusion.T})",
                 fontsize=11)
    return _finish(fig, path)


# ---------------------------------------------------------------------------------------------- schedules
def plot_schedules(names: Sequence[str] = tuple(SCHEDULES), T: int = 1000,
                   path: PathLike | None = None) -> Figure | Path:
    """beta_t, alpha_bar_t, sqrt(alpha_bar_t) (signal) with sqrt(1 - alpha_bar_t) (noise), and log-SNR
    against t for several schedules (ddpm.schedules.make_betas) in one 2x2 figure."""
    fig = Figure(figsize=(10, 7), layout="constrained")
    (a_beta, a_abar), (a_sqrt, a_snr) = fig.subplots(2, 2, sharex=True)
    t = np.arange(1, T + 1)
    for k, name in enumerate(names):
        betas = make_betas(name, T)
        abar = alpha_bar(betas)
        c = f"C{k}"
        a_beta.plot(t, betas.numpy(), color=c, label=name)
        a_abar.plot(t, abar.numpy(), color=c, label=name)
        a_sqrt.plot(t, abar.sqrt().numpy(), color=c)
        a_sqrt.plot(t, (1 - abar).sqrt().numpy(), color=c, ls=":")
        a_snr.plot(t, log_snr(abar).numpy(), color=c, label=name)
    a_beta.set(yscale="log", ylabel=r"$\beta_t$", title=r"$\beta_t$ (variance added at step t, log scale)")
    a_abar.set(ylabel=r"$\bar\alpha_t$", title=r"$\bar\alpha_t = \prod_{s \leq t}(1-\beta_s)$")
    a_sqrt.set(ylabel="coefficient", xlabel="t",
               title=r"$x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$ (Eq. 4)")
    a_snr.axhline(0, color="gray", lw=0.8)
    a_snr.set(ylabel="log-SNR", xlabel="t",
              title=r"log-SNR $= \log\,\bar\alpha_t/(1-\bar\alpha_t)$ (0: signal = noise)")
    a_sqrt.plot([], [], color="k", label=r"signal $\sqrt{\bar\alpha_t}$")
    a_sqrt.plot([], [], color="k", ls=":", label=r"noise $\sqrt{1-\bar\alpha_t}$")
    for ax in (a_beta, a_abar, a_sqrt, a_snr):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="center right" if ax is a_sqrt else "best")
    fig.suptitle(f"noise schedules, T = {T}", fontsize=12)
    return _finish(fig, path)


@torch.no_grad()
def plot_small_T_pitfall(T: int = 300, x0: Tensor | None = None, generator: torch.Generator | None = None,
                         path: PathLike | None = None) -> Figure | Path:
    """The classic bug: the paper's linear 1e-4..0.02 betas with a small T and no 1000/T rescale.

    Left: sqrt(alpha_bar) against the fraction t/T; the unscaled short schedule ends with signal left in
    x_T, although sampling starts from pure N(0, I). Right (if images x0 [B, C, H, W] are given): x_T
    under each schedule, with the same noise, next to pure noise.
    """
    unscaled = make_betas("linear", T, beta_start=1e-4, beta_end=0.02)
    variants = [("paper: linear, T = 1000", make_betas("linear", 1000)),
                (f"T = {T}, 1e-4..0.02 unscaled (bug)", unscaled),
                (f"T = {T}, rescaled by 1000/T", make_betas("linear", T))]
    fig = Figure(figsize=(11 if x0 is not None else 6.5, 3.8), layout="constrained")
    axes = fig.subplots(1, 2, width_ratios=(1.3, 1)) if x0 is not None else [fig.add_subplot()]
    ax = axes[0]
    for k, (name, betas) in enumerate(variants):
        sab = alpha_bar(betas).sqrt().numpy()
        frac = np.arange(1, len(betas) + 1) / len(betas)
        ax.plot(frac, sab, color=f"C{k}", lw=2, ls="--" if k == 1 else "-",
                label=rf"{name}: $\sqrt{{\bar\alpha_T}}$ = {sab[-1]:.3f}")
    ax.set(xlabel="t / T", ylabel=r"signal left: $\sqrt{\bar\alpha_t}$", yscale="log", ylim=(1e-3, 1.2),
           title="small T without rescaling leaves signal at t = T")
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower left")
    if x0 is not None:
        # One x_T hides a faint digit in the noise; the mean of `draws` samples of x_T ~ q(x_T | x_0) shows
        # what is left (noise std / sqrt(draws), signal unchanged), here contrast-stretched.
        _check_images(x0, "plot_small_T_pitfall")
        x0, draws = _as_float(x0), 32
        rows = []
        for _, betas in variants + [("N(0, I)", None)]:
            abar_T = float(alpha_bar(betas)[-1]) if betas is not None else 0.0
            eps = torch.randn((draws, *x0.shape), generator=generator).mean(0)
            mean_xT = math.sqrt(abar_T) * x0 + math.sqrt(1 - abar_T) * eps
            rows.append(mean_xT / (3 * mean_xT.std()))
        labels = ["T=1000", f"T={T}\nunscaled", f"T={T}\nrescaled", "N(0, I)"]
        _table_on_axes(axes[1], torch.stack(rows), labels, None)
        axes[1].set_title(f"mean of {draws} draws of $x_T$: any digit left is a bug", fontsize=10)
    return _finish(fig, path)


# ---------------------------------------------------------------------------------------------- the network
def plot_timestep_embedding(dim: int = 128, T: int = 1000, max_period: float = 10000.0,
                            path: PathLike | None = None) -> Figure | Path:
    """The sinusoidal timestep embedding (ddpm.nn.embeddings.timestep_embedding) [T, dim] as a heat map,
    a few of its columns against t, and the cosine similarity between the embeddings of two timesteps."""
    from ddpm.nn.embeddings import timestep_embedding

    emb = timestep_embedding(torch.arange(T), dim, max_period)  # [T, dim]
    half = dim // 2
    fig = Figure(figsize=(14, 4), layout="constrained")
    ax_h, ax_c, ax_s = fig.subplots(1, 3, width_ratios=(1.4, 1.2, 1))
    im = ax_h.imshow(emb.T.numpy(), aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest",
                     extent=(0.5, T + 0.5, dim - 0.5, -0.5))
    ax_h.axhline(half - 0.5, color="k", lw=0.8)
    ax_h.set(xlabel="timestep index", ylabel=f"dimension (0..{half - 1}: sin, {half}..{dim - 1}: cos)",
             title=f"emb(t) [T={T}, D={dim}]: fast frequencies on top")
    fig.colorbar(im, ax=ax_h, fraction=0.04)
    for k, d in enumerate(sorted({round(f * (half - 1)) for f in (0.1, 0.25, 0.4, 0.55, 0.7)})):
        freq = max_period ** (-d / max(half - 1, 1))
        ax_c.plot(np.arange(T), emb[:, d].numpy() + 2.2 * k, lw=1,
                  label=f"sin, dim {d} (period {2 * math.pi / freq:.3g})")
    ax_c.set(xlabel="timestep index", yticks=[], ylim=(-1.4, 2.2 * k + 3.2),
             title="single dimensions: one frequency each")
    ax_c.legend(fontsize=7, loc="upper right", framealpha=0.9)
    sub = emb[:: max(1, T // 250)]
    unit = sub / sub.norm(dim=1, keepdim=True)
    sim = (unit @ unit.T).numpy()
    im2 = ax_s.imshow(sim, cmap="viridis", extent=(0, T, T, 0), interpolation="nearest")
    ax_s.set(xlabel="t", ylabel="t'", title="cosine similarity of emb(t), emb(t')")
    fig.colorbar(im2, ax=ax_s, fraction=0.046)
    return _finish(fig, path)


_UNET_STAGES = re.compile(r"^(conv_in|conv_out|mid\.\d+|down\.\d+\.(blocks\.\d+|downsample)"
                          r"|up\.\d+\.(blocks\.\d+|upsample))$")


@torch.no_grad()
def trace_shapes(model: torch.nn.Module, x: Tensor, t: Tensor, cond=None,
                 pattern: str | re.Pattern = _UNET_STAGES) -> list[tuple[str, tuple[int, ...]]]:
    """Run model(x, t, cond) once and record the output shape of every submodule whose name matches
    `pattern` (default: the stages of ddpm.nn.unet.UNet), in execution order: [(name, shape), ...]."""
    pattern = re.compile(pattern) if isinstance(pattern, str) else pattern
    records: list[tuple[str, tuple[int, ...]]] = []
    def record(name):
        return lambda module, inputs, output: records.append((name, tuple(output.shape)))

    hooks = [m.register_forward_hook(record(n)) for n, m in model.named_modules() if pattern.match(n)]
    was_training = model.training
    try:
        model.eval()
        model(x, t, cond)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return records


def plot_unet_shapes(shapes: Sequence[tuple[str, tuple[int, ...]]], title: str | None = None,
                     path: PathLike | None = None) -> Figure | Path:
    """The "U": each traced stage (trace_shapes) placed by execution order (x) and resolution (y), labelled
    with its channel count; dashed arcs are the skip connections from the down path to the up blocks."""
    if not shapes:
        raise ValueError("plot_unet_shapes needs the (name, shape) list of trace_shapes")
    res = np.array([s[-1] for _, s in shapes], dtype=float)
    ch = np.array([s[1] for _, s in shapes])
    x = np.arange(len(shapes))
    fig = Figure(figsize=(max(8.0, 0.38 * len(shapes)), 4.2), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(x, res, color="gray", lw=1, zorder=1)
    colors = ["C0" if n.startswith(("conv_in", "down")) else "C3" if n.startswith("mid") else "C2"
              for n, _ in shapes]
    ax.scatter(x, res, s=20 + 140 * ch / ch.max(), c=colors, zorder=2)
    for xi, r, c in zip(x, res, ch, strict=True):
        ax.annotate(str(c), (xi, r), xytext=(0, 7), textcoords="offset points", ha="center", fontsize=7)
    # skip connections: the up blocks consume the down-path activations in reverse order
    down = [i for i, (n, _) in enumerate(shapes) if n.startswith(("conv_in", "down"))]
    up = [i for i, (n, _) in enumerate(shapes) if re.match(r"^up\.\d+\.blocks", n)]
    for i, j in zip(reversed(down), up, strict=False):
        arrow = dict(arrowstyle="->", ls="--", color="C0", alpha=0.35, connectionstyle="arc3,rad=0.2")
        ax.annotate("", (j, res[j]), (i, res[i]), arrowprops=arrow)
    ax.set_yscale("log", base=2)
    ax.set_ylim(res.min() / 1.5, res.max() * 1.3)
    ax.set_yticks(sorted(set(res)), [f"{int(r)}x{int(r)}" for r in sorted(set(res))])
    ax.set_xticks(x, [n for n, _ in shapes], rotation=70, fontsize=7)
    ax.set(ylabel="resolution", title=title or ("U-Net stages: resolution (y), channels (numbers, marker "
                                                "size); blue: down, red: middle, green: up; dashed: skips"))
    ax.grid(True, alpha=0.2)
    return _finish(fig, path)


# ------------------------------------------------------------------------------------------ reverse process
class Frame(NamedTuple):
    """One moment of a reverse trajectory: the paper's t of x_t (0 = the finished sample), x_t, and the
    network's prediction of x_0 made from x_t (Eq. 4 solved for x_0; equal to x_t at t = 0)."""

    t: int
    x_t: Tensor
    pred_x0: Tensor


@torch.no_grad()
def reverse_trajectory(model: Callable, diffusion: GaussianDiffusion, shape: Sequence[int], cond=None, *,
                       sampler: str = "ancestral", steps: int | None = None, frames: int | None = 10,
                       generator: torch.Generator | None = None, device=None, **kwargs) -> list[Frame]:
    """Sample with ddpm.samplers (ancestral = Algorithm 2, or DDIM) and keep `frames` evenly spaced
    moments (None: every step), from x_T to the final x_0. Tensors are moved to the CPU.

    steps: the sampler's number of steps (default T for ancestral, 50 for DDIM; fewer = respaced).
    generator: a torch.Generator on `device` (default: the diffusion's device), for reproducible samples.
    kwargs go to the sampler (guidance_scale, variance, eta, clip_denoised, ...).
    """
    from ddpm.samplers import SAMPLERS, sample, space_timesteps

    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of: {', '.join(SAMPLERS)}")
    T = diffusion.T
    steps = steps if steps is not None else (T if sampler == "ancestral" else 50)
    original = space_timesteps(T, steps) if steps != T else list(range(T))  # sampler step i -> original index
    S = len(original)
    if frames is None or frames >= S:
        keep = set(range(S))
    else:
        if frames < 2:
            raise ValueError(f"frames must be >= 2 (first and last) or None, got {frames}")
        keep = {round(k * (S - 1) / (frames - 1)) for k in range(frames)}
    device = device if device is not None else diffusion.betas.device
    x = torch.randn(tuple(shape), generator=generator, device=device)  # x_T
    out: list[Frame] = []
    for step in sample(model, diffusion, tuple(shape), cond, sampler=sampler, progressive=True, steps=steps,
                       x_T=x, generator=generator, device=device, **kwargs):
        if step.t in keep:
            out.append(Frame(original[step.t] + 1, x.cpu(), step.pred_x0.cpu()))
        x = step.x_t
    out.append(Frame(0, x.cpu(), x.cpu()))
    return out


def plot_reverse_trajectory(frames: Sequence[Frame], n_images: int = 4, title: str | None = None,
                            path: PathLike | None = None) -> Figure | Path:
    """x_t beside the network's predicted x_0 at each kept step (reverse_trajectory): for each of the first
    n_images samples one row of x_t and, below it, one row of predicted x_0; columns go from x_T to x_0."""
    if not frames:
        raise ValueError("plot_reverse_trajectory needs frames (see reverse_trajectory)")
    n = min(n_images, frames[0].x_t.shape[0])
    rows, labels = [], []
    for k in range(n):
        rows.append(torch.stack([_as_float(f.x_t[k]) for f in frames]))
        rows.append(torch.stack([_as_float(f.pred_x0[k]) for f in frames]))
        labels += [f"#{k + 1}: $x_t$", r"predicted $x_0$"]
    cols = [f"t = {f.t}" if f.t > 0 else "x_0\n(sample)" for f in frames]
    title = title or r"reverse process: $x_t$ and the network's guess of $x_0$ from it"
    return plot_image_table(torch.stack(rows), labels, cols, title, path)


def save_reverse_animation(frames: list[torch.Tensor], ts: list[int], path: str | os.PathLike, nrow: int = 8,
                           fps: int = 10, pred_x0: list[torch.Tensor] | None = None) -> Path:
    """The reverse process as a GIF (matplotlib PillowWriter, no ffmpeg): frames[i] is x_t [N, C, H, W]
    at step ts[i] (0 = the finished samples). With pred_x0 (one [N, C, H, W] per frame) the predicted x_0
    is shown on the right. The last frame is held for a second."""
    from matplotlib.animation import FuncAnimation, PillowWriter

    if not frames:
        raise ValueError("save_reverse_animation needs at least one frame")
    if len(ts) != len(frames) or (pred_x0 is not None and len(pred_x0) != len(frames)):
        raise ValueError(f"got {len(frames)} frames, {len(ts)} timesteps and "
                         f"{len(pred_x0) if pred_x0 is not None else 0} predictions; they must match")
    panels = [[make_grid(f, nrow) for f in frames]]
    if pred_x0 is not None:
        panels.append([make_grid(p, nrow) for p in pred_x0])
    gh, gw = panels[0][0].shape[:2]
    scale = max(1.0, 240 / max(gh, gw))  # small images (MNIST) are enlarged
    dpi = 60
    fig = Figure(figsize=(len(panels) * gw * scale / dpi, gh * scale / dpi + 0.5))
    gray = panels[0][0].shape[2] == 1
    images = []
    for k, grids in enumerate(panels):
        ax = fig.add_axes((k / len(panels), 0, 1 / len(panels), gh * scale / (gh * scale + 0.5 * dpi)))
        ax.axis("off")
        first = grids[0][..., 0] if gray else grids[0]
        images.append(ax.imshow(first, cmap="gray" if gray else None, vmin=0, vmax=255,
                                interpolation="nearest"))
        if len(panels) > 1:
            ax.set_title(["$x_t$", "predicted $x_0$"][k], fontsize=11)
    title = fig.suptitle("", fontsize=12)

    def draw(i):
        for im, grids in zip(images, panels, strict=True):
            im.set_data(grids[i][..., 0] if gray else grids[i])
        title.set_text(f"t = {ts[i]}" if ts[i] > 0 else "x_0")
        return (*images, title)

    hold = [len(frames) - 1] * max(1, fps)  # linger on the final samples for a second
    anim = FuncAnimation(fig, draw, frames=list(range(len(frames))) + hold, blit=False,
                         cache_frame_data=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    anim.save(str(path), writer=PillowWriter(fps=fps), dpi=dpi)
    return path


# ---------------------------------------------------------------------------------------------- losses
@torch.no_grad()
def loss_profile(model: Callable, diffusion: GaussianDiffusion, x0: Tensor, cond=None,
                 ts: Sequence[int] | None = None, n_ts: int = 40,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """The L_simple loss of a model at fixed timesteps: (ts [K], losses [K, B]), one loss per image and t.

    ts default: n_ts indices spaced evenly in log(t), so the small-t end (where the loss changes fastest)
    is resolved. A torch module is evaluated in eval mode (no condition dropout) and restored afterwards.
    """
    T = diffusion.T
    if ts is None:
        ts = sorted({int(round(v)) - 1 for v in np.geomspace(1, T, n_ts)})
    ts = torch.as_tensor(list(ts), dtype=torch.long)
    x0 = _as_float(x0).to(diffusion.betas.device)
    was_training = getattr(model, "training", None)
    if was_training is not None:
        model.eval()
    try:
        losses = []
        for t in ts.tolist():
            tt = torch.full((x0.shape[0],), t, dtype=torch.long, device=x0.device)
            losses.append(diffusion.training_loss(model, x0, cond, t=tt, noise=_noise_like(x0, generator),
                                                  reduction="none").cpu())
    finally:
        if was_training:
            model.train()
    return ts, torch.stack(losses)


def plot_loss_profile(ts: Tensor, losses: Tensor, title: str | None = None,
                      path: PathLike | None = None) -> Figure | Path:
    """Loss against t (loss_profile): the mean over images with the 10-90% band; log-log axes.
    The dotted line at 1 is an untrained network (eps_theta = 0 gives E[eps^2] = 1)."""
    t = ts.numpy() + 1
    v = losses.double().numpy()
    fig = Figure(figsize=(6.5, 3.8), layout="constrained")
    ax = fig.add_subplot()
    ax.fill_between(t, np.quantile(v, 0.1, axis=1), np.quantile(v, 0.9, axis=1), alpha=0.25, color="C0",
                    label="10-90% of images")
    ax.plot(t, v.mean(axis=1), "o-", ms=3, color="C0", label="mean")
    ax.axhline(1.0, color="gray", ls=":", label=r"$\epsilon_\theta = 0$ (untrained)")
    spread = v.mean(axis=1).max() / max(v.mean(axis=1).min(), 1e-12)
    ax.set(xscale="log", yscale="log" if spread > 10 else "linear", xlabel="t",
           ylabel=r"$\|\epsilon - \epsilon_\theta(x_t, t)\|^2$ per dim",
           title=title or "loss per timestep: hard at small t (little noise to find), easy at large t")
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _finish(fig, path)


def plot_vlb_terms(result: Mapping[str, Tensor], timesteps: Sequence[int] | Tensor | None = None,
                   title: str | None = None, path: PathLike | None = None) -> Figure | Path:
    """The terms of the variational bound (Eq. 5) from GaussianDiffusion.bits_per_dim, in bits/dim.

    Left: L_0 (decoder) and each L_{t-1} against t, with L_T (prior) as a line. Right: the share of the
    bound from steps <= t. `timesteps` are the original indices of the terms (a respaced process's
    timestep_map); default 0..S-1.
    """
    terms = result["terms"].double().mean(0).cpu().numpy()  # [S]
    prior = float(result["prior"].double().mean())
    total = result["total"].double().cpu().numpy()
    idx = np.arange(len(terms)) if timesteps is None else np.asarray(torch.as_tensor(timesteps).cpu())
    t = idx + 1
    fig = Figure(figsize=(11, 3.8), layout="constrained")
    ax, ax_c = fig.subplots(1, 2)
    ax.plot(t[1:], terms[1:], "-", color="C0", lw=1.2,
            label=r"$L_{t-1}$ = KL(q($x_{t-1}|x_t,x_0$) || p($x_{t-1}|x_t$))")
    ax.plot(t[:1], terms[:1], "s", color="C3", ms=7, label=rf"$L_0$ (decoder, Eq. 13) = {terms[0]:.3f}")
    ax.axhline(prior, color="C2", ls="--", label=rf"$L_T$ (prior) = {prior:.1e}")
    ax.set(xscale="log", yscale="log", xlabel="t", ylabel="bits/dim",
           title="terms of the bound (Eq. 5): almost all of it is at small t")
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize=8)
    cum = np.cumsum(terms) / max(terms.sum() + prior, 1e-12)
    ax_c.plot(t, cum, color="C0")
    ax_c.set(xscale="log", ylim=(0, 1.02), xlabel="t", ylabel="fraction of the bound",
             title="share of the bound from steps 1..t")
    ax_c.grid(True, alpha=0.3, which="both")
    fig.suptitle(title or f"bits/dim <= {total.mean():.3f} (+- {total.std():.3f} over {len(total)} images)",
                 fontsize=11)
    return _finish(fig, path)


# ---------------------------------------------------------------------------------------------- 2D toys
def _toy_scatter(ax, p: np.ndarray, lim: float, title: str, c=None, s: float = 2.0) -> None:
    ax.scatter(p[:, 0], p[:, 1], s=s, c=c, cmap="viridis" if c is not None else None, alpha=0.6, linewidths=0)
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal")
    ax.set_title(title, fontsize=10)
    ax.tick_params(labelsize=7)


@torch.no_grad()
def plot_toy_forward(diffusion: GaussianDiffusion, points: Tensor, ts: Sequence[int] | None = None,
                     generator: torch.Generator | None = None, lim: float = 3.5,
                     path: PathLike | None = None) -> Figure | Path:
    """The forward process on a 2D point cloud [N, 2]: x_0 and x_t at several t, each point coloured by its
    starting radius so you can see the structure dissolve into N(0, I)."""
    ts = default_timesteps(diffusion.T, (0.05, 0.1, 0.2, 0.4, 0.7, 1.0)) if ts is None else list(ts)
    x0 = points.detach().float().cpu()
    traj = forward_trajectory(diffusion, x0, ts, "closed", generator)  # [K, N, 2]
    color = x0.norm(dim=1).numpy()
    fig = Figure(figsize=(2.4 * (len(ts) + 1), 2.7), layout="constrained")
    axes = fig.subplots(1, len(ts) + 1)
    _toy_scatter(axes[0], x0.numpy(), lim, "x_0 (data)", color)
    for ax, t, x in zip(axes[1:], ts, traj, strict=True):
        _toy_scatter(ax, x.numpy(), lim, f"t = {_paper_t(t)}", color)
    fig.suptitle(f"forward diffusion of a point cloud (T = {diffusion.T})", fontsize=11)
    return _finish(fig, path)


def plot_toy_reverse(frames: Sequence[Frame], data: Tensor | None = None,
                     fractions: Sequence[float] = (1.0, 0.3, 0.15, 0.07, 0.03, 0.0), n_paths: int = 25,
                     lim: float = 3.5, title: str | None = None,
                     path: PathLike | None = None) -> Figure | Path:
    """Reverse trajectories of particles (reverse_trajectory on shape [N, 2], ideally frames=None):
    snapshots of the cloud at t close to these fractions of T (most of the structure appears near the
    end), then the paths of n_paths particles from x_T (start) to x_0 (black dots) over the data."""
    if len(frames) < 2:
        raise ValueError("plot_toy_reverse needs at least two frames (see reverse_trajectory)")
    xs = torch.stack([f.x_t for f in frames]).float().numpy()  # [F, N, 2]
    t_of = np.array([f.t for f in frames])
    picks = sorted({int(np.abs(t_of - f * t_of[0]).argmin()) for f in fractions})
    fig = Figure(figsize=(2.5 * (len(picks) + 1.4), 2.9), layout="constrained")
    axes = fig.subplots(1, len(picks) + 1, width_ratios=[1] * len(picks) + [1.4])
    for ax, i in zip(axes[:-1], picks, strict=True):
        _toy_scatter(ax, xs[i], lim, f"t = {frames[i].t}" if frames[i].t > 0 else "x_0 (samples)")
    ax = axes[-1]
    if data is not None:
        d = data.detach().float().cpu().numpy()
        ax.scatter(d[:, 0], d[:, 1], s=1, color="0.6", alpha=0.5, linewidths=0, label="data")
    cmap = colormaps["plasma"]
    for k in range(min(n_paths, xs.shape[1])):
        ax.plot(xs[:, k, 0], xs[:, k, 1], lw=0.7, alpha=0.7, color=cmap(0.85 * k / max(1, n_paths - 1)))
        ax.plot(xs[-1, k, 0], xs[-1, k, 1], "o", ms=3, color="k")
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal")
    ax.set_title(f"paths of {min(n_paths, xs.shape[1])} particles (dots: x_0)", fontsize=10)
    ax.tick_params(labelsize=7)
    fig.suptitle(title or "reverse process on 2D points: noise flows onto the data", fontsize=11)
    return _finish(fig, path)


@torch.no_grad()
def plot_score_field(model: Callable, diffusion: GaussianDiffusion, ts: Sequence[int] | None = None,
                     data: Tensor | None = None, lim: float = 3.0, grid: int = 21,
                     path: PathLike | None = None) -> Figure | Path:
    """The learned eps field of a 2D model as arrows at several t: -eps_theta(x, t) points towards higher
    density, since the score is grad log q(x_t) ~ -eps_theta(x_t, t) / sqrt(1 - alpha_bar_t).

    Arrow length grows as sqrt(|eps_theta|) (longest = one grid cell per panel); the colour is |eps_theta|.
    """
    ts = default_timesteps(diffusion.T, (0.02, 0.1, 0.3, 0.7)) if ts is None else list(ts)
    device = diffusion.betas.device
    axis = torch.linspace(-lim, lim, grid)
    gx, gy = torch.meshgrid(axis, axis, indexing="xy")
    pts = torch.stack([gx.flatten(), gy.flatten()], dim=1).to(device)  # [G*G, 2]
    was_training = getattr(model, "training", None)
    if was_training is not None:
        model.eval()
    fig = Figure(figsize=(3.2 * len(ts), 3.75), layout="constrained")
    axes = fig.subplots(1, len(ts), squeeze=False)[0]
    spacing = 2 * lim / (grid - 1)
    try:
        for ax, t in zip(axes, ts, strict=True):
            tt = torch.full((pts.shape[0],), int(t), dtype=torch.long, device=device)
            eps = model(pts, diffusion.model_t(tt), None).float().cpu()
            u, v = -eps[:, 0].numpy(), -eps[:, 1].numpy()
            mag = np.hypot(u, v)
            if data is not None:
                d = data.detach().float().cpu().numpy()
                ax.scatter(d[:, 0], d[:, 1], s=1, color="0.6", alpha=0.5, linewidths=0)
            shrink = 0.9 * spacing / np.sqrt(max(mag.max(), 1e-12)) / np.sqrt(np.maximum(mag, 1e-12))
            ax.quiver(gx.flatten().numpy(), gy.flatten().numpy(), u * shrink, v * shrink, mag, cmap="viridis",
                      angles="xy", scale_units="xy", scale=1.0, width=0.005)
            ax.set(xlim=(-lim - spacing, lim + spacing), ylim=(-lim - spacing, lim + spacing), aspect="equal")
            ax.set_title(rf"t = {_paper_t(t)}: $-\epsilon_\theta(x, t)$", fontsize=10)
            ax.tick_params(labelsize=7)
    finally:
        if was_training:
            model.train()
    fig.suptitle(r"the learned noise field: $-\epsilon_\theta$ points along the score $\nabla \log q(x_t)$",
                 fontsize=11)
    return _finish(fig, path)
