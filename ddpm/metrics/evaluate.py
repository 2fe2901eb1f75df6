"""Evaluate a trained run: bits/dim of test images, then samples judged by the evaluation classifier.

    report = evaluate_run("runs/mnist")    # writes runs/mnist/eval.json
    print(format_report(report))
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ddpm._files import write_json
from ddpm._util import select_condition
from ddpm.checkpoints import CHECKPOINT_NAME, LoadedRun, checkpoint_path, load_run
from ddpm.conditions import balanced_labels, condition_for_labels, num_conditions
from ddpm.datasets import ImageDataset, bicubic_to, load_dataset, mnist_edges, shrink, to_float, to_uint8
from ddpm.diffusion import GaussianDiffusion
from ddpm.likelihood import estimate_bpd
from ddpm.metrics.attributes import adherence_plan, adherence_rows, adherence_supported, score_adherence
from ddpm.metrics.classifier import (
    CLASSIFIER_DATASETS,
    classifier_features,
    conditional_accuracy,
    load_or_train_classifier,
)
from ddpm.metrics.frechet import feature_statistics, frechet_distance, frechet_floors, inception_fid
from ddpm.metrics.judge import speckle_report
from ddpm.pipelines.base import kind
from ddpm.samplers import SAMPLERS, default_steps, sample

__all__ = ["bits_per_dim_dataset", "generate_samples", "sample_conditions", "evaluate_run", "report_path",
           "format_report", "attribute_adherence", "FRECHET_NOTE"]

FRECHET_NOTE = ("Frechet distance between features of this project's small classifier (penultimate layer); "
                "NOT the Inception FID of the literature and not comparable with published FID numbers")


# ------------------------------------------------------------------ bits/dim
def bits_per_dim_dataset(model, diffusion: GaussianDiffusion, dataset: ImageDataset | Tensor,
                         n: int | None = 64, batch_size: int = 64, cond: Any = None, *,
                         timesteps: int | None = None, seed: int = 0, variance: str | None = None,
                         clip_denoised: bool = True, progress: bool = False) -> dict[str, Any]:
    r"""The variational bound (Ho et al. Eq. 5) on -log2 p(x0) per dimension, over n images of a dataset.

    ``ddpm.likelihood.estimate_bpd`` on a seeded subset: the (image, t) pairs are packed into forward
    passes of ``batch_size``, so the cost is n * T / batch_size forward passes whatever n is, and the
    result does not depend on batch_size. With n = all images and timesteps = None it equals
    ``ddpm.likelihood.bits_per_dim(model, diffusion, x0, generator=torch.Generator().manual_seed(seed))``.

    Args:
        model: callable model(x_t, t, cond) (an nn.Module is put in eval mode meanwhile: no condition dropout).
        dataset: an ImageDataset, uint8 images [N, C, H, W], or floats in [-1, 1].
        n: how many images (a random subset, seeded ``seed``; None or >= N: all of them).
        cond: None (the null condition: the unconditional bound), "labels" (the dataset's labels: the bound
            on -log p(x0 | y)), or one condition per image (tensor [N] or list of N prompts).
        timesteps: None for all T; k < T for a stratified estimate of the sum over t.
        variance: reverse-process variance, "fixed_large", "fixed_small" or "learned_range"; None: the model's
            learned one if it has one, else "fixed_large" (as in bits_per_dim).

    Returns the dict of ``estimate_bpd``: bpd, bpd_stderr, prior, decoder, kl, kl_by_range, per_t, ...
    """
    x0, cond = _evaluation_set(dataset, cond, n, seed)
    device = diffusion.betas.device
    cond = cond.to(device) if isinstance(cond, Tensor) else cond
    return estimate_bpd(model, diffusion, x0.to(device), cond, timesteps=timesteps, seed=seed,
                        batch_size=batch_size, variance=variance, clip_denoised=clip_denoised, progress=progress)


def _evaluation_set(dataset: ImageDataset | Tensor, cond: Any, n: int | None, seed: int) -> tuple[Tensor, Any]:
    """(images float32 in [-1, 1], their conditions) of the dataset, or of a random subset of n of them."""
    images = dataset.images if isinstance(dataset, ImageDataset) else dataset
    x = to_float(images)
    if cond == "labels":
        cond = dataset.labels if isinstance(dataset, ImageDataset) else None
        if cond is None:
            raise ValueError("cond='labels' needs an ImageDataset with labels")
    elif isinstance(cond, str):
        raise ValueError(f"cond must be None, 'labels', a tensor or a list of prompts, got {cond!r}")
    if cond is not None and len(cond) != len(x):
        raise ValueError(f"got {len(cond)} conditions for {len(x)} images")
    if len(x) == 0:
        raise ValueError("no images to evaluate")
    if n is not None and n < 1:
        raise ValueError(f"n must be positive, got {n}")
    if n is None or n >= len(x):
        return x, cond
    pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return x[pick], select_condition(cond, pick)


# ------------------------------------------------------------------ samples
def generate_samples(loaded: LoadedRun, n: int, *, sampler: str = "ddim", steps: int | None = 50,
                     guidance: float | None = None, seed: int = 0, batch_size: int = 64,
                     options: dict[str, Any] | None = None, progress: bool = False,
                     refine: Callable | None = None) -> tuple[Tensor, Tensor | None, Any]:
    """n images from a run, class-balanced (0, 1, ..., K-1, 0, 1, ...) for conditional models.

    steps None: the sampler's default (ddpm.samplers.default_steps); options go to the sampler (spacing,
    threshold, eta, variance).

    Returns (uint8 images [n, C, H, W] (quantized like saved images), labels [n] or None, conditions).
    """
    if n < 1 or batch_size < 1:
        raise ValueError(f"n and batch_size must be positive, got {n}, {batch_size}")
    classes = num_conditions(loaded.cond, loaded.config.model.num_classes, loaded.label_names)
    labels = balanced_labels(n, classes) if classes else None
    cond = None if labels is None else condition_for_labels(loaded.cond, labels, loaded.label_names,
                                                            loaded.config.data.dataset)
    images = sample_conditions(loaded, cond, n, sampler=sampler, steps=steps, guidance=guidance, seed=seed,
                               batch_size=batch_size, options=options, progress=progress, refine=refine)
    return images, labels, cond


def sample_conditions(loaded: LoadedRun, cond: Any, n: int, *, sampler: str = "ddim", steps: int | None = 50,
                      guidance: float | None = None, seed: int = 0, batch_size: int = 64,
                      options: dict[str, Any] | None = None, progress: bool = False,
                      refine: Callable | None = None) -> Tensor:
    """n images for the conditions ``cond`` (a tensor [n], n prompts, or None), in batches, one generator
    seeded ``seed`` for all: uint8 [n, C, H, W] (a latent run's samples decoded by its autoencoder; with
    ``refine(images, cond, generator)``, a later stage applied to each batch: a cascade's super-resolution)."""
    device = loaded.diffusion.betas.device
    steps = steps if steps is not None else default_steps(sampler, loaded.diffusion.T)
    gen = torch.Generator(device).manual_seed(seed)
    out = []
    for lo in tqdm(range(0, n, batch_size), desc=f"sampling {n} images ({sampler}, {steps} steps)", leave=False,
                   disable=not progress):
        idx = torch.arange(lo, min(n, lo + batch_size))
        c = select_condition(cond, idx)
        c = c.to(device) if isinstance(c, Tensor) else c
        x = sample(loaded.model, loaded.diffusion, (len(idx), *loaded.shape), c, sampler=sampler, steps=steps,
                   guidance_scale=guidance if c is not None else None, generator=gen, device=device,
                   **loaded.sampler_options(options))
        x = loaded.decode(x)  # a latent run's samples are decoded
        out.append(to_uint8(refine(x, c, gen) if refine is not None else x).cpu())
    return torch.cat(out)


def attribute_adherence(loaded: LoadedRun, n: int, root, *, classifier=None,
                        baseline: tuple[Tensor, Tensor] | None = None, **sampling) -> dict[str, Any]:
    """Samples for the grammar's attribute prompts, scored by ddpm.metrics.attributes (the report's
    "attribute_adherence"; {"available": False, "message"} for models that have no style words). ``baseline``:
    (images, labels) sampled with the plain class prompts, for the share each word would get without being
    said; ``sampling``: the keyword arguments of sample_conditions."""
    m = loaded.config.model
    why = adherence_supported(loaded.cond, loaded.config.data.dataset, getattr(m, "vocab", ()),
                              getattr(m, "max_prompt_len", 0))
    if why is not None:
        return {"available": False, "message": why}
    plan = adherence_plan(n)
    # a cascade's base alone: its 14x14 samples upsampled to the 28x28 digits the style measures are made for
    images = bicubic_to(sample_conditions(loaded, plan.prompts, len(plan.prompts), **sampling), 28)
    clf, _ = load_or_train_classifier(classifier, loaded.config.data.dataset, root=root)
    predicted = classifier_features(clf, images)[1].argmax(dim=1)
    return score_adherence(images, plan, mnist_edges(root), predicted=predicted, baseline=baseline)


# ------------------------------------------------------------------ a whole run
def report_path(run: str | os.PathLike) -> Path:
    """Where evaluate_run writes by default: <run_dir>/eval.json for a run folder (or its checkpoint),
    <name>.eval.json next to an exported <name>.pt."""
    path = checkpoint_path(run)
    return path.parent / "eval.json" if path.name == CHECKPOINT_NAME else path.with_suffix(".eval.json")


def evaluate_run(run: str | os.PathLike | LoadedRun, *, n_samples: int = 1000, sampler: str = "ddim",
                 steps: int | None = 50, guidance: float | None = None, bpd_images: int = 64,
                 bpd_batch_size: int = 64, bpd_timesteps: int | None = None, sample_batch_size: int = 64,
                 seed: int = 0, device="cpu", classifier: str | os.PathLike | None = None,
                 data_root: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
                 options: dict[str, Any] | None = None, progress: bool = False, refine: Callable | None = None,
                 extra: dict[str, Any] | None = None, stage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate a trained run and write the report as JSON (default ``report_path``: <run_dir>/eval.json).

    bits/dim of ``bpd_images`` test images (0 to skip), with the null condition (the unconditional bound);
    ``n_samples`` samples (0 to skip) judged by the evaluation classifier (MNIST-like data: conditional
    accuracy, Frechet distance and its real-data floor) or by Inception FID (CIFAR-10, when available); for a
    text model of digits, as many samples again for the attribute prompts ("attribute_adherence").
    guidance None means the run's config (train.guidance); options go to the sampler (see generate_samples).
    A kind with a judgement of its own (Kind.evaluation: an autoencoder, a super-resolution model, the stages of
    unCLIP) gets that instead. ``refine``: a later stage every batch of samples goes through (a cascade's
    super-resolution, ddpm.pipelines.cascade), judged as the finished images; ``extra``: entries added to the
    report (what that stage was); ``stage_options``: keyword arguments for the kind's own evaluation (an unCLIP
    decoder's prior and how each stage samples). Returns the report dict (and its "path").
    """
    start = time.perf_counter()
    _check_settings(n_samples, bpd_images, bpd_timesteps, sampler)
    loaded = run if isinstance(run, LoadedRun) else load_run(run, device=device)
    if loaded.config.data.dataset == "toy2d":
        raise ValueError(f"{loaded.path} is a 2D toy model; evaluate works on image models")
    root = data_root if data_root is not None else loaded.config.data.root
    report = _header(loaded, seed)
    test = load_dataset(loaded.config.data.dataset, "test", root=root)
    report["bits_per_dim"] = None
    hook = loaded.config.hook
    if hook.evaluation is not None:  # the kind's own judgement (ddpm/pipelines/<system>/evaluate.py)
        report.update(importlib.import_module(hook.evaluation).evaluate_stage(
            loaded, test, root, n_samples=n_samples, classifier=classifier, seed=seed, batch_size=sample_batch_size,
            progress=progress, sampler=sampler, steps=steps, guidance=guidance, options=options or {}, device=device,
            **(stage_options or {})))
        return _write(report, out, loaded, start)
    report.update(extra or {})
    if tuple(loaded.image_shape) != tuple(loaded.shape):  # the samples are decoded: a latent run's
        report["bits_per_dim_note"] = ("no bits/dim for a latent model: its bound is on latents, not on the "
                                       "pixels' 8-bit values")
        bpd_images = 0
    if bpd_images:
        size = loaded.config.data.image_size  # a cascade's base: the bound on test digits shrunk like its data
        bpd = bits_per_dim_dataset(loaded.model, loaded.diffusion, shrink(test, size) if size else test,
                                   n=bpd_images, batch_size=bpd_batch_size, timesteps=bpd_timesteps, seed=seed,
                                   progress=progress)
        bpd["condition"] = "null (unconditional bound)" if loaded.cond != "none" else "none"
        report["bits_per_dim"] = bpd
    report["samples"], plain = None, []
    if n_samples:
        guidance = guidance if guidance is not None else loaded.config.train.guidance
        report.update(judge_samples(loaded, test, root, n_samples, sampler=sampler, steps=steps, guidance=guidance,
                                    seed=seed, batch_size=sample_batch_size, classifier=classifier, options=options,
                                    progress=progress, samples_out=plain, refine=refine))
        if loaded.cond == "text":
            report["attribute_adherence"] = attribute_adherence(
                loaded, n_samples, root, classifier=classifier, baseline=plain[0], sampler=sampler, steps=steps,
                guidance=guidance, seed=seed + 1, batch_size=sample_batch_size, options=options, progress=progress,
                refine=refine)
    return _write(report, out, loaded, start)


def _write(report: dict[str, Any], out, loaded: LoadedRun, start: float) -> dict[str, Any]:
    report["seconds"] = round(time.perf_counter() - start, 1)
    path = write_json(out if out is not None else report_path(loaded.path), report)
    report["path"] = str(path)
    return report


def _check_settings(n_samples: int, bpd_images: int, bpd_timesteps: int | None, sampler: str) -> None:
    """The settings' errors, before a run or a dataset is loaded."""
    if n_samples < 0 or bpd_images < 0:
        raise ValueError(f"n_samples and bpd_images must be >= 0, got {n_samples}, {bpd_images}")
    if n_samples == 1:
        raise ValueError("n_samples must be 0 (skip) or at least 2 (a covariance needs two samples)")
    if bpd_images and bpd_timesteps is not None and bpd_timesteps < 2:
        raise ValueError(f"the bound needs at least 2 timesteps per image (t = 0 and one more), got {bpd_timesteps}")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of: {', '.join(SAMPLERS)}")


def _header(loaded: LoadedRun, seed: int) -> dict[str, Any]:
    return {"run": str(loaded.path), "preset": loaded.config.preset, "kind": loaded.config.kind,
            "dataset": loaded.config.data.dataset, "label_names": list(loaded.label_names or ()),
            "step": loaded.step, "cond": loaded.cond, "device": str(loaded.diffusion.betas.device), "seed": seed,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "torch": torch.__version__}


def judge_samples(loaded: LoadedRun, test: ImageDataset, root, n: int, *, sampler: str, steps: int | None,
                  guidance: float, seed: int, batch_size: int, classifier, options: dict[str, Any] | None = None,
                  progress: bool = False, samples_out: list | None = None,
                  refine: Callable | None = None) -> dict[str, Any]:
    """Generate n samples (refined by ``refine``, a cascade's second stage); the report's "samples",
    "classifier_metrics" and "inception_fid" entries. A list ``samples_out`` receives (images, labels) of the
    samples (a cascade's base alone: upsampled bicubically to the test images' size)."""
    t0 = time.perf_counter()
    images, labels, _ = generate_samples(loaded, n, sampler=sampler, steps=steps, guidance=guidance, seed=seed,
                                         batch_size=batch_size, options=options, progress=progress, refine=refine)
    small = images.shape[-1] < test.image_size
    images = bicubic_to(images, test.image_size)
    if samples_out is not None:
        samples_out.append((images, labels))
    samples = {"n": n, "sampler": sampler, "steps": steps if steps is not None else default_steps(sampler,
                                                                                                  loaded.diffusion.T),
               "options": dict(options or {}), "guidance": guidance if labels is not None else None,
               "seconds": round(time.perf_counter() - t0, 1)}
    if small:
        samples["note"] = (f"{loaded.config.data.image_size}x{loaded.config.data.image_size} samples upsampled "
                           f"bicubically to {test.image_size}x{test.image_size} to be judged (the cascade: python "
                           f"-m ddpm cascade --evaluate)")
    dataset = loaded.config.data.dataset
    if dataset in CLASSIFIER_DATASETS:
        judged = _classifier_metrics(images, labels, test, dataset, root, classifier, seed, progress)
    else:
        judged = {"available": False, "message": f"no evaluation classifier for {dataset!r} (made for "
                                                 f"{', '.join(CLASSIFIER_DATASETS)})"}
    if dataset == "cifar10":
        fid = inception_fid(images, test.images, device=loaded.diffusion.betas.device)
    else:
        fid = {"available": False, "message": f"Inception FID is for natural RGB images (CIFAR-10), not {dataset!r}"}
    return {"samples": samples, "classifier_metrics": judged, "inception_fid": fid,
            "speckle": speckle_report(images, test)}


def _classifier_metrics(images: Tensor, labels: Tensor | None, test: ImageDataset, dataset: str, root,
                        classifier_file, seed: int, progress: bool) -> dict[str, Any]:
    clf, info = load_or_train_classifier(classifier_file, dataset, root=root, progress=progress)
    n = len(images)
    f_gen, logits = classifier_features(clf, images)
    stats_test = feature_statistics(classifier_features(clf, test)[0])
    fd = frechet_distance(*feature_statistics(f_gen), *stats_test)
    floors = frechet_floors(clf, load_dataset(dataset, "train", root=root), n, stats_test, seed)
    floor = sum(floors) / len(floors)
    pred = logits.argmax(dim=1)
    acc = conditional_accuracy(logits, labels) if labels is not None else {"accuracy": None, "per_class": None}
    return {
        "available": True,
        "classifier": {"path": info.get("path"), "test_accuracy": info.get("test_accuracy"),
                       "train_seconds": info.get("train_seconds"), "trained_now": info.get("trained_now")},
        "frechet_distance": fd,
        "frechet_floor": floor,
        "frechet_floor_subsets": floors,
        "frechet_ratio": fd / floor if floor > 0 else None,
        "frechet_note": f"{FRECHET_NOTE}. Floor: {n} random training images vs the {len(test)} test images "
                        f"(the sample size of the generated set, so the same small-sample bias), mean over "
                        f"{len(floors)} disjoint subsets",
        "predicted_class_fraction": [round(float((pred == c).double().mean()), 4) for c in range(logits.shape[1])],
        "conditional_accuracy": acc["accuracy"],
        "per_class_accuracy": acc["per_class"],
    }


# ------------------------------------------------------------------ the table
def format_report(report: dict[str, Any]) -> str:
    """A readable table of an evaluate_run report."""
    rows = [("run", f"{report['run']} (preset {report['preset']}, step {report['step']})")]
    rows += _bpd_rows(report.get("bits_per_dim"))
    if report.get("bits_per_dim_note"):
        rows.append(("bits/dim", report["bits_per_dim_note"]))
    evaluation = kind(report.get("kind", "ddpm")).evaluation
    if evaluation is not None:  # the kind's own rows
        rows += importlib.import_module(evaluation).stage_rows(report)
    rows += [(k, str(v)) for k, v in (report.get("stage_rows") or [])]  # what a later stage was (a cascade's)
    rows += _sample_rows(report)
    rows += adherence_rows(report.get("attribute_adherence"))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
    if (report.get("classifier_metrics") or {}).get("available"):
        lines.append("note: the Frechet distance uses a small MNIST-like classifier's features: it is not "
                     "Inception FID and is not comparable with published FID numbers")
    return "\n".join(lines)


def _bpd_rows(bpd: dict[str, Any] | None) -> list[tuple[str, str]]:
    if not bpd:
        return []
    how = "all" if bpd["timesteps"] == bpd["T"] else f"{bpd['timesteps']} stratified"
    err = f" +- {bpd['bpd_stderr']:.4f}" if bpd["bpd_stderr"] is not None else ""
    rows = [("bits/dim (test, bound)", f"{bpd['bpd']:.4f}{err}  ({bpd['n_images']} images, {how} of "
                                       f"T={bpd['T']} steps, {bpd['condition']})"),
            ("  prior L_T", f"{bpd['prior']:.6f}"),
            ("  decoder L_0 (t=1)", f"{bpd['decoder']:.4f}"),
            ("  KL sum L_1..L_T-1", f"{bpd['kl']:.4f}")]
    return rows + [(f"    t = {r['t_from']}..{r['t_to']}", f"{r['bpd']:.4f}") for r in bpd["kl_by_range"]]


def _sample_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    s = report.get("samples")
    if not s:
        return []
    g = f", guidance {s['guidance']}" if s["guidance"] is not None else ""
    rows = [("samples", f"{s['n']} ({s['sampler']}, {s['steps']} steps{g}) in {s['seconds']:.0f} s")]
    if s.get("note"):
        rows.append(("  note", s["note"]))
    cm = report.get("classifier_metrics") or {}
    if cm.get("available"):
        acc = cm["classifier"]["test_accuracy"]
        rows.append(("classifier test accuracy", f"{acc:.4f}" if acc is not None else "n/a"))
        if cm["conditional_accuracy"] is not None:
            rows.append(("conditional accuracy", f"{cm['conditional_accuracy']:.4f}"))
            names = report.get("label_names") or []
            per_class = [f"{names[c] if c < len(names) else c} {a:.2f}"
                         for c, a in enumerate(cm["per_class_accuracy"]) if a is not None]
            rows.append(("  per class", ", ".join(per_class)))
        ratio = f"{cm['frechet_ratio']:.2f}x" if cm["frechet_ratio"] else "-"
        small = f"  (n = {s['n']} < 1000: both dominated by small-sample bias)" if s["n"] < 1000 else ""
        rows += [("Frechet distance (classifier)", f"{cm['frechet_distance']:.3f}"),
                 ("  real-data floor (train vs test)", f"{cm['frechet_floor']:.3f}"),
                 ("  ratio to the floor", ratio + small)]
    elif cm:
        rows.append(("classifier metrics", cm["message"]))
    speckle = report.get("speckle") or {}
    if speckle.get("available"):
        rows.append(("speckled samples", f"{speckle['share']:.2%}  (real test images: {speckle['real_share']:.2%}; "
                                         f"3+ faint pixels away from every stroke)"))
    fid = report.get("inception_fid") or {}
    if fid.get("available"):
        rows.append(("Inception FID", f"{fid['fid']:.2f}"))
    elif report.get("dataset") == "cifar10" and fid:
        rows.append(("Inception FID", fid["message"]))
    return rows
