"""Convert U-Net weights between this project and diffusers' UNet2DModel (the paper's public CIFAR-10 model).

The authors' trained CIFAR-10 network is public in the diffusers format (the ``google/ddpm-cifar10-32`` model
folder: ``config.json`` and ``diffusion_pytorch_model.safetensors`` or ``.bin``), converted from their
TensorFlow checkpoint. Our ``UNet`` has the same layers, so conversion only renames keys:

    ours                                diffusers UNet2DModel
    time_embed.mlp.0 / .mlp.2           time_embedding.linear_1 / .linear_2  (the MLP on the sinusoid)
    conv_in, conv_out                   conv_in, conv_out
    norm_out                            conv_norm_out
    down.{i}.blocks.{j}.res.*           down_blocks.{i}.resnets.{j}.*
    down.{i}.blocks.{j}.attn.*          down_blocks.{i}.attentions.{j}.*
    down.{i}.downsample.conv            down_blocks.{i}.downsamplers.0.conv
    mid.0.res, mid.0.attn, mid.1.res    mid_block.resnets.0, mid_block.attentions.0, mid_block.resnets.1
    up.{i}.blocks.{j}.res / .attn       up_blocks.{i}.resnets.{j} / .attentions.{j}   (i = 0: lowest resolution)
    up.{i}.upsample.conv                up_blocks.{i}.upsamplers.0.conv
  inside a residual block: norm1, conv1, norm2, conv2 keep their names; emb_proj -> time_emb_proj (the
  per-block projection of the time embedding), skip -> conv_shortcut (the 1x1 "nin" conv where channels change)
  inside an attention block: norm -> group_norm; qkv (one 1x1 conv, 3C outputs in the order q, k, v) ->
  to_q, to_k, to_v (three Linear layers, concatenated); proj_out (1x1 conv) -> to_out.0 (Linear).

Old diffusers files (like the original upload of google/ddpm-cifar10-32) name the attention layers query, key,
value, proj_attn; they are read as to_q, to_k, to_v, to_out.0, as diffusers itself does.

Only the DDPM layout family converts: a config that our U-Net cannot express exactly is refused, naming the
field, because a "close" network would compute another function. Loading never unpickles arbitrary objects:
safetensors, or ``torch.load(weights_only=True)`` for .bin files.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ddpm._files import atomic_folder
from ddpm.checkpoints import FORMAT, CheckpointError, check_finite, read_torch_file, save_atomic
from ddpm.exports import check_model_output
from ddpm.nn.unet import UNet, UNetConfig
from ddpm.presets import get_preset

__all__ = ["from_diffusers", "to_diffusers", "convert_to_run", "diffusers_config", "unet_config_from_diffusers",
           "state_from_diffusers", "state_to_diffusers", "WEIGHT_NAMES"]

WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")

# UNet2DModel's defaults (diffusers 0.42): a field missing from config.json takes these values in diffusers, so
# it must take them here too (a config without flip_sin_to_cos has cos first, for example).
_DIFFUSERS_DEFAULTS: dict[str, Any] = {
    "sample_size": None, "in_channels": 3, "out_channels": 3, "center_input_sample": False,
    "time_embedding_type": "positional", "time_embedding_dim": None, "freq_shift": 0, "flip_sin_to_cos": True,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
    "mid_block_type": "UNetMidBlock2D", "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D",
                                                            "UpBlock2D"],
    "block_out_channels": [224, 448, 672, 896], "layers_per_block": 2, "mid_block_scale_factor": 1,
    "downsample_padding": 1, "downsample_type": "conv", "upsample_type": "conv", "dropout": 0.0,
    "act_fn": "silu", "attention_head_dim": 8, "norm_num_groups": 32, "attn_norm_num_groups": None,
    "norm_eps": 1e-5, "resnet_time_scale_shift": "default", "add_attention": True, "class_embed_type": None,
    "num_class_embeds": None, "num_train_timesteps": None,
}

# Fields whose value is fixed in the DDPM network, with what it means.
_REQUIRED: dict[str, tuple[Any, str]] = {
    "act_fn": ("silu", "swish everywhere"),
    "attention_head_dim": (None, "one attention head over all channels"),
    "center_input_sample": (False, "inputs already in [-1, 1]"),
    "time_embedding_type": ("positional", "the sinusoidal embedding"),
    "flip_sin_to_cos": (False, "sin first, then cos, as in the paper's code"),
    "freq_shift": (1, "frequencies 10000^(-i/(half-1))"),
    "time_embedding_dim": (None, "4 * block_out_channels[0]"),
    "resnet_time_scale_shift": ("default", "the time embedding added before norm2"),
    "mid_block_type": ("UNetMidBlock2D", "res, attention, res"),
    "add_attention": (True, "attention in the middle block"),
    "mid_block_scale_factor": (1, "no output scaling"),
    "downsample_type": ("conv", "a strided 3x3 conv"),
    "upsample_type": ("conv", "nearest-neighbour 2x then a 3x3 conv"),
    "class_embed_type": (None, "unconditional"),
    "num_class_embeds": (None, "unconditional"),
}
_PADDING = {0: "tf-same", 1: "symmetric"}  # diffusers downsample_padding -> our UNetConfig.downsample_pad


def _refuse(field: str, value: Any, expected: str) -> ValueError:
    return ValueError(f"diffusers config {field}={value!r} cannot be converted: expected {expected}")


# The JSON types of the fields whose default is None (the others take their default's type).
_NULLABLE: dict[str, tuple[type, ...]] = {
    "sample_size": (int, list), "time_embedding_dim": (int,), "attention_head_dim": (int,),
    "attn_norm_num_groups": (int,), "class_embed_type": (str,), "num_class_embeds": (int,),
    "num_train_timesteps": (int,)}


def _check_types(cfg: Any) -> None:
    """A config.json that is a JSON object whose fields have UNet2DModel's types (a number where a number goes,
    a list of names or numbers where a list goes), else a ValueError naming the first field that does not."""
    if not isinstance(cfg, dict):
        raise ValueError(f"diffusers config.json holds {type(cfg).__name__ if cfg is not None else 'null'}, not a "
                         f"JSON object of UNet2DModel's fields")
    for key, value in cfg.items():
        if key.startswith("_") or key not in _DIFFUSERS_DEFAULTS:
            continue
        default = _DIFFUSERS_DEFAULTS[key]
        types = _NULLABLE.get(key, (type(default),)) if default is None or key in _NULLABLE else (type(default),)
        if type(default) is float:
            types = (int, float)
        ok = value is None and (default is None or key in _NULLABLE) or (
            isinstance(value, types) and not (isinstance(value, bool) and bool not in types))
        if ok and isinstance(value, list):
            inner = (str,) if key.endswith("_types") else (int,)
            ok = all(isinstance(v, inner) and not isinstance(v, bool) for v in value)
        if ok and isinstance(value, float) and not math.isfinite(value):
            ok = False
        if not ok:
            want = " or ".join(t.__name__ for t in types)
            raise ValueError(f"diffusers config {key}={repr(value)[:60]} cannot be converted: expected {want}")


def unet_config_from_diffusers(cfg: dict[str, Any]) -> UNetConfig:
    """Our UNetConfig for a diffusers UNet2DModel config dict; ValueError naming the first field that differs."""
    _check_types(cfg)
    unknown = sorted(k for k in cfg if not k.startswith("_") and k not in _DIFFUSERS_DEFAULTS)
    if unknown:
        raise ValueError(f"diffusers config {unknown[0]}={cfg[unknown[0]]!r} cannot be converted: not a field of "
                         f"UNet2DModel (diffusers 0.42), so the network it describes is unknown")
    if cfg.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise _refuse("_class_name", cfg["_class_name"], "'UNet2DModel'")
    c = {**_DIFFUSERS_DEFAULTS, **cfg}
    for field, (value, meaning) in _REQUIRED.items():
        if c[field] != value or isinstance(c[field], bool) != isinstance(value, bool):
            raise _refuse(field, c[field], f"{value!r} ({meaning})")
    chs, size = list(c["block_out_channels"]), c["sample_size"]
    if isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    if not isinstance(size, int):
        raise _refuse("sample_size", c["sample_size"], "one side length (square images)")
    if c["out_channels"] != c["in_channels"]:
        raise _refuse("out_channels", c["out_channels"], f"in_channels={c['in_channels']} (eps has x's shape)")
    if not chs or min(chs) < 1 or any(n % chs[0] for n in chs):
        raise _refuse("block_out_channels", chs, "multiples of the first entry (ch * ch_mult)")
    if size % 2 ** (len(chs) - 1):
        raise _refuse("sample_size", size, f"a multiple of {2 ** (len(chs) - 1)} ({len(chs) - 1} down-samplings)")
    groups = c["norm_num_groups"]
    if not isinstance(groups, int) or groups < 1 or any(n % groups for n in chs):
        raise _refuse("norm_num_groups", groups, f"a divisor of every entry of block_out_channels {chs}")
    if c["attn_norm_num_groups"] not in (None, c["norm_num_groups"]):
        raise _refuse("attn_norm_num_groups", c["attn_norm_num_groups"], f"None or {c['norm_num_groups']}")
    if c["downsample_padding"] not in _PADDING:
        raise _refuse("downsample_padding", c["downsample_padding"], "0 (the paper's) or 1")
    attn = _attention_levels(c["down_block_types"], c["up_block_types"], len(chs))
    try:
        return UNetConfig(
            in_channels=c["in_channels"], image_size=size, ch=chs[0], ch_mult=tuple(n // chs[0] for n in chs),
            num_res_blocks=c["layers_per_block"], attn_resolutions=tuple(size >> i for i in attn),
            # configs written before diffusers had a dropout field omit it: those are the paper's models (0.1)
            dropout=cfg.get("dropout", UNetConfig.dropout), num_groups=c["norm_num_groups"],
            norm_eps=float(c["norm_eps"]), downsample_pad=_PADDING[c["downsample_padding"]],
        )
    except ValueError as e:
        raise ValueError(f"diffusers config gives an invalid U-Net: {e}") from None


def _attention_levels(down: list[str], up: list[str], levels: int) -> list[int]:
    """The levels (0 = full resolution) with self-attention; the up path must mirror the down path."""
    for field, types in (("down_block_types", down), ("up_block_types", up)):
        if len(types) != levels:
            raise _refuse(field, list(types), f"one block per entry of block_out_channels ({levels})")
    attn = []
    for i, kind in enumerate(down):
        if kind not in ("DownBlock2D", "AttnDownBlock2D"):
            raise _refuse("down_block_types", list(down), "only DownBlock2D and AttnDownBlock2D")
        mirror = "AttnUpBlock2D" if kind == "AttnDownBlock2D" else "UpBlock2D"
        if up[levels - 1 - i] != mirror:
            raise _refuse("up_block_types", list(up), f"the mirror of down_block_types ({mirror} at {levels - 1 - i})")
        if kind == "AttnDownBlock2D":
            attn.append(i)
    return attn


def diffusers_config(config: UNetConfig) -> dict[str, Any]:
    """The diffusers UNet2DModel config of our U-Net (every field written out, none left to defaults)."""
    for field, ok in (("cond", config.cond == "none"), ("film", not config.film),
                      ("learn_sigma", not config.learn_sigma)):
        if not ok:
            raise ValueError(f"UNetConfig {field}={getattr(config, field)!r} has no diffusers UNet2DModel "
                             f"equivalent here: only unconditional, additive-embedding U-Nets convert")
    levels = len(config.ch_mult)
    attn = [r in config.attn_resolutions for r in config.resolutions]
    fixed = {k: v for k, (v, _) in _REQUIRED.items()}
    return {
        "_class_name": "UNet2DModel", **_DIFFUSERS_DEFAULTS, **fixed,
        "sample_size": config.image_size, "in_channels": config.in_channels, "out_channels": config.in_channels,
        "block_out_channels": [config.ch * m for m in config.ch_mult], "layers_per_block": config.num_res_blocks,
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "up_block_types": ["AttnUpBlock2D" if attn[i] else "UpBlock2D" for i in reversed(range(levels))],
        "downsample_padding": {v: k for k, v in _PADDING.items()}[config.downsample_pad],
        "dropout": config.dropout, "norm_num_groups": config.num_groups, "norm_eps": config.norm_eps,
    }


# ------------------------------------------------------------------------------------------------ weights
_PREFIXES = [  # (ours, diffusers) module-path prefixes, tried in order
    (r"time_embed\.mlp\.0\.", "time_embedding.linear_1."), (r"time_embed\.mlp\.2\.", "time_embedding.linear_2."),
    (r"norm_out\.", "conv_norm_out."),
    (r"(down|up)\.(\d+)\.blocks\.(\d+)\.res\.", r"\1_blocks.\2.resnets.\3."),
    (r"(down|up)\.(\d+)\.blocks\.(\d+)\.attn\.", r"\1_blocks.\2.attentions.\3."),
    (r"down\.(\d+)\.downsample\.", r"down_blocks.\1.downsamplers.0."),
    (r"up\.(\d+)\.upsample\.", r"up_blocks.\1.upsamplers.0."),
    (r"mid\.(\d+)\.res\.", r"mid_block.resnets.\1."), (r"mid\.0\.attn\.", "mid_block.attentions.0."),
]
_LEAVES = {"emb_proj": "time_emb_proj", "skip": "conv_shortcut", "norm": "group_norm", "proj_out": "to_out.0"}
_OLD_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _diffusers_module(ours: str) -> str:
    """Our module path (e.g. "up.2.blocks.0.attn.norm") -> diffusers' ("up_blocks.2.attentions.0.group_norm")."""
    path = ours + "."
    for pattern, repl in _PREFIXES:
        path, n = re.subn("^" + pattern, repl, path)
        if n:
            break
    head, leaf = path[:-1].rsplit(".", 1) if "." in path[:-1] else ("", path[:-1])
    return ".".join(filter(None, (head, _LEAVES.get(leaf, leaf))))


