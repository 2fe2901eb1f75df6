"""The evaluation classifier: a small CNN trained once per MNIST-like dataset, cached, and asked two things
about generated images: which class they look like, and their features (for the Frechet distance).

    clf, info = load_or_train_classifier(dataset="mnist")    # data/classifiers/mnist.pt, trained on first use
    features, logits = classifier_features(clf, images)      # uint8 [N, 1, 28, 28] -> [N, 128], [N, 10]
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ddpm._util import eval_mode, num_threads
from ddpm.checkpoints import CheckpointError, read_torch_file, save_atomic
from ddpm.datasets import DEFAULT_ROOT, ImageDataset, load_dataset, to_float

__all__ = ["SmallCNN", "classifier_features", "train_classifier", "classifier_path", "load_or_train_classifier",
           "conditional_accuracy", "CLASSIFIER_DATASETS"]

CLASSIFIER_DATASETS = ("mnist", "fashion-mnist")  # 1-channel 28x28 data the small CNN is made for
CLASSIFIER_FORMAT = 1
CLASSIFIER_KIND = "ddpm-eval-classifier"


class SmallCNN(nn.Module):
    """A small classifier for 28x28 digits (any size divisible by 8 works): three conv-ReLU-maxpool
    stages, then a hidden layer whose activations are the features of the Frechet distance.

    x [B, C, H, W] in [-1, 1] -> logits [B, num_classes];  ``features(x)`` -> [B, feature_dim].
    No BatchNorm: a network this shallow trains well without it, and each batch costs less on a CPU.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10,
                 widths: Sequence[int] = (32, 64, 64), feature_dim: int = 128, dropout: float = 0.2):
        super().__init__()
        self.arch = {"in_channels": in_channels, "image_size": image_size, "num_classes": num_classes,
                     "widths": list(widths), "feature_dim": feature_dim, "dropout": dropout}
        chans = [in_channels, *widths]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1)
                                   for a, b in zip(chans[:-1], chans[1:], strict=True))
        side = image_size // 2 ** len(widths)
        if side < 1:
            raise ValueError(f"image_size {image_size} is too small for {len(widths)} pooling stages")
        self.hidden = nn.Linear(widths[-1] * side * side, feature_dim)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> the hidden layer's activations [B, feature_dim] (after ReLU)."""
        for conv in self.convs:
            x = F.max_pool2d(F.relu(conv(x)), 2)
        return F.relu(self.hidden(x.flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.dropout(self.features(x)))


def classifier_features(classifier: SmallCNN, images: ImageDataset | Tensor, batch_size: int = 500,
                        device=None) -> tuple[Tensor, Tensor]:
    """Features and logits of images (uint8 [N, C, H, W], floats in [-1, 1], or an ImageDataset), batch by
    batch in eval mode. Returns (features float32 [N, feature_dim], logits float32 [N, num_classes]) on the CPU.
    """
    device = device if device is not None else next(classifier.parameters()).device
    data = images.images if isinstance(images, ImageDataset) else images
    feats = [torch.empty(0, classifier.hidden.out_features)]
    logits = [torch.empty(0, classifier.out.out_features)]
    with eval_mode(classifier), torch.inference_mode():
        for lo in range(0, len(data), batch_size):
            xb = data[lo:lo + batch_size]
            xb = to_float(xb).to(device)
            f = classifier.features(xb)
            feats.append(f.float().cpu())
            logits.append(classifier.out(f).float().cpu())
    return torch.cat(feats), torch.cat(logits)


# ------------------------------------------------------------------ training
def train_classifier(train: ImageDataset, test: ImageDataset | None = None, *, epochs: float = 2.0,
                     batch_size: int = 128, lr: float = 3e-3, seed: int = 0, device="cpu",
                     threads: int | None = 1, progress: bool = False) -> tuple[SmallCNN, dict[str, Any]]:
    """Train a SmallCNN on a labelled ImageDataset (AdamW, one-cycle learning rate, cross-entropy).

    threads: the intra-op threads while training (restored afterwards; None: leave torch's setting). One
    by default: this network's convolutions are too small to gain from a second thread, and on a busy
    machine threads wait for each other at every operator.
    Returns (classifier in eval mode, info dict with test_accuracy (None without a test set),
    train_seconds, epochs, steps, batch_size, seed, train_images).
    """
    if train.labels is None:
        raise ValueError(f"the classifier needs labels, and {train!r} has none")
    if epochs <= 0 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be positive, got {epochs}, {batch_size}")
    with num_threads(threads):
        torch.manual_seed(seed)
        num_classes = max(train.num_classes, int(train.labels.max()) + 1)
        model = SmallCNN(train.channels, train.image_size, num_classes).to(device)
        steps = max(1, int(epochs * len(train) / batch_size))
        start = time.perf_counter()
        _fit(model, train, steps, batch_size, lr, seed, device, progress)
        seconds = time.perf_counter() - start
        model.eval()
        accuracy = None
        if test is not None and test.labels is not None:
            _, logits = classifier_features(model, test)
            accuracy = float((logits.argmax(1) == test.labels).float().mean())
    return model, {"test_accuracy": accuracy, "train_seconds": round(seconds, 1), "epochs": epochs,
                   "steps": steps, "batch_size": batch_size, "seed": seed, "train_images": len(train)}


def _fit(model: SmallCNN, train: ImageDataset, steps: int, batch_size: int, lr: float, seed: int, device,
         progress: bool) -> None:
    """``steps`` optimizer steps on batches of a seeded order of the images, reshuffled when used up."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)
    order, pos = torch.randperm(len(train), generator=gen), 0
    bar = tqdm(total=steps, desc="training the evaluation classifier", leave=False, disable=not progress)
    model.train()
    for _ in range(steps):
        if pos + batch_size > len(order):
            order, pos = torch.randperm(len(train), generator=gen), 0
        idx = order[pos:pos + batch_size]
        pos += batch_size
        x = to_float(train.images[idx]).to(device)
        loss = F.cross_entropy(model(x), train.labels[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.update(1)
        if progress:
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()


# ------------------------------------------------------------------ the cached classifier
def classifier_path(dataset: str, root: str | os.PathLike | None = None) -> Path:
    """Where the evaluation classifier of a dataset is cached: <data root>/classifiers/<dataset>.pt."""
    return (DEFAULT_ROOT if root is None else Path(root)) / "classifiers" / f"{dataset}.pt"


def _save_classifier(model: SmallCNN, info: dict[str, Any], dataset: str, path: Path) -> None:
    save_atomic({"format": CLASSIFIER_FORMAT, "kind": CLASSIFIER_KIND, "dataset": dataset,
                 "arch": model.arch, "state_dict": model.state_dict(), "info": info}, path)


def _load_classifier(path: Path, dataset: str | None, device) -> tuple[SmallCNN, dict[str, Any]]:
    ckpt = read_torch_file(path, what="classifier file (delete it and it will be trained again)")
    if not isinstance(ckpt, dict) or ckpt.get("kind") != CLASSIFIER_KIND or ckpt.get("format") != CLASSIFIER_FORMAT:
        raise CheckpointError(f"{path} is not an evaluation classifier of format {CLASSIFIER_FORMAT}; "
                              f"delete it and it will be trained again")
    if dataset is not None and ckpt["dataset"] != dataset:
        raise CheckpointError(f"{path} is a classifier for {ckpt['dataset']!r}, not {dataset!r}")
    model = SmallCNN(**dict(ckpt["arch"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval(), {**ckpt["info"], "dataset": ckpt["dataset"], "path": str(path)}


def load_or_train_classifier(path: str | os.PathLike | None = None, dataset: str = "mnist", *,
                             root: str | os.PathLike | None = None, device="cpu", progress: bool = False,
                             retrain: bool = False, **train_kwargs) -> tuple[SmallCNN, dict[str, Any]]:
    """The cached evaluation classifier of a dataset, trained on its training set first if there is none.

    path: the cache file (default ``classifier_path(dataset, root)``, i.e. data/classifiers/<dataset>.pt),
    a weights_only-loadable dict {format, kind, dataset, arch, state_dict, info (test_accuracy, ...)}.
    Returns (classifier in eval mode on ``device``, info dict with test_accuracy, train_seconds, path,
    trained_now).
    """
    path = Path(path) if path is not None else classifier_path(dataset, root)
    if path.exists() and not retrain:
        model, info = _load_classifier(path, dataset, device)
        return model, {**info, "trained_now": False}
    if dataset not in CLASSIFIER_DATASETS:
        raise ValueError(f"the evaluation classifier is made for {', '.join(CLASSIFIER_DATASETS)}; "
                         f"got {dataset!r}")
    train = load_dataset(dataset, "train", root=root)
    test = load_dataset(dataset, "test", root=root)
    model, info = train_classifier(train, test, device=device, progress=progress, **train_kwargs)
    _save_classifier(model, info, dataset, path)
    return model, {**info, "dataset": dataset, "path": str(path), "trained_now": True}


def conditional_accuracy(logits: Tensor, labels: Tensor) -> dict[str, Any]:
    """How often the classifier's prediction equals the class a sample was generated for.

    logits [N, K], labels [N] -> {"accuracy": float, "per_class": [K floats or None for absent classes]}.
    """
    if len(logits) != len(labels) or len(labels) == 0:
        raise ValueError(f"need as many labels as logits (> 0), got {len(labels)} and {len(logits)}")
    pred, labels = logits.argmax(dim=1), labels.to(logits.device).long()
    hit = (pred == labels).double()
    per_class = []
    for c in range(logits.shape[1]):
        mask = labels == c
        per_class.append(float(hit[mask].mean()) if bool(mask.any()) else None)
    return {"accuracy": float(hit.mean()), "per_class": per_class}
