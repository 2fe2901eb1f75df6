"""Checkpoints that survive anything, and loading a trained run back for sampling or evaluation.

A checkpoint is one dict of tensors and plain Python values (so it loads with
``torch.load(weights_only=True)``):

    {"format": 1, "step", "config" (plain dict), "label_names", "model", "ema", "ema_updates", "optimizer",
     "scheduler", "rng": [per-rank RNG states], "loader": [per-rank loader states], "caption_rng": [...], "runlog"}

An exported model holds only "format", "step", "config", "ema" and "label_names". Files written by older
versions load through one migration (``migrate_config``: the config's layout before kinds, the trainer's old
``amp`` flag), here at the loading boundary and nowhere else.

It is written to a temporary file in the same folder, flushed to disk and renamed over the old one, so
a crash or Ctrl-C during the write leaves the previous checkpoint intact. ``ddpm.exports.export_model`` writes
just the EMA weights and the config (a few MB), which is what ``sample`` and ``evaluate`` need.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ddpm._files import save_atomic
from ddpm.config import Config
from ddpm.diffusion import GaussianDiffusion
from ddpm.memory import check_batch, saved_bytes_per_item
from ddpm.pipelines.base import Sampling
from ddpm.samplers import default_steps, sample
from ddpm.schedules import make_betas

__all__ = ["CheckpointError", "save_atomic", "load_checkpoint", "build_model", "build_diffusion", "LoadedRun",
           "load_run", "CHECKPOINT_NAME", "CONFIG_NAME", "checkpoint_path", "config_json",
           "weights_fingerprint", "frozen_path", "read_torch_file", "read_config", "check_finite",
           "load_frozen_network", "migrate_config", "find_run", "PRETRAINED"]

CHECKPOINT_NAME = "checkpoint.pt"
PRETRAINED = Path(__file__).resolve().parents[1] / "data" / "pretrained"  # the shipped models
CONFIG_NAME = "config.json"
FORMAT = 1


class CheckpointError(ValueError):
    """A run folder or checkpoint that cannot be used; the message says what is wrong and what to do."""


def build_model(config: Config) -> nn.Module:
    """The network a Config describes (a U-Net for images and latents, an MLP for 2D toys, or a pipeline's own
    network: an autoencoder, a CLIP, a diffusion prior), freshly initialized."""
    return config.hook.networks[config.network][1](config.model)


def build_diffusion(config: Config, device: str | torch.device = "cpu") -> GaussianDiffusion:
    """The diffusion process a Config describes, on `device`.

    Its coefficients are float64 buffers; MPS has no float64, so there they are stored as float32.
    """
    d = config.diffusion
    betas = make_betas(d.schedule, d.T, zero_terminal_snr=d.zero_terminal_snr)
    diffusion = GaussianDiffusion(betas, prediction=d.prediction,
                                  learned_variance=getattr(config.model, "learn_sigma", False))
    device = torch.device(device)
    return diffusion.to(device, torch.float32) if device.type == "mps" else diffusion.to(device)


def config_json(config: Config) -> str:
    """The text of a run's config.json."""
    return json.dumps(config.to_dict(), indent=2) + "\n"


def checkpoint_path(run: str | os.PathLike) -> Path:
    """The checkpoint of a run folder (or the path itself if it names a file)."""
    run = Path(run)
    return run if run.is_file() or run.suffix == ".pt" else run / CHECKPOINT_NAME


def find_run(run: str | os.PathLike | None, preset: str) -> Path:
    """The run given, else runs/<preset> if it has a checkpoint, else the shipped model data/pretrained/<preset>.pt;
    one line saying how to train it when there is neither."""
    if run:
        return Path(run)
    default = Path("runs") / preset
    if (default / CHECKPOINT_NAME).exists():
        return default
    if (PRETRAINED / f"{preset}.pt").exists():
        return PRETRAINED / f"{preset}.pt"
    raise CheckpointError(f"no {default}/{CHECKPOINT_NAME} and no shipped {preset}.pt; train first: "
                          f"python -m ddpm train --preset {preset}")


