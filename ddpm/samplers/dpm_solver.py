r"""DPM-Solver++ (Lu et al. 2022, arXiv 2211.01095): multistep solvers of the probability-flow ODE in data
prediction form, 10-20 model calls where DDIM needs 50-250.

With alpha_t = sqrt(alpha_bar_t), sigma_t = sqrt(1 - alpha_bar_t) and lambda_t = log(alpha_t / sigma_t) (half the
log-SNR), the diffusion ODE has the exact solution (Sec. 4: change of variable to lambda, D = pred_x0)

    x_t = (sigma_t / sigma_s) x_s + sigma_t \int_{lambda_s}^{lambda_t} e^{lambda} D(x_lambda, lambda) d lambda.

A solver replaces D by a polynomial in lambda through the latest model outputs D_0 (at s), D_1 (at the step s'
before s), D_2 (at s'' before s'), with h = lambda_t - lambda_s, r_0 = (lambda_s - lambda_s') / h and
r_1 = (lambda_s' - lambda_s'') / h:

    order 1 (DPM-Solver++1 = DDIM, eta = 0):
        x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) D_0
    order 2 (DPM-Solver++(2M), Algorithm 2), r = r_0:
        D = (1 + 1/(2r)) D_0 - (1/(2r)) D_1,   then the order-1 update with D in place of D_0
    order 3 (3M, the third-order multistep of the authors' reference code), phi_1 = e^{-h} - 1,
        phi_2 = phi_1 / h + 1, phi_3 = phi_2 / h - 1/2:
        D1_0 = (D_0 - D_1) / r_0,  D1_1 = (D_1 - D_2) / r_1,
        D1 = D1_0 + r_0 / (r_0 + r_1) (D1_0 - D1_1),  D2 = (D1_0 - D1_1) / (r_0 + r_1),
        x_t = (sigma_t / sigma_s) x_s - alpha_t phi_1 D_0 + alpha_t phi_2 D1 - alpha_t phi_3 D2

On this library's discrete DDPM the solver visits the S chosen timesteps (ddpm.samplers.respacing) and calls
the model once at each: S model calls in all. The first step has only D_0 (order 1), the second at most D_0, D_1
(order <= 2). The last step goes from the last chosen timestep (index 0 for any spacing) to x_0 itself,
alpha = 1, sigma = 0, lambda = +inf: there the order-1 update is x_0 = D_0, the final denoise that DDIM's last
step also makes, and higher orders are undefined (h = inf), so it is always order 1. Before it, S - 1 solver
steps run from the first to the last chosen timestep; when they are fewer than 15, the step k-th from the end
uses order <= k ("lower_order_final" of the authors' code, which they find key for stable sampling in <= 15
steps: the last interval, in lambda the longest for the uniform spacing, is taken at first order).
Thresholding acts on every D (DPM-Solver++ was designed for it: the data prediction D is what gets clipped).
2M is the one for guided sampling (high orders diverge under strong guidance); 3M is for unguided sampling.

SDE-DPM-Solver++(2M) (the paper's Appendix, "dpmpp_2m_sde" elsewhere) solves the reverse SDE instead of the ODE,
with the same D and fresh noise z ~ N(0, I) at every step but the last; eta in [0, 1] scales the SDE's noise
(0: the ODE solver above, 1: the reverse SDE):

    x_t = (sigma_t / sigma_s) e^{-eta h} x_s + alpha_t (1 - e^{-(1 + eta) h}) D + sigma_t sqrt(1 - e^{-2 eta h}) z

For every eta the step keeps the marginals of an exact D: x_s = alpha_s x_0 + sigma_s eps goes to alpha_t x_0 plus
noise of variance sigma_t^2. At order 1 and eta = 1 it is DDIM with eta = 1 (the ancestral step with beta_tilde on
the respaced process): sigma_t^2 (1 - e^{-2h}) = (1 - alpha_bar_t) / (1 - alpha_bar_s) (1 - alpha_bar_s / alpha_bar_t).
The noise corrects errors that a deterministic solver carries to the end: on the shipped MNIST models it removes
the faint background speckle that 2M leaves (docs/results.md, "Speckle").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor

from ddpm.diffusion import GaussianDiffusion
from ddpm.samplers.steps import SamplerOptions, Step, last

LOWER_ORDER_FINAL_STEPS = 15  # with fewer solver steps to the last timestep, the final ones use lower orders

__all__ = ["dpmpp_sample_progressive", "dpmpp_sample", "dpmpp_2m_sample_progressive", "dpmpp_2m_sample",
           "dpmpp_3m_sample_progressive", "dpmpp_3m_sample", "dpmpp_2m_sde_sample_progressive", "dpmpp_2m_sde_sample",
           "half_log_snr", "dpmpp_update"]


def half_log_snr(alpha_bar: float) -> float:
    """lambda = log(alpha / sigma) = log(alpha_bar / (1 - alpha_bar)) / 2; +inf for the data (alpha_bar = 1)."""
    if alpha_bar >= 1:
        return math.inf
    if alpha_bar <= 0:
        return -math.inf
    return 0.5 * (math.log(alpha_bar) - math.log1p(-alpha_bar))


def dpmpp_update(x: Tensor, alpha_bar_s: float, alpha_bar_t: float, history: Sequence[tuple[float, Tensor]],
                 noise: Tensor | None = None, eta: float = 1.0) -> Tensor:
    """One DPM-Solver++ step from x_s to x_t (alpha_bar_t > alpha_bar_s), of order len(history) (1, 2 or 3).

    history: (lambda, D) of the latest steps, oldest first; its last entry is (lambda_s, D_0), the model's pred_x0
    at x_s. With ``noise`` (z ~ N(0, I) like x), the SDE step of order 1 or 2 with noise scale ``eta``. The update
    equations are in the module docstring.
    """
    lam_t, (lam_s, d0) = half_log_snr(alpha_bar_t), history[-1]
    alpha_t, sigma_t, sigma_s = math.sqrt(alpha_bar_t), math.sqrt(1 - alpha_bar_t), math.sqrt(1 - alpha_bar_s)
    h = lam_t - lam_s
    phi_1 = math.expm1(-h)  # e^{-h} - 1
    if noise is not None and len(history) > 2:
        raise ValueError("SDE-DPM-Solver++ is of order 1 or 2")
    d = d0
    if len(history) == 2:
        lam_1, d1 = history[0]
        r = (lam_s - lam_1) / h
        d = (1 + 1 / (2 * r)) * d0 - (1 / (2 * r)) * d1
    if noise is not None:
        # x_t = (sigma_t / sigma_s) e^{-eta h} x_s + alpha_t (1 - e^{-(1 + eta) h}) D + sigma_t sqrt(1 - e^{-2 eta h}) z
        keep, into = (sigma_t / sigma_s) * math.exp(-eta * h), -alpha_t * math.expm1(-(1 + eta) * h)
        return keep * x + into * d + (sigma_t * math.sqrt(-math.expm1(-2 * eta * h))) * noise
    if len(history) <= 2:
        return (sigma_t / sigma_s) * x - (alpha_t * phi_1) * d
    (lam_2, d2), (lam_1, d1) = history[0], history[1]
    r0, r1 = (lam_s - lam_1) / h, (lam_1 - lam_2) / h
    d1_0, d1_1 = (d0 - d1) / r0, (d1 - d2) / r1
    first = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
    second = (d1_0 - d1_1) / (r0 + r1)
    phi_2 = phi_1 / h + 1
    phi_3 = phi_2 / h - 0.5
    return (sigma_t / sigma_s) * x - (alpha_t * phi_1) * d0 + (alpha_t * phi_2) * first - (alpha_t * phi_3) * second


def dpmpp_sample_progressive(model: Callable, diffusion: GaussianDiffusion, shape: Sequence[int], cond=None, *,
                             steps: int = 15, order: int = 2, eta: float = 0.0, **options) -> Iterator[Step]:
    """Multistep DPM-Solver++ of ``order`` 1, 2 (2M) or 3 (3M) on ``steps`` timesteps (a respaced process); with
    ``eta`` > 0, SDE-DPM-Solver++ (order 1 or 2), which draws fresh noise from the generator at every step.

    One model call per step (eps, x0 or v models alike: D = pred_x0, thresholded). Deterministic given x_T (the ODE
    solvers). Yields
    a Step (t, x_t, pred_x0 = D, x_prev) after every step; the last one's x_prev is x_0. ``options``: the keyword
    arguments every sampler takes (ddpm.samplers.SamplerOptions: spacing, guidance_scale, threshold, x_T,
    generator, device, dtype, progress, ...). See the module docstring.
    """
    if order not in (1, 2, 3):
        raise ValueError(f"the order of DPM-Solver++ must be 1, 2 or 3, got {order}")
    if not 0 <= eta <= 1:
        raise ValueError(f"eta of DPM-Solver++ must be in [0, 1] (0: the ODE, 1: the reverse SDE), got {eta}")
    if eta > 0 and order == 3:
        raise ValueError("SDE-DPM-Solver++ (eta > 0) is of order 1 or 2, got 3")
    return _dpmpp(model, diffusion, shape, cond, steps, order, eta,
                  SamplerOptions.of("dpmpp_sample_progressive", options))


@torch.no_grad()
def _dpmpp(model: Callable, diffusion: GaussianDiffusion, shape: Sequence[int], cond, steps: int, order: int,
           eta: float, opts: SamplerOptions) -> Iterator[Step]:
    """The multistep loop: at each timestep s one model call gives D_0 = pred_x0; with the (lambda, D) of the
    latest steps, dpmpp_update goes from x_s to x_t at the next timestep (alpha_bar_t = alpha_bar_prev[i]), of
    order <= ``order``: 1 at the first step, 1 into x_0 at the last, and lower near the end with few steps; with
    eta > 0 every step but the last (into x_0, where sigma_t = 0) adds noise."""
    process, model, x = opts.start(model, diffusion, shape, steps)
    history: list[tuple[float, Tensor]] = []  # (lambda, D) of the latest steps, oldest first
    for i, t in opts.countdown(process, x, f"sampling (DPM-Solver++, order {order})"):
        output = model(x, process.model_t(t), cond)
        abar = float(process.alpha_bar[i])
        pred_x0, _ = opts.denoise(process, output, x, t)  # D_0
        history.append((half_log_snr(abar), pred_x0))
        del history[:-order]
        n = len(history)
        if i == 0:
            n = 1  # the last step lands on x_0 (lambda = inf): x_0 = D_0
        elif process.T - 1 < LOWER_ORDER_FINAL_STEPS:
            n = min(n, i)  # lower_order_final: i steps are left to the last chosen timestep
        # x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) D, D from the last n (lambda, D) (module docstring)
        x_prev = dpmpp_update(x, abar, float(process.alpha_bar_prev[i]), history[-n:],
                              opts.noise(x) if eta > 0 and i > 0 else None, eta)
        x_prev = opts.keep_known(process, x_prev, i)  # inpainting: the known region (Eq. 8 of RePaint)
        yield Step(int(process.timestep_map[i]), x, pred_x0, x_prev)
        x = x_prev


def dpmpp_sample(model: Callable, diffusion: GaussianDiffusion, shape: Sequence[int], cond=None, **kwargs) -> Tensor:
    """x_0 [B, C, H, W] from multistep DPM-Solver++; see dpmpp_sample_progressive for the arguments."""
    return last(dpmpp_sample_progressive(model, diffusion, shape, cond, **kwargs))


def dpmpp_2m_sample_progressive(model: Callable, diffusion: GaussianDiffusion, shape: Sequence[int], cond=None,
                                **kwargs) -> Iterator[Step]:
    """DPM-Solver++(2M) (Algorithm 2): dpmpp_sample_progressive with order 2, for guided and unguided sampling."""
    return dpmpp_sample_progressive(model, diffusion, shape, cond, order=2, eta=0.0, **kwargs)


def dpmpp_3m_sample_progressive(model: Callable, diffusion: GaussianDiffusion, shape: Sequence[int], cond=None,
                                **kwargs) -> Iterator[Step]:
    """DPM-Solver++(3M): dpmpp_sample_progressive with order 3, for unguided sampling."""
    return dpmpp_sample_progressive(model, diffusion, shape, cond, order=3, eta=0.0, **kwargs)


def dpmpp_2m_sample(model: Callable, diffusion: GaussianDiffusion, shape: Sequence[int], cond=None, **kwargs) -> Tensor:
    """x_0 [B, C, H, W] from DPM-Solver++(2M); see dpmpp_sample_progressive for the arguments."""
    return last(dpmpp_2m_sample_progressive(model, diffusion, shape, cond, **kwargs))


def dpmpp_3m_sample(model: Callable, diffusion: GaussianDiffusion, shape: Sequence[int], cond=None, **kwargs) -> Tensor:
    """x_0 [B, C, H, W] from DPM-Solver++(3M); see dpmpp_sample_progressive for the arguments."""
    return last(dpmpp_3m_sample_progressive(model, diffusion, shape, cond, **kwargs))


def dpmpp_2m_sde_sample_progressive(model: Callable, diffusion: GaussianDiffusion, shape: Sequence[int], cond=None,
                                    *, eta: float = 1.0, **kwargs) -> Iterator[Step]:
    """SDE-DPM-Solver++(2M): dpmpp_sample_progressive with order 2 and noise scale ``eta`` (default 1: the reverse
    SDE), stochastic: fresh noise from the generator at every step."""
    if eta <= 0:
        raise ValueError(f"eta of SDE-DPM-Solver++ must be in (0, 1] (0 is the ODE solver dpmpp-2m), got {eta}")
    return dpmpp_sample_progressive(model, diffusion, shape, cond, order=2, eta=eta, **kwargs)


def dpmpp_2m_sde_sample(model: Callable, diffusion: GaussianDiffusion, shape: Sequence[int], cond=None,
                        **kwargs) -> Tensor:
    """x_0 [B, C, H, W] from SDE-DPM-Solver++(2M); see dpmpp_sample_progressive for the arguments."""
    return last(dpmpp_2m_sde_sample_progressive(model, diffusion, shape, cond, **kwargs))
