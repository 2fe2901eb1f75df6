r"""Which timesteps a sampler with S < T steps visits, and the process on them.

Three spacings, each giving S distinct indices of the discrete schedule, sorted, from 0 to T - 1 (T - 1 alone
for S = 1):

    uniform  t_k = round(k (T - 1) / (S - 1))                  (DDIM, Nichol & Dhariwal)
    lambda   uniform in lambda = log(alpha / sigma) = log-SNR / 2, from lambda_{T-1} to lambda_0
             (the "logSNR" steps of DPM-Solver, Lu et al. 2022)
    karras   sigma_k = (sigma_max^{1/rho} + k / (S - 1) (sigma_min^{1/rho} - sigma_max^{1/rho}))^rho, rho = 7
             (Karras et al. 2022, Eq. 5), in sigma = sqrt((1 - alpha_bar) / alpha_bar) = exp(-lambda),
             sigma_max = sigma_{T-1}, sigma_min = sigma_0

with alpha = sqrt(alpha_bar), sigma = sqrt(1 - alpha_bar). The lambda and karras targets are continuous; each
goes to the index whose lambda is nearest. Near t = 0 lambda moves fast per index (4.6 -> 4.2 -> 4.0 on the
linear schedule), so with many steps two targets can land on one index; such duplicates are pushed up to the
next free index (and back down from T - 1 if that overflows), which keeps S distinct indices.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import Tensor

from ddpm._util import check_mode
from ddpm.diffusion import GaussianDiffusion
from ddpm.schedules import log_snr

Spacing = Literal["uniform", "lambda", "karras"]
SPACINGS: tuple[str, ...] = get_args(Spacing)
KARRAS_RHO = 7.0

__all__ = ["Spacing", "SPACINGS", "KARRAS_RHO", "space_timesteps", "respace"]


def space_timesteps(T: int, steps: int, spacing: Spacing = "uniform", alpha_bar: Tensor | None = None) -> list[int]:
    """`steps` distinct timestep indices in {0..T-1}, sorted, including T-1 and (for 2 or more steps) 0.

    "lambda" and "karras" need the schedule's ``alpha_bar`` (T,); see the module docstring.
    """
    check_mode(spacing, SPACINGS, "spacing")
    if not 1 <= steps <= T:
        raise ValueError(f"the number of sampling steps must be between 1 and T={T}, got {steps}")
    if steps == 1:
        return [T - 1]
    if spacing == "uniform":
        return sorted({round(i * (T - 1) / (steps - 1)) for i in range(steps)})
    if alpha_bar is None or len(alpha_bar) != T:
        raise ValueError(f"spacing {spacing!r} needs the schedule's alpha_bar, a tensor of T={T} values")
    lam = log_snr(torch.as_tensor(alpha_bar, dtype=torch.float64).cpu()) / 2  # decreasing in t
    if not bool(torch.isfinite(lam).all()):
        raise ValueError(f"spacing {spacing!r} needs 0 < alpha_bar < 1 at every step (a zero-terminal-SNR "
                         "schedule has lambda_T = -inf); use spacing='uniform'")
    k = torch.linspace(0, 1, steps, dtype=torch.float64)  # from t = T-1 (k = 0) to t = 0 (k = 1)
    if spacing == "lambda":
        targets = lam[-1] + k * (lam[0] - lam[-1])
    else:
        s_max, s_min = torch.exp(-lam[-1]) ** (1 / KARRAS_RHO), torch.exp(-lam[0]) ** (1 / KARRAS_RHO)
        targets = -torch.log((s_max + k * (s_min - s_max)) ** KARRAS_RHO)
    nearest = (lam[None, :] - targets[:, None]).abs().argmin(dim=1)
    return _distinct(sorted(nearest.tolist()), T)


def _distinct(idx: list[int], T: int) -> list[int]:
    """Sorted indices made strictly increasing within 0..T-1: push duplicates up, then back down from T-1."""
    out = list(idx)
    for k in range(1, len(out)):
        out[k] = max(out[k], out[k - 1] + 1)
    out[-1] = min(out[-1], T - 1)
    for k in range(len(out) - 2, -1, -1):
        out[k] = min(out[k], out[k + 1] - 1)
    return out


def respace(diffusion: GaussianDiffusion, steps: int | Sequence[int],
            spacing: Spacing = "uniform") -> GaussianDiffusion:
    """A process on a subsequence tau_1 < ... < tau_S of the timesteps (Nichol & Dhariwal Sec. 4, DDIM Sec. 4.2).

    Keeps alpha_bar on the subsequence and recomputes beta'_i = 1 - alpha_bar_{tau_i} / alpha_bar_{tau_{i-1}},
    so that q(x_tau | x_0) is unchanged; the new process calls the network with the original indices
    (its ``timestep_map``). ``steps`` is a count (spaced by ``spacing``) or an explicit list of indices.
    """
    if isinstance(steps, int):
        use = space_timesteps(diffusion.T, steps, spacing, diffusion.alpha_bar)
    else:
        use = sorted(set(int(s) for s in steps))
    if use[0] < 0 or use[-1] >= diffusion.T:
        raise ValueError(f"respaced timesteps must lie in 0..{diffusion.T - 1}")
    abar = diffusion.alpha_bar.cpu()[use]
    abar_prev = torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]])
    betas = 1 - abar / abar_prev
    new = GaussianDiffusion(betas, prediction=diffusion.prediction, timestep_map=diffusion.timestep_map.cpu()[use],
                            learned_variance=diffusion.learned_variance)  # Eq. 15 between the respaced beta, beta_tilde
    return new.to(diffusion.betas.device)
