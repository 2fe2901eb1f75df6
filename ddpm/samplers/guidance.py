"""Classifier-free guidance (Ho & Salimans 2022) and reduced precision, as wrappers around any model."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor

from ddpm._util import check_mode

__all__ = ["guided", "with_null", "in_precision", "bf16_is_fast", "PRECISIONS", "MAX_GUIDANCE", "check_guidance"]

# |s| beyond this only amplifies the difference of two noisy predictions: the images become noise or saturate
# (the papers' strongest settings are near 10-30), and a huge s overflows to inf, then NaN images
MAX_GUIDANCE = 50.0


def check_guidance(guidance_scale: float | None, what: str = "guidance scale") -> float | None:
    """None, or a finite guidance scale with |s| <= MAX_GUIDANCE; a ValueError saying so otherwise."""
    if guidance_scale is None:
        return None
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, int | float) or not (
            abs(guidance_scale) <= MAX_GUIDANCE):
        raise ValueError(f"the {what} must be a number between -{MAX_GUIDANCE:g} and {MAX_GUIDANCE:g} (1: none; the "
                         f"papers use up to about 10-30), got {str(guidance_scale)[:40]}")
    return guidance_scale

PRECISIONS = ("fp32", "bf16", "auto")


def with_null(cond):
    """[cond; null]: the batch of conditions followed by as many null ones (-1 labels, "" prompts, zero CLIP
    embeddings)."""
    if isinstance(cond, Tensor):
        null = torch.zeros_like(cond) if cond.dtype.is_floating_point else torch.full_like(cond, -1)
        return torch.cat([cond, null])
    return list(cond) + [""] * len(cond)


def guided(model: Callable, guidance_scale: float | None, batched: bool = False,
           learned_variance: bool = False) -> Callable:
    """Classifier-free guidance (Ho & Salimans 2022): out = out_u + s (out_c - out_u).

    out_c = model(x_t, t, cond) and out_u = model(x_t, t, None) (the learned null condition). s = 1 is
    the plain conditional model, s = 0 the unconditional one; the paper's w is s - 1. Guiding the eps,
    x0 or v output is the same thing, since each is affine in the others with x_t fixed. batched=True makes
    the two calls one, on the stacked batch [x_t; x_t] with [cond; null] (the same numbers, one larger call).
    With learned_variance (2C output channels: the mean's, then v) only the mean's half is guided and v is the
    conditional model's, as GLIDE does: extrapolating v would leave Eq. 15's range [beta_tilde_t, beta_t].
    """
    if guidance_scale is None or guidance_scale == 1.0:
        return model

    def guided_model(x_t: Tensor, t: Tensor, cond=None) -> Tensor:
        if cond is None:
            return model(x_t, t, None)
        if batched:
            out_c, out_u = model(torch.cat([x_t, x_t]), torch.cat([t, t]), with_null(cond)).chunk(2)
        else:
            out_c, out_u = model(x_t, t, cond), model(x_t, t, None)
        if learned_variance:
            (mean_c, v_c), (mean_u, _) = out_c.chunk(2, dim=1), out_u.chunk(2, dim=1)
            return torch.cat([mean_u + guidance_scale * (mean_c - mean_u), v_c], dim=1)
        return out_u + guidance_scale * (out_c - out_u)

    return guided_model


@functools.cache
def bf16_is_fast(device_type: str) -> bool:
    """Whether this machine has bfloat16 arithmetic units for ``device_type`` ("cpu": AVX512-BF16 / AMX as
    oneDNN reports them; "cuda": Ampere or newer); where it has none, bf16 would be emulated, and slower."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def in_precision(model: Callable, precision: str = "fp32") -> Callable:
    """The model run in ``precision``: "fp32" (as it is), "bf16" (torch.autocast: matrix products and
    convolutions in bfloat16, the output cast back to x_t's dtype; the sampler's arithmetic stays fp32), or
    "auto" (bf16 where the device has bf16 units, see bf16_is_fast; fp32 elsewhere)."""
    check_mode(precision, PRECISIONS, "precision")
    if precision == "fp32":
        return model

    def bf16_model(x_t: Tensor, t: Tensor, cond=None) -> Tensor:
        if precision == "auto" and not bf16_is_fast(x_t.device.type):
            return model(x_t, t, cond)
        with torch.autocast(x_t.device.type, dtype=torch.bfloat16):
            out = model(x_t, t, cond)
        return out.to(x_t.dtype)

    return bf16_model
