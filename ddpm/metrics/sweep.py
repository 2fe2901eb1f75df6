"""Quality per model call: the same trained model sampled by several samplers at several step counts, each
set of samples judged like evaluate_run's (conditional accuracy, Frechet distance and its floor). And a
cascade's quality per augmentation level: the same base samples refined at each level (the cascade papers'
ablation), with the base samples upsampled bicubically as the row to beat.

    python -m ddpm evaluate --sampler ddim,dpmpp-2m --steps 5,10,15,20,50 --n-samples 500
    python -m ddpm evaluate --run runs/mnist-base14 --refine runs/mnist-sr28 --aug-level 0,0.1,0.3,0.5

Every row uses the same seed, so every sampler starts from the same x_T for each image; the number of
model calls is steps, times 2 with classifier-free guidance (a conditional and an unconditional forward).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from typing import Any

from ddpm.checkpoints import LoadedRun, load_run
from ddpm.conditions import balanced_labels, condition_for_labels, num_conditions
from ddpm.datasets import load_dataset
from ddpm.metrics.evaluate import judge_samples, sample_conditions
from ddpm.pipelines.cascade.evaluate import SampleJudge, refine_in_batches, speckle
from ddpm.pipelines import Refiner, bicubic_to, check_cascade

__all__ = ["quality_sweep", "format_sweep", "cascade_sweep", "format_cascade_sweep"]


def _row(judged: dict[str, Any]) -> dict[str, Any]:
    s, cm = judged["samples"], judged["classifier_metrics"]
    guided = s["guidance"] is not None and s["guidance"] != 1.0
    return {"sampler": s["sampler"], "steps": s["steps"], "model_calls": s["steps"] * (2 if guided else 1),
            "accuracy": cm.get("conditional_accuracy"), "frechet": cm.get("frechet_distance"),
            "floor": cm.get("frechet_floor"), "seconds": s["seconds"]}


def quality_sweep(run: str | os.PathLike | LoadedRun, samplers: Sequence[str], steps_list: Sequence[int], *,
                  n_samples: int = 500, guidance: float | None = None, seed: int = 0, batch_size: int = 64,
                  classifier: str | os.PathLike | None = None, options: dict[str, Any] | None = None,
                  device="cpu", data_root: str | os.PathLike | None = None, progress: bool = False) -> dict[str, Any]:
    """One row per (sampler, steps): accuracy, Frechet distance (and floor), model calls, seconds.

    options go to every sampler (spacing, threshold); guidance None means the run's train.guidance.
    """
    if n_samples < 2:
        raise ValueError(f"a sweep needs at least 2 samples per setting, got {n_samples}")
    start = time.perf_counter()
    loaded = run if isinstance(run, LoadedRun) else load_run(run, device=device)
    root = data_root if data_root is not None else loaded.config.data.root
    test = load_dataset(loaded.config.data.dataset, "test", root=root)
    guidance = guidance if guidance is not None else loaded.config.train.guidance
    rows = []
    for sampler in samplers:
        for steps in steps_list:
            judged = judge_samples(loaded, test, root, n_samples, sampler=sampler, steps=steps, guidance=guidance,
                                   seed=seed, batch_size=batch_size, classifier=classifier, options=options,
                                   progress=progress)
            rows.append(_row(judged))
    return {"run": str(loaded.path), "step": loaded.step, "n_samples": n_samples, "seed": seed,
            "guidance": guidance if loaded.cond != "none" else None, "options": dict(options or {}), "rows": rows,
            "seconds": round(time.perf_counter() - start, 1)}


def format_sweep(result: dict[str, Any]) -> str:
    """The sweep as a table: one line per sampler and step count."""
    lines = [f"{result['run']} (step {result['step']}): {result['n_samples']} samples per row, guidance "
             f"{result['guidance']}, options {result['options'] or 'default'}",
             f"{'sampler':10s} {'steps':>5s} {'calls':>5s} {'accuracy':>8s} {'Frechet':>8s} {'floor':>6s} "
             f"{'seconds':>7s}"]
    for r in result["rows"]:
        acc = f"{r['accuracy']:.4f}" if r["accuracy"] is not None else "-"
        fd = f"{r['frechet']:.2f}" if r["frechet"] is not None else "-"
        floor = f"{r['floor']:.2f}" if r["floor"] is not None else "-"
        lines.append(f"{r['sampler']:10s} {r['steps']:5d} {r['model_calls']:5d} {acc:>8s} {fd:>8s} {floor:>6s} "
                     f"{r['seconds']:7.1f}")
    return "\n".join(lines)


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
    return {"base": str(base.path), "refine": str(sr.path), "sr_aug_max": sr.config.super_res.aug_max, "n": n,
            "sampler": sampler, "steps": steps, "guidance": guidance, "refine_sampler": refiner.sampler,
            "refine_steps": refiner.steps, "refine_options": refiner.options, "frechet_floor": judge.floor,
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
