"""The named configs (``python -m ddpm train --preset NAME``): the paper's and the core's here, then each
pipeline folder's own (its presets.py, e.g. ddpm/pipelines/latent/presets.py).

    from ddpm.presets import get_preset
    config = get_preset("mnist", steps=500)          # top-level TrainConfig fields as overrides
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from ddpm.config import MNIST_TRAIN, Config, DataConfig, DiffusionConfig, TrainConfig, with_conditioning
from ddpm.nn.mlp import MLPConfig
from ddpm.nn.unet import UNET_PRESETS
from ddpm.pipelines.base import FOLDERS

__all__ = ["PRESETS", "get_preset", "BENCH", "NOT_BENCHED", "SHORT_RUNS", "short_run"]


def _mnist_like(preset: str, dataset: str, cond: str, diffusion: DiffusionConfig | None = None,
                learn_sigma: bool = False, **train) -> Config:
    diffusion = diffusion or DiffusionConfig()
    model = dataclasses.replace(with_conditioning(UNET_PRESETS["mnist"], cond, dataset), learn_sigma=learn_sigma)
    return Config(preset=preset, data=DataConfig(dataset=dataset), model=model, diffusion=diffusion,
                  train=TrainConfig(**{**MNIST_TRAIN, **train}))


PRESETS: dict[str, Config] = {
    "mnist": _mnist_like("mnist", "mnist", "class"),
    # the text encoder learns at a tenth of the U-Net's rate (docs/results.md: "Why the text path learned
    # slowly"), and attributes take longer to learn than the digit: twice the mnist budget
    "mnist-text": _mnist_like("mnist-text", "mnist", "text", steps=1800, cond_lr_scale=0.1),
    # Improved DDPM (ddpm.improved): the mnist network with the variance channel, on L_hybrid or on the bound with
    # importance-sampled t (Nichol & Dhariwal 2021; docs/improved.md)
    "mnist-hybrid": _mnist_like("mnist-hybrid", "mnist", "class", DiffusionConfig(loss="hybrid"), learn_sigma=True),
    "mnist-vlb": _mnist_like("mnist-vlb", "mnist", "class", DiffusionConfig(loss="vlb", timesteps="importance"),
                             learn_sigma=True),
    # clothes: 2200 steps for the 30-minute budget; guidance 1.5 (1.25 with sample's stochastic solver), the scale
    # that meets both the accuracy and the Frechet goal (docs/fashion.md)
    "fashion-mnist": _mnist_like("fashion-mnist", "fashion-mnist", "class", steps=2200, guidance=1.5),
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
    "tiny": Config(  # for tests: seconds on a CPU
        preset="tiny", data=DataConfig(dataset="mnist"),
        model=with_conditioning(UNET_PRESETS["tiny"], "class", "mnist"),
        diffusion=DiffusionConfig(T=100),
        train=TrainConfig(steps=20, batch_size=16, lr=1e-3, warmup=5, ema_decay=0.9, log_every=5,
                          sample_every=0, ckpt_every=10, sample_steps=5, guidance=2.0)),
}
# What a time-budgeted new run (train --minutes) changes in a preset, where measured short runs say so: for ten
# minutes of mnist, the cosine schedule (Nichol & Dhariwal 2021) and min-SNR weighting (Hang et al. 2023, gamma 5)
# (docs/cpu.md, "What ten minutes should train"). A flag given wins.
SHORT_RUNS: dict[str, dict[str, Any]] = {"mnist": {"schedule": "cosine", "min_snr_gamma": 5.0}}
# each system's own presets (latent diffusion, the cascade, unCLIP); BENCH: the module of the side-by-side benchmark
# of a preset (python -m ddpm bench); NOT_BENCHED: why a preset is not benchmarked
BENCH: dict[str, str] = {}
NOT_BENCHED: dict[str, str] = {}
for _folder in FOLDERS:
    _module = importlib.import_module(f"{_folder}.presets")
    PRESETS.update(_module.PRESETS)
    BENCH.update(_module.BENCH)
    NOT_BENCHED.update(_module.NOT_BENCHED)


def get_preset(name: str, **overrides: Any) -> Config:
    """The named preset, with overrides (see Config.replace). Unknown names raise, listing the known ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]


def short_run(name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """What ``train --minutes`` changes in preset ``name`` (SHORT_RUNS) that ``overrides`` (the flags) leave."""
    return {k: v for k, v in SHORT_RUNS.get(name, {}).items() if k not in overrides}
