"""Classifier-free guidance (Ho & Salimans 2022) as a wrapper around any model."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

__all__ = ["guided"]


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
