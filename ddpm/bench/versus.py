"""The same U-Net in this project and in diffusers' UNet2DModel, timed side by side.

The unconditional U-Net of a preset is converted to diffusers with the project's converter (ddpm.convert), the two
are checked to compute the same function first (max |difference| of their outputs on one batch), then a training
step (forward, MSE against a fixed target, backward) at the training batch and a sampling forward (no grad) at the
sampling batch are timed round-robin (ours, theirs, ours, theirs, ...) in fp32, and in bf16 autocast where the
device has bf16 units. The result is the ratio of their median times: > 1 means this project is faster.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ddpm.bench.measure import interleaved, summary
from ddpm.convert import diffusers_config, state_to_diffusers
from ddpm.nn.unet import UNet, UNetConfig
from ddpm.samplers import bf16_is_fast

__all__ = ["same_network", "versus_diffusers", "versus_rows", "EQUAL_TOLERANCE"]

EQUAL_TOLERANCE = 1e-4  # max |ours - theirs| in fp32 on unit-scale inputs for "the same function"


def _diffusers_twin(model: UNet):
    """diffusers' UNet2DModel with our weights, or None where diffusers is not installed."""
    try:
        from diffusers import UNet2DModel
    except ImportError:
        return None
    twin = UNet2DModel(**{k: v for k, v in diffusers_config(model.config).items() if not k.startswith("_")})
    twin.load_state_dict(state_to_diffusers(model.config, model.state_dict()))
    return twin.to(next(model.parameters()).device)


def same_network(unet: str | UNetConfig = "mnist", device: torch.device | str = "cpu") -> tuple[UNet, Any]:
    """(our U-Net, diffusers' UNet2DModel with its weights): a U-Net preset's name or a config made unconditional,
    its weights moved away from the zero init of the output layers so that every path counts. Raises ValueError
    saying why there is no twin (a conditioning layer, a layout the converter refuses, diffusers absent)."""
    device = torch.device(device)
    torch.manual_seed(0)
    try:  # the conditioning's layers (class table, text cross-attention, FiLM, a variance head) have no twin
        ours = UNet.from_preset(unet, cond="none") if isinstance(unet, str) else UNet(dataclasses.replace(
            unet, cond="none", learn_sigma=False, film=False, cross_attn_resolutions=()))
    except ValueError as e:
        raise ValueError(f"no unconditional twin of this U-Net: {e}") from None
    ours = ours.to(device)
    for p in ours.parameters():
        p.data.add_(0.02 * torch.randn_like(p))
    theirs = _diffusers_twin(ours)  # a layout the converter refuses raises ValueError
    if theirs is None:
        raise ValueError("diffusers is not installed (pip install diffusers): no side-by-side")
    return ours, theirs


def versus_diffusers(unet: str | UNetConfig = "mnist", *, batch_size: int = 128, sample_batch: int = 64,
                     device: torch.device | str = "cpu", repeats: int = 3) -> dict[str, Any]:
    """Our U-Net (a U-Net preset's name or a config; made unconditional) against the same network in diffusers
    (same_network): equality, then per precision the median seconds of a training step and a sampling forward of
    each, and ours' speed-up over theirs ({"available": False, "message"} where there is no twin)."""
    device = torch.device(device)
    try:
        ours, theirs = same_network(unet, device)
    except ValueError as e:
        return {"available": False, "message": str(e)}
    name = unet if isinstance(unet, str) else f"ch {ours.config.ch}, ch_mult {list(ours.config.ch_mult)}"
    c, s = ours.config.in_channels, ours.config.image_size
    x, t = torch.randn(batch_size, c, s, s, device=device), torch.randint(0, 1000, (batch_size,), device=device)
    target = torch.randn_like(x)
    ours.eval()
    theirs.eval()
    with torch.no_grad():
        diff = (ours(x[:sample_batch], t[:sample_batch]) - theirs(x[:sample_batch], t[:sample_batch]).sample)
    max_diff = float(diff.abs().max())
    if max_diff > EQUAL_TOLERANCE:
        return {"available": False, "max_abs_difference": max_diff,
                "message": f"the converted network differs from ours by {max_diff:.2e}: not the same function"}
    ours.train()
    theirs.train()
    call = {"ddpm": lambda xx, tt: ours(xx, tt), "diffusers": lambda xx, tt: theirs(xx, tt).sample}
    out: dict[str, Any] = {"available": True, "unet": name, "max_abs_difference": max_diff,
                           "batch_size": batch_size, "sample_batch": sample_batch, "precisions": {}}
    for precision in ["fp32"] + (["bf16"] if bf16_is_fast(device.type) else []):
        bf16 = precision == "bf16"

        def train_step(f, bf16=bf16):
            def run():
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    loss = (f(x, t).float() - target).square().mean()
                loss.backward()
            return run

        def sample_forward(f, bf16=bf16):
            def run():
                with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    f(x[:sample_batch], t[:sample_batch])
            return run

        fns = {f"{k} {what}": make(f) for what, make in (("train", train_step), ("sample", sample_forward))
               for k, f in call.items()}
        times = {k: summary(v) for k, v in interleaved(fns, device, repeats).items()}
        for net in (ours, theirs):
            net.zero_grad(set_to_none=True)
        out["precisions"][precision] = {
            "times": times,
            "train_speedup": times["diffusers train"]["median_s"] / times["ddpm train"]["median_s"],
            "sample_speedup": times["diffusers sample"]["median_s"] / times["ddpm sample"]["median_s"]}
    return out


def versus_rows(result: dict[str, Any] | None) -> list[tuple[str, str]]:
    """Rows for format_bench."""
    if not result:
        return []
    if not result.get("available"):
        return [("vs diffusers", result["message"])]
    rows = [("vs diffusers", f"UNet2DModel with the same weights ({result['unet']}, unconditional): max |diff| "
                             f"{result['max_abs_difference']:.1e}")]
    for name, r in result["precisions"].items():
        tm = r["times"]
        rows.append((f"[{name}] vs diffusers", f"training step {tm['ddpm train']['median_s'] * 1e3:.0f} ms against "
                                               f"{tm['diffusers train']['median_s'] * 1e3:.0f} ms "
                                               f"({r['train_speedup']:.2f}x), sampling forward "
                                               f"{tm['ddpm sample']['median_s'] * 1e3:.0f} ms against "
                                               f"{tm['diffusers sample']['median_s'] * 1e3:.0f} ms "
                                               f"({r['sample_speedup']:.2f}x)"))
    return rows
