"""Training: run folder, exact resume, Ctrl-C, NaN, atomic checkpoints, EMA, DDP parity."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ddpm.checkpoints import CheckpointError, load_checkpoint, load_run, migrate_config, save_atomic
from ddpm.config import Config
from ddpm.presets import get_preset
from ddpm.training import EMA, DistInfo, Trainer, TrainingError, lr_factor

ROOT = Path(__file__).resolve().parent.parent


def _tiny(**overrides):
    return get_preset("tiny", **{"steps": 8, "log_every": 1, "ckpt_every": 4, **overrides})


def _losses(run_dir):
    with open(run_dir / "log.csv", newline="") as f:
        return [(int(r["step"]), r["loss"]) for r in csv.DictReader(f)]


def test_a_run_folder_has_everything(tmp_path):
    run = tmp_path / "run"
    summary = Trainer(_tiny(), run, device="cpu", progress=False).fit()
    assert summary["step"] == 8 and not summary["interrupted"]
    for name in ("config.json", "log.csv", "loss_by_t.csv", "loss.png", "checkpoint.pt", "samples/step_000008.png"):
        assert (run / name).stat().st_size > 0, name
    assert [s for s, _ in _losses(run)] == list(range(1, 9))
    with open(run / "loss_by_t.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert len(rows[0]) == 11 and len(rows) == 9
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)  # plain tensors and dicts only
    assert {"model", "ema", "optimizer", "scheduler", "step", "config", "rng", "loader"} <= set(ckpt)
    assert ckpt["step"] == 8 and Config.from_dict(ckpt["config"]) == _tiny()


@pytest.mark.parametrize("cond", ["class", "text"])
def test_resume_is_exact(tmp_path, cond):
    """An interrupted-and-resumed run logs exactly the losses of an uninterrupted one (CPU, same seed)."""
    config = _tiny(cond=cond)
    Trainer(config, tmp_path / "full", device="cpu", progress=False).fit()
    Trainer(config, tmp_path / "split", device="cpu", progress=False).fit(until=5)  # stops at 5 and saves
    Trainer(config, tmp_path / "split", device="cpu", progress=False, resume=True).fit()
    full, split = _losses(tmp_path / "full"), _losses(tmp_path / "split")
    assert full == split and len(full) == 8
    a = load_checkpoint(tmp_path / "full")
    b = load_checkpoint(tmp_path / "split")
    for key in a["ema"]:
        assert torch.equal(a["ema"][key], b["ema"][key]), key


@pytest.mark.parametrize("scale", [0.0, 0.1])
def test_the_text_encoder_has_its_own_learning_rate(tmp_path, scale):
    """cond_lr_scale: the conditioner's parameters get lr x scale (0 freezes them); everything else gets lr.
    With Adam a weight moves by about lr per step, so the encoder's weights move about ``scale`` as far."""
    trainer = Trainer(_tiny(cond="text", cond_lr_scale=scale, steps=3), tmp_path / "run", device="cpu", progress=False)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.fit(final_samples=False)
    groups = trainer.optimizer.param_groups
    assert len(groups) == 2 and groups[1]["initial_lr"] == pytest.approx(scale * groups[0]["initial_lr"])
    moved = {n: (p.detach() - before[n]).abs().max().item() for n, p in trainer.model.named_parameters()}
    enc = max(v for n, v in moved.items() if n.startswith("conditioner."))
    rest = max(v for n, v in moved.items() if not n.startswith("conditioner."))
    assert rest > 0
    assert enc == 0 if scale == 0 else 0 < enc < 0.5 * rest
    # one group where the scale is 1 (as in checkpoints written before cond_lr_scale existed)
    plain = Trainer(_tiny(cond="text", steps=1), tmp_path / "plain", device="cpu", progress=False)
    assert len(plain.optimizer.param_groups) == 1


