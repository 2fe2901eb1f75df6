"""Nothing a user does ends in a traceback or loses work (issue 12).

- Ctrl-C (a real SIGINT, at several moments) then --resume gives the log and the weights of an
  uninterrupted run, exactly.
- A run folder is locked: a second trainer on it is refused with one line naming the first.
- Killing a process while it rewrites log.csv leaves the old log whole; stale temporary files go.
- Bad flags, paths and files: exit code 2, one line, no traceback, no file written.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ddpm._files import FolderLock, LockError
from ddpm.checkpoints import CHECKPOINT_NAME, load_checkpoint, save_atomic
from ddpm.cli import main
from ddpm.presets import get_preset
from ddpm.runlog import RunLog
from ddpm.training import Trainer, TrainingError

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
TRAIN = [sys.executable, "-m", "ddpm", "train", "--preset", "tiny", "--steps", "60", "--ckpt-every", "20",
         "--no-progress", "--threads", "1", "--device", "cpu"]


def _log(run: Path) -> list[tuple[str, str]]:
    with open(run / "log.csv", newline="") as f:
        return [(r["step"], r["loss"]) for r in csv.DictReader(f)]


def _rows(run: Path) -> int:
    path = run / "log.csv"
    return max(0, len(path.read_text().splitlines()) - 1) if path.exists() else 0


def _weights(run: Path) -> dict[str, torch.Tensor]:
    ckpt = load_checkpoint(run)
    return {**{f"model.{k}": v for k, v in ckpt["model"].items()}, **{f"ema.{k}": v for k, v in ckpt["ema"].items()}}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("full")
    subprocess.run([*TRAIN, "--runs-dir", str(root)], env=ENV, cwd=root, check=True, capture_output=True)
    return root / "tiny"


@pytest.mark.parametrize("after_rows", [1, 7])
def test_ctrl_c_then_resume_is_exact(tmp_path, uninterrupted, after_rows):
    """SIGINT after `after_rows` log rows (log_every 5 of 60 steps), then --resume: same log, same weights."""
    proc = subprocess.Popen([*TRAIN, "--runs-dir", str(tmp_path)], env=ENV, cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    run = tmp_path / "tiny"
    deadline = time.time() + 120
    while time.time() < deadline and _rows(run) < after_rows and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    stopped = load_checkpoint(run)["step"]
    if stopped < 60:
        assert "interrupted; checkpoint saved" in out
        resumed = subprocess.run([*TRAIN, "--runs-dir", str(tmp_path), "--resume"], env=ENV, cwd=tmp_path,
                                 capture_output=True, text=True)
        assert resumed.returncode == 0, resumed.stderr
    assert _log(run) == _log(uninterrupted)
    full, split = _weights(uninterrupted), _weights(run)
    assert full.keys() == split.keys()
    assert all(torch.equal(full[k], split[k]) for k in full), [k for k in full if not torch.equal(full[k], split[k])]


def test_keyboard_interrupt_inside_a_step_gives_back_its_batch(tmp_path, monkeypatch):
    """A KeyboardInterrupt raised mid-step (e.g. by a notebook) is also exact: the unfinished step's batch and
    random draws are given back before the checkpoint is written."""
    config = get_preset("tiny", steps=8, log_every=1, ckpt_every=0)
    Trainer(config, tmp_path / "full", device="cpu", progress=False).fit(final_samples=False)
    trainer = Trainer(config, tmp_path / "split", device="cpu", progress=False)
    real_loss = trainer.diffusion.training_loss

    def interrupted_loss(*args, **kwargs):
        out = real_loss(*args, **kwargs)  # this step's batch and random draws are consumed ...
        if trainer.step == 3:
            raise KeyboardInterrupt  # ... then it stops before the update
        return out

    monkeypatch.setattr(trainer.diffusion, "training_loss", interrupted_loss)
    assert trainer.fit()["interrupted"]
    monkeypatch.undo()
    Trainer(config, tmp_path / "split", device="cpu", progress=False, resume=True).fit(final_samples=False)
    assert _log(tmp_path / "split") == _log(tmp_path / "full")


def test_a_second_trainer_on_the_same_folder_is_refused(tmp_path):
    """Two real processes: while one trains, another on the same --name exits with one line naming it."""
    first = subprocess.Popen([*TRAIN[:7], "100000", *TRAIN[8:], "--runs-dir", str(tmp_path)], env=ENV, cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and _rows(tmp_path / "tiny") < 1 and first.poll() is None:
            time.sleep(0.05)
        assert first.poll() is None, first.communicate()
        for extra in ([], ["--resume"]):
            second = subprocess.run([*TRAIN, "--runs-dir", str(tmp_path), *extra], env=ENV, cwd=tmp_path,
                                    capture_output=True, text=True)
            assert second.returncode == 2
            assert second.stderr.strip() == (f"error: {tmp_path / 'tiny'} is in use by another process (pid "
                                             f"{first.pid}); wait for it to finish or choose another --name")
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=120)
    rows = [int(s) for s, _ in _log(tmp_path / "tiny")]
    assert rows and rows == sorted(set(rows))  # no row logged twice


def test_the_lock_goes_with_its_process(tmp_path):
    with FolderLock(tmp_path):
        with pytest.raises(LockError, match=f"pid {os.getpid()}"):
            FolderLock(tmp_path).acquire()
    FolderLock(tmp_path).acquire().release()  # released: free again
    subprocess.run([sys.executable, "-c", f"from ddpm._files import FolderLock; FolderLock({str(tmp_path)!r})"
                    f".acquire(); import os; os._exit(9)"], env=ENV, check=False)
    FolderLock(tmp_path).acquire().release()  # a killed holder leaves no lock behind


def test_killed_during_a_log_rewrite_the_old_log_survives(tmp_path):
    """SIGKILL a process in the middle of rewriting log.csv (as --resume does): the old log is intact."""
    run = tmp_path / "run"
    log = RunLog(run, T=100)
    log.open(0)
    for step in range(1, 6):
        log.record(torch.full((4,), 0.5), torch.arange(4))
        log.write(step, 1e-3, 1.0, 4)
    before = (run / "log.csv").read_text()
    script = ("import os, ddpm._files as u\n"
              "def die(f):\n    f.write(b'step,loss\\n1,0.')\n    f.flush()\n    os.kill(os.getpid(), 9)\n"
              f"u.atomic_write({str(run / 'log.csv')!r}, die)\n")
    proc = subprocess.run([sys.executable, "-c", script], env=ENV)
    assert proc.returncode == -signal.SIGKILL
    assert (run / "log.csv").read_text() == before
    assert list(run.glob("log.csv.*.tmp"))  # the killed write left its temporary file ...
    config = get_preset("tiny", steps=1, ckpt_every=0)
    save_atomic({"format": 1, "config": {}, "step": 0}, run / "checkpoint.pt.abc.tmp")
    Trainer(config, run, device="cpu", progress=False).close()  # ... which the next trainer on the folder removes
    assert not list(run.glob("*.tmp"))


def test_a_cut_log_row_is_dropped_on_resume(tmp_path):
    run = tmp_path / "run"
    log = RunLog(run, T=100)
    log.open(0)
    for step in (1, 2):
        log.record(torch.full((4,), 0.5), torch.arange(4))
        log.write(step, 1e-3, 1.0, 4)
    with open(run / "log.csv", "a") as f:
        f.write("3,0.4")  # a row cut short by a kill
    RunLog(run, T=100).open(5)
    assert [r[0] for r in csv.reader(open(run / "log.csv"))] == ["step", "1", "2"]


def test_resume_refuses_changes_that_break_exactness_and_applies_the_others(tmp_path, capsys):
    runs = str(tmp_path)
    assert main(["train", "--preset", "tiny", "--steps", "4", "--runs-dir", runs, "--no-progress"]) == 0
    capsys.readouterr()
    for flags, field in ((["--lr", "0.5"], "lr"), (["--seed", "3"], "seed"), (["--batch-size", "8"], "batch_size")):
        assert main(["train", "--runs-dir", runs, "--name", "tiny", "--resume", "--no-progress", *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: --resume cannot change {field}") and "\n" not in err
    assert main(["train", "--runs-dir", runs, "--name", "tiny", "--resume", "--steps", "6", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "changed on resume: steps: 4 -> 6" in out and "done: step 6/6" in out
    saved = load_checkpoint(tmp_path / "tiny")
    assert saved["config"]["train"]["steps"] == 6 and saved["config"]["train"]["seed"] == 0
    assert '"steps": 6' in (tmp_path / "tiny" / "config.json").read_text()


def test_nan_message_says_what_is_true(tmp_path):
    trainer = Trainer(get_preset("tiny", steps=4, ckpt_every=0), tmp_path / "run", device="cpu", progress=False)
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingError) as e:
        trainer.fit()
    assert "no checkpoint of this run was saved yet" in str(e.value) and "mixed precision" not in str(e.value)
    assert "autocast" not in str(e.value)


# ------------------------------------------------------------------------------------------ bad input
@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    Trainer(get_preset("tiny", steps=1, ckpt_every=0, cond="text"), root / "txt", device="cpu",
            progress=False).fit(final_samples=False)
    return root / "txt"


def _bad_cases(tmp: Path, text_run: Path) -> list[tuple[list[str], str]]:
    (tmp / "a_file").write_text("x")
    (tmp / "a_folder").mkdir()
    (tmp / "empty.pt").write_bytes(b"")
    torch.save({"format": 1, "config": {}, "step": "seven", "ema": {}}, tmp / "wrong_types.pt")
    torch.save({"format": 1, "config": [1, 2], "step": 3, "ema": {}}, tmp / "wrong_config.pt")
    run = ["--run", str(text_run)]
    return [
        (["sample", "--n", "0"], "argument --n"),
        (["sample", "--n", "-3"], "argument --n"),
        (["sample", "--n", "many"], "argument --n"),
        (["sample", "--guidance", "nan"], "argument --guidance"),
        (["sample", "--eta", "nan"], "argument --eta"),
        (["sample", "--eta", "-1"], "argument --eta"),
        (["sample", "--steps", "0"], "argument --steps"),
        (["sample", "--steps", "100000"], "more than this model's T"),
        (["sample", "--seed", "-1"], "argument --seed"),
        (["sample", "--threads", "0"], "argument --threads"),
        (["sample", "--out", str(tmp / "a_folder")], "is a folder"),
        (["sample", "--out", str(tmp / "grid.jpgx")], "unknown file extension"),
        (["sample", "--out", str(tmp / "a_file" / "grid.png")], "is a file, not a folder"),
        (["sample", "--trajectory", str(tmp / "x.mp4")], "unknown file extension"),
        (["sample", "--out", str(tmp / "s.gif"), "--trajectory", str(tmp / "s.gif")], "unknown file extension"),
        (["sample", "--device", "gpu"], "unknown device 'gpu'"),
        (["sample", "--device", "cuda:7"], "device 'cuda:7'"),
        (["sample", "--run", str(tmp / "missing.pt")], "no such file"),
        (["sample", "--run", str(tmp / "empty.pt")], "empty or cut short"),
        (["sample", "--run", str(tmp / "wrong_types.pt")], "malformed 'step'"),
        (["sample", "--run", str(tmp / "wrong_config.pt")], "malformed 'config'"),
        (["sample", *run, "--prompt", ""], "--prompt is empty"),
        (["sample", *run, "--prompt", "   "], "--prompt is empty"),
        (["sample", *run, "--class", "3", "--prompt", "a handwritten three"], "not both"),
        (["sample", *run, "--prompt", "zebra " * 2000], "unknown word"),
        (["sample", *run, "--class", "x" * 10000], "neither a number nor a class name"),
        (["evaluate", *run, "--steps", "5,10", "--bpd-images", "8"], "a sweep of samplers or steps measures samples"),
        (["train", "--ckpt-every", "-1"], "argument --ckpt-every"),
        (["train", "--sample-every", "-5"], "argument --sample-every"),
        (["train", "--steps", "0"], "argument --steps"),
        (["train", "--lr", "nan"], "argument --lr"),
        (["train", "--lr", "-1"], "argument --lr"),
        (["train", "--ema-decay", "1.5"], "argument --ema-decay"),
        (["train", "--min-snr-gamma", "-1"], "argument --min-snr-gamma"),
        (["train", "--minutes", "0"], "argument --minutes"),
        (["train", "--minutes", "5", "--steps", "10"], "--minutes fixes the length of a new run"),
        (["sample", "--sampler", "ddim", "--variance", "fixed_large"], "--variance is for the ancestral sampler"),
        (["sample", "--sampler", "dpmpp-2m", "--eta", "0.5"],
         "--eta is for the ddim and dpmpp-2m-sde samplers, not dpmpp-2m"),
        (["sample", "--spacing", "cosine"], "argument --spacing"),
        (["train", "--device", "gpu", "--runs-dir", str(tmp / "r")], "unknown device 'gpu'"),
        (["train", "--preset", "nope"], "unknown preset 'nope'"),
        (["train", "--runs-dir", str(tmp / "a_file")], "is a file, not a folder"),
        (["train", "--name", "../escape"], "plain folder name"),
        (["train", "--resume", "--runs-dir", str(tmp / "nothing")], "no such run folder"),
        (["export", "--run", str(text_run), "--out", str(tmp / "a_folder")], "is a folder"),
        (["export", "--run", str(text_run), "--out", str(tmp / "m.safetensors")], "unknown file extension"),
        (["export", "--run", str(text_run), "--out", str(tmp / "a_file" / "m.pt")], "is a file, not a folder"),
    ]


def test_bad_input_gives_one_line_and_writes_nothing(tmp_path, text_run, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cases = _bad_cases(tmp_path, text_run)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    run_files = sorted(p.relative_to(text_run) for p in text_run.rglob("*"))
    for argv, expected in cases:
        try:
            code = main(argv)
        except SystemExit as e:  # argparse: parse-time checks
            code = e.code
        err = capsys.readouterr().err.strip()
        assert code == 2, (argv[:4], err)
        assert "\n" not in err and "Traceback" not in err, (argv[:4], err)
        assert expected in err, (argv[:4], err)
        assert len(err) < 400, (argv[:4], len(err))
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert sorted(p.relative_to(text_run) for p in text_run.rglob("*")) == run_files


def test_a_refused_pickle_says_why_and_what(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo owned > owned.txt",))

    torch.save({"format": 1, "config": {}, "step": 0, "ema": Evil()}, tmp_path / "evil.pt")
    assert main(["sample", "--run", str(tmp_path / "evil.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert "would run code" in err and "system" in err and "\n" not in err
    assert not (tmp_path / "owned.txt").exists()


def test_a_full_disk_is_one_line_and_the_checkpoint_survives(tmp_path, capsys, monkeypatch):
    assert main(["train", "--preset", "tiny", "--steps", "2", "--runs-dir", str(tmp_path), "--no-progress"]) == 0
    capsys.readouterr()
    good = load_checkpoint(tmp_path / "tiny")

    def full(obj, f):
        raise OSError(28, "No space left on device", str(tmp_path / "tiny" / CHECKPOINT_NAME))

    monkeypatch.setattr(torch, "save", full)
    assert main(["train", "--runs-dir", str(tmp_path), "--name", "tiny", "--resume", "--steps", "3",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no space left on the disk") and "\n" not in err
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "tiny")["step"] == good["step"]
    assert not list((tmp_path / "tiny").glob("*.tmp"))
