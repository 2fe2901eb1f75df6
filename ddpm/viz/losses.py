"""Losses in pictures: a run's training curves (log.csv, loss_by_t.csv), a trained model's loss at each
timestep (loss_profile), and the terms of the variational bound (Eq. 5)."""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from torch import Tensor

from ddpm._util import eval_mode
from ddpm.diffusion import GaussianDiffusion
from ddpm.viz.grids import PathLike, _as_float, _finish, _noise_like, _t_batch

__all__ = ["plot_loss_curve", "plot_loss_by_t", "loss_profile", "plot_loss_profile", "plot_vlb_terms"]


# ---------------------------------------------------------------------------------------------- training logs
def _read_csv(path: PathLike) -> list[dict[str, str]]:
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))


def _smooth(y: np.ndarray, fraction: float = 0.07) -> np.ndarray:
    """Exponential moving average over a window of about `fraction` of the points (span w = fraction * N:
    alpha = 1 - 2 / (w + 1)), bias-corrected from the first point (like TensorBoard's smoothing).

    The window grows with the log, so a short log is smoothed over a few points and its smoothed curve
    does not lag far behind a falling loss, while a long one is smoothed over many.
    """
    span = max(1.0, fraction * len(y))
    alpha = 1 - 2 / (span + 1)
    out, avg = np.empty_like(y, dtype=float), 0.0
    for i, v in enumerate(y):
        avg = alpha * avg + (1 - alpha) * v
        out[i] = avg / (1 - alpha ** (i + 1))
    return out


def plot_loss_curve(log_csv: PathLike, path: PathLike | None = None) -> Figure | Path:
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


# ---------------------------------------------------------------------------------------------- a trained model
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
    losses = []
    with eval_mode(model):
        for t in ts.tolist():
            losses.append(diffusion.training_loss(model, x0, cond, t=_t_batch(t, x0.shape[0], x0.device),
                                                  noise=_noise_like(x0, generator), reduction="none").cpu())
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
    """The terms of the variational bound (Eq. 5) from ddpm.likelihood.bits_per_dim, in bits/dim.

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
