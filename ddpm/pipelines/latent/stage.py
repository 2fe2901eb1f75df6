"""Latent diffusion (Rombach et al. 2022) as a composition: the first stage is a trained, frozen autoencoder;
the second is the ordinary DDPM (GaussianDiffusion, the U-Net, the samplers, the Trainer) on its latents.

    training:  x -> q(z | x) (encoded once and cached, or every batch) -> z * latent_scale -> L_simple as usual
    sampling:  z_T ~ N(0, I) -> any sampler (no clipping: latents are not in [-1, 1]) -> decode(z_0 / latent_scale)

A latent run's config names its autoencoder (LatentConfig: path and the fingerprint of its weights);
``ddpm.checkpoints.load_run`` attaches it to the LoadedRun, whose ``decode`` turns samples into images, so
sample, evaluate and visualize need no flags of their own. This module holds what the Trainer adds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ddpm.checkpoints import frozen_path, load_frozen_network
from ddpm.datasets import to_float
from ddpm.pipelines.base import GridInputs, Kind, Sampling
from ddpm.pipelines.latent.autoencoder import (
    Autoencoder,
    AutoencoderConfig,
    encode_moments,
    measure_latent_scale,
    sample_posterior,
)
from ddpm.viz import save_grid

__all__ = ["LatentConfig", "AutoencoderKind", "LatentKind", "load_first_stage", "scaled_latents",
           "store_latent_scale", "reconstruction_rows", "SCALE_IMAGES"]

SCALE_IMAGES = 2000  # the latent scale is measured on this many (the first) training images
TRAIN_AUTOENCODER = "python -m ddpm train --preset mnist-autoencoder, or name yours: --autoencoder PATH"


@dataclass(frozen=True)
class LatentConfig:
    """The first stage of a latent diffusion run (Config.stage of kind "latent"): the trained autoencoder whose
    scaled latents the DDPM models.

    autoencoder: its run folder or exported .pt (a relative path is looked up from the current folder, then
    beside the latent model's own file). fingerprint: the SHA-256 of its weights (ddpm.checkpoints.
    weights_fingerprint), filled in when training starts; loading refuses an autoencoder whose weights differ.
    cache: encode the training images once (posterior mean and log-variance, kept in memory) and draw
    z ~ q(z | x) from them each step, instead of running the encoder on every batch.
    scale: None uses the autoencoder's measured latent_scale (1 / std of its latents); a number replaces it
    (the ablation that shows what a wrong signal-to-noise ratio does: docs/latent.md).
    """

    autoencoder: str = "runs/mnist-autoencoder"
    fingerprint: str | None = None
    cache: bool = True
    scale: float | None = None

    def __post_init__(self) -> None:
        if self.scale is not None and not self.scale > 0:
            raise ValueError(f"the latent scale must be positive, got {self.scale}")


def load_first_stage(latent: LatentConfig, relative_to: str | Path | None = None,
                     device: str | torch.device = "cpu") -> tuple[Autoencoder, str]:
    """(the autoencoder of a latent config, eval mode and frozen, the fingerprint of its weights). Refuses an
    autoencoder whose weights differ from the fingerprint the latent run recorded."""
    path = frozen_path(latent.autoencoder, relative_to, "autoencoder", TRAIN_AUTOENCODER)
    ae, fingerprint = load_frozen_network(path, "autoencoder", latent.fingerprint, "latent model")
    if latent.scale is not None:  # the latent run's own factor instead of the measured one (an ablation)
        ae.latent_scale.fill_(latent.scale)
    return ae.to(device), fingerprint


@torch.no_grad()
def scaled_latents(ae: Autoencoder, x: Tensor, cached: bool) -> Tensor:
    """z ~ q(z | x) times latent_scale for a batch of images, or (cached) of the posterior moments a loader
    serves (2 x latent_channels channels: mean and log-variance). Draws from the global RNG, like the rest of
    a step."""
    moments = x if cached else torch.cat(ae.encode(x), dim=1)
    return sample_posterior(moments.float()) * ae.latent_scale


@torch.no_grad()
def store_latent_scale(models: Iterable[nn.Module], images: Tensor, measure_with: Autoencoder) -> float:
    """Measure 1 / std of the latents of ``measure_with`` on images and store it in every model's latent_scale."""
    scale = measure_latent_scale(measure_with, images[:SCALE_IMAGES])
    for m in models:
        m.latent_scale.fill_(scale)
    return scale


