"""Pictures of diffusion: image grids, forward and reverse trajectories, schedules, losses and 2D toys.

    grids     make_grid, save_grid, save_panels, plot_images, plot_image_table, class_grid (and shared helpers)
    forward   the forward process: trajectories, chain vs closed form, histograms, schedules, small-T pitfall
    network   the timestep embedding, the shapes through the U-Net
    reverse   reverse_trajectory (a list of ddpm.samplers.Step), x_t beside predicted x_0, the GIF
    losses    training curves, the loss at each timestep, the terms of the bound
    toys      2D point clouds: forward, particle paths, the learned eps field
    matrix    a matrix with its values (CLIP similarities, zero-shot confusion)

Only matplotlib's object API (``matplotlib.figure.Figure``), never pyplot's global state, so the same
code draws from scripts, tests and notebooks. Conventions:

- ``plot_*`` functions return the Figure (a notebook displays it); given ``path=...`` they save it there
  instead (parent folders created) and return the Path.
- ``save_*`` functions write a file and return its path.
- What a plot needs computing (a forward trajectory, a reverse trajectory, a loss profile) is a separate
  function that returns tensors, so tests can check the numbers and notebooks can reuse them.

Images are [N, C, H, W] floats in [-1, 1] (or uint8). Arguments named ``ts`` hold the code's timestep
indices 0..T-1; titles and labels show the paper's t = index + 1 (see ddpm.schedules), and x_0 is the data.
"""

from ddpm.viz.forward import (
    default_timesteps,
    forward_trajectory,
    plot_chain_vs_closed_form,
    plot_forward_trajectory,
    plot_pixel_histogram,
    plot_schedules,
    plot_small_T_pitfall,
)
from ddpm.viz.grids import class_grid, make_grid, plot_image_table, plot_images, save_grid, save_panels
from ddpm.viz.losses import loss_profile, plot_loss_by_t, plot_loss_curve, plot_loss_profile, plot_vlb_terms
from ddpm.viz.matrix import plot_matrix
from ddpm.viz.network import plot_timestep_embedding, plot_unet_shapes, trace_shapes
from ddpm.viz.quality import plot_quality_vs_calls
from ddpm.viz.reverse import Frame, decode_steps, plot_reverse_trajectory, reverse_trajectory, save_reverse_animation
from ddpm.viz.toys import plot_points, plot_score_field, plot_toy_forward, plot_toy_reverse

__all__ = [
    "plot_matrix",
    "make_grid",
    "save_grid", "save_panels",
    "plot_quality_vs_calls",
    "class_grid",
    "plot_images",
    "plot_image_table",
    "default_timesteps",
    "forward_trajectory",
    "plot_forward_trajectory",
    "plot_chain_vs_closed_form",
    "plot_pixel_histogram",
    "plot_schedules",
    "plot_small_T_pitfall",
    "plot_timestep_embedding",
    "trace_shapes",
    "plot_unet_shapes",
    "Frame",
    "reverse_trajectory",
    "plot_reverse_trajectory",
    "save_reverse_animation",
    "plot_loss_curve",
    "plot_loss_by_t",
    "loss_profile",
    "plot_loss_profile",
    "plot_vlb_terms",
    "plot_points",
    "plot_toy_forward",
    "plot_toy_reverse",
    "plot_score_field",
    "decode_steps",
]
