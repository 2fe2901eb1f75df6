"""Where the time goes: what a few knobs do to a forward pass, and torch.profiler's top operators."""

from __future__ import annotations

import contextlib
import copy
import statistics
from collections.abc import Callable
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from ddpm._util import num_threads
from ddpm.bench.measure import interleaved, loss_backward, sync

__all__ = ["explore_knobs", "profile_steps"]

BASELINE = "baseline (no_grad, fp32)"
GUIDED_TWO, GUIDED_ONE = "guidance: 2 calls of B", "guidance: 1 call of 2B"


def explore_knobs(model, shape: tuple[int, ...], cond, device: torch.device, *, repeats: int = 3,
                  train_step: Callable[[], Any] | None = None) -> dict[str, Any]:
    """What a few knobs do to one sampling forward pass at this batch (and to a training step).

    The variants run round-robin (see ``interleaved``). Each entry: best and median seconds, and the
    speedup (from the best times) over the baseline: no_grad, float32, contiguous, the current number of
    threads. Guidance: two calls of batch B (as ``ddpm.samplers.guided`` does) against one call of 2B.
    """
    times = interleaved(_forward_variants(model, shape, cond, device), device, repeats)
    res = {name: {"best_s": min(v), "median_s": statistics.median(v)} for name, v in times.items()}
    for name, v in res.items():
        ref = res[GUIDED_TWO if name in (GUIDED_TWO, GUIDED_ONE) else BASELINE]["best_s"]  # guidance: vs 2 calls
        v["speedup"] = ref / v["best_s"]
    threads = torch.get_num_threads()
    if train_step is not None and device.type == "cpu" and threads != 1:
        res.update(_train_threads(train_step, threads, device, repeats))
    return res


def _forward_variants(model, shape: tuple[int, ...], cond, device: torch.device) -> dict[str, Callable[[], Any]]:
    """name -> one forward pass of the model at batch shape[0], with one knob turned."""
    x = torch.randn(shape, device=device)
    t = torch.full((shape[0],), 500, device=device, dtype=torch.long)
    threads = torch.get_num_threads()

    def forward(net=model, xx=x, tt=t, cc=cond, ctx=contextlib.nullcontext, grad=torch.no_grad):
        def fn():
            with grad(), ctx():
                net(xx, tt, cc)
        return fn

    fns = {BASELINE: forward(), "inference_mode": forward(grad=torch.inference_mode)}
    if device.type == "cpu":
        if threads != 1:
            fns[f"threads=1 (of {threads})"] = forward(ctx=lambda: num_threads(1))
        if torch.backends.mkldnn.is_available():
            fns["bf16 autocast (CPU)"] = forward(ctx=lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    if len(shape) == 4:
        model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
        fns["channels_last"] = forward(net=model_cl, xx=x.contiguous(memory_format=torch.channels_last))
    if cond is not None:
        null = _null_like(cond)
        first, second = forward(), forward(cc=null)
        fns[GUIDED_TWO] = lambda: (first(), second())
        fns[GUIDED_ONE] = forward(xx=torch.cat([x, x]), tt=torch.cat([t, t]), cc=_cat_cond(cond, null))
    return fns


def _train_threads(train_step: Callable[[], Any], threads: int, device: torch.device,
                   repeats: int) -> dict[str, Any]:
    """A training step with the current number of threads against one thread."""
    def one_thread():
        with num_threads(1):
            train_step()

    names = (f"train step, threads={threads}", f"train step, threads=1 (of {threads})")
    tt = interleaved(dict(zip(names, (train_step, one_thread), strict=True)), device, repeats)
    return {name: {"best_s": min(tt[name]), "median_s": statistics.median(tt[name]),
                   "speedup": min(tt[names[0]]) / min(tt[name])} for name in names}


def _null_like(cond):
    """The null condition for each sample: class -1, or the empty prompt."""
    return torch.full_like(cond, -1) if isinstance(cond, torch.Tensor) else [""] * len(cond)


def _cat_cond(a, b):
    return torch.cat([a, b]) if isinstance(a, torch.Tensor) else list(a) + list(b)


def profile_steps(model, diffusion, x0: torch.Tensor, cond, device: torch.device,
                  sample_shape: tuple[int, ...], sample_cond, row_limit: int = 15) -> dict[str, Any]:
    """torch.profiler over a training forward/backward and a sampling forward: the top operators by self
    CPU time (on CUDA the kernels run asynchronously: read the CPU column as launch overhead)."""
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    x = torch.randn(sample_shape, device=device)
    t = torch.full((sample_shape[0],), 500, device=device, dtype=torch.long)

    def sample_forward():
        with torch.no_grad():
            model(x, t, sample_cond)

    out = {}
    for name, fn in (("train forward+backward", lambda: loss_backward(model, diffusion, x0, cond)),
                     ("sampling forward", sample_forward)):
        fn()
        sync(device)
        with profile(activities=acts) as prof:
            fn()
            sync(device)
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events) or 1.0
        top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:row_limit]
        out[name] = [{"op": e.key, "self_ms": round(e.self_cpu_time_total / 1e3, 2),
                      "percent": round(100 * e.self_cpu_time_total / total, 1), "calls": e.count} for e in top]
    return out