def test_resume_from_a_checkpoint_drops_later_log_rows(tmp_path):
    run = tmp_path / "run"
    trainer = Trainer(_tiny(), run, device="cpu", progress=False)
    trainer.fit(until=6)  # checkpoint at 4 (ckpt_every) and at 6 (end)
    # pretend the process died after step 6 without its final checkpoint: restore the one from step 4
    trainer.step = 4
    resumed = Trainer(_tiny(), run, device="cpu", progress=False, resume=True)
    assert resumed.step == 6
    resumed.fit()
    assert [s for s, _ in _losses(run)] == list(range(1, 9))


def test_resume_refuses_another_network(tmp_path):
    Trainer(_tiny(steps=2), tmp_path / "run", device="cpu", progress=False).fit()
    with pytest.raises(TrainingError, match="different network"):
        Trainer(_tiny(cond="none"), tmp_path / "run", device="cpu", progress=False, resume=True)
    with pytest.raises(TrainingError, match="--resume"):
        Trainer(_tiny(), tmp_path / "run", device="cpu", progress=False)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    run = tmp_path / "run"
    trainer = Trainer(_tiny(), run, device="cpu", progress=False)
    trainer.fit(until=4)
    good = load_checkpoint(run)
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingError, match="at step 5"):
        trainer.fit()
    kept = load_checkpoint(run)
    assert kept["step"] == 4 and all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())
    assert all(torch.equal(good["model"][k], kept["model"][k]) for k in good["model"])


def test_keyboard_interrupt_saves_and_returns(tmp_path, monkeypatch):
    trainer = Trainer(_tiny(), tmp_path / "run", device="cpu", progress=False)
    real_step = trainer.train_step

    def step(*args, **kwargs):
        if trainer.step == 3:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_step", step)
    summary = trainer.fit()
    assert summary["interrupted"] and summary["step"] == 3
    assert load_checkpoint(tmp_path / "run")["step"] == 3


