"""The command line: the main job's commands work, and bad input gets one clear line (exit 2), no traceback."""

import pytest
import torch

from ddpm.checkpoints import load_run
from ddpm.cli import main
from ddpm.config import get_preset
from ddpm.datasets import caption_max_words, caption_vocabulary
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


def test_unknown_preset(capsys):
    assert "known presets: mnist" in _error(capsys, ["train", "--preset", "mnist-large"])


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
