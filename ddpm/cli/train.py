"""Train a DDPM. Writes runs/<name>/ with config.json, log.csv, loss_by_t.csv, loss.png, samples/ and
checkpoint.pt. Ctrl-C stops at the end of the current step and saves; --resume continues exactly."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

import torch.distributed

from ddpm._util import set_threads
from ddpm.checkpoints import CHECKPOINT_NAME, load_checkpoint, read_config
from ddpm.cli.common import UsageError, add_device_flags, finite_float, nonnegative_int, positive_int
from ddpm.config import Config
from ddpm.optim import EMA, MAX_MINUTES
from ddpm.presets import PRESETS, get_preset, short_run
from ddpm.runtime import setup_distributed
from ddpm.schedules import SCHEDULES
from ddpm.training import Trainer

__all__ = ["add_arguments", "run", "train_config"]


def _positive_float(text: str) -> float:
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value}")
    return value


def _minutes(text: str) -> float:
    value = _positive_float(text)
    if value > MAX_MINUTES:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_MINUTES} minutes (a week; for a longer run give "
                                         f"--steps), got {value:g}")
    return value


def _decay(text: str) -> float:
    value = finite_float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a decay in [0, 1), got {value}")
    return value


def _gamma(text: str) -> float:
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a gamma >= 0 (5 is Hang et al.'s; 0: no weighting), got {value}")
    return value


def _fraction(text: str) -> float:
    value = finite_float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {value}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default=None, help=f"one of: {', '.join(PRESETS)} (default: mnist, or the run's own "
                                                  "with --resume)")
    p.add_argument("--name", help="run name: the folder runs/<name> (default: the preset name)")
    p.add_argument("--runs-dir", default="runs", help="parent folder of run folders (default: runs)")
    p.add_argument("--resume", action="store_true", help="continue runs/<name> from its checkpoint")
    p.add_argument("--steps", type=positive_int, help="total optimizer steps")
    p.add_argument("--minutes", type=_minutes, help="a time budget: time the first steps, then fix --steps so "
                                                           "that the run ends after about this many minutes here; "
                                                           "mnist then trains with the cosine schedule and min-SNR "
                                                           "weighting (measured better in short runs)")
    p.add_argument("--batch-size", type=positive_int, help="global batch size")
    p.add_argument("--lr", type=_positive_float, help="peak learning rate")
    p.add_argument("--cond-lr-scale", type=_fraction,
                   help="the text encoder's learning rate as a multiple of --lr (0 freezes it; default: the preset's)")
    p.add_argument("--precision", choices=("fp32", "bf16", "auto"),
                   help="bf16 autocast with fp32 weights: auto (default: where the device has bf16 units), bf16, fp32")
    p.add_argument("--cond", choices=("none", "class", "text"), help="conditioning (default: the preset's)")
    p.add_argument("--autoencoder", help="latent presets: the trained autoencoder (run folder or .pt) whose latents "
                                         "to model (default: the preset's, runs/mnist-autoencoder)")
    p.add_argument("--clip", help="unCLIP's prior and decoder presets: the trained CLIP (run folder or .pt) whose "
                                  "embeddings to model (default: the preset's, runs/mnist-clip)")
    p.add_argument("--aug-max", type=_fraction, help="super-resolution presets: the highest noise-augmentation "
                                                    "level of the low-res input in training, in [0, 1] (0: none, "
                                                    "the ablation; default: the preset's 0.5)")
    p.add_argument("--schedule", choices=tuple(SCHEDULES), help="the beta schedule (default: the preset's; cosine is "
                                                               "Improved DDPM's)")
    p.add_argument("--min-snr-gamma", type=_gamma, help="weight L_simple's terms by min(SNR_t, gamma) / SNR_t (Hang "
                                                        "et al. 2023; 5 is theirs; 0: none; default: the preset's)")
    p.add_argument("--ch", type=positive_int, help="a new run's base channel count of the network (the U-Net's ch: "
                                                   "level i has ch * ch_mult[i]; default: the preset's)")
    p.add_argument("--seed", type=nonnegative_int)
    p.add_argument("--sample-every", type=nonnegative_int,
                   help="write a sample grid every N steps (0: only at the end)")
    p.add_argument("--ckpt-every", type=nonnegative_int, help="save a checkpoint every N steps (0: only at the end)")
    p.add_argument("--ema-decay", type=_decay)
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    add_device_flags(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _overrides(args) -> dict:
    return {k: v for k, v in {
        "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
        "sample_every": args.sample_every, "ckpt_every": args.ckpt_every, "ema_decay": args.ema_decay,
        "compile": True if args.compile else None, "cond": args.cond,
        "cond_lr_scale": args.cond_lr_scale, "precision": args.precision,
        "autoencoder": args.autoencoder, "aug_max": args.aug_max, "clip": args.clip,
        "schedule": args.schedule, "min_snr_gamma": args.min_snr_gamma, "ch": args.ch}.items() if v is not None}


def _run_dir(args) -> Path:
    runs = Path(args.runs_dir)
    if runs.exists() and not runs.is_dir():
        raise UsageError(f"--runs-dir {runs} is a file, not a folder")
    name = args.name or args.preset or "mnist"
    if not name or Path(name).name != name or name in (".", ".."):
        raise UsageError(f"--name {name[:60]!r} must be a plain folder name (no '/')")
    return runs / name


def _config_values(overrides: dict) -> dict:
    """The overrides as config values: --min-snr-gamma 0 means no weighting (None in the config)."""
    if overrides.get("min_snr_gamma") == 0:
        return {**overrides, "min_snr_gamma": None}
    return overrides


def _short_run(args) -> dict:
    """What a new run with --minutes changes in its preset (ddpm.presets.SHORT_RUNS), the flags left as given."""
    return short_run(args.preset or "mnist", _overrides(args)) if args.minutes is not None and not args.resume else {}


def _has_field(config: Config, name: str) -> bool:
    """Whether the preset's own section (Config.stage) has this field (a latent preset's autoencoder)."""
    return config.stage is not None and name in {f.name for f in dataclasses.fields(config.stage)}


def train_config(args, run_dir: Path) -> Config:
    """The config to train: the preset with the flags; with --resume, the run's own config with the flags."""
    preset = PRESETS.get(args.preset or "mnist")
    for flag, field in (("--autoencoder", "autoencoder"), ("--clip", "clip"), ("--aug-max", "aug_max")):
        if getattr(args, field) is not None and (args.resume or preset is None or not _has_field(preset, field)):
            takers = ", ".join(name for name, c in PRESETS.items() if _has_field(c, field))
            raise UsageError(f"{flag} is for a new run of a preset that has it ({takers}); a resumed run keeps its own")
    if args.ch is not None and preset is not None and not hasattr(preset.model, "ch"):
        raise UsageError(f"--ch is the base channel count of a U-Net or an autoencoder; preset {args.preset!r}'s "
                         f"network ({type(preset.model).__name__}) has none")
    if not args.resume:
        return get_preset(args.preset or "mnist", **_config_values({**_short_run(args), **_overrides(args)}))
    saved = read_config(load_checkpoint(run_dir / CHECKPOINT_NAME), run_dir / CHECKPOINT_NAME)
    if args.preset is not None and args.preset != saved.preset:
        raise UsageError(f"{run_dir} was trained with preset {saved.preset!r}, not {args.preset!r}; drop --preset "
                         f"to resume it")
    return saved.replace(**_config_values(_overrides(args)))


