"""Training and sampling speed on this machine: images/s, model FLOP utilization, sampling time, memory.

Prints a table and writes the results as JSON (runs/bench.json unless --out); --quick takes seconds.
Timings on a shared machine are noisy: the load average is recorded with them.
"""

from __future__ import annotations

import argparse
import importlib

from ddpm._files import write_json
from ddpm.bench import format_bench, run_bench
from ddpm.bench.runs import check_bench_batches
from ddpm.cli.common import UsageError, add_device_flags, check_output, positive_int, setup_device
from ddpm.presets import BENCH, NOT_BENCHED, PRESETS

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
    if args.preset in NOT_BENCHED:
        raise UsageError(f"{args.preset} is {NOT_BENCHED[args.preset]}")
    out = check_output(args.out, (".json",), "--out")
    device = setup_device(args)
    check_bench_batches(args.preset, args.batch_size, args.sample_batch, device)
    side_by_side = importlib.import_module(BENCH[args.preset]) if args.preset in BENCH else None
    progress = lambda s: print(f"... {s}", flush=True)  # noqa: E731
    if side_by_side is not None:  # a system's preset, measured beside the pixel model it competes with
        result = side_by_side.compare(args.preset, device=device, batch_size=args.batch_size, n=args.sample_batch,
                                      repeats=1 if args.quick else 3,
                                      train_repeats=args.train_steps or (1 if args.quick else 5), progress=progress)
        text = side_by_side.format_comparison(result)
    else:
        result = run_bench(args.preset, batch_size=args.batch_size, sample_batch=args.sample_batch, device=device,
                           quick=args.quick, full=args.full, explore=args.explore, profile=args.profile,
                           train_steps=args.train_steps, sample_steps=args.sample_steps, progress=progress)
        text = format_bench(result)
    print(text)
    write_json(out, result)
    print(f"wrote {out}")
    return 0
