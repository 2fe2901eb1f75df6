"""The reverse process in pictures: a sampled trajectory (list of ddpm.samplers.Step), x_t beside the
network's predicted x_0 at each kept step, and the whole process as a GIF.

A Step's t is the original timestep index of its x_t (0..T-1, also for respaced samplers); labels show the
paper's t = t + 1, and the finished sample (Step.final, t = -1) is labelled x_0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.animation import FuncAnimation, PillowWriter
from matplotlib.figure import Figure
from torch import Tensor

from ddpm._util import check_mode
from ddpm.diffusion import GaussianDiffusion
from ddpm.samplers import SAMPLERS, Step, default_steps, sample
from ddpm.viz.grids import PathLike, _as_float, make_grid, plot_image_table

__all__ = ["Frame", "reverse_trajectory", "plot_reverse_trajectory", "save_reverse_animation"]

Frame = Step  # the old name of a moment of a reverse trajectory


def _step_label(t: int, sep: str = " ") -> str:
    """The paper's t of a Step's x_t, or "x_0 (sample)" for the finished sample (t = -1)."""
    return f"t = {t + 1}" if t >= 0 else f"x_0{sep}(sample)"


def _kept(S: int, frames: int | None) -> set[int]:
    """Positions 0..S-1 (0: the step from x_T) of `frames` evenly spaced steps, first and last included."""
    if frames is None or frames >= S:
        return set(range(S))
    if frames < 2:
        raise ValueError(f"frames must be >= 2 (first and last) or None, got {frames}")
    return {round(k * (S - 1) / (frames - 1)) for k in range(frames)}


@torch.no_grad()
def reverse_trajectory(model: Callable, diffusion: GaussianDiffusion, shape: Sequence[int], cond=None, *,
                       sampler: str = "ancestral", steps: int | None = None, frames: int | None = 10,
                       generator: torch.Generator | None = None, device=None, **kwargs) -> list[Step]:
    """Sample with ddpm.samplers (ancestral = Algorithm 2, DDIM, DPM-Solver++) and keep `frames` evenly spaced steps
    (None: every step), from the one that starts at x_T to the last, then Step.final(x_0) for the finished
    sample: [Step(t, x_t, pred_x0, x_prev), ..., Step(-1, x_0, x_0, x_0)]. Tensors are moved to the CPU.

    steps: the sampler's number of steps (default: ddpm.samplers.default_steps; fewer than T = respaced).
    generator: a torch.Generator on `device` (default: the diffusion's device), for reproducible samples.
    kwargs go to the sampler (guidance_scale, variance, eta, spacing, threshold, ...).
    """
    check_mode(sampler, SAMPLERS, "sampler")
    steps = steps if steps is not None else default_steps(sampler, diffusion.T)
    keep = _kept(steps, frames)
    out: list[Step] = []
    for k, step in enumerate(sample(model, diffusion, tuple(shape), cond, sampler=sampler, progressive=True,
                                    steps=steps, generator=generator, device=device, **kwargs)):
        if k in keep:
            out.append(Step(step.t, step.x_t.cpu(), step.pred_x0.cpu(), step.x_prev.cpu()))
    out.append(Step.final(step.x_prev.cpu()))  # the last step's x_prev is x_0
    return out


def plot_reverse_trajectory(steps: Sequence[Step], n_images: int = 4, title: str | None = None,
                            path: PathLike | None = None) -> Figure | Path:
    """x_t beside the network's predicted x_0 at each kept step (reverse_trajectory): for each of the first
    n_images samples one row of x_t and, below it, one row of predicted x_0; columns go from x_T to x_0."""
    if not steps:
        raise ValueError("plot_reverse_trajectory needs steps (see reverse_trajectory)")
    n = min(n_images, steps[0].x_t.shape[0])
    rows, labels = [], []
    for k in range(n):
        rows.append(torch.stack([_as_float(s.x_t[k]) for s in steps]))
        rows.append(torch.stack([_as_float(s.pred_x0[k]) for s in steps]))
        labels += [f"#{k + 1}: $x_t$", r"predicted $x_0$"]
    cols = [_step_label(s.t, "\n") for s in steps]
    title = title or r"reverse process: $x_t$ and the network's guess of $x_0$ from it"
    return plot_image_table(torch.stack(rows), labels, cols, title, path)


def _movie_figure(panels: list[list[np.ndarray]], dpi: int):
    """A figure with one image per panel (side by side, titled if several) and a suptitle to animate."""
    gh, gw = panels[0][0].shape[:2]
    scale = max(1.0, 240 / max(gh, gw))  # small images (MNIST) are enlarged
    fig = Figure(figsize=(len(panels) * gw * scale / dpi, gh * scale / dpi + 0.5))
    gray = panels[0][0].shape[2] == 1
    images = []
    for k, grids in enumerate(panels):
        ax = fig.add_axes((k / len(panels), 0, 1 / len(panels), gh * scale / (gh * scale + 0.5 * dpi)))
        ax.axis("off")
        images.append(ax.imshow(grids[0][..., 0] if gray else grids[0], cmap="gray" if gray else None,
                                vmin=0, vmax=255, interpolation="nearest"))
        if len(panels) > 1:
            ax.set_title(["$x_t$", "predicted $x_0$"][k], fontsize=11)
    return fig, images, fig.suptitle("", fontsize=12), gray


def save_reverse_animation(steps: Sequence[Step], path: PathLike, nrow: int = 8, fps: int = 10,
                           show_pred_x0: bool = False) -> Path:
    """The reverse process (reverse_trajectory's steps) as a GIF (matplotlib PillowWriter, no ffmpeg): one
    frame per step with the grid of its x_t [N, C, H, W], titled with the paper's t; with show_pred_x0 the
    predicted x_0 is shown on the right. The last frame is held for a second."""
    if not steps:
        raise ValueError("save_reverse_animation needs at least one step (see reverse_trajectory)")
    panels = [[make_grid(s.x_t, nrow) for s in steps]]
    if show_pred_x0:
        panels.append([make_grid(s.pred_x0, nrow) for s in steps])
    dpi = 60
    fig, images, title, gray = _movie_figure(panels, dpi)

    def draw(i):
        for im, grids in zip(images, panels, strict=True):
            im.set_data(grids[i][..., 0] if gray else grids[i])
        title.set_text(_step_label(steps[i].t))
        return (*images, title)

    hold = [len(steps) - 1] * max(1, fps)  # linger on the final samples for a second
    anim = FuncAnimation(fig, draw, frames=list(range(len(steps))) + hold, blit=False, cache_frame_data=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    anim.save(str(path), writer=PillowWriter(fps=fps), dpi=dpi)
    return path


def decode_steps(steps: Sequence[Step], decode: Callable[[Tensor], Tensor]) -> list[Step]:
    """A latent trajectory with x_t, pred_x0 and x_prev decoded to images (for GIFs and grids)."""
    return [Step(s.t, decode(s.x_t).cpu(), decode(s.pred_x0).cpu(), decode(s.x_prev).cpu()) for s in steps]
