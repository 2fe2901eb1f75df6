"""Training: Algorithm 1 in a loop, with EMA, warmup, clipping, exact resume, logs, grids and DDP.

    from ddpm.presets import get_preset
    from ddpm.training import Trainer
    Trainer(get_preset("mnist"), run_dir="runs/mnist").fit()

Each step: x0 from the data, t ~ U{0..T-1}, eps ~ N(0, I), loss = ||target - model(x_t, t, cond)||^2 with the
target eps, x0 or v of the config's parameterization (GaussianDiffusion.training_loss), an Adam or AdamW
step (config.train.optimizer) with gradient clipping, the learning-rate schedule, then the EMA update.
The same loop trains every stage of the systems in ddpm/pipelines/: the run's Kind (``config.hook``,
ddpm.pipelines.base) says what differs from the paper's DDPM: the frozen network a run builds on (a latent run's
autoencoder, an unCLIP stage's CLIP), what a batch becomes before the loss (latents, embeddings, a
super-resolution model's noise-augmented low-res input), a loss of its own (an autoencoder's, a CLIP's), what
happens when the run stops, and the picture it draws of its progress.

A run folder holds config.json, log.csv and loss_by_t.csv (ddpm.runlog), loss.png, samples/step_XXXXXX.png
and checkpoint.pt (ddpm.checkpoints); every file is written atomically, and a lock file keeps a second
trainer out while one runs. Determinism on CPU: all randomness comes from the global torch RNG (seeded
with seed + rank), the loader's (seed, epoch) permutation and a caption generator; all three are saved
in the checkpoint. Ctrl-C stops at the end of the current step and saves the state as of that step, so
an interrupted and resumed run produces the same losses and weights as an uninterrupted one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ddpm._files import FolderLock, remove_stale_temporaries, write_text_atomic
from ddpm._util import stop_on_sigint
from ddpm.checkpoints import (
    CHECKPOINT_NAME,
    CONFIG_NAME,
    CheckpointError,
    build_diffusion,
    build_model,
    config_json,
    load_checkpoint,
    read_config,
    save_atomic,
)
from ddpm.config import Config, resume_changes
from ddpm.data import training_loader
from ddpm.datasets import Labels, captions_for
from ddpm.improved import timestep_sampler
from ddpm.memory import BatchTooLarge, check_batch, saved_bytes_per_item
from ddpm.optim import EMA, MAX_MINUTES, TimeBudget, lr_factor, param_groups
from ddpm.pipelines.base import GridInputs
from ddpm.resume import RESUME_KEYS, check_config_json, load_training_state, training_state
from ddpm.runlog import LOG_NAME, LOSS_BY_T_NAME, RunLog
from ddpm.runtime import DistInfo, rng_state, select_device, set_rng_state
from ddpm.samplers import bf16_is_fast
from ddpm.viz import plot_loss_curve

__all__ = ["Trainer", "TrainingError"]


class TrainingError(RuntimeError):
    """A run that cannot go on (non-finite loss, mismatched resume); the message says why and what to do."""


class Trainer:
    """Trains the network of a Config on its data and writes everything to run_dir.

    Args:
        config: what to train (ddpm.presets.get_preset(...)). With resume=True, the settings that
            RESUMABLE_CHANGES names may differ from the checkpoint's (see ``changes``); others are refused.
        run_dir: the run folder (created and locked). With resume=True the run continues from its checkpoint.pt.
        device: torch device (default: ddpm.runtime.select_device("auto")).
        dist: this process's DDP rank (see setup_distributed); the model is wrapped in DDP when world > 1.
        progress: show a tqdm bar (rank 0 only).
        dataset: an ImageDataset to train on instead of loading config.data (tests, notebooks).
    """

    def __init__(self, config: Config, run_dir: str | os.PathLike, device: torch.device | str | None = None,
                 resume: bool = False, dist: DistInfo | None = None, progress: bool = True, dataset=None):
        dist = dist or DistInfo()
        self.config, self.dist = config, dist
        self.run_dir = Path(run_dir)
        self.device = torch.device(device) if device is not None else select_device("auto")
        self.progress = progress and dist.is_main
        tc = config.train
        if tc.batch_size % dist.world_size:
            raise ValueError(f"batch_size {tc.batch_size} must be divisible by the number of processes "
                             f"{dist.world_size}")
        self.local_batch = tc.batch_size // dist.world_size
        self.lock = FolderLock(self.run_dir).acquire() if dist.is_main else None
        try:
            self._build(dataset)
            self.notes: list[str] = []  # what --resume found and did (a hand-edited config.json kept aside)
            self.changes: list[str] = self._resume() if resume else []
            if not resume and dist.is_main and (self.run_dir / CHECKPOINT_NAME).exists():
                raise TrainingError(f"{self.run_dir} already holds a checkpoint; continue it with --resume, or "
                                    f"choose another --name")
        except BaseException:
            if self.lock is not None:  # a refused run leaves no folder holding only a lock file
                self.lock.release(remove_if_unused=True)
            raise

    def _build(self, dataset) -> None:
        tc, dist = self.config.train, self.dist
        if dist.is_main:  # files that a killed atomic write left behind
            remove_stale_temporaries(self.run_dir, (CHECKPOINT_NAME, CONFIG_NAME, LOG_NAME, LOSS_BY_T_NAME))
        torch.manual_seed(tc.seed + dist.rank)
        self.kind = self.config.hook  # what this kind of run does differently from the paper's DDPM
        try:  # the frozen network it builds on: a latent run's autoencoder, an unCLIP stage's CLIP
            self.frozen, self.config = self.kind.attach(self.config, self.device)
        except (CheckpointError, ValueError) as e:
            raise TrainingError(str(e)) from None
        self.loader = training_loader(self.config, self.local_batch, dist, dataset, self.frozen)
        self.label_names = tuple(getattr(self.loader.dataset, "label_names", ()))
        self.model = build_model(self.config).to(self.device)
        self._check_memory()
        self.diffusion = build_diffusion(self.config, self.device)
        self.timesteps = timestep_sampler(self.config.diffusion.timesteps, self.diffusion.T)  # None: uniform
        self.ema = EMA(self.model, tc.ema_decay, tc.ema_warmup)
        opt_cls = torch.optim.AdamW if tc.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = opt_cls(param_groups(self.model, tc.lr, tc.cond_lr_scale), lr=tc.lr,
                                 weight_decay=tc.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, self.config.train.warmup, self.config.train.steps, tc.lr_schedule))
        self.caption_gen = torch.Generator().manual_seed(tc.seed + 7919 * (dist.rank + 1))
        self.step, self.saved_step, self.stop_requested, self.budget = 0, None, False, None
        self.use_amp = tc.precision == "bf16" or (tc.precision == "auto" and bf16_is_fast(self.device.type))
        self.log = RunLog(self.run_dir, self.diffusion.T) if dist.is_main else None
        self.net = self.model
        if dist.enabled:
            self.net = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if tc.compile:
            self.net = torch.compile(self.net)

    def _check_memory(self) -> None:
        """Refuse a batch that would not fit in the memory free now, before its first step (ddpm.memory)."""
        shape, device = self.config.sample_shape, self.device
        per = saved_bytes_per_item(lambda b: self.model(torch.zeros(b, *shape, device=device),
                                                        torch.zeros(b, dtype=torch.long, device=device), None))
        try:
            check_batch(self.local_batch, per, "a training batch", "give a smaller --batch-size", device, training=True)
        except BatchTooLarge as e:
            raise TrainingError(str(e)) from None

    def close(self) -> None:
        """Release the run folder's lock (fit does this when it returns)."""
        if self.lock is not None:
            self.lock.release()

    # ------------------------------------------------------------------ data and conditioning
    def condition(self, y: torch.Tensor | Labels | None):
        """The network's condition for a training batch: the labels, one random caption per label (saying some
        of the digits' style when the loader gives attributes: y = Labels(labels, attributes)), or None."""
        labels, attributes = (y.labels, y.attributes) if isinstance(y, Labels) else (y, None)
        if self.config.cond == "class":
            return labels.to(self.device)
        if self.kind.captions_vocab(self.config, self.frozen) is not None:
            return captions_for(self.label_names, labels, generator=self.caption_gen,
                                dataset=self.config.data.dataset, attributes=attributes)
        return None

    # ------------------------------------------------------------------ one step
    def train_step(self, x0: torch.Tensor, cond=None, t: torch.Tensor | None = None,
                   noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None, float]:
        """Algorithm 1, one optimizer step: x_0 from the data, t ~ U{0..T-1}, eps ~ N(0, I), a gradient step on
        ||eps - eps_theta(sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, t)||^2 (or the x_0 / v target of the
        config's parameterization). Returns (per-example losses [B], t [B] or None, grad norm). With the config's
        Improved DDPM options, the loss is L_hybrid or L_vlb (ddpm.improved) and t may be importance-sampled, each
        example weighted by 1 / (T p_t); the losses returned are unweighted.

        The run's Kind first says what the batch becomes (a latent run's scaled latents, an unCLIP prior's
        embeddings, a super-resolution model's low-res input) and may have a loss of its own (an autoencoder's)."""
        self.net.train()
        x0 = x0.to(self.device, non_blocking=True)
        weights = None
        if t is None and self.timesteps is not None:  # Improved DDPM's importance sampling of t (Sec. 3.3)
            t, weights = self.timesteps.draw(x0.shape[0], self.device)
        net, x0, cond, t = self.kind.training_inputs(self.net, self.diffusion, self.frozen, self.config, x0, cond, t)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_amp):
            losses, t = self.kind.loss(net, self.diffusion, self.config, x0, cond, t, noise)  # L_simple, Eq. 14
        loss = losses.mean() if weights is None else (losses * weights).mean()  # unbiased: E_p[w L_t] = mean_t L_t
        if not torch.isfinite(loss):
            raise TrainingError(self._nan_message(loss.item(), self.use_amp))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.train.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.ema.update(self.model)
        if weights is not None:
            self.timesteps.update(t, losses.detach())  # each t's recent losses, unweighted
        # what was minimized when it is not the plain mean: with importance-sampled t, the weighted mean (for the log)
        self.last_objective = None if weights is None else loss.detach()
        self.step += 1
        return losses.detach(), t, float(grad_norm)

    def _nan_message(self, value: float, use_amp: bool) -> str:
        kept = (f"{self.run_dir / CHECKPOINT_NAME} holds the last good state (step {self.saved_step})"
                if self.saved_step is not None else "no checkpoint of this run was saved yet")
        fix = f"try a lower --lr (now {self.config.train.lr})"
        if use_amp:
            fix += " or train in fp32 (--precision fp32)"
        return f"the loss became {value} at step {self.step + 1}; stopped without saving: {kept}. To fix it, {fix}"

    # ------------------------------------------------------------------ checkpoints
    def _gather(self, obj: Any) -> list[Any]:
        if not self.dist.enabled:
            return [obj]
        out: list[Any] = [None] * self.dist.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def state_dict(self) -> dict[str, Any]:
        return training_state(self)

    def save_checkpoint(self, final: bool = False) -> Path | None:
        """Write checkpoint.pt. final (when fit stops): the Kind's on_stop runs first (an autoencoder measures its
        latent scale, so it travels with the weights)."""
        if final:
            self.kind.on_stop((self.model, self.ema.model), getattr(self.loader.dataset, "images", None))
        state = self.state_dict()  # every rank takes part in the gathers
        if not self.dist.is_main:
            return None
        path = save_atomic(state, self.run_dir / CHECKPOINT_NAME)
        self.saved_step = self.step
        return path

    def _resume(self) -> list[str]:
        path = self.run_dir / CHECKPOINT_NAME
        ckpt = load_checkpoint(path, map_location=self.device)
        missing = [k for k in RESUME_KEYS if k not in ckpt]
        if missing:
            raise TrainingError(f"{path} is an exported model (EMA weights only, no {', '.join(missing[:3])}), not a "
                                f"training checkpoint: it cannot be resumed; sample it, or train a new --name")
        saved = read_config(ckpt, path)
        try:
            changes = resume_changes(saved, self.config)
        except ValueError as e:
            raise TrainingError(str(e)) from None
        if self.dist.is_main:
            try:
                self.notes = check_config_json(self.run_dir / CONFIG_NAME, saved, path)
            except CheckpointError as e:
                raise TrainingError(str(e)) from None
        if len(ckpt["rng"]) != self.dist.world_size:
            raise TrainingError(f"{self.run_dir} was trained on {len(ckpt['rng'])} processes; resume it on as many")
        load_training_state(self, ckpt)
        return changes

    def _boundary(self) -> tuple:
        """What one step consumes besides the weights: the RNG states and the loader's cursor."""
        return self.step, rng_state(self.device), self.loader.state_dict(), self.caption_gen.get_state()

    def _restore_boundary(self, boundary: tuple) -> None:
        """Give back what an unfinished step consumed (its batch and its random draws)."""
        step, rng, loader, captions = boundary
        if self.step == step:  # the step did not complete: the weights are those of the boundary
            set_rng_state(self.device, rng)
            self.loader.load_state_dict(loader)
            self.caption_gen.set_state(captions)

    # ------------------------------------------------------------------ samples
    def write_samples(self) -> Path:
        """The EMA model's grid (the Kind's: samples per class, a toy's points, an autoencoder's reconstructions)."""
        images, labels = (getattr(self.loader.dataset, k, None) for k in ("images", "labels"))
        inputs = GridInputs(self.ema.model, self.diffusion, self.config, self.step, self.label_names, images, labels,
                            self.frozen, self.device)
        path = self.run_dir / "samples" / f"step_{self.step:06d}.png"
        with torch.no_grad():
            return self.kind.grid(inputs, path)

    # ------------------------------------------------------------------ the loop
    def _request_stop(self) -> None:
        self.stop_requested = True

    def _should_stop(self) -> bool:
        if not self.dist.enabled:
            return self.stop_requested
        flag = torch.tensor([float(self.stop_requested)], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)  # every rank stops together
        return bool(flag.item())

    def _run_step(self, batches: Iterator, log: RunLog | None, bar) -> None:
        boundary = self._boundary()
        try:
            x0, y = next(batches)
            losses, t, grad_norm = self.train_step(x0, self.condition(y))
        except KeyboardInterrupt:
            self._restore_boundary(boundary)
            raise
        self.last_grad_norm = grad_norm
        if log is not None:  # with importance-sampled t the log's loss is the weighted, unbiased estimate
            self.last_loss = log.record(losses, t, self.last_objective)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{getattr(self, 'last_loss', float('nan')):.4f}", refresh=False)

    def _bookkeeping(self, log: RunLog | None, stop: int) -> None:
        tc = self.config.train
        if log is not None and (self.step % tc.log_every == 0 or self.step == stop):
            log.write(self.step, self.scheduler.get_last_lr()[0], self.last_grad_norm, tc.batch_size)
        if tc.ckpt_every and self.step % tc.ckpt_every == 0 and self.step < stop:
            self.save_checkpoint()
        if self.dist.is_main and tc.sample_every and self.step % tc.sample_every == 0 and self.step < stop:
            self.write_samples()

    def fit(self, until: int | None = None, final_samples: bool = True, minutes: float | None = None) -> dict[str, Any]:
        """Train up to config.train.steps (or `until`, to stop early). Ctrl-C stops at a step boundary, saves
        and returns cleanly. Releases the run folder's lock when it returns.

        final_samples=False skips the sample grid at the end (it costs sample_steps x 2 network calls on
        80 images, which dominates very short runs). Returns a summary dict (steps, wall time, steps/s,
        final loss, interrupted, paths).

        minutes: a time budget. The first steps are timed, and config.train.steps is fixed so that the run,
        its final sample grid included, ends after about that wall time on this machine (planned again, from
        the pace since, when the warmup ends: ddpm.optim.TimeBudget);
        the count is stored in the config (config.json, checkpoints), so the learning-rate schedule and
        --resume use it. ``self.budget`` records what was measured and chosen.
        """
        if minutes is not None and not 0 < minutes <= MAX_MINUTES:
            raise ValueError(f"minutes must be more than 0 and at most {MAX_MINUTES} (a week), got {minutes:g}")
        try:
            return self._fit(until, final_samples, minutes)
        finally:
            self.close()

    def _plan_budget(self, budget: TimeBudget) -> int | None:
        """The new total step count when the budget plans one after this step (see TimeBudget), else None.
        The first plan also caps the warmup at a fifth of a short run (else the lr would never decay)."""
        tc = self.config.train
        plan = budget.plan(self.step, time.perf_counter(), tc.warmup)
        if plan is None:
            return None
        total, per_step = plan
        if self.dist.enabled:  # every rank takes rank 0's count
            count = torch.tensor([total], device=self.device)
            torch.distributed.broadcast(count, src=0)
            total = int(count.item())
        warmup = min(tc.warmup, max(total // 5, self.step)) if budget.plans == 1 else tc.warmup
        self.config = self.config.replace(steps=total, warmup=warmup)
        self.budget = {"minutes": budget.minutes, "s_per_step": round(per_step, 4), "steps": total,
                       "warmup": warmup, "plans": budget.plans}
        if self.dist.is_main:
            write_text_atomic(self.run_dir / CONFIG_NAME, config_json(self.config))
        return total

    def _fit(self, until: int | None, final_samples: bool, minutes: float | None) -> dict[str, Any]:
        stop = min(self.config.train.steps, until) if until is not None else self.config.train.steps
        log = self.log
        if log is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.run_dir / CONFIG_NAME, config_json(self.config))
            log.open(self.step)
        bar = tqdm(total=stop, initial=self.step, desc=f"train {self.config.preset}", unit="step",
                   dynamic_ncols=True) if self.progress else None
        batches, first, start, interrupted = self.loader.forever(), self.step, time.perf_counter(), False
        self.last_loss, self.stop_requested = float("nan"), False
        tc = self.config.train
        budget = TimeBudget(minutes, first, start, tc.sample_steps, tc.batch_size) if minutes else None
        try:
            with stop_on_sigint(self._request_stop):
                while self.step < stop and not self._should_stop():
                    self._run_step(batches, log, bar)
                    planned = self._plan_budget(budget) if budget else None
                    if planned is not None:
                        stop = planned if until is None else min(planned, until)
                        if bar is not None:
                            bar.total = stop
                    self._bookkeeping(log, stop)
            interrupted = self.step < stop
        except KeyboardInterrupt:
            interrupted = True  # at a step boundary: _run_step gave back what the unfinished step consumed
        finally:
            if bar is not None:
                bar.close()
        wall = time.perf_counter() - start
        ckpt = self.save_checkpoint(final=True)
        summary = {"step": self.step, "steps_run": self.step - first, "wall_s": round(wall, 2),
                   "steps_per_s": round((self.step - first) / max(wall, 1e-9), 3), "final_loss": self.last_loss,
                   "interrupted": interrupted, "budget": self.budget, "checkpoint": str(ckpt) if ckpt else None,
                   "run_dir": str(self.run_dir)}
        if self.dist.is_main:
            plot_loss_curve(self.run_dir / LOG_NAME, self.run_dir / "loss.png")
            if final_samples and not interrupted:
                summary["samples"] = str(self.write_samples())
        return summary
