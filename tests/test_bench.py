"""Benchmark: FLOP counting against hand counts, and `bench --quick` end to end (no assertion on times)."""

import json

import pytest
import torch
from torch import nn

from ddpm.bench import format_bench, forward_flops, matmul_flops, train_flops
from ddpm.checkpoints import build_diffusion
from ddpm.cli import main
from ddpm.config import get_preset
from ddpm.nn.unet import UNet


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
    trn = train_flops(model.train(), build_diffusion(config), x)
    assert 2.5 * fwd < trn <= 3.0 * fwd  # the first conv needs no input gradient


def test_matmul_flops_is_positive():
    out = matmul_flops("cpu", sizes=(64,), seconds=0.05)
    assert out["flops"] > 0 and set(out["by_size"]) == {"64"}


def test_bench_quick_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--preset", "tiny", "--explore", "--profile", "--out", str(out)]) == 0
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
    assert "sampling forward" in result["profile"]
    assert "goal train_mfu" in format_bench(result)


@pytest.mark.parametrize("argv, message", [
    (["--preset", "nope"], "unknown preset"),
    (["--preset", "tiny", "--batch-size", "0"], "--batch-size must be positive"),
    (["--preset", "tiny", "--threads", "0"], "--threads must be positive"),
])
def test_bench_bad_input(argv, message, capsys):
    assert main(["bench", "--quick", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
