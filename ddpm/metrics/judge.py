"""Judging a set of images against the test set, for every kind of model: the evaluation classifier's accuracy and
the Frechet distance of its features with its real-data floor (SampleJudge), PSNR against references, and speckle
(faint bright pixels a sampler leaves on the background): ``speckled`` for any image model's samples, ``speckle``
for a refinement of a low-res input (the cascade)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ddpm.datasets import ImageDataset, load_dataset, to_float
from ddpm.datasets.attributes import is_digit_dataset
from ddpm.metrics.classifier import classifier_features, conditional_accuracy, load_or_train_classifier
from ddpm.metrics.frechet import feature_statistics, frechet_distance, frechet_floors

__all__ = ["SampleJudge", "speckled", "speckled_share", "speckle_report", "stray_pixels", "speckle", "psnr",
           "mean_psnr"]

# A stroke pixel is brighter than STROKE (65% gray in [-1, 1]); a stray pixel is brighter than FAINT (10% gray)
# and farther than NEAR pixels from every stroke pixel; an image with at least STRAY_PIXELS of them is speckled.
# On MNIST's 10,000 test digits 0.50% are (2.58% have one stray pixel: scanning dust); docs/results.md, "Speckle".
STROKE, FAINT, NEAR, STRAY_PIXELS = 0.3, -0.8, 2, 3


class SampleJudge:
    """The evaluation classifier and the test set's feature statistics, loaded once for several sets of images."""

    def __init__(self, dataset: str, test: ImageDataset, root, classifier, n: int, seed: int, progress: bool):
        self.clf, _ = load_or_train_classifier(classifier, dataset, root=root, progress=progress)
        self.stats = feature_statistics(classifier_features(self.clf, test)[0])
        floors = frechet_floors(self.clf, load_dataset(dataset, "train", root=root), n, self.stats, seed)
        self.floor = sum(floors) / len(floors)

    def __call__(self, images: Tensor, labels: Tensor) -> dict[str, float]:
        features, logits = classifier_features(self.clf, images)
        fd = frechet_distance(*feature_statistics(features), *self.stats)
        return {"accuracy": conditional_accuracy(logits, labels)["accuracy"], "frechet": fd,
                "frechet_ratio": fd / self.floor}


def stray_pixels(images: Tensor) -> Tensor:
    """[N] the number of stray pixels of each image (uint8 [N, C, H, W]): brighter than 10% gray and more than 2
    pixels (Chebyshev distance) from every stroke pixel (brighter than 65% gray), the faint dots a sampler can
    leave on a dark background."""
    x = to_float(images)
    near_stroke = F.max_pool2d((x > STROKE).float(), 2 * NEAR + 1, stride=1, padding=NEAR) > 0
    return ((x > FAINT) & ~near_stroke).flatten(1).sum(1)


def speckled(images: Tensor) -> Tensor:
    """[N] bool: which images (uint8 [N, C, H, W], light strokes on a dark background) have background speckle,
    at least STRAY_PIXELS stray pixels (``stray_pixels``)."""
    return stray_pixels(images) >= STRAY_PIXELS


def speckled_share(images: Tensor) -> float:
    """The share of images that are ``speckled``."""
    return float(speckled(images).double().mean())


def speckle_report(images: Tensor, test: ImageDataset) -> dict[str, Any]:
    """evaluate's "speckle": the share of samples that are ``speckled`` beside the real test images' share, for
    handwritten digits (strokes on a clean background); not for clothes or photographs, whose faint texture away
    from bright pixels is real (half of Fashion-MNIST's test images would count as speckled)."""
    if not is_digit_dataset(test):
        return {"available": False, "message": f"speckle is measured on handwritten digits, not {test.name!r}"}
    return {"available": True, "share": speckled_share(images), "real_share": speckled_share(test.images)}


def speckle(images: Tensor, low_res_upsampled: Tensor) -> float:
    """The share of background pixels, far from any stroke of the low-res input (below -0.95 in its bicubic
    upsampling), that a refinement made brighter than 10% gray (> -0.8): the faint noise a sampler can leave
    behind. 0 for real digits. Both arguments uint8 [N, C, H, W]."""
    background = to_float(low_res_upsampled) < -0.95
    return float(((to_float(images) > -0.8) & background).sum() / background.sum().clamp(min=1))


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of uint8 images (peak 255, i.e. 1 for values in [0, 1]); inf for identical images."""
    mse = (a.double() - b.double()).square().flatten(1).mean(1) / 255.0**2
    return 10 * torch.log10(1.0 / mse)


def mean_psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """The mean of ``psnr`` over the images that differ (identical ones have an infinite PSNR); inf if none do."""
    p = psnr(a, b)
    return float(p[torch.isfinite(p)].mean()) if torch.isfinite(p).any() else float("inf")
