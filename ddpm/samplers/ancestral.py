"""The ancestral sampler of DDPM (Ho et al. 2020, Algorithm 2), on all T steps or a respaced subsequence."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor

from ddpm.diffusion import GaussianDiffusion, Variance
from ddpm.samplers.steps import SamplerOptions, Step, last

__all__ = ["ancestral_sample_progressive", "ancestral_sample"]


def ancestral_sample_progressive(model: Callable, diffusion: GaussianDiffusion, shape: Sequence[int], cond=None, *,
                                 steps: int | None = None, variance: Variance | None = None,
                                 **options) -> Iterator[Step]:
    """Algorithm 2 on ``steps`` timesteps (None: all T; fewer: a respaced process), sigma_t^2 from ``variance``:
    beta_tilde_t ("fixed_small", much the better with few steps), beta_t ("fixed_large"), or the network's own
    (Nichol & Dhariwal's Eq. 15, "learned_range", between the two of the respaced process). None: the learned one
    for a learned-variance model, else "fixed_small".

    Yields a Step (t, x_t, pred_x0, x_{t-1}) after every step; the last one's x_prev is x_0. ``options``: the
    keyword arguments every sampler takes (ddpm.samplers.SamplerOptions: spacing, guidance_scale, threshold, x_T,
    generator, device, dtype, progress, ...); the thresholded pred_x0 enters the posterior mean.
    """
    return _algorithm_2(model, diffusion, shape, cond, steps, diffusion.resolve_variance(variance),
                        SamplerOptions.of("ancestral_sample_progressive", options))


@torch.no_grad()
def _algorithm_2(model: Callable, diffusion: GaussianDiffusion, shape: Sequence[int], cond, steps: int | None,
                 variance: Variance, opts: SamplerOptions) -> Iterator[Step]:
    r"""Algorithm 2 of Ho et al. 2020, with the index i = t - 1 of this library:

        x_T ~ N(0, I)
        for t = T, ..., 1:
            z ~ N(0, I) if t > 1, else z = 0
            x_{t-1} = mu_theta(x_t, t) + sigma_t z

    mu_theta(x_t, t) = mu_tilde(x_t, pred_x0) is the posterior mean of Eq. 7 with the network's x_0 plugged in;
    for an eps network and no thresholding it is Eq. 11, 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - alpha_bar_t)
    eps_theta). The same step as GaussianDiffusion.p_sample, to the bit (the tests pin it).
    """
    process, model, x = opts.start(model, diffusion, shape, steps)  # x_T ~ N(0, I)
    for i, t in opts.countdown(process, x, "sampling (ancestral)"):
        output = model(x, process.model_t(t), cond)  # eps_theta(x_t, t) (or x0 / v)
        pred_x0, _ = opts.denoise(process, output, x, t)
        mean = process.q_posterior_mean(pred_x0, x, t)  # mu_theta(x_t, t)
        if i > 0:
            sigma = torch.exp(0.5 * process.p_log_variance(x, t, variance, output))
            x_prev = mean + sigma * opts.noise(x)  # x_{t-1} = mu_theta + sigma_t z
        else:
            x_prev = mean  # z = 0 at the last step: x_0 = mu_theta(x_1, 1)
        x_prev = opts.keep_known(process, x_prev, i)  # inpainting: the known region (Eq. 8 of RePaint)
        yield Step(int(process.timestep_map[i]), x, pred_x0, x_prev)
        x = x_prev


def ancestral_sample(model: Callable, diffusion: GaussianDiffusion, shape: Sequence[int], cond=None,
                     **kwargs) -> Tensor:
    """x_0 [B, C, H, W] from Algorithm 2; see ancestral_sample_progressive for the arguments."""
    return last(ancestral_sample_progressive(model, diffusion, shape, cond, **kwargs))
