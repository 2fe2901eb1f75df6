"""Evaluate a trained run: bits/dim under the variational bound, and the quality of its samples.

    python -m ddpm evaluate --run runs/mnist          # writes runs/mnist/eval.json and prints a table

Two families of numbers:

- **Bits/dim** of test images under the variational bound of Ho et al. (Eq. 5), split into its terms:
  the prior L_T, the decoder L_0 and the KL terms L_{t-1} summed over ranges of t. The bound needs one
  network evaluation per image and timestep (T = 1000 of them per image), so it is measured on a small
  subset of the test set; ``bits_per_dim_dataset`` packs (image, t) pairs into full batches so that the
  cost is T * n / batch_size forward passes whatever n is.
- **Sample quality** for MNIST-like data (MNIST, Fashion-MNIST): a small CNN classifier, trained once on
  the training set and cached under ``data/classifiers/<dataset>.pt``, judges generated images. The
  *conditional accuracy* asks: does a sample generated for class c get classified as c? The *Frechet
  distance* compares the Gaussians fitted to the classifier's penultimate-layer features of generated
  and test images; next to it stands the real-data floor, the same distance between as many training
  images and the test set. This is NOT the Inception FID of the literature: its values are not
  comparable with published FID numbers, only with each other. For CIFAR-10, the standard Inception FID
  is computed when pytorch-fid (with its weights already downloaded) is installed; otherwise a message
  says so.

Frechet distance (Dowson & Landau 1982; Heusel et al. 2017) between N(mu1, S1) and N(mu2, S2):

    d^2 = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)),

computed in float64 with a symmetric eigendecomposition (no scipy).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddpm.checkpoints import CheckpointError, LoadedRun, load_run
from ddpm.datasets import DEFAULT_ROOT, ImageDataset, load_dataset, to_float, to_uint8
from ddpm.diffusion import GaussianDiffusion
from ddpm.samplers import SAMPLERS, sample
from ddpm.training import condition_for_labels

__all__ = ["bits_per_dim_dataset", "SmallCNN", "train_classifier", "load_or_train_classifier",
           "classifier_path", "classifier_features", "feature_statistics", "frechet_distance",
           "conditional_accuracy", "generate_samples", "inception_fid", "evaluate_run", "format_report",
           "add_arguments", "cli", "CLASSIFIER_DATASETS", "NUM_T_RANGES"]

CLASSIFIER_DATASETS = ("mnist", "fashion-mnist")  # 1-channel 28x28 data the small CNN is made for
NUM_T_RANGES = 10  # the KL terms are reported summed over this many ranges of t
CLASSIFIER_FORMAT = 1
FLOOR_SUBSETS = 5  # the real-data floor is averaged over this many disjoint sets of training images
FRECHET_NOTE = ("Frechet distance between features of this project's small classifier (penultimate layer); "
                "NOT the Inception FID of the literature and not comparable with published FID numbers")


# ------------------------------------------------------------------ bits/dim
def _images_float(images: ImageDataset | Tensor) -> Tensor:
    """uint8 [N, C, H, W] (or an ImageDataset) -> float32 in [-1, 1]; float tensors pass through."""
    if isinstance(images, ImageDataset):
        images = images.images
    return to_float(images) if images.dtype == torch.uint8 else images.float()


def _select(cond: Any, idx: Tensor):
    """The conditions of the images idx: a tensor is indexed, a list of prompts picked, None stays None."""
    if cond is None:
        return None
    if isinstance(cond, Tensor):
        return cond[idx.to(cond.device)]
    return [cond[i] for i in idx.tolist()]


def _t_plan(T: int, n: int, timesteps: int | None, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Which timesteps to evaluate for each image, and each one's weight in the sum over t.

    All T (weight 1) by default. With ``timesteps = k < T``: t = 0 (the decoder, always exact) plus one t
    drawn uniformly from each of k - 1 equal strata of 1..T-1, weighted by its stratum's size: an unbiased,
    stratified estimate of the sum of the KL terms at k/T of the cost. Returns t and weights, both [n, k].
    """
    if timesteps is None or timesteps >= T:
        return torch.arange(T).expand(n, T), torch.ones(n, T, dtype=torch.float64)
    if timesteps < 2:
        raise ValueError(f"the bound needs at least 2 timesteps per image (t = 0 and one more), "
                         f"got {timesteps}")
    edges = torch.linspace(1, T, timesteps).round().long()  # k - 1 strata [edges[j], edges[j + 1])
    lo, size = edges[:-1], edges[1:] - edges[:-1]
    keep = size > 0
    lo, size = lo[keep], size[keep]
    u = torch.rand(n, len(lo), generator=generator, dtype=torch.float64)
    t = lo + (u * size).long().clamp(max=size - 1)
    t = torch.cat([torch.zeros(n, 1, dtype=torch.long), t], dim=1)
    w = torch.cat([torch.ones(n, 1, dtype=torch.float64), size.double().expand(n, -1)], dim=1)
    return t, w


