"""How well editing works on a run, measured (``python -m ddpm edit --evaluate sdedit|inpaint|invert``; the
tables of docs/editing.md). Every image set is judged like samples (ddpm.metrics.judge.SampleJudge: the
evaluation classifier's accuracy and the Frechet distance of its features, with the real-data floor at the same n).

    sdedit   the realism-faithfulness curve (SDEdit's Fig. 3): n test digits edited to another class at each
             strength: the target's accuracy, the Frechet distance, and the mean distance to the input (pixels
             in [0, 1]); and crude drawings (test digits reduced to a 7x7 binary sketch) edited into their own class
    inpaint  n test digits with a part hidden, completed under the null condition (the model must infer the digit
             from what is kept): the true digit's accuracy and the Frechet distance, naive replacement (r = 1)
             against RePaint's resampling, network calls per image; kept pixels identical to the input (checked)
    invert   the reconstruction's PSNR against the inversion's steps, unguided and guided; and edits after
             inversion (the target's accuracy, and how much of the input's thickness and slant survives: the
             correlation of the project's measures between input and output) beside SDEdit's at strengths around
             the same accuracy
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ddpm.datasets import ImageDataset, measure_digits, to_float, to_uint8
from ddpm.editing.masks import named_mask
from ddpm.editing.repaint import network_calls
from ddpm.editing.runs import Editor
from ddpm.metrics.judge import SampleJudge, mean_psnr
from ddpm.pipelines.base import Sampling

__all__ = ["crude_drawings", "sdedit_curve", "inpainting_table", "inversion_table", "EVALUATIONS"]

EVALUATIONS = ("sdedit", "inpaint", "invert")


def crude_drawings(images: Tensor, cells: int = 7, level: float = 0.35) -> Tensor:
    """uint8 digits as crude sketches: averaged over cells x cells blocks, thresholded at ``level`` and blown up
    again (blocky binary strokes, like SDEdit's stroke paintings). uint8 [N, 1, H, W] -> the same."""
    x = to_float(images) * 0.5 + 0.5
    coarse = (F.adaptive_avg_pool2d(x, cells) > level).float()
    return to_uint8(F.interpolate(coarse, size=images.shape[-2:], mode="nearest") * 2 - 1)


def _style_kept(inputs: Tensor, outputs: Tensor) -> dict[str, float]:
    """The correlation across images of thickness and slant between the inputs and their edits (uint8)."""
    a, b = measure_digits(inputs).double(), measure_digits(outputs).double()
    kept = {}
    for k, name in ((0, "thickness"), (1, "slant")):
        kept[name] = float(torch.corrcoef(torch.stack([a[:, k], b[:, k]]))[0, 1])
    return kept


def _judged(judge: SampleJudge, images: Tensor, labels: Tensor) -> dict[str, float]:
    found = judge(images, labels)
    return {"accuracy": found["accuracy"], "frechet": found["frechet"], "frechet_ratio": found["frechet_ratio"]}


def _targets(labels: Tensor, seed: int) -> Tensor:
    """Another class for each digit, at random."""
    shift = torch.randint(1, 10, labels.shape, generator=torch.Generator().manual_seed(seed))
    return (labels + shift) % 10


def sdedit_curve(editor: Editor, judge: SampleJudge, test: ImageDataset, idx: Tensor, strengths: Sequence[float],
                 seed: int = 0) -> list[dict]:
    inputs, labels = test.images[idx], test.labels[idx]
    targets = _targets(labels, seed)
    crude = crude_drawings(inputs)
    rows = []
    for s in strengths:
        start = time.perf_counter()
        out = to_uint8(editor.sdedit(to_float(inputs), editor.condition(targets), s,
                                     torch.Generator(editor.device).manual_seed(seed)).cpu())
        seconds = time.perf_counter() - start
        sketch = to_uint8(editor.sdedit(to_float(crude), editor.condition(labels), s,
                                        torch.Generator(editor.device).manual_seed(seed)).cpu())
        rows.append({"strength": s, **{f"target_{k}": v for k, v in _judged(judge, out, targets).items()},
                     "distance_to_input": float((out.float() - inputs.float()).abs().mean() / 255),
                     **{f"crude_{k}": v for k, v in _judged(judge, sketch, labels).items()},
                     "crude_distance_to_sketch": float((sketch.float() - crude.float()).abs().mean() / 255),
                     "seconds_per_image": seconds / len(idx)})
    return rows


def inpainting_table(editor: Editor, judge: SampleJudge, test: ImageDataset, idx: Tensor, masks: Sequence[str],
                     resamples: Sequence[int], steps: int, jump: int, seed: int = 0) -> list[dict]:
    inputs, labels = test.images[idx], test.labels[idx]
    rows = []
    for name in masks:
        mask = named_mask(name, len(idx), inputs.shape[-1], torch.Generator().manual_seed(seed))
        hidden = to_uint8(torch.where(mask.bool(), to_float(inputs), torch.full_like(to_float(inputs), -1)))
        rows.append({"mask": name, "method": "kept pixels only (hidden part black)", "resample": 0,
                     "network_calls": 0, **_judged(judge, hidden, labels), "hidden_fraction":
                     float(1 - mask.mean())})
        for r in resamples:
            start = time.perf_counter()
            out = to_uint8(editor.inpaint(to_float(inputs), mask, None, jump=jump, resample=r, steps=steps,
                                          generator=torch.Generator(editor.device).manual_seed(seed)).cpu())
            seconds = time.perf_counter() - start
            keep = mask.expand_as(inputs).bool()
            rows.append({"mask": name, "method": "naive replacement" if r == 1 else f"RePaint r = {r}",
                         "resample": r, "network_calls": network_calls(steps, jump, r),
                         **_judged(judge, out, labels), "kept_identical": bool(torch.equal(out[keep], inputs[keep])),
                         "seconds_per_image": seconds / len(idx)})
    return rows


def inversion_table(editor: Editor, judge: SampleJudge, test: ImageDataset, idx: Tensor, steps: Sequence[int],
                    guidances: Sequence[float], strengths: Sequence[float], seed: int = 0) -> dict[str, list[dict]]:
    run = editor.run
    inputs, labels = test.images[idx], test.labels[idx]
    x, source = to_float(inputs), editor.condition(labels)
    reconstruction = []
    for g in guidances:
        guided = Editor(run, Sampling("ddim", None, g, {}))
        for n in steps:
            start = time.perf_counter()
            back = to_uint8(guided.reconstruct(guided.invert(x, source, n), source, n).cpu())
            reconstruction.append({"guidance": g, "steps": n, "psnr": mean_psnr(back, inputs),
                                   "seconds_per_image": (time.perf_counter() - start) / len(idx)})
    targets = _targets(labels, seed)
    target = editor.condition(targets)
    edits = []
    unguided = Editor(run, Sampling("ddim", None, 1.0, {}))
    for g in guidances:
        decoder = Editor(run, Sampling("ddim", None, g, {}))
        out = to_uint8(decoder.reconstruct(unguided.invert(x, source, 50), target, 50).cpu())
        edits.append({"method": f"inversion (50 steps, unguided), decoded with guidance {g:g}", "guidance": g,
                      **{f"target_{k}": v for k, v in _judged(judge, out, targets).items()},
                      **{f"kept_{k}": v for k, v in _style_kept(inputs, out).items()}})
    for s in strengths:
        out = to_uint8(editor.sdedit(x, target, s, torch.Generator(editor.device).manual_seed(seed)).cpu())
        edits.append({"method": f"SDEdit, strength {s:g}", "strength": s,
                      **{f"target_{k}": v for k, v in _judged(judge, out, targets).items()},
                      **{f"kept_{k}": v for k, v in _style_kept(inputs, out).items()}})
    return {"reconstruction": reconstruction, "edits": edits}
