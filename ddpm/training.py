"""Training: Algorithm 1 in a loop, with EMA, warmup, clipping, exact resume, logs, grids and DDP.

    from ddpm.config import get_preset
    from ddpm.training import Trainer
    Trainer(get_preset("mnist"), run_dir="runs/mnist").fit()

Each step: x0 from the data, t ~ U{0..T-1}, eps ~ N(0, I), loss = ||eps - eps_theta(x_t, t, cond)||^2
(GaussianDiffusion.training_loss), Adam step with gradient clipping at 1.0, then the EMA update.

A run folder holds config.json, log.csv (loss per logged step), loss_by_t.csv (loss per timestep
bucket), loss.png, samples/step_XXXXXX.png and checkpoint.pt (see ddpm.checkpoints).
Determinism on CPU: all randomness comes from the global torch RNG (seeded with seed + rank), the
loader's (seed, epoch) permutation and a caption generator; all three are saved in the checkpoint, so
an interrupted and resumed run produces the same losses as an uninterrupted one.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ddpm.checkpoints import CHECKPOINT_NAME, build_diffusion, build_model, load_checkpoint, save_atomic
from ddpm.config import Config
from ddpm.datasets import BatchLoader, captions_for, class_prompts, load_dataset, toy2d

__all__ = ["Trainer", "TrainingError", "EMA", "DistInfo", "select_device", "setup_distributed",
           "lr_factor", "condition_for_labels", "NUM_T_BUCKETS"]

NUM_T_BUCKETS = 10


def condition_for_labels(mode: str, labels: torch.Tensor, label_names, dataset: str):
    """What a network with conditioning `mode` is given to generate these classes: the labels themselves
    ("class"), each class's canonical prompt ("text"), or None ("none")."""
    if mode == "class":
        return labels
    if mode == "text":
        return class_prompts(label_names, labels, dataset)
    return None


class TrainingError(RuntimeError):
    """A run that cannot go on (non-finite loss, mismatched resume); the message says why and what to do."""


def select_device(name: str = "auto") -> torch.device:
    """"auto": cuda, then mps, then cpu; otherwise the named device, with a clear error if it is missing."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available here; use --device cpu or auto")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {name!r} requested but MPS is not available here; use --device cpu or auto")
    return device


@dataclass(frozen=True)
class DistInfo:
    """Which process this is in a DistributedDataParallel job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed(env: dict[str, str], device_name: str = "auto") -> tuple[DistInfo, torch.device]:
    """Start DDP if torchrun set RANK/WORLD_SIZE (nccl on GPUs, gloo on CPUs); return (info, device)."""
    world = int(env.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), select_device(device_name)
    import torch.distributed as dist

    info = DistInfo(int(env["RANK"]), world, int(env.get("LOCAL_RANK", "0")))
    device = select_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return info, device


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """Linear warmup over `warmup` steps, then constant or cosine decay to 0 at `total`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class EMA:
    """Exponential moving average of the weights: theta_ema <- d theta_ema + (1 - d) theta.

    With warmup, d_k = min(decay, (1 + k) / (10 + k)) at update k, so the average is not dominated by
    the random initial weights early in training (sampling from an un-warmed EMA gives pure noise).
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True):
        self.decay, self.warmup = decay, warmup
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates)) if self.warmup else self.decay
        ema_params = list(self.model.parameters())
        params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1 - d)
        for b_ema, b in zip(self.model.buffers(), model.buffers(), strict=True):
            b_ema.copy_(b)
        self.updates += 1


