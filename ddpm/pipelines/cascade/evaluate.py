"""How good the second stage of a cascade is on real digits.

    evaluate_super_res(refiner, test)     real test digits shrunk to 14x14 and refined, against bicubic upsampling
                                          and the originals: PSNR (per image, peak 1, then averaged), accuracy of
                                          the evaluation classifier, Frechet distance to the test set, and the
                                          share of background pixels left speckled

(The cascade behind its base, one augmentation level after another: ddpm.metrics.sweep.cascade_sweep.)

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
from ddpm.conditions import condition_for_labels
from ddpm.datasets import ImageDataset, area_downsample, load_dataset, to_float, to_uint8
from ddpm.pipelines.latent.evaluate import mean_psnr
from ddpm.metrics.classifier import classifier_features, conditional_accuracy, load_or_train_classifier
from ddpm.metrics.frechet import feature_statistics, frechet_distance, frechet_floors
from ddpm.pipelines.cascade.stage import Refiner, upsample

__all__ = ["evaluate_super_res", "refine_in_batches", "super_res_rows", "SampleJudge", "speckle"]


def refine_in_batches(refiner: Refiner, low: Tensor, cond: Any, *, seed: int, batch_size: int = 64,
                      progress: bool = False) -> Tensor:
    """uint8 refinements of low-res images (uint8 or floats in [-1, 1]) with their conditions, one generator."""
    device = refiner.run.diffusion.betas.device
    gen = torch.Generator(device).manual_seed(seed)
    low = to_float(low) if low.dtype == torch.uint8 else low
    out = []
    for lo in tqdm(range(0, len(low), batch_size), desc=f"refining {len(low)} images (aug {refiner.aug_level})",
                   leave=False, disable=not progress):
        idx = torch.arange(lo, min(len(low), lo + batch_size))
        c = select_condition(cond, idx)
        out.append(to_uint8(refiner(low[idx], c.to(device) if isinstance(c, Tensor) else c, gen)).cpu())
    return torch.cat(out)


class SampleJudge:
    """The evaluation classifier and the test set's feature statistics, loaded once for several sets of images."""

    def __init__(self, dataset: str, test: ImageDataset, root, classifier, n: int, seed: int, progress: bool):
        self.clf, _ = load_or_train_classifier(classifier, dataset, root=root, progress=progress)
        self.stats = feature_statistics(classifier_features(self.clf, test)[0])
        floors = frechet_floors(self.clf, load_dataset(dataset, "train", root=root), n, self.stats, seed)
        self.floor = sum(floors) / len(floors)

    def __call__(self, images: Tensor, labels: Tensor) -> dict[str, float]:
        features, logits = classifier_features(self.clf, images)
        fd = frechet_distance(*feature_statistics(features), *self.stats)
        return {"accuracy": conditional_accuracy(logits, labels)["accuracy"], "frechet": fd,
                "frechet_ratio": fd / self.floor}


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
              "sampler": refiner.sampler, "steps": refiner.steps, "guidance": refiner.guidance,
              "options": refiner.options,
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


def speckle(images: Tensor, low_res_upsampled: Tensor) -> float:
    """The share of background pixels, far from any stroke of the low-res input (below -0.95 in its bicubic
    upsampling), that a refinement made brighter than 10% gray (> -0.8): the faint noise a sampler can leave
    behind. 0 for real digits. Both arguments uint8 [N, C, H, W]."""
    background = to_float(low_res_upsampled) < -0.95
    return float(((to_float(images) > -0.8) & background).sum() / background.sum().clamp(min=1))


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
