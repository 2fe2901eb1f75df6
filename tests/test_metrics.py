"""Evaluation: the Frechet distance, classifier mechanics, bits/dim packing, evaluate end to end."""

import argparse
import importlib.util
import json
import math

import pytest
import torch

from ddpm.checkpoints import CheckpointError, load_run
from ddpm.cli import evaluate as evaluate_cmd
from ddpm.cli.common import UsageError
from ddpm.datasets import ImageDataset, load_dataset
from ddpm.diffusion import GaussianDiffusion
from ddpm.likelihood import bits_per_dim
from ddpm.metrics import (
    SmallCNN,
    bits_per_dim_dataset,
    classifier_features,
    conditional_accuracy,
    feature_statistics,
    format_report,
    frechet_distance,
    generate_samples,
    inception_fid,
    load_or_train_classifier,
    report_path,
    train_classifier,
)
from ddpm.metrics.classifier import _save_classifier
from ddpm.nn.unet import UNet
from ddpm.presets import get_preset
from ddpm.schedules import make_betas
from ddpm.training import Trainer


def _random_psd(d, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


# ------------------------------------------------------------------ Frechet distance
def test_frechet_identical_is_zero():
    mu, s = torch.randn(16, dtype=torch.float64), _random_psd(16, 0)
    assert frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-8)


def test_frechet_shifted_means_is_squared_distance():
    s = _random_psd(8, 1)
    mu = torch.randn(8, dtype=torch.float64)
    d = torch.linspace(-1, 1, 8, dtype=torch.float64)
    assert frechet_distance(mu, s, mu + d, s) == pytest.approx(float(d.square().sum()), rel=1e-9, abs=1e-9)


def test_frechet_1d_and_diagonal_closed_forms():
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2 with s the standard deviations
    assert frechet_distance(torch.tensor([1.0]), torch.tensor([[4.0]]), torch.tensor([-0.5]),
                            torch.tensor([[9.0]])) == pytest.approx(1.5**2 + (2 - 3) ** 2)
    # diagonal covariances: sum over dimensions of the 1-D formula
    f64 = dict(dtype=torch.float64)
    a, b = torch.tensor([0.5, 2.0, 1.0, 0.01], **f64), torch.tensor([2.0, 0.5, 1.0, 4.0], **f64)
    m1, m2 = torch.tensor([0.0, 1.0, 2.0, 3.0], **f64), torch.tensor([1.0, 1.0, 0.0, 3.0], **f64)
    expected = float((m1 - m2).square().sum() + (a.sqrt() - b.sqrt()).square().sum())
    assert frechet_distance(m1, torch.diag(a), m2, torch.diag(b)) == pytest.approx(expected, rel=1e-9)


def test_frechet_general_case_against_scipy_and_symmetry():
    linalg = pytest.importorskip("scipy.linalg")
    s1, s2 = _random_psd(12, 2), _random_psd(12, 3)
    m1, m2 = torch.zeros(12, dtype=torch.float64), torch.full((12,), 0.3, dtype=torch.float64)
    covmean = linalg.sqrtm((s1 @ s2).numpy()).real
    expected = float((m1 - m2).square().sum() + s1.trace() + s2.trace()) - 2 * covmean.trace()
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(m2, s2, m1, s1) == pytest.approx(expected, rel=1e-8)


def test_frechet_singular_covariances_and_bad_shapes():
    s = torch.diag(torch.tensor([1.0, 0.0, 0.0]))  # rank 1, as with dead ReLU features
    assert frechet_distance(torch.zeros(3), s, torch.zeros(3), s) == pytest.approx(0.0, abs=1e-10)
    with pytest.raises(ValueError, match="shapes do not match"):
        frechet_distance(torch.zeros(3), torch.eye(3), torch.zeros(2), torch.eye(2))


def test_feature_statistics_match_torch_cov():
    f = torch.randn(50, 5)
    mu, sigma = feature_statistics(f)
    assert mu.dtype == sigma.dtype == torch.float64
    assert torch.allclose(sigma, torch.cov(f.double().T)) and torch.allclose(mu, f.double().mean(0))
    with pytest.raises(ValueError):
        feature_statistics(torch.randn(1, 5))


