"""Every shipped model in data/pretrained loads and samples exactly as it did when it was made.

The numbers below were computed before the restructuring of issue 25 (one folder per paper), with fixed seeds:
for each image, the mean, the standard deviation and a position-weighted mean of its pixels (or of an embedding's
coordinates). A change to the process, the samplers, the networks or the loading of old checkpoints that alters
what a shipped model computes moves them far beyond the tolerance (fp32 rounding is about 1e-6).
"""

from pathlib import Path

import pytest
import torch

from ddpm.checkpoints import load_run
from ddpm.datasets import area_downsample, load_dataset, to_float
from ddpm.pipelines.base import Sampling
from ddpm.pipelines.cascade.stage import Refiner
from ddpm.samplers import sample

PRETRAINED = Path(__file__).resolve().parent.parent / "data" / "pretrained"

GOLDEN = {
    "mnist": [-0.38114, -0.62557, 0.66325, 0.50612, 0.02909, 0.00645],
    "mnist-text": [-0.48387, -0.56113, 0.69556, 0.64403, 0.02024, 0.00318],
    "mnist-text-clip": [-0.52642, -0.58372, 0.71117, 0.64961, 0.01718, 0.00743],
    "mnist-latent": [-0.71067, -0.56228, 0.63193, 0.73368, 0.01328, 0.02267],
    "mnist-base14": [-0.73855, -0.62632, 0.51679, 0.61669, 0.00678, 0.0427],
    "mnist-sr28": [-0.78821, -0.69022, 0.51733, 0.6212, 0.01103, 0.01077],
    "mnist-autoencoder": [-0.82083, -0.71858, 0.5063, 0.61414, 0.0098, 0.00907],
    "mnist-autoencoder-f2": [-0.81673, -0.71397, 0.51767, 0.63527, 0.01159, 0.00748],
    "mnist-latent-class-600": [-0.62504, -0.78713, 0.67337, 0.50732, 0.02371, -0.02173],
    "mnist-latent-class-1100": [-0.68651, -0.77065, 0.63004, 0.55698, 0.02083, -0.00219],
    "mnist-latent-class-f2": [-0.40571, -0.33501, 0.61872, 0.6302, -0.00828, -0.01975],
    "mnist-clip": [0.03268, -0.00159, 0.01176, -0.02761, 0.12161, 0.12598, 0.12543, 0.12288, -0.00071, 0.00593,
                   0.01302, 0.0124],
    "mnist-prior": [0.0861, -0.08511, 0.99844, 0.99969, 0.12186, 0.05614],
    "mnist-decoder": [-0.80995, -0.66191, 0.4845, 0.60337, 0.00997, 0.01339],
    # added with issues 29 and 30, computed when they were made
    "mnist-hybrid": [-0.66032, -0.77463, 0.6183, 0.51499, 0.02108, -0.00019],
    "fashion-mnist": [-0.29163, -0.5871, 0.76626, 0.65836, 0.01148, 0.04116],
}


def stats(x: torch.Tensor) -> list[float]:
    x = x.detach().double().reshape(x.shape[0], -1)
    w = torch.linspace(-1, 1, x.shape[1], dtype=torch.float64)
    return torch.cat([x.mean(1), x.std(1), (x * w).mean(1)]).tolist()


def generate(run, cond, decode: bool = True, **options) -> torch.Tensor:
    """Two samples, DDIM with 4 steps, seed 0, guidance 2 for a conditional model (decoded: a latent run's by its
    autoencoder; decode=False: the samples themselves)."""
    x = sample(run.model, run.diffusion, (2, *run.shape), cond, sampler="ddim", steps=4,
               generator=torch.Generator().manual_seed(0), guidance_scale=2.0 if cond is not None else None,
               **run.sampler_options(options))
    return run.decode(x) if decode else x


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    return to_float(load_dataset("mnist", "test").images[:2])


def fingerprint(name: str, digits: torch.Tensor) -> list[float]:
    run = load_run(PRETRAINED / f"{name}.pt")
    if name in ("mnist", "fashion-mnist"):
        return stats(generate(run, torch.tensor([3, 7])))
    if name == "mnist-hybrid":  # the ancestral sampler, respaced: its steps use the learned variance
        x = sample(run.model, run.diffusion, (2, *run.shape), torch.tensor([3, 7]), sampler="ancestral", steps=4,
                   generator=torch.Generator().manual_seed(0), guidance_scale=2.0)
        return stats(x)
    if name in ("mnist-text", "mnist-latent", "mnist-text-clip"):
        return stats(generate(run, ["a thick seven", "a two"]))
    if name == "mnist-base14":
        return stats(generate(run, ["a seven", "a two"]))
    if name == "mnist-sr28":
        refiner = Refiner(run, sampling=Sampling("ddim", 4, None, {"eta": 1.0}))
        refined = refiner(area_downsample(digits, 14), ["a seven", "a two"], torch.Generator().manual_seed(0))
        return stats(refined)
    if name in ("mnist-autoencoder", "mnist-autoencoder-f2"):
        return stats(run.model.reconstruct(digits))
    if name in ("mnist-latent-class-f2", "mnist-latent-class-600", "mnist-latent-class-1100"):
        return stats(generate(run, torch.tensor([3, 7])))
    clip = load_run(PRETRAINED / "mnist-clip.pt").model
    if name == "mnist-clip":
        return stats(torch.cat([clip.encode_image(digits), clip.encode_text(["a seven", "a thick two"])]))
    if name == "mnist-prior":
        return stats(generate(run, clip.encode_text(["a seven", "a thick two"]), decode=False))
    return stats(generate(run, clip.encode_image(digits), eta=1.0))  # the decoder


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_a_shipped_model_samples_as_it_did(name, digits):
    with torch.no_grad():
        got = fingerprint(name, digits)
    assert got == pytest.approx(GOLDEN[name], abs=2e-5), name


def test_every_shipped_model_is_checked():
    assert {p.stem for p in PRETRAINED.glob("*.pt")} == set(GOLDEN)