class PointLoader:
    """Batches of a 2D toy point cloud, with the same cursor/state interface as BatchLoader."""

    def __init__(self, points: torch.Tensor, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.points, self.batch_size, self.seed = points, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.batch = 0, 0

    def __len__(self) -> int:
        return len(self.points) // (self.batch_size * self.world_size)

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed, self.epoch, self.batch = int(state["seed"]), int(state["epoch"]), int(state["batch"])

    def __iter__(self):
        epoch, start = (self.epoch + 1, 0) if self.batch >= len(self) else (self.epoch, self.batch)
        order = torch.randperm(len(self.points), generator=torch.Generator().manual_seed(self.seed + epoch))
        mine = order[self.rank::self.world_size]
        for b in range(start, len(self)):
            self.epoch, self.batch = epoch, b + 1
            yield self.points[mine[b * self.batch_size:(b + 1) * self.batch_size]], None
        self.epoch, self.batch = epoch + 1, 0


def _forever(loader) -> Iterator:
    while True:
        yield from loader


class Trainer:
    """Trains the network of a Config on its data and writes everything to run_dir.

    Args:
        config: what to train (ddpm.config.get_preset(...)).
        run_dir: the run folder (created). With resume=True the run continues from its checkpoint.pt.
        device: torch device (default: ddpm.training.select_device("auto")).
        dist: this process's DDP rank (see setup_distributed); the model is wrapped in DDP when world > 1.
        progress: show a tqdm bar (rank 0 only).
        dataset: an ImageDataset to train on instead of loading config.data (tests, notebooks).
    """

    def __init__(self, config: Config, run_dir: str | os.PathLike, device: torch.device | str | None = None,
                 resume: bool = False, dist: DistInfo = DistInfo(), progress: bool = True, dataset=None):
        self.config, self.dist = config, dist
        self.run_dir = Path(run_dir)
        self.device = torch.device(device) if device is not None else select_device("auto")
        self.progress = progress and dist.is_main
        tc = config.train
        if tc.batch_size % dist.world_size:
            raise ValueError(f"batch_size {tc.batch_size} must be divisible by the number of processes "
                             f"{dist.world_size}")
        self.local_batch = tc.batch_size // dist.world_size

        torch.manual_seed(tc.seed + dist.rank)
        self.label_names: tuple[str, ...] = ()
        self.loader = self._make_loader(dataset)
        self.model = build_model(config).to(self.device)
        self.diffusion = build_diffusion(config, self.device)
        self.ema = EMA(self.model, tc.ema_decay, tc.ema_warmup)
        opt_cls = torch.optim.AdamW if tc.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = opt_cls(self.model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, tc.warmup, tc.steps, tc.lr_schedule))
        self.caption_gen = torch.Generator().manual_seed(tc.seed + 7919 * (dist.rank + 1))
        self.step = 0
        self.net = self.model
        if dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if tc.compile:
            self.net = torch.compile(self.net)
        if resume:
            self._resume()
        elif dist.is_main and (self.run_dir / CHECKPOINT_NAME).exists():
            raise TrainingError(f"{self.run_dir} already holds a checkpoint; continue it with --resume, or choose "
                                f"another --name")

    # ------------------------------------------------------------------ data and conditioning
    def _make_loader(self, dataset):
        dc, tc, d = self.config.data, self.config.train, self.dist
        if dc.dataset == "toy2d" and dataset is None:
            points = toy2d(dc.toy, dc.toy_size, seed=tc.seed)
            return PointLoader(points, self.local_batch, tc.seed, d.rank, d.world_size)
        if dataset is None:
            dataset = load_dataset(dc.dataset, split="train", root=dc.root)
        m = self.config.model
        if self.config.model_kind == "unet" and (dataset.channels, dataset.image_size) != (m.in_channels, m.image_size):
            raise ValueError(f"the {dataset.name} images are {dataset.channels}x{dataset.image_size}x"
                             f"{dataset.image_size} but the model expects {m.in_channels}x{m.image_size}x"
                             f"{m.image_size}; pick a preset made for this dataset")
        if m.cond != "none" and dataset.labels is None:
            raise ValueError(f"cond={m.cond!r} needs labels but the dataset {dataset.name} has none; use cond='none'")
        self.label_names = tuple(dataset.label_names)
        return BatchLoader(dataset, self.local_batch, shuffle=True, drop_last=True, hflip=dc.hflip,
                           seed=tc.seed, rank=d.rank, world_size=d.world_size)

    def condition(self, y: torch.Tensor | None):
        """The network's condition for a batch of labels: labels, captions, or None."""
        cond = self.config.model.cond
        if cond == "class":
            return y.to(self.device)
        if cond == "text":
            return captions_for(self.label_names, y, generator=self.caption_gen, dataset=self.config.data.dataset)
        return None

    # ------------------------------------------------------------------ one step
    def train_step(self, x0: torch.Tensor, cond=None, t: torch.Tensor | None = None,
                   noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
        """One optimizer step on a batch; returns (per-example losses [B], t [B], grad norm)."""
        tc = self.config.train
        self.net.train()
        x0 = x0.to(self.device, non_blocking=True)
        if t is None:
            t = self.diffusion.sample_timesteps(x0.shape[0], device=self.device)
        use_amp = tc.amp and self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_amp):
            losses = self.diffusion.training_loss(self.net, x0, cond, t=t, noise=noise, reduction="none",
                                                  min_snr_gamma=self.config.diffusion.min_snr_gamma)
        loss = losses.mean()
        if not torch.isfinite(loss):
            raise TrainingError(
                f"the loss became {loss.item()} at step {self.step + 1}; stopped without saving, so "
                f"{self.run_dir / CHECKPOINT_NAME} still holds the last good state. Try a lower --lr "
                f"(now {tc.lr}) or disable mixed precision")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.ema.update(self.model)
        self.step += 1
        return losses.detach(), t, float(grad_norm)

    # ------------------------------------------------------------------ checkpoints
    def _gather(self, obj: Any) -> list[Any]:
        if not self.dist.enabled:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.dist.world_size
        dist.all_gather_object(out, obj)
        return out

    def state_dict(self) -> dict[str, Any]:
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "format": 1,
            "step": self.step,
            "config": self.config.to_dict(),
            "label_names": list(self.label_names),
            "model": self.model.state_dict(),
            "ema": self.ema.model.state_dict(),
            "ema_updates": self.ema.updates,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": self._gather(rng),
            "loader": self._gather(self.loader.state_dict()),
            "caption_rng": self._gather(self.caption_gen.get_state()),
        }

    def save_checkpoint(self) -> Path | None:
        state = self.state_dict()  # every rank takes part in the gathers
        if not self.dist.is_main:
            return None
        return save_atomic(state, self.run_dir / CHECKPOINT_NAME)

    def _resume(self) -> None:
        ckpt = load_checkpoint(self.run_dir / CHECKPOINT_NAME, map_location=self.device)
        saved = Config.from_dict(ckpt["config"])
        if saved.model != self.config.model or saved.diffusion != self.config.diffusion:
            raise TrainingError(f"{self.run_dir} was trained with preset {saved.preset!r} and a different network or "
                                f"diffusion; resume it with the same settings, or start a new --name")
        if len(ckpt["rng"]) != self.dist.world_size:
            raise TrainingError(f"{self.run_dir} was trained on {len(ckpt['rng'])} processes; resume it on as many")
        self.model.load_state_dict(ckpt["model"])
        self.ema.model.load_state_dict(ckpt["ema"])
        self.ema.updates = int(ckpt["ema_updates"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.step = int(ckpt["step"])
        r = self.dist.rank
        torch.set_rng_state(ckpt["rng"][r]["torch"].cpu())
        if "cuda" in ckpt["rng"][r] and self.device.type == "cuda":
            torch.cuda.set_rng_state(ckpt["rng"][r]["cuda"].cpu(), self.device)
        self.loader.load_state_dict(ckpt["loader"][r])
        self.caption_gen.set_state(ckpt["caption_rng"][r].cpu())

    # ------------------------------------------------------------------ logs
    def _open_logs(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        heads = {"log.csv": ["step", "loss", "lr", "grad_norm", "images_per_s", "elapsed_s"],
                 "loss_by_t.csv": ["step"] + [f"t{i * 100 // NUM_T_BUCKETS}-{(i + 1) * 100 // NUM_T_BUCKETS}%"
                                              for i in range(NUM_T_BUCKETS)]}
        for name, head in heads.items():
            path = self.run_dir / name
            rows = []
            if path.exists() and self.step > 0:  # drop rows logged after the checkpoint we resume from
                with path.open(newline="") as f:
                    rows = [r for r in list(csv.reader(f))[1:] if r and int(r[0]) <= self.step]
            with path.open("w", newline="") as f:
                csv.writer(f).writerows([head, *rows])

    def _append(self, name: str, row: list) -> None:
        with (self.run_dir / name).open("a", newline="") as f:
            csv.writer(f).writerow(row)

    def write_samples(self) -> Path:
        """A grid from the EMA model (DDIM, guidance for conditional models): one row per class."""
        from ddpm import viz
        from ddpm.samplers import ddim_sample

        tc, cond_mode = self.config.train, self.config.model.cond
        model = self.ema.model
        g = torch.Generator(self.device).manual_seed(1234)
        path = self.run_dir / "samples" / f"step_{self.step:06d}.png"
        if self.config.model_kind == "mlp":
            x = ddim_sample(model, self.diffusion, (2000, self.config.model.dim), steps=tc.sample_steps,
                            generator=g, device=self.device, clip_denoised=False)
            return viz.save_points(x, path, title=f"{self.config.data.toy}, step {self.step}")
        m = self.config.model
        n_per, classes = 8, len(self.label_names) or 1
        labels = torch.arange(classes, device=self.device).repeat_interleave(n_per)
        cond = condition_for_labels(cond_mode, labels, self.label_names, self.config.data.dataset)
        n = 64 if cond is None else len(labels)
        x = ddim_sample(model, self.diffusion, (n, m.in_channels, m.image_size, m.image_size), cond,
                        steps=tc.sample_steps, guidance_scale=tc.guidance if cond is not None else None,
                        generator=g, device=self.device)
        return viz.save_grid(x, path, nrow=n_per if cond is not None else 8)

    # ------------------------------------------------------------------ the loop
    def fit(self, until: int | None = None, final_samples: bool = True) -> dict[str, Any]:
        """Train up to config.train.steps (or `until`, to stop early). Ctrl-C saves and returns cleanly.

        final_samples=False skips the sample grid at the end (it costs sample_steps x 2 network calls on
        80 images, which dominates very short runs). Returns a summary dict (steps, wall time, steps/s,
        final loss, paths).
        """
        tc = self.config.train
        stop = min(tc.steps, until) if until is not None else tc.steps
        if self.dist.is_main:
            self._open_logs()
        batches = _forever(self.loader)
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=stop, initial=self.step, desc=f"train {self.config.preset}", unit="step",
                       dynamic_ncols=True)
        T = self.diffusion.T
        bucket_sum = torch.zeros(NUM_T_BUCKETS, dtype=torch.float64)
        bucket_n = torch.zeros(NUM_T_BUCKETS, dtype=torch.float64)
        loss_sum, loss_n, start, interrupted, last_loss = 0.0, 0, time.perf_counter(), False, float("nan")
        t_log, steps_at_log, first_step = start, self.step, self.step
        try:
            while self.step < stop:
                x0, y = next(batches)
                losses, t, grad_norm = self.train_step(x0, self.condition(y))
                losses, t = losses.double().cpu(), t.cpu()
                last_loss = float(losses.mean())
                loss_sum, loss_n = loss_sum + last_loss, loss_n + 1
                buckets = t * NUM_T_BUCKETS // T
                bucket_sum.index_add_(0, buckets, losses)
                bucket_n.index_add_(0, buckets, torch.ones_like(losses))
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{last_loss:.4f}", refresh=False)
                if self.dist.is_main and (self.step % tc.log_every == 0 or self.step == stop):
                    now = time.perf_counter()
                    ips = (self.step - steps_at_log) * tc.batch_size / max(now - t_log, 1e-9)
                    self._append("log.csv", [self.step, repr(loss_sum / loss_n), self.scheduler.get_last_lr()[0],
                                             round(grad_norm, 5), round(ips, 1), round(now - start, 2)])
                    means = (bucket_sum / bucket_n.clamp(min=1)).tolist()
                    self._append("loss_by_t.csv", [self.step] + [round(v, 6) if n else "" for v, n in
                                                                 zip(means, bucket_n.tolist(), strict=True)])
                    loss_sum, loss_n, t_log, steps_at_log = 0.0, 0, now, self.step
                    bucket_sum.zero_()
                    bucket_n.zero_()
                if tc.ckpt_every and self.step % tc.ckpt_every == 0 and self.step < stop:
                    self.save_checkpoint()
                if self.dist.is_main and tc.sample_every and self.step % tc.sample_every == 0 and self.step < stop:
                    self.write_samples()
        except KeyboardInterrupt:
            interrupted = True
        finally:
            if bar is not None:
                bar.close()
        wall = time.perf_counter() - start
        ckpt = self.save_checkpoint()
        summary = {"step": self.step, "steps_run": self.step - first_step, "wall_s": round(wall, 2),
                   "steps_per_s": round((self.step - first_step) / max(wall, 1e-9), 3),
                   "final_loss": last_loss, "interrupted": interrupted, "checkpoint": str(ckpt) if ckpt else None,
                   "run_dir": str(self.run_dir)}
        if self.dist.is_main:
            from ddpm import viz

            viz.plot_loss_curve(self.run_dir / "log.csv", self.run_dir / "loss.png")
            if final_samples and not interrupted:
                summary["samples"] = str(self.write_samples())
        return summary
