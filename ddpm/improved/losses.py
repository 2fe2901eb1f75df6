r"""The hybrid loss and the bound as a loss (Nichol & Dhariwal 2021, Sec. 3.1), per example.

    L_vlb    = L_0 + L_1 + ... + L_{T-1} (+ L_T, a constant)       Ho et al.'s Eq. 5, term by term in ddpm.likelihood
    L_hybrid = L_simple + lambda L_vlb,  lambda = 0.001,  with the gradient of L_vlb stopped at the mean

One t per example (uniform, or importance-sampled by ddpm.improved.importance) gives the one-sample estimate
T L_t of the sum over t, in bits/dim as the bound's terms are (the original code's ``_vb_terms_bpd``). So the "vlb"
loss reads as bits/dim without L_T; it is the original's RESCALED_KL (the term times T). The hybrid's
lambda T L_t is the original's RESCALED_MSE (mse + vb T / 1000), the same thing at every T: lambda = 1/1000 keeps
L_vlb's gradients, far larger near t = 0, from swamping L_simple's, which is why the mean sees only L_simple.
Both evaluate the terms without clipping pred_x0 (clipping has no gradient outside [-1, 1]), as the original does.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

from ddpm._util import check_mode
from ddpm.diffusion import GaussianDiffusion
from ddpm.likelihood import vb_term_bpd

__all__ = ["HYBRID_LAMBDA", "Loss", "LOSSES", "improved_losses"]

HYBRID_LAMBDA = 0.001  # Sec. 3.1
Loss = Literal["simple", "hybrid", "vlb"]
LOSSES: tuple[str, ...] = get_args(Loss)


def improved_losses(model, diffusion: GaussianDiffusion, x0: Tensor, cond, t: Tensor, noise: Tensor | None,
                    loss: Loss) -> Tensor:
    """Per-example losses [B] at the given t: "vlb" T L_t, "hybrid" ||target - out||^2 + lambda T L_t with the
    mean's output detached in L_t (so only v learns from it); "simple" is GaussianDiffusion.training_loss's.
    L_t is the bound's term at t (ddpm.likelihood.vb_term_bpd: a KL for t > 0, the decoder L_0 at t = 0) with the
    process's variance: the network's own (Eq. 15) for a learned-variance model, else beta_t."""
    if check_mode(loss, LOSSES, "loss") == "simple":
        raise ValueError("L_simple is GaussianDiffusion.training_loss; improved_losses computes 'hybrid' and 'vlb'")
    if loss == "hybrid" and not diffusion.learned_variance:
        raise ValueError("the hybrid loss trains a learned variance (its L_vlb reaches only v): give the U-Net "
                         "learn_sigma=True, or use loss 'simple' or 'vlb'")
    noise = torch.randn_like(x0) if noise is None else noise
    x_t = diffusion.q_sample(x0, t, noise)
    output = diffusion.checked_output(model(x_t, diffusion.model_t(t), cond), x0).float()
    if loss == "vlb":
        return diffusion.T * vb_term_bpd(diffusion, output, x0, x_t, t, clip_denoised=False)
    mean_output, v = diffusion.split_output(output)
    mse = ((diffusion.target(x0, t, noise) - mean_output) ** 2).flatten(1).mean(dim=1)  # L_simple, Eq. 14
    frozen = torch.cat([mean_output.detach(), v], dim=1)  # stop-gradient on the mean (Sec. 3.1)
    return mse + HYBRID_LAMBDA * diffusion.T * vb_term_bpd(diffusion, frozen, x0, x_t, t, clip_denoised=False)
