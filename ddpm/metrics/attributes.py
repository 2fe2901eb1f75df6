"""Attribute adherence: does a text model draw the style its prompt asks for?

For every attribute word of the caption grammar (thin, thick, slanted left, upright, slanted right,
narrow, wide) and every digit, samples are drawn with the grammar's evaluation prompt
("a handwritten seven written thick", ``ddpm.datasets.attribute_prompt``); each sample's style is
measured from its pixels exactly as the training digits were (``ddpm.datasets.measure_digits``) and
binned by the terciles of the *real* digits of the asked-for class. A sample adheres when its bin is the
one the word names, so a model that ignores the word scores about 1/3 (chance), one that follows it 1.

Seen and held-out combinations are scored apart: a held-out one (``ddpm.datasets.HELD_OUT``, e.g. "thick"
with "one") never appeared in a training caption, so adhering there means composing two words that were
only seen apart. Half the samples go to the seen combinations, half to the held-out ones.

    plan = adherence_plan(n)                    # which prompts, how many of each
    images = <sample plan.prompts>              # uint8 [n, 1, 28, 28] (ddpm.metrics.evaluate does this)
    report = score_adherence(images, plan, mnist_edges())
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ddpm.datasets import (
    ATTRIBUTE_WORDS,
    ATTRIBUTES,
    HELD_OUT,
    MNIST_LABEL_NAMES,
    attribute_bins,
    attribute_prompt,
    caption_vocabulary,
    is_held_out,
    measure_digits,
    split_words,
)

__all__ = ["CHANCE", "AdherencePlan", "adherence_plan", "adherence_supported", "score_adherence", "adherence_rows"]

CHANCE = 1 / 3  # a sample's measure falls in any one tercile of the real digits a third of the time


@dataclass(frozen=True)
class AdherencePlan:
    """The prompts to sample and what each asks for: labels int64 [n], attribute index int64 [n] (into
    ATTRIBUTES), bin int64 [n] (the tercile the word names), held_out bool [n]."""

    prompts: list[str]
    labels: Tensor
    attribute: Tensor
    bin: Tensor
    held_out: Tensor


def _combinations() -> list[tuple[int, int, int]]:
    """(digit, attribute index, bin) of every attribute word with every digit."""
    return [(label, a, b) for label in range(len(MNIST_LABEL_NAMES)) for a, name in enumerate(ATTRIBUTES)
            for b, word in enumerate(ATTRIBUTE_WORDS[name]) if word is not None]


def adherence_plan(n: int) -> AdherencePlan:
    """About n samples: n/2 spread evenly over the seen (digit, word) combinations, n/2 over the held-out
    ones (at least one sample of each)."""
    if n < 2:
        raise ValueError(f"attribute adherence needs at least 2 samples, got {n}")
    combos = _combinations()
    held = [c for c in combos if is_held_out(c[0], ATTRIBUTES[c[1]], c[2])]
    seen = [c for c in combos if c not in held]
    per_seen, per_held = max(1, n // 2 // len(seen)), max(1, n // 2 // max(1, len(held)))
    rows = [(c, False) for c in seen for _ in range(per_seen)] + [(c, True) for c in held for _ in range(per_held)]
    return AdherencePlan(
        prompts=[attribute_prompt(label, ATTRIBUTES[a], b) for (label, a, b), _ in rows],
        labels=torch.tensor([c[0] for c, _ in rows]),
        attribute=torch.tensor([c[1] for c, _ in rows]),
        bin=torch.tensor([c[2] for c, _ in rows]),
        held_out=torch.tensor([h for _, h in rows]),
    )


def adherence_supported(cond: str, dataset: str, vocab: tuple[str, ...], max_prompt_len: int) -> str | None:
    """None if a model can be asked for attribute words, else why not (one line)."""
    if cond != "text" or dataset != "mnist":
        return "attribute adherence is measured for text models of MNIST digits"
    missing = sorted(set(caption_vocabulary("mnist")) - set(vocab))
    if missing:
        return (f"this model's vocabulary has no style words ({', '.join(missing[:4])}, ...): it was trained on "
                f"captions without attributes")
    longest = max(len(split_words(attribute_prompt(label, ATTRIBUTES[a], b))) for label, a, b in _combinations())
    if longest > max_prompt_len:
        return f"the evaluation prompts have {longest} words, more than this model reads ({max_prompt_len})"
    return None


def _share(hit: Tensor, mask: Tensor) -> tuple[float | None, int]:
    n = int(mask.sum())
    return (round(float(hit[mask].double().mean()), 4) if n else None), n


def score_adherence(images: Tensor, plan: AdherencePlan, edges: Tensor,
                    predicted: Tensor | None = None) -> dict[str, Any]:
    """The report of samples ``images`` uint8 [n, 1, 28, 28] drawn for ``plan``; ``edges`` [10, 3, 2]: the
    terciles of real digits (ddpm.datasets.mnist_edges). ``predicted`` [n]: a classifier's digit for each
    sample, to say whether the style words keep the digit right (optional)."""
    measured = measure_digits(images)
    bins = attribute_bins(measured, plan.labels, edges).long()  # [n, 3]: the tercile of each measure
    got = bins.gather(1, plan.attribute.view(-1, 1)).squeeze(1)
    hit = got == plan.bin
    words = []
    for a, name in enumerate(ATTRIBUTES):
        for b, word in enumerate(ATTRIBUTE_WORDS[name]):
            if word is None:
                continue
            mine = (plan.attribute == a) & (plan.bin == b)
            seen, n_seen = _share(hit, mine & ~plan.held_out)
            held, n_held = _share(hit, mine & plan.held_out)
            words.append({"word": word, "attribute": name, "bin": b, "seen": seen, "n_seen": n_seen,
                          "held_out": held, "n_held_out": n_held})
    by_attribute = {}
    for a, name in enumerate(ATTRIBUTES):
        mine = plan.attribute == a
        by_attribute[name] = {"seen": _share(hit, mine & ~plan.held_out)[0],
                              "held_out": _share(hit, mine & plan.held_out)[0]}
    report = {"available": True, "n": len(images), "chance": round(CHANCE, 4),
              "seen": _share(hit, ~plan.held_out)[0], "held_out": _share(hit, plan.held_out)[0],
              "by_attribute": by_attribute, "words": words,
              "held_out_combinations": [attribute_prompt(label, name, b) for label, name, b in HELD_OUT],
              "prompt_example": plan.prompts[0]}
    if predicted is not None:
        right = predicted.cpu() == plan.labels
        report["digit_accuracy"] = {"seen": _share(right, ~plan.held_out)[0],
                                    "held_out": _share(right, plan.held_out)[0]}
    return report


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def adherence_rows(report: dict[str, Any] | None) -> list[tuple[str, str]]:
    """Rows of the evaluate table: the overall and per-attribute shares, then one row per word."""
    if not report:
        return []
    if not report.get("available"):
        return [("attribute adherence", report.get("message", "not measured"))]
    rows = [("attribute adherence", f"seen {_pct(report['seen'])}, held-out {_pct(report['held_out'])} "
                                    f"(chance {_pct(report['chance'])}; {report['n']} samples, prompts like "
                                    f"{report['prompt_example']!r})")]
    for name, shares in report["by_attribute"].items():
        rows.append((f"  {name}", f"seen {_pct(shares['seen'])}, held-out {_pct(shares['held_out'])}"))
    for w in report["words"]:
        held = f", held-out {_pct(w['held_out'])} (n={w['n_held_out']})" if w["n_held_out"] else ""
        rows.append((f"    {w['word']}", f"seen {_pct(w['seen'])} (n={w['n_seen']}){held}"))
    acc = report.get("digit_accuracy")
    if acc:
        rows.append(("  right digit (classifier)", f"seen {_pct(acc['seen'])}, held-out {_pct(acc['held_out'])}"))
    return rows
