"""The benchmark's results (``run_bench``) as a readable table."""

from __future__ import annotations

from typing import Any

from ddpm.bench.versus import versus_rows

__all__ = ["format_bench"]


def _si(x: float, unit: str) -> str:
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {prefix}{unit}"
    return f"{x:.2f} {unit}"


def format_bench(result: dict[str, Any]) -> str:
    """The benchmark as a readable table, then the profiles' top operators (if any)."""
    rows = _machine_rows(result)
    for name, r in result["results"].items():
        rows += _precision_rows(name, r)
    for k, g in result["goals"].items():
        v = f"{g['value']:.1%}" if k == "train_mfu" else f"{g['value']:.1f} s"
        rows.append((f"goal {k}", f"{v} vs {g['goal']}: {'met' if g['met'] else 'missed'}"))
    for k, v in result.get("fast_sampling", {}).items():
        rows.append((f"64 images: {k}", f"{v['median_s']:.2f} s (best {v['best_s']:.2f}), "
                                         f"{v['speedup_vs_ddim50_fp32']:.2f}x DDIM-50 fp32"))
    rows += versus_rows(result.get("versus_diffusers"))
    for k, v in result.get("experiments", {}).items():
        rows.append((f"knob: {k}", f"best {v['best_s'] * 1e3:.1f} ms, median {v['median_s'] * 1e3:.1f} ms "
                                   f"({v['speedup']:.2f}x)"))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
    for name, top in result.get("profile", {}).items():
        lines.append(f"\nprofile: {name} (top operators by self CPU time)")
        lines += [f"  {e['percent']:5.1f}%  {e['self_ms']:9.2f} ms  {e['calls']:5d}x  {e['op']}" for e in top]
    return "\n".join(lines)


def _machine_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    """The machine, the settings, the kernels' FLOP/s and the network's size."""
    m, s = result["machine"], result["settings"]
    units = {True: "with bf16 units", False: "no bf16 units: fp32 (bf16 would be emulated)", None: "bf16 not probed"}
    rows = [("machine", f"{m['cuda'] or m['cpu']} ({m['device']}, {m['threads']} threads, torch {m['torch']}; "
                        f"{units[m.get('bf16_units')]})"),
            ("load average (start / end)", f"{m['loadavg_start']} / {m['loadavg_end']}"),
            ("preset", f"{s['preset']}  (train batch {s['batch_size']}, sample batch {s['sample_batch']}, "
                       f"T={s['T']})")]
    for name, mm in result["matmul"].items():
        sizes = ", ".join(f"{n}: {_si(v, 'FLOP/s')}" for n, v in mm["by_size"].items())
        rows.append((f"matmul {name} (best)", f"{_si(mm['flops'], 'FLOP/s')}   ({sizes})"))
    for name, cv in result["conv"].items():
        rows.append((f"conv {name} (best)", f"{_si(cv['flops'], 'FLOP/s')}   ({cv['shape']})"))
    for name, pk in result["peak"].items():
        rows.append((f"peak {name} (best kernel)", _si(pk, "FLOP/s")))
    md = result["model"]
    return rows + [("parameters", f"{md['parameters']:,}"),
                   ("FLOPs per image", f"forward {_si(md['forward_flops_per_image'], 'FLOP')}, train (fwd+bwd) "
                                       f"{_si(md['train_flops_per_image'], 'FLOP')}")]


def _precision_rows(name: str, r: dict[str, Any]) -> list[tuple[str, str]]:
    """Training speed and MFU, sampling per step and for 64 images, and peak memory at one precision."""
    tr, sp = r["train"], r["sampling"]
    rows = [(f"[{name}] training", f"{tr['images_per_s']:.1f} images/s (best {tr['images_per_s_best']:.1f}), "
                                   f"{tr['median_s'] * 1e3:.0f} ms/step"),
            (f"[{name}] MFU", f"{tr['mfu']:.1%} of the peak (best {tr['mfu_best']:.1%}); "
                              f"{tr['mfu_vs_matmul']:.1%} of matmul; {_si(tr['train_flops_per_s'], 'FLOP/s')}")]
    for k, v in sp["per_step"].items():
        rows.append((f"[{name}] {k} step", f"{v['median_s'] * 1e3:.1f} ms (best {v['best_s'] * 1e3:.1f})"))
    for how, key in (("extrapolated", "estimated_for_64_images"), ("measured", "measured_for_64_images")):
        for k, v in sp.get(key, {}).items():
            rows.append((f"[{name}] 64 images: {k.replace('_s', '')}", f"{v:.1f} s ({how})"))
    mem = r["memory"]
    rows.append((f"[{name}] peak memory", f"sampling {mem['sampling_peak_mb']:.0f} MB, training "
                                          f"{mem['training_peak_mb']:.0f} MB ({mem['kind']})"))
    return rows
