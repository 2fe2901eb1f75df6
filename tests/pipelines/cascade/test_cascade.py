"""A cascade: area-averaged low-res data, noise conditioning augmentation, the super-resolution U-Net's extra
inputs, guidance with a fixed low-res image, and the two stages composed by the same trainer, samplers,
checkpoints and CLI (tiny networks, a few steps)."""

import argparse
import dataclasses
import json

import pytest
import torch
from PIL import Image

from ddpm.checkpoints import build_diffusion, load_run
from ddpm.cli import main
from ddpm.config import Config
from ddpm.datasets import ImageDataset, area_downsample, bicubic_to, load_dataset, shrink, to_float, upsample
from ddpm.exports import export_model
from ddpm.metrics.judge import psnr
from ddpm.nn.unet import UNet, UNetConfig
from ddpm.pipelines.base import Sampling
from ddpm.pipelines.cascade.cli import load_refiner
from ddpm.pipelines.cascade.evaluate import evaluate_super_res
from ddpm.pipelines.cascade.stage import (
    DEFAULT_AUG_LEVEL,
    REFINE_SAMPLING,
    Refiner,
    SuperResConfig,
    WithLowRes,
    aug_steps,
    check_cascade,
    low_res_input,
    noise_augment,
    shared_options,
    training_model,
)
from ddpm.presets import get_preset
from ddpm.samplers import guided
from ddpm.training import Trainer

TINY = dict(ch=8, num_groups=4, num_res_blocks=1, text_dim=16, text_layers=1, batch_size=16, sample_steps=3,
            ckpt_every=0)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, digits):
    """A tiny text base at 14x14 and a tiny text super-resolution model, a few steps each."""
    folder = tmp_path_factory.mktemp("cascade")
    for preset in ("mnist-base14", "mnist-sr28"):
        config = get_preset(preset, steps=3, **TINY)
        Trainer(config, folder / preset, device="cpu", progress=False, dataset=digits).fit()
    return folder / "mnist-base14", folder / "mnist-sr28"


def _sr_unet(**overrides) -> UNet:
    torch.manual_seed(0)
    net = UNet(UNetConfig(in_channels=1, image_size=28, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                          dropout=0.0, num_groups=4, cond="class", low_res_channels=1, **overrides)).eval()
    for w in net.parameters():  # the zero-initialized layers (every residual branch, the output) would hide inputs
        if w.dim() > 1 and not w.any():
            torch.nn.init.normal_(w, std=0.1)
    return net


def test_shrinking_averages_each_block_and_keeps_labels_and_attributes():
    x = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    ds = ImageDataset(x, torch.tensor([1, 2, 3]), tuple("0123456789"), "mnist", "train",
                      torch.zeros(3, 3, dtype=torch.int8))
    small = shrink(ds, 14)
    blocks = to_float(x).unfold(2, 2, 2).unfold(3, 2, 2).mean(dim=(-1, -2))  # [3, 1, 14, 14]
    assert small.images.shape == (3, 1, 14, 14)
    assert (to_float(small.images) - blocks).abs().max() <= 1 / 127.5 + 1e-6  # uint8 rounding only
    assert torch.equal(small.labels, ds.labels) and torch.equal(small.attributes, ds.attributes)
    assert torch.equal(area_downsample(to_float(x), 28), to_float(x))
    with pytest.raises(ValueError, match="cannot shrink"):
        shrink(small, 28)


def test_speckle_counts_bright_pixels_far_from_the_low_res_strokes(digits):
    from ddpm.metrics.judge import speckle
    x = digits.images[:16]
    upsampled = bicubic_to(shrink(digits.subset(slice(0, 16)), 14).images, 28)
    assert speckle(x, upsampled) == 0.0  # real digits have no ink far from their own strokes
    y = x.clone()
    background = upsampled < 10  # -0.95 in [-1, 1] is 2.55 in uint8
    y[background] = 255
    assert speckle(y, upsampled) == 1.0
    y[background] = 20  # darker than 10% gray (-0.8 in [-1, 1] is 25.5 in uint8): not counted
    assert speckle(y, upsampled) == 0.0


def test_noise_augmentation_is_the_forward_process_after_s_steps():
    diffusion = build_diffusion(get_preset("mnist-sr28"))
    assert aug_steps(0.1, 1000).item() == 100 and aug_steps(0.0, 1000).item() == 0
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        aug_steps(1.5, 1000)
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    s = torch.tensor([0, 1, 300])
    z = noise_augment(diffusion, x, s, torch.Generator().manual_seed(0))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    assert torch.equal(z[0], x[0])  # level 0: the clean image
    expected = diffusion.q_sample(x, torch.tensor([0, 0, 299]), noise)  # index s - 1 is the paper's step s
    assert torch.allclose(z[1:], expected[1:])
    abar = diffusion.alpha_bar[299].item()
    assert abs(expected[2].std().item() - ((abar * x[2].var() + 1 - abar) ** 0.5).item()) < 0.1


