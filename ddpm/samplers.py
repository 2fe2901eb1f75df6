"""Samplers: the ancestral DDPM loop (Algorithm 2), DDIM, respacing and classifier-free guidance.

A sampler takes a model (any callable ``model(x_t, t, cond) -> output`` [B, C, H, W]) and a
GaussianDiffusion; it knows nothing about U-Nets. Each sampler comes as a generator that yields every
step (``*_progressive``, for plots and animations) and a plain function that returns x_0.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Literal, NamedTuple, get_args

import torch
from torch import Tensor

from ddpm.diffusion import GaussianDiffusion, Variance, check_mode

Sampler = Literal["ancestral", "ddim"]
SAMPLERS: tuple[str, ...] = get_args(Sampler)

__all__ = ["Step", "SAMPLERS", "space_timesteps", "respace", "guided", "ancestral_sample",
           "ancestral_sample_progressive", "ddim_sample", "ddim_sample_progressive", "sample"]


class Step(NamedTuple):
    """One step of a reverse trajectory: the index t (of the sampler's process), x_t, and pred_x0."""

    t: int
    x_t: Tensor
    pred_x0: Tensor


def space_timesteps(T: int, steps: int) -> list[int]:
    """`steps` timestep indices in {0..T-1}, evenly spaced, always including 0 and T-1."""
    if not 1 <= steps <= T:
        raise ValueError(f"the number of sampling steps must be between 1 and T={T}, got {steps}")
    if steps == 1:
        return [T - 1]
    return sorted({round(i * (T - 1) / (steps - 1)) for i in range(steps)})


def respace(diffusion: GaussianDiffusion, steps: int | Sequence[int]) -> GaussianDiffusion:
    """A process on a subsequence tau_1 < ... < tau_S of the timesteps (Nichol & Dhariwal Sec. 4, DDIM Sec. 4.2).

    Keeps alpha_bar on the subsequence and recomputes beta'_i = 1 - alpha_bar_{tau_i} / alpha_bar_{tau_{i-1}},
    so that q(x_tau | x_0) is unchanged; the new process calls the network with the original indices
    (its ``timestep_map``). ``steps`` is a count (evenly spaced) or an explicit list of indices.
    """
    use = space_timesteps(diffusion.T, steps) if isinstance(steps, int) else sorted(set(int(s) for s in steps))
    if use[0] < 0 or use[-1] >= diffusion.T:
        raise ValueError(f"respaced timesteps must lie in 0..{diffusion.T - 1}")
    abar = diffusion.alpha_bar.cpu()[use]
    abar_prev = torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]])
    betas = 1 - abar / abar_prev
    new = GaussianDiffusion(betas, prediction=diffusion.prediction,
                            timestep_map=diffusion.timestep_map.cpu()[use])
    return new.to(diffusion.betas.device)


def guided(model: Callable, guidance_scale: float | None) -> Callable:
    """Classifier-free guidance (Ho & Salimans 2022): out = out_u + s (out_c - out_u).

    out_c = model(x_t, t, cond) and out_u = model(x_t, t, None) (the learned null condition). s = 1 is
    the plain conditional model, s = 0 the unconditional one; the paper's w is s - 1. Guiding the eps,
    x0 or v output is the same thing, since each is affine in the others with x_t fixed.
    """
    if guidance_scale is None or guidance_scale == 1.0:
        return model

    def guided_model(x_t: Tensor, t: Tensor, cond=None) -> Tensor:
        if cond is None:
            return model(x_t, t, None)
        out_c = model(x_t, t, cond)
        out_u = model(x_t, t, None)
        return out_u + guidance_scale * (out_c - out_u)

    return guided_model


def _noise(shape, device, dtype, generator):
    return torch.randn(shape, device=device, dtype=dtype, generator=generator)


def _steps(n: int, progress: bool, desc: str):
    idx = range(n - 1, -1, -1)
    if progress:
        from tqdm.auto import tqdm
        return tqdm(idx, desc=desc, total=n, leave=False)
    return idx


