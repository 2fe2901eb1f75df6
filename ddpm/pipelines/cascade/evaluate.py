"""How good the second stage of a cascade is on real digits.

    evaluate_super_res(refiner, test)     real test digits shrunk to 14x14 and refined, against bicubic upsampling
                                          and the originals: PSNR (per image, peak 1, then averaged), accuracy of
                                          the evaluation classifier, Frechet distance to the test set, and the
                                          share of background pixels left speckled

(The cascade behind its base, one augmentation level after another: cascade_sweep below.)

Conditions: each test digit's class prompt (or label) for the SR model; the base's balanced classes for the
cascade. Every number comes from uint8 images, quantized like saved ones.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ddpm._util import select_condition
from ddpm.checkpoints import LoadedRun
from ddpm.conditions import balanced_labels, condition_for_labels, num_conditions
from ddpm.datasets import ImageDataset, area_downsample, bicubic_to, load_dataset, to_float, to_uint8, upsample
from ddpm.metrics.evaluate import sample_conditions
from ddpm.metrics.judge import SampleJudge, mean_psnr, speckle
from ddpm.pipelines.cascade.stage import DEFAULT_AUG_LEVEL, REFINE_SAMPLING, Refiner, check_cascade, shared_options

__all__ = ["evaluate_super_res", "refine_in_batches", "super_res_rows", "cascade_sweep", "format_cascade_sweep",
           "evaluate_stage", "stage_rows"]


def refine_in_batches(refiner: Refiner, low: Tensor, cond: Any, *, seed: int, batch_size: int = 64,
                      progress: bool = False) -> Tensor:
    """uint8 refinements of low-res images (uint8 or floats in [-1, 1]) with their conditions, one generator."""
    device = refiner.run.diffusion.betas.device
    gen = torch.Generator(device).manual_seed(seed)
    low = to_float(low)
    out = []
    for lo in tqdm(range(0, len(low), batch_size), desc=f"refining {len(low)} images (aug {refiner.aug_level})",
                   leave=False, disable=not progress):
        idx = torch.arange(lo, min(len(low), lo + batch_size))
        c = select_condition(cond, idx)
        out.append(to_uint8(refiner(low[idx], c.to(device) if isinstance(c, Tensor) else c, gen)).cpu())
    return torch.cat(out)


def evaluate_super_res(refiner: Refiner, test: ImageDataset, root=None, n: int = 1000, *,
                       levels: Sequence[float] | None = None, classifier=None, seed: int = 0, batch_size: int = 64,
                       progress: bool = False) -> dict[str, Any]:
    """The report's "super_resolution" entry: n test digits (a seeded subset) shrunk and refined at each level
    (default: the refiner's), against bicubic upsampling of the same low-res digits and the originals."""
    run = refiner.run
    pick = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    images, labels = test.images[pick], test.labels[pick]
    low = area_downsample(to_float(images), refiner.low_res)
    cond = condition_for_labels(run.cond, labels, run.label_names, run.config.data.dataset)
    judge = SampleJudge(run.config.data.dataset, test, root, classifier, len(images), seed, progress)
    bicubic = to_uint8(upsample(low, images.shape[-1]))
    report = {"n": len(images), "low_res": refiner.low_res, "frechet_floor": judge.floor,
              "sampler": refiner.sampling.sampler, "steps": refiner.sampling.steps,
              "guidance": refiner.sampling.guidance, "options": refiner.sampling.options,
              "originals": judge(images, labels),
              "bicubic": {"psnr": mean_psnr(bicubic, images), **judge(bicubic, labels)},
              "originals_speckle": speckle(images, bicubic), "refined": []}
    for level in levels if levels is not None else [refiner.aug_level]:
        t0 = time.perf_counter()
        at = dataclasses.replace(refiner, aug_level=level)
        refined = refine_in_batches(at, low, cond, seed=seed, batch_size=batch_size, progress=progress)
        report["refined"].append({"aug_level": level, "psnr": mean_psnr(refined, images), **judge(refined, labels),
                                  "speckle": speckle(refined, bicubic), "seconds": round(time.perf_counter() - t0, 1)})
    return report


def super_res_rows(report: dict[str, Any] | None) -> list[tuple[str, str]]:
    """Rows of the evaluate table for a super-resolution run."""
    if not report:
        return []
    size = report["low_res"]
    rows = [("super-resolution", f"{report['n']} test digits shrunk to {size}x{size} (area) and refined; "
                                 f"Frechet floor {report['frechet_floor']:.3f}")]
    o, b = report["originals"], report["bicubic"]
    rows.append(("  originals", f"accuracy {o['accuracy']:.4f}, Frechet {o['frechet']:.3f}"))
    rows.append(("  bicubic", f"PSNR {b['psnr']:.2f} dB, accuracy {b['accuracy']:.4f}, Frechet {b['frechet']:.3f}"))
    for r in report["refined"]:
        rows.append((f"  refined, aug level {r['aug_level']:g}", f"PSNR {r['psnr']:.2f} dB, accuracy "
                                                                f"{r['accuracy']:.4f}, Frechet {r['frechet']:.3f}, "
                                                                f"speckle {r['speckle']:.2%} ({r['seconds']:.0f} s)"))
    return rows


def cascade_sweep(base: LoadedRun, refiner: Refiner, levels: Sequence[float], n: int = 500, *,
                  sampler: str = "dpmpp-2m", steps: int | None = None, guidance: float | None = None,
                  options: dict[str, Any] | None = None, classifier=None, root=None, seed: int = 0,
                  batch_size: int = 64, progress: bool = False) -> dict[str, Any]:
    """The same n base samples (balanced classes; sampler, steps, guidance and options of the base) refined by
    ``refiner`` at each augmentation level, judged alike; plus the base's samples upsampled bicubically."""
    sr = refiner.run
    check_cascade(base, sr)
    guidance = guidance if guidance is not None else base.config.train.guidance
    classes = num_conditions(base.cond, base.config.model.num_classes, base.label_names)
    labels = balanced_labels(n, classes)
    cond = condition_for_labels(base.cond, labels, base.label_names, base.config.data.dataset)
    t0 = time.perf_counter()
    low = sample_conditions(base, cond, n, sampler=sampler, steps=steps, guidance=guidance, seed=seed,
                            batch_size=batch_size, options=options, progress=progress)
    base_seconds = time.perf_counter() - t0
    dataset = base.config.data.dataset
    test = load_dataset(dataset, "test", root=root)
    judge = SampleJudge(dataset, test, root, classifier, n, seed, progress)
    upsampled = bicubic_to(low, test.image_size)
    rows = [{"aug_level": "bicubic", **judge(upsampled, labels), "speckle": speckle(upsampled, upsampled),
             "seconds": 0.0}]
    for level in levels:
        t0 = time.perf_counter()
        refined = refine_in_batches(dataclasses.replace(refiner, aug_level=level), low, cond, seed=seed + 1,
                                    batch_size=batch_size, progress=progress)
        rows.append({"aug_level": level, **judge(refined, labels), "speckle": speckle(refined, upsampled),
                     "seconds": round(time.perf_counter() - t0, 1)})
    return {"base": str(base.path), "refine": str(sr.path), "sr_aug_max": sr.config.stage.aug_max, "n": n,
            "sampler": sampler, "steps": steps, "guidance": guidance, "refine_sampler": refiner.sampling.sampler,
            "refine_steps": refiner.sampling.steps, "refine_options": refiner.sampling.options,
            "frechet_floor": judge.floor,
            "base_seconds": round(base_seconds, 1), "rows": rows}


def format_cascade_sweep(result: dict[str, Any]) -> str:
    """The sweep as a table: one row per augmentation level."""
    lines = [f"cascade {result['base']} -> {result['refine']} (trained with aug_max {result['sr_aug_max']:g}): "
             f"{result['n']} base samples ({result['base_seconds']:.0f} s), Frechet floor "
             f"{result['frechet_floor']:.3f}",
             f"{'aug level':>10}  {'accuracy':>8}  {'Frechet':>8}  {'x floor':>7}  {'speckle':>7}  {'seconds':>7}"]
    for r in result["rows"]:
        level = r["aug_level"] if isinstance(r["aug_level"], str) else f"{r['aug_level']:g}"
        lines.append(f"{level:>10}  {r['accuracy']:8.4f}  {r['frechet']:8.3f}  {r['frechet_ratio']:6.2f}x  "
                     f"{r['speckle']:7.2%}  {r['seconds']:7.1f}")
    return "\n".join(lines)


def evaluate_stage(loaded: LoadedRun, test, root, *, n_samples: int, classifier, seed: int, batch_size: int,
                   progress: bool, guidance: float | None, options: dict[str, Any], **_) -> dict[str, Any]:
    """evaluate --run on a super-resolution run: real test digits shrunk and refined at the default level, sampled
    as the cascade samples its SR stage (DDIM, eta 1) with the options both stages share."""
    sampling = REFINE_SAMPLING.override(guidance=guidance, options=shared_options(options))
    refiner = Refiner(loaded, DEFAULT_AUG_LEVEL, sampling)
    return {"super_resolution": evaluate_super_res(refiner, test, root, n_samples or 1000, classifier=classifier,
                                                   seed=seed, batch_size=batch_size, progress=progress)}


def stage_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    return super_res_rows(report.get("super_resolution"))
