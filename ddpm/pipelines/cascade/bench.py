"""A cascade against the single-stage model on this machine, in one run: FLOPs per call and per sample, the
training step of each stage, and the time to sample 64 guided digits (DPM-Solver++(2M), each stage's steps).

    python -m ddpm bench --preset mnist-sr28       # mnist-base14 + mnist-sr28 against mnist-text

The networks are freshly initialized (speed does not depend on the weights) and the data are synthetic
digit-shaped images. Cases are timed round-robin (``interleaved``), so a change in the machine's load hits all
of them alike: read the ratios.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ddpm.bench.measure import forward_flops, interleaved, loadavg, summary
from ddpm.bench.runs import _batches, _condition, _machine, _synthetic_dataset, train_step_of
from ddpm.checkpoints import build_diffusion, build_model
from ddpm.config import Config
from ddpm.pipelines.cascade.stage import WithLowRes
from ddpm.presets import get_preset
from ddpm.samplers import bf16_is_fast, sample
from ddpm.training import Trainer

__all__ = ["compare_cascade", "format_cascade_comparison", "compare", "format_comparison"]


def _sr_call(model, config: Config, n: int, device) -> WithLowRes:
    """The SR network with a fixed low-res input for n images (what a sampler calls)."""
    low = torch.zeros(n, config.model.low_res_channels, config.model.image_size, config.model.image_size,
                      device=device)
    return WithLowRes(model, low, torch.zeros(n, dtype=torch.long, device=device))


def compare_cascade(base_preset: str = "mnist-base14", sr_preset: str = "mnist-sr28",
                    single_preset: str = "mnist-text", *, device="cpu", repeats: int = 3, train_repeats: int = 5,
                    n: int = 64, steps: int = 15, batch_size: int | None = None, progress=None) -> dict[str, Any]:
    """The side-by-side measurements (see the module docstring); batch_size: the training batch of all three
    (default: the single-stage preset's)."""
    say = progress or (lambda s: None)
    device = torch.device(device)
    bs = batch_size or get_preset(single_preset).train.batch_size
    base, sr, single = (get_preset(p, batch_size=bs) for p in (base_preset, sr_preset, single_preset))
    if sr.kind != "super-res":
        raise ValueError(f"{sr_preset!r} is not a super-resolution preset")
    precision = "bf16" if bf16_is_fast(device.type) else "fp32"
    out: dict[str, Any] = {"machine": _machine(device), "base_preset": base_preset, "sr_preset": sr_preset,
                           "single_preset": single_preset, "precision": precision, "batch_size": bs,
                           "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    torch.manual_seed(0)
    say("FLOPs")
    models = {name: build_model(c).to(device).eval() for name, c in (("base", base), ("sr", sr), ("single", single))}
    t = torch.zeros(1, dtype=torch.long, device=device)
    flops = {"base": forward_flops(models["base"], torch.randn(1, *base.sample_shape, device=device), t,
                                   _condition(base, 1, device)),
             "sr": forward_flops(_sr_call(models["sr"], sr, 1, device),
                                 torch.randn(1, *sr.sample_shape, device=device), t, _condition(sr, 1, device)),
             "single": forward_flops(models["single"], torch.randn(1, *single.sample_shape, device=device), t,
                                     _condition(single, 1, device))}
    calls = 2 * steps  # guided: two network calls per step
    out["flops"] = {**flops, f"per_sample_guided_{steps}_steps": {
        "single": calls * flops["single"], "cascade": calls * (flops["base"] + flops["sr"]),
        "base_share": flops["base"] / (flops["base"] + flops["sr"])}}
    with tempfile.TemporaryDirectory() as tmp:
        data = _synthetic_dataset(single, 512)  # 28x28 digits; the base's loader shrinks them to 14x14
        configs = {"single (28x28)": single, "base (14x14)": base, "super-resolution (14 -> 28)": sr}
        say("training steps, round-robin")
        steps_fns = {}
        trainers = []
        for name, config in configs.items():
            tr = Trainer(config.replace(precision=precision, compile=False), Path(tmp) / str(len(trainers)),
                         device=device, progress=False, dataset=data)
            trainers.append(tr)
            steps_fns[name] = train_step_of(tr, _batches(tr.loader, 2))
        times = interleaved(steps_fns, device, train_repeats)
        out["train"] = {name: {**summary(t), "images_per_s": bs / summary(t)["median_s"]} for name, t in times.items()}
        ref = out["train"]["single (28x28)"]["median_s"]
        for name in out["train"]:
            out["train"][name]["speed_vs_single"] = ref / out["train"][name]["median_s"]
        for tr in trainers:
            tr.close()
    say(f"sampling {n} guided digits, dpmpp-2m {steps} steps per stage")
    diffusions = {name: build_diffusion(c, device) for name, c in (("base", base), ("sr", sr), ("single", single))}

    def run(name: str, config: Config, model):
        cond = _condition(config, n, device)
        return lambda: sample(model, diffusions[name], (n, *config.sample_shape), cond, sampler="dpmpp-2m",
                              steps=steps, guidance_scale=config.train.guidance, precision=precision,
                              generator=torch.Generator(device).manual_seed(0), device=device)

    base_run, sr_run = run("base", base, models["base"]), run("sr", sr, _sr_call(models["sr"], sr, n, device))
    cases = {"single": run("single", single, models["single"]), "cascade (base + SR)": lambda: (base_run(), sr_run()),
             "base alone": base_run, "SR alone": sr_run}
    times = interleaved(cases, device, repeats)
    out["sampling"] = {name: summary(t) for name, t in times.items()}
    for name in out["sampling"]:
        out["sampling"][name]["speed_vs_single"] = (out["sampling"]["single"]["median_s"]
                                                    / out["sampling"][name]["median_s"])
    out["machine"]["loadavg_end"] = loadavg()
    return out


def format_cascade_comparison(r: dict[str, Any]) -> str:
    """The comparison as a table."""
    f = r["flops"]
    per = next(v for k, v in f.items() if k.startswith("per_sample"))
    lines = [f"{r['base_preset']} + {r['sr_preset']} against {r['single_preset']} on "
             f"{r['machine'].get('cpu', r['machine'])} ({r['precision']}; load {r['machine'].get('loadavg_end')})",
             f"FLOPs per network call: base {f['base'] / 1e9:.3f} G, super-resolution {f['sr'] / 1e9:.3f} G, single "
             f"{f['single'] / 1e9:.3f} G",
             f"FLOPs per guided sample: cascade {per['cascade'] / 1e9:.2f} G ({per['base_share']:.0%} of it the base), "
             f"single {per['single'] / 1e9:.2f} G ({per['cascade'] / per['single']:.2f}x)",
             f"training step (batch {r['batch_size']})            median ms   images/s   vs single"]
    for name, t in r["train"].items():
        lines.append(f"  {name:34s} {1000 * t['median_s']:9.1f} {t['images_per_s']:10.1f} {t['speed_vs_single']:9.2f}x")
    lines.append("sampling 64 guided digits                median s   vs single")
    for name, t in r["sampling"].items():
        lines.append(f"  {name:38s} {t['median_s']:8.2f} {t['speed_vs_single']:9.2f}x")
    return "\n".join(lines)


def compare(preset: str, **kwargs) -> dict[str, Any]:
    """bench --preset PRESET: the side-by-side comparison this module measures."""
    return compare_cascade(**kwargs)


format_comparison = format_cascade_comparison
