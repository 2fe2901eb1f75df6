"""The benchmark of a preset: the machine's peak, the network's FLOPs, training and sampling speed, memory."""

from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ddpm.bench.knobs import explore_knobs, profile_steps
from ddpm.bench.measure import (
    conv_flops,
    cpu_name,
    forward_flops,
    interleaved,
    loadavg,
    loss_backward,
    matmul_flops,
    peak_memory_mb,
    summary,
    sync,
    time_calls,
    train_flops,
)
from ddpm.bench.versus import versus_diffusers
from ddpm.checkpoints import build_diffusion, build_model, checkpoint_path, find_run
from ddpm.conditions import balanced_labels, condition_for_labels, num_conditions
from ddpm.config import Config
from ddpm.datasets import ImageDataset, dataset_label_names
from ddpm.memory import check_batch, saved_bytes_per_item
from ddpm.nn.unet import UNetConfig
from ddpm.pipelines.base import kind
from ddpm.presets import get_preset
from ddpm.samplers import ancestral_sample, bf16_is_fast, ddim_sample, sample
from ddpm.training import Trainer

__all__ = ["bench_training", "bench_sampling", "fast_sampling", "run_bench", "GOALS", "FAST_SAMPLING", "train_step_of",
           "check_bench_batches"]

# what the report compares the mnist preset against on a 2-core CPU; reported, never asserted
GOALS = {"train_mfu": 0.60, "ancestral_64x1000_s": 60.0, "ddim50_64_s": 5.0}
SAMPLE_FNS = {"ancestral": ancestral_sample, "ddim": ddim_sample}


def _autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def _condition(config: Config, n: int, device: torch.device):
    """The model's condition for n class-balanced samples (ddpm.conditions): labels, prompts or None; for a
    network conditioned on an embedding (unCLIP's decoder), n random unit vectors [n, D] standing in for CLIP
    image embeddings (a network's speed does not depend on the values it is given)."""
    mode = config.model.cond
    if mode == "none":
        return None
    if mode == "embedding":
        e = torch.randn(n, config.model.embed_dim, generator=torch.Generator().manual_seed(0))
        return torch.nn.functional.normalize(e, dim=-1).to(device)
    names = dataset_label_names(config.data.dataset)
    labels = balanced_labels(n, num_conditions(mode, config.model.num_classes, names))
    cond = condition_for_labels(mode, labels, names, config.data.dataset)
    return cond.to(device) if isinstance(cond, torch.Tensor) else cond


# ------------------------------------------------------------------ training
def _synthetic_dataset(config: Config, n: int) -> ImageDataset | None:
    """Random uint8 images and labels shaped like the preset's data (no dataset is loaded or downloaded)."""
    if config.data.dataset == "toy2d":
        return None
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, *config.sample_shape), dtype=torch.uint8, generator=g)
    names = dataset_label_names(config.data.dataset)
    labels = torch.randint(0, len(names), (n,), generator=g)
    return ImageDataset(images, labels, names, name=f"synthetic-{config.data.dataset}", split="train")


def _batches(loader, k: int) -> list:
    """The next k batches of a loader, across epochs if need be (a loader is a cursor: each pass goes on)."""
    out: list = []
    while len(out) < k:
        got = list(itertools.islice(loader, k - len(out)))
        if not got:
            raise ValueError("the training data gives no full batch")
        out += got
    return out


def bench_training(config: Config, device: torch.device, *, steps: int = 10, warmup: int = 2,
                   bf16: bool = False) -> dict[str, Any]:
    """Seconds per ``Trainer.train_step`` (forward, backward, clip, optimizer, EMA) at the config's batch
    size, on synthetic data (images) or the preset's toy points. bf16: bf16 autocast (TrainConfig.precision)."""
    bs = config.train.batch_size
    config = _with_frozen(config).replace(precision="bf16" if bf16 else "fp32", compile=False)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(config, Path(tmp) / "run", device=device, progress=False,
                          dataset=_synthetic_dataset(config, max(2 * bs, 256)))
        data = _batches(trainer.loader, 2)
        calls = itertools.count()

        def step():
            x0, y = data[next(calls) % 2]
            trainer.train_step(x0, trainer.condition(y))

        times = time_calls(step, device, steps, warmup)
    out = summary(times)
    out.update(batch_size=bs, images_per_s=bs / out["median_s"], images_per_s_best=bs / out["best_s"])
    return out


