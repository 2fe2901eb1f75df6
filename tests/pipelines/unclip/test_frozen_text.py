"""Imagen's frozen text encoder (kind "clip-text", preset "mnist-text-clip"): a text-to-image U-Net whose text
encoder is its CLIP's text tower, copied and frozen; trained, sampled and refused by the same trainer, checkpoints
and CLI as every run (tiny networks, a few steps)."""

import json

import pytest
import torch
from PIL import Image

from ddpm.checkpoints import CheckpointError, load_checkpoint, load_run, weights_fingerprint
from ddpm.cli import main
from ddpm.config import Config
from ddpm.exports import export_model
from ddpm.pipelines.unclip.clip import ClipConfig
from ddpm.pipelines.unclip.stage import UnclipConfig
from ddpm.pipelines.unclip.text import frozen_text_weights
from ddpm.presets import get_preset
from ddpm.training import Trainer, TrainingError

TINY_CLIP = dict(channels=(8, 16), embed_dim=16, text_dim=16, text_layers=1)
TINY_UNET = dict(ch=8, num_groups=4, num_res_blocks=1, text_dim=16, text_layers=1, attn_resolutions=(),
                 cross_attn_resolutions=(14,), ch_mult=(1, 2))
STEPS = dict(steps=4, batch_size=16, sample_steps=2, ckpt_every=0)


def _clip(folder, digits, **changes):
    clip = get_preset("mnist-clip", **STEPS)
    clip = clip.replace(model=ClipConfig(**{**clip.model.to_dict(), **TINY_CLIP, **changes}))
    Trainer(clip, folder, device="cpu", progress=False, dataset=digits).fit()
    return folder


def _text_config(clip) -> Config:
    return get_preset("mnist-text-clip", **STEPS).replace(stage=UnclipConfig(clip=str(clip)), **TINY_UNET)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, digits):
    """A tiny CLIP, then a tiny text U-Net on its frozen text encoder."""
    folder = tmp_path_factory.mktemp("clip-text")
    _clip(folder / "clip", digits)
    Trainer(_text_config(folder / "clip"), folder / "text", device="cpu", progress=False, dataset=digits).fit()
    return folder


def test_the_preset_is_mnist_text_with_the_clips_text_encoder():
    config, text, clip = get_preset("mnist-text-clip"), get_preset("mnist-text"), get_preset("mnist-clip")
    assert Config.from_dict(config.to_dict()) == config
    assert config.kind == "clip-text" and config.stage.clip == "data/pretrained/mnist-clip.pt"
    assert config.model == text.model and config.train == text.train  # the same U-Net, steps and rates
    for f in ("vocab", "max_prompt_len", "text_dim", "text_layers", "text_heads"):
        assert getattr(config.model, f) == getattr(clip.model, f), f
    with pytest.raises(ValueError, match="cond='text'"):
        config.replace(cond="class")
    with pytest.raises(ValueError, match="takes stage=UnclipConfig"):
        config.replace(stage=None)


def test_the_text_encoder_after_training_is_the_clips_exactly(runs):
    clip_ckpt = load_checkpoint(runs / "clip" / "checkpoint.pt")
    run = load_run(runs / "text")
    clip = run.frozen  # the CLIP the run names, found and checked by its fingerprint
    assert run.config.stage.fingerprint == weights_fingerprint(clip_ckpt["ema"])
    source = frozen_text_weights(clip.text_encoder)
    assert len(source) == 2 + 12 * 1 + 2  # embeddings, one Transformer layer's 12 tensors, the final LayerNorm
    for weights in ("ema", "model"):  # the exported (EMA) weights and the raw ones
        net = load_run(runs / "text", use_ema=weights == "ema").model
        for name, p in frozen_text_weights(net.conditioner).items():
            assert torch.equal(p, source[name]), (weights, name)
    # the U-Net's own projection of the pooled vector into its time embedding is learned, not CLIP's
    raw = load_checkpoint(runs / "text" / "checkpoint.pt")
    assert raw["model"]["conditioner.to_emb.weight"].shape == (4 * 8, 16)
    assert not torch.equal(raw["model"]["conditioner.to_emb.weight"], raw["ema"]["conditioner.to_emb.weight"])


def test_another_clip_is_refused_in_one_line(runs, tmp_path, digits, capsys):
    export_model(runs / "clip", tmp_path / "clip.pt")
    ckpt = torch.load(tmp_path / "clip.pt", weights_only=True)
    ckpt["ema"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in ckpt["ema"].items()}
    (tmp_path / "other").mkdir()
    torch.save(ckpt, tmp_path / "other" / "checkpoint.pt")
    export_model(runs / "text", tmp_path / "text.pt", half=True, frozen=tmp_path / "clip.pt")
    assert load_run(tmp_path / "text.pt").config.stage.clip == "clip.pt"  # the shipped pair: the CLIP beside it
    moved = torch.load(tmp_path / "text.pt", weights_only=True)
    moved["config"]["stage"]["clip"] = str(tmp_path / "other")
    torch.save(moved, tmp_path / "wrong.pt")
    with pytest.raises(CheckpointError, match="not the one this unCLIP stage was trained on"):
        load_run(tmp_path / "wrong.pt")
    assert main(["sample", "--run", str(tmp_path / "wrong.pt"), "--prompt", "a thick seven", "--steps", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "fingerprint" in err and "\n" not in err and "Traceback" not in err
    # training refuses a CLIP whose text encoder does not fit the U-Net's
    _clip(tmp_path / "wide", digits, text_dim=32)
    with pytest.raises(TrainingError, match=r"another text encoder than this U-Net's \(text_dim 32 vs 16\)"):
        Trainer(_text_config(tmp_path / "wide"), tmp_path / "t2", device="cpu", progress=False, dataset=digits)


def test_the_cli_samples_it_from_a_prompt(runs, tmp_path, capsys):
    out = tmp_path / "s.png"
    assert main(["sample", "--run", str(runs / "text"), "--prompt", "a thick seven", "--n", "2", "--steps", "2",
                 "--out", str(out)]) == 0
    assert "wrote 2 samples" in capsys.readouterr().out and Image.open(out).size[1] > 28
    assert main(["sample", "--run", str(runs / "text"), "--prompt", "a purple seven"]) == 2  # the CLIP's words
    assert "unknown word" in capsys.readouterr().err


def test_it_is_evaluated_as_a_text_model(runs, tmp_path):
    out = tmp_path / "e.json"
    assert main(["evaluate", "--run", str(runs / "text"), "--n-samples", "20", "--sampler", "dpmpp-2m", "--steps", "2",
                 "--bpd-images", "0", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["attribute_adherence"]["available"] and report["attribute_adherence"]["n"] > 0
