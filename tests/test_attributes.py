"""Digit style from pixels (ddpm/datasets/attributes.py), the caption grammar that puts it into words
(ddpm/datasets/captions.py) and the adherence of samples to it (ddpm/metrics/attributes.py)."""

import dataclasses
import json
import math
import os

import pytest
import torch

import ddpm.datasets.attributes as A
from ddpm.datasets import (
    ATTRIBUTE_WORDS,
    ATTRIBUTES,
    DEFAULT_ROOT,
    HELD_OUT,
    MNIST_LABEL_NAMES,
    BatchLoader,
    ImageDataset,
    Labels,
    attribute_bins,
    attribute_prompt,
    caption_max_words,
    caption_vocabulary,
    captions_for,
    class_prompts,
    load_mnist,
    measure_digits,
    mnist_edges,
    mnist_measures,
    split_words,
    tercile_edges,
    with_attributes,
)
from ddpm.datasets.captions import INCLUDE_PROB
from ddpm.metrics.attributes import adherence_plan, adherence_supported, score_adherence
from ddpm.presets import get_preset
from ddpm.training import Trainer

# ---------------------------------------------------------------------------------------------------
# The measures
# ---------------------------------------------------------------------------------------------------


def _brute_force_distance(ink: torch.Tensor) -> torch.Tensor:
    """Euclidean distance from each ink pixel to the nearest background pixel, by trying them all (outside the
    image counts as background, one pixel beyond the border)."""
    H, W = ink.shape
    padded = torch.zeros(H + 2, W + 2, dtype=torch.bool)
    padded[1:-1, 1:-1] = ink
    bg = (~padded).nonzero().float() - 1  # [M, 2]
    pix = torch.stack(torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij"), -1).float().view(-1, 2)
    d = torch.cdist(pix, bg).amin(1).view(H, W)
    return torch.where(ink, d, torch.zeros(()))


def test_distance_transform_is_exact():
    g = torch.Generator().manual_seed(0)
    blobs = torch.rand(6, 1, 4, 4, generator=g) > 0.3
    ink = torch.nn.functional.interpolate(blobs.float(), size=(16, 16), mode="nearest")[:, 0] > 0.5
    got = A.distance_to_background(ink)
    for i in range(len(ink)):
        torch.testing.assert_close(got[i], _brute_force_distance(ink[i]), atol=1e-5, rtol=0)


def _canvas(n: int = 1) -> torch.Tensor:
    return torch.zeros(n, 1, 28, 28, dtype=torch.uint8)


def test_thickness_slant_and_width_of_drawn_shapes():
    bars = _canvas(3)
    for k, w in enumerate((2, 4, 6)):  # upright bars 16 high, w wide
        bars[k, 0, 6:22, 10:10 + w] = 255
    m = measure_digits(bars)
    expected = [2 * _brute_force_distance(b[0] >= 128)[b[0] >= 128].mean() for b in bars]  # 2 x mean distance
    assert m[:, 0].tolist() == pytest.approx(expected, abs=1e-4)
    assert m[0, 0] == 2 and 2.5 < m[1, 0] < 3 < m[2, 0] < 4  # 2 for a 2-pixel stroke, then a little less than w
    assert m[:, 1].abs().max() < 1e-6  # upright
    assert m[:, 2].tolist() == pytest.approx([2, 4, 6], abs=1e-4)
    sheared = _canvas(2)
    for k, s in enumerate((0.5, -0.5)):  # parallelograms leaning right, then left
        for row in range(6, 22):
            x = round(12 + s * (14 - row))
            sheared[k, 0, row, x:x + 3] = 255
    m = measure_digits(sheared)
    assert m[0, 1] == pytest.approx(0.5, abs=0.05) and m[1, 1] == pytest.approx(-0.5, abs=0.05)
    assert ((m[:, 2] > 3) & (m[:, 2] < 5)).all()  # 3 wide, and jagged, once the lean is removed (11 with it)
    torch.testing.assert_close(measure_digits(sheared.flip(-1))[:, 1], -m[:, 1])  # a mirror leans the other way
    with pytest.raises(TypeError, match="uint8"):
        measure_digits(bars.float())


def test_mnist_in_seconds_and_cached(mnist_attribute_cache):
    measures, labels = mnist_measures("train")
    assert measures.shape == (60000, 3) and labels.shape == (60000,)
    bins = attribute_bins(measures, labels, mnist_edges())
    for k in range(10):  # terciles: a third of each class in each bin
        counts = torch.stack([torch.bincount(bins[labels == k, a].long(), minlength=3) for a in range(3)])
        share = counts / (labels == k).sum()
        assert ((share - 1 / 3).abs() < 0.01).all()
    thickness, slant, width = measures.T
    assert 1.5 < thickness.median() < 3.5 and -0.2 < slant.median() < 0.4
    assert width[labels == 1].median() < width[labels == 0].median() / 2  # ones are narrow
    record = json.loads((DEFAULT_ROOT / "mnist" / "attributes-train.json").read_text())
    assert record["source_md5"] == "6bbc9ace898e44ae57da46a324031adb"  # the decompressed images file


def test_tercile_edges_and_bins():
    measures = torch.arange(30, dtype=torch.float32).view(-1, 1).repeat(1, 3)
    labels = torch.zeros(30, dtype=torch.long)
    edges = tercile_edges(measures, labels, 1)
    assert edges.shape == (1, 3, 2)
    assert torch.bincount(attribute_bins(measures, labels, edges)[:, 0].long()).tolist() == [10, 10, 10]
    with pytest.raises(ValueError, match="class 1"):
        tercile_edges(measures, labels, 2)


@pytest.fixture(scope="module")
def mnist_attribute_cache():
    mnist_measures("train")  # measured once (a few seconds) if the cache is missing
    mnist_measures("test")


@pytest.fixture
def mnist_copy(tmp_path):
    """A data root holding links to the shipped MNIST files (and no attribute cache)."""
    (tmp_path / "mnist").mkdir()
    for f in (DEFAULT_ROOT / "mnist").glob("*-ubyte.gz"):
        os.symlink(f.resolve(), tmp_path / "mnist" / f.name)
    return tmp_path


def test_the_cache_is_verified_and_recomputed(mnist_copy, monkeypatch):
    calls = []

    def fake_measure(images):
        calls.append(len(images))
        return torch.full((len(images), 3), float(len(calls)))

    monkeypatch.setattr(A, "measure_digits", fake_measure)
    folder = mnist_copy / "mnist"
    first, labels = mnist_measures("test", mnist_copy)
    assert calls == [10000] and (folder / "attributes-test.npz").exists()
    again, labels2 = mnist_measures("test", mnist_copy)
    assert calls == [10000] and torch.equal(first, again) and torch.equal(labels, labels2)  # read back
    data = folder / "attributes-test.npz"
    data.write_bytes(data.read_bytes()[:-10] + b"0123456789")  # corrupt: the md5 no longer matches
    assert mnist_measures("test", mnist_copy)[0][0, 0] == 2 and calls == [10000, 10000]
    record = folder / "attributes-test.json"
    meta = json.loads(record.read_text())
    record.write_text(json.dumps({**meta, "source_md5": "0" * 32}))  # measured from other images
    assert mnist_measures("test", mnist_copy)[0][0, 0] == 3
    record.unlink()  # a missing record: measured again
    assert mnist_measures("test", mnist_copy)[0][0, 0] == 4
    assert not list(folder.glob("*.tmp"))


def test_a_read_only_data_folder_still_gives_measures(mnist_copy, monkeypatch):
    monkeypatch.setattr(A, "measure_digits", lambda images: torch.zeros(len(images), 3))
    monkeypatch.setattr(A, "atomic_write", _raise_read_only)
    measures, _ = mnist_measures("test", mnist_copy)
    assert measures.shape == (10000, 3) and not (mnist_copy / "mnist" / "attributes-test.json").exists()


def _raise_read_only(path, write):
    raise PermissionError(13, "Permission denied", str(path))


def test_with_attributes(mnist_attribute_cache):
    test = load_mnist(split="test")
    full = with_attributes(test)
    assert full.attributes.dtype == torch.int8 and full.attributes.shape == (10000, 3)
    assert set(full.attributes.unique().tolist()) == {0, 1, 2}
    part = with_attributes(test.subset(slice(0, 300)))  # not the whole file: measured on the spot, same bins
    assert torch.equal(part.attributes, full.attributes[:300])
    assert torch.equal(full.subset([5, 7]).attributes, full.attributes[[5, 7]])  # subsets keep them
    other = ImageDataset(test.images[:10], test.labels[:10], tuple("abcdefghij"), "letters")
    assert with_attributes(other) is other  # no style measures for what is not a digit
    with pytest.raises(ValueError, match="attributes"):
        ImageDataset(test.images[:4], test.labels[:4], attributes=torch.zeros(3, 3))


def test_the_loader_yields_attributes_with_the_labels_and_mirrors_slant():
    images = torch.zeros(40, 1, 2, 3, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(40, dtype=torch.uint8)
    images[:, 0, 1] = torch.tensor([10, 20, 30], dtype=torch.uint8)  # tells a flipped image
    attributes = torch.stack([torch.arange(40) % 3] * 3, dim=1)
    ds = ImageDataset(images, torch.arange(40), tuple(map(str, range(40))), "indexed", attributes=attributes)
    for x, y in BatchLoader(ds, 10, hflip=True, seed=1):
        assert isinstance(y, Labels) and y.attributes.dtype == torch.int8
        index = torch.maximum(x[:, 0, 0, 0], x[:, 0, 0, 2]).add(1).mul(127.5).round().long()
        assert torch.equal(index, y.labels)
        flipped = x[:, 0, 1, 0] > x[:, 0, 1, 2]
        expected = attributes[y.labels].to(torch.int8)
        expected[flipped, 1] = 2 - expected[flipped, 1]  # slant: a mirrored digit leans the other way
        assert torch.equal(y.attributes, expected) and flipped.any() and (~flipped).any()
    plain = ImageDataset(images, torch.arange(40))
    assert all(isinstance(y, torch.Tensor) for _, y in BatchLoader(plain, 10))


# ---------------------------------------------------------------------------------------------------
# The caption grammar
# ---------------------------------------------------------------------------------------------------

# what each style word of a caption claims: (attribute, bin)
_CLAIMS = {"thin": (0, 0), "light": (0, 0), "fine": (0, 0), "thinly": (0, 0), "thick": (0, 2), "bold": (0, 2),
           "heavy": (0, 2), "backslanted": (1, 0), "left": (1, 0), "upright": (1, 1), "straight": (1, 1),
           "right": (1, 2), "italic": (1, 2), "italics": (1, 2), "narrow": (2, 0), "slim": (2, 0),
           "condensed": (2, 0), "wide": (2, 2), "broad": (2, 2)}


def _claims(caption: str) -> set[tuple[int, int]]:
    words = split_words(caption)
    out = {_CLAIMS[w] for w in words if w in _CLAIMS}
    if "slanted" in words and "left" not in words:
        out.add((1, 2))  # "slanted" alone leans right
    return out


@pytest.fixture(scope="module")
def many_captions():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (20000,), generator=g)
    attributes = torch.randint(0, 3, (20000, 3), generator=g).to(torch.int8)
    return labels, attributes, captions_for(MNIST_LABEL_NAMES, labels, g, attributes=attributes)


def test_the_vocabulary_is_the_grammar(many_captions):
    _, _, captions = many_captions
    vocab = caption_vocabulary("mnist")
    used = {w for c in captions for w in split_words(c)}
    assert used == set(vocab) and len(vocab) < 300  # every word the grammar has, and no other
    lengths = [len(split_words(c)) for c in captions]
    assert max(lengths) <= caption_max_words("mnist") <= 16 and min(lengths) == 1  # "seven"
    assert caption_max_words("cifar10") == 6


def test_captions_say_only_what_the_pixels_show(many_captions):
    labels, attributes, captions = many_captions
    said = torch.zeros(3)
    for y, bins, caption in zip(labels.tolist(), attributes.tolist(), captions, strict=True):
        words = split_words(caption)
        assert MNIST_LABEL_NAMES[y] in words or str(y) in words
        claims = _claims(caption)
        assert all(bins[a] == b for a, b in claims), (caption, bins)
        for a, _ in claims:
            said[a] += 1
    # each attribute is said with probability INCLUDE_PROB when it has a word (not the middle thickness/width)
    # and is not held out
    sayable = torch.zeros(3)
    for a, attribute in enumerate(ATTRIBUTES):
        words = torch.tensor([w is not None for w in ATTRIBUTE_WORDS[attribute]])[attributes[:, a].long()]
        for digit, name, b in HELD_OUT:
            if name == attribute:
                words &= ~((labels == digit) & (attributes[:, a] == b))
        sayable[a] = words.sum()
    rate = said / sayable
    assert ((rate - INCLUDE_PROB).abs() < 0.03).all(), rate
    assert len(set(captions)) > 3000


def test_captions_are_deterministic_and_vary():
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    labels, attributes = torch.tensor([7] * 50), torch.full((50, 3), 2, dtype=torch.int8)
    a = captions_for(MNIST_LABEL_NAMES, labels, g(), attributes=attributes)
    assert a == captions_for(MNIST_LABEL_NAMES, labels, g(), attributes=attributes)
    assert len(set(a)) > 20
    assert {"a handwritten seven", "the digit 7"} <= set(captions_for(MNIST_LABEL_NAMES, torch.tensor([7] * 80), g()))


def test_held_out_combinations_are_never_said(many_captions):
    labels, attributes, captions = many_captions
    for digit, attribute, b in HELD_OUT:
        a = ATTRIBUTES.index(attribute)
        mine = [c for y, bins, c in zip(labels.tolist(), attributes.tolist(), captions, strict=True)
                if y == digit and bins[a] == b]
        assert len(mine) > 100
        assert not any((a, b) in _claims(c) for c in mine), (digit, attribute)
        others = [c for c in mine if _claims(c)]
        assert others  # the digit's other attributes are still said


def test_prompts_for_classes_and_attributes():
    assert class_prompts(MNIST_LABEL_NAMES, torch.tensor([7, 8]), "mnist") == ["a handwritten seven",
                                                                                 "a handwritten eight"]
    assert attribute_prompt(7, "thickness", 2) == "a handwritten seven written thick"
    assert attribute_prompt(5, "slant", 0) == "a handwritten five written slanted left"
    assert _claims(attribute_prompt(3, "slant", 2)) == {(1, 2)}
    with pytest.raises(ValueError, match="no word"):
        attribute_prompt(7, "width", 1)
    assert ATTRIBUTE_WORDS["slant"] == ("slanted left", "upright", "slanted right")


# ---------------------------------------------------------------------------------------------------
# Adherence
# ---------------------------------------------------------------------------------------------------


def test_adherence_plan():
    plan = adherence_plan(1000)
    seen, held = (~plan.held_out).sum().item(), plan.held_out.sum().item()
    assert 400 <= seen <= 500 and held == 500  # half each, evenly over the combinations
    assert set(plan.prompts[:7]) == {attribute_prompt(0, "thickness", 0)}
    for digit, attribute, b in HELD_OUT:
        mine = (plan.labels == digit) & (plan.attribute == ATTRIBUTES.index(attribute)) & (plan.bin == b)
        assert plan.held_out[mine].all() and mine.sum() == 100
    assert len(adherence_plan(2).prompts) == 65 + 5  # at least one of each
    vocab = caption_vocabulary("mnist")
    assert adherence_supported("text", "mnist", vocab, 14) is None
    assert "style words" in adherence_supported("text", "mnist", vocab[:20], 14)
    assert "text models" in adherence_supported("class", "mnist", (), 0)


def test_adherence_of_real_digits_chosen_to_fit_and_at_random(mnist_attribute_cache):
    test = with_attributes(load_mnist(split="test"))
    plan = adherence_plan(300)
    g = torch.Generator().manual_seed(0)
    fit, anyhow = [], []
    for label, a, b in zip(plan.labels.tolist(), plan.attribute.tolist(), plan.bin.tolist(), strict=True):
        of_class = (test.labels == label).nonzero()[:, 0]
        right = ((test.labels == label) & (test.attributes[:, a] == b)).nonzero()[:, 0]
        fit.append(right[torch.randint(len(right), (1,), generator=g)])
        anyhow.append(of_class[torch.randint(len(of_class), (1,), generator=g)])
    edges = mnist_edges()
    perfect = score_adherence(test.images[torch.cat(fit)], plan, edges, predicted=plan.labels)
    assert perfect["seen"]["share"] == perfect["held_out"]["share"] == 1.0
    assert perfect["digit_accuracy"] == {"seen": 1.0, "held_out": 1.0}
    random = score_adherence(test.images[torch.cat(anyhow)], plan, edges,
                             baseline=(test.images[:2000], test.labels[:2000]))
    assert abs(random["seen"]["share"] - 1 / 3) < 0.1 and abs(random["held_out"]["share"] - 1 / 3) < 0.1
    assert abs(random["seen"]["base"] - 1 / 3) < 0.05  # real digits: a third in each tercile
    words = {w["word"]: w for w in random["words"]}
    assert set(words) == {"thin", "thick", "slanted left", "upright", "slanted right", "narrow", "wide"}
    assert words["thick"]["held_out"]["n"] == 30 and words["narrow"]["held_out"]["n"] == 0
    assert math.isclose(random["chance"], 1 / 3, abs_tol=1e-3)


# ---------------------------------------------------------------------------------------------------
# Training on the captions
# ---------------------------------------------------------------------------------------------------


def test_only_text_runs_load_the_attributes_and_say_them(tmp_path, mnist_attribute_cache):
    text = Trainer(get_preset("tiny", steps=1, cond="text"), tmp_path / "text", device="cpu", progress=False)
    assert text.loader.dataset.attributes is not None
    assert text.config.model.max_prompt_len == caption_max_words("mnist")
    captions = [c for _, (_, y) in zip(range(3), text.loader, strict=False) for c in text.condition(y)]
    assert len(captions) == 48 and any(_claims(c) for c in captions)
    text.close()
    plain = Trainer(get_preset("tiny", steps=1), tmp_path / "class", device="cpu", progress=False)
    assert plain.loader.dataset.attributes is None  # class runs never load them
    x, y = next(iter(plain.loader))
    assert isinstance(y, torch.Tensor) and torch.equal(plain.condition(y), y)
    plain.close()
    # a text run of an older version (its vocabulary has no style words) keeps its plain captions
    old_vocab = tuple(sorted({w for k, n in enumerate(MNIST_LABEL_NAMES) for c in class_prompts(
        MNIST_LABEL_NAMES, torch.tensor([k]), "mnist") for w in split_words(c)} | {"the", "digit", "number"}))
    old = get_preset("tiny", steps=1, cond="text")
    old = old.replace(model=dataclasses.replace(old.model, vocab=old_vocab, max_prompt_len=8))
    trainer = Trainer(old, tmp_path / "old", device="cpu", progress=False)
    assert trainer.loader.dataset.attributes is None
    trainer.close()
