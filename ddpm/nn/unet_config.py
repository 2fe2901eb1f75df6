"""The U-Net's architecture as a frozen dataclass (``UNetConfig``), and the named presets (``UNET_PRESETS``).

Presets (``UNET_PRESETS``; FLOPs = 2 x multiply-adds of one forward pass for one image, counted with
``torch.utils.flop_counter``):

- ``"ddpm-cifar10"``: the paper's CIFAR-10 model, 3x32x32, ch 128, ch_mult (1, 2, 2, 2), two res blocks
  per level, attention at 16x16 and in the middle, dropout 0.1, GroupNorm(32) with the original code's
  epsilon 1e-6, down-sampling padded like TensorFlow's "SAME" (see ``UNetConfig.downsample_pad``).
  35,746,307 parameters: exactly the count of the public converted checkpoint (the layers map one-to-one
  onto the original TensorFlow ones; the three q, k, v 1x1 layers of each attention block are one 1x1 conv
  with 3C outputs here, which has the same weights and biases), and the same function: ``ddpm.convert``
  loads the authors' weights, and tests/test_convert.py checks the outputs against diffusers. 12.4 GFLOPs
  per image.
- ``"mnist"``: native 28x28 (28 -> 14 -> 7, no padding to 32): ch 32, ch_mult (1, 2, 2), one res block per
  level, attention only at 7x7 and in the middle, GroupNorm(8), no dropout. 1,112,801 parameters,
  0.38 GFLOPs per image. Why this shape: docs/results.md ("The mnist U-Net").
- ``"mnist-class"``, ``"mnist-text"``: the same with a class-label or caption conditioner (text:
  cross-attention at 7x7 as well).
- ``"mnist-latent"``: for the 4x7x7 latents of the mnist autoencoder (ddpm.pipelines.latent.autoencoder): one
  level at 7x7, ch 64, two res blocks, attention at 7x7 and in the middle.
- ``"mnist-14"``: the base of a cascade, 1x14x14 (14 -> 7): ch 32, ch_mult (1, 2), two res blocks per level,
  attention at 7x7 and in the middle.
- ``"mnist-sr28"``: the super-resolution stage of a cascade, 14 -> 28: the ``"mnist"`` U-Net whose input is x_t
  concatenated with the low-res digit upsampled to 28x28 (``low_res_channels=1``), and whose time embedding
  also carries the low-res input's noise-augmentation level (a second sinusoidal embedding and MLP).
- ``"mnist-decoder"``: unCLIP's decoder: the ``"mnist"`` U-Net conditioned on a 64-d CLIP image embedding, added
  to the time embedding and as 4 tokens that cross-attention at 7x7 reads (``cond="embedding"``). 1,205,217
  parameters, 0.384 GFLOPs per image.
- ``"tiny"``: for tests, 1x28x28, ch 8, ch_mult (1, 2), 41,609 parameters, 0.026 GFLOPs per image.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

from ddpm._util import dataclass_from_dict, dataclass_to_dict
from ddpm.nn.conditioning import MNIST_CAPTION_VOCAB
from ddpm.nn.layers import DownsamplePad

__all__ = ["UNetConfig", "UNET_PRESETS", "CondMode"]

CondMode = Literal["none", "class", "text", "embedding"]


def near_multiples(size: int, factor: int) -> str:
    """The multiples of ``factor`` just below and above ``size``, e.g. (30, 4) -> "28, 32"."""
    below = (size // factor) * factor
    return ", ".join(str(s) for s in (below, below + factor) if s > 0)


def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


# ---------------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of the U-Net. The defaults are the paper's CIFAR-10 model (preset "ddpm-cifar10"), except
    ``norm_eps`` and ``downsample_pad``, whose defaults keep the function of the models trained before they
    existed (the preset sets the paper's values; a checkpoint's config without them loads as before).

    Resolutions: level i of the U-Net works at ``image_size // 2**i`` for i < len(ch_mult), with
    ``ch * ch_mult[i]`` channels, so ``image_size`` must be divisible by ``2 ** (len(ch_mult) - 1)``.
    """

    in_channels: int = 3
    image_size: int = 32
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    num_groups: int = 32  # GroupNorm groups; must divide every channel count
    norm_eps: float = 1e-5  # GroupNorm epsilon: PyTorch's default; the paper's TensorFlow code uses 1e-6
    # How the stride-2 3x3 conv pads: "symmetric" = 1 pixel on every side; "tf-same" = TensorFlow's
    # padding="SAME" for an even size, 0 before and 1 after (right and bottom), as in the paper's code.
    downsample_pad: DownsamplePad = "symmetric"
    film: bool = False  # FiLM scale-shift h * (1 + s) + b instead of the paper's additive h + b
    cond: CondMode = "none"
    num_classes: int = 10  # for cond="class"
    vocab: tuple[str, ...] = ()  # for cond="text": the words (special tokens are added by the Tokenizer)
    max_prompt_len: int = 8
    text_dim: int = 64
    text_layers: int = 2
    text_heads: int = 4
    cross_attn_resolutions: tuple[int, ...] = ()  # cross-attention to the text (or embedding tokens) here
    embed_dim: int = 64  # for cond="embedding" (unCLIP's decoder): the CLIP embedding's size D
    embed_tokens: int = 4  # ... and the context tokens made of it for cross-attention (DALL-E 2: 4)
    cond_drop_prob: float = 0.1  # per-sample condition dropout for classifier-free guidance (train mode)
    # super-resolution (a cascade's second stage): channels of the upsampled low-res image concatenated to x_t
    # (0: none), and the embedding of its noise-augmentation level added to the time embedding
    low_res_channels: int = 0
    # Improved DDPM (Nichol & Dhariwal 2021): also output v per pixel for a learned variance (2 x in_channels out)
    learn_sigma: bool = False

    def __post_init__(self) -> None:
        # Accept lists for tuple fields (e.g. from JSON or overrides) but store tuples: the config is frozen.
        for f in ("ch_mult", "attn_resolutions", "vocab", "cross_attn_resolutions"):
            object.__setattr__(self, f, tuple(getattr(self, f)))
        if self.cond not in get_args(CondMode):
            raise ValueError(f"unknown cond {self.cond!r}; choose one of {get_args(CondMode)}")
        if self.downsample_pad not in get_args(DownsamplePad):
            raise ValueError(f"unknown downsample_pad {self.downsample_pad!r}; choose one of "
                             f"{get_args(DownsamplePad)}")
        if self.low_res_channels < 0:
            raise ValueError(f"low_res_channels must be >= 0, got {self.low_res_channels}")
        if self.in_channels < 1 or self.ch < 1 or self.num_res_blocks < 1 or not self.ch_mult:
            raise ValueError(
                f"in_channels, ch and num_res_blocks must be >= 1 and ch_mult non-empty, got "
                f"in_channels={self.in_channels}, ch={self.ch}, num_res_blocks={self.num_res_blocks}, "
                f"ch_mult={self.ch_mult}"
            )
        factor = self.downsample_factor
        if self.image_size % factor != 0:
            raise ValueError(
                f"image_size {self.image_size} is not divisible by {factor} ({len(self.ch_mult) - 1} "
                f"down-samplings in ch_mult={self.ch_mult}); valid sizes near it: "
                f"{near_multiples(self.image_size, factor)}"
            )
        channels = sorted({self.ch, *(self.ch * m for m in self.ch_mult)})
        for c in channels:
            if c % self.num_groups != 0:
                raise ValueError(
                    f"num_groups={self.num_groups} does not divide the channel count {c} (ch={self.ch}, "
                    f"ch_mult={self.ch_mult}); GroupNorm needs one of: {_divisors(math.gcd(*channels))}"
                )
        for name in ("attn_resolutions", "cross_attn_resolutions"):
            missing = [r for r in getattr(self, name) if r not in self.resolutions]
            if missing:
                raise ValueError(
                    f"{name} {getattr(self, name)} includes {missing}, not a resolution of this U-Net "
                    f"{self.resolutions} (image_size={self.image_size}, ch_mult={self.ch_mult})"
                )
        if not 0.0 <= self.dropout < 1.0 or not 0.0 <= self.cond_drop_prob <= 1.0:
            raise ValueError(f"dropout must be in [0, 1) and cond_drop_prob in [0, 1], got {self.dropout}, "
                             f"{self.cond_drop_prob}")
        if self.cond == "class" and self.num_classes < 1:
            raise ValueError(f"cond='class' needs num_classes >= 1, got {self.num_classes}")
        if self.cond == "text" and not self.vocab:
            raise ValueError("cond='text' needs a vocabulary: pass vocab=MNIST_CAPTION_VOCAB or "
                             "Tokenizer.from_captions(captions).vocab")
        if self.cross_attn_resolutions and self.cond not in ("text", "embedding"):
            raise ValueError(f"cross_attn_resolutions={self.cross_attn_resolutions} needs cond='text' or "
                             f"'embedding', got cond={self.cond!r}")
        if self.cond == "embedding" and min(self.embed_dim, self.embed_tokens) < 1:
            raise ValueError(f"cond='embedding' needs embed_dim and embed_tokens >= 1, got {self.embed_dim}, "
                             f"{self.embed_tokens}")

    @property
    def downsample_factor(self) -> int:
        """How much the image shrinks from the top level to the bottom: 2 ** (len(ch_mult) - 1)."""
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def resolutions(self) -> tuple[int, ...]:
        """Side length at each level, e.g. (32, 16, 8, 4) for the CIFAR-10 model."""
        return tuple(self.image_size // 2**i for i in range(len(self.ch_mult)))

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """One sample's (or one input's) shape."""
        return (self.in_channels, self.image_size, self.image_size)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return dataclass_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UNetConfig:
        """Inverse of ``to_dict``; missing keys take the defaults, unknown keys raise."""
        return dataclass_from_dict(cls, d)



# ---------------------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------------------

# Why these shapes and what they cost: see the module docstring.
_MNIST = UNetConfig(
    in_channels=1, image_size=28, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(7,),
    dropout=0.0, num_groups=8,
)

UNET_PRESETS: dict[str, UNetConfig] = {
    # The paper's GroupNorm epsilon and down-sampling padding (see UNetConfig): with these, the network is the
    # same function as the authors' (tests/test_convert.py checks it against diffusers' conversion of it).
    "ddpm-cifar10": UNetConfig(norm_eps=1e-6, downsample_pad="tf-same"),
    "mnist": _MNIST,
    "mnist-class": dataclasses.replace(_MNIST, cond="class", num_classes=10),
    "mnist-text": dataclasses.replace(
        _MNIST, cond="text", vocab=MNIST_CAPTION_VOCAB, cross_attn_resolutions=(7,)
    ),
    # for the 4x7x7 latents of the mnist autoencoder: one level (the latent is already the low resolution)
    "mnist-latent": UNetConfig(
        in_channels=4, image_size=7, ch=64, ch_mult=(1,), num_res_blocks=2, attn_resolutions=(7,), dropout=0.0,
        num_groups=8,
    ),
    # a cascade (ddpm.pipelines.cascade.stage): the base at 14x14 (two levels, 14 -> 7), and the super-resolution
    # 14 -> 28 model, the mnist U-Net with the upsampled low-res digit as a second input channel
    "mnist-14": dataclasses.replace(_MNIST, image_size=14, ch_mult=(1, 2), num_res_blocks=2),
    "mnist-sr28": dataclasses.replace(_MNIST, low_res_channels=1),
    # unCLIP's decoder (ddpm.pipelines.unclip.stage): the mnist U-Net conditioned on a 64-d CLIP image embedding, in the
    # time embedding and as 4 tokens for cross-attention at 7x7
    "mnist-decoder": dataclasses.replace(_MNIST, cond="embedding", embed_dim=64, embed_tokens=4,
                                         cross_attn_resolutions=(7,)),
    "tiny": UNetConfig(
        in_channels=1, image_size=28, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
        dropout=0.0, num_groups=4,
    ),
}
