"""Latent diffusion: the autoencoder's loss and scale, the loader's cached latents, and a latent run composed of
the same trainer, checkpoints, samplers and CLI (tiny networks, a few steps)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from ddpm.checkpoints import CheckpointError, load_run, weights_fingerprint
from ddpm.config import Config
from ddpm.datasets import BatchLoader, to_float
from ddpm.exports import export_model
from ddpm.metrics.judge import psnr
from ddpm.pipelines.latent.autoencoder import Autoencoder, AutoencoderConfig, encode_moments, measure_latent_scale
from ddpm.pipelines.latent.evaluate import evaluate_autoencoder, reconstruct
from ddpm.presets import get_preset
from ddpm.runlog import RunLog
from ddpm.training import Trainer, TrainingError

ROOT = Path(__file__).resolve().parents[3]
TINY_AE = dict(ch=8, num_groups=4)
TINY_LATENT = dict(ch=16, num_res_blocks=1, num_groups=4, batch_size=16, sample_steps=3, ckpt_every=0)


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory, digits):
    run = tmp_path_factory.mktemp("ae") / "ae"
    config = get_preset("mnist-autoencoder", steps=6, batch_size=16, ckpt_every=0, **TINY_AE)
    Trainer(config, run, device="cpu", progress=False, dataset=digits).fit(final_samples=False)
    return run


@pytest.fixture(scope="module")
def latent_run(tmp_path_factory, ae_run, digits):
    run = tmp_path_factory.mktemp("latent") / "latent"
    config = get_preset("mnist-latent-class", steps=3, autoencoder=str(ae_run), **TINY_LATENT)
    Trainer(config, run, device="cpu", progress=False, dataset=digits).fit()
    return run


def test_the_autoencoder_has_factor_4_and_its_loss_is_l1_plus_weighted_kl():
    torch.manual_seed(0)
    ae = Autoencoder(AutoencoderConfig(kl_weight=0.01, **TINY_AE))
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    mean, logvar = ae.encode(x)
    assert mean.shape == (3, 4, 7, 7) and ae.config.latent_shape == (4, 7, 7)
    terms = ae.loss_terms(x, generator=torch.Generator().manual_seed(5))
    # an independent formulation: torch.distributions' KL, and the same posterior sample by hand
    kl = kl_divergence(Normal(mean, (0.5 * logvar).exp()), Normal(0.0, 1.0)).flatten(1).sum(1)
    torch.testing.assert_close(terms["kl"], kl, rtol=1e-5, atol=1e-4)
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(5))
    recon = (ae.decode(mean + (0.5 * logvar).exp() * eps) - x).abs().flatten(1).sum(1)
    torch.testing.assert_close(terms["recon"], recon)
    torch.manual_seed(1)
    loss = ae(x)
    torch.manual_seed(1)
    t = ae.loss_terms(x)
    torch.testing.assert_close(loss, t["recon"] + 0.01 * t["kl"])


def test_the_latent_scale_gives_unit_variance_and_from_latents_inverts_to_latents():
    torch.manual_seed(0)
    ae = Autoencoder(AutoencoderConfig(**TINY_AE)).eval()
    images = (torch.rand(64, 1, 28, 28) * 255).to(torch.uint8)
    scale = measure_latent_scale(ae, images, seed=3)
    moments = encode_moments(ae, images, batch_size=10)  # batching does not change the moments
    torch.testing.assert_close(moments, encode_moments(ae, images, batch_size=64))
    mean, logvar = moments.chunk(2, dim=1)
    z = mean + (0.5 * logvar).exp() * torch.randn(mean.shape, generator=torch.Generator().manual_seed(3))
    assert abs(float((z * scale).std()) - 1.0) < 1e-5
    ae.latent_scale.fill_(scale)
    x = to_float(images[:4])
    with torch.no_grad():
        torch.testing.assert_close(ae.from_latents(ae.to_latents(x, sample=False)), ae.decode(ae.encode(x)[0]))


def test_an_autoencoder_learns_to_reconstruct(digits):
    """A tiny autoencoder overfits 32 digits: PSNR rises well above that of a blank image's."""
    torch.manual_seed(0)
    ae = Autoencoder(AutoencoderConfig(**TINY_AE))
    x = to_float(digits.images[:32])
    blank = psnr(torch.zeros_like(digits.images[:32]), digits.images[:32]).mean()
    opt = torch.optim.Adam(ae.parameters(), lr=3e-3)
    for _ in range(100):
        opt.zero_grad()
        ae(x).mean().backward()
        opt.step()
    ae.eval()
    after = psnr(reconstruct(ae, digits.images[:32]), digits.images[:32]).mean()
    assert after > blank + 6, (float(blank), float(after))