def test_ctrl_c_in_the_cli_saves_a_checkpoint(tmp_path):
    """A real SIGINT to `python -m ddpm train`: it saves, says so, and exits with status 0."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ddpm", "train", "--preset", "tiny", "--steps", "100000",
                             "--runs-dir", str(tmp_path), "--no-progress", "--ckpt-every", "100000"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "tiny" / "log.csv"
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "interrupted; checkpoint saved" in out
    step = load_checkpoint(tmp_path / "tiny")["step"]
    assert step >= 10  # log_every=5 in the tiny preset: at least two rows were logged


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_atomic({"format": 1, "config": {}, "step": 1}, path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_atomic({"format": 1, "config": {}, "step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temporary files left


def test_bad_checkpoints_give_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_run(tmp_path / "empty")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_run(tmp_path / "junk.pt")


def test_ema_warmup_and_decay():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.9, warmup=True)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # first decay: min(0.9, 1/10) = 0.1 -> 0.9 of the new weights
    assert ema.model.weight.item() == pytest.approx(0.9)
    for _ in range(200):
        ema.update(model)
    assert ema.model.weight.item() == pytest.approx(1.0, abs=1e-6)
    slow = EMA(torch.nn.Linear(1, 1, bias=False), decay=0.9, warmup=False)
    with torch.no_grad():
        slow.model.weight.fill_(0.0)
    slow.update(model)
    assert slow.model.weight.item() == pytest.approx(0.1)


def test_lr_schedule():
    assert lr_factor(0, 10, 100, "constant") == pytest.approx(0.1)
    assert lr_factor(9, 10, 100, "constant") == 1.0 and lr_factor(50, 10, 100, "constant") == 1.0
    assert lr_factor(10, 10, 100, "cosine") == pytest.approx(1.0)
    assert lr_factor(55, 10, 100, "cosine") == pytest.approx(0.5)
    assert lr_factor(100, 10, 100, "cosine") == pytest.approx(0.0, abs=1e-12)


def test_short_training_fits_a_2d_toy(tmp_path):
    """The toy2d preset (MLP) learns: the loss falls well below its start within a few hundred steps."""
    config = get_preset("toy2d", steps=300, log_every=50, ckpt_every=0, sample_steps=20)
    summary = Trainer(config, tmp_path / "toy", device="cpu", progress=False).fit()
    losses = [float(v) for _, v in _losses(tmp_path / "toy")]
    assert losses[-1] < 0.75 * losses[0], losses
    assert Path(summary["samples"]).exists()


# --------------------------------------------------------------------------------------- DDP on CPU
def _ddp_worker(rank, world, port, out_dir, steps):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        config = get_preset("tiny", cond="none", batch_size=8, precision="fp32", steps=steps, log_every=1,
                            ckpt_every=0)
        trainer = Trainer(config, Path(out_dir) / "ddp", device="cpu", progress=False,
                          dist=DistInfo(rank, world, rank))
        for x0, t, noise in _global_batches(steps):
            part = slice(rank * 4, (rank + 1) * 4)
            trainer.train_step(x0[part], None, t[part], noise[part])
        torch.save(trainer.model.state_dict(), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _global_batches(steps):
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        yield (torch.rand(8, 1, 28, 28, generator=g) * 2 - 1, torch.randint(0, 100, (8,), generator=g),
               torch.randn(8, 1, 28, 28, generator=g))


def test_ddp_with_gloo_matches_a_single_process_on_the_same_global_batch(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    steps = 3
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path), steps), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(r0[k], r1[k]) for k in r0)  # the replicas stay identical

    torch.manual_seed(0)
    fp32 = {"precision": "fp32"}  # parity in fp32: bf16 autocast rounds differently at batch 4 and batch 8
    single = Trainer(get_preset("tiny", cond="none", batch_size=8, steps=steps, ckpt_every=0, **fp32),
                     tmp_path / "single", device="cpu", progress=False)
    for x0, t, noise in _global_batches(steps):
        single.train_step(x0, None, t, noise)
    ref = single.model.state_dict()
    start = Trainer(get_preset("tiny", cond="none", batch_size=8, ckpt_every=0), tmp_path / "init", device="cpu",
                    progress=False).model.state_dict()  # same seed, same initial weights
    moved = max((ref[k] - start[k]).abs().max().item() for k in ref if ref[k].is_floating_point())
    diff = max((ref[k] - r0[k]).abs().max().item() for k in ref if ref[k].is_floating_point())
    assert moved > 1e-4 and diff < 1e-5 * max(1.0, moved), (moved, diff)


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path):
    """The real entry point under torchrun with gloo: rank 0 alone logs and saves."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ddpm", "train",
           "--preset", "tiny", "--steps", "6", "--batch-size", "8", "--runs-dir", str(tmp_path), "--no-progress",
           "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("done: step 6/6") == 1  # only rank 0 prints
    ckpt = load_checkpoint(tmp_path / "tiny")
    assert ckpt["step"] == 6 and len(ckpt["rng"]) == 2
    assert not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])  # each rank its own seed
    assert [s for s, _ in _losses(tmp_path / "tiny")][-1] == 6


def test_steps_for_budget():
    from ddpm.optim import steps_for_budget

    # 60 s left at 0.5 s/step from step 10, and a grid of 2 * 50 * 80 / (3 * 128) = 20.8 steps' time
    assert steps_for_budget(60.0, 0.5, 10, sample_steps=50, batch_size=128) == 10 + int((60 - 0.5 * 20.8333) / 0.5)
    assert steps_for_budget(1.0, 0.5, 10, sample_steps=50, batch_size=128) == 10  # no time left: stop here


def _fake_clock(monkeypatch, seconds_for_step) -> dict[str, float]:
    """training's clock, advanced only by training steps: step k (from 0) takes seconds_for_step(k)."""
    import ddpm.training as training

    clock = {"now": 0.0}

    class FakeTime:
        @staticmethod
        def perf_counter():
            return clock["now"]

    real_step = Trainer.train_step

    def timed_step(self, *args, **kwargs):
        clock["now"] += seconds_for_step(self.step)
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(training, "time", FakeTime)
    monkeypatch.setattr(Trainer, "train_step", timed_step)
    return clock


