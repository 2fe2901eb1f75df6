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

import torch
from torch import Tensor, nn

from ddpm.checkpoints import load_first_stage
from ddpm.config import Config
from ddpm.datasets import to_float
from ddpm.nn.autoencoder import Autoencoder, measure_latent_scale, sample_posterior

__all__ = ["attach_first_stage", "scaled_latents", "store_latent_scale", "reconstruction_rows", "SCALE_IMAGES"]

SCALE_IMAGES = 2000  # the latent scale is measured on this many (the first) training images


def attach_first_stage(config: Config, device) -> tuple[Autoencoder, Config]:
    """(the frozen autoencoder of a latent config, the config with the autoencoder's fingerprint filled in).
    Raises CheckpointError (missing, different weights) or ValueError (latents of another shape)."""
    ae, fingerprint = load_first_stage(config.latent, device=device)
    if ae.config.latent_shape != config.sample_shape:
        raise ValueError(f"the autoencoder {config.latent.autoencoder} makes latents of shape "
                         f"{ae.config.latent_shape} but the U-Net is built for {config.sample_shape}")
    if config.latent.fingerprint is None:
        config = config.replace(fingerprint=fingerprint)
    return ae, config


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
    x = to_float(images).to(ae.latent_scale.device) if images.dtype == torch.uint8 else images
    rec = ae.reconstruct(x).clamp(-1, 1)
    return torch.cat([t for k in range(0, len(x), per_row) for t in (x[k:k + per_row], rec[k:k + per_row])])
