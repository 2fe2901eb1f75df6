"""How good a first stage is: reconstruction PSNR, whether reconstructions keep the class, and its latents.

    report = evaluate_autoencoder(loaded.model, test, root=None, n=1000)

A reconstruction is decode(posterior mean), quantized to uint8 like a saved image. PSNR is per image, with
pixel values in [0, 1] (peak 1), then averaged; the classifier is the evaluation classifier of the dataset
(ddpm.metrics.classifier), on the originals and on their reconstructions; "agreement" is the share of
images whose reconstruction gets the same predicted class as the original. Latent statistics: the standard
deviation of posterior samples (what ``latent_scale`` = 1 / std undoes), the mean posterior standard
deviation exp(logvar / 2) (the noise the KL term keeps in the code), and the KL per latent number.
"""

from __future__ import annotations

from typing import Any

import torch

from ddpm.datasets import ImageDataset, to_uint8
from ddpm.metrics.classifier import classifier_features, load_or_train_classifier
from ddpm.metrics.judge import mean_psnr
from ddpm.pipelines.latent.autoencoder import Autoencoder, encode_moments, sample_posterior

__all__ = ["evaluate_autoencoder", "reconstruct", "autoencoder_rows", "evaluate_stage", "stage_rows"]


@torch.no_grad()
def reconstruct(ae: Autoencoder, images: torch.Tensor, batch_size: int = 500,
                moments: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 reconstructions decode(mean of q(z | x)) of uint8 images [N, C, H, W]; moments: the images'
    encode_moments when they are at hand already."""
    moments = moments if moments is not None else encode_moments(ae, images, batch_size)
    mean = moments[:, :ae.config.latent_channels].to(ae.latent_scale.device)
    return torch.cat([to_uint8(ae.decode(mean[lo:lo + batch_size])).cpu() for lo in range(0, len(mean), batch_size)])


def evaluate_autoencoder(ae: Autoencoder, test: ImageDataset, root=None, n: int = 1000, *, classifier=None,
                         seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """The report's "autoencoder" entry for n test images (a seeded random subset; all when n >= N)."""
    images, labels = test.images, test.labels
    if n < len(images):
        pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n].sort().values
        images, labels = images[pick], labels[pick] if labels is not None else None
    moments = encode_moments(ae, images)
    rec = reconstruct(ae, images, moments=moments)
    mean, logvar = moments.chunk(2, dim=1)
    z = sample_posterior(moments, torch.Generator().manual_seed(seed))
    report = {
        "n": len(images),
        "psnr": mean_psnr(rec, images),
        "l1": float((rec.double() - images.double()).abs().mean() / 127.5),  # in units of the [-1, 1] scale
        "latent_shape": list(ae.config.latent_shape),
        "latent_std": float(z.double().std()),
        "latent_scale": float(ae.latent_scale),
        "scaled_latent_std": float((z * ae.latent_scale).double().std()),
        "posterior_std": float((0.5 * logvar).exp().mean()),
        "kl_per_latent": float((0.5 * (mean.square() + logvar.exp() - 1 - logvar)).mean()),
        "kl_weight": ae.config.kl_weight,
    }
    try:
        clf, _ = load_or_train_classifier(classifier, test.name, root=root, progress=progress)
    except ValueError as e:  # a dataset without an evaluation classifier
        report["classifier"] = {"available": False, "message": str(e)}
        return report
    pred_orig = classifier_features(clf, images)[1].argmax(1)
    pred_rec = classifier_features(clf, rec)[1].argmax(1)
    report["classifier"] = {
        "available": True,
        "accuracy_originals": float((pred_orig == labels).double().mean()) if labels is not None else None,
        "accuracy_reconstructions": float((pred_rec == labels).double().mean()) if labels is not None else None,
        "agreement": float((pred_orig == pred_rec).double().mean()),
    }
    return report


def autoencoder_rows(report: dict[str, Any] | None) -> list[tuple[str, str]]:
    """Rows of the evaluate table for an autoencoder's report entry."""
    if not report:
        return []
    rows = [("reconstructions", f"{report['n']} test images, decode(posterior mean)"),
            ("  PSNR", f"{report['psnr']:.2f} dB"),
            ("  mean |error| (of 2)", f"{report['l1']:.4f}"),
            ("latents", f"{'x'.join(map(str, report['latent_shape']))}, std {report['latent_std']:.3f} -> "
                        f"scale {report['latent_scale']:.4f} (scaled std {report['scaled_latent_std']:.3f})"),
            ("  posterior std (mean)", f"{report['posterior_std']:.4f}"),
            ("  KL per latent number", f"{report['kl_per_latent']:.3f} nats (weight {report['kl_weight']:g})")]
    c = report.get("classifier") or {}
    if c.get("available") and c.get("accuracy_originals") is not None:
        rows += [("classifier accuracy", f"originals {c['accuracy_originals']:.4f}, reconstructions "
                                         f"{c['accuracy_reconstructions']:.4f} (same class {c['agreement']:.4f})")]
    elif c:
        rows.append(("classifier", c.get("message", "n/a")))
    return rows


def evaluate_stage(loaded, test, root, *, n_samples: int, classifier, seed: int, progress: bool, **_) -> dict[str, Any]:
    """evaluate --run on an autoencoder: its reconstructions of n_samples test images (0: all), not samples."""
    return {"autoencoder": evaluate_autoencoder(loaded.model, test, root, n=n_samples or len(test),
                                                classifier=classifier, seed=seed, progress=progress)}


def stage_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    return autoencoder_rows(report.get("autoencoder"))
