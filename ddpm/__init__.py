"""ddpm: an educational, from-scratch DDPM (Ho et al. 2020) in PyTorch (with einops for reshapes).

The public API (see README.md for a tour), loaded lazily (PEP 562): ``import ddpm.schedules`` loads only
the schedules, and ``from ddpm import Trainer`` loads the trainer when it is first asked for.

    from ddpm import make_betas, GaussianDiffusion, UNet, ancestral_sample, ddim_sample
    from ddpm import get_preset, Trainer, load_run
    from ddpm import Autoencoder, AutoencoderConfig        # the first stage of latent diffusion
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "make_betas": "ddpm.schedules",
    "GaussianDiffusion": "ddpm.diffusion",
    "UNet": "ddpm.nn.unet",
    "UNetConfig": "ddpm.nn.unet",
    "Autoencoder": "ddpm.pipelines.latent.autoencoder",
    "AutoencoderConfig": "ddpm.pipelines.latent.autoencoder",
    "ancestral_sample": "ddpm.samplers",
    "ancestral_sample_progressive": "ddpm.samplers",
    "ddim_sample": "ddpm.samplers",
    "ddim_sample_progressive": "ddpm.samplers",
    "respace": "ddpm.samplers",
    "sample": "ddpm.samplers",
    "Step": "ddpm.samplers",
    "get_preset": "ddpm.presets",
    "Trainer": "ddpm.training",
    "load_run": "ddpm.checkpoints",
}

__all__ = ["Autoencoder", "AutoencoderConfig", "GaussianDiffusion", "Step", "Trainer", "UNet", "UNetConfig",
           "ancestral_sample", "ancestral_sample_progressive", "ddim_sample", "ddim_sample_progressive", "get_preset",
           "load_run", "make_betas", "respace", "sample"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    raise AttributeError(f"module 'ddpm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:  # pragma: no cover - for type checkers and editors only
    from ddpm.checkpoints import load_run
    from ddpm.diffusion import GaussianDiffusion
    from ddpm.nn.unet import UNet, UNetConfig
    from ddpm.pipelines.latent.autoencoder import Autoencoder, AutoencoderConfig
    from ddpm.presets import get_preset
    from ddpm.samplers import (
        Step,
        ancestral_sample,
        ancestral_sample_progressive,
        ddim_sample,
        ddim_sample_progressive,
        respace,
        sample,
    )
    from ddpm.schedules import make_betas
    from ddpm.training import Trainer
