"""python -m ddpm cascade: a base model's small samples refined by a super-resolution model, side by side.

    python -m ddpm cascade --prompt "a thick seven"      # runs/mnist-base14 (or the shipped base), refined by
                                                          # runs/mnist-sr28 (or the shipped one)
    python -m ddpm cascade --from-test                   # real test digits shrunk, refined, and as they were
    python -m ddpm cascade --evaluate --aug-level 0,0.1,0.3,0.5   # the cascade judged at each augmentation level
    python -m ddpm cascade --from-test --evaluate --aug-level 0,0.1   # the SR model alone on real test digits

--sampler, --steps, --guidance (and --spacing, --threshold, --precision) are the base's; the SR stage samples with
--sr-sampler and --sr-steps (default DDIM with eta 1, 15 steps: stochastic steps leave no background speckle,
docs/cascade.md), --sr-guidance (default: --guidance, else the SR run's own) and the base's shared options.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ddpm._files import write_json
from ddpm.checkpoints import find_run, load_run
from ddpm.cli.common import (
    UsageError,
    add_device_flags,
    add_sampler_flags,
    check_output,
    finite_float,
    guidance_scale,
    nonnegative_int,
    positive_int,
    resolve_condition,
    sampler_flags,
    setup_device,
)
from ddpm.conditions import condition_for_labels
from ddpm.datasets import area_downsample, load_dataset, to_float
from ddpm.metrics.evaluate import evaluate_run, format_report
from ddpm.pipelines.base import Sampling
from ddpm.pipelines.cascade.evaluate import cascade_sweep, evaluate_super_res, format_cascade_sweep, super_res_rows
from ddpm.pipelines.cascade.stage import DEFAULT_AUG_LEVEL, REFINE_SAMPLING, Refiner, check_cascade, shared_options
from ddpm.samplers import SAMPLERS
from ddpm.viz import save_panels

__all__ = ["add_arguments", "run", "load_refiner", "COMMAND"]

COMMAND = ("cascade", "a base model's samples refined by a super-resolution model (Imagen's cascade in miniature)")


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


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", default=None, help="the base run (default runs/mnist-base14, else the shipped one)")
    p.add_argument("--sr", default=None, help="the super-resolution run (default runs/mnist-sr28, else the shipped "
                                              "one)")
    p.add_argument("--n", type=positive_int, default=None, help="images (default: 8 per class, or 64; --evaluate: "
                                                                 "1000)")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    add_sampler_flags(p, default="dpmpp-2m", precision="auto")
    p.add_argument("--guidance", type=guidance_scale, help="the base's guidance scale (default: the run's own)")
    p.add_argument("--class", dest="klass", help="class label (index or name)")
    p.add_argument("--prompt", help='text prompt, e.g. "a thick seven"')
    p.add_argument("--sr-sampler", choices=SAMPLERS, default=None,
                   help=f"the SR stage's sampler (default {REFINE_SAMPLING.sampler} with eta "
                        f"{REFINE_SAMPLING.options['eta']:g})")
    p.add_argument("--sr-steps", type=positive_int, default=None,
                   help=f"the SR stage's steps (default {REFINE_SAMPLING.steps})")
    p.add_argument("--sr-guidance", type=guidance_scale, default=None,
                   help="the SR stage's guidance scale (default: --guidance, else the SR run's own)")
    p.add_argument("--aug-level", type=aug_level_list, default=None,
                   help=f"noise augmentation of the low-res input, in [0, 1] (a fraction of the forward process; "
                        f"default {DEFAULT_AUG_LEVEL}); with --evaluate a comma-separated list compares levels")
    p.add_argument("--from-test", action="store_true", help="refine --n real test digits (a random set, by --seed) "
                                                             "shrunk to the low resolution, beside the originals")
    p.add_argument("--evaluate", action="store_true", help="judge the cascade (accuracy, Frechet, speckle; with "
                                                            "--from-test the SR model alone against bicubic) "
                                                            "instead of drawing, and write a JSON report")
    p.add_argument("--out", help="output PNG, or with --evaluate JSON (default: samples/cascade_seed<seed>.png)")
    add_device_flags(p)


def load_refiner(args, device, options: dict, level: float) -> Refiner:
    """The Refiner of --sr with --sr-sampler, --sr-steps, --sr-guidance (else --guidance) and the base's shared
    options, at augmentation level ``level``."""
    sr = load_run(find_run(args.sr, "mnist-sr28"), device=device)
    if args.sr_steps is not None and args.sr_steps > sr.diffusion.T:
        raise UsageError(f"--sr-steps {args.sr_steps} is more than the SR model's T = {sr.diffusion.T}")
    guidance = args.sr_guidance if args.sr_guidance is not None else args.guidance
    sampling = REFINE_SAMPLING.override(args.sr_sampler, args.sr_steps, guidance, shared_options(options))
    try:
        return Refiner(sr, level, sampling)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _levels(args) -> list[float]:
    levels = args.aug_level or [DEFAULT_AUG_LEVEL]
    if len(levels) > 1 and not args.evaluate:
        raise UsageError("several --aug-level values are compared by --evaluate; give one level to draw")
    return levels


def run(args) -> int:
    device = setup_device(args)
    suffix = (".json",) if args.evaluate else (".png",)
    out = check_output(args.out or f"samples/cascade{'_eval' if args.evaluate else ''}_seed{args.seed}{suffix[0]}",
                       suffix, "--out")
    levels = _levels(args)
    if args.from_test:
        if args.base or args.prompt is not None or args.klass is not None:
            raise UsageError("--from-test refines real test digits with their own classes: drop --base, --prompt "
                             "and --class")
        if args.evaluate:
            return _evaluate_on_test_digits(args, device, out, levels)
        return _refine_test_digits(args, device, out, levels[0])
    base = load_run(find_run(args.base, "mnist-base14"), device=device)
    steps, options = sampler_flags(args, base.diffusion.T)
    refiner = load_refiner(args, device, options, levels[0])
    try:
        check_cascade(base, refiner.run)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.evaluate:
        return _evaluate(args, base, refiner, steps, options, levels, out, device)
    if args.n is not None:
        base.check_batch(args.n)  # before the n conditions are made
    cond, n, nrow = resolve_condition(base, args.n, args.klass, args.prompt)
    if isinstance(cond, torch.Tensor):
        cond = cond.to(device)
    generator = torch.Generator(device).manual_seed(args.seed)
    images = base.sample(cond, n, Sampling(args.sampler, steps, args.guidance, options), generator, progress=True)
    refined = refiner(images, cond, generator)  # the second stage, with the same conditions and generator
    path = save_panels([images, refined], out, nrow=nrow, titles=("base", "refined"))
    s = refiner.sampling
    print(f"wrote {n} {images.shape[-1]}x{images.shape[-1]} samples of {base.path} ({args.sampler}, {steps} steps) "
          f"and their refinements by {refiner.run.path} ({s.sampler}, {s.steps or 'default'} steps, aug level "
          f"{refiner.aug_level:g}), side by side: {path}")
    return 0


def _evaluate(args, base, refiner: Refiner, steps, options, levels, out: Path, device) -> int:
    n = args.n or 1000
    if len(levels) > 1:  # the same base samples refined at each level
        if n < 2:
            raise UsageError("an augmentation sweep needs --n of at least 2")
        result = cascade_sweep(base, refiner, levels, n=n, sampler=args.sampler, steps=steps, guidance=args.guidance,
                               options=options, seed=args.seed, progress=True)
        write_json(out, result)
        print(format_cascade_sweep(result))
    else:
        s = refiner.sampling
        stage = {"refine": str(refiner.run.path), "refine_step": refiner.run.step, "aug_level": refiner.aug_level,
                 "sampler": s.sampler, "steps": s.steps, "guidance": s.guidance, "options": s.options}
        result = evaluate_run(base, n_samples=n, sampler=args.sampler, steps=steps, guidance=args.guidance,
                              bpd_images=0, seed=args.seed, device=device, out=out, options=options, progress=True,
                              refine=refiner, extra={"cascade": stage, "stage_rows": [
                                  ("cascade", f"refined by {stage['refine']} (step {stage['refine_step']}; "
                                              f"{s.sampler}, {s.steps} steps), aug level {refiner.aug_level:g}")]})
        print(format_report(result))
    print(f"wrote {out}")
    return 0


def _evaluate_on_test_digits(args, device, out: Path, levels: list[float]) -> int:
    """--from-test --evaluate: the SR model alone on --n real test digits shrunk (default 1000), at each level,
    against bicubic upsampling (what evaluate --run SR_RUN reports at the default level)."""
    _, options = sampler_flags(args, None)
    refiner = load_refiner(args, device, options, levels[0])
    sr = refiner.run
    test = load_dataset(sr.config.data.dataset, "test", root=sr.config.data.root)
    report = {"run": str(sr.path), "preset": sr.config.preset, "step": sr.step, "seed": args.seed,
              "super_resolution": evaluate_super_res(refiner, test, sr.config.data.root, args.n or 1000,
                                                     levels=levels, seed=args.seed, progress=True)}
    write_json(out, report)
    rows = super_res_rows(report["super_resolution"])
    width = max(len(k) for k, _ in rows) + 2
    print("\n".join(f"{k:<{width}}{v}" for k, v in rows))
    print(f"wrote {out}")
    return 0


def _refine_test_digits(args, device, out: Path, level: float) -> int:
    """Real test digits shrunk, refined, and as they were, side by side."""
    _, options = sampler_flags(args, None)
    refiner = load_refiner(args, device, options, level)
    sr = refiner.run
    test = load_dataset(sr.config.data.dataset, "test", root=sr.config.data.root)
    n = min(args.n or 64, len(test))
    pick = torch.randperm(len(test), generator=torch.Generator().manual_seed(args.seed))[:n]
    x = to_float(test.images[pick]).to(device)
    low = area_downsample(x, refiner.low_res)
    cond = condition_for_labels(sr.cond, test.labels[pick], sr.label_names, sr.config.data.dataset)
    refined = refiner(low, cond.to(device) if isinstance(cond, torch.Tensor) else cond,
                      torch.Generator(device).manual_seed(args.seed))
    path = save_panels([low, refined, x], out, nrow=8, titles=("low-res", "refined", "original"))
    print(f"wrote {n} test digits shrunk to {refiner.low_res}x{refiner.low_res}, refined by {sr.path} (aug level "
          f"{refiner.aug_level:g}), and the originals: {path}")
    return 0
