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
                  train_step: Callable[..., Any] | None = None, train_batch: torch.Tensor | None = None
                  ) -> dict[str, Any]:
    """What a few knobs do to one sampling forward pass at this batch, and to a training step.

    The variants run round-robin (see ``interleaved``). Each entry: best and median seconds, and the
    speedup (from the best times) over the baseline: no_grad, float32, contiguous, the current number of
    threads. Guidance: two calls of batch B (as ``ddpm.samplers.guided`` does) against one call of 2B.
    Training (``train_step(net, x0)``: a forward and backward pass, with ``train_batch`` x0): against the same
    step in float32, contiguous, at the current number of threads; bf16 autocast keeps fp32 weights and
    gradients (mixed precision), channels_last converts the network and the batch.
    """
    times = interleaved(_forward_variants(model, shape, cond, device), device, repeats)
    res = {name: {"best_s": min(v), "median_s": statistics.median(v)} for name, v in times.items()}
    for name, v in res.items():
        ref = res[GUIDED_TWO if name in (GUIDED_TWO, GUIDED_ONE) else BASELINE]["best_s"]  # guidance: vs 2 calls
        v["speedup"] = ref / v["best_s"]
    if train_step is not None and train_batch is not None:
        res.update(_train_variants(model, train_step, train_batch, device, repeats))
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


TRAIN_BASELINE = "train step: fp32"


def _train_variants(model, train_step: Callable[..., Any], x0: torch.Tensor, device: torch.device,
                    repeats: int) -> dict[str, Any]:
    """A training step (forward and backward) with one knob turned, against the fp32 contiguous step."""
    threads = torch.get_num_threads()

    def variant(net=model, x=x0, ctx=contextlib.nullcontext):
        def fn():
            with ctx():
                train_step(net, x)
        return fn

    fns = {TRAIN_BASELINE: variant()}
    if device.type == "cpu" and threads != 1:
        fns[f"train step: threads=1 (of {threads})"] = variant(ctx=lambda: num_threads(1))
    if device.type == "cuda" or torch.backends.mkldnn.is_available():
        fns["train step: bf16 autocast"] = variant(ctx=lambda: torch.autocast(device.type, dtype=torch.bfloat16))
    if x0.ndim == 4:
        net_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
        fns["train step: channels_last"] = variant(net=net_cl, x=x0.contiguous(memory_format=torch.channels_last))
    tt = interleaved(fns, device, repeats)
    base = min(tt[TRAIN_BASELINE])
    return {name: {"best_s": min(v), "median_s": statistics.median(v), "speedup": base / min(v)}
            for name, v in tt.items()}


def _null_like(cond):
    """The null condition for each sample: class -1, the zero embedding, or the empty prompt."""
    if isinstance(cond, torch.Tensor):
        return torch.zeros_like(cond) if cond.is_floating_point() else torch.full_like(cond, -1)
    return [""] * len(cond)


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
