"""The network in pictures: the sinusoidal timestep embedding and the shapes through the U-Net."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from ddpm._util import eval_mode
from ddpm.nn.embeddings import timestep_embedding
from ddpm.viz.grids import PathLike, _finish

__all__ = ["plot_timestep_embedding", "trace_shapes", "plot_unet_shapes"]


def plot_timestep_embedding(dim: int = 128, T: int = 1000, max_period: float = 10000.0,
                            path: PathLike | None = None) -> Figure | Path:
    """The sinusoidal timestep embedding (ddpm.nn.embeddings.timestep_embedding) [T, dim] as a heat map,
    a few of its columns against t, and the cosine similarity between the embeddings of two timesteps."""
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
                 pattern: str | re.Pattern = _UNET_STAGES, **inputs) -> list[tuple[str, tuple[int, ...]]]:
    """Run model(x, t, cond, **inputs) once (in eval mode) and record the output shape of every submodule whose
    name matches `pattern` (default: the stages of ddpm.nn.unet.UNet), in execution order: [(name, shape), ...].
    inputs: what else the network takes (a super-resolution U-Net's low_res and aug_t)."""
    pattern = re.compile(pattern) if isinstance(pattern, str) else pattern
    records: list[tuple[str, tuple[int, ...]]] = []

    def record(name):
        return lambda module, inputs, output: records.append((name, tuple(output.shape)))

    hooks = [m.register_forward_hook(record(n)) for n, m in model.named_modules() if pattern.match(n)]
    try:
        with eval_mode(model):
            model(x, t, cond, **inputs)
    finally:
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