def _empty_unet(config: UNetConfig) -> dict[str, Tensor]:
    """Our state-dict keys and shapes for a config, without allocating (meta tensors)."""
    with torch.device("meta"):
        return UNet(config).state_dict()


def state_from_diffusers(config: UNetConfig, theirs: dict[str, Tensor]) -> dict[str, Tensor]:
    """diffusers UNet2DModel weights -> our UNet's state dict (float32); CheckpointError on any mismatch."""
    theirs = {re.sub(r"\.(query|key|value|proj_attn)\.", lambda m: f".{_OLD_ATTENTION[m[1]]}.", k): v
              for k, v in theirs.items()}
    ours, used = {}, set()
    for key, like in _empty_unet(config).items():
        module, param = key.rsplit(".", 1)
        name = _diffusers_module(module)
        if module.endswith("attn.qkv"):  # three Linear [C, C] -> one 1x1 conv [3C, C, 1, 1]
            names = [f"{name.rsplit('.', 1)[0]}.to_{x}.{param}" for x in "qkv"]
        else:
            names = [f"{name}.{param}"]
        missing = [n for n in names if n not in theirs]
        if missing:
            raise CheckpointError(f"the diffusers weights have no {missing[0]!r} (needed for our {key})")
        value = torch.cat([theirs[n] for n in names]) if len(names) > 1 else theirs[names[0]]
        if value.numel() != like.numel() or value.shape[:1] != like.shape[:1]:
            raise CheckpointError(f"diffusers {names[0]} has shape {tuple(value.shape)}, our {key} needs "
                                  f"{tuple(like.shape)}")
        ours[key] = value.reshape(like.shape).float().contiguous()  # Linear [C, C] -> 1x1 conv [C, C, 1, 1]
        used.update(names)
    extra = sorted(set(theirs) - used)
    if extra:
        raise CheckpointError(f"the diffusers weights hold {extra[0]!r} ({len(extra)} unused keys), which the "
                              f"config's network has no place for")
    return ours


