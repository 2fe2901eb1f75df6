"""Training and sampling speed on this machine: images/s, model FLOP utilization, sampling time, memory.

Prints a table and writes the results as JSON (runs/bench.json unless --out); --quick takes seconds.
Timings on a shared machine are noisy: the load average is recorded with them.
"""

from __future__ import annotations

import argparse
import json

from ddpm._util import write_text_atomic
from ddpm.bench import (
    compare_cascade,
    compare_latent,
    format_bench,
    format_cascade_comparison,
    format_latent_comparison,
    run_bench,
)
from ddpm.cli.common import UsageError, add_device_flags, check_output, positive_int, setup_device
from ddpm.presets import PRESETS

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="mnist", help=f"one of: {', '.join(PRESETS)} (default: mnist; a latent preset "
                                                     "is measured side by side with the pixel mnist-text, and so is "
                                                     "either stage of the cascade, with both)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="training batch (default: the preset's)")
    p.add_argument("--sample-batch", type=positive_int, default=64, help="sampling batch (default 64)")
    add_device_flags(p)
    p.add_argument("--quick", action="store_true", help="a few seconds: short matmul, 2 steps of each")
    p.add_argument("--full", action="store_true",
                   help="also run 64 images x T ancestral steps and x 50 DDIM steps end to end (slow)")
    p.add_argument("--explore", action="store_true",
                   help="measure knobs: threads, channels_last, inference_mode, batched guidance, bf16")
    p.add_argument("--profile", action="store_true",
                   help="torch.profiler: where a training and a sampling step spend their time")
    p.add_argument("--train-steps", type=positive_int, default=None,
                   help="timed training steps (default 10; quick: 2)")
    p.add_argument("--sample-steps", type=positive_int, default=None,
                   help="timed steps per sampler (default 4; quick: 2)")
    p.add_argument("--out", default="runs/bench.json", help="JSON output (default: runs/bench.json)")


def run(args) -> int:
    if args.preset not in PRESETS:
        raise UsageError(f"unknown preset {args.preset!r}; known presets: {', '.join(PRESETS)}")
    if PRESETS[args.preset].model_kind == "autoencoder":
        raise UsageError(f"{args.preset} is an autoencoder, not a diffusion model; python -m ddpm bench --preset "
                         f"mnist-latent measures it beside the latent and the pixel models")
    out = check_output(args.out, (".json",), "--out")
    device = setup_device(args)
    preset = PRESETS[args.preset]
    side_by_side = None  # a later stage is measured beside the pixel text model
    if preset.super_res is not None or preset.data.image_size is not None:  # either stage of the cascade
        side_by_side = (compare_cascade, format_cascade_comparison, {})
    elif preset.latent is not None:
        side_by_side = (compare_latent, format_latent_comparison, {"latent_preset": args.preset})
    progress = lambda s: print(f"... {s}", flush=True)  # noqa: E731
    if side_by_side is not None:
        compare, fmt, names = side_by_side
        result = compare(**names, device=device, batch_size=args.batch_size, n=args.sample_batch,
                         repeats=1 if args.quick else 3, train_repeats=args.train_steps or (1 if args.quick else 5),
                         progress=progress)
        text = fmt(result)
    else:
        result = run_bench(args.preset, batch_size=args.batch_size, sample_batch=args.sample_batch, device=device,
                           quick=args.quick, full=args.full, explore=args.explore, profile=args.profile,
                           train_steps=args.train_steps, sample_steps=args.sample_steps, progress=progress)
        text = format_bench(result)
    print(text)
    write_text_atomic(out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0