def test_training_draws_levels_up_to_aug_max_and_none_without_augmentation():
    config = get_preset("mnist-sr28")
    diffusion = build_diffusion(config)
    x0 = torch.rand(256, 1, 28, 28) * 2 - 1
    torch.manual_seed(0)
    model = training_model(None, diffusion, x0, config.stage)
    assert 0 <= model.aug_s.min() and model.aug_s.max() <= 500 and model.aug_s.float().mean() > 150
    off = training_model(None, diffusion, x0, config.replace(aug_max=0.0).stage)
    assert (off.aug_s == 0).all() and torch.equal(off.low_res, low_res_input(x0, 14))


def test_the_sr_unet_sees_the_low_res_image_and_its_level():
    net = _sr_unet()
    x, t, y = torch.randn(2, 1, 28, 28), torch.tensor([10, 500]), torch.tensor([3, 4])
    low = torch.randn(2, 1, 28, 28)
    out = net(x, t, y, low_res=low, aug_t=torch.tensor([0, 0]))
    assert out.shape == x.shape
    assert not torch.allclose(out, net(x, t, y, low_res=low + 1, aug_t=torch.tensor([0, 0])))
    assert not torch.allclose(out, net(x, t, y, low_res=low, aug_t=torch.tensor([300, 300])))
    with pytest.raises(ValueError, match="needs low_res of shape"):
        net(x, t, y)
    plain = UNet(UNetConfig(in_channels=1, image_size=28, ch=8, ch_mult=(1,), attn_resolutions=(), num_groups=4))
    with pytest.raises(ValueError, match="takes no low-res image"):
        plain(x, t, low_res=low, aug_t=t)


def test_guidance_keeps_the_low_res_image_in_both_calls_stacked_or_not():
    net = _sr_unet()
    low, s = torch.randn(3, 1, 28, 28), torch.tensor([0, 100, 200])
    model = WithLowRes(net, low, s)
    x, t, y = torch.randn(3, 1, 28, 28), torch.tensor([5, 50, 500]), torch.tensor([1, 2, 3])
    with torch.no_grad():
        two = guided(model, 3.0)(x, t, y)
        one = guided(model, 3.0, batched=True)(x, t, y)
        by_hand = net(x, t, None, low_res=low, aug_t=s) + 3.0 * (net(x, t, y, low_res=low, aug_t=s)
                                                                 - net(x, t, None, low_res=low, aug_t=s))
    assert torch.allclose(two, by_hand, atol=1e-5) and torch.allclose(one, by_hand, atol=1e-5)


def test_a_super_resolution_config_needs_both_halves_and_round_trips():
    config = get_preset("mnist-sr28")
    assert Config.from_dict(config.to_dict()) == config and config.stage.aug_max == 0.5
    assert config.kind == "super-res" and isinstance(config.stage, SuperResConfig)
    assert get_preset("mnist-base14").data.image_size == 14
    with pytest.raises(ValueError, match="low_res_channels"):
        config.replace(low_res_channels=0)
    with pytest.raises(ValueError, match="must be smaller"):
        config.replace(low_res=28)


def test_a_tiny_sr_model_learns_to_beat_bicubic(tmp_path, digits):
    """Eight digits, refined from their 14x14 versions after a short overfit: closer to the originals (PSNR)
    than bicubic upsampling, which cannot undo the area averaging's blur. (x0-prediction and T = 100: eps-
    prediction needs many more steps to get there.)"""
    few = digits.subset(slice(0, 8))
    config = get_preset("mnist-sr28", steps=120, batch_size=8, warmup=10, lr=3e-3, ema_decay=0.9, cond="class",
                        aug_max=0.0, ch=16, num_res_blocks=1, ckpt_every=0, T=100, prediction="x0")
    trainer = Trainer(config, tmp_path / "sr", device="cpu", progress=False, dataset=few)
    trainer.fit(final_samples=False)
    run = load_run(tmp_path / "sr")
    x = to_float(few.images)
    sampling = Sampling("ddim", 10, 1.0, {"eta": 1.0})  # the SR stage's DDIM: stochastic (eta 1)
    refined = Refiner(run, aug_level=0.0, sampling=sampling)(
        area_downsample(x, 14), few.labels, torch.Generator().manual_seed(0))
    ours = psnr(((refined + 1) * 127.5).round().to(torch.uint8), few.images).mean()
    bicubic = psnr(bicubic_to(shrink(few, 14).images, 28), few.images).mean()
    assert ours > bicubic + 3.0, (float(ours), float(bicubic))


