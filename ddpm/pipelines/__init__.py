"""Compositions of trained runs: each stage is a network plus the same process, samplers, trainer and checkpoints.

    latent    Stable Diffusion in miniature: a frozen autoencoder (ddpm.nn.autoencoder) around a DDPM on its
              scaled latents: the first stage a latent run trains with, its latents, the reconstruction grid
    cascade   Imagen in miniature: a base model of small images and a super-resolution model that refines them
              (noise conditioning augmentation of its low-res input, the Refiner that runs it after the base)
    grids     the picture a training run draws of its progress, for every kind of run
    unclip    DALL-E 2 in miniature: a tiny CLIP, a diffusion prior of its image embeddings given its text
              embeddings, a decoder of images given image embeddings; text-to-image and variations
    stages    the frozen networks a run builds on (an autoencoder, a CLIP), attached
    data      the training data of a run: images (+ attributes), a toy's points, or cached latent moments
"""

from ddpm.pipelines.cascade import (
    DEFAULT_AUG_LEVEL,
    Refiner,
    bicubic_to,
    check_cascade,
    shared_options,
    training_model,
)
from ddpm.pipelines.data import training_loader
from ddpm.pipelines.grids import training_grid
from ddpm.pipelines.latent import attach_first_stage, reconstruction_rows, scaled_latents, store_latent_scale
from ddpm.pipelines.stages import attach_stages
from ddpm.pipelines.unclip import Unclip, attach_clip, training_inputs

__all__ = ["attach_first_stage", "scaled_latents", "store_latent_scale", "reconstruction_rows", "training_grid",
           "training_loader", "Refiner", "check_cascade", "training_model", "bicubic_to",
           "DEFAULT_AUG_LEVEL", "shared_options", "Unclip", "attach_clip", "training_inputs", "attach_stages"]
