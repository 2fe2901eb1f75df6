"""The picture a training run draws of its progress (samples/step_XXXXXX.png), for every kind of run: one row
of samples per class from a diffusion model (DDIM, guided; a latent run's decoded by its autoencoder), points
from a 2D toy model, or digits above their reconstructions for an autoencoder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ddpm.config import Config
from ddpm.diffusion import GaussianDiffusion
from ddpm.nn.autoencoder import Autoencoder
from ddpm.pipelines.latent import reconstruction_rows
from ddpm.samplers import ddim_sample
from ddpm.viz import class_grid, plot_points, save_grid

__all__ = ["training_grid"]


@torch.no_grad()
def training_grid(config: Config, model: nn.Module, diffusion: GaussianDiffusion, path: Path, *, step: int,
                  label_names: Sequence[str], images: torch.Tensor | None = None,
                  first_stage: Autoencoder | None = None, device=None) -> Path:
    """Write the grid of ``model`` (the EMA weights) to path. images: training images (uint8), which an
    autoencoder's grid reconstructs (the first 32); first_stage: a latent run's autoencoder."""
    tc, m = config.train, config.model
    if config.model_kind == "autoencoder":
        return save_grid(reconstruction_rows(model, images[:32]), path, nrow=8)
    if config.model_kind == "mlp":
        g = torch.Generator(device).manual_seed(1234)
        x = ddim_sample(model, diffusion, (2000, m.dim), steps=tc.sample_steps, generator=g, device=device,
                        clip_denoised=False)
        return plot_points(x, title=f"{config.data.toy}, step {step}", path=path)
    x, nrow = class_grid(model, diffusion, config.sample_shape, m.cond, label_names, config.data.dataset,
                         getattr(m, "num_classes", 0), steps=tc.sample_steps, guidance=tc.guidance, device=device,
                         **config.sampler_defaults)
    if first_stage is not None:
        x = first_stage.from_latents(x).clamp(-1, 1)
    return save_grid(x, path, nrow=nrow)