def _with_frozen(config: Config) -> Config:
    """The config with the frozen network its Kind trains on (unCLIP's decoder: its CLIP, which encodes every
    batch) found as a preset's run is: the path it names, else runs/<name>, else the shipped model."""
    field = kind(config.kind).frozen_field
    if field is None or checkpoint_path(getattr(config.stage, field)).exists():
        return config
    return config.replace(**{field: str(find_run(None, Path(getattr(config.stage, field)).name))})


# ------------------------------------------------------------------ sampling
def bench_sampling(model, diffusion, shape: tuple[int, ...], cond, device: torch.device, *, steps: int = 5,
                   repeats: int = 2, guidance: float | None = None, bf16: bool = False) -> dict[str, Any]:
    """Seconds per sampler step at this batch (shape[0]) for the ancestral sampler and DDIM.

    Each measurement runs the real sampler on a respaced process of ``steps`` steps (a step costs the
    same whatever the number of steps), best and median of ``repeats`` runs, the cases round-robin. With a
    conditional model and guidance != 1, the guided steps (two network calls each) are measured too.
    """
    cases = {name: (fn, None) for name, fn in SAMPLE_FNS.items()}
    if cond is not None and guidance not in (None, 1.0):
        cases.update({f"{name}_guided": (fn, guidance) for name, fn in SAMPLE_FNS.items()})

    def runner(fn, g):
        def run():
            gen = torch.Generator(device).manual_seed(0)
            with _autocast(device, bf16):
                fn(model, diffusion, shape, cond, steps=steps, guidance_scale=g, generator=gen, device=device)
        return run

    times = interleaved({name: runner(fn, g) for name, (fn, g) in cases.items()}, device, repeats)
    return {name: summary(v, per=steps) for name, v in times.items()}


def _full_runs(model, diffusion, config: Config, device: torch.device, bf16: bool,
               guidance: float | None) -> dict[str, float]:
    """64 images end to end: T ancestral steps, 50 DDIM steps, 50 guided DDIM steps (conditional models)."""
    cond = _condition(config, 64, device)
    cases = [("ancestral_64xT_s", ancestral_sample, diffusion.T, None), ("ddim50_s", ddim_sample, 50, None)]
    if guidance is not None:
        cases.append(("ddim50_guided_s", ddim_sample, 50, guidance))
    out = {}
    for name, fn, steps, g in cases:
        gen = torch.Generator(device).manual_seed(0)
        sync(device)
        start = time.perf_counter()
        with _autocast(device, bf16):
            fn(model, diffusion, (64, *config.sample_shape), cond, steps=steps, guidance_scale=g, generator=gen,
               device=device)
        sync(device)
        out[name] = time.perf_counter() - start
    return out


def _sampling(model, diffusion, config: Config, s: dict[str, Any], cond, device: torch.device,
              bf16: bool) -> dict[str, Any]:
    """Seconds per step of each sampler, and what they make of 64 images x T (ancestral) and x 50 (DDIM)."""
    b, T = s["sample_batch"], s["T"]
    per_step = bench_sampling(model, diffusion, (b, *config.sample_shape), cond, device, steps=s["sample_steps"],
                              repeats=1 if s["quick"] else 2, guidance=s["guidance"], bf16=bf16)
    est = {}
    for suffix in ("", "_guided"):
        if f"ddim{suffix}" in per_step:
            est[f"ancestral_64xT{suffix}_s"] = per_step[f"ancestral{suffix}"]["median_s"] * T * 64 / b
            est[f"ddim50{suffix}_s"] = per_step[f"ddim{suffix}"]["median_s"] * 50 * 64 / b
    return {"per_step": per_step, "estimated_for_64_images": est}