@torch.no_grad()
def ancestral_sample_progressive(model: Callable, diffusion: GaussianDiffusion, shape: Sequence[int], cond=None, *,
                                 steps: int | None = None, guidance_scale: float | None = None,
                                 variance: Variance = "fixed_small", clip_denoised: bool = True,
                                 x_T: Tensor | None = None, generator: torch.Generator | None = None,
                                 device=None, dtype=torch.float32, progress: bool = False) -> Iterator[Step]:
    """Algorithm 2: x_T ~ N(0, I); for t = T..1: x_{t-1} = mu_theta(x_t, t) + sigma_t z (z = 0 at t = 1).

    Yields Step(t, x_{t-1}, pred_x0) after every step (the last one holds x_0). ``steps`` < T samples
    a respaced process (fixed_small is much better than fixed_large there). Noise comes from
    ``generator`` (on ``device``): the same seed gives the same images.
    """
    check_mode(variance, ("fixed_small", "fixed_large"), "variance")
    device = device if device is not None else diffusion.betas.device
    process = diffusion if steps is None or steps == diffusion.T else respace(diffusion, steps)
    model = guided(model, guidance_scale)
    x = _noise(shape, device, dtype, generator) if x_T is None else x_T.to(device, dtype)
    for i in _steps(process.T, progress, "sampling (ancestral)"):
        t = torch.full((x.shape[0],), i, device=device, dtype=torch.long)
        output = model(x, process.model_t(t), cond)
        noise = _noise(x.shape, device, dtype, generator) if i > 0 else None
        x, pred_x0 = process.p_sample(output, x, t, noise, clip_denoised, variance)
        yield Step(i, x, pred_x0)


@torch.no_grad()
def ddim_sample_progressive(model: Callable, diffusion: GaussianDiffusion, shape: Sequence[int], cond=None, *,
                            steps: int = 50, eta: float = 0.0, guidance_scale: float | None = None,
                            clip_denoised: bool = True, x_T: Tensor | None = None,
                            generator: torch.Generator | None = None, device=None, dtype=torch.float32,
                            progress: bool = False) -> Iterator[Step]:
    r"""DDIM (Song et al. 2021, Eq. 12) on S = ``steps`` evenly spaced timesteps (respaced process):

        x_{t-1} = sqrt(alpha_bar_{t-1}) pred_x0 + sqrt(1 - alpha_bar_{t-1} - sigma_t^2) pred_eps + sigma_t z,
        sigma_t = eta sqrt((1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_{t-1}).

    eta = 0 is deterministic given x_T; eta = 1 over all T steps is the ancestral sampler with
    sigma_t^2 = beta_tilde_t. Yields Step(t, x_{t-1}, pred_x0) after every step.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    device = device if device is not None else diffusion.betas.device
    process = diffusion if steps == diffusion.T else respace(diffusion, steps)
    model = guided(model, guidance_scale)
    x = _noise(shape, device, dtype, generator) if x_T is None else x_T.to(device, dtype)
    for i in _steps(process.T, progress, "sampling (DDIM)"):
        t = torch.full((x.shape[0],), i, device=device, dtype=torch.long)
        output = model(x, process.model_t(t), cond)
        pred_x0, pred_eps = process.pred_x0_eps(output, x, t, clip_denoised)
        abar = float(process.alpha_bar[i])
        abar_prev = float(process.alpha_bar_prev[i])
        sigma = eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)) ** 0.5
        x = abar_prev**0.5 * pred_x0 + max(1 - abar_prev - sigma**2, 0.0) ** 0.5 * pred_eps
        if sigma > 0 and i > 0:
            x = x + sigma * _noise(x.shape, device, dtype, generator)
        yield Step(i, x, pred_x0)


def _last(steps: Iterator[Step]) -> Tensor:
    (last,) = deque(steps, maxlen=1)  # run the generator to its end, keeping only the final step
    return last.x_t


def ancestral_sample(model: Callable, diffusion: GaussianDiffusion, shape: Sequence[int], cond=None,
                     **kwargs) -> Tensor:
    """x_0 [B, C, H, W] from Algorithm 2; see ancestral_sample_progressive for the arguments."""
    return _last(ancestral_sample_progressive(model, diffusion, shape, cond, **kwargs))


def ddim_sample(model: Callable, diffusion: GaussianDiffusion, shape: Sequence[int], cond=None, **kwargs) -> Tensor:
    """x_0 [B, C, H, W] from DDIM; see ddim_sample_progressive for the arguments."""
    return _last(ddim_sample_progressive(model, diffusion, shape, cond, **kwargs))


def sample(model: Callable, diffusion: GaussianDiffusion, shape: Sequence[int], cond=None, *,
           sampler: Sampler = "ancestral", progressive: bool = False, **kwargs):
    """Dispatch on the sampler's name ("ancestral" | "ddim"); progressive=True returns the step iterator."""
    check_mode(sampler, SAMPLERS, "sampler")
    fn = {"ancestral": ancestral_sample_progressive, "ddim": ddim_sample_progressive}[sampler]
    steps = fn(model, diffusion, shape, cond, **kwargs)
    return steps if progressive else _last(steps)
