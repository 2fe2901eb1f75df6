"""The cascade's flags, shared by sample and evaluate: --refine (the super-resolution run) and --aug-level.

    python -m ddpm sample --refine --prompt "a thick seven"          # runs/mnist-base14 (or the shipped base),
                                                                     # refined by runs/mnist-sr28 (or the shipped one)
    python -m ddpm sample --refine runs/mnist-sr28 --from-test      # the super-resolution of real test digits
    python -m ddpm evaluate --run runs/mnist-base14 --refine runs/mnist-sr28 --aug-level 0,0.1,0.3,0.5
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ddpm.checkpoints import CHECKPOINT_NAME, CheckpointError, LoadedRun, load_run
from ddpm.cli.common import PRETRAINED, UsageError, finite_float, positive_int
from ddpm.pipelines import DEFAULT_AUG_LEVEL, Refiner, check_cascade, shared_options
from ddpm.pipelines.cascade.stage import REFINE_ETA, REFINE_SAMPLER, REFINE_STEPS
from ddpm.samplers import SAMPLERS

__all__ = ["add_refine_flags", "resolve_stage", "load_refiner", "DEFAULT_BASE_RUN", "DEFAULT_SR_RUN"]

DEFAULT_BASE_RUN, PRETRAINED_BASE = "runs/mnist-base14", PRETRAINED.with_name("mnist-base14.pt")
DEFAULT_SR_RUN, PRETRAINED_SR = "runs/mnist-sr28", PRETRAINED.with_name("mnist-sr28.pt")


def aug_level(text: str) -> float:
    """argparse type: an augmentation level in [0, 1]."""
    value = finite_float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"an augmentation level is a fraction of the forward process, in [0, 1]; "
                                         f"got {value}")
    return value


def aug_level_list(text: str) -> list[float]:
    """argparse type: comma-separated augmentation levels, e.g. 0,0.1,0.3,0.5."""
    return [aug_level(part) for part in text.split(",")]


def add_refine_flags(p: argparse.ArgumentParser, several: bool = False) -> None:
    """--refine [SR_RUN] and --aug-level (several=True: a comma-separated list, evaluate's ablation)."""
    p.add_argument("--refine", nargs="?", const="", default=None, metavar="SR_RUN",
                   help=f"refine with a super-resolution model: the cascade of --run (default {DEFAULT_BASE_RUN}, else "
                        f"the shipped base) and SR_RUN (default {DEFAULT_SR_RUN}, else the shipped one); --spacing, "
                        f"--threshold and --precision apply to both stages, --guidance too unless --refine-guidance")
    p.add_argument("--refine-sampler", choices=SAMPLERS, default=REFINE_SAMPLER,
                   help=f"the super-resolution stage's sampler (default {REFINE_SAMPLER}, with eta {REFINE_ETA:g}: "
                        f"stochastic steps, which leave no background speckle; docs/results.md, \"Cascade\")")
    p.add_argument("--refine-steps", type=positive_int, default=REFINE_STEPS,
                   help=f"the super-resolution stage's steps (default {REFINE_STEPS})")
    p.add_argument("--refine-guidance", type=finite_float, default=None,
                   help="the super-resolution stage's guidance scale (default: --guidance, else the SR run's own)")
    lists = " (a comma-separated list compares them on the same base samples)" if several else ""
    p.add_argument("--aug-level", type=aug_level_list if several else aug_level, default=None,
                   help=f"noise augmentation of the low-res input when refining, in [0, 1] (a fraction of the "
                        f"forward process; default {DEFAULT_AUG_LEVEL}){lists}")


def resolve_stage(run: str | None, default: str, pretrained: Path, preset: str) -> Path:
    """The run given, else the default run folder if it has a checkpoint, else the shipped file."""
    if run:
        return Path(run)
    if (Path(default) / CHECKPOINT_NAME).exists():
        return Path(default)
    if pretrained.exists():
        return pretrained
    raise UsageError(f"no {default}/{CHECKPOINT_NAME} and no shipped {pretrained.name}; train first: "
                     f"python -m ddpm train --preset {preset}")


def load_refiner(args, device, options: dict, level: float | None = None, run: LoadedRun | None = None) -> Refiner:
    """The Refiner of --refine (or of ``run``, an SR run already loaded) with --refine-sampler, --refine-steps,
    --guidance, the options both stages share and the augmentation level."""
    sr = run or load_run(resolve_stage(args.refine, DEFAULT_SR_RUN, PRETRAINED_SR, "mnist-sr28"), device=device)
    if args.refine_steps > sr.diffusion.T:
        raise UsageError(f"--refine-steps {args.refine_steps} is more than the SR model's T = {sr.diffusion.T}")
    try:
        guidance = args.refine_guidance if args.refine_guidance is not None else args.guidance
        return Refiner(sr, level if level is not None else DEFAULT_AUG_LEVEL, args.refine_sampler, args.refine_steps,
                       guidance, shared_options(options))
    except ValueError as e:
        raise UsageError(str(e)) from None


def check_stages(base: LoadedRun, refiner: Refiner) -> None:
    """The two runs make a cascade, or one line on why not."""
    try:
        check_cascade(base, refiner.run)
    except (ValueError, CheckpointError) as e:
        raise UsageError(str(e)) from None
