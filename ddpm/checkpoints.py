"""Checkpoints that survive anything, and loading a trained run back for sampling or evaluation.

A checkpoint is one dict of tensors and plain Python values (so it loads with
``torch.load(weights_only=True)``):

    {"format": 1, "step", "config" (plain dict), "model", "ema", "optimizer", "scheduler",
     "rng": [per-rank RNG states], "loader": [per-rank loader states], "caption_rng": [...]}

It is written to a temporary file in the same folder, flushed to disk and renamed over the old one, so
a crash or Ctrl-C during the write leaves the previous checkpoint intact. ``export_model`` writes just
the EMA weights and the config (a few MB), which is what ``sample`` and ``evaluate`` need.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ddpm.config import Config
from ddpm.diffusion import GaussianDiffusion
from ddpm.nn.mlp import MLP
from ddpm.nn.unet import UNet
from ddpm.schedules import make_betas

__all__ = ["CheckpointError", "save_atomic", "load_checkpoint", "build_model", "build_diffusion", "LoadedRun",
           "load_run", "export_model", "CHECKPOINT_NAME", "checkpoint_path"]

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = 1


class CheckpointError(ValueError):
    """A run folder or checkpoint that cannot be used; the message says what is wrong and what to do."""


def build_model(config: Config) -> nn.Module:
    """The network a Config describes (U-Net for images, MLP for 2D toys), freshly initialized."""
    return MLP(config.model) if config.model_kind == "mlp" else UNet(config.model)


def build_diffusion(config: Config, device: str | torch.device = "cpu") -> GaussianDiffusion:
    """The diffusion process a Config describes, on `device`.

    Its coefficients are float64 buffers; MPS has no float64, so there they are stored as float32.
    """
    d = config.diffusion
    betas = make_betas(d.schedule, d.T, zero_terminal_snr=d.zero_terminal_snr)
    diffusion = GaussianDiffusion(betas, prediction=d.prediction)
    device = torch.device(device)
    return diffusion.to(device, torch.float32) if device.type == "mps" else diffusion.to(device)


def save_atomic(obj: dict[str, Any], path: str | os.PathLike) -> Path:
    """torch.save to a temporary file next to ``path``, fsync, then rename over it (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def checkpoint_path(run: str | os.PathLike) -> Path:
    """The checkpoint of a run folder (or the path itself if it names a file)."""
    run = Path(run)
    return run if run.is_file() or run.suffix == ".pt" else run / CHECKPOINT_NAME


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint or exported model safely (weights_only=True), with clear errors."""
    path = checkpoint_path(path)
    if not path.exists():
        where = path.parent
        hint = (f"the folder {where} exists but has no {path.name}: was training stopped before its first "
                f"checkpoint? Train with: python -m ddpm train --name {where.name}") if where.is_dir() else (
                f"no such run folder {where}; train one with: python -m ddpm train --name {where.name}")
        raise CheckpointError(f"no checkpoint at {path}: {hint}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated file, not a torch file, unsafe pickle
        raise CheckpointError(f"{path} is not a readable ddpm checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200]}); delete it or train again") from None
    if not isinstance(ckpt, dict) or "config" not in ckpt or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a ddpm checkpoint of format {FORMAT} (no config/format keys)")
    return ckpt


@dataclass
class LoadedRun:
    """A trained model ready to sample: the network (eval mode), its diffusion process and config."""

    model: nn.Module
    diffusion: GaussianDiffusion
    config: Config
    step: int
    path: Path
    label_names: tuple[str, ...] = field(default=())

    @property
    def cond(self) -> str:
        return self.config.model.cond

    @property
    def shape(self) -> tuple[int, ...]:
        m = self.config.model
        return (m.dim,) if self.config.model_kind == "mlp" else (m.in_channels, m.image_size, m.image_size)


def export_model(run: str | os.PathLike, out: str | os.PathLike, half: bool = False) -> Path:
    """Write only the EMA weights and config of a run (for shipping a small pretrained model)."""
    ckpt = load_checkpoint(run)
    weights = ckpt["ema"]
    if half:
        weights = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    return save_atomic({"format": FORMAT, "step": ckpt["step"], "config": ckpt["config"], "ema": weights,
                        "label_names": ckpt.get("label_names", [])}, out)


def load_run(run: str | os.PathLike, device: str | torch.device = "cpu", use_ema: bool = True,
             expect_preset: str | None = None) -> LoadedRun:
    """Load runs/<name> (its checkpoint.pt) or an exported .pt file for sampling/evaluation.

    use_ema=False loads the raw trained weights (only full checkpoints have them). expect_preset makes a
    checkpoint of another preset an error instead of a surprise.
    """
    path = checkpoint_path(run)
    ckpt = load_checkpoint(path)
    try:
        config = Config.from_dict(ckpt["config"])
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{path} holds a config this version of ddpm cannot read: {e}") from None
    if expect_preset is not None and config.preset != expect_preset:
        raise CheckpointError(f"{path} was trained with preset {config.preset!r}, not {expect_preset!r}")
    key = "ema" if use_ema else "model"
    if key not in ckpt:
        raise CheckpointError(f"{path} has no {key!r} weights (exported files hold only the EMA weights)")
    model = build_model(config)
    state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt[key].items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match the network its config describes "
                              f"({str(e).splitlines()[0][:200]})") from None
    model.to(device).eval()
    diffusion = build_diffusion(config, device)
    return LoadedRun(model, diffusion, config, int(ckpt["step"]), path, tuple(ckpt.get("label_names", ())))
