"""The forward process q in pictures: trajectories of x_t (Markov chain, Eq. 2, or closed form, Eq. 4),
the chain against the closed form, pixel histograms, the noise schedules and the small-T pitfall.

Arguments named ``ts`` hold the code's timestep indices 0..T-1; labels show the paper's t = index + 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from ddpm.diffusion import GaussianDiffusion
from ddpm.schedules import SCHEDULES, alpha_bar, log_snr, make_betas
from ddpm.viz.grids import (
    PathLike,
    _as_float,
    _check_images,
    _finish,
    _noise_like,
    _paper_t,
    _t_batch,
    _table_on_axes,
    plot_image_table,
)

__all__ = ["default_timesteps", "forward_trajectory", "plot_forward_trajectory", "plot_chain_vs_closed_form",
           "plot_pixel_histogram", "plot_schedules", "plot_small_T_pitfall"]


def default_timesteps(T: int, fractions: Sequence[float] = (0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.6, 1.0)) -> list[int]:
    """Code indices at these fractions of T (paper t = round(f T)); T = 1000: paper t 20, 50, ..., 1000."""
    return sorted({min(T - 1, max(0, round(f * T) - 1)) for f in fractions})


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
            eps = noise.to(x0) if noise is not None else _noise_like(x0, generator)
            out[t] = diffusion.q_sample(x0, _t_batch(t, x0.shape[0], x0.device), eps)
    else:
        x, wanted = x0, set(ts)
        for i in range(max(ts) + 1):
            x = diffusion.q_step(x, _t_batch(i, x0.shape[0], x0.device), _noise_like(x0, generator))
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
        x = diffusion.q_step(x, _t_batch(i, n, device), _noise_like(x, generator))
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


def _normal_pdf(x: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * x**2) / math.sqrt(2 * math.pi)


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


def _mean_x_T_table(variants, T: int, x0: Tensor, generator: torch.Generator | None, ax) -> None:
    """x_T under each schedule (None: pure noise), as the mean of `draws` samples of q(x_T | x_0): one x_T
    hides a faint digit in the noise; the mean (noise std / sqrt(draws), signal unchanged), here
    contrast-stretched, shows what is left."""
    x0, draws = _as_float(x0), 32
    rows = []
    for betas in variants:
        abar_T = float(alpha_bar(betas)[-1]) if betas is not None else 0.0
        eps = torch.randn((draws, *x0.shape), generator=generator).mean(0)
        mean_xT = math.sqrt(abar_T) * x0 + math.sqrt(1 - abar_T) * eps
        rows.append(mean_xT / (3 * mean_xT.std()))
    labels = ["T=1000", f"T={T}\nunscaled", f"T={T}\nrescaled", "N(0, I)"]
    _table_on_axes(ax, torch.stack(rows), labels, None)
    ax.set_title(f"mean of {draws} draws of $x_T$: any digit left is a bug", fontsize=10)


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
        _check_images(x0, "plot_small_T_pitfall")
        _mean_x_T_table([betas for _, betas in variants] + [None], T, x0, generator, axes[1])
    return _finish(fig, path)
