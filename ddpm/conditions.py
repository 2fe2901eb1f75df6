"""The one mapping from class labels to what a network is given as its condition.

A network is conditioned in one of three modes (``UNetConfig.cond``):

    "none"   no condition: None
    "class"  the labels themselves, int64 [B]
    "text"   one prompt per label: the class's canonical prompt (its first caption template, e.g.
             "a handwritten seven"), so the same labels always give the same prompts

Training draws *random* captions per image (ddpm.datasets.captions_for); everything that asks a trained
model for given classes (sample grids, evaluation, bench, figures, the command line) comes through here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ddpm._util import check_mode, select_condition
from ddpm.datasets import class_prompts

__all__ = ["COND_MODES", "condition_for_labels", "balanced_labels", "num_conditions", "select_condition"]

COND_MODES = ("none", "class", "text")


def condition_for_labels(mode: str, labels: Tensor, label_names: Sequence[str], dataset: str):
    """What a network with conditioning ``mode`` is given to generate these classes: the labels themselves
    ("class"), each class's canonical prompt ("text"), or None ("none")."""
    check_mode(mode, COND_MODES, "conditioning")
    if mode == "class":
        return torch.as_tensor(labels, dtype=torch.long)
    if mode == "text":
        return class_prompts(label_names, labels, dataset)
    return None


def num_conditions(mode: str, num_classes: int, label_names: Sequence[str]) -> int:
    """How many classes a conditional model can be asked for (0 for an unconditional one): the class
    embedding's size for "class", the number of named classes (each has prompts) for "text"."""
    check_mode(mode, COND_MODES, "conditioning")
    if mode == "none":
        return 0
    k = num_classes if mode == "class" else len(label_names)
    if k < 1:
        raise ValueError("this text-conditioned model stores no class names to build prompts from")
    return k


def balanced_labels(n: int, classes: int, *, grouped: bool = False) -> Tensor:
    """n labels covering the classes evenly: 0, 1, ..., K-1, 0, 1, ... or, grouped, 0, 0, ..., 1, 1, ...
    (n // K of each: one row per class in a grid)."""
    if n < 1 or classes < 1:
        raise ValueError(f"n and the number of classes must be positive, got {n}, {classes}")
    if grouped:
        return torch.arange(classes).repeat_interleave(max(1, n // classes))
    return torch.arange(n) % classes