def _recipe_notes(args, config: Config) -> list[str]:
    """What the flags changed that a user would not see: a time-budgeted run's recipe (SHORT_RUNS), and an
    --ema-decay that the EMA's warmup, d_k = min(decay, (1 + k) / (10 + k)), never lets act in this run."""
    notes = []
    recipe = _short_run(args)
    if recipe:
        uses = ", ".join(f"{field} {value:g}" if isinstance(value, float) else f"{field} {value}"
                         for field, value in recipe.items())
        flags = ", ".join(f"--{field.replace('_', '-')}" for field in recipe)
        notes.append(f"a time-budgeted run of {config.preset!r} uses {uses} (better in measured ten-minute runs: "
                     f"docs/cpu.md); {flags} set otherwise")
    tc = config.train
    binds = EMA.binds_from(tc.ema_decay)
    if args.ema_decay is not None and tc.ema_warmup and args.minutes is None and tc.steps <= binds:
        notes.append(f"the EMA reaches --ema-decay {tc.ema_decay:g} only after step {binds} (its warmup, "
                     f"(1 + k) / (10 + k), is below it until then): in {tc.steps} steps the warmup alone sets the "
                     f"average")
    return notes


def _check_load(args) -> None:
    """Warn when other processes already keep every core busy (1-minute load average above the core count):
    torch's threads then slow down 2-4x. A warning, not a silent switch to one thread: the 1-minute average
    also counts work that has just ended (docs/cpu.md has the measurements)."""
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if args.threads is None and cores > 1 and load > cores:
        print(f"note: this machine is busy (load {load:.1f} on {cores} cores); --threads 1 is often faster then",
              flush=True)


def run(args) -> int:
    if args.minutes is not None and (args.steps is not None or args.resume):
        raise UsageError("--minutes fixes the length of a new run: drop --steps, and do not use it with --resume "
                         "(a resumed run keeps its step count; --steps extends it)")
    run_dir = _run_dir(args)
    config = train_config(args, run_dir)
    dist, device = setup_distributed(dict(os.environ), args.device)
    set_threads(args.threads)
    trainer = Trainer(config, run_dir, device=device, resume=args.resume, dist=dist, progress=not args.no_progress)
    if dist.is_main:
        print(f"training preset {config.preset!r} on {device} -> {run_dir}"
              + (f" ({dist.world_size} processes)" if dist.enabled else "")
              + (f", resuming at step {trainer.step}" if args.resume else ""), flush=True)
        for change in trainer.changes:
            print(f"changed on resume: {change}", flush=True)
        for note in _recipe_notes(args, trainer.config):
            print(f"note: {note}", flush=True)
        for note in trainer.notes:
            print(f"note: {note}", flush=True)
    if dist.is_main:
        _check_load(args)
    summary = trainer.fit(minutes=args.minutes)
    if dist.is_main:
        state = "interrupted; checkpoint saved" if summary["interrupted"] else "done"
        print(f"{state}: step {summary['step']}/{trainer.config.train.steps}, {summary['steps_run']} steps in "
              f"{summary['wall_s']:.0f} s ({summary['steps_per_s']:.2f} steps/s), final loss "
              f"{summary['final_loss']:.4f}")
        if summary["budget"]:
            b = summary["budget"]
            print(f"time budget {b['minutes']:g} min: {b['s_per_step']:.3f} s/step measured, so {b['steps']} steps "
                  f"in all, warmup {b['warmup']} (stored in the config, so --resume keeps them)")
        print(f"checkpoint: {summary['checkpoint']}")
        if "samples" in summary:
            print(f"samples: {summary['samples']}")
        if summary["interrupted"]:
            print(f"continue: python -m ddpm train --name {run_dir.name} --runs-dir {run_dir.parent} --resume")
        else:  # what the run is for: the kind says
            hint = trainer.kind.next_steps(trainer.config, run_dir) or f"python -m ddpm sample --run {run_dir}"
            print(f"next: {hint}")
    if dist.enabled:
        torch.distributed.destroy_process_group()
    return 0
