"""Improved DDPM (Nichol & Dhariwal 2021): what training on the variational bound needs beside Ho et al.'s L_simple.

    losses      L_hybrid = L_simple + lambda L_vlb (the mean's gradient stopped in L_vlb) and L_vlb alone (Sec. 3.1)
    importance  importance sampling of t for L_vlb, p_t proportional to sqrt(E[L_t^2]) (Sec. 3.3)

The learned variance itself (their Eq. 15, the variance "learned_range") is part of the process
(ddpm.diffusion.GaussianDiffusion with learned_variance, a U-Net with learn_sigma), so every sampler and the bound
read it; the cosine schedule (Sec. 3.2) is one of ddpm.schedules. A run asks for these by its config
(DiffusionConfig.loss and .timesteps; the presets mnist-hybrid and mnist-vlb).
"""

from ddpm.improved.importance import TIMESTEP_SAMPLERS, ImportanceSampler, timestep_sampler
from ddpm.improved.losses import HYBRID_LAMBDA, LOSSES, improved_losses

__all__ = ["HYBRID_LAMBDA", "LOSSES", "improved_losses", "ImportanceSampler", "TIMESTEP_SAMPLERS", "timestep_sampler"]
