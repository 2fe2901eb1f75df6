"""Noise schedules: the betas beta_1..beta_T of the forward process, as pure float64 functions.

Timestep convention (used everywhere in ddpm): the paper counts t = 1..T; the code indexes
t = 0..T-1, so ``betas[0]`` is the paper's beta_1 ("one step of noise") and

    alpha_bar[i] = prod_{s <= i} (1 - betas[s])          (paper: alpha_bar_t = prod_{s=1}^{t} alpha_s)

is the fraction of signal variance left after i + 1 steps. This is the convention of the original
DDPM code, improved-diffusion and diffusers, so numbers can be compared with them directly.

Everything here is computed in float64: alpha_bar_T of the linear schedule is 4e-5 and the cosine
schedule's is 2.4e-9, which float32 products and differences would distort.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = [
    "SCHEDULES",
    "make_betas",
    "linear_betas",
    "cosine_betas",
    "quadratic_betas",
    "sigmoid_betas",
    "rescale_zero_terminal_snr",
    "alpha_bar",
    "snr",
    "log_snr",
]


def _linear_range(T: int, beta_start: float | None, beta_end: float | None) -> tuple[float, float]:
    """The paper's 1e-4..0.02 for T = 1000, scaled by 1000/T for other T (improved-diffusion's rule).

    Without the rescale, a 1e-4..0.02 schedule with T = 300 ends with sqrt(alpha_bar_T) ~ 0.2 of the
    signal still present, while sampling starts from pure N(0, I): a classic tutorial bug.
    """
    scale = 1000.0 / T
    return (1e-4 * scale if beta_start is None else beta_start, 0.02 * scale if beta_end is None else beta_end)


def linear_betas(T: int, beta_start: float | None = None, beta_end: float | None = None) -> torch.Tensor:
    """beta_t linear in t from beta_start to beta_end (Ho et al. 2020, Sec. 4: 1e-4 to 0.02, T = 1000)."""
    start, end = _linear_range(T, beta_start, beta_end)
    return torch.linspace(start, end, T, dtype=torch.float64)


def quadratic_betas(T: int, beta_start: float | None = None, beta_end: float | None = None) -> torch.Tensor:
    """beta_t = (linspace(sqrt(beta_start), sqrt(beta_end)))^2: same endpoints as linear, slower start.

    (A common typo squares the endpoints instead of their square roots, leaving almost no noise.)
    """
    start, end = _linear_range(T, beta_start, beta_end)
    return torch.linspace(math.sqrt(start), math.sqrt(end), T, dtype=torch.float64) ** 2


def sigmoid_betas(T: int, beta_start: float | None = None, beta_end: float | None = None) -> torch.Tensor:
    """beta_t = beta_start + (beta_end - beta_start) * sigmoid(linspace(-6, 6, T)) (as in GeoDiff)."""
    start, end = _linear_range(T, beta_start, beta_end)
    return start + (end - start) * torch.sigmoid(torch.linspace(-6.0, 6.0, T, dtype=torch.float64))


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal (2021), Eq. 17:

        alpha_bar(t) = f(t) / f(0),   f(t) = cos^2( (t/T + s) / (1 + s) * pi/2 ),
        beta_t = min(1 - alpha_bar(t) / alpha_bar(t-1), max_beta).

    The clip at 0.999 only touches the last beta (which would be exactly 1).
    """
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    abar = f / f[0]
    return torch.clamp(1 - abar[1:] / abar[:-1], max=max_beta)


SCHEDULES: dict[str, Callable[..., torch.Tensor]] = {
    "linear": linear_betas,
    "cosine": cosine_betas,
    "quadratic": quadratic_betas,
    "sigmoid": sigmoid_betas,
}


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. (2023), Algorithm 1: shift and scale sqrt(alpha_bar) so that

        sqrt(alpha_bar_T) = 0 (zero terminal SNR: x_T is exactly N(0, I)), sqrt(alpha_bar_1) unchanged.

    The last beta becomes 1. With alpha_bar_T = 0 the eps-parameterization cannot recover x0 at the
    last step, so use prediction="v" (GaussianDiffusion refuses "eps" for such a schedule).
    """
    sqrt_abar = alpha_bar(betas).sqrt()
    first, last = sqrt_abar[0].clone(), sqrt_abar[-1].clone()
    sqrt_abar = (sqrt_abar - last) * first / (first - last)
    abar = sqrt_abar**2
    alphas = torch.cat([abar[:1], abar[1:] / abar[:-1]])
    return 1 - alphas


def make_betas(name: str, T: int = 1000, *, zero_terminal_snr: bool = False, **kwargs) -> torch.Tensor:
    """The betas of a named schedule: float64 tensor of shape (T,), betas[i] = paper's beta_{i+1}.

    name: "linear" | "cosine" | "quadratic" | "sigmoid". kwargs go to the schedule function
    (beta_start/beta_end for linear, quadratic, sigmoid; s/max_beta for cosine).
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown beta schedule {name!r}; known schedules: {', '.join(SCHEDULES)}")
    if not isinstance(T, int) or T < 2:
        raise ValueError(f"the number of diffusion steps T must be an integer >= 2, got {T!r}")
    betas = SCHEDULES[name](T, **kwargs)
    if zero_terminal_snr:
        betas = rescale_zero_terminal_snr(betas)
    upper_ok = (betas <= 1).all() if zero_terminal_snr else (betas < 1).all()  # beta = 1 erases x0 entirely
    if not (bool((betas > 0).all()) and bool(upper_ok)):
        raise ValueError(f"schedule {name!r} with T={T} and {kwargs or 'default ranges'} gives betas outside (0, 1) "
                         "(the 1000/T rescale of 1e-4..0.02 needs T > 20); pass beta_start/beta_end explicitly")
    return betas


def alpha_bar(betas: torch.Tensor) -> torch.Tensor:
    """alpha_bar_t = prod_{s <= t} (1 - beta_s) (Ho et al., notation above Eq. 4), in float64."""
    return torch.cumprod(1 - betas.to(torch.float64), dim=0)


def snr(abar: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio of q(x_t | x_0): SNR(t) = alpha_bar_t / (1 - alpha_bar_t)."""
    return abar / (1 - abar)


def log_snr(abar: torch.Tensor) -> torch.Tensor:
    """log SNR(t) = log alpha_bar_t - log(1 - alpha_bar_t) (natural log)."""
    return torch.log(abar) - torch.log1p(-abar)