@torch.no_grad()
def reconstruction_rows(ae: Autoencoder, images: Tensor, per_row: int = 8) -> Tensor:
    """Rows of digits alternating with rows of their reconstructions decode(posterior mean), in [-1, 1]."""
    x = to_float(images).to(ae.latent_scale.device)
    rec = ae.reconstruct(x).clamp(-1, 1)
    return torch.cat([t for k in range(0, len(x), per_row) for t in (x[k:k + per_row], rec[k:k + per_row])])


class AutoencoderKind(Kind):
    """The first stage: an autoencoder trained on its own loss (reconstruction + KL), not on L_simple."""

    name = "autoencoder"
    networks = {"autoencoder": (AutoencoderConfig, Autoencoder)}
    evaluation = "ddpm.pipelines.latent.evaluate"

    def loss(self, net, diffusion, config, x0, cond, t, noise):
        return net(x0), None  # per image: reconstruction + kl_weight * KL, no timesteps

    def on_stop(self, models, images):
        """The latent scale is measured when the run stops, so it travels with the weights (periodic checkpoints
        keep the last measured one: measuring costs seconds)."""
        store_latent_scale(models, images, models[-1])

    def grid(self, g: GridInputs, path: Path) -> Path:
        return save_grid(reconstruction_rows(g.model, g.images[:32]), path, nrow=8)

    def usage(self, run):
        return (f"{run.path} is an autoencoder (the first stage of latent diffusion), not a diffusion model: see "
                f"python -m ddpm evaluate --run {run.path}, or sample from a latent run")

    def next_steps(self, config, run_dir):
        return (f"python -m ddpm evaluate --run {run_dir}; python -m ddpm train --preset mnist-latent (its config "
                f"names runs/mnist-autoencoder; another autoencoder: --autoencoder {run_dir})")


class LatentKind(Kind):
    """The second stage: the ordinary DDPM on the autoencoder's scaled latents z ~ q(z | x) * latent_scale."""

    name = "latent"
    section = LatentConfig
    frozen_field = "autoencoder"

    def sampler_defaults(self, config):
        return {"threshold": "none"}  # a predicted z_0 is a latent, not pixels in [-1, 1]

    def sampling(self, config):
        return Sampling("dpmpp-2m")  # the deterministic solver its measurements were made with (docs/latent.md)

    def attach(self, config, device):
        ae, fingerprint = load_first_stage(config.stage, device=device)
        if ae.config.latent_shape != config.sample_shape:
            raise ValueError(f"the autoencoder {config.stage.autoencoder} makes latents of shape "
                             f"{ae.config.latent_shape} but the U-Net is built for {config.sample_shape}")
        if config.stage.fingerprint is None:
            config = config.replace(fingerprint=fingerprint)
        return ae, config

    def load_frozen(self, config, relative_to, device):
        return load_first_stage(config.stage, relative_to, device)[0]

    def fits(self, config, frozen):
        return frozen.config.in_channels, frozen.config.image_size  # the autoencoder's images

    def loader_options(self, config, frozen, images) -> dict[str, Any]:
        return {"encoded": encode_moments(frozen, images)} if config.stage.cache else {}  # the encoder runs once

    def training_inputs(self, net, diffusion, frozen, config, x0, cond, t):
        return net, scaled_latents(frozen, x0, cached=config.stage.cache), cond, t

    def encode(self, frozen, images):
        return frozen.to_latents(images, sample=False)

    def decode(self, frozen, x):
        return frozen.from_latents(x.to(frozen.latent_scale.device).float()).clamp(-1.0, 1.0)

    def image_shape(self, config, frozen):
        return frozen.config.sample_shape
