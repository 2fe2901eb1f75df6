"""Benchmark: FLOP counting against hand counts, and `bench --quick` end to end (no assertion on times)."""

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import ddpm.bench
from ddpm import _util
from ddpm.bench import bench_training, format_bench, forward_flops, matmul_flops, train_flops
from ddpm.bench.runs import _condition
from ddpm.checkpoints import build_diffusion
from ddpm.cli import bench as bench_cmd
from ddpm.cli.common import UsageError
from ddpm.datasets import class_prompts, dataset_label_names
from ddpm.nn.unet import UNet
from ddpm.presets import get_preset

ROOT = Path(__file__).resolve().parent.parent


class OneConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x, t, cond=None):
        return self.conv(x)[:, :1]


def test_forward_flops_hand_count():
    # each output pixel of each output channel: 9 multiply-adds = 18 FLOPs (bias not counted)
    x = torch.zeros(3, 1, 8, 8)
    assert forward_flops(OneConv(), x, torch.zeros(3, dtype=torch.long)) == 3 * 2 * 8 * 8 * 9 * 2


def test_train_flops_are_about_three_forwards():
    config = get_preset("tiny")
    model = UNet(config.model)
    x = torch.randn(4, 1, 28, 28)
    fwd = forward_flops(model.eval(), x, torch.zeros(4, dtype=torch.long))
    trn = train_flops(model, build_diffusion(config), x)
    assert 2.5 * fwd < trn <= 3.0 * fwd  # the first conv needs no input gradient
    assert not model.training and all(p.grad is None for p in model.parameters())  # left as it was


def test_matmul_flops_is_positive():
    out = matmul_flops("cpu", sizes=(64,), seconds=0.05)
    assert out["flops"] > 0 and set(out["by_size"]) == {"64"}


BENCH = argparse.ArgumentParser(prog="python -m ddpm bench")  # what the entry point builds
bench_cmd.add_arguments(BENCH)


def _bench(argv):
    return bench_cmd.run(BENCH.parse_args(argv))