def test_the_cascade_composes_two_runs_and_refuses_pairs_that_do_not_fit(runs):
    base_path, sr_path = runs
    base, sr = load_run(base_path), load_run(sr_path)
    check_cascade(base, sr)
    with pytest.raises(ValueError, match="refines 1x14x14"):
        check_cascade(sr, sr)
    with pytest.raises(ValueError, match="not a super-resolution model"):
        Refiner(base)
    # the SR stage samples stochastically by default (DDIM, eta 1); a deterministic sampler gets no eta
    assert (Refiner(sr).sampling.sampler, Refiner(sr).sampling.options) == ("ddim", {"eta": 1.0})
    assert Refiner(sr).sampling == REFINE_SAMPLING
    flags = dict(sr=str(sr_path), sr_steps=None, sr_guidance=None, guidance=None)
    assert load_refiner(argparse.Namespace(sr_sampler=None, **flags), "cpu", {}, 0.1).sampling.options == {"eta": 1.0}
    assert load_refiner(argparse.Namespace(sr_sampler="dpmpp-2m", **flags), "cpu", {}, 0.1).sampling.options == {}
    assert Refiner(sr, sampling=REFINE_SAMPLING.with_options(eta=0.0)).sampling.options["eta"] == 0
    # the base's threshold, spacing and precision pass to the SR stage; a sampler's own options do not
    assert shared_options({"threshold": "dynamic", "eta": 0.0, "spacing": "lambda", "precision": None}) == {
        "threshold": "dynamic", "spacing": "lambda"}
    low = upsample(torch.zeros(2, 1, 7, 7), 14)
    three = dataclasses.replace(REFINE_SAMPLING, steps=3)
    refined = Refiner(sr, sampling=three)(low, ["a thick seven", "a thin two"], torch.Generator().manual_seed(0))
    assert refined.shape == (2, 1, 28, 28)
    with pytest.raises(ValueError, match="refines 14x14"):
        Refiner(sr, sampling=three)(torch.zeros(2, 1, 28, 28), None)


def test_the_cli_samples_refines_and_evaluates_a_cascade(tmp_path, runs, capsys):
    base, sr = (str(p) for p in runs)
    out = tmp_path / "cascade.png"
    assert main(["cascade", "--base", base, "--sr", sr, "--prompt", "a thick seven", "--n", "4", "--steps", "3",
                 "--threshold", "dynamic", "--out", str(out)]) == 0  # Imagen's thresholding, in both stages
    assert Image.open(out).size[0] > 2 * 4 * 28 * 2  # two panels of four 28x28 cells, scaled 2x
    assert main(["cascade", "--sr", sr, "--from-test", "--n", "4", "--sr-steps", "2", "--aug-level", "0.3",
                 "--out", str(tmp_path / "test.png")]) == 0
    assert "aug level 0.3" in capsys.readouterr().out and (tmp_path / "test.png").exists()
    # evaluate --run on an SR run judges it alone, on real digits shrunk, at the default level
    assert main(["evaluate", "--run", sr, "--n-samples", "20", "--no-progress",
                 "--out", str(tmp_path / "sr.json")]) == 0
    report = json.loads((tmp_path / "sr.json").read_text())["super_resolution"]
    assert [row["aug_level"] for row in report["refined"]] == [DEFAULT_AUG_LEVEL]
    assert report["bicubic"]["psnr"] > 10 and report["originals"]["accuracy"] > 0.8
    assert all(0 <= row["speckle"] <= 1 for row in report["refined"])
    # several levels of the same refiner, one row each
    refiner = Refiner(load_run(sr), sampling=dataclasses.replace(REFINE_SAMPLING, steps=2))
    report = evaluate_super_res(refiner, load_dataset("mnist", "test"), n=20, levels=[0.0, 0.5])
    assert [row["aug_level"] for row in report["refined"]] == [0.0, 0.5]
    assert all(0 <= row["speckle"] <= 1 for row in report["refined"])
    # the same from the command line: the SR model alone on test digits, at each level
    out = tmp_path / "sr_levels.json"
    assert main(["cascade", "--from-test", "--evaluate", "--sr", sr, "--n", "20", "--sr-steps", "2", "--aug-level",
                 "0,0.5", "--out", str(out)]) == 0
    cli = json.loads(out.read_text())["super_resolution"]
    assert [row["aug_level"] for row in cli["refined"]] == [0.0, 0.5] and cli["n"] == 20
    # the cascade behind its base: several levels are a sweep, one level an evaluate report with "cascade"
    assert main(["cascade", "--evaluate", "--base", base, "--sr", sr, "--aug-level", "0,0.3", "--n", "20",
                 "--steps", "2", "--out", str(tmp_path / "sweep.json")]) == 0
    rows = json.loads((tmp_path / "sweep.json").read_text())["rows"]
    assert [row["aug_level"] for row in rows] == ["bicubic", 0.0, 0.3]
    assert main(["cascade", "--evaluate", "--base", base, "--sr", sr, "--aug-level", "0.3", "--n", "20",
                 "--steps", "2", "--sr-steps", "2", "--out", str(tmp_path / "one.json")]) == 0
    report = json.loads((tmp_path / "one.json").read_text())
    assert report["cascade"]["aug_level"] == 0.3 and report["cascade"]["steps"] == 2
    # the base's samples refined, so judged at 28x28 (no note on upsampling them bicubically)
    assert report["preset"] == "mnist-base14" and "note" not in report["samples"]
    assert main(["visualize", "unet", "--run", sr, "--out-dir", str(tmp_path / "figs")]) == 0  # its extra inputs
    assert (tmp_path / "figs" / "unet_mnist-sr28.png").exists()


