"""ddpm: an educational, from-scratch DDPM (Ho et al. 2020) in pure PyTorch.

The public API, re-exported (see README.md for a tour):

    from ddpm import make_betas, GaussianDiffusion, UNet, ancestral_sample, ddim_sample
    from ddpm import get_preset, Trainer, load_run
"""

from ddpm.checkpoints import load_run
from ddpm.config import get_preset
from ddpm.diffusion import GaussianDiffusion
from ddpm.nn.unet import UNet, UNetConfig
from ddpm.samplers import ancestral_sample, ancestral_sample_progressive, ddim_sample, ddim_sample_progressive, respace
from ddpm.schedules import make_betas
from ddpm.training import Trainer

__version__ = "0.1.0"

__all__ = [
    "GaussianDiffusion",
    "make_betas",
    "UNet",
    "UNetConfig",
    "ancestral_sample",
    "ancestral_sample_progressive",
    "ddim_sample",
    "ddim_sample_progressive",
    "respace",
    "get_preset",
    "Trainer",
    "load_run",
]
