"""How the benchmark measures: one timer, FLOP/s of the machine's best kernels, FLOPs of a network, memory.

The best of several runs, not the mean: on a shared machine the best run is the closest to what the
hardware can do (the median is reported beside it).
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["sync", "time_calls", "interleaved", "summary", "best_rate", "matmul_flops", "conv_flops",
           "forward_flops", "train_flops", "loss_backward", "peak_memory_mb", "loadavg", "cpu_name"]


# ------------------------------------------------------------------ timing
def sync(device: torch.device) -> None:
    """Wait for the device's queued kernels (CUDA runs asynchronously; a CPU has nothing to wait for)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of each of ``repeats`` calls of fn, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    return interleaved({"fn": fn}, device, repeats, warmup=0)["fn"]


def interleaved(fns: dict[str, Callable[[], Any]], device: torch.device, repeats: int,
                warmup: int = 1) -> dict[str, list[float]]:
    """Time several variants round-robin (A B C A B C ...), after ``warmup`` untimed rounds, so that a change
    in the machine's load hits all of them alike; returns the seconds of each call per variant."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(warmup + repeats):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def summary(times: list[float], per: float = 1.0) -> dict[str, float]:
    """Median and best of a list of timings, each divided by ``per`` (e.g. steps per call)."""
    return {"median_s": statistics.median(times) / per, "best_s": min(times) / per, "repeats": len(times)}


def best_rate(fn: Callable[[], Any], work: float, device: torch.device, seconds: float) -> float:
    """The best ``work`` / seconds of one call of fn, calling it (after one warm-up) for about ``seconds``."""
    fn()  # warm up: allocations, kernel selection
    sync(device)
    best, deadline = 0.0, time.perf_counter() + seconds
    while True:
        start = time.perf_counter()
        fn()
        sync(device)
        best = max(best, work / (time.perf_counter() - start))
        if time.perf_counter() > deadline:
            return best


# ------------------------------------------------------------------ the machine's FLOP/s
def matmul_flops(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 sizes: tuple[int, ...] = (1024, 2048), seconds: float = 2.0) -> dict[str, Any]:
    """The best FLOP/s of square matmuls (2 n^3 FLOPs each) on this device, over ``seconds`` in all.

    Returns {"flops": best over sizes, "by_size": {n: best FLOP/s}, "dtype"}.
    """
    device = torch.device(device)
    by_size = {}
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        by_size[str(n)] = best_rate(lambda a=a, b=b: torch.mm(a, b), 2 * n**3, device, seconds / len(sizes))
    return {"flops": max(by_size.values()), "by_size": by_size, "dtype": str(dtype).replace("torch.", "")}


def conv_flops(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, channels: int = 128,
               size: int = 16, batch: int = 32, seconds: float = 1.0) -> dict[str, Any]:
    """The best FLOP/s of a 3x3 convolution (channels -> channels, size x size, 2 C^2 9 H W FLOPs per image).

    A second witness of the machine's limit: on CPUs where torch's float32 matmul (MKL) does not use the
    widest vector units (e.g. MKL on AMD), oneDNN's convolutions run faster than torch.mm.
    """
    device = torch.device(device)
    x = torch.randn(batch, channels, size, size, device=device, dtype=dtype)
    w = torch.randn(channels, channels, 3, 3, device=device, dtype=dtype)
    flops = 2 * batch * channels * channels * 9 * size * size
    best = best_rate(lambda: F.conv2d(x, w, padding=1), flops, device, seconds)
    return {"flops": best, "shape": f"{batch}x{channels}x{size}x{size}, 3x3", "dtype": str(dtype).replace("torch.", "")}


# ------------------------------------------------------------------ the network's FLOPs
def forward_flops(model, x: torch.Tensor, t: torch.Tensor, cond=None) -> int:
    """FLOPs of one forward pass on the batch x (matmuls and convolutions, as FlopCounterMode counts them)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, t, cond)
    return int(counter.get_total_flops())


def loss_backward(model, diffusion, x0: torch.Tensor, cond=None) -> None:
    """One forward and backward pass of L_simple in train mode, no optimizer step; the gradients are then
    dropped and the model's mode restored. What a training step costs without the optimizer and EMA."""
    was_training = model.training
    model.train()
    try:
        diffusion.training_loss(model, x0, cond).backward()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)


def train_flops(model, diffusion, x0: torch.Tensor, cond=None) -> int:
    """FLOPs of the forward and backward pass of L_simple on the batch x0 (about 3x the forward)."""
    with FlopCounterMode(display=False) as counter:
        loss_backward(model, diffusion, x0, cond)
    return int(counter.get_total_flops())


# ------------------------------------------------------------------ memory and the machine
def peak_memory_mb(device: torch.device) -> float:
    """torch.cuda.max_memory_allocated on CUDA; elsewhere the process's peak resident memory so far
    (ru_maxrss is KiB on Linux, bytes on macOS)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if platform.system() == "Darwin" else rss / 2**10


def loadavg() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the system has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