def test_bench_quick_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert _bench(["--quick", "--preset", "tiny", "--explore", "--profile", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "MFU" in printed and "ddim step" in printed and str(out) in printed
    result = json.loads(out.read_text())
    keys = {"machine", "settings", "matmul", "conv", "peak", "model", "results", "goals", "experiments",
            "profile"}
    assert keys <= set(result)
    assert result["matmul"]["fp32"]["flops"] > 0 and result["model"]["forward_flops_per_image"] > 0
    fp32 = result["results"]["fp32"]
    assert fp32["train"]["images_per_s"] > 0 and fp32["train"]["mfu"] > 0
    assert fp32["train"]["mfu"] <= fp32["train"]["mfu_vs_matmul"]  # the peak is at least the matmul rate
    assert {"ancestral", "ddim", "ancestral_guided", "ddim_guided"} == set(fp32["sampling"]["per_step"])
    estimated = fp32["sampling"]["estimated_for_64_images"]
    assert {"ancestral_64xT_s", "ddim50_s", "ddim50_guided_s"} <= set(estimated)
    assert fp32["memory"]["training_peak_mb"] > 0
    assert "guidance: 1 call of 2B" in result["experiments"]
    train_knobs = {k: v for k, v in result["experiments"].items() if k.startswith("train step")}
    assert {"train step: fp32", "train step: channels_last"} <= set(train_knobs)
    assert train_knobs["train step: fp32"]["speedup"] == 1.0  # the reference of the training knobs
    assert "sampling forward" in result["profile"]
    assert "goal train_mfu" in format_bench(result)


def test_bench_training_on_toy_points_across_epochs():
    # 600 points in batches of 512: one batch per epoch, so the two timed batches come from two epochs
    config = get_preset("toy2d").replace(toy_size=600, batch_size=512)
    out = bench_training(config, torch.device("cpu"), steps=1, warmup=0)
    assert out["batch_size"] == 512 and out["images_per_s"] > 0


def test_conditions_come_from_ddpm_conditions():
    cpu = torch.device("cpu")
    assert _condition(get_preset("toy2d"), 4, cpu) is None
    assert _condition(get_preset("tiny"), 12, cpu).tolist() == [i % 10 for i in range(12)]
    prompts = _condition(get_preset("mnist-text"), 12, cpu)
    assert prompts == class_prompts(dataset_label_names("mnist"), torch.arange(12) % 10, "mnist")


def test_num_threads_is_the_shared_one():
    assert ddpm.bench.num_threads is _util.num_threads


@pytest.mark.parametrize("argv, message", [
    (["--batch-size", "0"], "expected a positive integer"),
    (["--threads", "0"], "expected a positive integer"),
    (["--sample-steps", "x"], "expected a positive integer"),
])
def test_bench_bad_flags_fail_at_parse_time(argv, message, capsys):
    with pytest.raises(SystemExit):
        _bench(["--quick", "--preset", "tiny", *argv])
    assert message in capsys.readouterr().err


def test_bench_bad_input_fails_before_any_work(tmp_path, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("run_bench started before the arguments were checked")

    monkeypatch.setattr(bench_cmd, "run_bench", no_work)
    folder = tmp_path / "bench.json"
    folder.mkdir()
    for argv, message in ((["--preset", "nope"], "unknown preset"),
                          (["--out", str(folder)], "is a folder"),
                          (["--out", str(tmp_path / "bench.csv")], "unknown file extension")):
        with pytest.raises(UsageError, match=message) as e:
            _bench(["--quick", *argv])
        assert "\n" not in str(e.value)


def test_fast_sampling_times_every_variant_against_ddim50():
    from ddpm.bench.runs import FAST_SAMPLING, fast_sampling
    from ddpm.checkpoints import build_model

    config = get_preset("tiny")
    model, diffusion = build_model(config).eval(), build_diffusion(config)
    out = fast_sampling(model, diffusion, config, torch.device("cpu"), n=2, guidance=2.0, repeats=1)
    assert set(out) == set(FAST_SAMPLING)
    assert out["ddim50 fp32"]["speedup_vs_ddim50_fp32"] == 1.0
    assert all(v["median_s"] > 0 and v["speedup_vs_ddim50_fp32"] > 0 for v in out.values())
    assert "x DDIM-50 fp32" in format_bench({"machine": {"cuda": None, "cpu": "c", "device": "cpu", "threads": 1,
                                                         "torch": "t", "loadavg_start": None, "loadavg_end": None},
                                             "settings": {"preset": "tiny", "batch_size": 1, "sample_batch": 1,
                                                          "T": 100}, "matmul": {}, "conv": {}, "peak": {},
                                             "model": {"parameters": 1, "forward_flops_per_image": 1.0,
                                                       "train_flops_per_image": 1.0},
                                             "results": {}, "goals": {}, "fast_sampling": out})


def test_versus_diffusers_checks_equality_then_times_both(monkeypatch):
    from ddpm.bench import versus
    from ddpm.bench.report import format_bench

    out = versus.versus_diffusers(get_preset("tiny").model, batch_size=4, sample_batch=2, repeats=1)
    assert out["available"] and out["max_abs_difference"] < versus.EQUAL_TOLERANCE
    for r in out["precisions"].values():
        assert r["train_speedup"] > 0 and r["sample_speedup"] > 0
        assert set(r["times"]) == {"ddpm train", "diffusers train", "ddpm sample", "diffusers sample"}
    rows = dict(versus.versus_rows(out))
    assert "max |diff|" in rows["vs diffusers"] and "x), sampling forward" in rows["[fp32] vs diffusers"]
    # a twin that computes something else is reported, not timed
    real_twin = versus._diffusers_twin

    def wrong_twin(model):
        twin = real_twin(model)
        twin.conv_out.bias.data.add_(1.0)
        return twin

    monkeypatch.setattr(versus, "_diffusers_twin", wrong_twin)
    wrong = versus.versus_diffusers("tiny", batch_size=2, sample_batch=2, repeats=1)
    assert not wrong["available"] and wrong["max_abs_difference"] > 0.5 and "not the same function" in wrong["message"]
    monkeypatch.setattr(versus, "_diffusers_twin", lambda model: None)  # diffusers absent
    absent = versus.versus_diffusers("tiny", batch_size=2, sample_batch=2, repeats=1)
    assert absent == {"available": False, "message": "diffusers is not installed (pip install diffusers): no "
                                                     "side-by-side"}
    machine = {"cuda": None, "cpu": "c", "device": "cpu", "threads": 1, "torch": "t", "loadavg_start": None,
               "loadavg_end": None, "bf16_units": False}
    text = format_bench({"machine": machine, "settings": {"preset": "tiny", "batch_size": 1, "sample_batch": 1,
                                                          "T": 100}, "matmul": {}, "conv": {}, "peak": {},
                         "model": {"parameters": 1, "forward_flops_per_image": 1.0, "train_flops_per_image": 1.0},
                         "results": {}, "goals": {}, "versus_diffusers": out})
    assert "no bf16 units" in text and "vs diffusers" in text


_FAULTS = """
import resource, sys, torch
if sys.argv[1] == "keep":
    from ddpm.runtime import keep_freed_memory
    assert keep_freed_memory()
torch.set_num_threads(1)
conv = torch.nn.Conv2d(16, 16, 3, padding=1)
x = torch.randn(32, 16, 64, 64)  # 8 MB activations
def step():
    conv(torch.nn.functional.silu(conv(x))).square().mean().backward()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
step(), step()
before = faults()
for _ in range(10):
    step()
print(faults() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_keep_freed_memory_reuses_the_pages_of_freed_tensors():
    """Ten training steps of a conv with 8 MB activations page-fault about 100k pages in with glibc's defaults
    (measured 96-133k), and next to none once freed memory is kept (measured 4096: one 8 MB block, once)."""
    counts = {mode: int(subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True,
                                       check=True, cwd=ROOT).stdout) for mode in ("default", "keep")}
    assert counts["default"] > 30_000, counts
    assert counts["keep"] < 0.1 * counts["default"], counts
