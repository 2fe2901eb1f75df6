"""Samplers: the ancestral DDPM loop (Algorithm 2), DDIM, DPM-Solver++, timestep spacings, thresholding, guidance.

A sampler takes a model (any callable ``model(x_t, t, cond) -> output`` [B, C, H, W]) and a
GaussianDiffusion; it knows nothing about U-Nets. Each sampler comes as a generator that yields every
step (``*_progressive``, for plots and animations) and a plain function that returns x_0. Its loop is in its
own file, one network call and the paper's update per step.

    steps         Step (what a sampler yields) and SamplerOptions (what every sampler shares)
    respacing     which timesteps a sampler with fewer steps visits (uniform | lambda | karras), respace
    thresholding  what happens to a predicted x_0 outside [-1, 1] (clip | dynamic | none)
    guidance      classifier-free guidance (two calls or one stacked call) and bf16, around any model
    ancestral     Algorithm 2 of Ho et al. 2020
    ddim          DDIM (Song et al. 2021)
    dpm_solver    DPM-Solver++ 2M / 3M and SDE-DPM-Solver++(2M) (Lu et al. 2022)

A sampler's signature shows its own parameters (ancestral: steps, variance; ddim: steps, eta; dpmpp: steps,
order); the keyword arguments they all share (spacing, guidance_scale, batched_guidance, precision, threshold,
percentile, x_T, generator, device, dtype, progress) are SamplerOptions, documented there once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, get_args

from ddpm._util import check_mode
from ddpm.diffusion import GaussianDiffusion
from ddpm.samplers.ancestral import ancestral_sample, ancestral_sample_progressive
from ddpm.samplers.ddim import ddim_sample, ddim_sample_progressive
from ddpm.samplers.dpm_solver import (
    dpmpp_2m_sample,
    dpmpp_2m_sample_progressive,
    dpmpp_2m_sde_sample,
    dpmpp_2m_sde_sample_progressive,
    dpmpp_3m_sample,
    dpmpp_3m_sample_progressive,
    dpmpp_sample,
    dpmpp_sample_progressive,
)
from ddpm.samplers.guidance import (
    MAX_GUIDANCE,
    PRECISIONS,
    bf16_is_fast,
    check_guidance,
    guided,
    in_precision,
    with_null,
)
from ddpm.samplers.respacing import SPACINGS, Spacing, respace, space_timesteps
from ddpm.samplers.steps import SamplerOptions, Step, last
from ddpm.samplers.thresholding import THRESHOLDS, Threshold, dynamic_threshold

Sampler = Literal["ancestral", "ddim", "dpmpp-2m", "dpmpp-3m", "dpmpp-2m-sde"]
SAMPLERS: tuple[str, ...] = get_args(Sampler)

_PROGRESSIVE: dict[str, Callable] = {
    "ancestral": ancestral_sample_progressive,
    "ddim": ddim_sample_progressive,
    "dpmpp-2m": dpmpp_2m_sample_progressive,
    "dpmpp-3m": dpmpp_3m_sample_progressive,
    "dpmpp-2m-sde": dpmpp_2m_sde_sample_progressive,
}

__all__ = ["MAX_GUIDANCE", "check_guidance",
           "PRECISIONS", "bf16_is_fast", "in_precision", "with_null", "default_steps", "DEFAULT_STEPS", "Step",
           "SamplerOptions", "Sampler", "SAMPLERS", "Spacing", "SPACINGS", "Threshold",
           "THRESHOLDS", "space_timesteps",
           "respace", "guided", "dynamic_threshold", "ancestral_sample", "ancestral_sample_progressive", "ddim_sample",
           "ddim_sample_progressive", "dpmpp_sample", "dpmpp_sample_progressive", "dpmpp_2m_sample",
           "dpmpp_2m_sample_progressive", "dpmpp_3m_sample", "dpmpp_3m_sample_progressive", "dpmpp_2m_sde_sample",
           "dpmpp_2m_sde_sample_progressive", "sample"]


DEFAULT_STEPS = {"ddim": 50, "dpmpp-2m": 15, "dpmpp-3m": 15, "dpmpp-2m-sde": 25}  # ancestral: all T steps


def default_steps(sampler: str, T: int) -> int:
    """The number of steps a sampler takes unless told otherwise: T for the paper's ancestral sampler, 50 for
    DDIM, 15 for DPM-Solver++, 25 for its stochastic form (never more than T). On the shipped MNIST model
    DPM-Solver++(2M) at 15 steps matches DDIM at 50; the stochastic one needs more (docs/results.md, "Samplers",
    "Speckle")."""
    check_mode(sampler, SAMPLERS, "sampler")
    return min(T, DEFAULT_STEPS.get(sampler, T))


def sample(model: Callable, diffusion: GaussianDiffusion, shape: Sequence[int], cond=None, *,
           sampler: Sampler = "ancestral", progressive: bool = False, **kwargs):
    """Dispatch on the sampler's name ("ancestral" | "ddim" | "dpmpp-2m" | "dpmpp-3m" | "dpmpp-2m-sde"); kwargs go
    to the sampler (its own, e.g. steps, variance, eta, and those of SamplerOptions; any other raises TypeError).

    Returns x_0 [B, C, H, W], or with progressive=True the iterator of its Steps.
    """
    check_mode(sampler, SAMPLERS, "sampler")
    steps = _PROGRESSIVE[sampler](model, diffusion, shape, cond, **kwargs)
    return steps if progressive else last(steps)
