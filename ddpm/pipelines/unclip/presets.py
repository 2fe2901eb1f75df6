"""unCLIP's presets (docs/unclip.md): a tiny CLIP trained on digits and captions; a diffusion prior of its image
embeddings given its text embeddings (x0-prediction, cosine schedule); a decoder of digits given the image embedding.
The prior and decoder name the CLIP (UnclipConfig, --clip). Steps: about what the shipped runs' time budgets (3, 3
and 14 minutes) gave on this project's machine.

"mnist-text-clip" is the text model of ddpm.presets' "mnist-text" (same U-Net, steps and rates) whose text encoder is
the shipped CLIP's, frozen (kind "clip-text", ddpm.pipelines.unclip.text): the text widths, vocabulary and prompt
length are the CLIP preset's, so that its weights fit."""

from __future__ import annotations

import dataclasses

from ddpm.config import MNIST_TRAIN, Config, DataConfig, DiffusionConfig, TrainConfig, with_conditioning
from ddpm.datasets import caption_max_words, caption_vocabulary
from ddpm.nn.unet import UNET_PRESETS
from ddpm.pipelines.unclip.clip import ClipConfig
from ddpm.pipelines.unclip.prior import PriorConfig
from ddpm.pipelines.unclip.stage import UnclipConfig

__all__ = ["PRESETS", "BENCH", "NOT_BENCHED"]

PRESETS = {
    "mnist-clip": Config(
        preset="mnist-clip", data=DataConfig(dataset="mnist"),
        model=ClipConfig(vocab=caption_vocabulary("mnist"), max_prompt_len=caption_max_words("mnist")),
        train=TrainConfig(**{**MNIST_TRAIN, "steps": 800, "batch_size": 256, "lr": 1e-3, "warmup": 50,
                             "weight_decay": 0.1, "guidance": 1.0}), kind="clip"),
    "mnist-prior": Config(
        preset="mnist-prior", data=DataConfig(dataset="mnist"), model=PriorConfig(),
        diffusion=DiffusionConfig(schedule="cosine", prediction="x0"),
        train=TrainConfig(**{**MNIST_TRAIN, "steps": 1000, "batch_size": 256, "lr": 1e-3, "ckpt_every": 500,
                             "log_every": 50}), kind="prior", stage=UnclipConfig()),
    "mnist-decoder": Config(
        preset="mnist-decoder", data=DataConfig(dataset="mnist"), model=UNET_PRESETS["mnist-decoder"],
        train=TrainConfig(**{**MNIST_TRAIN, "steps": 1130, "guidance": 1.0}), kind="decoder", stage=UnclipConfig()),
}
_CLIP = PRESETS["mnist-clip"].model
PRESETS["mnist-text-clip"] = Config(
    preset="mnist-text-clip", data=DataConfig(dataset="mnist"),
    model=dataclasses.replace(with_conditioning(UNET_PRESETS["mnist"], "text", "mnist"), vocab=_CLIP.vocab,
                              max_prompt_len=_CLIP.max_prompt_len, text_dim=_CLIP.text_dim,
                              text_layers=_CLIP.text_layers, text_heads=_CLIP.text_heads),
    train=TrainConfig(**{**MNIST_TRAIN, "steps": 1800, "cond_lr_scale": 0.1}), kind="clip-text",
    stage=UnclipConfig(clip="data/pretrained/mnist-clip.pt"))

BENCH: dict[str, str] = {}
NOT_BENCHED = {"mnist-clip": "unCLIP's CLIP, trained on its own loss; unCLIP's cost is counted in U-Net calls "
                             "(docs/unclip.md)",
               "mnist-prior": "unCLIP's prior, a small MLP over embeddings; unCLIP's cost is counted in U-Net calls "
                              "(docs/unclip.md)",
               "mnist-text-clip": "the mnist-text U-Net with the CLIP's text encoder frozen: its network and cost are "
                                  "mnist-text's (docs/text.md)"}