def _t_ranges(T: int, parts: int = NUM_T_RANGES) -> list[tuple[int, int]]:
    """Index ranges [a, b) splitting the KL terms 1..T-1 into ``parts`` ranges (paper's t = a+1..b)."""
    edges = sorted({max(1, round(i * T / parts)) for i in range(parts + 1)})  # e.g. 1, 100, 200, ..., 1000
    return [(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True)]


@torch.no_grad()
def bits_per_dim_dataset(model, diffusion: GaussianDiffusion, dataset: ImageDataset | Tensor,
                         n: int | None = 64, batch_size: int = 64, cond: Any = None, *,
                         timesteps: int | None = None, seed: int = 0, variance: str = "fixed_large",
                         clip_denoised: bool = True, progress: bool = False) -> dict[str, Any]:
    r"""The variational bound (Ho et al. Eq. 5) on -log2 p(x0) per dimension, over n test images.

        L = L_T + sum_{t=2..T} L_{t-1} + L_0
          = KL(q(x_T|x0) || N(0, I)) + sum_t KL(q(x_{t-1}|x_t, x0) || p(x_{t-1}|x_t)) - log p(x0|x1),

    the same terms as ``GaussianDiffusion.bits_per_dim`` (its ``vb_term_bpd`` and ``prior_bpd``), but
    with the (image, t) pairs packed into batches of ``batch_size``: for n = 16 images and batch 128, one
    forward pass evaluates 8 timesteps of all 16 images. The cost is n * T / batch_size forward passes
    (T per image: minutes for 64 MNIST images on a laptop CPU). With all T steps and batch_size a multiple
    of n, the noise draws are exactly those of ``diffusion.bits_per_dim`` with a generator seeded ``seed``.

    Args:
        model: callable model(x_t, t, cond) (put a network in eval mode first: no condition dropout).
        dataset: an ImageDataset, uint8 images [N, C, H, W], or floats in [-1, 1].
        n: how many images (a seeded random subset; None or >= N: all of them).
        cond: None (the null condition: the unconditional bound), "labels" (the dataset's labels: the bound
            on -log p(x0 | y)), or one condition per image (tensor [N] or list of N prompts).
        timesteps: None for all T; k < T for a stratified estimate of the sum over t (see ``_t_plan``).
        variance: reverse-process variance, "fixed_large" (as in bits_per_dim) or "fixed_small".

    Returns a dict of floats (bits/dim, mean over images): bpd, bpd_stderr, prior (L_T), decoder (L_0),
    kl (the sum of L_1..L_{T-1}), kl_by_range (list of {t_from, t_to (the paper's t, inclusive), bpd}),
    per_t ([T] mean term at each index; L_0 first), and n_images, T, timesteps, forward_passes, seconds.
    """
    start = time.perf_counter()
    x_all = _images_float(dataset)
    if cond == "labels":
        labels = dataset.labels if isinstance(dataset, ImageDataset) else None
        if labels is None:
            raise ValueError("cond='labels' needs an ImageDataset with labels")
        cond = labels
    elif isinstance(cond, str):
        raise ValueError(f"cond must be None, 'labels', a tensor or a list of prompts, got {cond!r}")
    if cond is not None and len(cond) != len(x_all):
        raise ValueError(f"got {len(cond)} conditions for {len(x_all)} images")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    N = len(x_all)
    if N == 0:
        raise ValueError("no images to evaluate")
    cpu_gen = torch.Generator().manual_seed(seed)
    if n is not None and n < N:
        if n < 1:
            raise ValueError(f"n must be positive, got {n}")
        pick = torch.randperm(N, generator=cpu_gen)[:n].sort().values
        x_all, cond = x_all[pick], _select(cond, pick)
    device = diffusion.betas.device
    x0 = x_all.to(device)
    if isinstance(cond, Tensor):
        cond = cond.to(device)
    n, T = len(x0), diffusion.T

    t_plan, weights = _t_plan(T, n, timesteps, cpu_gen)
    k = t_plan.shape[1]
    # t-major order: every image at the first planned step, then the second, ...
    pair_t = t_plan.T.reshape(-1)
    pair_img = torch.arange(n).repeat(k)
    terms = torch.empty(k * n, dtype=torch.float64)
    noise_gen = torch.Generator(device).manual_seed(seed)
    was_training = getattr(model, "training", False)
    if isinstance(model, nn.Module):
        model.eval()
    chunks = range(0, k * n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc=f"bits/dim ({n} images x {k} steps)", leave=False)
    try:
        for lo in chunks:
            idx = pair_img[lo:lo + batch_size]
            t = pair_t[lo:lo + batch_size].to(device)
            xb = x0[idx.to(device)]
            # one draw per run of equal t, shaped like diffusion.bits_per_dim's (same stream when it can be)
            counts = torch.unique_consecutive(t, return_counts=True)[1].tolist()
            noise = torch.cat([torch.randn((c, *xb.shape[1:]), generator=noise_gen, device=device,
                                           dtype=xb.dtype) for c in counts])
            x_t = diffusion.q_sample(xb, t, noise)
            output = model(x_t, diffusion.model_t(t), _select(cond, idx))
            vb = diffusion.vb_term_bpd(output, xb, x_t, t, clip_denoised, variance)
            terms[lo:lo + len(idx)] = vb.double().cpu()
    finally:
        if isinstance(model, nn.Module):
            model.train(was_training)

    terms = terms.view(k, n).T * weights  # [n, k], each weighted by the number of steps it stands for
    full = torch.zeros(n, T, dtype=torch.float64).scatter_add_(1, t_plan.contiguous(), terms)  # [n, T]
    prior = diffusion.prior_bpd(x0).double().cpu()  # [n]
    total = full.sum(dim=1) + prior
    per_t = full.mean(dim=0)
    by_range = [{"t_from": a + 1, "t_to": b, "bpd": float(per_t[a:b].sum())} for a, b in _t_ranges(T)]
    return {
        "bpd": float(total.mean()),
        "bpd_stderr": float(total.std() / math.sqrt(n)) if n > 1 else None,
        "prior": float(prior.mean()),
        "decoder": float(per_t[0]),
        "kl": float(per_t[1:].sum()),
        "kl_by_range": by_range,
        "per_t": [round(float(v), 8) for v in per_t],
        "n_images": n,
        "T": T,
        "timesteps": k,
        "forward_passes": math.ceil(k * n / batch_size),
        "batch_size": batch_size,
        "variance": variance,
        "seconds": round(time.perf_counter() - start, 2),
    }


