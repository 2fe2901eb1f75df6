"""Latent diffusion's presets (docs/latent.md): the autoencoder (f = 4: 1x28x28 <-> 4x7x7), then a U-Net of one level
at 7x7 on its scaled latents, text-conditioned like mnist-text (or by class)."""

from __future__ import annotations

from ddpm.config import MNIST_TRAIN, Config, DataConfig, TrainConfig, with_conditioning
from ddpm.nn.unet import UNET_PRESETS
from ddpm.pipelines.latent.autoencoder import AutoencoderConfig
from ddpm.pipelines.latent.stage import LatentConfig

__all__ = ["PRESETS", "BENCH", "NOT_BENCHED"]


def _latent(preset: str, cond: str, **train) -> Config:
    model = with_conditioning(UNET_PRESETS["mnist-latent"], cond, "mnist")
    return Config(preset=preset, data=DataConfig(dataset="mnist"), model=model,
                  train=TrainConfig(**{**MNIST_TRAIN, **train}), kind="latent", stage=LatentConfig())


PRESETS = {
    "mnist-autoencoder": Config(
        preset="mnist-autoencoder", data=DataConfig(dataset="mnist"), model=AutoencoderConfig(),
        train=TrainConfig(**{**MNIST_TRAIN, "steps": 600, "warmup": 50, "guidance": 1.0}), kind="autoencoder"),
    "mnist-latent": _latent("mnist-latent", "text", steps=4000, cond_lr_scale=0.1),
    "mnist-latent-class": _latent("mnist-latent-class", "class", steps=1500),
}

# bench --preset NAME measures these side by side with the pixel text model (bench.py: compare, format_comparison)
BENCH = {"mnist-latent": "ddpm.pipelines.latent.bench", "mnist-latent-class": "ddpm.pipelines.latent.bench"}
NOT_BENCHED = {"mnist-autoencoder": "an autoencoder, not a diffusion model; python -m ddpm bench --preset mnist-latent "
                                    "measures it beside the latent and the pixel models"}