# the ways to sample 64 guided digits that the fast-sampling comparison times against DDIM-50 in fp32
FAST_SAMPLING = {
    "ddim50 fp32": dict(sampler="ddim", steps=50),
    "dpmpp-2m 15 fp32": dict(sampler="dpmpp-2m", steps=15),
    "dpmpp-2m 15 bf16": dict(sampler="dpmpp-2m", steps=15, precision="bf16"),
    "dpmpp-2m 15 bf16 batched": dict(sampler="dpmpp-2m", steps=15, precision="bf16", batched_guidance=True),
    "dpmpp-2m 10 bf16": dict(sampler="dpmpp-2m", steps=10, precision="bf16"),
    "dpmpp-2m-sde 25 bf16": dict(sampler="dpmpp-2m-sde", steps=25, precision="bf16"),
}


def fast_sampling(model, diffusion, config: Config, device: torch.device, *, n: int = 64,
                  guidance: float | None = None, repeats: int = 2) -> dict[str, Any]:
    """Seconds for n images end to end with each of FAST_SAMPLING, timed round-robin, and each one's speed-up
    over DDIM-50 in fp32 measured in the same run (a ratio holds on a noisy machine where seconds do not)."""
    cond = _condition(config, n, device)
    g = guidance if cond is not None else None

    def runner(kwargs):
        def run():
            sample(model, diffusion, (n, *config.sample_shape), cond, guidance_scale=g, device=device,
                   generator=torch.Generator(device).manual_seed(0), **kwargs)
        return run

    times = interleaved({name: runner(kw) for name, kw in FAST_SAMPLING.items()}, device, repeats)
    base = summary(times["ddim50 fp32"])["median_s"]
    out = {}
    for name, t in times.items():
        s = summary(t)
        out[name] = {**s, "speedup_vs_ddim50_fp32": base / s["median_s"]}
    return out


