"""One entry point by name: ``load_dataset("mnist")``, and what is known about a named dataset without
loading it (its class names)."""

from __future__ import annotations

import os
from pathlib import Path

from ddpm.datasets.base import DEFAULT_ROOT, DatasetError
from ddpm.datasets.cifar10 import CIFAR10_LABEL_NAMES, load_cifar10
from ddpm.datasets.idx import FASHION_MNIST, MNIST_LABEL_NAMES, load_fashion_mnist, load_mnist
from ddpm.datasets.images import ImageDataset

__all__ = ["DATASET_NAMES", "dataset_label_names", "load_dataset"]

DATASET_NAMES = ("mnist", "fashion-mnist", "cifar10")
_ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist", "cifar-10": "cifar10",
            "cifar_10": "cifar10"}
_LABEL_NAMES = {"mnist": MNIST_LABEL_NAMES, "fashion-mnist": FASHION_MNIST.label_names,
                "cifar10": CIFAR10_LABEL_NAMES}


def _canonical(name: str) -> str:
    """The name in DATASET_NAMES that ``name`` means (any case, the aliases above); unknown names pass."""
    return _ALIASES.get(name.lower(), name.lower())


def load_dataset(
    name: str, split: str = "train", root: str | os.PathLike | None = None, download: bool = True
) -> ImageDataset:
    """Load a dataset by name ("mnist", "fashion-mnist", "cifar10"); ``root`` is the data folder
    (default: the repository's ``data/``), MNIST and Fashion-MNIST live in sub-folders of it."""
    key = _canonical(name)
    if key == "fashion-mnist":  # no root: data/fashion-mnist, then Debian's package, then a download
        return load_fashion_mnist(None if root is None else Path(root) / "fashion-mnist", split, download)
    root = DEFAULT_ROOT if root is None else Path(root)
    if key == "mnist":
        return load_mnist(root / "mnist", split, download)
    if key == "cifar10":
        return load_cifar10(root, split, download)
    raise DatasetError(
        f"unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)} "
        f"(or load_image_folder for your own images)"
    )


def dataset_label_names(dataset: str) -> tuple[str, ...]:
    """The class names of a named dataset, known without loading it (for building a text vocabulary)."""
    key = _canonical(dataset)
    if key not in _LABEL_NAMES:
        raise DatasetError(f"no class names for dataset {dataset!r}; known: {', '.join(_LABEL_NAMES)}")
    return _LABEL_NAMES[key]