# ------------------------------------------------------------------ classifier
class SmallCNN(nn.Module):
    """A small classifier for 28x28 digits (any size divisible by 8 works): three conv-ReLU-maxpool
    stages, then a hidden layer whose activations are the features of the Frechet distance.

    x [B, C, H, W] in [-1, 1] -> logits [B, num_classes];  ``features(x)`` -> [B, feature_dim].
    No BatchNorm: it trains as well here and runs several times faster on a loaded 2-core CPU.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10,
                 widths: Sequence[int] = (32, 64, 64), feature_dim: int = 128, dropout: float = 0.2):
        super().__init__()
        self.arch = {"in_channels": in_channels, "image_size": image_size, "num_classes": num_classes,
                     "widths": list(widths), "feature_dim": feature_dim, "dropout": dropout}
        chans = [in_channels, *widths]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1)
                                   for a, b in zip(chans[:-1], chans[1:], strict=True))
        side = image_size
        for _ in widths:
            side //= 2
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


def _batched_forward(classifier: SmallCNN, images: ImageDataset | Tensor, batch_size: int,
                     device) -> tuple[Tensor, Tensor]:
    """(features [N, D], logits [N, K]) in float32 on the CPU, in eval mode, batch by batch."""
    data = images.images if isinstance(images, ImageDataset) else images
    feats, logits = [], []
    was_training = classifier.training
    classifier.eval()
    try:
        with torch.inference_mode():
            for lo in range(0, len(data), batch_size):
                xb = data[lo:lo + batch_size]
                xb = (to_float(xb) if xb.dtype == torch.uint8 else xb.float()).to(device)
                f = classifier.features(xb)
                feats.append(f.float().cpu())
                logits.append(classifier.out(f).float().cpu())
    finally:
        classifier.train(was_training)
    D, K = classifier.hidden.out_features, classifier.out.out_features
    if not feats:
        return torch.empty(0, D), torch.empty(0, K)
    return torch.cat(feats), torch.cat(logits)


def classifier_features(classifier: SmallCNN, images: ImageDataset | Tensor, batch_size: int = 500,
                        device=None) -> tuple[Tensor, Tensor]:
    """Features and logits of images (uint8 [N, C, H, W], floats in [-1, 1], or an ImageDataset).

    Returns (features float32 [N, feature_dim], logits float32 [N, num_classes]), on the CPU.
    """
    device = device if device is not None else next(classifier.parameters()).device
    return _batched_forward(classifier, images, batch_size, device)


def train_classifier(train: ImageDataset, test: ImageDataset | None = None, *, epochs: float = 2.0,
                     batch_size: int = 128, lr: float = 3e-3, seed: int = 0, device="cpu",
                     threads: int | None = 1, progress: bool = False) -> tuple[SmallCNN, dict[str, Any]]:
    """Train a SmallCNN on a labelled ImageDataset (AdamW, one-cycle learning rate, cross-entropy).

    On MNIST, 2 epochs reach about 99.3% test accuracy in about a minute on one CPU core. threads: the
    intra-op threads while training (restored afterwards; None: leave torch's setting). One by default:
    this network's convolutions are too small to gain from a second thread, and on a busy 2-core machine
    two threads were measured 10x slower than one (they wait for each other at every operator).
    Returns (classifier in eval mode, info dict with test_accuracy (None without a test set),
    train_seconds, epochs, steps).
    """
    from ddpm.bench import num_threads

    with num_threads(threads):
        return _train_classifier(train, test, epochs, batch_size, lr, seed, device, progress)


def _train_classifier(train, test, epochs, batch_size, lr, seed, device, progress):
    if train.labels is None:
        raise ValueError(f"the classifier needs labels, and {train!r} has none")
    if epochs <= 0 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be positive, got {epochs}, {batch_size}")
    torch.manual_seed(seed)
    num_classes = max(train.num_classes, int(train.labels.max()) + 1)
    model = SmallCNN(train.channels, train.image_size, num_classes).to(device)
    steps = max(1, int(epochs * len(train) / batch_size))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)
    order, pos = torch.randperm(len(train), generator=gen), 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="training the evaluation classifier", leave=False)
    start = time.perf_counter()
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
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - start
    model.eval()
    accuracy = None
    if test is not None and test.labels is not None:
        _, logits = classifier_features(model, test)
        accuracy = float((logits.argmax(1) == test.labels).float().mean())
    return model, {"test_accuracy": accuracy, "train_seconds": round(seconds, 1), "epochs": epochs,
                   "steps": steps, "batch_size": batch_size, "seed": seed, "train_images": len(train)}


def classifier_path(dataset: str, root: str | os.PathLike | None = None) -> Path:
    """Where the evaluation classifier of a dataset is cached: <data root>/classifiers/<dataset>.pt."""
    return (DEFAULT_ROOT if root is None else Path(root)) / "classifiers" / f"{dataset}.pt"


def _save_classifier(model: SmallCNN, info: dict[str, Any], dataset: str, path: Path) -> None:
    from ddpm.checkpoints import save_atomic

    save_atomic({"format": CLASSIFIER_FORMAT, "kind": "ddpm-eval-classifier", "dataset": dataset,
                 "arch": model.arch, "state_dict": model.state_dict(), "info": info}, path)


def _load_classifier(path: Path, dataset: str | None, device) -> tuple[SmallCNN, dict[str, Any]]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable classifier file ({type(e).__name__}); delete it "
                              f"and it will be trained again") from None
    if not isinstance(ckpt, dict) or ckpt.get("kind") != "ddpm-eval-classifier" \
            or ckpt.get("format") != CLASSIFIER_FORMAT:
        raise CheckpointError(f"{path} is not an evaluation classifier of format {CLASSIFIER_FORMAT}; "
                              f"delete it and it will be trained again")
    if dataset is not None and ckpt["dataset"] != dataset:
        raise CheckpointError(f"{path} is a classifier for {ckpt['dataset']!r}, not {dataset!r}")
    arch = dict(ckpt["arch"])
    model = SmallCNN(**arch)
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


# ------------------------------------------------------------------ Frechet distance
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


# ------------------------------------------------------------------ sampling
def _conditions(loaded: LoadedRun, n: int) -> tuple[Any, Tensor | None]:
    """Balanced conditions for n samples, (cond for the model, class labels [n]): labels for class
    models, the first caption template of each class for text models, nothing for unconditional ones."""
    mode = loaded.cond
    if mode == "none":
        return None, None
    classes = loaded.config.model.num_classes if mode == "class" else len(loaded.label_names)
    if classes < 1:
        raise ValueError(f"{loaded.path} is text-conditioned but stores no class names to build prompts from")
    labels = torch.arange(n) % classes
    return condition_for_labels(mode, labels, loaded.label_names, loaded.config.data.dataset), labels


def generate_samples(loaded: LoadedRun, n: int, *, sampler: str = "ddim", steps: int | None = 50,
                     guidance: float | None = None, seed: int = 0, batch_size: int = 64,
                     progress: bool = False) -> tuple[Tensor, Tensor | None, Any]:
    """n images from a run, class-balanced (0, 1, ..., K-1, 0, 1, ...) for conditional models.

    Returns (uint8 images [n, C, H, W] (quantized like saved images), labels [n] or None, conditions).
    """
    if n < 1 or batch_size < 1:
        raise ValueError(f"n and batch_size must be positive, got {n}, {batch_size}")
    cond, labels = _conditions(loaded, n)
    device = loaded.diffusion.betas.device
    steps = steps if steps is not None else loaded.diffusion.T
    gen = torch.Generator(device).manual_seed(seed)
    out = []
    batches = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=f"sampling {n} images ({sampler}, {steps} steps)", leave=False)
    for lo in batches:
        idx = torch.arange(lo, min(n, lo + batch_size))
        c = _select(cond, idx)
        c = c.to(device) if isinstance(c, Tensor) else c
        x = sample(loaded.model, loaded.diffusion, (len(idx), *loaded.shape), c, sampler=sampler, steps=steps,
                   guidance_scale=guidance if c is not None else None, generator=gen, device=device)
        out.append(to_uint8(x).cpu())
    return torch.cat(out), labels, cond


# ------------------------------------------------------------------ Inception FID
def inception_fid(generated: Tensor, reference: Tensor, device="cpu",
                  batch_size: int = 100) -> dict[str, Any]:
    """Standard FID (Inception-v3 pool3 features, the port of the TF weights), if it can be computed offline.

    Uses pytorch-fid, else torchmetrics (with torch-fidelity), whichever is installed with its weights
    already in torch hub's cache; nothing is downloaded. generated, reference: uint8 [N, 3, H, W].
    Returns {"available": bool, "fid": float (if available), "message": str}.
    """
    import importlib.util

    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    tried = []
    if importlib.util.find_spec("pytorch_fid") is not None:
        from pytorch_fid import inception as pf

        weights = checkpoints / Path(pf.FID_WEIGHTS_URL).name
        if weights.exists():
            net = pf.InceptionV3([pf.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).to(device).eval()

            def feats(images: Tensor) -> Tensor:
                out = []
                with torch.inference_mode():
                    for lo in range(0, len(images), batch_size):
                        x = images[lo:lo + batch_size].to(device).float() / 255.0  # pytorch-fid takes [0, 1]
                        out.append(net(x)[0].flatten(1).double().cpu())
                return torch.cat(out)

            stats = [feature_statistics(feats(images)) for images in (generated, reference)]
            fid = frechet_distance(*stats[0], *stats[1])
            return {"available": True, "fid": fid,
                    "message": f"Inception FID (pytorch-fid, {weights.name}): {len(generated)} samples vs "
                               f"{len(reference)} test images"}
        tried.append(f"pytorch-fid is installed but its weights are not at {weights}")
    if importlib.util.find_spec("torchmetrics") is not None and importlib.util.find_spec("torch_fidelity"):
        weights = checkpoints / "weights-inception-2015-12-05-6726825d.pth"
        if weights.exists():
            from torchmetrics.image.fid import FrechetInceptionDistance

            metric = FrechetInceptionDistance(feature=2048).to(device)
            for images, real in ((reference, True), (generated, False)):
                for lo in range(0, len(images), batch_size):
                    metric.update(images[lo:lo + batch_size].to(device), real=real)  # uint8 in
            return {"available": True, "fid": float(metric.compute()),
                    "message": f"Inception FID (torchmetrics, {weights.name}): {len(generated)} samples vs "
                               f"{len(reference)} test images"}
        tried.append(f"torchmetrics is installed but torch-fidelity's weights are not at {weights}")
    if not tried:
        tried.append("neither pytorch-fid nor torchmetrics (with torch-fidelity) is installed; e.g. pip "
                     "install pytorch-fid, then download its Inception weights once")
    return {"available": False, "message": "standard FID skipped: " + "; ".join(tried)
                                           + " (nothing is downloaded here)"}


# ------------------------------------------------------------------ evaluate a run
def _default_out(path: Path) -> Path:
    """<run_dir>/eval.json for runs/<name>/checkpoint.pt; <name>.eval.json next to an exported <name>.pt."""
    return path.parent / "eval.json" if path.name == "checkpoint.pt" else path.with_suffix(".eval.json")


def evaluate_run(run: str | os.PathLike | LoadedRun, *, n_samples: int = 1000, sampler: str = "ddim",
                 steps: int | None = 50, guidance: float | None = None, bpd_images: int = 64,
                 bpd_batch_size: int = 64, bpd_timesteps: int | None = None, sample_batch_size: int = 64,
                 seed: int = 0, device="cpu", classifier: str | os.PathLike | None = None,
                 data_root: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
                 progress: bool = False) -> dict[str, Any]:
    """Evaluate a trained run and write the report as JSON (default <run_dir>/eval.json).

    bits/dim of ``bpd_images`` test images (0 to skip), with the null condition (the unconditional bound);
    ``n_samples`` samples (0 to skip) judged by the evaluation classifier (MNIST-like data: conditional
    accuracy, Frechet distance and its real-data floor) or by Inception FID (CIFAR-10, when available).
    guidance None means the run's config (train.guidance). Returns the report dict.
    """
    start = time.perf_counter()
    if n_samples < 0 or bpd_images < 0:
        raise ValueError(f"n_samples and bpd_images must be >= 0, got {n_samples}, {bpd_images}")
    if n_samples == 1:
        raise ValueError("n_samples must be 0 (skip) or at least 2 (a covariance needs two samples)")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of: {', '.join(SAMPLERS)}")
    loaded = run if isinstance(run, LoadedRun) else load_run(run, device=device)
    if loaded.config.model_kind != "unet":
        raise ValueError(f"{loaded.path} is a 2D toy model; evaluate works on image models")
    device = loaded.diffusion.betas.device
    dataset = loaded.config.data.dataset
    root = data_root if data_root is not None else loaded.config.data.root
    guidance = guidance if guidance is not None else loaded.config.train.guidance
    report: dict[str, Any] = {
        "run": str(loaded.path), "preset": loaded.config.preset, "dataset": dataset, "step": loaded.step,
        "cond": loaded.cond, "device": str(device), "seed": seed,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "torch": torch.__version__,
    }
    test = load_dataset(dataset, "test", root=root)

    # ---- bits/dim
    report["bits_per_dim"] = None
    if bpd_images:
        bpd = bits_per_dim_dataset(loaded.model, loaded.diffusion, test, n=bpd_images,
                                   batch_size=bpd_batch_size, timesteps=bpd_timesteps, seed=seed,
                                   progress=progress)
        bpd["condition"] = "null (unconditional bound)" if loaded.cond != "none" else "none"
        report["bits_per_dim"] = bpd

    # ---- samples
    report["samples"] = None
    if n_samples:
        t0 = time.perf_counter()
        images, labels, _ = generate_samples(loaded, n_samples, sampler=sampler, steps=steps,
                                             guidance=guidance, seed=seed, batch_size=sample_batch_size,
                                             progress=progress)
        report["samples"] = {"n": n_samples, "sampler": sampler,
                             "steps": steps if steps is not None else loaded.diffusion.T,
                             "guidance": guidance if labels is not None else None,
                             "seconds": round(time.perf_counter() - t0, 1)}
        if dataset in CLASSIFIER_DATASETS:
            report["classifier_metrics"] = _classifier_metrics(images, labels, test, dataset, root,
                                                               classifier, seed, progress)
        else:
            report["classifier_metrics"] = {"available": False,
                                            "message": f"no evaluation classifier for {dataset!r} (made for "
                                                       f"{', '.join(CLASSIFIER_DATASETS)})"}
        if dataset == "cifar10":
            report["inception_fid"] = inception_fid(images, test.images, device=device)
        else:
            report["inception_fid"] = {"available": False,
                                       "message": f"Inception FID is for natural RGB images (CIFAR-10), "
                                                  f"not {dataset!r}"}
    report["seconds"] = round(time.perf_counter() - start, 1)
    path = Path(out) if out is not None else _default_out(loaded.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    report["path"] = str(path)
    return report


def _classifier_metrics(images: Tensor, labels: Tensor | None, test: ImageDataset, dataset: str, root,
                        classifier_file, seed: int, progress: bool) -> dict[str, Any]:
    clf, info = load_or_train_classifier(classifier_file, dataset, root=root, progress=progress)
    train = load_dataset(dataset, "train", root=root)
    n = len(images)
    f_gen, logits = classifier_features(clf, images)
    f_test, _ = classifier_features(clf, test)
    stats_test = feature_statistics(f_test)
    fd = frechet_distance(*feature_statistics(f_gen), *stats_test)
    # the floor: n real training images against the test set, the same n as the samples (the distance
    # estimated from n images is biased upwards, roughly by a constant / n), averaged over disjoint subsets
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed + 1))
    floors = []
    for k in range(max(1, min(FLOOR_SUBSETS, len(train) // n))):
        f_train, _ = classifier_features(clf, train.images[order[k * n:(k + 1) * n]])
        floors.append(frechet_distance(*feature_statistics(f_train), *stats_test))
    floor = sum(floors) / len(floors)
    pred = logits.argmax(dim=1)
    K = logits.shape[1]
    out = {
        "available": True,
        "classifier": {"path": info.get("path"), "test_accuracy": info.get("test_accuracy"),
                       "train_seconds": info.get("train_seconds"), "trained_now": info.get("trained_now")},
        "frechet_distance": fd,
        "frechet_floor": floor,
        "frechet_floor_subsets": floors,
        "frechet_ratio": fd / floor if floor > 0 else None,
        "frechet_note": f"{FRECHET_NOTE}. Floor: {n} random training images vs the {len(test)} test images "
                        f"(the sample size of the generated set, so the same small-sample bias), mean over "
                        f"{len(floors)} disjoint subsets",
        "predicted_class_fraction": [round(float((pred == c).double().mean()), 4) for c in range(K)],
        "conditional_accuracy": None,
        "per_class_accuracy": None,
    }
    if labels is not None:
        acc = conditional_accuracy(logits, labels)
        out["conditional_accuracy"], out["per_class_accuracy"] = acc["accuracy"], acc["per_class"]
    return out


def format_report(report: dict[str, Any]) -> str:
    """A readable table of an evaluate_run report."""
    rows: list[tuple[str, str]] = [
        ("run", f"{report['run']} (preset {report['preset']}, step {report['step']})")]
    bpd = report.get("bits_per_dim")
    if bpd:
        how = "all" if bpd["timesteps"] == bpd["T"] else f"{bpd['timesteps']} stratified"
        err = f" +- {bpd['bpd_stderr']:.4f}" if bpd["bpd_stderr"] is not None else ""
        rows += [("bits/dim (test, bound)", f"{bpd['bpd']:.4f}{err}  "
                                           f"({bpd['n_images']} images, {how} of T={bpd['T']} steps, "
                                           f"{bpd['condition']})"),
                 ("  prior L_T", f"{bpd['prior']:.6f}"),
                 ("  decoder L_0 (t=1)", f"{bpd['decoder']:.4f}"),
                 ("  KL sum L_1..L_T-1", f"{bpd['kl']:.4f}")]
        rows += [(f"    t = {r['t_from']}..{r['t_to']}", f"{r['bpd']:.4f}") for r in bpd["kl_by_range"]]
    s = report.get("samples")
    if s:
        g = f", guidance {s['guidance']}" if s["guidance"] is not None else ""
        rows.append(("samples", f"{s['n']} ({s['sampler']}, {s['steps']} steps{g}) in {s['seconds']:.0f} s"))
        cm = report.get("classifier_metrics") or {}
        if cm.get("available"):
            c = cm["classifier"]
            acc = c["test_accuracy"]
            rows.append(("classifier test accuracy", f"{acc:.4f}" if acc is not None else "n/a"))
            if cm["conditional_accuracy"] is not None:
                rows.append(("conditional accuracy", f"{cm['conditional_accuracy']:.4f}"))
            rows += [("Frechet distance (classifier)", f"{cm['frechet_distance']:.3f}"),
                     ("  real-data floor (train vs test)", f"{cm['frechet_floor']:.3f}"),
                     ("  ratio to the floor", (f"{cm['frechet_ratio']:.2f}x" if cm["frechet_ratio"] else "-")
                      + (f"  (n = {s['n']} < 1000: both dominated by small-sample bias)" if s["n"] < 1000 else ""))]
        elif cm:
            rows.append(("classifier metrics", cm["message"]))
        fid = report.get("inception_fid") or {}
        if fid.get("available"):
            rows.append(("Inception FID", f"{fid['fid']:.2f}"))
        elif report.get("dataset") == "cifar10" and fid:
            rows.append(("Inception FID", fid["message"]))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
    cm = report.get("classifier_metrics") or {}
    if cm.get("available"):
        lines.append("note: the Frechet distance uses a small MNIST-like classifier's features: it is not "
                     "Inception FID and is not comparable with published FID numbers")
    return "\n".join(lines)


# ------------------------------------------------------------------ command line
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", default=None,
                   help="run folder or exported .pt (default: runs/mnist, else the shipped "
                        "data/pretrained/mnist.pt)")
    p.add_argument("--n-samples", type=int, default=1000,
                   help="samples for the sample-quality metrics (0: skip; default 1000)")
    p.add_argument("--sampler", choices=SAMPLERS, default="ddim", help="default: ddim")
    p.add_argument("--steps", type=int, default=None,
                   help="sampling steps (default: 50 for ddim, T for ancestral)")
    p.add_argument("--guidance", type=float, default=None,
                   help="guidance scale (default: the run's train.guidance)")
    p.add_argument("--bpd-images", type=int, default=64,
                   help="test images for bits/dim (default 64; 0: skip). The bound costs T network "
                        "evaluations per image (64 images x 1000 steps is as much work as sampling 64 images "
                        "with the ancestral sampler)")
    p.add_argument("--bpd-batch-size", type=int, default=64,
                   help="(image, t) pairs per forward pass (default 64: on a CPU the cost per image grows "
                        "with the batch once activations leave the cache; use more on a GPU)")
    p.add_argument("--bpd-timesteps", type=int, default=None,
                   help="evaluate only this many timesteps per image (t=1 plus one per stratum of t, "
                        "weighted): an unbiased estimate of the bound at a fraction of the cost "
                        "(default: all T)")
    p.add_argument("--sample-batch-size", type=int, default=64,
                   help="images per sampling batch (default 64)")
    p.add_argument("--classifier", default=None, help="evaluation classifier file (default: "
                                                      "data/classifiers/<dataset>.pt, trained on first use)")
    p.add_argument("--out", default=None, help="JSON report (default: <run>/eval.json)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's choice; 1 is often faster on a busy "
                        "machine)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def cli(args: argparse.Namespace) -> int:
    from ddpm.bench import num_threads
    from ddpm.cli import resolve_run
    from ddpm.training import select_device

    for name in ("steps", "bpd_batch_size", "sample_batch_size", "bpd_timesteps", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")
    device = select_device(args.device)
    steps = args.steps if args.steps is not None else (50 if args.sampler == "ddim" else None)
    with num_threads(args.threads):
        report = evaluate_run(resolve_run(args.run), n_samples=args.n_samples, sampler=args.sampler,
                              steps=steps, guidance=args.guidance, bpd_images=args.bpd_images,
                              bpd_batch_size=args.bpd_batch_size, bpd_timesteps=args.bpd_timesteps,
                              sample_batch_size=args.sample_batch_size, seed=args.seed, device=device,
                              classifier=args.classifier, out=args.out, progress=not args.no_progress)
    print(format_report(report))
    print(f"wrote {report['path']}")
    return 0
