r"""A known region: what a sampler keeps of an image while it draws the rest (inpainting, RePaint's Eq. 8).

At each reverse step the sampler computes x_{t-1} for the whole image; the known region then takes the forward
process of the original at the same noise level instead (Lugmayr et al. 2022, Eq. 8):

    x_{t-1}^known   ~ q(x_{t-1} | x_0) = N(sqrt(alpha_bar_{t-1}) x_0, (1 - alpha_bar_{t-1}) I)
    x_{t-1}^unknown ~ the sampler's step from x_t
    x_{t-1}         = m * x_{t-1}^known + (1 - m) * x_{t-1}^unknown          (m = 1 on kept pixels)

and at the last step (to x_0) the known region is x_0 itself, so the result equals the original there exactly.
The same merge serves every sampler (SamplerOptions.known); the resampling that harmonizes the border is
ddpm.editing.repaint, built on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ddpm.diffusion import GaussianDiffusion

__all__ = ["Known"]


@dataclass(frozen=True)
class Known:
    """The known part of x_0: ``x0`` [B, C, H, W] where ``mask`` is 1 (mask [B or 1, 1 or C, H, W] of 0s and 1s)."""

    x0: Tensor
    mask: Tensor

    def __post_init__(self):
        if self.x0.dim() != self.mask.dim() or self.mask.shape[-2:] != self.x0.shape[-2:]:
            raise ValueError(f"the mask {tuple(self.mask.shape)} does not match the images {tuple(self.x0.shape)}: "
                             f"give one of shape [B or 1, 1 or C, H, W]")
        if not bool(((self.mask == 0) | (self.mask == 1)).all()):
            raise ValueError("the mask must hold only 0 (draw) and 1 (keep)")

    def merge(self, process: GaussianDiffusion, x_prev: Tensor, i: int, noise: Tensor) -> Tensor:
        """x_prev (the state at index i - 1 of ``process``, or x_0 when i = 0) with the known region replaced by
        q(x_{i-1} | x_0) drawn with ``noise`` (Eq. 8), or by x_0 itself at the last step."""
        x0 = self.x0.to(x_prev.device, x_prev.dtype)
        if i == 0:
            known = x0
        else:
            known = process.q_sample(x0, torch.full((x0.shape[0],), i - 1, device=x0.device, dtype=torch.long), noise)
        return torch.where(self.mask.to(x_prev.device).bool(), known, x_prev)
