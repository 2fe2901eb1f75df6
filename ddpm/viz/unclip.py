"""unCLIP in pictures: matrices (CLIP similarities of images and captions, zero-shot confusion, what the prior's
samples are as CLIP reads them) and a 2-D projection of CLIP image embeddings, true beside the prior's samples."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from torch import Tensor

from ddpm.viz.grids import PathLike, _finish

__all__ = ["plot_matrix", "pca_2d", "plot_embedding_projection"]


def plot_matrix(matrix: Tensor | np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str], title: str = "",
                xlabel: str = "", ylabel: str = "", fmt: str = "{:.2f}", path: PathLike | None = None) -> Figure | Path:
    """A heatmap of a small matrix [R, C] with its values written in the cells (rows top to bottom)."""
    m = np.asarray(torch.as_tensor(matrix, dtype=torch.float32))
    if m.shape != (len(row_labels), len(col_labels)):
        raise ValueError(f"a {m.shape} matrix needs {m.shape[0]} row and {m.shape[1]} column labels, got "
                         f"{len(row_labels)} and {len(col_labels)}")
    fig = Figure(figsize=(0.5 * m.shape[1] + 2.5, 0.42 * m.shape[0] + 1.4), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(m, cmap="viridis")
    ax.set_xticks(range(m.shape[1]), col_labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(m.shape[0]), row_labels, fontsize=7)
    mid = (m.max() + m.min()) / 2
    for (i, j), v in np.ndenumerate(m):
        ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=6, color="black" if v > mid else "white")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return _finish(fig, path)


def pca_2d(reference: Tensor, *others: Tensor) -> list[Tensor]:
    """The first two principal axes of ``reference`` [N, D]; returns [reference, *others] projected on them."""
    mean = reference.float().mean(0)
    _, _, v = torch.linalg.svd(reference.float() - mean, full_matrices=False)
    return [(x.float() - mean) @ v[:2].T for x in (reference, *others)]


def plot_embedding_projection(true_emb: Tensor, true_labels: Tensor, sampled_emb: Tensor, sampled_labels: Tensor,
                              label_names: Sequence[str], title: str = "",
                              path: PathLike | None = None) -> Figure | Path:
    """CLIP image embeddings of real digits (dots) and the prior's samples (crosses), coloured by class, on the
    first two principal axes of the real ones."""
    real, fake = pca_2d(true_emb, sampled_emb)
    fig = Figure(figsize=(5.6, 4.6), layout="constrained")
    ax = fig.subplots()
    colours = colormaps["tab10"]
    for k, name in enumerate(label_names):
        r, f = real[true_labels == k], fake[sampled_labels == k]
        ax.scatter(r[:, 0], r[:, 1], s=4, alpha=0.35, color=colours(k))
        ax.scatter(f[:, 0], f[:, 1], s=28, marker="x", color=colours(k), label=name)
    ax.legend(fontsize=7, markerscale=0.8, ncol=2, title="prior samples (x)", title_fontsize=7)
    ax.set(title=title, xlabel="principal axis 1", ylabel="principal axis 2")
    return _finish(fig, path)
