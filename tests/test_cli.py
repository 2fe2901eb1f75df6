"""The command line: the main job's commands work, and bad input gets one clear line (exit 2), no traceback."""

import dataclasses

import pytest
import torch

from ddpm.checkpoints import load_run
from ddpm.cli import main
from ddpm.config import DiffusionConfig
from ddpm.datasets import caption_max_words, caption_vocabulary
from ddpm.presets import get_preset
from ddpm.training import Trainer


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for name, cond in (("cls", "class"), ("txt", "text")):
        Trainer(get_preset("tiny", steps=2, ckpt_every=0, cond=cond), root / name, device="cpu", progress=False).fit()
    return root


def _error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_train_then_sample_a_class(tmp_path, runs, capsys):
    assert main(["train", "--preset", "tiny", "--steps", "2", "--runs-dir", str(tmp_path), "--name", "r",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "done: step 2/2" in out and "python -m ddpm sample --run" in out
    grid = tmp_path / "seven.png"
    gif = tmp_path / "traj.gif"
    assert main(["sample", "--run", str(tmp_path / "r"), "--class", "seven", "--n", "4", "--steps", "3",
                 "--out", str(grid), "--trajectory", str(gif)]) == 0
    out = capsys.readouterr().out
    assert str(grid) in out and grid.stat().st_size > 0 and gif.read_bytes()[:3] == b"GIF"


def test_sample_with_a_prompt_and_the_ancestral_sampler(tmp_path, runs, capsys):
    out_png = tmp_path / "p.png"
    assert main(["sample", "--run", str(runs / "txt"), "--prompt", "the digit 7", "--n", "2", "--sampler",
                 "ancestral", "--steps", "4", "--out", str(out_png), "--seed", "3"]) == 0
    assert out_png.exists()


def test_same_seed_same_samples(tmp_path, runs):
    paths = [tmp_path / f"{i}.png" for i in range(3)]
    for path, seed in zip(paths, (1, 1, 2), strict=True):
        main(["sample", "--run", str(runs / "cls"), "--n", "4", "--steps", "3", "--seed", str(seed),
              "--out", str(path)])
    a, b, c = (p.read_bytes() for p in paths)
    assert a == b and a != c


def test_sample_defaults_to_the_stochastic_solver_with_half_the_guidance(tmp_path, runs, capsys):
    """A pixel run's default: SDE-DPM-Solver++(2M), 25 steps, guidance 1 + (2 - 1) / 2; a sampler named on the
    command line takes its own steps and the run's guidance; the samples are the ones the API draws."""
    import numpy as np

    from ddpm.datasets import to_uint8
    from ddpm.pipelines.base import Sampling

    run = runs / "cls"
    assert main(["sample", "--run", str(run), "--class", "3", "--n", "3", "--out", str(tmp_path / "a.npz")]) == 0
    assert "(dpmpp-2m-sde, 25 steps, guidance 1.5)" in capsys.readouterr().out
    loaded = load_run(run)
    expected = loaded.sample(torch.full((3,), 3), 3, Sampling("dpmpp-2m-sde", 25, 1.5, {"precision": "auto"}),
                             torch.Generator().manual_seed(0))
    got = np.load(tmp_path / "a.npz")["images"]
    assert np.array_equal(got, to_uint8(expected).numpy())
    assert main(["sample", "--run", str(run), "--class", "3", "--n", "3", "--sampler", "dpmpp-2m",
                 "--out", str(tmp_path / "b.png")]) == 0
    assert "(dpmpp-2m, 15 steps, guidance 2.0)" in capsys.readouterr().out
    assert main(["sample", "--run", str(run), "--class", "3", "--n", "3", "--eta", "0.5", "--steps", "4",
                 "--out", str(tmp_path / "c.png")]) == 0  # --eta for the default stochastic sampler
    assert "(dpmpp-2m-sde, 4 steps, guidance 1.5)" in capsys.readouterr().out


def test_unknown_preset(capsys):
    assert "known presets: mnist" in _error(capsys, ["train", "--preset", "mnist-large"])


def test_min_snr_gamma_flag_reaches_the_config(tmp_path, capsys):
    from ddpm.cli import build_parser
    from ddpm.cli.train import train_config

    args = build_parser().parse_args(["train", "--min-snr-gamma", "5", "--runs-dir", str(tmp_path)])
    assert train_config(args, tmp_path / "mnist").diffusion.min_snr_gamma == 5.0
    args = build_parser().parse_args(["train", "--runs-dir", str(tmp_path)])
    assert train_config(args, tmp_path / "mnist").diffusion.min_snr_gamma is None  # the preset's: none
    args = build_parser().parse_args(["train", "--min-snr-gamma", "0", "--runs-dir", str(tmp_path)])
    assert train_config(args, tmp_path / "mnist").diffusion.min_snr_gamma is None  # 0: no weighting
    for bad in (0.0, -5.0, float("nan"), "5"):
        with pytest.raises(ValueError, match="min_snr_gamma must be a positive number"):
            DiffusionConfig(min_snr_gamma=bad)
    err = _error(capsys, ["train", "--preset", "mnist-hybrid", "--min-snr-gamma", "5", "--runs-dir", str(tmp_path)])
    assert "min_snr_gamma weights L_simple; the 'hybrid' loss has its own weights" in err


def test_minutes_takes_the_presets_short_run_recipe(tmp_path, capsys, monkeypatch):
    """train --minutes applies ddpm.presets.SHORT_RUNS (mnist: cosine schedule, min-SNR 5) to a new run, says so, and a
    flag given wins; without --minutes, or for a preset without a recipe, the preset is as it is."""
    from ddpm.cli import build_parser
    from ddpm.cli.train import train_config
    from ddpm.presets import PRESETS, SHORT_RUNS

    def config(*argv):
        args = build_parser().parse_args(["train", *argv, "--runs-dir", str(tmp_path)])
        return train_config(args, tmp_path / "run")

    assert SHORT_RUNS["mnist"] == {"schedule": "cosine", "min_snr_gamma": 5.0}
    short = config("--minutes", "10")
    assert (short.diffusion.schedule, short.diffusion.min_snr_gamma) == ("cosine", 5.0)
    assert short.model == PRESETS["mnist"].model
    assert config() == PRESETS["mnist"] and PRESETS["mnist"].diffusion.schedule == "linear"
    given = config("--minutes", "10", "--schedule", "linear", "--min-snr-gamma", "0").diffusion
    assert (given.schedule, given.min_snr_gamma) == ("linear", None)
    assert config("--minutes", "10", "--preset", "mnist-text").diffusion == PRESETS["mnist-text"].diffusion
    # the whole command: a recipe for the tiny preset, a few seconds' budget
    monkeypatch.setitem(SHORT_RUNS, "tiny", {"schedule": "cosine", "ema_decay": 0.5})
    argv = ["train", "--preset", "tiny", "--minutes", "0.05", "--ema-decay", "0.8", "--runs-dir", str(tmp_path),
            "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "a time-budgeted run of 'tiny' uses schedule cosine (better" in out and "; --schedule set otherwise" in out
    assert "ema_decay" not in out  # given as a flag
    saved = load_run(tmp_path / "tiny").config
    assert saved.diffusion.schedule == "cosine" and saved.train.ema_decay == 0.8


def test_ch_sets_the_width_and_its_errors_say_what_to_give(tmp_path, capsys):
    """--ch N makes only the network's base width N (here with --minutes's recipe); a width GroupNorm cannot split, a
    network without a width, and a resumed run's other network are refused in one line."""
    from ddpm.cli import build_parser
    from ddpm.cli.train import train_config
    from ddpm.presets import PRESETS

    args = build_parser().parse_args(["train", "--ch", "16", "--minutes", "10", "--runs-dir", str(tmp_path)])
    config = train_config(args, tmp_path / "run")
    assert config.model == dataclasses.replace(PRESETS["mnist"].model, ch=16) and PRESETS["mnist"].model.ch == 32
    assert config.diffusion.schedule == "cosine"
    base = ["train", "--runs-dir", str(tmp_path), "--steps", "1"]
    assert "num_groups=8 does not divide the channel count 12" in _error(capsys, [*base, "--ch", "12"])
    assert "preset 'toy2d''s network (MLPConfig) has none" in _error(capsys, [*base, "--preset", "toy2d", "--ch", "16"])
    assert main(["train", "--preset", "tiny", "--runs-dir", str(tmp_path), "--steps", "2", "--no-progress"]) == 0
    capsys.readouterr()
    err = _error(capsys, ["train", "--name", "tiny", "--runs-dir", str(tmp_path), "--resume", "--ch", "16"])
    assert "different network" in err


def test_an_ema_decay_the_warmup_never_reaches_is_said(tmp_path, capsys):
    """EMA warmup: d_k = min(decay, (1 + k) / (10 + k)) reaches 0.9 at k = 80, so in 20 steps --ema-decay 0.9
    changes nothing, and train says so; 0.5 (reached at k = 8) is used, and nothing is said."""
    from ddpm.optim import EMA

    assert [EMA.binds_from(d) for d in (0.5, 0.9, 0.99, 0.995)] == [8, 80, 890, 1790]
    base = ["train", "--preset", "tiny", "--runs-dir", str(tmp_path), "--no-progress"]
    assert main([*base, "--name", "slow", "--ema-decay", "0.9"]) == 0
    assert "reaches --ema-decay 0.9 only after step 80" in capsys.readouterr().out
    assert main([*base, "--name", "fast", "--ema-decay", "0.5"]) == 0
    assert "--ema-decay" not in capsys.readouterr().out


def test_class_out_of_range(runs, capsys):
    assert "out of range" in _error(capsys, ["sample", "--run", str(runs / "cls"), "--class", "10"])
    assert "class name" in _error(capsys, ["sample", "--run", str(runs / "cls"), "--class", "eleven"])


def test_prompt_with_unknown_words(runs, capsys):
    err = _error(capsys, ["sample", "--run", str(runs / "txt"), "--prompt", "a handwritten heptagon"])
    assert "heptagon" in err
    err = _error(capsys, ["sample", "--run", str(runs / "txt"), "--prompt", "a thik sevn"])
    assert "unknown word(s) ['thik', 'sevn']; closest known: thik -> thick" in err and "sevn -> seven" in err
    assert err.endswith(f"list the {len(caption_vocabulary('mnist'))} known words with: python -m ddpm sample "
                        f"--vocabulary --run {runs / 'txt'}")


def test_a_prompt_longer_than_the_encoder_reads(runs, capsys):
    err = _error(capsys, ["sample", "--run", str(runs / "txt"), "--prompt", "a " * 20 + "seven"])
    assert f"has 21 words; this text encoder reads at most {caption_max_words('mnist')}" in err


def test_vocabulary(runs, capsys):
    assert main(["sample", "--run", str(runs / "txt"), "--vocabulary"]) == 0
    out = capsys.readouterr().out
    first, *rest = out.strip().splitlines()
    assert first.startswith(f"{len(caption_vocabulary('mnist'))} words that ") and "the empty prompt" in first
    assert " ".join(rest).split() == list(caption_vocabulary("mnist"))
    assert not (runs / "txt" / "samples" / "sample_ddim_seed0.png").exists()  # printed, nothing sampled
    assert "only a text model has a vocabulary" in _error(capsys, ["sample", "--run", str(runs / "cls"),
                                                                   "--vocabulary"])


def test_prompt_for_a_class_model_and_class_for_text_model(runs, capsys):
    assert "--class, not --prompt" in _error(capsys, ["sample", "--run", str(runs / "cls"), "--prompt", "seven"])


def test_run_folder_without_checkpoint(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert "no checkpoint" in _error(capsys, ["sample", "--run", str(tmp_path / "empty")])
    assert "no such run folder" in _error(capsys, ["sample", "--run", str(tmp_path / "missing")])


def test_resume_with_another_preset(runs, capsys):
    err = _error(capsys, ["train", "--preset", "mnist", "--runs-dir", str(runs), "--name", "cls", "--resume",
                          "--no-progress"])
    assert "preset 'tiny'" in err


def test_bad_device(capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert "CUDA is not available" in _error(capsys, ["train", "--preset", "tiny", "--device", "cuda"])


def test_export_makes_a_small_loadable_model(tmp_path, runs, capsys):
    out = tmp_path / "m.pt"
    assert main(["export", "--run", str(runs / "cls"), "--out", str(out), "--half"]) == 0
    loaded = load_run(out)
    full = load_run(runs / "cls")
    assert loaded.step == full.step and loaded.cond == "class" and loaded.label_names == full.label_names
    assert out.stat().st_size < (runs / "cls" / "checkpoint.pt").stat().st_size / 3
    assert "no 'model' weights" in _error(capsys, ["sample", "--run", str(out), "--no-ema"])
    # a guidance chosen after training travels with the file (its train.guidance), the weights unchanged; an
    # exported file can be exported again
    again = tmp_path / "g.pt"
    assert main(["export", "--run", str(out), "--out", str(again), "--guidance", "1.25"]) == 0
    regraded = load_run(again)
    assert full.config.train.guidance == 2.0 and regraded.config.train.guidance == 1.25
    assert all(torch.equal(a, b) for a, b in zip(loaded.model.state_dict().values(),
                                                  regraded.model.state_dict().values(), strict=True))


def test_a_prompt_without_run_uses_the_shipped_text_model(tmp_path, monkeypatch, capsys):
    """`python -m ddpm sample --prompt ...` works at once: runs/mnist-text if trained, else the shipped model."""
    import ddpm.cli.common as common

    monkeypatch.chdir(tmp_path)  # no runs/ here
    assert common.PRETRAINED_TEXT.exists(), "data/pretrained/mnist-text.pt ships with the repository"
    assert common.resolve_run(None, text=True) == common.PRETRAINED_TEXT
    out = tmp_path / "thick7.png"
    assert main(["sample", "--prompt", "a thick slanted seven", "--n", "2", "--steps", "2", "--out", str(out)]) == 0
    assert out.stat().st_size > 0
    assert main(["sample", "--vocabulary"]) == 0
    assert "thick" in capsys.readouterr().out.split()
    monkeypatch.setattr(common, "PRETRAINED_TEXT", tmp_path / "missing.pt")
    err = _error(capsys, ["sample", "--prompt", "a thick seven"])
    assert "train first: python -m ddpm train --preset mnist-text" in err


@pytest.mark.parametrize(("load", "threads", "warned"), [(2.6, None, True), (1.6, None, False), (2.6, 1, False)])
def test_train_warns_on_a_busy_machine(monkeypatch, capsys, load, threads, warned):
    """The thread rule: a 1-minute load above the core count at start -> a note suggesting --threads 1 (not
    when --threads is given)."""
    import argparse

    from ddpm.cli import train as train_cmd

    monkeypatch.setattr(train_cmd.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(train_cmd.os, "getloadavg", lambda: (load, load, load))
    train_cmd._check_load(argparse.Namespace(threads=threads))
    out = capsys.readouterr().out
    assert ("--threads 1 is often faster" in out) == warned