def test_the_loader_serves_encoded_rows_with_their_labels(digits):
    encoded = torch.arange(len(digits), dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 8, 7, 7).contiguous()
    loader = BatchLoader(digits, 32, seed=3, encoded=encoded)
    images = BatchLoader(digits, 32, seed=3)
    (z, y), (x, y2) = next(iter(loader)), next(iter(images))
    index = z[:, 0, 0, 0].long()
    assert torch.equal(y, y2) and torch.equal(digits.labels[index], y)
    torch.testing.assert_close(to_float(digits.images[index]), x)
    with pytest.raises(ValueError, match="one row per image"):
        BatchLoader(digits, 32, encoded=encoded[:10])


def test_a_log_without_timesteps_records_only_the_loss(tmp_path):
    log = RunLog(tmp_path, T=10)
    assert log.record(torch.tensor([1.0, 3.0]), None) == 2.0
    assert float(log.bucket_n.sum()) == 0


def test_an_autoencoder_run_measures_and_stores_its_latent_scale(ae_run, digits):
    loaded = load_run(ae_run)
    assert loaded.config.network == "autoencoder" and loaded.config.kind == "autoencoder"
    expected = measure_latent_scale(loaded.model, digits.images[:2000])
    assert loaded.model.latent_scale.item() == pytest.approx(expected, rel=1e-6) and expected != 1.0
    report = evaluate_autoencoder(loaded.model, digits, n=32, classifier=None)
    assert report["n"] == 32 and math.isfinite(report["psnr"])
    assert report["scaled_latent_std"] == pytest.approx(1.0, abs=0.15)  # measured on other images


def test_a_latent_run_records_its_autoencoder_and_decodes_its_samples(latent_run, ae_run):
    loaded = load_run(latent_run)
    assert loaded.config.stage.autoencoder == str(ae_run)
    assert loaded.config.stage.fingerprint == weights_fingerprint(load_run(ae_run).model.state_dict())
    assert loaded.shape == (4, 7, 7) and loaded.image_shape == (1, 28, 28)
    assert loaded.sampler_options({"threshold": None, "spacing": "uniform"}) == {"threshold": "none",
                                                                                 "spacing": "uniform"}
    z = torch.randn(2, 4, 7, 7)
    x = loaded.decode(z)
    assert x.shape == (2, 1, 28, 28) and x.min() >= -1 and x.max() <= 1
    assert (latent_run / "samples" / "step_000003.png").exists()


def test_cached_and_per_batch_latents_train_alike(tmp_path, ae_run, digits):
    """The cache holds the posterior moments; drawing z from them is the same as encoding every batch."""
    losses = {}
    for cache in (True, False):
        config = get_preset("mnist-latent-class", steps=2, autoencoder=str(ae_run), cache=cache, **TINY_LATENT)
        trainer = Trainer(config, tmp_path / f"c{cache}", device="cpu", progress=False, dataset=digits)
        batches = trainer.loader.forever()
        x, y = next(batches)
        torch.manual_seed(0)
        losses[cache] = trainer.train_step(x, trainer.condition(y))[0]
        trainer.close()
    torch.testing.assert_close(losses[True], losses[False], rtol=1e-4, atol=1e-5)


def test_a_missing_or_different_autoencoder_is_one_line_naming_the_file(tmp_path, latent_run, ae_run, digits):
    config = json.loads((latent_run / "config.json").read_text())
    moved = dict(config, stage={**config["stage"], "autoencoder": str(tmp_path / "nowhere")})
    with pytest.raises(TrainingError, match="nowhere.*missing"):
        Trainer(Config.from_dict(moved), tmp_path / "r1", device="cpu", progress=False, dataset=digits)
    other = tmp_path / "other"
    Trainer(get_preset("mnist-autoencoder", steps=1, batch_size=16, ckpt_every=0, seed=5, **TINY_AE), other,
            device="cpu", progress=False, dataset=digits).fit(final_samples=False)
    swapped = dict(config, stage={**config["stage"], "autoencoder": str(other)})
    with pytest.raises(TrainingError, match="other.*not the one"):
        Trainer(Config.from_dict(swapped), tmp_path / "r2", device="cpu", progress=False, dataset=digits)
    bad = tmp_path / "bad.pt"
    export_model(latent_run, bad)
    ckpt = torch.load(bad, weights_only=True)
    ckpt["config"]["stage"]["autoencoder"] = str(other)
    torch.save(ckpt, bad)
    with pytest.raises(CheckpointError, match="not the one this latent model was trained on"):
        load_run(bad)