def state_to_diffusers(config: UNetConfig, ours: dict[str, Tensor]) -> dict[str, Tensor]:
    """Our UNet's state dict -> diffusers UNet2DModel weights (the inverse of ``state_from_diffusers``)."""
    unexpected = sorted(set(ours) ^ set(_empty_unet(config)))
    if unexpected:
        raise CheckpointError(f"the state dict does not match the config's U-Net (first odd key: {unexpected[0]})")
    theirs = {}
    for key, value in ours.items():
        module, param = key.rsplit(".", 1)
        name = _diffusers_module(module)
        if module.endswith("attn.qkv"):
            head = name.rsplit(".", 1)[0]
            for x, part in zip("qkv", (value.flatten(1) if value.ndim > 1 else value).chunk(3), strict=True):
                theirs[f"{head}.to_{x}.{param}"] = part.contiguous()
        elif module.endswith("attn.proj_out") and param == "weight":
            theirs[f"{name}.{param}"] = value.flatten(1).contiguous()  # 1x1 conv -> Linear
        else:
            theirs[f"{name}.{param}"] = value.contiguous()
    return theirs


# ------------------------------------------------------------------------------------------------ files
def _find_files(path: Path) -> tuple[Path, Path]:
    """(config.json, weights) of a diffusers model folder, of a pipeline folder's unet/, or of a weights file."""
    if path.is_file():
        return path.parent / "config.json", path
    if not path.is_dir():
        raise CheckpointError(f"no such diffusers model folder or weights file: {path}")
    if not (path / "config.json").exists() and (path / "unet" / "config.json").exists():
        path = path / "unet"  # a whole pipeline folder: the U-Net lives in unet/
    for name in WEIGHT_NAMES:
        if (path / name).exists():
            return path / "config.json", path / name
    raise CheckpointError(f"{path} holds none of {', '.join(WEIGHT_NAMES)}: is it a diffusers model folder?")


