"""The noise-prediction network eps_theta(x_t, t, cond): the DDPM U-Net (Ho et al. 2020, Appendix B).

A PixelCNN++-style U-Net: at each resolution ``num_res_blocks`` residual blocks (with self-attention at the
resolutions in ``attn_resolutions``), then a 2x down-sampling; a middle block (res, attention, res); the
mirror-image up path whose blocks also take the matching down-path activations (skip connections,
concatenated on the channel axis); GroupNorm everywhere. The timestep enters through a sinusoidal
embedding and an MLP, and is added inside every residual block; an optional condition (class label or
text prompt, see ``ddpm.nn.conditioning``) is added to that same embedding.

The network knows nothing about betas: it maps ([B, C, H, W] noisy images, [B] timestep indices) to a
[B, C, H, W] prediction, whatever ``GaussianDiffusion`` does with it.

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
- ``"mnist-latent"``: for the 4x7x7 latents of the mnist autoencoder (ddpm.nn.autoencoder): one level at 7x7,
  ch 64, two res blocks, attention at 7x7 and in the middle.
- ``"mnist-14"``: the base of a cascade, 1x14x14 (14 -> 7): ch 32, ch_mult (1, 2), two res blocks per level,
  attention at 7x7 and in the middle.
- ``"mnist-sr28"``: the super-resolution stage of a cascade, 14 -> 28: the ``"mnist"`` U-Net whose input is x_t
  concatenated with the low-res digit upsampled to 28x28 (``low_res_channels=1``), and whose time embedding
  also carries the low-res input's noise-augmentation level (a second sinusoidal embedding and MLP).
- ``"tiny"``: for tests, 1x28x28, ch 8, ch_mult (1, 2), 41,609 parameters, 0.026 GFLOPs per image.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddpm._util import dataclass_from_dict, dataclass_to_dict
from ddpm.nn.conditioning import MNIST_CAPTION_VOCAB, ClassConditioner, TextConditioner, Tokenizer
from ddpm.nn.embeddings import TimestepEmbedding
from ddpm.nn.layers import CrossAttention, Downsample, DownsamplePad, ResAttnBlock, ResBlock, SelfAttention, Upsample

CondMode = Literal["none", "class", "text"]


def _near_multiples(size: int, factor: int) -> str:
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
    cross_attn_resolutions: tuple[int, ...] = ()  # text cross-attention at these resolutions
    cond_drop_prob: float = 0.1  # per-sample condition dropout for classifier-free guidance (train mode)
    # super-resolution (a cascade's second stage): channels of the upsampled low-res image concatenated to x_t
    # (0: none), and the embedding of its noise-augmentation level added to the time embedding
    low_res_channels: int = 0

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
                f"{_near_multiples(self.image_size, factor)}"
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
        if self.cross_attn_resolutions and self.cond != "text":
            raise ValueError(f"cross_attn_resolutions={self.cross_attn_resolutions} needs cond='text', "
                             f"got cond={self.cond!r}")

    @property
    def downsample_factor(self) -> int:
        """How much the image shrinks from the top level to the bottom: 2 ** (len(ch_mult) - 1)."""
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def resolutions(self) -> tuple[int, ...]:
        """Side length at each level, e.g. (32, 16, 8, 4) for the CIFAR-10 model."""
        return tuple(self.image_size // 2**i for i in range(len(self.ch_mult)))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return dataclass_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UNetConfig:
        """Inverse of ``to_dict``; missing keys take the defaults, unknown keys raise."""
        return dataclass_from_dict(cls, d)


# ---------------------------------------------------------------------------------------------------------
# The U-Net
# ---------------------------------------------------------------------------------------------------------


class UNet(nn.Module):
    """eps_theta(x_t, t, cond): [B, C, H, W] noisy images and [B] timesteps -> [B, C, H, W].

    Built from a :class:`UNetConfig`; ``UNet.from_preset(name, **overrides)`` for the named ones in
    ``UNET_PRESETS``.
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = c = config
        self.emb_dim = 4 * c.ch
        self.time_embed = TimestepEmbedding(c.ch, self.emb_dim)
        self.conditioner: ClassConditioner | TextConditioner | None = None  # text: conditioner.tokenizer
        if c.cond == "class":
            self.conditioner = ClassConditioner(c.num_classes, self.emb_dim)
        elif c.cond == "text":
            self.conditioner = TextConditioner(
                Tokenizer(c.vocab), c.max_prompt_len, c.text_dim, c.text_layers, c.text_heads, self.emb_dim
            )
        # super-resolution: the low-res image enters beside x_t, its augmentation level beside t
        self.aug_embed = TimestepEmbedding(c.ch, self.emb_dim) if c.low_res_channels else None
        self.conv_in = nn.Conv2d(c.in_channels + c.low_res_channels, c.ch, 3, padding=1)
        skip_chs, ch = self._build_down()
        # Middle block at the lowest resolution: res, self-attention (always, as in the paper), res.
        low = c.resolutions[-1]
        self.mid = nn.ModuleList([self._block(ch, ch, low, self_attn=True),
                                  self._block(ch, ch, low, self_attn=False, cross=False)])
        ch = self._build_up(skip_chs, ch)
        self.norm_out = nn.GroupNorm(c.num_groups, ch, eps=c.norm_eps)
        self.conv_out = nn.Conv2d(ch, c.in_channels, 3, padding=1)
        self._init_weights()

    def _block(self, in_ch: int, out_ch: int, res: int, self_attn: bool | None = None,
               cross: bool | None = None) -> ResAttnBlock:
        """A residual block, with self-attention (default: where attn_resolutions says) and cross-attention
        (default: where cross_attn_resolutions says) at resolution ``res``."""
        c = self.config
        self_attn = res in c.attn_resolutions if self_attn is None else self_attn
        cross = res in c.cross_attn_resolutions if cross is None else cross
        return ResAttnBlock(
            ResBlock(in_ch, out_ch, self.emb_dim, c.dropout, c.num_groups, c.film, c.norm_eps),
            SelfAttention(out_ch, c.num_groups, c.norm_eps) if self_attn else None,
            CrossAttention(out_ch, c.text_dim, c.num_groups, c.norm_eps) if cross else None,
        )

    def _build_down(self) -> tuple[list[int], int]:
        """The down path; returns the channels of every activation the up path concatenates, and the last."""
        c = self.config
        self.down = nn.ModuleList()
        skip_chs, ch = [c.ch], c.ch
        for i, (mult, res) in enumerate(zip(c.ch_mult, c.resolutions, strict=True)):
            level = nn.Module()
            level.blocks = nn.ModuleList()
            for _ in range(c.num_res_blocks):
                level.blocks.append(self._block(ch, c.ch * mult, res))
                ch = c.ch * mult
                skip_chs.append(ch)
            level.downsample = Downsample(ch, c.downsample_pad) if i < len(c.ch_mult) - 1 else None
            if level.downsample is not None:
                skip_chs.append(ch)
            self.down.append(level)
        return skip_chs, ch

    def _build_up(self, skip_chs: list[int], ch: int) -> int:
        """The up path: one more block per level than on the way down, to consume the down-sampling's output
        too. Returns the channels of its output."""
        c = self.config
        self.up = nn.ModuleList()
        for i in reversed(range(len(c.ch_mult))):
            level = nn.Module()
            level.blocks = nn.ModuleList()
            for _ in range(c.num_res_blocks + 1):
                level.blocks.append(self._block(ch + skip_chs.pop(), c.ch * c.ch_mult[i], c.resolutions[i]))
                ch = c.ch * c.ch_mult[i]
            level.upsample = Upsample(ch) if i > 0 else None
            self.up.append(level)
        return ch

    def _init_weights(self) -> None:
        """As in the paper's code: Xavier-uniform ("fan_avg") weights, zero biases, and zero for the last
        layer of every residual branch and of the network, so each residual block starts as its skip path and
        the initial prediction is eps_theta = 0 (the L_simple loss starts at E[eps^2] = 1)."""
        for name, m in self.named_modules():
            if name.startswith("conditioner"):
                continue  # the conditioners keep their own init (embedding tables, LayerNorms)
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, ResBlock):
                nn.init.zeros_(m.conv2.weight)
            elif isinstance(m, (SelfAttention, CrossAttention)):
                nn.init.zeros_(m.proj_out.weight)
        nn.init.zeros_(self.conv_out.weight)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> UNet:
        """A U-Net from ``UNET_PRESETS[name]``, with ``overrides`` replacing config fields."""
        if name not in UNET_PRESETS:
            raise ValueError(f"unknown U-Net preset {name!r}; known presets: {sorted(UNET_PRESETS)}")
        fields = {f.name for f in dataclasses.fields(UNetConfig)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(f"unknown UNetConfig field(s) {unknown}; valid fields: {sorted(fields)}")
        return cls(dataclasses.replace(UNET_PRESETS[name], **overrides))

    def _check_inputs(self, x: Tensor, t: Tensor) -> Tensor:
        c = self.config
        if x.ndim != 4:
            raise ValueError(f"x must be [B, C, H, W], got shape {tuple(x.shape)}")
        B, C, H, W = x.shape
        if C != c.in_channels:
            raise ValueError(
                f"x has {C} channels but the U-Net was built for in_channels={c.in_channels}; "
                f"build it with in_channels={C}, e.g. UNet.from_preset(name, in_channels={C})"
            )
        f = c.downsample_factor
        for side in (H, W):
            if side % f != 0:
                raise ValueError(
                    f"image size {H}x{W} is not divisible by {f} ({len(c.ch_mult) - 1} down-samplings in "
                    f"ch_mult={c.ch_mult}); valid sizes near it: {_near_multiples(side, f)}"
                )
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(B)  # one timestep for the whole batch
        if t.shape != (B,):
            raise ValueError(f"t must have shape [B] = [{B}] (or be a scalar), got {tuple(t.shape)}")
        return t

    def _low_res_input(self, x: Tensor, low_res: Tensor | None, aug_t: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """(x_t with the low-res image concatenated on the channel axis, the embedding of its augmentation
        level [B, 4ch]) for a super-resolution U-Net; (x, None) for any other."""
        c = self.config
        if not c.low_res_channels:
            if low_res is not None or aug_t is not None:
                raise ValueError("this U-Net takes no low-res image (low_res_channels=0); build it with "
                                 "low_res_channels=C for super-resolution")
            return x, None
        want = (x.shape[0], c.low_res_channels, *x.shape[2:])
        if low_res is None or aug_t is None or tuple(low_res.shape) != want:
            got = None if low_res is None else tuple(low_res.shape)
            raise ValueError(f"this super-resolution U-Net needs low_res of shape {want} (the low-res image "
                             f"upsampled to x_t's size) and aug_t [B], got low_res {got}, aug_t "
                             f"{None if aug_t is None else tuple(torch.as_tensor(aug_t).shape)}")
        aug_t = torch.as_tensor(aug_t, device=x.device).expand(x.shape[0])
        return torch.cat([x, low_res.to(x.dtype)], dim=1), self.aug_embed(aug_t)

    def forward(self, x: Tensor, t: Tensor, cond: Any = None, low_res: Tensor | None = None,
                aug_t: Tensor | None = None) -> Tensor:
        """x [B, C, H, W], t [B] (int64 indices 0..T-1, or float), cond -> [B, C, H, W].

        cond: None = the learned null condition for every sample (unconditional); for cond="class" a
        LongTensor [B] of labels (-1 = null for that sample); for cond="text" a list of B prompts
        ("" = null) or a LongTensor [B, L] of token ids. In train mode each sample's condition is replaced by
        the null one with probability ``config.cond_drop_prob`` (classifier-free guidance training).
        low_res, aug_t (super-resolution U-Nets only, ``low_res_channels`` > 0): the low-res image upsampled to
        [B, low_res_channels, H, W] and its noise-augmentation step [B] (0: clean; ddpm.pipelines.cascade).
        """
        t = self._check_inputs(x, t)
        x, aug_emb = self._low_res_input(x, low_res, aug_t)
        emb = self.time_embed(t)  # [B, 4ch]
        if aug_emb is not None:
            emb = emb + aug_emb
        context = mask = None
        if self.conditioner is None:
            if cond is not None:
                raise ValueError("this U-Net is unconditional (cond='none'); call it with cond=None, "
                                 "or build it with cond='class' or cond='text'")
        else:
            ids = self.conditioner.to_ids(cond, x.shape[0], x.device)
            if self.training and cond is not None and self.config.cond_drop_prob > 0:
                drop = torch.rand(x.shape[0], device=x.device) < self.config.cond_drop_prob  # per sample
                ids = self.conditioner.replace_with_null(ids, drop)
            if isinstance(self.conditioner, TextConditioner):
                cvec, context, mask = self.conditioner(ids)  # [B, 4ch], [B, L, D], [B, L]
            else:
                cvec = self.conditioner(ids)  # [B, 4ch]
            emb = emb + cvec

        h = self.conv_in(x)
        hs = [h]
        for level in self.down:
            for blk in level.blocks:
                h = blk(h, emb, context, mask)
                hs.append(h)
            if level.downsample is not None:
                h = level.downsample(h)
                hs.append(h)
        for blk in self.mid:
            h = blk(h, emb, context, mask)
        for level in self.up:
            for blk in level.blocks:
                h = blk(torch.cat([h, hs.pop()], dim=1), emb, context, mask)
            if level.upsample is not None:
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


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
    # a cascade (ddpm.pipelines.cascade): the base at 14x14 (two levels, 14 -> 7), and the super-resolution
    # 14 -> 28 model, the mnist U-Net with the upsampled low-res digit as a second input channel
    "mnist-14": dataclasses.replace(_MNIST, image_size=14, ch_mult=(1, 2), num_res_blocks=2),
    "mnist-sr28": dataclasses.replace(_MNIST, low_res_channels=1),
    "tiny": UNetConfig(
        in_channels=1, image_size=28, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
        dropout=0.0, num_groups=4,
    ),
}
