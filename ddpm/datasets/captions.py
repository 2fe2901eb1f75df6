"""Captions from labels and style attributes (for text conditioning): the one caption grammar.

Every caption a text model is trained on comes from the phrases here, and its vocabulary is the words
of those phrases (split by ``split_words``), so captions and vocabulary cannot drift apart.

A digit caption names the digit (word or numeral, several phrasings) and zero to three of its style
attributes (``ddpm.datasets.attributes``: the tercile of thickness, slant and width within its class),
each one left out at random, in random order and wording:

    a handwritten seven                     (no attribute: the class templates, the first is canonical)
    a thick slanted 7                       (adjectives before the digit)
    the digit seven, slanted to the right   (phrases after it)
    number 7 written thin and wide          ("written" / "drawn" and the bare words)
    a bold seven, leaning left and narrow   (one adjective before, the rest after)

The middle tercile of thickness and of width gets no word; the middle of slant is "upright". "slanted"
alone means slanted to the right (as in italic writing). A few (digit, attribute) combinations are held
out (``HELD_OUT``): their word is never written, so a model that follows "a thick one" composes "thick"
and "one" from captions that had them apart. Other datasets get object templates ("a photo of a cat").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ddpm.datasets.attributes import ATTRIBUTES
from ddpm.datasets.idx import MNIST_LABEL_NAMES
from ddpm.datasets.registry import dataset_label_names

__all__ = ["ATTRIBUTE_WORDS", "HELD_OUT", "INCLUDE_PROB", "Phrases", "attribute_prompt", "caption_max_words",
           "caption_templates", "caption_vocabulary", "captions_for", "class_prompts", "is_held_out", "split_words"]

# The one set of digit captions: a text model trained on random picks learns that "seven", "7" and the
# phrasing around them mean the same thing, so any of these prompts works at sampling time.
_DIGIT_TEMPLATES = ("a handwritten {name}", "a handwritten {index}", "the digit {name}", "the digit {index}",
                    "number {name}", "number {index}", "{a} {name}", "{name}")
_OBJECT_TEMPLATES = ("a photo of {a} {name}", "{a} {name}", "a picture of {a} {name}",
                     "an image of {a} {name}", "a small photo of the {name}", "the {name}")
_WORD = re.compile(r"\w+(?:'\w+)*")  # a word, with inner apostrophes ("don't"); the rest separates words


@dataclass(frozen=True)
class Phrases:
    """The ways to say one tercile of one attribute: before the digit ("a thick seven"), bare after "written"
    ("written thick"), and as a phrase of its own after the digit ("seven, with thick strokes")."""

    adjectives: tuple[str, ...]
    bare: tuple[str, ...]
    phrases: tuple[str, ...]


# _PHRASES[attribute][bin]: bin 0 / 1 / 2 = lowest / middle / highest third of the class; None: no word.
_PHRASES: dict[str, tuple[Phrases | None, Phrases | None, Phrases | None]] = {
    "thickness": (
        Phrases(("thin", "light", "fine"), ("thin", "light"), ("with thin strokes", "in a thin pen", "thinly drawn")),
        None,
        Phrases(("thick", "bold", "heavy"), ("thick", "bold"), ("with thick strokes", "in a thick pen", "in bold")),
    ),
    "slant": (
        Phrases(("left leaning", "backslanted"), ("slanted left", "leaning left"),
                ("slanted to the left", "leaning to the left", "tilted left")),
        Phrases(("upright", "straight"), ("upright", "straight"), ("standing upright", "standing straight")),
        Phrases(("slanted", "italic", "right leaning"), ("slanted right", "leaning right", "slanted"),
                ("slanted to the right", "leaning to the right", "tilted right", "in italics")),
    ),
    "width": (
        Phrases(("narrow", "slim", "condensed"), ("narrow", "slim"), ("narrow", "squeezed narrow")),
        None,
        Phrases(("wide", "broad"), ("wide", "broad"), ("wide", "stretched wide")),
    ),
}
assert tuple(_PHRASES) == ATTRIBUTES

# The word that names each tercile in reports and evaluation prompts (None: the tercile has no word).
ATTRIBUTE_WORDS: dict[str, tuple[str | None, ...]] = {
    a: tuple(p.bare[0] if p is not None else None for p in bins) for a, bins in _PHRASES.items()}

# (digit, attribute, bin) never put into words in training: "thick ones", "thin eights", "slanted-left fives",
# "slanted-right threes", "wide fours". The digits are still trained, with that attribute left unsaid.
HELD_OUT: tuple[tuple[int, str, int], ...] = ((1, "thickness", 2), (8, "thickness", 0), (5, "slant", 0),
                                              (3, "slant", 2), (4, "width", 2))

INCLUDE_PROB = 0.5  # each attribute is put into words with this probability (independently of its value)
_NOUNS = ("{name}", "{index}", "handwritten {name}", "handwritten {index}")  # after "a thick ..."
_VERBS = ("written", "drawn")
_DRAWS = 12  # uniforms per caption: a fixed count keeps the caption generator's stream easy to reason about


def split_words(text: str) -> list[str]:
    """Lowercased words of ``text``; punctuation and whitespace separate words and are dropped."""
    return _WORD.findall(text.lower())


def _article(word: str) -> str:
    """"a" or "an" before ``word`` ("an eight", "an italic 7", "a thick seven")."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def caption_templates(label_name: str, index: int, dataset: str = "") -> list[str]:
    """Every plain caption for one class, e.g. "a handwritten seven", "the digit 7" for MNIST's class 7.

    dataset "mnist" gets digit templates; any other dataset gets object templates ("a photo of an
    airplane"). The first is the class's canonical prompt.
    """
    templates = _DIGIT_TEMPLATES if dataset == "mnist" else _OBJECT_TEMPLATES
    return [t.format(name=label_name, index=index, a=_article(label_name)) for t in templates]


