"""The named configs (``python -m ddpm train --preset NAME``): each a Config of ddpm.config's classes.

    from ddpm.presets import get_preset
    config = get_preset("mnist", steps=500)          # top-level TrainConfig fields as overrides
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ddpm.config import (
    Config,
    DataConfig,
    DiffusionConfig,
    LatentConfig,
    SuperResConfig,
    TrainConfig,
    UnclipConfig,
    with_conditioning,
)
from ddpm.datasets import caption_max_words, caption_vocabulary
from ddpm.nn.autoencoder import AutoencoderConfig
from ddpm.nn.clip import ClipConfig
from ddpm.nn.mlp import MLPConfig
from ddpm.nn.prior import PriorConfig
from ddpm.nn.unet import UNET_PRESETS

__all__ = ["PRESETS", "get_preset"]


def _mnist_like(preset: str, dataset: str, cond: str, **train) -> Config:
    model = with_conditioning(UNET_PRESETS["mnist"], cond, dataset)
    return Config(preset=preset, data=DataConfig(dataset=dataset), model=model,
                  train=TrainConfig(**{**_MNIST_TRAIN, **train}))


def _latent(preset: str, cond: str, **train) -> Config:
    model = with_conditioning(UNET_PRESETS["mnist-latent"], cond, "mnist")
    return Config(preset=preset, data=DataConfig(dataset="mnist"), model=model,
                  train=TrainConfig(**{**_MNIST_TRAIN, **train}), latent=LatentConfig())


# A short CPU run: high learning rate with a short warmup and cosine decay, a fast-settling EMA, and
# a step count that fits about 10 minutes on a 2-core laptop CPU (see README: "What to expect").
_MNIST_TRAIN = dict(steps=900, batch_size=128, lr=2e-3, optimizer="adamw", warmup=100, lr_schedule="cosine",
                    ema_decay=0.995, log_every=25, sample_every=0, ckpt_every=100, sample_steps=50,
                    guidance=2.0)

PRESETS: dict[str, Config] = {
    "mnist": _mnist_like("mnist", "mnist", "class"),
    # the text encoder learns at a tenth of the U-Net's rate (docs/results.md: "Why the text path learned
    # slowly"), and attributes take longer to learn than the digit: twice the mnist budget
    "mnist-text": _mnist_like("mnist-text", "mnist", "text", steps=1800, cond_lr_scale=0.1),
    "fashion-mnist": _mnist_like("fashion-mnist", "fashion-mnist", "class", steps=4000),
    "cifar10": Config(
        preset="cifar10", data=DataConfig(dataset="cifar10", hflip=True),
        model=with_conditioning(dataclasses.replace(UNET_PRESETS["ddpm-cifar10"], ch=64), "class", "cifar10"),
        train=TrainConfig(steps=100_000, lr=2e-4, warmup=1000, ema_decay=0.9995, sample_every=5000,
                          ckpt_every=5000, log_every=100)),
    "ddpm-cifar10": Config(
        preset="ddpm-cifar10", data=DataConfig(dataset="cifar10", hflip=True),
        model=UNET_PRESETS["ddpm-cifar10"],
        train=TrainConfig(sample_every=20_000, ckpt_every=5000, log_every=100, guidance=1.0)),
    "toy2d": Config(
        preset="toy2d", data=DataConfig(dataset="toy2d"), model=MLPConfig(),
        diffusion=DiffusionConfig(schedule="linear", T=200),
        train=TrainConfig(steps=3000, batch_size=512, lr=2e-3, warmup=50, lr_schedule="cosine",
                          ema_decay=0.99, log_every=100, sample_every=0, ckpt_every=1000, sample_steps=200,
                          guidance=1.0)),
    # Latent diffusion (docs/results.md, "Latent diffusion"): the autoencoder (f = 4: 1x28x28 <-> 4x7x7), then a
    # U-Net of one level at 7x7 on its scaled latents, text-conditioned like mnist-text (or by class)
    "mnist-autoencoder": Config(
        preset="mnist-autoencoder", data=DataConfig(dataset="mnist"), model=AutoencoderConfig(),
        train=TrainConfig(**{**_MNIST_TRAIN, "steps": 600, "warmup": 50, "guidance": 1.0})),
    "mnist-latent": _latent("mnist-latent", "text", steps=4000, cond_lr_scale=0.1),
    "mnist-latent-class": _latent("mnist-latent-class", "class", steps=1500),
    # A cascade (docs/results.md, "Cascade"): a text model of 14x14 digits (area-averaged), and a text-conditioned
    # super-resolution model 14 -> 28 trained with noise conditioning augmentation; their steps are set by the
    # time budget of the comparison with mnist-text (README: "Cascade")
    "mnist-base14": Config(
        preset="mnist-base14", data=DataConfig(dataset="mnist", image_size=14),
        model=with_conditioning(UNET_PRESETS["mnist-14"], "text", "mnist"),
        train=TrainConfig(**{**_MNIST_TRAIN, "steps": 1800, "cond_lr_scale": 0.1})),
    "mnist-sr28": Config(
        preset="mnist-sr28", data=DataConfig(dataset="mnist"),
        model=with_conditioning(UNET_PRESETS["mnist-sr28"], "text", "mnist"),
        train=TrainConfig(**{**_MNIST_TRAIN, "steps": 1200, "cond_lr_scale": 0.1}), super_res=SuperResConfig()),
    # unCLIP (DALL-E 2 in miniature, docs/results.md "unCLIP"): a tiny CLIP trained on digits and captions; a
    # diffusion prior of its image embeddings given its text embeddings (x0-prediction, cosine schedule); a decoder
    # of digits given the image embedding. The prior and decoder name the CLIP (UnclipConfig, --clip). Steps: about
    # what the shipped runs' time budgets (3, 3 and 14 minutes: README, "unCLIP") gave on this project's machine.
    "mnist-clip": Config(
        preset="mnist-clip", data=DataConfig(dataset="mnist"),
        model=ClipConfig(vocab=caption_vocabulary("mnist"), max_prompt_len=caption_max_words("mnist")),
        train=TrainConfig(**{**_MNIST_TRAIN, "steps": 800, "batch_size": 256, "lr": 1e-3, "warmup": 50,
                             "weight_decay": 0.1, "guidance": 1.0})),
    "mnist-prior": Config(
        preset="mnist-prior", data=DataConfig(dataset="mnist"), model=PriorConfig(),
        diffusion=DiffusionConfig(schedule="cosine", prediction="x0"),
        train=TrainConfig(**{**_MNIST_TRAIN, "steps": 1000, "batch_size": 256, "lr": 1e-3, "ckpt_every": 500,
                             "log_every": 50}),
        unclip=UnclipConfig()),
    "mnist-decoder": Config(
        preset="mnist-decoder", data=DataConfig(dataset="mnist"), model=UNET_PRESETS["mnist-decoder"],
        train=TrainConfig(**{**_MNIST_TRAIN, "steps": 1130, "guidance": 1.0}), unclip=UnclipConfig()),
    "tiny": Config(  # for tests: seconds on a CPU
        preset="tiny", data=DataConfig(dataset="mnist"),
        model=with_conditioning(UNET_PRESETS["tiny"], "class", "mnist"),
        diffusion=DiffusionConfig(T=100),
        train=TrainConfig(steps=20, batch_size=16, lr=1e-3, warmup=5, ema_decay=0.9, log_every=5,
                          sample_every=0, ckpt_every=10, sample_steps=5, guidance=2.0)),
}


def get_preset(name: str, **overrides: Any) -> Config:
    """The named preset, with overrides (see Config.replace). Unknown names raise, listing the known ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]