def test_cascade_flags_fail_in_one_line(tmp_path, runs, capsys):
    base, sr = (str(p) for p in runs)
    cases = [(["cascade", "--base", base, "--from-test"], "drop --base"),
             (["sample", "--run", sr, "--n", "2"], "is a super-resolution model"),
             (["cascade", "--base", sr, "--sr", sr, "--n", "2"], "use a base trained with --preset mnist-base14"),
             (["visualize", "reverse", "--run", sr], "cascade --sr"),
             (["cascade", "--base", base, "--sr", base, "--n", "2"], "not a super-resolution model"),
             (["cascade", "--sr", sr, "--from-test", "--prompt", "a seven"], "drop --base, --prompt"),
             (["cascade", "--sr", sr, "--aug-level", "0,0.3"], "compared by --evaluate"),
             (["cascade", "--sr", sr, "--aug-level", "2"], "in [0, 1]"),
             (["train", "--preset", "mnist", "--aug-max", "0"], "a preset that has it (mnist-sr28)"),
             # the spellings of one release ago name the new command
             (["sample", "--run", base, "--refine", sr, "--n", "2"], "sample --refine has moved: use python -m ddpm "
                                                                     "cascade"),
             (["sample", "--refine", "--from-test"], "use python -m ddpm cascade"),
             (["evaluate", "--run", base, "--refine", sr, "--aug-level", "0,0.1"],
              "evaluate --refine has moved: use python -m ddpm cascade --evaluate")]
    for args, message in cases:
        parse_error = args[-2:] == ["--aug-level", "2"]  # argparse's: it exits
        if parse_error:
            with pytest.raises(SystemExit) as exit_info:
                main(args)
            code = exit_info.value.code
        else:
            code = main(args)
        err = capsys.readouterr().err.strip()
        assert message in err and "Traceback" not in err and "\n" not in err, (args, err)
        assert code == 2, (args, code)


def test_an_exported_base_is_evaluated_on_its_own_through_bicubic(tmp_path, runs):
    from ddpm.metrics import evaluate_run
    export_model(runs[0], tmp_path / "base.pt", half=True)
    report = evaluate_run(tmp_path / "base.pt", n_samples=20, sampler="ddim", steps=2, bpd_images=2, bpd_timesteps=4,
                          out=tmp_path / "e.json")
    assert "upsampled bicubically" in report["samples"]["note"]
    assert report["bits_per_dim"]["n_images"] == 2  # the bound on test digits shrunk to 14x14
    assert 0 <= report["classifier_metrics"]["conditional_accuracy"] <= 1


@pytest.mark.slow  # a speed measurement (7 s), not something a user's first hour needs
def test_the_cascade_benchmark_runs_both_stages_beside_the_single_stage_model(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--preset", "mnist-sr28", "--quick", "--batch-size", "8", "--sample-batch", "2", "--out",
                 str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["train"]) == {"single (28x28)", "base (14x14)", "super-resolution (14 -> 28)"}
    assert result["flops"]["base"] < result["flops"]["sr"]  # 14x14 against 28x28
    assert abs(result["flops"]["sr"] / result["flops"]["single"] - 1) < 0.05  # one more input channel
    assert "cascade (base + SR)" in result["sampling"] and "vs single" in capsys.readouterr().out
