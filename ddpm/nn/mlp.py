"""A small MLP eps_theta(x_t, t) for 2D toy data (swiss roll, moons, ...): diffusion you can watch as points.

    emb = MLP(sinusoid(t)) [B, hidden];  h = Linear(x_t);  (h = SiLU(Linear(h + emb))) x depth;  eps = Linear(h)

The time embedding is the same sinusoid the U-Net uses (ddpm.nn.embeddings); it is added to the hidden
state before every layer (not concatenated to the input), so a narrow network knows the noise level everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from ddpm._util import dataclass_from_dict, dataclass_to_dict
from ddpm.nn.embeddings import timestep_embedding


@dataclass(frozen=True)
class MLPConfig:
    dim: int = 2  # data dimension
    hidden: int = 128
    depth: int = 3
    time_dim: int = 32
    cond: str = "none"  # 2D toys are unconditional; the field keeps the interface of UNetConfig

    def __post_init__(self) -> None:
        if self.cond != "none":
            raise ValueError(f"the toy MLP is unconditional; got cond={self.cond!r}, expected 'none'")
        if min(self.dim, self.hidden, self.depth, self.time_dim) < 1:
            raise ValueError(f"MLPConfig sizes must be >= 1, got {self}")

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """One sample's (or one input's) shape."""
        return (self.dim,)

    def to_dict(self) -> dict[str, Any]:
        return dataclass_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MLPConfig:
        return dataclass_from_dict(cls, d)


class MLP(nn.Module):
    """eps_theta for points: forward(x [B, dim], t [B], cond=None) -> [B, dim]."""

    def __init__(self, config: MLPConfig = MLPConfig()):
        super().__init__()
        self.config = config
        self.inp = nn.Linear(config.dim, config.hidden)
        self.time = nn.Sequential(nn.Linear(config.time_dim, config.hidden), nn.SiLU(),
                                  nn.Linear(config.hidden, config.hidden))
        self.layers = nn.ModuleList(nn.Linear(config.hidden, config.hidden) for _ in range(config.depth))
        self.out = nn.Linear(config.hidden, config.dim)
        self.act = nn.SiLU()

    def forward(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        if cond is not None:
            raise ValueError("the toy MLP is unconditional: pass cond=None")
        if x.dim() != 2 or x.shape[1] != self.config.dim:
            raise ValueError(f"the toy MLP expects points [B, {self.config.dim}], got shape {tuple(x.shape)}")
        emb = self.time(timestep_embedding(t, self.config.time_dim).to(x.dtype))  # [B, hidden]
        h = self.inp(x)
        for layer in self.layers:
            h = self.act(layer(h + emb))
        return self.out(h)
