r"""The variational bound of Ho et al. (Eq. 5) on -log p(x0), in bits per dimension: all of it, once.

    L = L_T + sum_{t=2..T} L_{t-1} + L_0
      = KL(q(x_T|x0) || N(0, I)) + sum_t KL(q(x_{t-1}|x_t, x0) || p_theta(x_{t-1}|x_t)) - log p_theta(x0|x1)

Each KL term is evaluated at one x_t ~ q(x_t | x0), an unbiased estimate of the bound, and L_0 is the
discretized Gaussian decoder of Eq. 13. ``bits_per_dim(model, diffusion, x0, cond)`` (one batch, every t) and
the dataset evaluation (``estimate_bpd``, ``ddpm.metrics.bits_per_dim_dataset``: many images, optionally a
stratified subset of t) both call ``bound_terms`` below, which packs (image, t) pairs into batches of any size.

The bound sits on top of the process: these functions take a GaussianDiffusion (its q_sample, q_posterior,
q_mean_variance, p_mean_variance and model_t) as an argument; diffusion.py knows nothing of the bound.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ddpm._util import eval_mode, select_condition
from ddpm.diffusion import GaussianDiffusion, Variance

__all__ = ["normal_kl", "discretized_gaussian_log_likelihood", "prior_bpd", "vb_term_bpd", "stratified_t_plan",
           "t_ranges", "bound_terms", "bits_per_dim", "estimate_bpd", "NUM_T_RANGES"]

NUM_T_RANGES = 10  # the KL terms are reported summed over this many ranges of t
LOG2 = math.log(2.0)


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL( N(mean1, e^logvar1) || N(mean2, e^logvar2) ) elementwise, in nats:

    0.5 * (-1 + logvar2 - logvar1 + e^(logvar1 - logvar2) + (mean1 - mean2)^2 e^(-logvar2)).
    """
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _std_normal_cdf(x: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log p(x) of 8-bit data x in [-1, 1] under N(mean, e^(2 log_scale)) integrated over each pixel's bin.

    The decoder L_0 of Ho et al. (Eq. 13): bins of width 2/255 centred on the 256 pixel values; the
    first bin extends to -inf and the last to +inf, so the 256 probabilities sum to 1. Elementwise, nats.
    """
    centered = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = _std_normal_cdf(inv_std * (centered + 1.0 / 255))
    cdf_min = _std_normal_cdf(inv_std * (centered - 1.0 / 255))
    # log of the three cases, clamped so log(0) cannot appear (as the original code does)
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    middle = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, middle))


def prior_bpd(diffusion: GaussianDiffusion, x0: Tensor) -> Tensor:
    """L_T = KL(q(x_T | x_0) || N(0, I)) in bits per dimension, [B]."""
    t = torch.full((x0.shape[0],), diffusion.T - 1, device=x0.device, dtype=torch.long)
    mean, _, log_var = diffusion.q_mean_variance(x0, t)
    kl = normal_kl(mean, log_var, torch.zeros_like(mean), torch.zeros_like(mean))
    return kl.flatten(1).mean(dim=1) / LOG2


def vb_term_bpd(diffusion: GaussianDiffusion, model_output: Tensor, x0: Tensor, x_t: Tensor, t: Tensor,
                clip_denoised: bool = True, variance: Variance | None = None) -> Tensor:
    """One term of Eq. 5 in bits/dim, [B]: L_{t-1} = KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t)) for t > 0,
    and the discretized decoder L_0 = -log p(x0 | x_1) where t == 0. variance None: the network's own for a
    learned-variance model (Nichol & Dhariwal's Eq. 15), else "fixed_large" (beta_t, the better one for the bound)."""
    true_mean, _, true_log_var = diffusion.q_posterior(x0, x_t, t)
    out = diffusion.p_mean_variance(model_output, x_t, t, clip_denoised, diffusion.resolve_variance(variance,
                                                                                                     "fixed_large"))
    first = t == 0
    terms = torch.zeros(x0.shape[0], dtype=x0.dtype, device=x0.device)
    if not bool(first.all()):
        kl = normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"]).flatten(1).mean(dim=1)
        terms = torch.where(first, terms, kl)
    if bool(first.any()):  # the decoder only where t == 0 (it costs an erf and logs per pixel)
        nll = -discretized_gaussian_log_likelihood(x0, out["mean"], 0.5 * out["log_variance"]).flatten(1).mean(1)
        terms = torch.where(first, nll, terms)
    return terms / LOG2


def stratified_t_plan(T: int, n: int, timesteps: int | None,
                      generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Which timesteps to evaluate for each of n images, and each one's weight in the sum over t.

    All T (weight 1) by default. With ``timesteps = k < T``: t = 0 (the decoder, always exact) plus one t
    drawn uniformly from each of k - 1 equal strata of 1..T-1, weighted by its stratum's size: an unbiased,
    stratified estimate of the sum of the KL terms at k/T of the cost. Returns t and weights, both [n, k].
    """
    if timesteps is None or timesteps >= T:
        return torch.arange(T).expand(n, T), torch.ones(n, T, dtype=torch.float64)
    if timesteps < 2:
        raise ValueError(f"the bound needs at least 2 timesteps per image (t = 0 and one more), got {timesteps}")
    edges = torch.linspace(1, T, timesteps).round().long()  # k - 1 strata [edges[j], edges[j + 1])
    lo, size = edges[:-1], edges[1:] - edges[:-1]
    keep = size > 0
    lo, size = lo[keep], size[keep]
    u = torch.rand(n, len(lo), generator=generator, dtype=torch.float64)
    t = torch.cat([torch.zeros(n, 1, dtype=torch.long), lo + (u * size).long().clamp(max=size - 1)], dim=1)
    w = torch.cat([torch.ones(n, 1, dtype=torch.float64), size.double().expand(n, -1)], dim=1)
    return t, w


def t_ranges(T: int, parts: int = NUM_T_RANGES) -> list[tuple[int, int]]:
    """Index ranges [a, b) splitting the KL terms 1..T-1 into ``parts`` ranges (paper's t = a+1..b)."""
    edges = sorted({max(1, round(i * T / parts)) for i in range(parts + 1)})  # e.g. 1, 100, 200, ..., 1000
    return [(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True)]


@torch.no_grad()
def bound_terms(model, diffusion: GaussianDiffusion, x0: Tensor, t_plan: Tensor, cond: Any = None, *,
                batch_size: int | None = None, generator: torch.Generator | None = None,
                variance: Variance | None = None, clip_denoised: bool = True, progress: bool = False) -> Tensor:
    """The terms L_{t} of Eq. 5 (bits/dim) for image i at each planned index t_plan[i, j]: float64 [n, k].

    The n * k (image, t) pairs are evaluated column by column (every image at its first planned t, then
    the second, ...), packed into forward passes of ``batch_size`` pairs (default n). The noise of column j
    is one draw of shape [n, ...] from ``generator``, so the result does not depend on batch_size.
    The model is put in eval mode (no condition dropout) while the bound is evaluated.
    """
    n, k = t_plan.shape
    batch_size = batch_size or n
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    device = x0.device
    pair_t = t_plan.T.reshape(-1)  # column-major: pair p is image p % n at column p // n
    pair_img = torch.arange(n).repeat(k)
    terms = torch.empty(k * n, dtype=torch.float64)
    column, column_noise = -1, None
    chunks = range(0, k * n, batch_size)
    if progress:
        chunks = tqdm(chunks, desc=f"bits/dim ({n} images x {k} steps)", leave=False)
    with eval_mode(model):
        for lo in chunks:
            hi = min(lo + batch_size, k * n)
            noise = []
            for p in range(lo, hi, 1):  # this chunk's noise, drawn one whole column at a time
                if p // n != column:
                    column = p // n
                    column_noise = torch.randn((n, *x0.shape[1:]), generator=generator, device=device,
                                               dtype=x0.dtype)
                noise.append(column_noise[p % n])
            idx, t = pair_img[lo:hi], pair_t[lo:hi].to(device)
            xb = x0[idx.to(device)]
            x_t = diffusion.q_sample(xb, t, torch.stack(noise))
            output = model(x_t, diffusion.model_t(t), select_condition(cond, idx))
            terms[lo:hi] = vb_term_bpd(diffusion, output, xb, x_t, t, clip_denoised, variance).double().cpu()
    return terms.view(k, n).T


def bits_per_dim(model, diffusion: GaussianDiffusion, x0: Tensor, cond=None, *, variance: Variance | None = None,
                 clip_denoised: bool = True, generator: torch.Generator | None = None,
                 batch_size: int | None = None, progress: bool = False) -> dict[str, Tensor]:
    """The whole bound for a batch x0 [B, C, H, W] (8-bit data in [-1, 1]), every t: T network calls of B.

    Returns per image [B]: "total", "prior" (L_T), "decoder" (L_0), and "terms" [B, T] where
    terms[:, 0] = L_0 and terms[:, i] = L_i (the paper's L_{t-1} for t = i + 1).
    """
    n = x0.shape[0]
    plan = torch.arange(diffusion.T).expand(n, diffusion.T)
    terms = bound_terms(model, diffusion, x0, plan, cond, batch_size=batch_size, generator=generator,
                        variance=variance, clip_denoised=clip_denoised, progress=progress).to(x0.dtype)
    terms = terms.to(x0.device)
    prior = prior_bpd(diffusion, x0)
    return {"total": terms.sum(dim=1) + prior, "prior": prior, "decoder": terms[:, 0], "terms": terms}


def estimate_bpd(model, diffusion: GaussianDiffusion, x0: Tensor, cond: Any = None, *,
                 timesteps: int | None = None, seed: int = 0, batch_size: int = 64, variance: Variance | None = None,
                 clip_denoised: bool = True, progress: bool = False) -> dict[str, Any]:
    """The bound over a set of images x0 [n, C, H, W] on the diffusion's device, summarized in floats.

    timesteps: None for all T; k < T for a stratified estimate of the sum over t (``stratified_t_plan``).
    The strata and the noise are seeded with ``seed``. Returns (bits/dim, mean over images): bpd,
    bpd_stderr, prior (L_T), decoder (L_0), kl (the sum of L_1..L_{T-1}), kl_by_range (list of {t_from,
    t_to (the paper's t, inclusive), bpd}), per_t ([T] mean term at each index; L_0 first), and n_images,
    T, timesteps, forward_passes, batch_size, variance, seconds.
    """
    start = time.perf_counter()
    variance = diffusion.resolve_variance(variance, "fixed_large")
    n, T = len(x0), diffusion.T
    if n == 0:
        raise ValueError("no images to evaluate")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    plan, weights = stratified_t_plan(T, n, timesteps, torch.Generator().manual_seed(seed))
    noise_gen = torch.Generator(x0.device).manual_seed(seed)
    terms = bound_terms(model, diffusion, x0, plan, cond, batch_size=batch_size, generator=noise_gen,
                        variance=variance, clip_denoised=clip_denoised, progress=progress) * weights
    full = torch.zeros(n, T, dtype=torch.float64).scatter_add_(1, plan.contiguous(), terms)  # [n, T]
    prior = prior_bpd(diffusion, x0).double().cpu()
    total = full.sum(dim=1) + prior
    per_t = full.mean(dim=0)
    k = plan.shape[1]
    return {
        "bpd": float(total.mean()),
        "bpd_stderr": float(total.std() / math.sqrt(n)) if n > 1 else None,
        "prior": float(prior.mean()),
        "decoder": float(per_t[0]),
        "kl": float(per_t[1:].sum()),
        "kl_by_range": [{"t_from": a + 1, "t_to": b, "bpd": float(per_t[a:b].sum())} for a, b in t_ranges(T)],
        "per_t": [round(float(v), 8) for v in per_t],
        "n_images": n, "T": T, "timesteps": k, "forward_passes": math.ceil(k * n / batch_size),
        "batch_size": batch_size, "variance": variance, "seconds": round(time.perf_counter() - start, 2),
    }
