"""Quality per model call: the same trained model sampled by several samplers at several step counts, each
set of samples judged like evaluate_run's (conditional accuracy, Frechet distance and its floor, speckle).

    python -m ddpm evaluate --sampler ddim,dpmpp-2m --steps 5,10,15,20,50 --n-samples 500

Every row uses the same seed, so every sampler starts from the same x_T for each image; the number of
model calls is steps, times 2 with classifier-free guidance (a conditional and an unconditional forward).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

from ddpm.checkpoints import LoadedRun, load_run
from ddpm.datasets import load_dataset
from ddpm.metrics.evaluate import judge_samples

__all__ = ["quality_sweep", "format_sweep"]


def _row(judged: dict[str, Any]) -> dict[str, Any]:
    s, cm = judged["samples"], judged["classifier_metrics"]
    guided = s["guidance"] is not None and s["guidance"] != 1.0
    return {"sampler": s["sampler"], "steps": s["steps"], "model_calls": s["steps"] * (2 if guided else 1),
            "accuracy": cm.get("conditional_accuracy"), "frechet": cm.get("frechet_distance"),
            "floor": cm.get("frechet_floor"), "speckled": judged["speckle"].get("share"), "seconds": s["seconds"]}


def quality_sweep(run: str | os.PathLike | LoadedRun, samplers: Sequence[str], steps_list: Sequence[int], *,
                  n_samples: int = 500, guidance: float | None = None, seed: int = 0, batch_size: int = 64,
                  classifier: str | os.PathLike | None = None, options: dict[str, Any] | None = None,
                  device="cpu", data_root: str | os.PathLike | None = None, progress: bool = False) -> dict[str, Any]:
    """One row per (sampler, steps): accuracy, Frechet distance (and floor), the share of speckled samples, model
    calls, seconds.

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
             f"{'sampler':12s} {'steps':>5s} {'calls':>5s} {'accuracy':>8s} {'Frechet':>8s} {'floor':>6s} "
             f"{'speckled':>8s} {'seconds':>7s}"]
    for r in result["rows"]:
        acc = f"{r['accuracy']:.4f}" if r["accuracy"] is not None else "-"
        fd = f"{r['frechet']:.2f}" if r["frechet"] is not None else "-"
        floor = f"{r['floor']:.2f}" if r["floor"] is not None else "-"
        speckled = f"{r['speckled']:.2%}" if r.get("speckled") is not None else "-"
        lines.append(f"{r['sampler']:12s} {r['steps']:5d} {r['model_calls']:5d} {acc:>8s} {fd:>8s} {floor:>6s} "
                     f"{speckled:>8s} {r['seconds']:7.1f}")
    return "\n".join(lines)
