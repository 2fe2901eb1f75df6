"""unCLIP in pictures: a 2-D projection of CLIP image embeddings, true beside the prior's samples (the matrices of
CLIP's similarities are ddpm.viz.plot_matrix)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from torch import Tensor

from ddpm.viz.grids import PathLike, _finish

__all__ = ["pca_2d", "plot_embedding_projection"]


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
