"""Sinusoidal timestep embedding, the way the U-Net learns which noise level it is looking at.

The network shares its weights across all T noise levels, so it must be told t. DDPM (Ho et al. 2020,
Appendix B) uses the Transformer position encoding (Vaswani et al. 2017, Sec. 3.5) for t, followed by
a two-layer MLP; the result is added inside every residual block.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor, nn


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of timesteps, as in the DDPM code (``get_timestep_embedding``).

    With ``half = dim // 2`` and frequencies ``w_i = max_period ** (-i / (half - 1))`` for
    ``i = 0..half-1``::

        emb(t) = [sin(t w_0), ..., sin(t w_{half-1}), cos(t w_0), ..., cos(t w_{half-1})]

    This is the Transformer sinusoid with its sines and cosines grouped into two halves (first half sin,
    second half cos) instead of interleaved, and with the exponent divided by ``half - 1`` rather than
    ``half``, so the lowest frequency is exactly ``1 / max_period`` (the paper's code does both; the
    Transformer paper divides by ``dim``). An odd ``dim`` gets one zero column at the end.

    Args:
        t: [B] timestep indices (int64) or real-valued times (float).
        dim: embedding width D.
        max_period: sets the lowest frequency; 10000 as in both papers.

    Returns:
        [B, D] float32 embedding.
    """
    if t.ndim != 1:
        raise ValueError(f"timestep_embedding expects t of shape [B], got shape {tuple(t.shape)}")
    if dim < 2:
        raise ValueError(f"timestep_embedding needs dim >= 2, got {dim}")
    half = dim // 2
    # max(half - 1, 1): a 2-wide embedding has a single frequency, w_0 = 1.
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(exponent / max(half - 1, 1))  # [half]
    args = rearrange(t.float(), "b -> b 1") * rearrange(freqs, "d -> 1 d")  # [B, half]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)  # [B, 2 * half]
    if dim % 2 == 1:
        emb = nn.functional.pad(emb, (0, 1))
    return emb


class TimestepEmbedding(nn.Module):
    """t -> sinusoid(t) [B, ch] -> Linear -> SiLU -> Linear -> [B, emb_dim] (emb_dim = 4 * ch in DDPM)."""

    def __init__(self, ch: int, emb_dim: int):
        super().__init__()
        self.ch = ch
        self.mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

    def forward(self, t: Tensor) -> Tensor:
        """[B] timesteps -> [B, emb_dim]."""
        return self.mlp(timestep_embedding(t, self.ch))
