"""Style measures of handwritten digits, from their pixels, and the words they earn.

In the manner of Morpho-MNIST (Castro et al. 2019), three things a person would name, measured on each
28x28 digit (ink = pixels >= 128; x to the right, y down):

    thickness  twice the mean distance from an ink pixel to the nearest background pixel (an exact
               Euclidean distance transform), in pixels: a stroke k pixels wide gives about k
    slant      the horizontal shear of the ink, s = -mu_xy / mu_yy from the intensity-weighted second
               central moments: x moves by s per row up, so s > 0 leans to the right (the angle is atan s)
    width      the horizontal extent of the ink after removing that shear (x' = x + s (y - y_bar)), in pixels

(Height barely varies: MNIST digits were scaled into a 20-pixel box.) Each measure is binned by the
terciles of its class in the training set, so a word says "more than usual for this digit": bin 0
(thin / slanted left / narrow), 1 (the middle third), 2 (thick / slanted right / wide). The words
themselves live with the caption grammar (``ddpm.datasets.captions``).

    measure_digits(images)             uint8 [N, 1, H, W] -> float32 [N, 3] (vectorized: MNIST in seconds)
    mnist_measures(split)              the same for a split of MNIST, cached next to the data, verified
    tercile_edges(measures, labels)    float32 [K, 3, 2]: the two tercile edges of each class and measure
    attribute_bins(measures, labels, edges)   int8 [N, 3] in {0, 1, 2}
    with_attributes(dataset)           an MNIST ImageDataset with .attributes set (others unchanged)

The cache (``data/mnist/attributes-<split>.npz`` and a ``.json`` beside it) records the md5 of the
source images file and its own md5; it is recomputed when either does not match or a file is missing,
and written atomically.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ddpm._files import atomic_write, write_text_atomic
from ddpm._util import num_threads
from ddpm.datasets.base import DEFAULT_ROOT, _check_split
from ddpm.datasets.files import _is_verified, _mark_verified, md5_file
from ddpm.datasets.idx import IDX_IMAGES_MAGIC, MNIST, MNIST_LABEL_NAMES, load_mnist
from ddpm.datasets.images import ImageDataset

__all__ = ["ATTRIBUTES", "MIRRORED", "attribute_bins", "idx_md5", "measure_digits", "mnist_edges", "mnist_measures",
           "tercile_edges", "with_attributes"]

ATTRIBUTES = ("thickness", "slant", "width")  # the columns of every measures / bins array
MIRRORED = (ATTRIBUTES.index("slant"),)  # a horizontal flip turns bin b of these into 2 - b
INK = 128  # a pixel is ink from this value on
CACHE_VERSION = 1
_CHUNK = 10_000  # images measured at once (bounds the memory: a few float32 copies of [chunk, 28, 28])


# ---------------------------------------------------------------------------------------------------
# The measures
# ---------------------------------------------------------------------------------------------------


def _column_distance(ink: Tensor) -> Tensor:
    """ink bool [B, H, W] -> float32 [B, H, W]: rows to the nearest background pixel in the same column
    (0 on background; above and below the image counts as background). Two linear scans."""
    rows = ink.permute(1, 0, 2).to(torch.float32)  # [H, B, W]: one row at a time is contiguous
    down, up = torch.empty_like(rows), torch.empty_like(rows)
    run = torch.zeros_like(rows[0])
    for i in range(rows.shape[0]):
        run = (run + 1) * rows[i]
        down[i] = run
    run = torch.zeros_like(rows[0])
    for i in reversed(range(rows.shape[0])):
        run = (run + 1) * rows[i]
        up[i] = run
    return torch.minimum(down, up).permute(1, 0, 2)


def distance_to_background(ink: Tensor) -> Tensor:
    """Exact Euclidean distance transform: ink bool [B, H, W] -> float32 [B, H, W], for each ink pixel the
    distance to the nearest background pixel (0 on background; outside the image counts as background).

    Separable, as in Felzenszwalb & Huttenlocher (2012): g = squared distance within the column, then
    D(i, j) = min_l g(i, l) + (j - l)^2 along the row. The row pass tries offsets |j - l| = 1, 2, ... and
    stops once o^2 exceeds every D found so far: no farther column can be nearer.
    """
    g = torch.nn.functional.pad(_column_distance(ink).square(), (1, 1))  # the columns beside the image: background
    d = g.clone()
    width = g.shape[2]
    for o in range(1, width):
        if d.numel() == 0 or o * o >= d.max():
            break
        d[:, :, o:] = torch.minimum(d[:, :, o:], g[:, :, :-o] + o * o)  # the column o to the left
        d[:, :, :-o] = torch.minimum(d[:, :, :-o], g[:, :, o:] + o * o)  # the column o to the right
    return d[:, :, 1:-1].sqrt()


def _measure_chunk(images: Tensor) -> Tensor:
    """uint8 [B, H, W] -> float32 [B, 3] (thickness, slant, width)."""
    ink = images >= INK
    area = ink.sum((1, 2)).clamp(min=1)
    thickness = 2 * (distance_to_background(ink) * ink).sum((1, 2)) / area
    w = images.to(torch.float32) / 255
    H, W = images.shape[1:]
    ys = torch.arange(H, dtype=torch.float32).view(1, H, 1)
    xs = torch.arange(W, dtype=torch.float32).view(1, 1, W)
    mass = w.sum((1, 2)).clamp(min=1e-6)
    dx = xs - ((w * xs).sum((1, 2)) / mass).view(-1, 1, 1)  # [B, H, W]
    dy = ys - ((w * ys).sum((1, 2)) / mass).view(-1, 1, 1)
    mu_xy, mu_yy = (w * dx * dy).sum((1, 2)) / mass, (w * dy * dy).sum((1, 2)) / mass
    slant = -mu_xy / mu_yy.clamp(min=1e-6)
    x_unslanted = dx + slant.view(-1, 1, 1) * dy
    far = float(H + W) * (1 + slant.abs().max())
    right = torch.where(ink, x_unslanted, -far).amax((1, 2))
    left = torch.where(ink, x_unslanted, far).amin((1, 2))
    width = (right - left + 1).clamp(min=0)
    return torch.stack([thickness, slant, width], dim=1)


def measure_digits(images: Tensor) -> Tensor:
    """Thickness, slant and width of each digit: uint8 [N, 1, H, W] (or [N, H, W]) -> float32 [N, 3]
    (columns in the order of ATTRIBUTES; see the module docstring for the definitions)."""
    if images.dtype != torch.uint8:
        raise TypeError(f"measure_digits expects uint8 images, got {images.dtype}")
    if images.dim() == 4:
        if images.shape[1] != 1:
            raise ValueError(f"measure_digits measures grayscale digits [N, 1, H, W], got {tuple(images.shape)}")
        images = images[:, 0]
    if images.dim() != 3:
        raise ValueError(f"measure_digits expects images [N, 1, H, W] or [N, H, W], got {tuple(images.shape)}")
    with num_threads(1):  # many small tensor ops: one thread is several times faster than two that wait
        chunks = [_measure_chunk(images[lo:lo + _CHUNK]) for lo in range(0, len(images), _CHUNK)]
    return torch.cat(chunks) if chunks else torch.zeros(0, len(ATTRIBUTES))


def tercile_edges(measures: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """The 1/3 and 2/3 quantiles of each measure within each class: [N, 3], [N] -> float32 [K, 3, 2]."""
    labels = torch.as_tensor(labels).long()
    edges = torch.zeros(num_classes, measures.shape[1], 2)
    q = torch.tensor([1 / 3, 2 / 3])
    for k in range(num_classes):
        mine = measures[labels == k]
        if len(mine) == 0:
            raise ValueError(f"no example of class {k} to take terciles from")
        edges[k] = torch.quantile(mine.double(), q.double(), dim=0).T.float()
    return edges


def attribute_bins(measures: Tensor, labels: Tensor, edges: Tensor) -> Tensor:
    """Which tercile of its class each measure falls in: [N, 3], [N], [K, 3, 2] -> int8 [N, 3] in {0, 1, 2}."""
    e = edges[torch.as_tensor(labels).long()]  # [N, 3, 2]
    return ((measures > e[..., 0]).to(torch.int8) + (measures > e[..., 1]).to(torch.int8))


# ---------------------------------------------------------------------------------------------------
# MNIST's measures, cached next to the data
# ---------------------------------------------------------------------------------------------------


def idx_md5(images: Tensor) -> str:
    """md5 of the IDX file these uint8 images [N, 1, H, W] would be stored in (header + pixels): for a whole
    MNIST split, the published md5 of its decompressed images file."""
    n, h, w = images.shape[0], images.shape[-2], images.shape[-1]
    h5 = hashlib.md5(usedforsecurity=False)
    h5.update(np.array([IDX_IMAGES_MAGIC, n, h, w], dtype=">i4").tobytes())
    h5.update(images.contiguous().numpy().tobytes())
    return h5.hexdigest()


def _cache_paths(folder: Path, split: str) -> tuple[Path, Path]:
    return folder / f"attributes-{split}.npz", folder / f"attributes-{split}.json"


def _read_cache(folder: Path, split: str, source_md5: str) -> tuple[Tensor, Tensor] | None:
    """(measures, labels) from a cache that matches its record and the source; None if anything is off."""
    data, record = _cache_paths(folder, split)
    try:
        meta = json.loads(record.read_text())
        ok = (meta.get("version") == CACHE_VERSION and meta.get("source_md5") == source_md5
              and meta.get("measures") == list(ATTRIBUTES))
        if not ok:
            return None
        if not _is_verified(data, meta["md5"]):
            if md5_file(data) != meta["md5"]:
                return None
            _mark_verified(data, meta["md5"])
        with np.load(data, allow_pickle=False) as z:
            return torch.from_numpy(z["measures"].astype(np.float32)), torch.from_numpy(z["labels"].astype(np.int64))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_cache(folder: Path, split: str, source_md5: str, measures: Tensor, labels: Tensor) -> None:
    """The measures and their record, each written atomically (the record last: it vouches for the data)."""
    data, record = _cache_paths(folder, split)
    buffer = io.BytesIO()
    np.savez(buffer, measures=measures.numpy(), labels=labels.numpy().astype(np.uint8))
    try:
        atomic_write(data, lambda f: f.write(buffer.getvalue()))
        meta = {"version": CACHE_VERSION, "measures": list(ATTRIBUTES), "count": len(measures),
                "source": f"{MNIST.name} {split}: {getattr(MNIST, split)[0].filename}", "source_md5": source_md5,
                "md5": md5_file(data)}
        write_text_atomic(record, json.dumps(meta, indent=2) + "\n")
    except OSError:  # a read-only data folder: measure again next time
        pass


def _mnist_folder(root: str | os.PathLike | None) -> Path:
    return (DEFAULT_ROOT if root is None else Path(root)) / "mnist"


def mnist_measures(split: str = "train", root: str | os.PathLike | None = None) -> tuple[Tensor, Tensor]:
    """(measures float32 [N, 3], labels int64 [N]) of an MNIST split, from the verified cache in
    ``<root>/mnist`` (default: the repository's data/), or measured now (a few seconds) and cached."""
    _check_split(split)
    folder = _mnist_folder(root)
    published = getattr(MNIST, split)[0].md5
    cached = _read_cache(folder, split, published)
    if cached is not None:
        return cached
    dataset = load_mnist(folder, split)  # checks the files' md5
    source = idx_md5(dataset.images)
    measures = measure_digits(dataset.images)
    if source == published:
        _write_cache(folder, split, source, measures, dataset.labels)
    return measures, dataset.labels


def mnist_edges(root: str | os.PathLike | None = None) -> Tensor:
    """The per-class tercile edges [10, 3, 2] of MNIST's training digits: what every word is relative to."""
    measures, labels = mnist_measures("train", root)
    return tercile_edges(measures, labels, len(MNIST_LABEL_NAMES))


def is_digit_dataset(dataset: ImageDataset) -> bool:
    """Grayscale 28x28 images labelled with MNIST's ten digits: what the style measures are made for."""
    return (tuple(dataset.label_names) == MNIST_LABEL_NAMES and dataset.labels is not None
            and tuple(dataset.images.shape[1:]) == (1, 28, 28))


def with_attributes(dataset: ImageDataset, root: str | os.PathLike | None = None) -> ImageDataset:
    """The dataset with ``attributes`` int8 [N, 3] (the tercile of each measure within its class, edges from
    MNIST's training set). A whole MNIST split uses the verified cache; other digit images are measured now.
    Datasets that are not MNIST-like digits come back unchanged (no measures are defined for them)."""
    if not is_digit_dataset(dataset):
        return dataset
    measures = None
    if dataset.split in ("train", "test") and len(dataset) == getattr(MNIST, dataset.split)[0].count:
        if idx_md5(dataset.images) == getattr(MNIST, dataset.split)[0].md5:
            measures, _ = mnist_measures(dataset.split, root)
    if measures is None:
        measures = measure_digits(dataset.images)
    bins = attribute_bins(measures, dataset.labels, mnist_edges(root))
    return ImageDataset(dataset.images, dataset.labels, dataset.label_names, dataset.name, dataset.split, bins)
