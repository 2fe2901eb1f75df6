"""Latent diffusion's presets (docs/latent.md): the autoencoder (f = 4: 1x28x28 <-> 4x7x7), then a U-Net of one level
at 7x7 on its scaled latents, text-conditioned like mnist-text (or by class). The f = 2 pair (1x28x28 <-> 4x14x14, the
same U-Net with a 14x14 level of 32 channels on top) is the other side of the paper's trade-off of f."""

from __future__ import annotations

import dataclasses

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
    "mnist-autoencoder-f2": Config(
        preset="mnist-autoencoder-f2", data=DataConfig(dataset="mnist"), model=AutoencoderConfig(ch_mult=(1, 2)),
        train=TrainConfig(**{**MNIST_TRAIN, "steps": 600, "warmup": 50, "guidance": 1.0}), kind="autoencoder"),
    # 600 steps: the budget of docs/latent.md's scale ablation; its f = 4 twin is mnist-latent-class --steps 600
    "mnist-latent-class-f2": _latent("mnist-latent-class-f2", "class", steps=600).replace(
        model=dataclasses.replace(with_conditioning(UNET_PRESETS["mnist-latent"], "class", "mnist"), image_size=14,
                                  ch=32, ch_mult=(1, 2)),  # 14x14 (32 channels) -> 7x7 (64, attention as f = 4's)
        stage=LatentConfig(autoencoder="runs/mnist-autoencoder-f2")),
}

# bench --preset NAME measures these side by side with the pixel text model (bench.py: compare, format_comparison)
BENCH = {"mnist-latent": "ddpm.pipelines.latent.bench", "mnist-latent-class": "ddpm.pipelines.latent.bench"}
NOT_BENCHED = {"mnist-autoencoder": "an autoencoder, not a diffusion model; python -m ddpm bench --preset mnist-latent "
                                    "measures it beside the latent and the pixel models",
               "mnist-autoencoder-f2": "an autoencoder, not a diffusion model; notebook 09 measures the f = 2 pair's "
                                       "cost beside f = 4's",
               "mnist-latent-class-f2": "measured beside f = 4 and pixel space in notebook 09 (bench --preset builds "
                                        "the f = 4 autoencoder)"}
