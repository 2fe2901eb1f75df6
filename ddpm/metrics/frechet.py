r"""The Frechet distance between two sets of features (Dowson & Landau 1982; Heusel et al. 2017).

Each set is summarized by a Gaussian N(mu, S) fitted to its features; between N(mu1, S1) and N(mu2, S2):

    d^2 = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)),

computed in float64 with symmetric eigendecompositions (no scipy). With the features of this project's
small classifier (``ddpm.metrics.classifier``) it compares generated digits with test digits; with the
Inception-v3 features of the literature (``inception_fid``, when pytorch-fid or torchmetrics is installed
with its weights) it is the standard FID. The two are not comparable with each other.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ddpm.metrics.classifier import classifier_features

__all__ = ["feature_statistics", "frechet_distance", "inception_fid", "frechet_floors", "FLOOR_SUBSETS"]

FLOOR_SUBSETS = 5  # the real-data floor is averaged over this many disjoint sets of training images

TORCH_FIDELITY_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"


def feature_statistics(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean [D] and covariance [D, D] (unbiased, 1/(N-1) as numpy.cov) of features [N, D], in float64."""
    f = features.double()
    if f.dim() != 2 or len(f) < 2:
        raise ValueError(f"need features [N >= 2, D], got shape {tuple(features.shape)}")
    mu = f.mean(dim=0)
    centered = f - mu
    return mu, centered.T @ centered / (len(f) - 1)


def _sqrt_psd(s: Tensor) -> Tensor:
    """Square root of a symmetric positive semi-definite matrix (tiny negative eigenvalues set to 0)."""
    evals, evecs = torch.linalg.eigh((s + s.T) / 2)
    return (evecs * evals.clamp(min=0).sqrt()) @ evecs.T


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    r"""Squared Frechet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2):

        ||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2)).

    tr((S1 S2)^(1/2)) is the sum of the square roots of the eigenvalues of S1 S2, which equal those of the
    symmetric PSD matrix S1^(1/2) S2 S1^(1/2): two symmetric eigendecompositions in float64.
    """
    mu1, mu2 = torch.as_tensor(mu1, dtype=torch.float64), torch.as_tensor(mu2, dtype=torch.float64)
    s1, s2 = torch.as_tensor(sigma1, dtype=torch.float64), torch.as_tensor(sigma2, dtype=torch.float64)
    mu1, mu2, s1, s2 = mu1.reshape(-1), mu2.reshape(-1), s1.reshape(len(mu1), -1), s2.reshape(len(mu2), -1)
    if mu1.shape != mu2.shape or s1.shape != (len(mu1), len(mu1)) or s2.shape != s1.shape:
        raise ValueError(f"shapes do not match: mu {tuple(mu1.shape)}, {tuple(mu2.shape)}; "
                         f"sigma {tuple(s1.shape)}, {tuple(s2.shape)}")
    r1 = _sqrt_psd(s1)
    middle = r1 @ s2 @ r1
    tr_covmean = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    d = (mu1 - mu2).square().sum() + torch.trace(s1) + torch.trace(s2) - 2 * tr_covmean
    return max(float(d), 0.0)


# ------------------------------------------------------------------ Inception FID (optional dependencies)
def inception_fid(generated: Tensor, reference: Tensor, device="cpu", batch_size: int = 100) -> dict[str, Any]:
    """Standard FID (Inception-v3 pool3 features, the port of the TF weights), if it can be computed offline.

    Uses pytorch-fid, else torchmetrics (with torch-fidelity), whichever is installed with its weights
    already in torch hub's cache; nothing is downloaded. generated, reference: uint8 [N, 3, H, W].
    Returns {"available": bool, "fid": float (if available), "message": str}.
    """
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    tried = []
    for backend in (_pytorch_fid, _torchmetrics_fid):
        result = backend(generated, reference, device, batch_size, checkpoints)
        if isinstance(result, dict):
            return result
        if result:
            tried.append(result)
    if not tried:
        tried.append("neither pytorch-fid nor torchmetrics (with torch-fidelity) is installed; e.g. pip "
                     "install pytorch-fid, then download its Inception weights once")
    return {"available": False, "message": "standard FID skipped: " + "; ".join(tried)
                                           + " (nothing is downloaded here)"}


def _found(library: str, generated: Tensor, reference: Tensor, fid: float, weights: Path) -> dict[str, Any]:
    return {"available": True, "fid": fid,
            "message": f"Inception FID ({library}, {weights.name}): {len(generated)} samples vs "
                       f"{len(reference)} test images"}


def _pytorch_fid(generated: Tensor, reference: Tensor, device, batch_size: int,
                 checkpoints: Path) -> dict[str, Any] | str | None:
    """The FID by pytorch-fid's network; a reason (str) if its weights are missing; None if not installed."""
    if importlib.util.find_spec("pytorch_fid") is None:
        return None
    from pytorch_fid import inception as pf  # optional dependency, loaded on demand

    weights = checkpoints / Path(pf.FID_WEIGHTS_URL).name
    if not weights.exists():
        return f"pytorch-fid is installed but its weights are not at {weights}"
    net = pf.InceptionV3([pf.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).to(device).eval()

    def features(images: Tensor) -> Tensor:
        out = []
        with torch.inference_mode():
            for lo in range(0, len(images), batch_size):
                x = images[lo:lo + batch_size].to(device).float() / 255.0  # pytorch-fid takes [0, 1]
                out.append(net(x)[0].flatten(1).double().cpu())
        return torch.cat(out)

    stats = [feature_statistics(features(images)) for images in (generated, reference)]
    return _found("pytorch-fid", generated, reference, frechet_distance(*stats[0], *stats[1]), weights)


def _torchmetrics_fid(generated: Tensor, reference: Tensor, device, batch_size: int,
                      checkpoints: Path) -> dict[str, Any] | str | None:
    """The FID by torchmetrics (torch-fidelity's network); a reason if its weights are missing; None if absent."""
    if importlib.util.find_spec("torchmetrics") is None or not importlib.util.find_spec("torch_fidelity"):
        return None
    weights = checkpoints / TORCH_FIDELITY_WEIGHTS
    if not weights.exists():
        return f"torchmetrics is installed but torch-fidelity's weights are not at {weights}"
    from torchmetrics.image.fid import FrechetInceptionDistance  # optional dependency, loaded on demand

    metric = FrechetInceptionDistance(feature=2048).to(device)
    for images, real in ((reference, True), (generated, False)):
        for lo in range(0, len(images), batch_size):
            metric.update(images[lo:lo + batch_size].to(device), real=real)  # uint8 in
    return _found("torchmetrics", generated, reference, float(metric.compute()), weights)


def frechet_floors(clf, train, n: int, stats_test: tuple[Tensor, Tensor], seed: int) -> list[float]:
    """The real-data floor: n training images against the test set, the same n as the samples (the distance
    estimated from n images is biased upwards, roughly by a constant / n), for disjoint subsets."""
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed + 1))
    floors = []
    for k in range(max(1, min(FLOOR_SUBSETS, len(train) // n))):
        f_train, _ = classifier_features(clf, train.images[order[k * n:(k + 1) * n]])
        floors.append(frechet_distance(*feature_statistics(f_train), *stats_test))
    return floors
