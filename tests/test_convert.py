"""ddpm/convert.py: our U-Net is the same function as diffusers' UNet2DModel, the reference conversion of the
paper's network (google/ddpm-cifar10-32), and weights convert both ways.

No pretrained weights are downloaded: the reference networks get seeded random weights, every parameter
(GroupNorm scales and biases, the zero-initialized last layers) perturbed, so no identity or zero can hide a
wrong mapping.
"""

import argparse
import dataclasses
import inspect
import json
import pickle
from pathlib import Path

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="the equivalence tests need diffusers (pip install diffusers)")
pytest.importorskip("safetensors", reason="the converter writes safetensors (pip install safetensors)")

from ddpm import convert  # noqa: E402
from ddpm.checkpoints import CheckpointError, load_run  # noqa: E402
from ddpm.cli import convert as convert_cmd  # noqa: E402
from ddpm.nn.unet import UNET_PRESETS, UNet  # noqa: E402
from ddpm.samplers import ddim_sample  # noqa: E402

# google/ddpm-cifar10-32's config.json, as published (fields it omits take UNet2DModel's defaults).
GOOGLE_CIFAR10 = {
    "_class_name": "UNet2DModel", "act_fn": "silu", "attention_head_dim": None,
    "block_out_channels": [128, 256, 256, 256], "center_input_sample": False,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"], "downsample_padding": 0,
    "flip_sin_to_cos": False, "freq_shift": 1, "in_channels": 3, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-06, "norm_num_groups": 32, "out_channels": 3, "sample_size": 32,
    "time_embedding_type": "positional", "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}
# The same family at ch 32 (fast), and our "mnist" preset's network as diffusers writes it.
SMALL_CIFAR10 = {**GOOGLE_CIFAR10, "block_out_channels": [32, 64, 64, 64]}
MNIST_LAYOUT = {
    **GOOGLE_CIFAR10, "block_out_channels": [32, 64, 64], "layers_per_block": 1, "in_channels": 1,
    "out_channels": 1, "sample_size": 28, "norm_num_groups": 8, "norm_eps": 1e-5, "downsample_padding": 1,
    "down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
}
TIMESTEPS = (0, 1, 10, 500, 999)
TOL = 1e-4  # float32


def perturbed(model: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(std * torch.randn_like(p))
    return model.eval()


def reference(cfg: dict, folder: Path, seed: int = 0) -> "diffusers.UNet2DModel":
    """A diffusers UNet2DModel with random weights, saved to ``folder`` with exactly ``cfg`` as config.json."""
    model = perturbed(diffusers.UNet2DModel(**{k: v for k, v in cfg.items() if not k.startswith("_")}), seed)
    model.save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps(cfg))  # the published file, not diffusers' full rewrite
    return model


def max_diff(ours: UNet, theirs, shape, x_scale: float = 1.0, timesteps=TIMESTEPS) -> float:
    """max |ours - theirs| over a random batch x [2, *shape] at each of the timesteps."""
    torch.manual_seed(1)
    x = x_scale * torch.randn(2, *shape)
    diffs = []
    with torch.no_grad():
        for t in timesteps:
            t = torch.full((2,), t)
            diffs.append((ours(x, t) - theirs(x, t).sample).abs().max().item())
    return max(diffs)


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddpm-cifar10-32")
    return folder, reference(GOOGLE_CIFAR10, folder)


def load_ours(folder) -> UNet:
    config, state = convert.from_diffusers(folder)
    model = UNet(config).eval()
    model.load_state_dict(state)
    return model


# ---------------------------------------------------------------------------------------- equivalence


def test_paper_network_equals_reference(cifar):
    folder, theirs = cifar
    ours = load_ours(folder)
    assert ours.config == UNET_PRESETS["ddpm-cifar10"]  # the published config is exactly our preset
    assert sum(p.numel() for p in theirs.parameters()) == 35_746_307
    assert max_diff(ours, theirs, (3, 32, 32)) <= TOL


def test_paper_network_equals_reference_for_small_activations(cifar):
    # With activations of variance ~1e-6 the GroupNorm epsilon (1e-6 in the paper, 1e-5 in PyTorch) changes
    # the output by O(1): this pins it, which unit-scale inputs hardly do (a few 1e-5).
    folder, theirs = cifar
    with torch.no_grad():
        bias = theirs.conv_in.bias.clone()
        theirs.conv_in.bias.zero_()
        ours = UNet(UNET_PRESETS["ddpm-cifar10"]).eval()
        ours.load_state_dict(convert.state_from_diffusers(ours.config, theirs.state_dict()))
        try:
            assert max_diff(ours, theirs, (3, 32, 32), x_scale=1e-3, timesteps=(0, 999)) <= TOL
            wrong_eps = UNet(dataclasses.replace(ours.config, norm_eps=1e-5)).eval()
            wrong_eps.load_state_dict(ours.state_dict())
            assert max_diff(wrong_eps, theirs, (3, 32, 32), x_scale=1e-3, timesteps=(0, 999)) > 0.1
        finally:
            theirs.conv_in.bias.copy_(bias)


def test_symmetric_padding_is_another_function(cifar):
    # What the preset used before: the same weights with 1 pixel of padding on every side are far off.
    folder, theirs = cifar
    config, state = convert.from_diffusers(folder)
    other = UNet(dataclasses.replace(config, downsample_pad="symmetric")).eval()
    other.load_state_dict(state)
    assert max_diff(other, theirs, (3, 32, 32), timesteps=(10,)) > 0.1


@pytest.mark.parametrize("cfg, shape", [(SMALL_CIFAR10, (3, 32, 32)), (MNIST_LAYOUT, (1, 28, 28))],
                         ids=["cifar10-ch32", "mnist-layout"])
def test_small_layouts_equal_reference(tmp_path, cfg, shape):
    theirs = reference(cfg, tmp_path)
    ours = load_ours(tmp_path)
    assert max_diff(ours, theirs, shape) <= TOL
    if cfg is MNIST_LAYOUT:
        assert ours.config == dataclasses.replace(UNET_PRESETS["mnist"], dropout=0.1)  # dropout: not in cfg


@pytest.mark.parametrize("preset", ["ddpm-cifar10", "mnist"])
def test_ours_to_diffusers(tmp_path, preset):
    ours = perturbed(UNet(UNET_PRESETS[preset]), seed=2)
    convert.to_diffusers(ours, tmp_path)
    theirs = diffusers.UNet2DModel.from_pretrained(tmp_path).eval()
    config = ours.config
    assert max_diff(ours, theirs, (config.in_channels, config.image_size, config.image_size)) <= TOL
    back = convert.from_diffusers(tmp_path)  # and back: the same config and the same tensors
    assert back[0] == config
    for k, v in ours.state_dict().items():
        assert torch.equal(back[1][k], v), k


# ------------------------------------------------------------------------------------------- files


def test_old_attention_names_and_bin_files(tmp_path):
    # The first diffusers uploads name the attention layers query/key/value/proj_attn, in a .bin file.
    theirs = reference(SMALL_CIFAR10, tmp_path / "new")
    renames = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    old = {}
    for k, v in theirs.state_dict().items():
        for new, name in renames.items():
            k = k.replace(f".{new}.", f".{name}.")
        old[k] = v
    (tmp_path / "old").mkdir()
    torch.save(old, tmp_path / "old" / "diffusion_pytorch_model.bin")
    (tmp_path / "old" / "config.json").write_text(json.dumps(SMALL_CIFAR10))
    ours = load_ours(tmp_path / "old" / "diffusion_pytorch_model.bin")  # a weights file beside its config
    assert max_diff(ours, theirs, (3, 32, 32)) <= TOL


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):  # unpickling would create the marker file
        return (Path.touch, (self.marker,))


