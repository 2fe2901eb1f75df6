"""Exported models: a run's EMA weights and config in a small file (what sample, evaluate and the notebooks load,
and what ships in data/pretrained), and the one check of where such a file may be written.

An exported model holds only "format", "step", "config", "ema" and "label_names" (ddpm.checkpoints). It may replace
an exported model, never a run's training checkpoint (which --resume needs) or a file of another kind.
"""

from __future__ import annotations

import os
from pathlib import Path

from ddpm.checkpoints import FORMAT, CheckpointError, checkpoint_path, load_checkpoint, read_config, save_atomic

__all__ = ["export_model", "check_model_output", "TRAINING_KEYS"]


TRAINING_KEYS = ("optimizer", "rng", "model")  # what a training checkpoint has and an exported model has not


def check_model_output(out: str | os.PathLike) -> Path:
    """An exported model may be written only where nothing is, or over an exported model (the same kind of file):
    never over a run's training checkpoint (what --resume needs) or any other file. One line when refused."""
    out = Path(out)
    if not out.exists():
        return out
    if out.is_dir():
        raise CheckpointError(f"{out} is a folder; give a file name ending in .pt")
    try:
        ckpt = load_checkpoint(out)
    except CheckpointError:
        raise CheckpointError(f"{out} exists and is not a model file ddpm exported; ddpm replaces only its own "
                              f"exported models: choose another --out or delete the file") from None
    if any(k in ckpt for k in TRAINING_KEYS):
        raise CheckpointError(f"{out} is a run's training checkpoint (raw weights, optimizer and RNG states: what "
                              f"--resume needs); writing over it would end the run: choose another --out, e.g. "
                              f"{out.parent / 'export.pt'}")
    return out



def export_model(run: str | os.PathLike, out: str | os.PathLike, half: bool = False,
                 frozen: str | os.PathLike | None = None, guidance: float | None = None) -> Path:
    """Write only the EMA weights and config of a run (for shipping a small pretrained model).

    frozen: for a run that builds on a frozen network (a latent run's autoencoder, an unCLIP stage's CLIP), the
    file the exported model should name from now on (e.g. the exported autoencoder beside it). Its weights must
    be the ones the run was trained with (same fingerprint). A file in the same folder as ``out`` is named by its
    file name alone, so the pair can move together. guidance: the scale the file samples with by default (its
    train.guidance; None keeps the run's), for a scale chosen by measurement after training.
    """
    path = checkpoint_path(run)
    check_model_output(out)
    ckpt = load_checkpoint(path)
    config = read_config(ckpt, path)
    if frozen is not None:
        hook = config.hook
        if hook.frozen_field is None:
            raise CheckpointError(f"{path} is a {config.kind!r} run: it builds on no frozen network (--autoencoder is "
                                  f"for latent runs, --clip for unCLIP's prior and decoder)")
        found = checkpoint_path(frozen)
        hook.load_frozen(config.replace(**{hook.frozen_field: str(found)}), None, "cpu")  # refuses other weights
        # beside the export: by its name alone (the pair moves together); elsewhere: an absolute path, which works
        # from any folder (a path relative to the folder the export was made in would not)
        named = found.name if found.resolve().parent == Path(out).resolve().parent else str(found.resolve())
        config = config.replace(**{hook.frozen_field: named})
    if guidance is not None:
        config = config.replace(guidance=guidance)
    weights = ckpt["ema"]
    if half:
        weights = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    return save_atomic({"format": FORMAT, "step": ckpt["step"], "config": config.to_dict(), "ema": weights,
                        "label_names": ckpt.get("label_names", [])}, out)
