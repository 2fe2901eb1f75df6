"""Sample from a trained run (EMA weights) and write an image grid; optionally the reverse process as a GIF.

A cascade (python -m ddpm cascade) and unCLIP (python -m ddpm unclip) have commands of their own."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from ddpm._files import save_npz
from ddpm.checkpoints import CHECKPOINT_NAME
from ddpm.cli.common import (
    UsageError,
    add_device_flags,
    add_run_flag,
    add_sampler_flags,
    check_output,
    guidance_scale,
    load_image_run,
    nonnegative_int,
    positive_int,
    resolve_condition,
    sampler_flags,
    setup_device,
    vocabulary_text,
)
from ddpm.datasets import to_uint8
from ddpm.pipelines.base import Sampling
from ddpm.viz import decode_steps, reverse_trajectory, save_grid, save_reverse_animation

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_run_flag(p)
    p.add_argument("--n", type=positive_int, default=None, help="number of images (default: 8 per class, or 64)")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    add_sampler_flags(p, default=None, precision="auto",
                      default_text="the run's kind's: dpmpp-2m-sde, 25 steps, for a pixel model")
    p.add_argument("--guidance", type=guidance_scale,
                   help="classifier-free guidance scale s (1: none; default: the run's config, for the default "
                        "stochastic sampler half its extrapolation: 1.5 for 2)")
    p.add_argument("--class", dest="klass", help="class label (index or name, e.g. 7 or seven)")
    p.add_argument("--prompt", help='text prompt for text-conditioned runs, e.g. "a thick slanted seven"')
    p.add_argument("--vocabulary", action="store_true", help="print the words the run's text model knows, and exit")
    p.add_argument("--trajectory", help="also write the reverse process as an animated GIF to this path")
    p.add_argument("--out", help="output PNG grid, or .npz (the samples as uint8 arrays [N, C, H, W]: 'images', "
                                 "and 'labels' or 'prompts') (default: <run>/samples/sample_<sampler>_seed<seed>.png)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    add_device_flags(p)


def _outputs(args, loaded, sampler: str) -> tuple[Path, Path | None]:
    """The grid's and the GIF's paths, checked before any sampling."""
    # a run folder gets its samples/ sub-folder; an exported model file writes to ./samples/
    run_dir = loaded.path.parent if loaded.path.name == CHECKPOINT_NAME else Path(".")
    out = Path(args.out) if args.out else run_dir / "samples" / f"sample_{sampler}_seed{args.seed}.png"
    out = check_output(out, (".png", ".npz"), "--out")
    gif = check_output(args.trajectory, (".gif",), "--trajectory") if args.trajectory else None
    if gif is not None and gif.resolve() == out.resolve():
        raise UsageError(f"--trajectory and --out are the same file {out}")
    return out, gif


def run(args) -> int:
    device = setup_device(args)
    if args.out:
        check_output(args.out, (".png", ".npz"), "--out")  # before loading anything
    text = args.prompt is not None or args.vocabulary  # without --run: the text model (runs/mnist-text or shipped)
    loaded = load_image_run(args.run, device, use_ema=not args.no_ema, text=text)
    if args.vocabulary:
        print(vocabulary_text(loaded))
        return 0
    # the kind's sampler and guidance (ddpm.pipelines.base.Kind.sampling), or a sampler named here with its own
    default = loaded.config.hook.sampling(loaded.config) if args.sampler is None else Sampling(args.sampler)
    sampler = default.sampler
    out, gif = _outputs(args, loaded, sampler)
    if args.n is not None:
        loaded.check_batch(args.n)  # before the n conditions are made
    cond, n, nrow = resolve_condition(loaded, args.n, args.klass, args.prompt)
    if isinstance(cond, torch.Tensor):
        cond = cond.to(device)
    steps, options = sampler_flags(args, loaded.diffusion.T, sampler)
    if loaded.config.sampler_defaults.get("threshold") == "none" and args.threshold not in (None, "none"):
        print(f"note: --threshold {args.threshold} treats the predicted x_0 as pixels in [-1, 1]; this model's are "
              f"not (its default is none)", flush=True)
    if cond is None and args.guidance is not None:
        raise UsageError(f"{loaded.path} is an unconditional model: --guidance needs a conditional one")
    guidance = next(g for g in (args.guidance, default.guidance, loaded.config.train.guidance) if g is not None)
    sampling = default.override(sampler, steps, guidance, options)
    generator = torch.Generator(device).manual_seed(args.seed)
    if gif is not None:  # the same samples (same seed), keeping about 40 moments of the reverse process
        steps_kept = reverse_trajectory(loaded.model, loaded.diffusion, (n, *loaded.shape), cond,
                                        sampler=sampler, frames=40, steps=steps,
                                        guidance_scale=guidance if cond is not None else None, generator=generator,
                                        device=device, progress=True, **loaded.sampler_options(sampling.options))
        images = loaded.decode(steps_kept[-1].x_prev)
        if tuple(loaded.image_shape) != tuple(loaded.shape):  # decoded samples: the GIF shows decoded x_t, pred_x0
            steps_kept = decode_steps(steps_kept, loaded.decode)
    else:
        images = loaded.sample(cond, n, sampling, generator, progress=True)
    if out.suffix == ".npz":
        arrays = {"images": to_uint8(images)}
        if isinstance(cond, torch.Tensor):
            arrays["labels"] = cond.cpu()
        elif cond is not None:
            arrays["prompts"] = np.array(cond)
        path = save_npz(out, arrays)
    else:
        path = save_grid(images, out, nrow=nrow)
    print(f"wrote {n} samples ({sampler}, {steps} steps, guidance {guidance if cond is not None else 'n/a'}) "
          f"from step {loaded.step} of {loaded.path}: {path}")
    if gif is not None:
        written = save_reverse_animation(steps_kept, gif, nrow=nrow,
                                         show_pred_x0=tuple(loaded.image_shape) != tuple(loaded.shape))
        print(f"wrote the reverse process ({len(steps_kept)} frames): {written}")
    return 0
