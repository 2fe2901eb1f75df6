"""Latent diffusion in pictures: latents beside the digits they encode, their histogram before and after
scaling, the forward process in latent space with and without the scale, interpolations, and a latent
reverse trajectory decoded at each step.

A latent channel (7x7 for the mnist autoencoder) is shown enlarged to the image size (nearest neighbour), in
gray with -3 as black and +3 as white (scaled latents have unit standard deviation), so one table holds
digits and latents side by side. ``decode`` arguments are callables from scaled latents to images in [-1, 1]
(``Autoencoder.from_latents`` or ``LoadedRun.decode``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import Tensor

from ddpm.diffusion import GaussianDiffusion
from ddpm.samplers import Step
from ddpm.viz.grids import PathLike, _finish, plot_image_table
from ddpm.viz.reverse import _step_label

__all__ = ["latent_channels", "plot_latent_trajectory", "plot_latents", "plot_latent_histogram",
           "plot_latent_forward", "plot_interpolation", "LATENT_RANGE"]

LATENT_RANGE = 3.0  # a latent value of +-3 is drawn white/black


def latent_channels(z: Tensor, size: int) -> Tensor:
    """Latents [B, c, h, w] as c gray images each [B, c, 1, size, size] in [-1, 1] (value / LATENT_RANGE)."""
    up = F.interpolate(z.detach().float().cpu(), size=(size, size), mode="nearest")
    return (up / LATENT_RANGE).clamp(-1, 1).unsqueeze(2)


@torch.no_grad()
def plot_latent_trajectory(steps: Sequence[Step], decode: Callable[[Tensor], Tensor], n_images: int = 2,
                           title: str | None = None, path: PathLike | None = None) -> Figure | Path:
    """For each of the first n_images samples of a latent reverse trajectory: one row per latent channel of x_t
    and a row of the decoded predicted x_0; columns from x_T to the finished sample."""
    if not steps:
        raise ValueError("plot_latent_trajectory needs steps (see ddpm.viz.reverse_trajectory)")
    decoded = [decode(s.pred_x0[:n_images]).cpu() for s in steps]
    size = decoded[0].shape[-1]
    c = steps[0].x_t.shape[1]
    rows, labels = [], []
    for k in range(min(n_images, steps[0].x_t.shape[0])):
        chans = torch.stack([latent_channels(s.x_t[k:k + 1], size)[0] for s in steps])  # [S, c, 1, H, W]
        rows += [chans[:, j] for j in range(c)]
        rows.append(torch.stack([d[k] for d in decoded]))
        labels += [f"#{k + 1}: $z_t$ ch {j}" for j in range(c)] + [r"decoded pred. $z_0$"]
    title = title or r"latent reverse process: the channels of $z_t$ and the decoded prediction of $z_0$"
    return plot_image_table(torch.stack(rows), labels, [_step_label(s.t, "\n") for s in steps], title, path)


@torch.no_grad()
def plot_latents(images: Tensor, latents: Tensor, reconstructions: Tensor, title: str | None = None,
                 path: PathLike | None = None) -> Figure | Path:
    """One row per digit: the original, its reconstruction, and the channels of its (scaled) latent."""
    size = images.shape[-1]
    chans = latent_channels(latents, size)  # [B, c, 1, H, W]
    table = torch.cat([images.float().cpu().unsqueeze(1), reconstructions.float().cpu().unsqueeze(1), chans], dim=1)
    cols = ["original", "reconstruction"] + [f"latent ch {j}" for j in range(latents.shape[1])]
    return plot_image_table(table, None, cols, title or "digits, their reconstructions and their 4x7x7 latents",
                            path, cell=1.0)


def plot_latent_histogram(raw: Tensor, scale: float, title: str | None = None,
                          path: PathLike | None = None) -> Figure | Path:
    """Histograms of the latent numbers before and after multiplying by ``scale``, against N(0, 1)."""
    fig = Figure(figsize=(9, 3.2), layout="constrained")
    grid = np.linspace(-5, 5, 201)
    normal = np.exp(-grid**2 / 2) / np.sqrt(2 * np.pi)
    for k, (values, name) in enumerate(((raw, "raw latents"), (raw * scale, f"scaled (x {scale:.3f})"))):
        ax = fig.add_subplot(1, 2, k + 1)
        v = values.detach().float().flatten().cpu().numpy()
        ax.hist(v, bins=120, range=(-8, 8), density=True, alpha=0.7, label=f"{name}: std {v.std():.3f}")
        ax.plot(grid, normal, "k--", lw=1, label="N(0, 1): the noise")
        ax.set_xlim(-8, 8)
        ax.legend(fontsize=8)
    fig.suptitle(title or "the latents before and after the scale", fontsize=10)
    return _finish(fig, path)


@torch.no_grad()
def plot_latent_forward(latents: Tensor, scale: float, diffusion: GaussianDiffusion,
                        decode: Callable[[Tensor], Tensor], timesteps: Sequence[int], seed: int = 0,
                        title: str | None = None, path: PathLike | None = None) -> Figure | Path:
    """The forward process q(z_t | z_0) on one digit's latent, scaled (unit variance, what the model sees) and
    unscaled (z_0 / scale): the first latent channel of z_t and the decoded z_t / sqrt(alpha_bar_t), the signal
    estimate a denoiser starts from. Same noise in both rows; t are indices 0..T-1."""
    z0 = latents[:1].float()
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(seed))
    rows, labels = [], []
    for name, z in (("scaled", z0), ("unscaled", z0 / scale)):
        zt = torch.cat([diffusion.q_sample(z, torch.tensor([t]), noise) for t in timesteps])
        ab = diffusion.alpha_bar[list(timesteps)].float().view(-1, 1, 1, 1).cpu()
        shown = decode((zt / ab.sqrt()) * (scale if name == "unscaled" else 1.0))
        rows += [latent_channels(zt, shown.shape[-1])[:, 0], shown.cpu()]
        labels += [f"{name}: $z_t$ ch 0", f"{name}: decoded\n$z_t/\\sqrt{{\\bar\\alpha_t}}$"]
    cols = [f"t = {t + 1}" for t in timesteps]
    return plot_image_table(torch.stack(rows), labels, cols, title or "the forward process in latent space, with "
                            "and without the scale", path)


@torch.no_grad()
def plot_interpolation(a: Tensor, b: Tensor, decode: Callable[[Tensor], Tensor], za: Tensor, zb: Tensor,
                       steps: int = 9, title: str | None = None, path: PathLike | None = None) -> Figure | Path:
    """From digit a to digit b: mixing the pixels (1 - w) a + w b, and mixing their latents, decoded."""
    w = torch.linspace(0, 1, steps).view(-1, 1, 1, 1)
    pixels = (1 - w) * a[:1].float().cpu() + w * b[:1].float().cpu()
    latent = decode((1 - w.to(za.device)) * za[:1] + w.to(za.device) * zb[:1]).cpu()
    cols = [f"w = {v:.2f}" for v in w.flatten().tolist()]
    return plot_image_table(torch.stack([pixels, latent]), ["pixel space", "latent space\n(decoded)"], cols,
                            title or "interpolating between two digits", path)
