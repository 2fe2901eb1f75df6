"""A tiny CLIP (Radford et al. 2021): an image encoder and a text encoder trained so that a digit and its caption
land on the same point of the unit sphere. The first part of unCLIP (DALL-E 2, ddpm.pipelines.unclip.stage).

    e_img = normalize(W_i pool(CNN(x)))            e_txt = normalize(TextConditioner(tokens).pooled)   [B, D]
    logits = exp(log_tau_inv) e_img e_txt^T        [B, B]: image i against every caption of the batch
    loss_i = (CE(logits[i, :], i) + CE(logits[:, i], i)) / 2                   (the symmetric InfoNCE loss)

The temperature is learned (stored as log(1 / tau), initialized at tau = 0.07 and capped at 100, as CLIP's).
The text encoder is the one the text-conditioned U-Nets use (ddpm.nn.conditioning.TextConditioner, whose pooled
vector is projected to D here). A caption shared by several digits of a batch (many say only "a handwritten
seven") is a soft target: the loss cannot reach 0, and does not need to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddpm._util import dataclass_from_dict, dataclass_to_dict
from ddpm.nn.conditioning import MNIST_CAPTION_VOCAB, TextConditioner, Tokenizer

__all__ = ["ClipConfig", "Clip", "ImageEncoder", "contrastive_losses"]


@dataclass(frozen=True)
class ClipConfig:
    in_channels: int = 1
    image_size: int = 28
    channels: tuple[int, ...] = (32, 64, 128)  # one stage per entry: 3x3 convs, halving the side after the first
    embed_dim: int = 64  # D, the shared embedding space
    vocab: tuple[str, ...] = MNIST_CAPTION_VOCAB
    max_prompt_len: int = 16
    text_dim: int = 64
    text_layers: int = 2
    text_heads: int = 4
    init_temperature: float = 0.07
    max_logit_scale: float = 100.0
    cond: str = "text"  # trained on captions (the Trainer draws one per digit)

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(self.channels))
        object.__setattr__(self, "vocab", tuple(self.vocab))
        if self.cond != "text":
            raise ValueError(f"a CLIP is trained on captions: cond must be 'text', got {self.cond!r}")
        if not self.channels or min(self.channels) < 1 or min(self.embed_dim, self.in_channels, self.image_size) < 1:
            raise ValueError(f"ClipConfig sizes must be positive, got {self}")
        if not self.vocab:
            raise ValueError("a CLIP needs a vocabulary: pass vocab=MNIST_CAPTION_VOCAB or the dataset's words")
        if not 0 < self.init_temperature < 1 or self.max_logit_scale < 1 / self.init_temperature:
            raise ValueError(f"init_temperature must be in (0, 1) and max_logit_scale at least 1 / init_temperature, "
                             f"got {self.init_temperature}, {self.max_logit_scale}")

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """One sample's (or one input's) shape."""
        return (self.in_channels, self.image_size, self.image_size)

    def to_dict(self) -> dict[str, Any]:
        return dataclass_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClipConfig:
        return dataclass_from_dict(cls, d)


def _conv(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1), nn.GroupNorm(8, out_ch), nn.SiLU())


class ImageEncoder(nn.Module):
    """[B, C, H, W] in [-1, 1] -> [B, D] (not normalized): per stage a 3x3 conv (stride 2 after the first
    stage) and a second 3x3 conv, GroupNorm and SiLU after each; global average pool; a linear map to D."""

    def __init__(self, config: ClipConfig):
        super().__init__()
        layers, ch = [], config.in_channels
        for i, out in enumerate(config.channels):
            layers += [_conv(ch, out, stride=1 if i == 0 else 2), _conv(out, out)]
            ch = out
        self.body = nn.Sequential(*layers)
        self.proj = nn.Linear(ch, config.embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.body(x).mean(dim=(2, 3)))


def contrastive_losses(image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor | float) -> Tensor:
    """The symmetric InfoNCE loss per pair: unit vectors [B, D] and [B, D], the i-th image and text a pair
    -> [B]: (cross-entropy of image i over the texts + of text i over the images) / 2."""
    logits = logit_scale * image_emb.float() @ text_emb.float().T  # [B, B]
    target = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, target, reduction="none") + F.cross_entropy(logits.T, target, reduction="none")) / 2


class Clip(nn.Module):
    """forward(images [B, C, H, W], captions: B strings or token ids [B, L]) -> per-pair losses [B].

    ``encode_image`` / ``encode_text`` give the unit embeddings [B, D]; ``logit_scale`` = 1 / tau."""

    def __init__(self, config: ClipConfig = ClipConfig()):
        super().__init__()
        self.config = c = config
        self.image_encoder = ImageEncoder(c)
        self.text_encoder = TextConditioner(Tokenizer(c.vocab), c.max_prompt_len, c.text_dim, c.text_layers,
                                            c.text_heads, c.embed_dim)
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / c.init_temperature)))

    @property
    def tokenizer(self) -> Tokenizer:
        return self.text_encoder.tokenizer

    @property
    def logit_scale(self) -> Tensor:
        """exp(log(1 / tau)), capped at max_logit_scale (CLIP's 100)."""
        return self.log_logit_scale.clamp(max=math.log(self.config.max_logit_scale)).exp()

    def _check_images(self, x: Tensor) -> None:
        c = self.config
        want = (c.in_channels, c.image_size, c.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"this CLIP encodes images [B, {', '.join(map(str, want))}], got {tuple(x.shape)}")

    def encode_image(self, x: Tensor) -> Tensor:
        """Images in [-1, 1] -> unit embeddings [B, D] (float32)."""
        self._check_images(x)
        return F.normalize(self.image_encoder(x).float(), dim=-1)

    def encode_text(self, captions: list[str] | Tensor) -> Tensor:
        """B captions (or token ids [B, L]) -> unit embeddings [B, D] (float32). Unknown words raise
        UnknownWordsError, naming the closest known ones; "" is refused (CLIP has no null caption)."""
        if not isinstance(captions, Tensor) and any(not str(c).strip() for c in captions):
            raise ValueError("an empty caption has no CLIP embedding; give every prompt some words")
        device = self.log_logit_scale.device
        n = len(captions)
        ids = self.text_encoder.to_ids(captions if isinstance(captions, Tensor) else list(captions), n, device)
        return F.normalize(self.text_encoder(ids)[0].float(), dim=-1)

    def forward(self, x: Tensor, captions: list[str] | Tensor) -> Tensor:
        if len(captions) != len(x):
            raise ValueError(f"a CLIP batch pairs each image with one caption: got {len(x)} images and "
                             f"{len(captions)} captions")
        return contrastive_losses(self.encode_image(x), self.encode_text(captions), self.logit_scale)
