"""The cascade's presets (docs/cascade.md): a text model of 14x14 digits (area-averaged; an ordinary DDPM run), and a
text-conditioned super-resolution model 14 -> 28 trained with noise conditioning augmentation; their steps are set by
the time budget of the comparison with mnist-text."""

from __future__ import annotations

from ddpm.config import MNIST_TRAIN, Config, DataConfig, TrainConfig, with_conditioning
from ddpm.nn.unet import UNET_PRESETS
from ddpm.pipelines.cascade.stage import SuperResConfig

__all__ = ["PRESETS", "BENCH", "NOT_BENCHED"]

PRESETS = {
    "mnist-base14": Config(
        preset="mnist-base14", data=DataConfig(dataset="mnist", image_size=14),
        model=with_conditioning(UNET_PRESETS["mnist-14"], "text", "mnist"),
        train=TrainConfig(**{**MNIST_TRAIN, "steps": 1800, "cond_lr_scale": 0.1})),
    "mnist-sr28": Config(
        preset="mnist-sr28", data=DataConfig(dataset="mnist"),
        model=with_conditioning(UNET_PRESETS["mnist-sr28"], "text", "mnist"),
        train=TrainConfig(**{**MNIST_TRAIN, "steps": 1200, "cond_lr_scale": 0.1}), kind="super-res",
        stage=SuperResConfig()),
}

# bench --preset NAME measures either stage of the cascade beside the single-stage text model (bench.py)
BENCH = {"mnist-base14": "ddpm.pipelines.cascade.bench", "mnist-sr28": "ddpm.pipelines.cascade.bench"}
NOT_BENCHED: dict[str, str] = {}
