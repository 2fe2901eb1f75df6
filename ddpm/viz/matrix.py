"""A matrix as a picture: rows against columns with each cell's value written in it (CLIP's similarities of
images and captions, a zero-shot confusion matrix, what a prior's samples are as CLIP reads them)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from ddpm.viz.grids import PathLike, _finish

__all__ = ["plot_matrix"]


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
