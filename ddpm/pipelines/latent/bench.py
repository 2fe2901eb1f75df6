"""Latent against pixel diffusion on this machine, in one run: FLOPs per sample, training images/s (the
autoencoder's too, and the latent model with and without the cached encoding), and the time to sample 64 guided
digits (DPM-Solver++(2M), decoding included).

    python -m ddpm bench --preset mnist-latent          # against mnist-text (the pixel model of the same prompts)

The networks are freshly initialized (speed does not depend on the weights), the autoencoder is written to a
temporary file for the latent trainer to load, and the data are synthetic digits-shaped images. Cases are timed
round-robin (``interleaved``), so a change in the machine's load hits all of them alike: read the ratios.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from ddpm.bench.measure import forward_flops, interleaved, loadavg, summary
from ddpm.bench.runs import _batches, _condition, _machine, _synthetic_dataset, train_step_of
from ddpm.checkpoints import FORMAT, build_model, save_atomic
from ddpm.config import Config
from ddpm.presets import get_preset
from ddpm.samplers import bf16_is_fast, sample
from ddpm.training import Trainer

__all__ = ["compare_latent", "format_latent_comparison", "compare", "format_comparison"]


def _flops(config: Config, device) -> int:
    model = build_model(config).to(device).eval()
    x = torch.randn(1, *config.sample_shape, device=device)
    return forward_flops(model, x, torch.zeros(1, dtype=torch.long, device=device), _condition(config, 1, device))


def compare_latent(latent_preset: str = "mnist-latent", pixel_preset: str = "mnist-text", *, device="cpu",
                   repeats: int = 3, train_repeats: int = 5, n: int = 64, steps: int = 15,
                   batch_size: int | None = None, progress=None) -> dict[str, Any]:
    """The side-by-side measurements of a latent preset and a pixel preset (see the module docstring);
    batch_size: the training batch of all of them (default: the latent preset's)."""
    say = progress or (lambda s: None)
    device = torch.device(device)
    bs = batch_size or get_preset(latent_preset).train.batch_size
    names = (latent_preset, pixel_preset, "mnist-autoencoder")
    latent, pixel, ae_config = (get_preset(p, batch_size=bs) for p in names)
    if latent.kind != "latent":
        raise ValueError(f"{latent_preset!r} is not a latent diffusion preset")
    precision = "bf16" if bf16_is_fast(device.type) else "fp32"
    out: dict[str, Any] = {"machine": _machine(device), "latent_preset": latent_preset, "pixel_preset": pixel_preset,
                           "precision": precision, "batch_size": bs, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    torch.manual_seed(0)
    ae = build_model(ae_config).to(device).eval()
    image = torch.randn(1, *ae_config.sample_shape, device=device)
    say("FLOPs")
    with torch.no_grad(), FlopCounterMode(display=False) as enc:
        mean, _ = ae.encode(image)
    with torch.no_grad(), FlopCounterMode(display=False) as dec:
        ae.decode(mean)
    f_pixel, f_latent = _flops(pixel, device), _flops(latent, device)
    calls = 2 * steps  # guided: two network calls per step
    out["flops"] = {"pixel_unet": f_pixel, "latent_unet": f_latent, "latent_over_pixel": f_latent / f_pixel,
                    "encoder": enc.get_total_flops(), "decoder": dec.get_total_flops(),
                    f"per_sample_guided_{steps}_steps": {
                        "pixel": calls * f_pixel, "latent_with_decoder": calls * f_latent + dec.get_total_flops()}}
    with tempfile.TemporaryDirectory() as tmp:
        ae_file = Path(tmp) / "ae.pt"
        save_atomic({"format": FORMAT, "step": 0, "config": ae_config.to_dict(), "ema": ae.state_dict()}, ae_file)
        data = _synthetic_dataset(ae_config, 512)  # digit-shaped: the autoencoder's images
        configs = {"pixel": pixel, "latent (cached encoding)": latent.replace(autoencoder=str(ae_file), cache=True),
                   "latent (encoder every batch)": latent.replace(autoencoder=str(ae_file), cache=False),
                   "autoencoder": ae_config}
        say("training steps, round-robin")
        trainers, steps_fns = {}, {}
        for name, config in configs.items():
            config = config.replace(precision=precision, compile=False)
            t0 = time.perf_counter()
            trainers[name] = tr = Trainer(config, Path(tmp) / name.split()[0] / str(len(trainers)), device=device,
                                          progress=False, dataset=data)
            setup = time.perf_counter() - t0
            batches = _batches(tr.loader, 2)
            steps_fns[name] = train_step_of(tr, batches)
            out.setdefault("setup_s", {})[name] = round(setup, 2)
        times = interleaved(steps_fns, device, train_repeats)
        out["train"] = {name: {**summary(t), "images_per_s": bs / summary(t)["median_s"]} for name, t in times.items()}
        base = out["train"]["pixel"]["median_s"]
        for name in out["train"]:
            out["train"][name]["speed_vs_pixel"] = base / out["train"][name]["median_s"]
        setup = out["setup_s"]
        out["cache_encoding_s_per_image"] = max(0.0, setup["latent (cached encoding)"]
                                                - setup["latent (encoder every batch)"]) / len(data)
        say(f"sampling {n} guided digits, dpmpp-2m {steps} steps")
        p_tr, l_tr = trainers["pixel"], trainers["latent (cached encoding)"]
        runs = {"pixel": _sampler(p_tr.ema.model, p_tr.diffusion, pixel, n, steps, device, precision, None),
                "latent + decoder": _sampler(l_tr.ema.model, l_tr.diffusion, latent, n, steps, device, precision,
                                             l_tr.frozen)}
        times = interleaved(runs, device, repeats)
        out["sampling"] = {name: summary(t) for name, t in times.items()}
        for name in out["sampling"]:
            out["sampling"][name]["speed_vs_pixel"] = (out["sampling"]["pixel"]["median_s"]
                                                       / out["sampling"][name]["median_s"])
        for tr in trainers.values():
            tr.close()
    out["machine"]["loadavg_end"] = loadavg()
    return out


def _sampler(model, diffusion, config: Config, n: int, steps: int, device, precision: str, first_stage):
    cond = _condition(config, n, device)

    def run():
        x = sample(model.eval(), diffusion, (n, *config.sample_shape), cond, sampler="dpmpp-2m", steps=steps,
                   guidance_scale=config.train.guidance, generator=torch.Generator(device).manual_seed(0),
                   device=device, precision=precision, **config.sampler_defaults)
        if first_stage is not None:
            with torch.no_grad():
                first_stage.from_latents(x)
    return run


def format_latent_comparison(r: dict[str, Any]) -> str:
    """The comparison as a table."""
    f = r["flops"]
    per = next(v for k, v in f.items() if k.startswith("per_sample"))
    lines = [f"{r['latent_preset']} against {r['pixel_preset']} on {r['machine'].get('cpu', r['machine'])} "
             f"({r['precision']}; load {r['machine'].get('loadavg_end')})",
             f"FLOPs per network call: pixel U-Net {f['pixel_unet'] / 1e9:.3f} G, latent U-Net "
             f"{f['latent_unet'] / 1e9:.3f} G ({f['latent_over_pixel']:.3f}x); encoder {f['encoder'] / 1e9:.3f} G, "
             f"decoder {f['decoder'] / 1e9:.3f} G",
             f"FLOPs per guided sample: pixel {per['pixel'] / 1e9:.2f} G, latent + decoder "
             f"{per['latent_with_decoder'] / 1e9:.2f} G ({per['latent_with_decoder'] / per['pixel']:.3f}x)",
             f"training step (batch {r['batch_size']})            median ms   images/s   vs pixel"]
    for name, t in r["train"].items():
        lines.append(f"  {name:34s} {1000 * t['median_s']:9.1f} {t['images_per_s']:10.1f} {t['speed_vs_pixel']:9.2f}x")
    train = r["train"]
    per_step = train["latent (encoder every batch)"]["median_s"] - train["latent (cached encoding)"]["median_s"]
    lines.append(f"caching the encoding: {r['cache_encoding_s_per_image'] * 1e3:.3f} ms per training image once "
                 f"(the trainer's setup), against {per_step * 1e3:.0f} ms per step encoding every batch")
    lines.append("sampling 64 guided digits                median s   vs pixel")
    for name, t in r["sampling"].items():
        lines.append(f"  {name:38s} {t['median_s']:8.2f} {t['speed_vs_pixel']:9.2f}x")
    return "\n".join(lines)


def compare(preset: str, **kwargs) -> dict[str, Any]:
    """bench --preset PRESET: the side-by-side comparison this module measures."""
    return compare_latent(latent_preset=preset, **kwargs)


format_comparison = format_latent_comparison