def test_bin_files_are_loaded_without_arbitrary_objects(tmp_path):
    marker = tmp_path / "code-ran"
    (tmp_path / "config.json").write_text(json.dumps(SMALL_CIFAR10))
    with open(tmp_path / "diffusion_pytorch_model.bin", "wb") as f:
        pickle.dump({"conv_in.weight": _Payload(marker)}, f, protocol=2)
    with pytest.raises(CheckpointError, match=r"was refused: it would run code when loaded \(getattr\)"):
        convert.from_diffusers(tmp_path)  # the message of every refused pickle (checkpoints.read_torch_file)
    assert not marker.exists()


def test_missing_and_extra_weights(tmp_path):
    theirs = reference(SMALL_CIFAR10, tmp_path)
    config = convert.unet_config_from_diffusers(SMALL_CIFAR10)
    state = theirs.state_dict()
    with pytest.raises(CheckpointError, match=r"no 'mid_block.resnets.1.conv2.bias' \(needed for our mid.1"):
        convert.state_from_diffusers(config, {k: v for k, v in state.items() if k != "mid_block.resnets.1.conv2.bias"})
    with pytest.raises(CheckpointError, match="'class_embedding.weight' .*no place for"):
        convert.state_from_diffusers(config, {**state, "class_embedding.weight": torch.zeros(10, 128)})
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="none of diffusion_pytorch_model"):
        convert.from_diffusers(tmp_path / "empty")


def test_pipeline_folder_reads_its_unet(tmp_path):
    theirs = reference(SMALL_CIFAR10, tmp_path / "pipeline" / "unet")
    (tmp_path / "pipeline" / "model_index.json").write_text("{}")
    assert max_diff(load_ours(tmp_path / "pipeline"), theirs, (3, 32, 32)) <= TOL


# -------------------------------------------------------------------------------------------- config


