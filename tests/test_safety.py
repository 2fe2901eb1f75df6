"""No command destroys a run, writes over a file it was not asked to write, or ends in a traceback (issue 26).

Each test here failed on the code before issue 26: an export over a run's checkpoint, a resume of a replaced or
hand-edited run folder, records named after their picture, a diffusers folder written in place, a time budget of
1e308 minutes, a refused pickle's message in convert, batches that cannot fit, a full disk under torch's zip writer,
orphan temporaries, malformed and non-finite configs and weights, file modes, and a refused run's empty folder.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
from pathlib import Path

import pytest
import torch

import ddpm._files as files
import ddpm.memory as ddpm_memory
from ddpm.checkpoints import CHECKPOINT_NAME, CheckpointError, load_checkpoint, load_run, save_atomic
from ddpm.cli import main
from ddpm.convert import to_diffusers, unet_config_from_diffusers
from ddpm.exports import export_model
from ddpm.memory import BatchTooLarge, check_batch
from ddpm.presets import get_preset
from ddpm.training import Trainer


def _tiny(folder: Path, preset: str = "tiny", steps: int = 2, **kw) -> Path:
    Trainer(get_preset(preset, steps=steps, ckpt_every=0, **kw), folder, device="cpu", progress=False).fit(
        final_samples=False)
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return _tiny(tmp_path_factory.mktemp("runs") / "tiny", cond="none")


def _main(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "Traceback" not in err and "\n" not in err, err
    return code, err


def _copy_run(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for p in src.iterdir():
        if p.is_file() and p.name != "lock":
            (dst / p.name).write_bytes(p.read_bytes())
    return dst


# ------------------------------------------------------------------------------------------ outputs
def test_export_and_convert_refuse_to_write_over_a_training_checkpoint(tmp_path, run, capsys):
    ckpt = tmp_path / "r" / CHECKPOINT_NAME
    _copy_run(run, tmp_path / "r")
    before = ckpt.read_bytes()
    code, err = _main(["export", "--run", str(tmp_path / "r"), "--out", str(ckpt)], capsys)
    assert code == 2 and "training checkpoint" in err and "--resume" in err
    with pytest.raises(CheckpointError, match="training checkpoint"):
        export_model(tmp_path / "r", ckpt)  # the library refuses too
    diffusers = to_diffusers(load_run(run).model, tmp_path / "hf")
    code, err = _main(["convert", "--from-diffusers", str(diffusers), "--out", str(ckpt)], capsys)
    assert code == 2 and "training checkpoint" in err
    assert ckpt.read_bytes() == before
    assert "rng" in load_checkpoint(ckpt)  # still resumable


def test_an_output_replaces_only_a_file_of_its_own_kind(tmp_path, run, capsys):
    mine = tmp_path / "notes.pt"
    mine.write_text("my notes")
    code, err = _main(["export", "--run", str(run), "--out", str(mine)], capsys)
    assert code == 2 and "not a model file ddpm exported" in err and mine.read_text() == "my notes"
    assert _main(["export", "--run", str(run), "--out", str(tmp_path / "m.pt")], capsys)[0] == 0
    assert _main(["export", "--run", str(run), "--out", str(tmp_path / "m.pt"), "--half"], capsys)[0] == 0  # own kind
    config = run / "config.json"
    before = config.read_text()
    code, err = _main(["evaluate", "--run", str(run), "--out", str(config), "--n-samples", "2"], capsys)
    assert code == 2 and "not a JSON report or record that ddpm wrote" in err and config.read_text() == before
    (tmp_path / "picture.png").write_text("not a png")
    code, err = _main(["sample", "--run", str(run), "--out", str(tmp_path / "picture.png")], capsys)
    assert code == 2 and "is not a PNG image" in err


def test_a_record_never_replaces_a_file_ddpm_did_not_write(tmp_path, capsys):
    grid, theirs = tmp_path / "x.png", tmp_path / "x.json"
    theirs.write_text('{"mine": true}')
    fast = ["--prior-steps", "2", "--decoder-steps", "2", "--n", "1", "--device", "cpu"]
    assert _main(["unclip", "--prompt", "a seven", "--out", str(grid), *fast], capsys)[0] == 0
    assert theirs.read_text() == '{"mine": true}'  # the record is x.png.json, not x.json
    record = json.loads((tmp_path / "x.png.json").read_text())
    assert record["written_by"] == "ddpm" and record["prompts"] == ["a seven"]
    assert _main(["unclip", "--prompt", "a seven", "--out", str(grid), *fast], capsys)[0] == 0  # its own record
    (tmp_path / "y.png.json").write_text('{"mine": true}')
    code, err = _main(["unclip", "--prompt", "a seven", "--out", str(tmp_path / "y.png"), *fast], capsys)
    assert code == 2 and "the record of" in err and not (tmp_path / "y.png").exists()


def test_a_diffusers_folder_appears_whole_or_not_at_all(tmp_path, run, capsys, monkeypatch):
    model = load_run(run).model
    full = tmp_path / "full"
    full.mkdir()
    (full / "config.json").write_text("{}")
    code, err = _main(["convert", "--to-diffusers", "--run", str(run), "--out", str(full)], capsys)
    assert code == 2 and "not empty" in err and (full / "config.json").read_text() == "{}"
    import ddpm.convert

    def disk_full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(ddpm.convert, "_write_file", disk_full)
    with pytest.raises(OSError):
        to_diffusers(model, tmp_path / "new")
    assert not (tmp_path / "new").exists() and not list(tmp_path.glob("new.*"))  # no half model, no temporary
    monkeypatch.undo()
    assert sorted(p.name for p in to_diffusers(model, tmp_path / "new").iterdir()) == [
        "config.json", "diffusion_pytorch_model.safetensors"]


# ------------------------------------------------------------------------------------------ resume
def test_resume_refuses_a_checkpoint_replaced_by_another_runs(tmp_path, run, capsys):
    other = _tiny(tmp_path / "other", preset="toy2d")
    folder = _copy_run(run, tmp_path / "runs" / "tiny")
    (folder / CHECKPOINT_NAME).write_bytes((other / CHECKPOINT_NAME).read_bytes())
    log, config = (folder / "log.csv").read_text(), (folder / "config.json").read_text()
    code, err = _main(["train", "--runs-dir", str(tmp_path / "runs"), "--name", "tiny", "--resume", "--steps", "4",
                       "--no-progress"], capsys)
    assert code == 2 and "describe different runs" in err and "'tiny'" in err and "'toy2d'" in err
    assert (folder / "log.csv").read_text() == log and (folder / "config.json").read_text() == config


def test_resume_keeps_a_hand_edited_config_and_says_which_is_used(tmp_path, run, capsys):
    folder = _copy_run(run, tmp_path / "runs" / "tiny")
    d = json.loads((folder / "config.json").read_text())
    d["train"]["lr"] = 0.5
    edited = json.dumps(d)
    (folder / "config.json").write_text(edited)
    assert main(["train", "--runs-dir", str(tmp_path / "runs"), "--name", "tiny", "--resume", "--steps", "3",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "train.lr: 0.5 in config.json" in out and "uses the checkpoint's settings" in out
    assert (folder / "config.json.edited").read_text() == edited  # the edit is kept
    assert json.loads((folder / "config.json").read_text())["train"]["lr"] != 0.5
    assert load_checkpoint(folder)["step"] == 3


def test_resume_of_an_export_or_a_malformed_config_is_one_line(tmp_path, run, capsys):
    folder = tmp_path / "runs" / "x"
    folder.mkdir(parents=True)
    export_model(run, folder / CHECKPOINT_NAME)
    code, err = _main(["train", "--runs-dir", str(tmp_path / "runs"), "--name", "x", "--resume", "--no-progress"],
                      capsys)
    assert code == 2 and "exported model" in err and "cannot be resumed" in err
    ckpt = load_checkpoint(run)
    ckpt["config"]["train"]["lr"] = "fast"
    save_atomic(ckpt, folder / CHECKPOINT_NAME)
    code, err = _main(["train", "--runs-dir", str(tmp_path / "runs"), "--name", "x", "--resume", "--no-progress"],
                      capsys)
    assert code == 2 and "TrainConfig.lr = 'fast': expected a finite number" in err


def test_a_time_budget_is_bounded(tmp_path, capsys):
    code, err = _main(["train", "--preset", "tiny", "--minutes", "1e308", "--runs-dir", str(tmp_path)], capsys)
    assert code == 2 and "at most 10080 minutes" in err and not list(tmp_path.iterdir())
    trainer = Trainer(get_preset("tiny", steps=2), tmp_path / "r", device="cpu", progress=False)
    with pytest.raises(ValueError, match="at most 10080"):
        trainer.fit(minutes=1e308)


def test_a_refused_run_leaves_no_folder_behind(tmp_path, capsys):
    code, err = _main(["train", "--preset", "mnist-latent", "--autoencoder", str(tmp_path / "missing"),
                       "--runs-dir", str(tmp_path / "runs"), "--no-progress"], capsys)
    assert code == 2 and "missing" in err
    assert not (tmp_path / "runs" / "mnist-latent").exists()


# ------------------------------------------------------------------------------------------ hostile or broken files
def test_a_refused_pickle_in_convert_says_what_it_asked_for(tmp_path, run, capsys):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo owned > owned.txt",))

    folder = to_diffusers(load_run(run).model, tmp_path / "hf")  # a valid config.json beside a hostile .bin
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    torch.save({"w": Evil()}, folder / "diffusion_pytorch_model.bin")
    code, err = _main(["convert", "--from-diffusers", str(folder), "--out", str(tmp_path / "m.pt")], capsys)
    assert code == 2 and "would run code" in err and "system" in err and "weights_only set to" not in err
    assert not (tmp_path / "owned.txt").exists()


@pytest.mark.parametrize("config, words", [([1, 2], "holds list"), (None, "holds null"),
                                           ({"block_out_channels": "wide"}, "block_out_channels='wide'"),
                                           ({"norm_eps": "small"}, "norm_eps='small'"),
                                           ({"layers_per_block": 2.5}, "layers_per_block=2.5")])
def test_a_malformed_diffusers_config_is_one_line(config, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace("[", r"\[")):
        unet_config_from_diffusers(config)


def test_non_finite_weights_and_configs_are_refused_when_loading(tmp_path, run, capsys):
    ckpt = load_checkpoint(run)
    name = next(iter(ckpt["ema"]))
    ckpt["ema"][name] = torch.full_like(ckpt["ema"][name], float("nan"))
    save_atomic(ckpt, tmp_path / "nan.pt")
    code, err = _main(["sample", "--run", str(tmp_path / "nan.pt"), "--out", str(tmp_path / "s.png")], capsys)
    assert code == 2 and "non-finite" in err and name in err
    ckpt = load_checkpoint(run)
    ckpt["config"]["train"]["guidance"] = float("nan")
    save_atomic(ckpt, tmp_path / "nan_guidance.pt")
    code, err = _main(["sample", "--run", str(tmp_path / "nan_guidance.pt"), "--out", str(tmp_path / "s.png")],
                      capsys)
    assert code == 2 and "TrainConfig.guidance = nan" in err
    for argv in (["sample", "--guidance", "1e30"], ["cascade", "--sr-guidance", "1e30"],
                 ["unclip", "--guidance=-1e300"], ["evaluate", "--guidance", "51"]):
        code, err = _main(argv, capsys)
        assert code == 2 and "between -50 and 50" in err, (argv, err)
    assert not (tmp_path / "s.png").exists()


# ------------------------------------------------------------------------------------------ memory, disk, files
def test_a_batch_that_cannot_fit_is_refused_before_it_is_made(tmp_path, run, capsys, monkeypatch):
    monkeypatch.setattr(ddpm_memory, "available_bytes", lambda device="cpu": 2 * 10**9)
    check_batch(1000, 1e6, "a batch", "give a smaller --n", training=True)  # 1 GB of 2 GB free: fits
    with pytest.raises(BatchTooLarge, match="would need about 3.0 GB of memory, and 2.0 GB is free"):
        check_batch(3000, 1e6, "a batch", "give a smaller --n", training=True)
    for argv, flag in ((["sample", "--run", str(run), "--n", "1000000000000"], "smaller --n"),
                       (["bench", "--preset", "mnist", "--batch-size", "100000", "--quick"], "smaller --batch-size"),
                       (["bench", "--preset", "mnist", "--sample-batch", "10000000", "--quick"], "--sample-batch"),
                       (["unclip", "--prompt", "a seven", "--n", "10000000"], "smaller --n")):
        code, err = _main([*argv, "--out", str(tmp_path / ("o.json" if argv[0] == "bench" else "o.png"))], capsys)
        assert code == 2 and "would need about" in err and flag in err, (argv, err)
    code, err = _main(["train", "--preset", "tiny", "--batch-size", "50000", "--runs-dir", str(tmp_path)], capsys)
    assert code == 2 and "a training batch of 50,000 would need" in err
    code, err = _main(["visualize", "forward", "--n", "1000000000000", "--out-dir", str(tmp_path)], capsys)
    assert code == 2 and "at most 32" in err
    assert not list(tmp_path.iterdir())


def test_the_memory_probe_draws_no_random_number_of_the_run():
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5))
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    assert ddpm_memory.saved_bytes_per_item(lambda b: net(torch.ones(b, 4))) > 0
    assert torch.equal(torch.rand(3), expected)


def test_a_full_disk_under_torchs_zip_writer_is_an_oserror_and_nothing_is_left(tmp_path, run, capsys, monkeypatch):
    real = os.fdopen

    class Full:
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, b):
            self.n += len(b)
            if self.n > 4096:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(b)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(files.os, "fdopen", lambda fd, mode: Full(real(fd, mode)))
    with pytest.raises(OSError) as e:  # torch raises RuntimeError("PytorchStreamWriter failed ...") here
        save_atomic({"w": torch.zeros(100_000)}, tmp_path / "x.pt")
    assert e.value.errno in (errno.ENOSPC, errno.EIO) and "x.pt" in str(e.value.filename)
    code, err = _main(["export", "--run", str(run), "--out", str(tmp_path / "m.pt")], capsys)
    assert code == 2 and err.startswith("error: ") and "m.pt" in err
    assert not list(tmp_path.iterdir())  # no temporaries


def test_orphan_temporaries_go_and_a_live_writers_stay(tmp_path, run):
    orphan = tmp_path / "m.pt.k1ll3d.tmp"
    orphan.write_bytes(b"x" * 1000)
    live = tmp_path / "m.pt.wr1t1ng.tmp"
    live.write_bytes(b"x")
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as atomic_write holds its temporary
    try:
        export_model(run, tmp_path / "m.pt")
        assert not orphan.exists() and live.exists()
    finally:
        os.close(fd)
    (tmp_path / "hf.abc.tmp").mkdir()  # a folder a killed to_diffusers left
    to_diffusers(load_run(run).model, tmp_path / "hf")
    assert not (tmp_path / "hf.abc.tmp").exists()


def test_written_files_get_the_umasks_mode(tmp_path, run):
    old = os.umask(0o022)
    try:
        paths = [export_model(run, tmp_path / "m.pt"), files.write_json(tmp_path / "r.json", {}),
                 to_diffusers(load_run(run).model, tmp_path / "hf") / "config.json", tmp_path / "hf"]
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in paths}
        assert modes == {"m.pt": 0o644, "r.json": 0o644, "config.json": 0o644, "hf": 0o755}
    finally:
        os.umask(old)
