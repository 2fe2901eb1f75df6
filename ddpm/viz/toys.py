"""2D toys in pictures: point clouds, the forward process dissolving one, particles flowing back onto the
data (reverse_trajectory on shape [N, 2]), and the learned eps field as arrows."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from torch import Tensor

from ddpm._util import eval_mode
from ddpm.diffusion import GaussianDiffusion
from ddpm.samplers import Step
from ddpm.viz.forward import default_timesteps, forward_trajectory
from ddpm.viz.grids import PathLike, _finish, _paper_t, _t_batch
from ddpm.viz.reverse import _step_label

__all__ = ["plot_points", "plot_toy_forward", "plot_toy_reverse", "plot_score_field"]


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


def _toy_scatter(ax, p: np.ndarray, lim: float, title: str, c=None, s: float = 2.0) -> None:
    ax.scatter(p[:, 0], p[:, 1], s=s, c=c, cmap="viridis" if c is not None else None, alpha=0.6, linewidths=0)
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal")
    ax.set_title(title, fontsize=10)
    ax.tick_params(labelsize=7)


def _data_behind(ax, data: Tensor | None) -> None:
    """The data points [N, 2] in light gray, behind what is drawn next (nothing if data is None)."""
    if data is not None:
        d = data.detach().float().cpu().numpy()
        ax.scatter(d[:, 0], d[:, 1], s=1, color="0.6", alpha=0.5, linewidths=0, label="data")


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


def plot_toy_reverse(steps: Sequence[Step], data: Tensor | None = None,
                     fractions: Sequence[float] = (1.0, 0.3, 0.15, 0.07, 0.03, 0.0), n_paths: int = 25,
                     lim: float = 3.5, title: str | None = None,
                     path: PathLike | None = None) -> Figure | Path:
    """Reverse trajectories of particles (reverse_trajectory on shape [N, 2], ideally frames=None):
    snapshots of the cloud at t close to these fractions of T (most of the structure appears near the
    end), then the paths of n_paths particles from x_T (start) to x_0 (black dots) over the data."""
    if len(steps) < 2:
        raise ValueError("plot_toy_reverse needs at least two steps (see reverse_trajectory)")
    xs = torch.stack([s.x_t for s in steps]).float().numpy()  # [F, N, 2]
    paper_t = np.array([s.t + 1 for s in steps])  # T, ..., 0 (the finished sample)
    picks = sorted({int(np.abs(paper_t - f * paper_t[0]).argmin()) for f in fractions})
    fig = Figure(figsize=(2.5 * (len(picks) + 1.4), 2.9), layout="constrained")
    axes = fig.subplots(1, len(picks) + 1, width_ratios=[1] * len(picks) + [1.4])
    for ax, i in zip(axes[:-1], picks, strict=True):
        _toy_scatter(ax, xs[i], lim, _step_label(steps[i].t))
    ax = axes[-1]
    _data_behind(ax, data)
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
    fig = Figure(figsize=(3.2 * len(ts), 3.75), layout="constrained")
    axes = fig.subplots(1, len(ts), squeeze=False)[0]
    spacing = 2 * lim / (grid - 1)
    for ax, t in zip(axes, ts, strict=True):
        with eval_mode(model):
            eps = model(pts, diffusion.model_t(_t_batch(t, pts.shape[0], device)), None).float().cpu()
        u, v = -eps[:, 0].numpy(), -eps[:, 1].numpy()
        mag = np.hypot(u, v)
        _data_behind(ax, data)
        shrink = 0.9 * spacing / np.sqrt(max(mag.max(), 1e-12)) / np.sqrt(np.maximum(mag, 1e-12))
        ax.quiver(gx.flatten().numpy(), gy.flatten().numpy(), u * shrink, v * shrink, mag, cmap="viridis",
                  angles="xy", scale_units="xy", scale=1.0, width=0.005)
        ax.set(xlim=(-lim - spacing, lim + spacing), ylim=(-lim - spacing, lim + spacing), aspect="equal")
        ax.set_title(rf"t = {_paper_t(t)}: $-\epsilon_\theta(x, t)$", fontsize=10)
        ax.tick_params(labelsize=7)
    fig.suptitle(r"the learned noise field: $-\epsilon_\theta$ points along the score $\nabla \log q(x_t)$",
                 fontsize=11)
    return _finish(fig, path)
