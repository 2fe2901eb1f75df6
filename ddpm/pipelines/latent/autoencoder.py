"""The first stage of latent diffusion (Rombach et al. 2022): a small KL-regularized convolutional autoencoder.

    ae = Autoencoder(AutoencoderConfig())          # 1x28x28 digits <-> 4x7x7 latents (f = 4)
    mean, logvar = ae.encode(x)                    # q(z | x) = N(mean, exp(logvar))
    x_rec = ae.decode(z)
    z = ae.to_latents(x)                           # a posterior sample times latent_scale: what diffusion sees
    x = ae.from_latents(z)                         # decode(z / latent_scale)

Encoder: conv, then per level a residual block (ddpm.nn.layers.ResBlock without a time embedding) and a
stride-2 down-sampling between levels (28 -> 14 -> 7 for ch_mult of length 3: f = 2 ** (len - 1) = 4), a
middle block, GroupNorm, SiLU and a conv to 2 x latent_channels (mean and log-variance). The decoder mirrors
it with nearest-neighbour up-sampling (each block narrows to the next level's width first, so the
convolutions at 28x28 are 32 channels wide). No attention: a digit's strokes are local at this size.

The loss of one image (``forward``), with sums over pixels and latent numbers as in the paper's code, so that
the KL weight means what theirs means:

    L = sum_pixels |x - decode(z)|  +  kl_weight * KL(q(z | x) || N(0, I)),   z = mean + exp(logvar / 2) eps

    KL = 1/2 sum_latents (mean^2 + exp(logvar) - 1 - logvar)

Why L1: with no perceptual or adversarial loss to sharpen the decoder (the paper's), L2 averages the plausible
strokes into grey blur, while L1's median-like optimum keeps the background at exactly -1 and the stroke
edges sharp; it is also less dominated by the few pixels on an ambiguous edge.

The latent scale: diffusion assumes data of about unit variance (its SNR(t) = alpha_bar / (1 - alpha_bar) is
meant for that). ``latent_scale`` = 1 / (standard deviation of the latents) is measured on training images
after training (``measure_latent_scale``; Stable Diffusion's 0.18215 is this number for its autoencoder) and
stored as a buffer, so it travels with the weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from ddpm._util import dataclass_from_dict, dataclass_to_dict
from ddpm.nn.layers import Downsample, ResBlock, Upsample

Reconstruction = Literal["l1", "l2"]

__all__ = ["AutoencoderConfig", "Autoencoder", "encode_moments", "measure_latent_scale", "sample_posterior"]


@dataclass(frozen=True)
class AutoencoderConfig:
    """Architecture and loss of the autoencoder (defaults: the mnist-autoencoder preset)."""

    in_channels: int = 1
    image_size: int = 28
    ch: int = 32
    ch_mult: tuple[int, ...] = (1, 2, 2)  # 28 -> 14 -> 7: downsampling factor f = 4
    latent_channels: int = 4
    num_groups: int = 8
    kl_weight: float = 1e-3  # see docs/results.md ("The autoencoder's KL weight")
    recon: Reconstruction = "l1"

    def __post_init__(self) -> None:
        object.__setattr__(self, "ch_mult", tuple(self.ch_mult))
        if self.recon not in get_args(Reconstruction):
            raise ValueError(f"unknown recon {self.recon!r}; choose one of {get_args(Reconstruction)}")
        if min(self.in_channels, self.ch, self.latent_channels) < 1 or not self.ch_mult:
            raise ValueError("in_channels, ch and latent_channels must be >= 1 and ch_mult non-empty")
        if self.image_size % self.downsample_factor:
            raise ValueError(f"image_size {self.image_size} is not divisible by the downsampling factor "
                             f"{self.downsample_factor} (ch_mult={self.ch_mult})")
        if self.kl_weight < 0:
            raise ValueError(f"kl_weight must be >= 0, got {self.kl_weight}")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        side = self.image_size // self.downsample_factor
        return (self.latent_channels, side, side)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """One sample's (or one input's) shape."""
        return (self.in_channels, self.image_size, self.image_size)

    def to_dict(self) -> dict[str, Any]:
        return dataclass_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AutoencoderConfig:
        return dataclass_from_dict(cls, d)


def _block(in_ch: int, out_ch: int, groups: int) -> ResBlock:
    return ResBlock(in_ch, out_ch, emb_dim=0, dropout=0.0, num_groups=groups, film=False)


class Autoencoder(nn.Module):
    """x [B, C, H, W] in [-1, 1] <-> z [B, latent_channels, H/f, W/f]; forward(x) is the training loss [B]."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.config = c = config
        chs = [c.ch * m for m in c.ch_mult]
        enc: list[nn.Module] = [nn.Conv2d(c.in_channels, c.ch, 3, padding=1)]
        prev = c.ch
        for i, ch in enumerate(chs):
            enc.append(_block(prev, ch, c.num_groups))
            prev = ch
            if i < len(chs) - 1:
                enc.append(Downsample(ch))
        enc += [_block(prev, prev, c.num_groups), nn.GroupNorm(c.num_groups, prev), nn.SiLU(),
                nn.Conv2d(prev, 2 * c.latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(c.latent_channels, chs[-1], 3, padding=1),
                                _block(chs[-1], chs[-1], c.num_groups)]
        prev = chs[-1]
        for i in reversed(range(len(chs))):  # each block narrows to the next level's width before up-sampling
            dec.append(_block(prev, chs[max(i - 1, 0)], c.num_groups))
            prev = chs[max(i - 1, 0)]
            if i > 0:
                dec.append(Upsample(prev))
        dec += [nn.GroupNorm(c.num_groups, prev), nn.SiLU(), nn.Conv2d(prev, c.in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)
        self.register_buffer("latent_scale", torch.tensor(1.0))  # 1 / std of the latents, set after training

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The posterior q(z | x) = N(mean, exp(logvar)): (mean, logvar), each [B, latent_channels, h, w]."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: Tensor) -> Tensor:
        """The reconstruction of an (unscaled) latent z: [B, C, H, W], about [-1, 1] (not clipped)."""
        return self.decoder(z)

    def reconstruct(self, x: Tensor) -> Tensor:
        """decode(posterior mean of x): the deterministic reconstruction (not clipped)."""
        return self.decode(self.encode(x)[0])

    def to_latents(self, x: Tensor, generator: torch.Generator | None = None, sample: bool = True) -> Tensor:
        """What the latent DDPM sees: a posterior sample (or its mean) times latent_scale."""
        mean, logvar = self.encode(x)
        z = sample_posterior(torch.cat([mean, logvar], dim=1), generator) if sample else mean
        return z * self.latent_scale

    def from_latents(self, z: Tensor) -> Tensor:
        """Pixels of scaled latents (the inverse of to_latents): decode(z / latent_scale)."""
        return self.decode(z / self.latent_scale)

    def forward(self, x: Tensor) -> Tensor:
        """The training loss of each image [B]: reconstruction (summed over pixels) + kl_weight * KL."""
        terms = self.loss_terms(x)
        return terms["recon"] + self.config.kl_weight * terms["kl"]

    def loss_terms(self, x: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Per image [B]: "recon" (sum over pixels of |x - x_rec| or its square) and "kl" (sum over latents)."""
        mean, logvar = self.encode(x)
        z = sample_posterior(torch.cat([mean, logvar], dim=1), generator)
        err = self.decode(z).float() - x.float()
        err = err.abs() if self.config.recon == "l1" else err.square()
        kl = 0.5 * (mean.float().square() + logvar.float().exp() - 1.0 - logvar.float())
        return {"recon": err.flatten(1).sum(1), "kl": kl.flatten(1).sum(1)}


def sample_posterior(moments: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """z = mean + exp(logvar / 2) * eps from moments [B, 2c, h, w] (mean and logvar on the channel axis)."""
    mean, logvar = moments.chunk(2, dim=1)
    eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + (0.5 * logvar).exp() * eps


@torch.no_grad()
def encode_moments(ae: Autoencoder, images: Tensor, batch_size: int = 500) -> Tensor:
    """The posterior moments [N, 2c, h, w] (mean, then logvar) of images (uint8 or floats in [-1, 1]) in
    batches, on the autoencoder's device; returned on the CPU (what a latent run caches)."""
    device = ae.latent_scale.device
    out = []
    for lo in range(0, len(images), batch_size):
        x = images[lo:lo + batch_size].to(device)
        x = x.float() / 127.5 - 1.0 if x.dtype == torch.uint8 else x.float()
        out.append(torch.cat(ae.encode(x), dim=1).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def measure_latent_scale(ae: Autoencoder, images: Tensor, seed: int = 0) -> float:
    """1 / std of posterior samples of ``images`` (all latent numbers pooled): the factor that gives the
    latents unit variance. The encoder is run in eval mode; the generator is seeded for a stable number."""
    moments = encode_moments(ae, images)
    z = sample_posterior(moments, torch.Generator().manual_seed(seed))
    return float(1.0 / z.double().std())