def test_defaults_are_diffusers():
    params = inspect.signature(diffusers.UNet2DModel.__init__).parameters
    expected = {k: list(p.default) if isinstance(p.default, tuple) else p.default
                for k, p in params.items() if k != "self"}
    assert convert._DIFFUSERS_DEFAULTS == expected


@pytest.mark.parametrize("field, value", [
    ("flip_sin_to_cos", True), ("freq_shift", 0), ("act_fn", "gelu"), ("attention_head_dim", 8),
    ("resnet_time_scale_shift", "scale_shift"), ("time_embedding_type", "fourier"), ("center_input_sample", True),
    ("add_attention", False), ("class_embed_type", "timestep"), ("num_class_embeds", 10),
    ("downsample_padding", 2), ("mid_block_scale_factor", 2), ("out_channels", 6), ("sample_size", [32, 64]),
    ("sample_size", None), ("sample_size", 36), ("block_out_channels", [128, 192, 256, 256]), ("norm_num_groups", 24),
    ("down_block_types", ["DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D", "DownBlock2D"]),
    ("up_block_types", ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"]),
    ("time_embedding_dim", 256), ("attn_norm_num_groups", 8), ("upcast_everything", True),
    ("_class_name", "UNet2DConditionModel"),
])
def test_other_configs_are_refused_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"config {field}=") as e:
        convert.unet_config_from_diffusers({**GOOGLE_CIFAR10, field: value})
    assert "\n" not in str(e.value)


def test_missing_fields_take_diffusers_defaults():
    # Without flip_sin_to_cos diffusers puts cos first: refused, not silently converted.
    cfg = {k: v for k, v in GOOGLE_CIFAR10.items() if k != "flip_sin_to_cos"}
    with pytest.raises(ValueError, match="flip_sin_to_cos=True .*sin first"):
        convert.unet_config_from_diffusers(cfg)


def test_refused_before_reading_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**GOOGLE_CIFAR10, "norm_eps": 1e-6, "act_fn": "mish"}))
    (tmp_path / "diffusion_pytorch_model.safetensors").write_bytes(b"not read")
    with pytest.raises(ValueError, match="act_fn='mish'"):
        convert.from_diffusers(tmp_path)


def test_conditional_models_are_not_exported():
    with pytest.raises(ValueError, match="cond='class'"):
        convert.diffusers_config(UNET_PRESETS["mnist-class"])
    with pytest.raises(ValueError, match="film=True"):
        convert.diffusers_config(dataclasses.replace(UNET_PRESETS["mnist"], film=True))


# ------------------------------------------------------------------------------------ runs and the CLI


def parse(argv):
    p = argparse.ArgumentParser()
    convert_cmd.add_arguments(p)
    return p.parse_args(argv)


def test_convert_to_run_then_sample_and_back(tmp_path, capsys):
    theirs = reference(SMALL_CIFAR10, tmp_path / "diffusers")
    argv = ["--from-diffusers", str(tmp_path / "diffusers"), "--out", str(tmp_path / "m.pt")]
    assert convert_cmd.run(parse(argv)) == 0
    assert capsys.readouterr().out.startswith(f"wrote {tmp_path / 'm.pt'}")
    run = load_run(tmp_path / "m.pt")
    assert run.config.preset == "ddpm-cifar10" and run.config.model == convert.unet_config_from_diffusers(
        SMALL_CIFAR10) and run.label_names == () and run.cond == "none"
    assert max_diff(run.model, theirs, (3, 32, 32)) <= TOL
    x0 = ddim_sample(run.model, run.diffusion, (2, *run.shape), steps=2)
    assert x0.shape == (2, 3, 32, 32) and torch.isfinite(x0).all()

    argv = ["--to-diffusers", "--run", str(tmp_path / "m.pt"), "--out", str(tmp_path / "b")]
    assert convert_cmd.run(parse(argv)) == 0
    assert "wrote" in capsys.readouterr().out
    back = diffusers.UNet2DModel.from_pretrained(tmp_path / "b").eval()
    assert max_diff(run.model, back, (3, 32, 32)) <= TOL


def test_convert_to_run_needs_cifar_shapes(tmp_path):
    reference(MNIST_LAYOUT, tmp_path)
    with pytest.raises(ValueError, match="3x32x32 .* 1x28x28"):
        convert.convert_to_run(tmp_path, tmp_path / "m.pt")


def test_cli_errors(tmp_path):
    with pytest.raises(ValueError, match="exactly one of"):  # a UsageError: one line, exit 2
        convert_cmd.run(parse(["--out", str(tmp_path / "x")]))
    with pytest.raises(ValueError, match="needs --run"):
        convert_cmd.run(parse(["--to-diffusers", "--out", str(tmp_path / "x")]))
    with pytest.raises(CheckpointError, match="no such diffusers model folder"):
        convert_cmd.run(parse(["--from-diffusers", str(tmp_path / "missing"), "--out", str(tmp_path / "x.pt")]))