# ------------------------------------------------------------------ classifier mechanics
def _stripes(n, seed=0):
    """Two classes of 28x28 images: a bright top half (0) or a bright bottom half (1), with noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    images = torch.randint(0, 60, (n, 1, 28, 28), generator=g).to(torch.uint8)
    images[labels == 0, :, :14] += 180
    images[labels == 1, :, 14:] += 180
    return ImageDataset(images, labels, ("top", "bottom"), name="stripes")


def test_conditional_accuracy_counts_per_class():
    logits = torch.tensor([[2.0, 0, 0], [0, 3.0, 0], [0, 1.0, 0], [1.0, 0, 0]])
    acc = conditional_accuracy(logits, torch.tensor([0, 1, 0, 0]))
    assert acc["accuracy"] == pytest.approx(0.75)
    assert acc["per_class"] == [pytest.approx(2 / 3), 1.0, None]  # class 2 never asked for
    with pytest.raises(ValueError):
        conditional_accuracy(logits, torch.tensor([0, 1]))


def test_classifier_learns_a_toy_task_and_round_trips(tmp_path):
    train, test = _stripes(256), _stripes(64, seed=1)
    model, info = train_classifier(train, test, epochs=2, batch_size=32, lr=3e-3)
    assert info["test_accuracy"] >= 0.95
    feats, logits = classifier_features(model, test)
    assert feats.shape == (64, model.hidden.out_features) and logits.shape == (64, 2)
    # uint8 and float inputs give the same features
    feats_f, _ = classifier_features(model, test.images.float() / 127.5 - 1)
    assert torch.allclose(feats, feats_f, atol=1e-5)
    path = tmp_path / "classifiers" / "stripes.pt"
    _save_classifier(model, info, "stripes", path)
    assert torch.load(path, weights_only=True)["info"]["test_accuracy"] == info["test_accuracy"]
    loaded, info2 = load_or_train_classifier(path, "stripes")
    assert not info2["trained_now"] and info2["test_accuracy"] == info["test_accuracy"]
    assert torch.equal(classifier_features(loaded, test)[1], logits)
    with pytest.raises(CheckpointError, match="not 'mnist'"):
        load_or_train_classifier(path, "mnist")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="delete it"):
        load_or_train_classifier(bad, "mnist")


def test_small_cnn_other_sizes():
    assert SmallCNN(3, 32, 10)(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="too small"):
        SmallCNN(1, 4)


# ------------------------------------------------------------------ bits/dim
@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    model = UNet.from_preset("tiny", cond="class").eval()
    for p in model.parameters():  # a non-trivial network (the init makes the output exactly 0)
        p.data.add_(0.05 * torch.randn_like(p))
    return model


def _images(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8)


def test_bits_per_dim_dataset_matches_the_diffusion_and_adds_up(tiny_model):
    diffusion = GaussianDiffusion(make_betas("linear", 40))
    images = _images(4)
    x0 = images.float() / 127.5 - 1
    ref = bits_per_dim(tiny_model, diffusion, x0, generator=torch.Generator().manual_seed(5))
    ref_per_t = ref["terms"].double().mean(dim=0)
    first = None
    for batch_size in (4, 7, 160):  # the noise is drawn per column of t: the same whatever the batch
        out = bits_per_dim_dataset(tiny_model, diffusion, images, n=None, batch_size=batch_size, seed=5)
        per_t = torch.tensor(out["per_t"], dtype=torch.float64)
        first = per_t if first is None else first
        assert torch.allclose(per_t, first, rtol=1e-6, atol=1e-9)
        assert torch.allclose(per_t, ref_per_t, rtol=1e-5, atol=1e-7)
        assert out["bpd"] == pytest.approx(float(ref["total"].mean()), rel=1e-5)
        assert out["decoder"] == pytest.approx(float(ref["decoder"].mean()), rel=1e-5)
        assert out["forward_passes"] == math.ceil(4 * 40 / batch_size) and out["batch_size"] == batch_size
    assert out["prior"] + out["decoder"] + out["kl"] == pytest.approx(out["bpd"], rel=1e-9)
    assert sum(r["bpd"] for r in out["kl_by_range"]) == pytest.approx(out["kl"], rel=1e-9)
    assert out["kl_by_range"][0]["t_from"] == 2 and out["kl_by_range"][-1]["t_to"] == 40
    assert len(out["per_t"]) == 40 and out["per_t"][0] == pytest.approx(out["decoder"], rel=1e-6)


def test_bits_per_dim_any_batch_size_subsets_and_strata(tiny_model):
    diffusion = GaussianDiffusion(make_betas("linear", 40))
    data = ImageDataset(_images(6, seed=1), torch.arange(6) % 10, tuple("0123456789"))
    odd = bits_per_dim_dataset(tiny_model, diffusion, data, n=5, batch_size=7, cond="labels")
    assert odd["n_images"] == 5 and odd["forward_passes"] == math.ceil(5 * 40 / 7)
    assert math.isfinite(odd["bpd"])
    # the seeded subset (and its labels) and the stratified t do not depend on the batch size either
    wide = bits_per_dim_dataset(tiny_model, diffusion, data, n=5, batch_size=200, cond="labels")
    assert wide["per_t"] == pytest.approx(odd["per_t"], rel=1e-6, abs=1e-9)
    full = bits_per_dim_dataset(tiny_model, diffusion, data, n=None, batch_size=64)
    est = bits_per_dim_dataset(tiny_model, diffusion, data, n=None, batch_size=64, timesteps=5)
    est3 = bits_per_dim_dataset(tiny_model, diffusion, data, n=None, batch_size=3, timesteps=5)
    assert est3["per_t"] == pytest.approx(est["per_t"], rel=1e-6, abs=1e-9)
    assert est["timesteps"] == 5 and est["forward_passes"] < full["forward_passes"]
    assert est["decoder"] == pytest.approx(full["decoder"], rel=0.2)  # t = 0 is always evaluated
    assert est["bpd"] == pytest.approx(full["bpd"], rel=0.5)  # a (noisy) estimate of the same sum
    assert not tiny_model.training


def test_bits_per_dim_conditions_follow_the_subset(tiny_model):
    diffusion = GaussianDiffusion(make_betas("linear", 30))
    data = ImageDataset(_images(6, seed=2), torch.tensor([3, 1, 4, 1, 5, 9]), tuple("0123456789"))
    by_name = bits_per_dim_dataset(tiny_model, diffusion, data, n=3, cond="labels", seed=1)
    by_tensor = bits_per_dim_dataset(tiny_model, diffusion, data, n=3, cond=data.labels, seed=1)
    assert by_name["per_t"] == by_tensor["per_t"]
    null = bits_per_dim_dataset(tiny_model, diffusion, data, n=3, seed=1)
    assert null["per_t"] != by_name["per_t"]  # the class condition changes the network's output


def test_bits_per_dim_bad_input(tiny_model):
    diffusion = GaussianDiffusion(make_betas("linear", 40))
    with pytest.raises(ValueError, match="labels"):
        bits_per_dim_dataset(tiny_model, diffusion, _images(2), cond="labels")
    with pytest.raises(ValueError, match="batch_size"):
        bits_per_dim_dataset(tiny_model, diffusion, _images(2), batch_size=0)
    with pytest.raises(ValueError, match="at least 2"):
        bits_per_dim_dataset(tiny_model, diffusion, _images(2), timesteps=1)
    with pytest.raises(ValueError, match="conditions for"):
        bits_per_dim_dataset(tiny_model, diffusion, _images(2), cond=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="n must be positive"):
        bits_per_dim_dataset(tiny_model, diffusion, _images(2), n=0)
    with pytest.raises(ValueError, match="'labels'"):
        bits_per_dim_dataset(tiny_model, diffusion, _images(2), cond="label")


# ------------------------------------------------------------------ evaluate end to end
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    Trainer(get_preset("tiny", steps=2, ckpt_every=0), root / "run", device="cpu", progress=False).fit()
    train = load_dataset("mnist", "train").subset(slice(0, 512))
    model, info = train_classifier(train, None, epochs=0.5, batch_size=64)
    _save_classifier(model, info, "mnist", root / "clf.pt")
    return root


EVALUATE = argparse.ArgumentParser(prog="python -m ddpm evaluate")  # what the entry point builds
evaluate_cmd.add_arguments(EVALUATE)


def _evaluate(argv):
    return evaluate_cmd.run(EVALUATE.parse_args(argv))


def test_evaluate_writes_a_report(tiny_run, capsys):
    run = tiny_run / "run"
    assert _evaluate(["--run", str(run), "--n-samples", "20", "--steps", "2", "--bpd-images", "2",
                      "--classifier", str(tiny_run / "clf.pt"), "--no-progress", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "Frechet distance" in out and "not Inception FID" in out and "bits/dim" in out
    report = json.loads((run / "eval.json").read_text())
    assert {"run", "step", "preset", "dataset", "bits_per_dim", "samples", "classifier_metrics",
            "inception_fid"} <= set(report)
    assert "attribute_adherence" not in report  # a class run has no words to follow
    bpd = report["bits_per_dim"]
    assert bpd["n_images"] == 2 and bpd["T"] == 100 and bpd["bpd"] > 0 and len(bpd["kl_by_range"]) == 10
    cm = report["classifier_metrics"]
    assert 0 <= cm["conditional_accuracy"] <= 1 and len(cm["per_class_accuracy"]) == 10
    assert cm["frechet_distance"] > 0 and cm["frechet_floor"] > 0
    assert "NOT the Inception FID" in cm["frechet_note"]
    assert report["samples"]["n"] == 20 and report["samples"]["guidance"] == 2.0
    assert "not Inception FID" in format_report(report)
    # beside the real test digits' share: 0.50% have 3+ stray pixels
    speckle = report["speckle"]
    assert speckle["available"] and 0 <= speckle["share"] <= 1 and speckle["real_share"] == pytest.approx(0.005)
    line = next(line for line in out.splitlines() if line.startswith("speckled samples"))
    assert line.split(None, 2)[2].startswith(f"{speckle['share']:.2%}  (real test images: 0.50%")
    # the per-class line names each class with its own accuracy
    per_class = next(line for line in out.splitlines() if line.strip().startswith("per class"))
    shown = dict(item.rsplit(" ", 1) for item in per_class.split("per class", 1)[1].strip().split(", "))
    expected = {n: f"{a:.2f}" for n, a in zip(report["label_names"], cm["per_class_accuracy"], strict=True)
                if a is not None}
    assert shown == expected and report["label_names"][7] == "seven"
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("eval")) == ["eval.json"]  # no temporaries


def test_evaluate_out_and_skips(tiny_run, tmp_path, capsys):
    out = tmp_path / "reports" / "tiny.json"
    assert _evaluate(["--run", str(tiny_run / "run"), "--n-samples", "0", "--bpd-images", "1", "--bpd-timesteps",
                      "3", "--no-progress", "--device", "cpu", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["samples"] is None and report["bits_per_dim"]["timesteps"] == 3
    assert f"wrote {out}" in capsys.readouterr().out


def test_evaluate_a_text_run_reports_attribute_adherence(tiny_run, capsys):
    run = tiny_run / "text"
    Trainer(get_preset("tiny", steps=2, ckpt_every=0, cond="text"), run, device="cpu", progress=False).fit(
        final_samples=False)
    assert _evaluate(["--run", str(run), "--n-samples", "20", "--steps", "2", "--bpd-images", "0",
                      "--classifier", str(tiny_run / "clf.pt"), "--no-progress", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "attribute adherence" in out and "held-out" in out and "slanted left" in out
    adherence = json.loads((run / "eval.json").read_text())["attribute_adherence"]
    assert adherence["available"] and adherence["n"] == 65 + 10  # one per seen combination, 2 per held-out one
    assert adherence["chance"] == pytest.approx(1 / 3, abs=1e-3)
    for key in ("seen", "held_out"):
        assert 0 <= adherence[key]["share"] <= 1 and 0 <= adherence[key]["base"] <= 1
        assert 0 <= adherence["digit_accuracy"][key] <= 1
    assert len(adherence["words"]) == 7 and adherence["held_out_combinations"][0] == "a handwritten one written thick"


def test_speckle_counts_faint_dots_away_from_the_strokes():
    from ddpm.metrics.judge import speckled, speckled_share, stray_pixels

    test = load_dataset("mnist", "test")
    per_image = stray_pixels(test.images)
    assert speckled_share(test.images) == pytest.approx(0.005)  # 50 of 10,000 digits (scanning dust)
    clean = test.images[per_image == 0][:200].clone()
    assert not speckled(clean).any()
    # faint dots (20% gray) in the top-left corner, where no digit reaches within 2 pixels
    assert clean[:, :, :5, :5].max() == 0
    for n_dots, expected in ((2, False), (3, True)):
        dotted = clean.clone()
        dotted[:, 0, 0, torch.arange(n_dots)] = 51
        assert (stray_pixels(dotted) == n_dots).all() and bool(speckled(dotted).all()) is expected
    # the same dots next to a stroke are part of the digit, not speckle
    y, x = (clean[0, 0] > 166).nonzero()[0].tolist()  # a stroke pixel (65% gray and brighter)
    near = clean[:1].clone()
    near[0, 0, y, max(0, x - 2):x] = 51
    assert stray_pixels(near) == stray_pixels(clean[:1])
    # a quarter of the images with salt noise: a quarter speckled
    noisy = clean[:100].clone()
    noisy[:25, 0, :4, :4] = 40
    assert speckled_share(noisy) == 0.25


def test_speckle_is_judged_on_digits_only():
    from ddpm.metrics.judge import speckle_report as _speckle

    test = load_dataset("mnist", "test")
    assert _speckle(test.images[:10], test)["available"]
    clothes = ImageDataset(test.images[:10], test.labels[:10], tuple(f"c{k}" for k in range(10)), "fashion-mnist",
                           "test")
    assert _speckle(test.images[:10], clothes) == {"available": False, "message": "speckle is measured on "
                                                   "handwritten digits, not 'fashion-mnist'"}


def test_report_path(tmp_path):
    assert report_path(tmp_path / "run") == tmp_path / "run" / "eval.json"
    assert report_path(tmp_path / "run" / "checkpoint.pt") == tmp_path / "run" / "eval.json"
    assert report_path(tmp_path / "mnist.pt") == tmp_path / "mnist.eval.json"


def test_generate_samples_are_class_balanced(tiny_run):
    loaded = load_run(tiny_run / "run")
    images, labels, cond = generate_samples(loaded, 12, steps=2, batch_size=5)
    assert images.dtype == torch.uint8 and images.shape == (12, 1, 28, 28)
    assert labels.tolist() == [i % 10 for i in range(12)] and torch.equal(cond, labels)


def test_evaluate_bad_flags_fail_at_parse_time(capsys):
    for argv, message in ((["--bpd-batch-size", "0"], "expected a positive integer"),
                          (["--n-samples", "-1"], "expected an integer >= 0"),
                          (["--guidance", "nan"], "expected a finite number"),
                          (["--sampler", "euler"], "unknown sampler 'euler'"),
                          (["--steps", "5,0"], "expected a positive integer")):
        with pytest.raises(SystemExit):
            _evaluate(argv)
        assert message in capsys.readouterr().err


def test_evaluate_bad_out_fails_before_any_work(tmp_path, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("evaluate_run started before --out was checked")

    monkeypatch.setattr(evaluate_cmd, "evaluate_run", no_work)
    nothing = str(tmp_path / "nothing")  # no run there: loading it would fail later, with another error
    folder = tmp_path / "report.json"
    folder.mkdir()
    for out, message in ((str(folder), "is a folder"), (str(tmp_path / "report.txt"), "unknown file extension")):
        with pytest.raises(UsageError, match=message) as e:
            _evaluate(["--run", nothing, "--out", out])
        assert "\n" not in str(e.value) and "--out" in str(e.value)


def test_evaluate_bad_input(tiny_run, tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        _evaluate(["--run", str(tmp_path / "nothing"), "--device", "cpu"])
    with pytest.raises(ValueError, match="at least 2"):
        _evaluate(["--run", str(tiny_run / "run"), "--n-samples", "1", "--device", "cpu"])
    with pytest.raises(ValueError, match="at least 2 timesteps"):
        _evaluate(["--run", str(tiny_run / "run"), "--bpd-timesteps", "1", "--device", "cpu"])


def test_inception_fid_says_clearly_when_it_cannot_run(monkeypatch):
    real = importlib.util.find_spec
    missing = ("pytorch_fid", "torchmetrics")
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n in missing else real(n, *a))
    images = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    out = inception_fid(images, images)
    assert out["available"] is False and "pytorch-fid" in out["message"]
    assert "nothing is downloaded" in out["message"]


def test_evaluate_sweep_writes_a_table_a_json_and_a_plot(tiny_run, capsys, monkeypatch):
    """Several samplers and step counts: one row each, with the same samples for ddim and dpmpp-2m at one or
    two steps (DPM-Solver++ is first order there, i.e. DDIM), and model calls doubled by guidance."""
    monkeypatch.chdir(tiny_run)
    run = tiny_run / "run"
    assert _evaluate(["--run", str(run), "--sampler", "ddim,dpmpp-2m", "--steps", "2,4", "--n-samples", "16",
                      "--classifier", str(tiny_run / "clf.pt"), "--no-progress", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    result = json.loads((run / "eval_sweep.json").read_text())
    rows = {(r["sampler"], r["steps"]): r for r in result["rows"]}
    assert set(rows) == {("ddim", 2), ("ddim", 4), ("dpmpp-2m", 2), ("dpmpp-2m", 4)}
    assert rows["ddim", 4]["model_calls"] == 8  # guidance 2: a conditional and an unconditional call per step
    assert rows["ddim", 2]["frechet"] == rows["dpmpp-2m", 2]["frechet"]
    assert rows["ddim", 4]["frechet"] != rows["dpmpp-2m", 4]["frechet"]
    assert (run / "samples" / "quality_vs_steps.png").stat().st_size > 0
    assert "dpmpp-2m" in out and "calls" in out
    with pytest.raises(UsageError, match="one sampler"):
        _evaluate(["--run", str(run), "--sampler", "ddim,dpmpp-2m", "--eta", "0.5", "--no-progress"])