def _missing_hint(path: Path) -> str:
    if path.name != CHECKPOINT_NAME:
        return f"no such file {path}; give a run folder or an exported .pt file that exists"
    where = path.parent
    if where.is_dir():
        return (f"no checkpoint at {path}: the folder {where} exists but has no {path.name}: was training stopped "
                f"before its first checkpoint? Train with: python -m ddpm train --name {where.name}")
    return (f"no checkpoint at {path}: no such run folder {where}; train one with: python -m ddpm train --name "
            f"{where.name}")


def _load_failure(path: Path, e: Exception, what: str = "ddpm checkpoint") -> str:
    """One line on why torch.load refused or failed, naming a refused global (code the file asked to run)."""
    text = str(e)
    refused = re.search(r"GLOBAL ([\w.]+)|Unsupported global: GLOBAL ([\w.]+)", text)
    if isinstance(e, pickle.UnpicklingError) and refused:
        return (f"{path} was refused: it would run code when loaded ({refused.group(1) or refused.group(2)}); ddpm "
                f"loads only tensors and plain values: do not trust this file")
    if "Weights only load failed" in text:
        text = "not a torch file of tensors and plain values"
    reason = text.strip().splitlines()[0][:160] if text.strip() else "the file is empty or cut short"
    return f"{path} is not a readable {what} ({type(e).__name__}: {reason})"


