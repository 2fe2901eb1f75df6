"""unCLIP's diffusion prior (Ramesh et al. 2022, Sec. 2.2) in miniature: a residual MLP that denoises a CLIP image
embedding, conditioned on the CLIP text embedding of the caption, and predicts the clean embedding directly.

    emb = MLP(sinusoid(t)) + cond(e_txt)                       [B, hidden]   (cond: EmbeddingConditioner, null = 0)
    h = Linear(z_t);  h = h + W2 SiLU(W1 (LN(h) + emb)) x depth;  out = Linear(LN(h))             [B, D]

DALL-E 2's prior is a Transformer over the text tokens, the text embedding, the timestep, the noised image
embedding and a query token; with one 64-d vector to predict, an MLP with the condition added to every block is
the same idea at this size. It is trained with x0-prediction (DiffusionConfig(prediction="x0"), MSE on the clean
embedding, as the paper's prior) through the ordinary GaussianDiffusion, Trainer and samplers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ddpm._util import dataclass_from_dict, dataclass_to_dict
from ddpm.nn.conditioning import EmbeddingConditioner
from ddpm.nn.embeddings import timestep_embedding

__all__ = ["PriorConfig", "DiffusionPrior"]


@dataclass(frozen=True)
class PriorConfig:
    dim: int = 64  # D: the CLIP embedding it generates (and the text embedding it is conditioned on)
    hidden: int = 192
    depth: int = 4
    time_dim: int = 128
    cond: str = "embedding"  # the CLIP text embedding (a zero row = the null condition)
    cond_drop_prob: float = 0.1  # per-sample condition dropout for classifier-free guidance

    def __post_init__(self) -> None:
        if self.cond != "embedding":
            raise ValueError(f"the prior is conditioned on a CLIP text embedding: cond must be 'embedding', "
                             f"got {self.cond!r}")
        if min(self.dim, self.hidden, self.depth, self.time_dim) < 1:
            raise ValueError(f"PriorConfig sizes must be >= 1, got {self}")
        if not 0.0 <= self.cond_drop_prob <= 1.0:
            raise ValueError(f"cond_drop_prob must be in [0, 1], got {self.cond_drop_prob}")

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """One sample's (or one input's) shape."""
        return (self.dim,)

    def to_dict(self) -> dict[str, Any]:
        return dataclass_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PriorConfig:
        return dataclass_from_dict(cls, d)


class PriorBlock(nn.Module):
    """h + W2 SiLU(W1 (LN(h) + emb)): a pre-norm residual MLP block, the embedding added to its input."""

    def __init__(self, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, 2 * hidden)
        self.fc2 = nn.Linear(2 * hidden, hidden)
        nn.init.zeros_(self.fc2.weight)  # each block starts as the identity
        nn.init.zeros_(self.fc2.bias)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        return h + self.fc2(torch.nn.functional.silu(self.fc1(self.norm(h) + emb)))


class DiffusionPrior(nn.Module):
    """forward(z_t [B, D], t [B], cond: text embeddings [B, D] or None) -> predicted clean embedding [B, D]
    (in the scaled space the prior models: see ddpm.pipelines.unclip.stage)."""

    def __init__(self, config: PriorConfig = PriorConfig()):
        super().__init__()
        self.config = c = config
        self.time = nn.Sequential(nn.Linear(c.time_dim, c.hidden), nn.SiLU(), nn.Linear(c.hidden, c.hidden))
        self.conditioner = EmbeddingConditioner(c.dim, c.hidden)
        self.inp = nn.Linear(c.dim, c.hidden)
        self.blocks = nn.ModuleList(PriorBlock(c.hidden) for _ in range(c.depth))
        self.out = nn.Sequential(nn.LayerNorm(c.hidden), nn.Linear(c.hidden, c.dim))

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.config.dim:
            raise ValueError(f"the prior denoises CLIP embeddings [B, {self.config.dim}], got {tuple(x.shape)}")
        e = self.conditioner.to_ids(cond, x.shape[0], x.device)
        if self.training and cond is not None and self.config.cond_drop_prob > 0:
            drop = torch.rand(x.shape[0], device=x.device) < self.config.cond_drop_prob  # per sample
            e = self.conditioner.replace_with_null(e, drop)
        emb = self.time(timestep_embedding(t, self.config.time_dim).to(x.dtype)) + self.conditioner(e)[0]
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)
