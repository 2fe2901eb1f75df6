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


def _base_rates(images: Tensor, labels: Tensor, edges: Tensor, plan: AdherencePlan) -> Tensor:
    """For each row of the plan, the share of the plain-prompt samples of its digit that fall in its bin
    (what the row would score if the word were not said): float64 [n]."""
    bins = attribute_bins(measure_digits(images), labels, edges).long()  # [m, 3]
    rate = torch.full((len(edges), len(ATTRIBUTES), 3), float("nan"), dtype=torch.float64)
    for c in range(len(edges)):
        mine = bins[labels == c]
        if len(mine):
            rate[c] = torch.stack([(mine == b).double().mean(0) for b in range(3)], dim=1)
    return rate[plan.labels, plan.attribute, plan.bin]


def _shares(hit: Tensor, base: Tensor | None, mask: Tensor) -> dict[str, Any]:
    share, n = _share(hit, mask)
    out = {"share": share, "n": n}
    if base is not None:
        b = base[mask]
        out["base"] = round(float(b.nanmean()), 4) if n and not b.isnan().all() else None
    return out


def score_adherence(images: Tensor, plan: AdherencePlan, edges: Tensor, predicted: Tensor | None = None,
                    baseline: tuple[Tensor, Tensor] | None = None) -> dict[str, Any]:
    """The report of samples ``images`` uint8 [n, 1, 28, 28] drawn for ``plan``; ``edges`` [10, 3, 2]: the
    terciles of real digits (ddpm.datasets.mnist_edges). Optional: ``predicted`` [n], a classifier's digit for
    each sample (do the style words keep the digit right?); ``baseline`` (images, labels) sampled with the
    plain class prompts, for each word's "base": the share it gets without being said."""
    bins = attribute_bins(measure_digits(images), plan.labels, edges).long()  # [n, 3]: the tercile of each measure
    hit = bins.gather(1, plan.attribute.view(-1, 1)).squeeze(1) == plan.bin
    base = _base_rates(*baseline, edges, plan) if baseline is not None and baseline[1] is not None else None
    seen, held = ~plan.held_out, plan.held_out
    words = []
    for a, name in enumerate(ATTRIBUTES):
        for b, word in enumerate(ATTRIBUTE_WORDS[name]):
            if word is not None:
                mine = (plan.attribute == a) & (plan.bin == b)
                words.append({"word": word, "attribute": name, "bin": b, "seen": _shares(hit, base, mine & seen),
                              "held_out": _shares(hit, base, mine & held)})
    by_attribute = {name: {"seen": _shares(hit, base, (plan.attribute == a) & seen),
                           "held_out": _shares(hit, base, (plan.attribute == a) & held)}
                    for a, name in enumerate(ATTRIBUTES)}
    report = {"available": True, "n": len(images), "chance": round(CHANCE, 4),
              "seen": _shares(hit, base, seen), "held_out": _shares(hit, base, held),
              "by_attribute": by_attribute, "words": words,
              "held_out_combinations": [attribute_prompt(label, name, b) for label, name, b in HELD_OUT],
              "prompt_example": plan.prompts[0]}
    if predicted is not None:
        right = predicted.cpu() == plan.labels
        report["digit_accuracy"] = {"seen": _share(right, seen)[0], "held_out": _share(right, held)[0]}
    return report


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _cell(s: dict[str, Any], n: bool = False) -> str:
    """ "81% (base 35%, n=60)" """
    extra = [f"base {_pct(s['base'])}"] if s.get("base") is not None else []
    extra += [f"n={s['n']}"] if n else []
    return _pct(s["share"]) + (f" ({', '.join(extra)})" if extra else "")


def adherence_rows(report: dict[str, Any] | None) -> list[tuple[str, str]]:
    """Rows of the evaluate table: the overall and per-attribute shares, then one row per word. "base": the
    share the same digits get from the plain class prompt, i.e. without the word."""
    if not report:
        return []
    if not report.get("available"):
        return [("attribute adherence", report.get("message", "not measured"))]
    rows = [("attribute adherence", f"seen {_cell(report['seen'])}, held-out {_cell(report['held_out'])}; chance "
                                    f"{_pct(report['chance'])}, {report['n']} samples of prompts like "
                                    f"{report['prompt_example']!r}")]
    for name, shares in report["by_attribute"].items():
        rows.append((f"  {name}", f"seen {_cell(shares['seen'])}, held-out {_cell(shares['held_out'])}"))
    for w in report["words"]:
        held = f", held-out {_cell(w['held_out'], n=True)}" if w["held_out"]["n"] else ""
        rows.append((f"    {w['word']}", f"seen {_cell(w['seen'], n=True)}{held}"))
    acc = report.get("digit_accuracy")
    if acc:
        rows.append(("  right digit (classifier)", f"seen {_pct(acc['seen'])}, held-out {_pct(acc['held_out'])}"))
    return rows