def read_torch_file(path: str | os.PathLike, map_location: str | torch.device = "cpu", what: str = "ddpm checkpoint"):
    """torch.load(weights_only=True): plain tensors and values only, never code. Every file ddpm reads with torch
    goes through here, so a refused pickle always gets the same one line (naming what it asked to run)."""
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated file, not a torch file, unsafe pickle
        raise CheckpointError(_load_failure(path, e, what)) from None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint or exported model safely (weights_only=True), with one-line errors."""
    path = checkpoint_path(path)
    if not path.exists():
        raise CheckpointError(_missing_hint(path))
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; give a run folder with a {CHECKPOINT_NAME} or a .pt file")
    ckpt = read_torch_file(path, map_location)
    if not isinstance(ckpt, dict) or "config" not in ckpt or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a ddpm checkpoint of format {FORMAT} (no config/format keys)")
    _check_fields(ckpt, path)
    return ckpt


def _is_weights(obj: Any) -> bool:
    return isinstance(obj, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _check_fields(ckpt: dict[str, Any], path: Path) -> None:
    """The types of the fields every reader relies on; a hand-made file gets one line naming the field."""
    checks = {"step": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
              "config": lambda v: isinstance(v, dict),
              "label_names": lambda v: isinstance(v, list | tuple) and all(isinstance(n, str) for n in v),
              "ema": _is_weights, "model": _is_weights}
    for key, ok in checks.items():
        if key == "step" and key not in ckpt:
            raise CheckpointError(f"{path} has no 'step' field; it is not a ddpm checkpoint")
        if key in ckpt and not ok(ckpt[key]):
            raise CheckpointError(f"{path} has a malformed {key!r} field ({type(ckpt[key]).__name__}); it was not "
                                  f"written by ddpm")


@dataclass
class LoadedRun:
    """A trained model ready to sample: the network (eval mode), its diffusion process and config, and the frozen
    network its kind builds on (a latent run's autoencoder, an unCLIP stage's CLIP; eval mode), if any."""

    model: nn.Module
    diffusion: GaussianDiffusion
    config: Config
    step: int
    path: Path
    label_names: tuple[str, ...] = field(default=())
    frozen: nn.Module | None = None
    _per_item: float | None = field(default=None, repr=False)  # memory per sample (ddpm.memory), once measured

    def check_batch(self, n: int, what: str = "a batch of samples", fix: str = "give a smaller --n") -> None:
        """Refuse to sample n at once when they would not fit in memory (ddpm.memory.BatchTooLarge, one line)."""
        if self._per_item is None:
            device = self.diffusion.betas.device
            self._per_item = saved_bytes_per_item(lambda b: self.model(
                torch.zeros(b, *self.shape, device=device), torch.zeros(b, dtype=torch.long, device=device), None))
        check_batch(n, self._per_item, what, fix, self.diffusion.betas.device)

    @property
    def cond(self) -> str:
        return self.config.cond

    @property
    def shape(self) -> tuple[int, ...]:
        """One sample of the diffusion model: an image, or for a latent run its latent."""
        return self.config.sample_shape

    @property
    def image_shape(self) -> tuple[int, ...]:
        """One decoded sample (C, H, W): the sample shape, or for a latent run the autoencoder's images."""
        return self.config.hook.image_shape(self.config, self.frozen)

    def sampler_options(self, options: dict[str, Any] | None = None) -> dict[str, Any]:
        """Keyword arguments for ddpm.samplers.sample: the config's sampler_defaults (no clipping of latents),
        then those of ``options`` that are set."""
        return {**self.config.sampler_defaults, **{k: v for k, v in (options or {}).items() if v is not None}}

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Samples as what they stand for: images in [-1, 1] (a latent run's latents decoded by its autoencoder),
        a prior's unit CLIP embeddings; else x itself."""
        return self.config.hook.decode(self.frozen, x)

    @torch.no_grad()
    def sample(self, cond, n: int | None = None, sampling: Sampling | None = None,
               generator: torch.Generator | None = None, *, model=None, progress: bool = False) -> torch.Tensor:
        """The one way to sample a loaded run: n samples (or one per condition), decoded.

        sampling: the sampler, steps, guidance and options (default: the kind's, Kind.sampling); guidance None
        is the run's train.guidance, and an unconditional run (cond None) is never guided. model: the callable
        to sample instead of the network (a super-resolution model with its low-res input fixed)."""
        s = sampling or self.config.hook.sampling(self.config)
        n = n if n is not None else len(cond)
        self.check_batch(n)
        device = self.diffusion.betas.device
        guidance = s.guidance if s.guidance is not None else self.config.train.guidance
        x = sample(model or self.model, self.diffusion, (n, *self.shape), cond, sampler=s.sampler,
                   steps=s.steps or default_steps(s.sampler, self.diffusion.T),
                   guidance_scale=guidance if cond is not None else None, generator=generator, device=device,
                   progress=progress, **self.sampler_options(s.options))
        return self.decode(x)


def weights_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's names and values, floats rounded to fp16 first: the same for a run's fp32 EMA
    weights and their fp16 export, different for any other weights."""
    h = hashlib.sha256()
    for name in sorted(state):
        v = state[name].detach().cpu()
        v = v.half() if v.is_floating_point() else v
        h.update(name.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def frozen_path(name: str, relative_to: str | os.PathLike | None, what: str, train: str) -> Path:
    """The frozen network a config names: the path as given (relative to the current folder), else, for a relative
    path, beside ``relative_to`` (the model's own file); one line naming it when it is missing."""
    path = Path(name)
    candidates = [path]
    if not path.is_absolute() and relative_to is not None:
        candidates.append(Path(relative_to).parent / path)
    for c in candidates:
        if checkpoint_path(c).exists():
            return checkpoint_path(c)
    fix = (f"put it beside {relative_to} (it is the {what} this model was trained on)" if relative_to is not None
           else f"train one with: {train}")
    raise CheckpointError(f"the {what} {name} of this model is missing (looked for "
                          f"{' and '.join(str(checkpoint_path(c)) for c in candidates)}); {fix}")


def load_frozen_network(path: Path, network: str, fingerprint: str | None, user: str) -> tuple[nn.Module, str]:
    """(the frozen network of a file, eval mode on the CPU, the fingerprint of its weights); refuses another
    network and weights whose fingerprint differs from the recorded one. user: who needs it ("latent model")."""
    ckpt = load_checkpoint(path)
    config = read_config(ckpt, path)
    if config.network != network:
        raise CheckpointError(f"{path} is a {config.network} model, not a {network}; the {user} needs the {network} "
                              f"it was trained on")
    found = weights_fingerprint(ckpt["ema"])
    if fingerprint is not None and found != fingerprint:
        raise CheckpointError(f"the {network} {path} is not the one this {user} was trained on (its weights' "
                              f"fingerprint {found[:12]} differs from the recorded {fingerprint[:12]}); "
                              f"use that {network}, or train the {user} again on this one")
    net = _load_weights(build_model(config), ckpt["ema"], path)
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval(), found


def migrate_config(d: dict[str, Any]) -> dict[str, Any]:
    """A config dict as this version writes it, from any earlier version's: before kinds, a run's kind was implied
    by its sections ("latent", "super_res", "unclip") and its network; before ``precision`` the trainer had
    ``amp`` (True: bf16 autocast where possible -> "auto", False -> "fp32")."""
    d = dict(d)
    if isinstance(d.get("train"), dict) and "amp" in d["train"] and "precision" not in d["train"]:
        train = dict(d["train"])
        train["precision"] = "auto" if train.pop("amp") else "fp32"
        d["train"] = train
    if "kind" in d:
        return d
    network = d.get("model", {}).get("kind", "unet") if isinstance(d.get("model"), dict) else "unet"
    old = {"latent": "latent", "super_res": "super-res", "unclip": "prior" if network == "prior" else "decoder"}
    sections = [k for k in old if d.get(k) is not None]
    d["kind"] = old[sections[0]] if sections else network if network in ("autoencoder", "clip") else "ddpm"
    for k in old:
        section = d.pop(k, None)
        if section is not None:
            d["stage"] = section
    return d


def read_config(ckpt: dict[str, Any], path: str | os.PathLike) -> Config:
    """The Config of a loaded checkpoint (migrated from older layouts), or one line saying why it cannot be read."""
    try:
        return Config.from_dict(migrate_config(ckpt["config"]))
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise CheckpointError(f"{path} holds a config this version of ddpm cannot read: "
                              f"{type(e).__name__}: {str(e)[:160]}") from None


def check_finite(weights: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Refuse weights with a NaN or an infinity: a network made of them draws noise or black images, silently."""
    for name, v in weights.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            bad = int((~torch.isfinite(v)).sum())
            raise CheckpointError(f"{path}: the weights {name} hold {bad} non-finite value(s) (NaN or inf); this "
                                  f"file cannot give images: use an earlier checkpoint or train again")


def _load_weights(model: nn.Module, weights: dict[str, torch.Tensor], path: Path) -> nn.Module:
    check_finite(weights, path)
    state = {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match the network its config describes "
                              f"({str(e).splitlines()[0][:200]})") from None
    return model


def load_run(run: str | os.PathLike, device: str | torch.device = "cpu", use_ema: bool = True,
             expect_preset: str | None = None) -> LoadedRun:
    """Load runs/<name> (its checkpoint.pt) or an exported .pt file for sampling/evaluation.

    use_ema=False loads the raw trained weights (only full checkpoints have them). expect_preset makes a
    checkpoint of another preset an error instead of a surprise.
    """
    path = checkpoint_path(run)
    ckpt = load_checkpoint(path)
    config = read_config(ckpt, path)
    if expect_preset is not None and config.preset != expect_preset:
        raise CheckpointError(f"{path} was trained with preset {config.preset!r}, not {expect_preset!r}")
    key = "ema" if use_ema else "model"
    if key not in ckpt:
        raise CheckpointError(f"{path} has no {key!r} weights (exported files hold only the EMA weights)")
    model = _load_weights(build_model(config), ckpt[key], path).to(device).eval()
    frozen = config.hook.load_frozen(config, path, device)
    return LoadedRun(model, build_diffusion(config, device), config, int(ckpt["step"]), path,
                     tuple(ckpt.get("label_names", ())), frozen)