def _read_weights(path: Path) -> dict[str, Tensor]:
    """Tensors of a .safetensors file, or of a .bin/.pt file loaded with weights_only=True (no arbitrary code)."""
    if path.suffix != ".safetensors":
        state = read_torch_file(path, what="weights file")  # one message for a refused pickle, whatever reads it
    else:
        try:
            from safetensors.torch import load_file

            state = load_file(str(path))
        except ImportError:
            raise CheckpointError(f"reading {path.name} needs the safetensors package: pip install safetensors") \
                from None
        except Exception as e:  # truncated file, not a safetensors file
            raise CheckpointError(f"{path} is not a readable safetensors file ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0][:160] if str(e) else 'empty'})") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a flat dict of tensors (a diffusers state dict)")
    check_finite(state, path)
    return state


def from_diffusers(folder_or_file: str | Path) -> tuple[UNetConfig, dict[str, Tensor]]:
    """Read a diffusers UNet2DModel (a model folder, or a weights file beside its config.json).

    Returns our UNetConfig and a state dict that ``UNet(config).load_state_dict`` takes.
    """
    config_path, weights_path = _find_files(Path(folder_or_file))
    try:
        cfg = json.loads(config_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"no config.json beside {weights_path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{config_path} is not valid JSON ({str(e)[:120]})") from None
    config = unet_config_from_diffusers(cfg)
    return config, state_from_diffusers(config, _read_weights(weights_path))


