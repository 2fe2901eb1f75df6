"""Sample from a trained run (EMA weights) and write an image grid; optionally the reverse process as a GIF.

With --refine, a cascade: the base run's small samples and their refinements by a super-resolution run, side by
side; with --refine and --from-test, real test digits shrunk, refined, and as they were (ddpm.pipelines.cascade.cli).
With --unclip, text -> prior -> decoder; with --variations, a digit's CLIP embedding decoded again (ddpm.pipelines.unclip.cli)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ddpm.checkpoints import CHECKPOINT_NAME
from ddpm.cli.common import (
    UsageError,
    add_device_flags,
    add_run_flag,
    add_sampler_flags,
    check_output,
    finite_float,
    load_image_run,
    nonnegative_int,
    positive_int,
    resolve_condition,
    sampler_options,
    setup_device,
    vocabulary_text,
)
from ddpm.pipelines.cascade.cli import (
    DEFAULT_BASE_RUN,
    PRETRAINED_BASE,
    add_refine_flags,
    check_stages,
    load_refiner,
    resolve_stage,
)
from ddpm.pipelines.unclip.cli import add_unclip_flags, unclip_text, unclip_variations
from ddpm.conditions import condition_for_labels
from ddpm.datasets import area_downsample, load_dataset, to_float
from ddpm.samplers import sample
from ddpm.viz import decode_steps, reverse_trajectory, save_grid, save_panels, save_reverse_animation

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_run_flag(p)
    p.add_argument("--n", type=positive_int, default=None, help="number of images (default: 8 per class, or 64)")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    add_sampler_flags(p, default="dpmpp-2m", precision="auto")
    p.add_argument("--guidance", type=finite_float, help="classifier-free guidance scale s (1: none; default: "
                                                         "the run's config)")
    p.add_argument("--class", dest="klass", help="class label (index or name, e.g. 7 or seven)")
    p.add_argument("--prompt", help='text prompt for text-conditioned runs, e.g. "a thick slanted seven"')
    p.add_argument("--vocabulary", action="store_true", help="print the words the run's text model knows, and exit")
    p.add_argument("--trajectory", help="also write the reverse process as an animated GIF to this path")
    p.add_argument("--out", help="output PNG (default: <run>/samples/sample_<sampler>_seed<seed>.png)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    add_refine_flags(p)
    p.add_argument("--from-test", action="store_true", help="with --refine: refine --n real test digits (a random "
                                                             "set, by --seed) shrunk to the low resolution, beside "
                                                             "bicubic upsampling and the originals")
    add_unclip_flags(p)
    add_device_flags(p)


def _outputs(args, loaded, kind: str = "sample") -> tuple[Path, Path | None]:
    """The grid's and the GIF's paths, checked before any sampling."""
    # a run folder gets its samples/ sub-folder; an exported model file writes to ./samples/
    run_dir = loaded.path.parent if loaded.path.name == CHECKPOINT_NAME else Path(".")
    name = f"{kind}_seed{args.seed}.png" if kind == "refine_test" else f"{kind}_{args.sampler}_seed{args.seed}.png"
    out = Path(args.out) if args.out else run_dir / "samples" / name
    out = check_output(out, (".png",), "--out")
    gif = check_output(args.trajectory, (".gif",), "--trajectory") if args.trajectory else None
    if gif is not None and gif.resolve() == out.resolve():
        raise UsageError(f"--trajectory and --out are the same file {out}")
    return out, gif


def _check_cascade_flags(args) -> None:
    if args.refine is None:
        for flag, given in (("--from-test", args.from_test), ("--aug-level", args.aug_level is not None)):
            if given:
                raise UsageError(f"{flag} is for refining with a super-resolution model: add --refine [SR_RUN]")
        return
    if args.trajectory:
        raise UsageError("--trajectory records one model's reverse process; with --refine see notebook "
                         "10_cascade_and_refinement for the super-resolution stage's")
    if args.from_test and (args.run or args.prompt is not None or args.klass is not None or args.vocabulary):
        raise UsageError("--from-test refines real test digits with their own classes: drop --run, --prompt, "
                         "--class and --vocabulary")


def _refine_test_digits(args, device) -> int:
    """Real test digits shrunk, refined, and as they were, side by side."""
    _, options = sampler_options(args, None)
    refiner = load_refiner(args, device, options, args.aug_level)
    run = refiner.run
    out, _ = _outputs(args, run, "refine_test")
    test = load_dataset(run.config.data.dataset, "test", root=run.config.data.root)
    n = min(args.n or 64, len(test))
    pick = torch.randperm(len(test), generator=torch.Generator().manual_seed(args.seed))[:n]
    x = to_float(test.images[pick]).to(device)
    low = area_downsample(x, refiner.low_res)
    cond = condition_for_labels(run.cond, test.labels[pick], run.label_names, run.config.data.dataset)
    refined = refiner(low, cond.to(device) if isinstance(cond, torch.Tensor) else cond,
                      torch.Generator(device).manual_seed(args.seed))
    path = save_panels([low, refined, x], out, nrow=8, titles=("low-res", "refined", "original"))
    print(f"wrote {n} test digits shrunk to {refiner.low_res}x{refiner.low_res}, refined by {run.path} (aug level "
          f"{refiner.aug_level:g}), and the originals: {path}")
    return 0


def _unclip(args, device) -> int:
    if args.unclip and args.variations is not None:
        raise UsageError("--unclip samples from prompts and --variations from a digit: give one of them")
    for flag, given in (("--run", args.run), ("--refine", args.refine is not None), ("--trajectory", args.trajectory),
                        ("--vocabulary", args.vocabulary), ("--no-ema", args.no_ema)):
        if given:
            raise UsageError(f"{flag} is not for unCLIP, whose stages are --prior and --decoder: drop {flag}")
    if args.sampler != "dpmpp-2m":
        raise UsageError("--sampler is for one model; unCLIP's stages take --decoder-sampler and --prior-sampler")
    out_dir = Path("samples")
    if args.out:
        check_output(args.out, (".png",), "--out")
    return unclip_text(args, device, out_dir) if args.unclip else unclip_variations(args, device, out_dir)


def run(args) -> int:
    device = setup_device(args)
    if args.out:
        check_output(args.out, (".png",), "--out")  # before loading anything
    _check_cascade_flags(args)
    if args.unclip or args.variations is not None:
        return _unclip(args, device)
    for flag in ("decoder", "prior", "prior_sampler", "prior_steps", "prior_guidance", "decoder_sampler",
                 "decoder_steps"):
        if getattr(args, flag) is not None:
            raise UsageError(f"--{flag.replace('_', '-')} is for unCLIP: add --unclip (or --variations)")
    if args.from_test:
        return _refine_test_digits(args, device)
    text = args.prompt is not None or args.vocabulary  # without --run: the text model (runs/mnist-text or shipped)
    run_arg = args.run
    if args.refine is not None:  # a cascade: the base is runs/mnist-base14 or the shipped one
        run_arg = str(resolve_stage(args.run, DEFAULT_BASE_RUN, PRETRAINED_BASE, "mnist-base14"))
    loaded = load_image_run(run_arg, device, use_ema=not args.no_ema, text=text)
    if args.vocabulary:
        print(vocabulary_text(loaded))
        return 0
    out, gif = _outputs(args, loaded, "cascade" if args.refine is not None else "sample")
    cond, n, nrow = resolve_condition(loaded, args.n, args.klass, args.prompt)
    if isinstance(cond, torch.Tensor):
        cond = cond.to(device)
    steps, options = sampler_options(args, loaded.diffusion.T)
    refiner = load_refiner(args, device, options, args.aug_level) if args.refine is not None else None
    if refiner is not None:
        check_stages(loaded, refiner)
    if loaded.first_stage is not None and args.threshold not in (None, "none"):
        print(f"note: --threshold {args.threshold} treats the predicted x_0 as pixels in [-1, 1]; this model's are "
              f"latents (its default is none)", flush=True)
    guidance = args.guidance if args.guidance is not None else loaded.config.train.guidance
    if cond is None and args.guidance is not None:
        raise UsageError(f"{loaded.path} is an unconditional model: --guidance needs a conditional one")
    kwargs = dict(steps=steps, guidance_scale=guidance if cond is not None else None,
                  generator=torch.Generator(device).manual_seed(args.seed), device=device, progress=True,
                  **loaded.sampler_options(options))
    shape = (n, *loaded.shape)
    if gif is not None:  # the same samples (same seed), keeping about 40 moments of the reverse process
        steps_kept = reverse_trajectory(loaded.model, loaded.diffusion, shape, cond, sampler=args.sampler,
                                        frames=40, **kwargs)
        x0 = steps_kept[-1].x_prev
        if loaded.first_stage is not None:  # a latent run: the GIF shows the decoded x_t and predicted x_0
            steps_kept = decode_steps(steps_kept, loaded.decode)
    else:
        x0 = sample(loaded.model, loaded.diffusion, shape, cond, sampler=args.sampler, **kwargs)
    images = loaded.decode(x0)  # a latent run's samples are decoded
    if refiner is not None:  # the second stage, with the same conditions and the same generator
        refined = refiner(images, cond, kwargs["generator"])
        path = save_panels([images, refined], out, nrow=nrow, titles=("base", "refined"))
        print(f"wrote {n} {images.shape[-1]}x{images.shape[-1]} samples of {loaded.path} ({args.sampler}, {steps} "
              f"steps) and their refinements by {refiner.run.path} ({refiner.sampler}, {refiner.steps} steps, aug "
              f"level {refiner.aug_level:g}), side by side: {path}")
        return 0
    path = save_grid(images, out, nrow=nrow)
    print(f"wrote {n} samples ({args.sampler}, {steps} steps, guidance {guidance if cond is not None else 'n/a'}) "
          f"from step {loaded.step} of {loaded.path}: {path}")
    if gif is not None:
        written = save_reverse_animation(steps_kept, gif, nrow=nrow, show_pred_x0=loaded.first_stage is not None)
        print(f"wrote the reverse process ({len(steps_kept)} frames): {written}")
    return 0