# ------------------------------------------------------------------ the benchmark
def run_bench(preset: str = "mnist", *, batch_size: int | None = None, sample_batch: int = 64,
              device: torch.device | str = "cpu", quick: bool = False, full: bool = False,
              explore: bool = False, profile: bool = False, train_steps: int | None = None,
              sample_steps: int | None = None, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the benchmark for a preset and return the results (see ``ddpm.bench``).

    quick: a few seconds (short matmul, 2 training steps, 2 sampling steps); full: also run 64 x T ancestral
    and 64 x 50 DDIM steps end to end instead of only extrapolating them.
    """
    say = progress or (lambda s: None)
    device = torch.device(device)
    config, s = _settings(preset, batch_size, sample_batch, quick, full, train_steps, sample_steps)
    result: dict[str, Any] = {"machine": _machine(device), "settings": s,
                              "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    _reset_peak_memory(device)
    say("matmul FLOP/s")
    result.update(_peak_flops(device, quick))
    torch.manual_seed(0)
    model = build_model(config).to(device).eval()
    diffusion = build_diffusion(config).to(device)
    sample_cond, train_cond = _condition(config, sample_batch, device), _condition(config, s["batch_size"], device)
    x0 = torch.randn(s["batch_size"], *config.sample_shape, device=device)
    result["model"] = _model_flops(model, diffusion, sample_batch, sample_cond, x0, train_cond)
    result["results"] = {}
    for name in ["fp32"] + (["bf16"] if bf16_is_fast(device.type) else []):
        r = _precision(model, diffusion, config, s, sample_cond, device, name == "bf16", say)
        _utilization(r["train"], result["model"]["train_flops_per_image"], result["peak"][name],
                     result["matmul"][name]["flops"])
        result["results"][name] = r
    if not quick:
        say("fast sampling: 64 images, DDIM-50 fp32 against DPM-Solver++ in fp32 and bf16")
        result["fast_sampling"] = fast_sampling(model, diffusion, config, device, guidance=s["guidance"])
        say("the same U-Net in diffusers' UNet2DModel, side by side")
        result["versus_diffusers"] = versus_diffusers(config.model, batch_size=s["batch_size"],
                                                      sample_batch=sample_batch, device=device) \
            if isinstance(config.model, UNetConfig) else {"available": False, "message": "not a U-Net"}
    if explore:
        say("knobs")
        result["experiments"] = explore_knobs(model, (sample_batch, *config.sample_shape), sample_cond, device,
                                              repeats=2 if quick else 3,
                                              train_step=lambda net, x: loss_backward(net, diffusion, x, train_cond),
                                              train_batch=x0)
    if profile:
        say("profile")
        result["profile"] = profile_steps(model, diffusion, x0, train_cond, device,
                                          (sample_batch, *config.sample_shape), sample_cond)
    result["goals"] = _goals(result["results"]["fp32"])
    result["machine"]["loadavg_end"] = loadavg()
    return result


def check_bench_batches(preset: str, batch_size: int | None, sample_batch: int,
                        device: torch.device | str = "cpu") -> None:
    """Refuse, before anything is allocated, a training or sampling batch of the preset's network that would not
    fit in the memory free now (ddpm.memory: one line, with the batch that would fit)."""
    config = get_preset(preset)
    device = torch.device(device)
    model = build_model(config).to(device)
    per = saved_bytes_per_item(lambda b: model(torch.zeros(b, *config.sample_shape, device=device),
                                               torch.zeros(b, dtype=torch.long, device=device), None))
    check_batch(batch_size or config.train.batch_size, per, "a training batch", "give a smaller --batch-size",
                device, training=True)
    check_batch(max(sample_batch, 64), per, "a sampling batch", "give a smaller --sample-batch", device)


def _settings(preset: str, batch_size: int | None, sample_batch: int, quick: bool, full: bool,
              train_steps: int | None, sample_steps: int | None) -> tuple[Config, dict[str, Any]]:
    """The preset's config (with the training batch) and the benchmark's settings, checked."""
    config = get_preset(preset)
    if batch_size is not None:
        if batch_size < 1:
            raise ValueError(f"--batch-size must be positive, got {batch_size}")
        config = config.replace(batch_size=batch_size)
    if sample_batch < 1:
        raise ValueError(f"--sample-batch must be positive, got {sample_batch}")
    train_steps = train_steps if train_steps is not None else (2 if quick else 10)
    sample_steps = sample_steps if sample_steps is not None else (2 if quick else 4)
    if train_steps < 1 or sample_steps < 1:
        raise ValueError(f"train_steps and sample_steps must be positive, got {train_steps}, {sample_steps}")
    guidance = config.train.guidance if config.model.cond != "none" else None
    return config, {"preset": preset, "batch_size": config.train.batch_size, "sample_batch": sample_batch,
                    "T": config.diffusion.T, "guidance": guidance, "quick": quick, "full": full,
                    "train_steps": train_steps, "sample_steps": sample_steps}


def _machine(device: torch.device) -> dict[str, Any]:
    return {"device": str(device), "cpu": cpu_name(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "bf16_units": bf16_is_fast(device.type),
            "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "loadavg_start": loadavg()}


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_flops(device: torch.device, quick: bool) -> dict[str, Any]:
    """The "matmul", "conv" and "peak" entries: the physical limit is the best of the two kernels (matmul is
    the classic yardstick, the convolution a second witness: see conv_flops), the denominator of the MFU."""
    sizes, seconds = ((512, 1024), 0.4) if quick else ((1024, 2048), 2.0)
    matmul = {"fp32": matmul_flops(device, torch.float32, sizes, seconds)}
    conv = {"fp32": conv_flops(device, torch.float32, seconds=seconds / 2)}
    if bf16_is_fast(device.type):  # the bf16 units' own peak: the denominator of the bf16 MFU
        matmul["bf16"] = matmul_flops(device, torch.bfloat16, (4096, 8192) if device.type == "cuda" else sizes, seconds)
        conv["bf16"] = conv_flops(device, torch.bfloat16, seconds=seconds / 2)
    peak = {name: max(mm["flops"], conv.get(name, {}).get("flops", 0.0)) for name, mm in matmul.items()}
    return {"matmul": matmul, "conv": conv, "peak": peak}


def _model_flops(model, diffusion, sample_batch: int, sample_cond, x0: torch.Tensor, train_cond) -> dict[str, Any]:
    """Parameters, and FLOPs per image of a sampling forward pass and of a training forward + backward."""
    x = torch.randn(sample_batch, *x0.shape[1:], device=x0.device)
    t = torch.randint(0, diffusion.T, (sample_batch,), device=x0.device)
    fwd = forward_flops(model, x, t, sample_cond) / sample_batch
    trn = train_flops(model, diffusion, x0, train_cond) / len(x0)
    return {"parameters": sum(p.numel() for p in model.parameters()), "forward_flops_per_image": fwd,
            "train_flops_per_image": trn, "train_to_forward_ratio": trn / fwd if fwd else None}


def _precision(model, diffusion, config: Config, s: dict[str, Any], sample_cond, device: torch.device, bf16: bool,
               say: Callable[[str], None]) -> dict[str, Any]:
    """Sampling, then training, at one precision: times per step, estimates for 64 images, peak memory."""
    name = "bf16" if bf16 else "fp32"
    _reset_peak_memory(device)
    say(f"sampling ({name})")
    sampling = _sampling(model, diffusion, config, s, sample_cond, device, bf16)
    if s["full"]:
        say(f"full sampling runs ({name})")
        sampling["measured_for_64_images"] = _full_runs(model, diffusion, config, device, bf16, s["guidance"])
    memory = {"sampling_peak_mb": peak_memory_mb(device)}
    _reset_peak_memory(device)
    say(f"training ({name})")
    train = bench_training(config, device, steps=s["train_steps"], warmup=1 if s["quick"] else 2, bf16=bf16)
    memory["training_peak_mb"] = peak_memory_mb(device)
    memory["kind"] = ("torch.cuda.max_memory_allocated" if device.type == "cuda"
                      else "process max RSS (ru_maxrss, cumulative)")
    return {"sampling": sampling, "memory": memory, "train": train}


def _utilization(train: dict[str, Any], flops_per_image: float, peak: float, matmul: float) -> None:
    """Add the training FLOP/s and the model FLOP utilization (MFU) against the peak and against matmul."""
    train["train_flops_per_s"] = train["images_per_s"] * flops_per_image
    train["mfu"] = train["train_flops_per_s"] / peak
    train["mfu_best"] = train["images_per_s_best"] * flops_per_image / peak
    train["mfu_vs_matmul"] = train["train_flops_per_s"] / matmul


def _goals(fp32: dict[str, Any]) -> dict[str, Any]:
    """GOALS against the fp32 results: sampling judged on end-to-end runs when --full made them."""
    est = {**fp32["sampling"]["estimated_for_64_images"], **fp32["sampling"].get("measured_for_64_images", {})}
    mfu = fp32["train"]["mfu"]
    goals = {"train_mfu": {"goal": f">= {GOALS['train_mfu']:.0%}", "value": mfu, "met": mfu >= GOALS["train_mfu"]}}
    for key, goal in (("ancestral_64xT_s", "ancestral_64x1000_s"), ("ddim50_s", "ddim50_64_s"),
                      ("ddim50_guided_s", "ddim50_64_s")):
        if key in est:
            goals[key] = {"goal": f"<= {GOALS[goal]:.0f} s", "value": est[key], "met": est[key] <= GOALS[goal]}
    return goals


def train_step_of(trainer: Trainer, batches: list):
    """A callable that runs one Trainer.train_step on the next of the given batches (for timing)."""
    k = iter(range(10**9))

    def step():
        x0, y = batches[next(k) % len(batches)]
        trainer.train_step(x0, trainer.condition(y))
    return step