def is_held_out(label: int, attribute: str, bin: int) -> bool:
    """Whether this (digit, attribute, tercile) is never put into words in training (see HELD_OUT)."""
    return (int(label), attribute, int(bin)) in HELD_OUT


# ---------------------------------------------------------------------------------------------------
# Composing one caption
# ---------------------------------------------------------------------------------------------------


def _pick(options: Sequence[str], u: float) -> str:
    return options[min(int(u * len(options)), len(options) - 1)]


def _join(parts: list[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _compose(name: str, index: int, said: list[Phrases], u: list[float]) -> str:
    """One caption of a digit with the attributes ``said`` (in this order), choices from the uniforms u."""
    digit = _pick(_DIGIT_TEMPLATES, u[0]).format(name=name, index=index, a=_article(name))
    if not said:
        return digit
    form = int(u[1] * 4)
    words = [u[2 + k] for k in range(len(said))]
    if form == 0:  # all before the digit: "a thick slanted seven"
        adjectives = " ".join(_pick(p.adjectives, w) for p, w in zip(said, words, strict=True))
        noun = _pick(_NOUNS, u[5]).format(name=name, index=index)
        return f"{_article(adjectives)} {adjectives} {noun}"
    if form == 1:  # all after: "the digit seven, slanted to the right and with thick strokes"
        return f"{digit}, {_join([_pick(p.phrases, w) for p, w in zip(said, words, strict=True)])}"
    if form == 2:  # "number 7 written thin and wide"
        verb = _pick(_VERBS, u[5])
        return f"{digit} {verb} {_join([_pick(p.bare, w) for p, w in zip(said, words, strict=True)])}"
    first = _pick(said[0].adjectives, words[0])  # one before, the rest after: "a bold seven, leaning left"
    noun = _pick(_NOUNS, u[5]).format(name=name, index=index)
    rest = [_pick(p.phrases, w) for p, w in zip(said[1:], words[1:], strict=True)]
    return f"{_article(first)} {first} {noun}" + (f", {_join(rest)}" if rest else "")


def _digit_caption(label: int, bins: Sequence[int], u: list[float]) -> str:
    """A random caption of digit ``label`` whose attribute terciles are ``bins`` (12 uniforms in u)."""
    said = []
    for k, attribute in enumerate(ATTRIBUTES):
        phrases = _PHRASES[attribute][int(bins[k])]
        if phrases is not None and u[6 + k] < INCLUDE_PROB and not is_held_out(label, attribute, bins[k]):
            said.append((u[9 + k], phrases))  # ordered by a random key
    said.sort(key=lambda pair: pair[0])
    return _compose(MNIST_LABEL_NAMES[label], label, [p for _, p in said], u)


def captions_for(
    label_names: Sequence[str],
    labels: torch.Tensor,
    generator: torch.Generator | None = None,
    dataset: str | None = None,
    attributes: torch.Tensor | None = None,
) -> list[str]:
    """One random caption per label: labels int64 [B] (and attributes int8 [B, 3], or None) -> B strings.

    ``dataset`` picks the templates (see caption_templates); by default MNIST's label names
    ("zero", ..., "nine") get the digit templates and anything else the object templates. With
    ``attributes`` (digits only), each caption may also say how the digit is written (see the module
    docstring); without, it is one of the class's plain templates.
    """
    if dataset is None:
        dataset = "mnist" if tuple(label_names) == MNIST_LABEL_NAMES else ""
    labels = torch.as_tensor(labels).reshape(-1).tolist()
    if attributes is not None and dataset == "mnist":
        draws = torch.rand(len(labels), _DRAWS, generator=generator).tolist()
        bins = torch.as_tensor(attributes).tolist()
        return [_digit_caption(y, b, u) for y, b, u in zip(labels, bins, draws, strict=True)]
    per_class = [caption_templates(n, k, dataset) for k, n in enumerate(label_names)]
    choice = torch.rand(len(labels), generator=generator).tolist()
    return [per_class[y][int(u * len(per_class[y]))] for y, u in zip(labels, choice, strict=True)]


def class_prompts(label_names: Sequence[str], labels: torch.Tensor, dataset: str) -> list[str]:
    """The canonical prompt of each label (its first caption template), e.g. "a handwritten seven"."""
    return [caption_templates(label_names[k], k, dataset)[0] for k in torch.as_tensor(labels).reshape(-1).tolist()]


def attribute_prompt(label: int, attribute: str, bin: int) -> str:
    """The evaluation prompt for one attribute word of one digit: the class's canonical prompt, "written" and
    the word, e.g. "a handwritten seven written thick" (whether or not the combination is held out)."""
    word = ATTRIBUTE_WORDS[attribute][bin]
    if word is None:
        raise ValueError(f"the middle tercile of {attribute} has no word")
    return f"{caption_templates(MNIST_LABEL_NAMES[label], label, 'mnist')[0]} written {word}"


# ---------------------------------------------------------------------------------------------------
# What the grammar can say: its vocabulary and its longest caption
# ---------------------------------------------------------------------------------------------------


def _all_phrases() -> list[str]:
    """Every phrase of the attribute grammar, with the digit left out."""
    out = [n.format(name="", index="") for n in _NOUNS] + list(_VERBS) + ["and", "a", "an"]
    for bins in _PHRASES.values():
        for p in bins:
            if p is not None:
                out += [*p.adjectives, *p.bare, *p.phrases]
    return out


def caption_vocabulary(dataset: str) -> tuple[str, ...]:
    """Every word the grammar can write for a dataset, sorted: a text model's vocabulary."""
    words = set()
    for k, name in enumerate(dataset_label_names(dataset)):
        for caption in caption_templates(name, k, dataset):
            words.update(split_words(caption))
    if dataset == "mnist":
        for phrase in _all_phrases():
            words.update(split_words(phrase))
    return tuple(sorted(words))


def caption_max_words(dataset: str) -> int:
    """The most words a caption of the grammar can have (what a text encoder must read): every attribute said,
    each in its longest wording, in the longest of the four forms of ``_compose``."""
    names = dataset_label_names(dataset)
    plain = max(len(split_words(c)) for k, n in enumerate(names) for c in caption_templates(n, k, dataset))
    if dataset != "mnist":
        return plain

    def longest(kind: str) -> list[int]:  # per attribute: its longest wording of this kind
        return [max(len(split_words(w)) for p in bins if p is not None for w in getattr(p, kind))
                for bins in _PHRASES.values()]

    adjectives, bare, phrases = longest("adjectives"), longest("bare"), longest("phrases")
    noun, n = max(len(split_words(w)) for w in _NOUNS), len(_PHRASES)
    return max(plain,
               1 + sum(adjectives) + noun,  # a thick slanted wide seven
               plain + sum(phrases) + 1,  # a handwritten seven, A, B and C
               plain + 1 + sum(bare) + 1,  # a handwritten seven written A, B and C
               max(1 + adjectives[k] + noun + sum(phrases) - phrases[k] for k in range(n)) + (n > 2))
