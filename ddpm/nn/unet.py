"""The noise-prediction network eps_theta(x_t, t, cond): the DDPM U-Net (Ho et al. 2020, Appendix B).

A PixelCNN++-style U-Net: at each resolution ``num_res_blocks`` residual blocks (with self-attention at the
resolutions in ``attn_resolutions``), then a 2x down-sampling; a middle block (res, attention, res); the
mirror-image up path whose blocks also take the matching down-path activations (skip connections,
concatenated on the channel axis); GroupNorm everywhere. The timestep enters through a sinusoidal
embedding and an MLP, and is added inside every residual block; an optional condition (class label or
text prompt, see ``ddpm.nn.conditioning``) is added to that same embedding.

The network knows nothing about betas: it maps ([B, C, H, W] noisy images, [B] timestep indices) to a
[B, C, H, W] prediction, whatever ``GaussianDiffusion`` does with it.

The architecture and the named presets (their shapes, parameter counts and FLOPs) are in
``ddpm.nn.unet_config``: ``UNetConfig`` and ``UNET_PRESETS``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddpm.nn.conditioning import ClassConditioner, EmbeddingConditioner, TextConditioner, Tokenizer
from ddpm.nn.embeddings import TimestepEmbedding
from ddpm.nn.layers import CrossAttention, Downsample, ResAttnBlock, ResBlock, SelfAttention, Upsample
from ddpm.nn.unet_config import UNET_PRESETS, CondMode, UNetConfig, near_multiples

__all__ = ["UNet", "UNetConfig", "UNET_PRESETS", "CondMode"]

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
        self.conditioner: ClassConditioner | TextConditioner | EmbeddingConditioner | None = None
        if c.cond == "class":
            self.conditioner = ClassConditioner(c.num_classes, self.emb_dim)
        elif c.cond == "text":
            self.conditioner = TextConditioner(
                Tokenizer(c.vocab), c.max_prompt_len, c.text_dim, c.text_layers, c.text_heads, self.emb_dim
            )
        elif c.cond == "embedding":  # unCLIP's decoder: a CLIP image embedding, also as tokens to attend to
            self.conditioner = EmbeddingConditioner(c.embed_dim, self.emb_dim, c.embed_tokens, c.text_dim)
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
        self.conv_out = nn.Conv2d(ch, c.in_channels * (2 if c.learn_sigma else 1), 3, padding=1)  # + v: learn_sigma
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
                    f"ch_mult={c.ch_mult}); valid sizes near it: {near_multiples(side, f)}"
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
        """x [B, C, H, W], t [B] (int64 indices 0..T-1, or float), cond -> [B, C, H, W] ([B, 2C, H, W] with learn_sigma:
        the mean's output, then v).

        cond: None = the learned null condition for every sample (unconditional); for cond="class" a
        LongTensor [B] of labels (-1 = null for that sample); for cond="text" a list of B prompts
        ("" = null) or a LongTensor [B, L] of token ids; for cond="embedding" CLIP embeddings [B, D] (a zero row =
        null). In train mode each sample's condition is replaced by
        the null one with probability ``config.cond_drop_prob`` (classifier-free guidance training).
        low_res, aug_t (super-resolution U-Nets only, ``low_res_channels`` > 0): the low-res image upsampled to
        [B, low_res_channels, H, W] and its noise-augmentation step [B] (0: clean; ddpm.pipelines.cascade.stage).
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
            if isinstance(self.conditioner, (TextConditioner, EmbeddingConditioner)):
                cvec, context, mask = self.conditioner(ids)  # [B, 4ch], [B, L, D], [B, L] (or None)
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
