"""Captions from label names (for text conditioning): the one caption grammar.

Every caption a text model is trained on comes from the templates here, and its vocabulary is the
words of those templates (split by ``split_words``), so captions and vocabulary cannot drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from ddpm.datasets.idx import MNIST_LABEL_NAMES
from ddpm.datasets.registry import dataset_label_names

__all__ = ["caption_templates", "caption_vocabulary", "captions_for", "class_prompts", "split_words"]

# The one set of digit captions: a text model trained on random picks learns that "seven", "7" and the
# phrasing around them mean the same thing, so any of these prompts works at sampling time.
_DIGIT_TEMPLATES = ("a handwritten {name}", "a handwritten {index}", "the digit {name}", "the digit {index}",
                    "number {name}", "number {index}", "{a} {name}", "{name}")
_OBJECT_TEMPLATES = ("a photo of {a} {name}", "{a} {name}", "a picture of {a} {name}",
                     "an image of {a} {name}", "a small photo of the {name}", "the {name}")
_WORD = re.compile(r"\w+(?:'\w+)*")  # a word, with inner apostrophes ("don't"); the rest separates words


def split_words(text: str) -> list[str]:
    """Lowercased words of ``text``; punctuation and whitespace separate words and are dropped."""
    return _WORD.findall(text.lower())


def _article(name: str) -> str:
    return "an" if name[:1].lower() in "aeiou" else "a"


def caption_templates(label_name: str, index: int, dataset: str = "") -> list[str]:
    """Every caption for one class, e.g. "a handwritten seven", "the digit 7" for MNIST's class 7.

    dataset "mnist" gets digit templates; any other dataset gets object templates ("a photo of an
    airplane"). The union over classes is the text vocabulary a caption model needs.
    """
    templates = _DIGIT_TEMPLATES if dataset == "mnist" else _OBJECT_TEMPLATES
    return [t.format(name=label_name, index=index, a=_article(label_name)) for t in templates]


def caption_vocabulary(dataset: str) -> tuple[str, ...]:
    """Every word of every caption template of every class of a dataset, sorted: a text model's vocabulary."""
    words = set()
    for k, name in enumerate(dataset_label_names(dataset)):
        for caption in caption_templates(name, k, dataset):
            words.update(split_words(caption))
    return tuple(sorted(words))


def class_prompts(label_names: Sequence[str], labels: torch.Tensor, dataset: str) -> list[str]:
    """The canonical prompt of each label (its first caption template), e.g. "a handwritten seven"."""
    return [caption_templates(label_names[k], k, dataset)[0] for k in torch.as_tensor(labels).reshape(-1).tolist()]


def captions_for(
    label_names: Sequence[str],
    labels: torch.Tensor,
    generator: torch.Generator | None = None,
    dataset: str | None = None,
) -> list[str]:
    """One random caption per label: labels int64 [B] -> B strings.

    ``dataset`` picks the templates (see caption_templates); by default MNIST's label names
    ("zero", ..., "nine") get the digit templates and anything else the object templates.
    """
    if dataset is None:
        dataset = "mnist" if tuple(label_names) == MNIST_LABEL_NAMES else ""
    per_class = [caption_templates(n, k, dataset) for k, n in enumerate(label_names)]
    labels = torch.as_tensor(labels).reshape(-1).tolist()
    choice = torch.rand(len(labels), generator=generator).tolist()
    return [per_class[y][int(u * len(per_class[y]))] for y, u in zip(labels, choice, strict=True)]