def test_an_exported_pair_travels_together_and_the_cli_samples_decoded_digits(tmp_path, latent_run, ae_run):
    ship = tmp_path / "ship"
    ship.mkdir()
    export_model(ae_run, ship / "ae.pt", half=True)  # fp16: the same fingerprint as the fp32 weights
    export_model(latent_run, ship / "latent.pt", half=True, frozen=ship / "ae.pt")
    assert torch.load(ship / "latent.pt", weights_only=True)["config"]["stage"]["autoencoder"] == "ae.pt"
    out = tmp_path / "grid.png"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()  # a relative autoencoder path is found beside the latent model's file
    cmd = [sys.executable, "-m", "ddpm", "sample", "--run", str(ship / "latent.pt"), "--n", "4", "--steps", "3",
           "--class", "3", "--out", str(out), "--trajectory", str(tmp_path / "t.gif")]
    r = subprocess.run(cmd, cwd=elsewhere, capture_output=True, text=True, env={"PYTHONPATH": str(ROOT),
                                                                                 "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    from PIL import Image
    assert Image.open(out).size[0] > 4 * 28  # decoded 28x28 digits, not 7x7 latents
    assert (tmp_path / "t.gif").exists()
    (ship / "ae.pt").unlink()
    r = subprocess.run(cmd, cwd=elsewhere, capture_output=True, text=True, env={"PYTHONPATH": str(ROOT),
                                                                                 "PATH": "/usr/bin:/bin"})
    assert r.returncode != 0 and "ae.pt" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_evaluate_and_visualize_work_on_latent_and_autoencoder_runs(tmp_path, latent_run, ae_run):
    from ddpm.metrics import evaluate_run
    report = evaluate_run(latent_run, n_samples=20, sampler="ddim", steps=3, bpd_images=4, out=tmp_path / "e.json")
    assert report["bits_per_dim"] is None and "latent" in report["bits_per_dim_note"]
    assert 0 <= report["classifier_metrics"]["conditional_accuracy"] <= 1
    report = evaluate_run(ae_run, n_samples=50, out=tmp_path / "a.json")
    assert report["autoencoder"]["n"] == 50 and report["autoencoder"]["classifier"]["available"]
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "ddpm", "visualize", "reverse", "--run", str(latent_run), "--steps", "3",
                        "--n", "2", "--out", str(tmp_path / "figs")], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "figs" / "reverse_ddim3.png").exists() and (tmp_path / "figs" / "reverse_ddim3.gif").exists()
    r = subprocess.run([sys.executable, "-m", "ddpm", "sample", "--run", str(ae_run)], capture_output=True, text=True,
                       env=env)
    assert r.returncode == 2 and "autoencoder" in r.stderr and "Traceback" not in r.stderr


def test_the_latent_benchmark_compares_with_pixel_space_in_one_run():
    from ddpm.pipelines.latent.bench import compare_latent, format_latent_comparison
    r = compare_latent(batch_size=4, n=2, steps=2, repeats=1, train_repeats=1)
    f = r["flops"]
    assert f["latent_unet"] < f["pixel_unet"] / 4  # the issue's goal, from the presets' networks
    assert set(r["train"]) == {"pixel", "latent (cached encoding)", "latent (encoder every batch)", "autoencoder"}
    assert r["train"]["pixel"]["speed_vs_pixel"] == 1.0 and r["sampling"]["pixel"]["speed_vs_pixel"] == 1.0
    assert "latent U-Net" in format_latent_comparison(r)


def test_an_autoencoder_run_resumes_exactly(tmp_path, digits):
    """Stopped at step 2 and resumed, an autoencoder run ends with the weights of an uninterrupted one (the latent
    scale measured when a run stops does not disturb the training)."""
    config = get_preset("mnist-autoencoder", steps=4, batch_size=16, ckpt_every=2, **TINY_AE)
    Trainer(config, tmp_path / "full", device="cpu", progress=False, dataset=digits).fit(final_samples=False)
    Trainer(config, tmp_path / "split", device="cpu", progress=False, dataset=digits).fit(until=2,
                                                                                         final_samples=False)
    Trainer(config, tmp_path / "split", device="cpu", progress=False, dataset=digits,
            resume=True).fit(final_samples=False)
    full, split = load_run(tmp_path / "full"), load_run(tmp_path / "split")
    assert full.step == split.step == 4
    for (name, a), (_, b) in zip(full.model.state_dict().items(), split.model.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_an_export_naming_its_autoencoder_by_a_relative_path_works_from_any_folder(tmp_path, latent_run, ae_run,
                                                                                    monkeypatch):
    (tmp_path / "ae").mkdir()
    export_model(ae_run, tmp_path / "ae" / "ae.pt")
    monkeypatch.chdir(tmp_path)
    export_model(latent_run, "out/latent.pt", frozen="ae/ae.pt")  # relative to the folder it is made in
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    loaded = load_run(tmp_path / "out" / "latent.pt")
    assert loaded.frozen is not None and loaded.config.stage.autoencoder == str(tmp_path / "ae" / "ae.pt")
