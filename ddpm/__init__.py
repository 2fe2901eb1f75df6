"""ddpm: an educational, from-scratch DDPM (Ho et al. 2020) in pure PyTorch.

The public API, re-exported (see README.md for a tour):

    from ddpm import make_betas, GaussianDiffusion, ancestral_sample, ddim_sample
"""

from ddpm.diffusion import GaussianDiffusion
from ddpm.samplers import ancestral_sample, ancestral_sample_progressive, ddim_sample, ddim_sample_progressive, respace
from ddpm.schedules import make_betas

__version__ = "0.1.0"

__all__ = [
    "GaussianDiffusion",
    "make_betas",
    "ancestral_sample",
    "ancestral_sample_progressive",
    "ddim_sample",
    "ddim_sample_progressive",
    "respace",
]
