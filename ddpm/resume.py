"""What --resume checks before it continues a run folder, so that it never trains one run in another's folder and
never silently drops what a user wrote.

- The checkpoint is a training checkpoint (an exported model has only the EMA weights: nothing to continue).
- The folder's config.json describes the checkpoint's run. A config.json of another run (the checkpoint was
  replaced by another preset's) is refused, naming both. A config.json whose training settings were edited by
  hand is kept aside as config.json.edited, with a note saying what differs and that the checkpoint's settings
  are used (changes go through the flags, which --resume checks).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ddpm._files import write_text_atomic
from ddpm.checkpoints import CheckpointError, migrate_config
from ddpm.config import Config
from ddpm.runtime import rng_state, set_rng_state

__all__ = ["RESUME_KEYS", "check_config_json", "config_differences", "EDITED_SUFFIX", "training_state",
           "load_training_state"]

RESUME_KEYS = ("model", "optimizer", "scheduler", "rng", "loader", "ema_updates")  # a training checkpoint's
EDITED_SUFFIX = ".edited"
RUN_SECTIONS = ("preset", "kind", "data", "model", "diffusion", "stage")  # what makes it another run


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(field, value in a, value in b) for every field of two config dicts that differs, in a's order."""
    fa, fb = _flat(a), _flat(b)
    keys = list(fa) + [k for k in fb if k not in fa]
    return [(k, fa.get(k), fb.get(k)) for k in keys if fa.get(k) != fb.get(k)]


def _shown(diffs: list[tuple[str, Any, Any]], names: tuple[str, str], limit: int = 3) -> str:
    parts = [f"{k}: {str(x)[:30]} in {names[0]}, {str(y)[:30]} in {names[1]}" for k, x, y in diffs[:limit]]
    more = f" and {len(diffs) - limit} more" if len(diffs) > limit else ""
    return "; ".join(parts) + more


def check_config_json(path: str | os.PathLike, saved: Config, checkpoint: str | os.PathLike) -> list[str]:
    """Compare a run folder's config.json with the config of its checkpoint (``saved``) before --resume rewrites
    config.json. Raises CheckpointError when they describe different runs; keeps a hand-edited config.json aside
    (config.json.edited) and returns the notes to print. Nothing to say (same config, or no config.json): []."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        mine = Config.from_dict(migrate_config(json.loads(path.read_text()))).to_dict()
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError) as e:
        kept = _keep(path)
        return [f"{path} could not be read ({type(e).__name__}); --resume uses the settings of {checkpoint} and "
                f"writes config.json again; the unreadable file is kept as {kept}"]
    theirs = saved.to_dict()
    diffs = config_differences(mine, theirs)
    if not diffs:
        return []
    names = (path.name, Path(checkpoint).name)
    other_run = [d for d in diffs if d[0].split(".")[0] in RUN_SECTIONS]
    if other_run:
        raise CheckpointError(
            f"{path.parent}: {names[0]} (preset {mine.get('preset')!r}) and {names[1]} (preset "
            f"{theirs.get('preset')!r}) describe different runs ({_shown(other_run, names, 2)}); was the "
            f"checkpoint replaced by another run's? Put the right checkpoint back, or train it under a new --name")
    kept = _keep(path)
    return [f"{path} was edited ({_shown(diffs, names)}); --resume uses the checkpoint's settings (change them "
            f"with flags, e.g. --steps); your edited file is kept as {kept}"]


def _keep(path: Path) -> Path:
    kept = path.with_name(path.name + EDITED_SUFFIX)
    write_text_atomic(kept, path.read_text(errors="replace"))
    return kept


def training_state(trainer) -> dict[str, Any]:
    """What a training checkpoint holds: the weights, EMA, optimizer, schedule, every random state and cursor (one
    per process) and the importance sampler's history, so that a resumed run continues exactly."""
    return {
        "format": 1,
        "step": trainer.step,
        "config": trainer.config.to_dict(),
        "label_names": list(trainer.label_names),
        "model": trainer.model.state_dict(),
        "ema": trainer.ema.model.state_dict(),
        "ema_updates": trainer.ema.updates,
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "rng": trainer._gather(rng_state(trainer.device)),
        "loader": trainer._gather(trainer.loader.state_dict()),
        "caption_rng": trainer._gather(trainer.caption_gen.get_state()),
        "runlog": trainer.log.state_dict() if trainer.log is not None else None,
        "timesteps": trainer._gather(trainer.timesteps.state_dict()) if trainer.timesteps is not None else None,
    }


def load_training_state(trainer, ckpt: dict[str, Any]) -> None:
    """Put a checked training checkpoint's state back into the trainer (its rank's random states and cursor)."""
    trainer.model.load_state_dict(ckpt["model"])
    trainer.ema.model.load_state_dict(ckpt["ema"])
    trainer.ema.updates = int(ckpt["ema_updates"])
    trainer.optimizer.load_state_dict(ckpt["optimizer"])
    trainer.scheduler.load_state_dict(ckpt["scheduler"])
    trainer.step = trainer.saved_step = int(ckpt["step"])
    r = trainer.dist.rank
    set_rng_state(trainer.device, ckpt["rng"][r])
    trainer.loader.load_state_dict(ckpt["loader"][r])
    trainer.caption_gen.set_state(ckpt["caption_rng"][r].cpu())
    if trainer.log is not None and ckpt.get("runlog"):
        trainer.log.load_state_dict(ckpt["runlog"])
    if trainer.timesteps is not None:
        trainer.timesteps.load_state_dict(ckpt["timesteps"][r])
