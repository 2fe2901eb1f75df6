"""Sample quality against the number of model calls (ddpm.metrics.sweep's rows), one line per sampler."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from ddpm.viz.grids import PathLike, _finish

__all__ = ["plot_quality_vs_calls"]


def plot_quality_vs_calls(rows: Sequence[dict[str, Any]], title: str = "",
                          path: PathLike | None = None) -> Figure | Path:
    """Two panels against model calls (log scale): the classifier's conditional accuracy, and the Frechet
    distance with its real-data floor (dashed). rows: dicts with sampler, model_calls, accuracy, frechet, floor."""
    fig = Figure(figsize=(9, 3.4), layout="constrained")
    ax_acc, ax_fd = fig.subplots(1, 2)
    for k, sampler in enumerate(dict.fromkeys(r["sampler"] for r in rows)):
        mine = sorted((r for r in rows if r["sampler"] == sampler), key=lambda r: r["model_calls"])
        calls = [r["model_calls"] for r in mine]
        if all(r["accuracy"] is not None for r in mine):
            ax_acc.plot(calls, [100 * r["accuracy"] for r in mine], "o-", color=f"C{k}", label=sampler)
        ax_fd.plot(calls, [r["frechet"] for r in mine], "o-", color=f"C{k}", label=sampler)
    floors = [r["floor"] for r in rows if r["floor"] is not None]
    if floors:
        ax_fd.axhline(sum(floors) / len(floors), color="gray", ls="--", lw=1, label="real-data floor")
    ax_acc.set(xscale="log", xlabel="model calls per image", ylabel="conditional accuracy (%)")
    ax_fd.set(xscale="log", xlabel="model calls per image", ylabel="Frechet distance (classifier features)")
    for ax in (ax_acc, ax_fd):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return _finish(fig, path)