def test_a_time_budget_fixes_and_records_the_step_count(tmp_path, monkeypatch):
    """fit(minutes=): after the timed steps the total is fixed from the measured pace and stored in the config,
    the checkpoint and config.json, so that --resume keeps it. A fake clock makes every step take 0.5 s."""
    _fake_clock(monkeypatch, lambda step: 0.5)
    config = get_preset("tiny", steps=1000, ckpt_every=0, sample_steps=5, warmup=100, lr_schedule="cosine")
    trainer = Trainer(config, tmp_path / "run", device="cpu", progress=False)
    summary = trainer.fit(minutes=0.25, final_samples=False)
    expected = 10 + int((15.0 - 5.0 - 0.5 * 2 * 5 * 80 / (3 * 16)) / 0.5)  # 15 s, 10 steps gone, grid time
    warmup = max(expected // 5, 10)  # a fifth of the run, but not shorter than what has already run
    assert summary["budget"] == {"minutes": 0.25, "s_per_step": 0.5, "steps": expected, "warmup": warmup,
                                 "plans": 1}  # the warmup ended at the first plan: nothing to plan again
    assert summary["step"] == expected
    assert load_checkpoint(tmp_path / "run")["config"]["train"]["steps"] == expected
    assert f'"steps": {expected}' in (tmp_path / "run" / "config.json").read_text()
    # a warmup of 100 steps would outlast this run: it is cut, and the cosine decay reaches 0 at the end
    assert load_checkpoint(tmp_path / "run")["config"]["train"]["warmup"] == warmup
    assert trainer.scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)


def test_configs_saved_with_amp_load_with_a_precision():
    """Runs saved before TrainConfig.precision had amp (bf16 autocast on CUDA): True -> "auto", False -> "fp32",
    through the one migration at the loading boundary; unknown precisions are refused."""
    d = _tiny().to_dict()
    del d["train"]["precision"]
    for amp, precision in ((True, "auto"), (False, "fp32")):
        old = {**d, "train": {**d["train"], "amp": amp}}
        assert Config.from_dict(migrate_config(old)).train.precision == precision
    with pytest.raises(ValueError, match="precision"):
        get_preset("tiny", precision="fp16")



def test_a_time_budget_is_planned_again_when_the_warmup_ends(tmp_path, monkeypatch):
    """The first plan (after 10 steps) fixes the warmup; when it ends the total is planned again from the pace
    since the first plan. Fake clock: 0.5 s per step for the first 10 steps, then 1.0 s (the machine got
    busier); the run still ends within its minute, final grid included."""
    clock = _fake_clock(monkeypatch, lambda step: 0.5 if step < 10 else 1.0)
    config = get_preset("tiny", steps=1000, ckpt_every=0, sample_steps=5, warmup=100, lr_schedule="cosine")
    summary = Trainer(config, tmp_path / "run", device="cpu", progress=False).fit(minutes=1.0, final_samples=False)
    grid = 2 * 5 * 80 / (3 * 16)  # the final grid, in training steps
    first = 10 + int((60 - 5 - 0.5 * grid) / 0.5)  # 103 steps at the first plan's 0.5 s/step
    warmup = first // 5  # 20
    second = warmup + int((60 - 5 - 10 * 1.0 - 1.0 * grid) / 1.0)  # at step 20, from 1.0 s/step
    assert summary["budget"] == {"minutes": 1.0, "s_per_step": 1.0, "steps": second, "warmup": warmup, "plans": 2}
    assert summary["step"] == second and second < first
    assert clock["now"] + 1.0 * grid <= 60.0 + 1.0  # ends on time, grid included
    assert load_checkpoint(tmp_path / "run")["config"]["train"]["steps"] == second
