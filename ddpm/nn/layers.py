"""The building blocks of the U-Net (ddpm.nn.unet): the residual block with the time embedding, self- and
cross-attention, 2x down- and up-sampling, and the block that chains a residual block with its attention.

Shapes are [B, C, H, W] for images, [B, E] for the time (+ condition) embedding, [B, L, D] for a text context.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ddpm.nn.conditioning import attention

DownsamplePad = Literal["symmetric", "tf-same"]

__all__ = ["ResBlock", "SelfAttention", "CrossAttention", "Downsample", "Upsample", "ResAttnBlock"]




class ResBlock(nn.Module):
    """Residual block with the time (+ condition) embedding injected.

    x [B, Cin, H, W], emb [B, E] -> [B, Cout, H, W]:

    h = conv1(SiLU(GN(x)))
    additive (paper):  h = GN(h + W SiLU(emb))
    FiLM:              h = GN(h) * (1 + s) + b,   [s, b] = W SiLU(emb)
    out = skip(x) + conv2(dropout(SiLU(h)))      (conv2 starts at zero, so the block starts as its skip path:
                                                  the identity when Cin = Cout, a 1x1 conv otherwise)

    emb_dim = 0 makes a block without an embedding (h = GN(h); the autoencoder's blocks): forward(x).
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, num_groups: int, film: bool,
                 eps: float = 1e-5):
        super().__init__()
        self.film = film
        self.norm1 = nn.GroupNorm(num_groups, in_ch, eps=eps)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_ch if film else out_ch) if emb_dim else None
        self.norm2 = nn.GroupNorm(num_groups, out_ch, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        # A 1x1 conv ("network-in-network") matches channels on the skip path when they change.
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.emb_proj is None:
            return self.skip(x) + self.conv2(self.dropout(F.silu(self.norm2(h))))
        e = self.emb_proj(F.silu(emb))
        if self.film:
            scale, shift = rearrange(e, "b (two c) -> two b c 1 1", two=2)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + rearrange(e, "b c -> b c 1 1"))
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Single-head self-attention over the H*W positions, as in the paper.  [B, C, H, W] -> [B, C, H, W].

    x + proj(softmax(q k^T / sqrt(C)) v),  q, k, v = 1x1 convs of GN(x); proj starts at zero.
    """

    def __init__(self, ch: int, num_groups: int, eps: float = 1e-5):
        super().__init__()
        self.norm = nn.GroupNorm(num_groups, ch, eps=eps)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        H = x.shape[2]
        q, k, v = rearrange(self.qkv(self.norm(x)), "b (three c) h w -> three b (h w) c", three=3)
        a = attention(q, k, v)  # [B, H*W, C]
        return x + self.proj_out(rearrange(a, "b (h w) c -> b c h w", h=H))


class CrossAttention(nn.Module):
    """Image positions attend to the text tokens.

    x [B, C, H, W], context [B, L, D] (the encoded prompt), mask [B, L] (False at <pad>) -> [B, C, H, W]:
    x + proj(softmax(q k^T / sqrt(C)) v),  q = 1x1 conv of GN(x), k, v = linear maps of the tokens.
    """

    def __init__(self, ch: int, context_dim: int, num_groups: int, eps: float = 1e-5):
        super().__init__()
        self.norm = nn.GroupNorm(num_groups, ch, eps=eps)
        self.q = nn.Conv2d(ch, ch, 1)
        self.kv = nn.Linear(context_dim, 2 * ch)
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor) -> Tensor:
        H = x.shape[2]
        q = rearrange(self.q(self.norm(x)), "b c h w -> b (h w) c")
        k, v = rearrange(self.kv(context), "b l (two c) -> two b l c", two=2)
        a = attention(q, k, v, key_mask=mask)  # [B, H*W, C]
        return x + self.proj_out(rearrange(a, "b (h w) c -> b c h w", h=H))


class Downsample(nn.Module):
    """3x3 conv with stride 2: [B, C, H, W] -> [B, C, H/2, W/2].

    pad "symmetric": 1 pixel of zeros on every side; "tf-same": TensorFlow's padding="SAME", which for an
    even size puts the one pixel it needs after (right, bottom) and none before (the paper's code). The
    sampling grids differ by one pixel, so the two compute different functions with the same weights.
    """

    def __init__(self, ch: int, pad: DownsamplePad = "symmetric"):
        super().__init__()
        self.pad = pad
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1 if pad == "symmetric" else 0)

    def forward(self, x: Tensor) -> Tensor:
        if self.pad == "tf-same":
            x = F.pad(x, (0, 1, 0, 1))  # (left, right, top, bottom)
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour 2x then a 3x3 conv: [B, C, H, W] -> [B, C, 2H, 2W]."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class ResAttnBlock(nn.Module):
    """One step of a U-Net level: ResBlock, then self-attention and text cross-attention where enabled."""

    def __init__(self, res: ResBlock, attn: SelfAttention | None, cross: CrossAttention | None):
        super().__init__()
        self.res = res
        self.attn = attn
        self.cross = cross

    def forward(self, h: Tensor, emb: Tensor, context: Tensor | None, mask: Tensor | None) -> Tensor:
        h = self.res(h, emb)
        if self.attn is not None:
            h = self.attn(h)
        if self.cross is not None:
            h = self.cross(h, context, mask)
        return h