def to_diffusers(model: UNet | tuple[UNetConfig, dict[str, Tensor]], out_folder: str | Path) -> Path:
    """Write config.json and diffusion_pytorch_model.safetensors, loadable by
    ``diffusers.UNet2DModel.from_pretrained(out_folder)``. ``model`` is a UNet or (UNetConfig, state dict).

    The folder appears whole or not at all (ddpm._files.atomic_folder: a kill or a full disk leaves no half model),
    and must be new or empty: a folder that holds anything is refused, never replaced."""
    from safetensors.torch import save

    config, state = (model.config, model.state_dict()) if isinstance(model, UNet) else model
    cfg = diffusers_config(config)
    weights = {k: v.detach().float().cpu() for k, v in state_to_diffusers(config, state).items()}
    out = Path(out_folder)
    with atomic_folder(out) as tmp:  # the bytes are written by Python, so a full disk is an OSError naming the file
        _write_file(tmp / WEIGHT_NAMES[0], save(weights, metadata={"format": "pt"}))
        _write_file(tmp / "config.json", (json.dumps(cfg, indent=2) + "\n").encode())
    return out


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def convert_to_run(folder: str | Path, out_path: str | Path) -> Path:
    """A diffusers CIFAR-10 U-Net -> an exported model file (like ``export_model``'s) of the ``ddpm-cifar10``
    preset with the converted network, which ``load_run``, ``sample`` and ``evaluate`` take.

    The step is 0: diffusers folders do not record how long the model was trained. ``out_path`` may be new or an
    exported model, never a run's training checkpoint (checkpoints.check_model_output).
    """
    check_model_output(out_path)
    model_config, state = from_diffusers(folder)
    if (model_config.in_channels, model_config.image_size) != (3, 32):
        raise ValueError(f"the ddpm-cifar10 preset is for 3x32x32 CIFAR-10 images, this model is "
                         f"{model_config.in_channels}x{model_config.image_size}x{model_config.image_size}")
    config = get_preset("ddpm-cifar10").replace(model=model_config)
    return save_atomic({"format": FORMAT, "step": 0, "config": config.to_dict(), "ema": state,
                        "label_names": []}, out_path)


# ------------------------------------------------------------------------------------------------ CLI
