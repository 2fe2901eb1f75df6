"""The frozen networks a run builds on: a latent run's autoencoder (ddpm.pipelines.latent) and an unCLIP prior's or
decoder's CLIP (ddpm.pipelines.unclip), each found by its config and checked by the fingerprint of its weights."""

from __future__ import annotations

from ddpm.config import Config
from ddpm.nn.autoencoder import Autoencoder
from ddpm.nn.clip import Clip
from ddpm.pipelines.latent import attach_first_stage
from ddpm.pipelines.unclip import attach_clip

__all__ = ["attach_stages"]


def attach_stages(config: Config, device) -> tuple[Autoencoder | None, Clip | None, Config]:
    """(the autoencoder or None, the CLIP or None, the config with their fingerprints filled in). Raises
    CheckpointError (missing, different weights) or ValueError (a stage that does not fit the network)."""
    first_stage = clip = None
    if config.latent is not None:
        first_stage, config = attach_first_stage(config, device)
    if config.unclip is not None:
        clip, config = attach_clip(config, device)
    return first_stage, clip, config
