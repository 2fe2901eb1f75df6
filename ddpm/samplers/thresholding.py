r"""What a sampler does with a predicted x_0 that leaves the data range [-1, 1].

    "clip"     pred_x0 = clamp(pred_x0, -1, 1)                       (Ho et al.'s code; the default)
    "dynamic"  s = max(percentile_p(|pred_x0|), 1) per image,         (Imagen, Saharia et al. 2022, Sec. 2.3)
               pred_x0 = clamp(pred_x0, -s, s) / s
    "none"     pred_x0 as the network gives it

Either way pred_eps is recomputed from the final pred_x0 (Eq. 4 solved for eps), so that
x_t = sqrt(alpha_bar) pred_x0 + sqrt(1 - alpha_bar) pred_eps still holds. Dynamic thresholding leaves an image
whose pixels lie in [-1, 1] unchanged and pulls saturated pixels inwards instead of flattening them at +-1,
which matters most under strong guidance. Every sampler takes ``threshold`` (ddpm.samplers.SamplerOptions);
GaussianDiffusion's own ``clip_denoised`` (p_mean_variance, p_sample) is "clip" (True) or "none" (False).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

from ddpm._util import check_mode
from ddpm.diffusion import GaussianDiffusion

Threshold = Literal["clip", "dynamic", "none"]
THRESHOLDS: tuple[str, ...] = get_args(Threshold)
DEFAULT_PERCENTILE = 0.995  # the paper gives no p; diffusers and DPM-Solver use 0.995

__all__ = ["Threshold", "THRESHOLDS", "DEFAULT_PERCENTILE", "dynamic_threshold", "denoise"]


def dynamic_threshold(x0: Tensor, percentile: float = DEFAULT_PERCENTILE) -> Tensor:
    """Imagen's dynamic thresholding of x0 [B, ...], each image on its own: s = max(p-th quantile of |x0|, 1),
    x0 -> clamp(x0, -s, s) / s. The result lies in [-1, 1]; an image already inside it is returned unchanged."""
    if not 0 < percentile <= 1:
        raise ValueError(f"the percentile of dynamic thresholding must lie in (0, 1], got {percentile}")
    flat = x0.flatten(1).abs()
    if flat.dtype not in (torch.float32, torch.float64):  # quantile supports only these
        flat = flat.float()
    s = torch.quantile(flat, percentile, dim=1).clamp(min=1.0)
    s = s.to(x0.dtype).reshape(-1, *([1] * (x0.dim() - 1)))
    return torch.minimum(torch.maximum(x0, -s), s) / s


def denoise(process: GaussianDiffusion, output: Tensor, x_t: Tensor, t: Tensor, threshold: Threshold = "clip",
            percentile: float = DEFAULT_PERCENTILE) -> tuple[Tensor, Tensor]:
    """(pred_x0, pred_eps) from the network output, thresholded as ``threshold`` says (see the module docstring).

    "clip" and "none" are GaussianDiffusion.pred_x0_eps with clip_denoised True / False, to the bit.
    """
    if threshold != "dynamic":
        return process.pred_x0_eps(output, x_t, t, check_mode(threshold, THRESHOLDS, "threshold") == "clip")
    pred_x0, _ = process.pred_x0_eps(output, x_t, t, False)
    pred_x0 = dynamic_threshold(pred_x0, percentile)
    return pred_x0, process.eps_from_x0(x_t, t, pred_x0)
