"""Bits/dim and sample quality of a trained run: prints a table and writes the report as JSON.

Bits/dim of test images under the variational bound, with its terms (prior, decoder, KL by range of t).
A latent model's samples are decoded by its autoencoder before they are judged (it has no bits/dim). A kind of
run with a judgement of its own gets it (its pipeline folder's evaluate.py): an autoencoder its reconstructions,
a super-resolution model by refining shrunk test digits against bicubic upsampling, a CLIP, a prior or a decoder
theirs. The cascade as a whole: python -m ddpm cascade --evaluate; unCLIP: python -m ddpm unclip --evaluate.
For MNIST-like data, samples judged by a small classifier: conditional accuracy, and a Frechet distance of
its features beside the real-data floor (not the Inception FID of the literature). For CIFAR-10, Inception
FID when pytorch-fid and its weights are installed. The report goes to <run>/eval.json unless --out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ddpm._files import write_json
from ddpm.cli import common
from ddpm.metrics import evaluate_run, format_report, format_sweep, quality_sweep, report_path
from ddpm.viz import plot_quality_vs_calls

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_run_flag(p)
    p.add_argument("--n-samples", type=common.nonnegative_int, default=1000,
                   help="samples for the sample-quality metrics (0: skip; default 1000); for an autoencoder, the "
                        "test images it reconstructs (0: all)")
    common.add_sampler_flags(p, several=True)
    p.add_argument("--guidance", type=common.guidance_scale, default=None,
                   help="guidance scale (default: the run's train.guidance)")
    p.add_argument("--bpd-images", type=common.nonnegative_int, default=None,
                   help="test images for bits/dim (default 64; 0: skip; not in a sweep). The bound costs T network "
                        "evaluations per image (64 images x 1000 steps is as much work as sampling 64 images "
                        "with the ancestral sampler)")
    p.add_argument("--bpd-batch-size", type=common.positive_int, default=64,
                   help="(image, t) pairs per forward pass (default 64: on a CPU the cost per image grows "
                        "with the batch once activations leave the cache; use more on a GPU)")
    p.add_argument("--bpd-timesteps", type=common.positive_int, default=None,
                   help="evaluate only this many timesteps per image (t=1 plus one per stratum of t, "
                        "weighted): an unbiased estimate of the bound at a fraction of the cost "
                        "(default: all T)")
    p.add_argument("--sample-batch-size", type=common.positive_int, default=64,
                   help="images per sampling batch (default 64)")
    p.add_argument("--classifier", default=None, help="evaluation classifier file (default: "
                                                      "data/classifiers/<dataset>.pt, trained on first use)")
    p.add_argument("--out", default=None, help="JSON report (default: <run>/eval.json)")
    p.add_argument("--seed", type=common.nonnegative_int, default=0)
    common.add_device_flags(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args) -> int:
    run_path = common.resolve_run(args.run)
    if len(args.sampler) * len(args.steps or [None]) > 1:
        return _sweep(args, run_path)
    bpd_images = 64 if args.bpd_images is None else args.bpd_images
    out = common.check_output(args.out if args.out is not None else report_path(run_path), (".json",), "--out")
    device = common.setup_device(args)
    steps, options = common.sampler_flags(args, None, args.sampler[0], (args.steps or [None])[0])
    report = evaluate_run(run_path, n_samples=args.n_samples, sampler=args.sampler[0], steps=steps, options=options,
                          guidance=args.guidance, bpd_images=bpd_images, bpd_batch_size=args.bpd_batch_size,
                          bpd_timesteps=args.bpd_timesteps, sample_batch_size=args.sample_batch_size,
                          seed=args.seed, device=device, classifier=args.classifier, out=out,
                          progress=not args.no_progress)
    print(format_report(report))
    print(f"wrote {report['path']}")
    return 0


def _sweep(args, run_path: Path) -> int:
    """Several samplers and step counts: the table, a JSON file and the plot (no bits/dim)."""
    folder = run_path if run_path.is_dir() else Path(".")
    out = common.check_output(args.out if args.out is not None else folder / "eval_sweep.json", (".json",), "--out")
    png = common.check_output(folder / "samples" / "quality_vs_steps.png", (".png",), "the plot")
    if args.n_samples < 2:
        raise common.UsageError("a sweep needs --n-samples of at least 2")
    options = {"spacing": args.spacing, "threshold": args.threshold, "precision": args.precision}
    if args.eta is not None or args.variance is not None:
        raise common.UsageError("--eta and --variance are for one sampler; a sweep takes --spacing and --threshold")
    if args.bpd_images or args.bpd_timesteps is not None:
        raise common.UsageError("a sweep of samplers or steps measures samples only: drop --bpd-images and "
                                "--bpd-timesteps, or run evaluate without a list for bits/dim")
    device = common.setup_device(args)
    result = quality_sweep(run_path, args.sampler, args.steps or [None], n_samples=args.n_samples,
                           guidance=args.guidance, seed=args.seed, batch_size=args.sample_batch_size,
                           classifier=args.classifier, options=options, device=device, progress=not args.no_progress)
    write_json(out, result)
    plot_quality_vs_calls(result["rows"], title=f"{result['run']}: quality per model call", path=png)
    print(format_sweep(result))
    print(f"wrote {out} and {png}")
    return 0
