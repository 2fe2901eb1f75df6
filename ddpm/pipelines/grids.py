"""The picture a training run draws of its progress (samples/step_XXXXXX.png), for every kind of run: one row
of samples per class from a diffusion model (DDIM, guided; a latent run's decoded by its autoencoder), points
from a 2D toy model, digits above their reconstructions for an autoencoder, or for a super-resolution model
training digits shrunk, refined, and as they were."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ddpm.checkpoints import LoadedRun
from ddpm.conditions import condition_for_labels
from ddpm.config import Config
from ddpm.datasets import area_downsample, class_prompts, to_float
from ddpm.diffusion import GaussianDiffusion
from ddpm.nn.autoencoder import Autoencoder
from ddpm.nn.clip import Clip
from ddpm.pipelines.cascade import Refiner
from ddpm.pipelines.latent import reconstruction_rows
from ddpm.pipelines.unclip import Stage, zero_shot_logits
from ddpm.samplers import ddim_sample
from ddpm.viz import class_grid, plot_matrix, plot_points, save_grid

__all__ = ["training_grid"]


@torch.no_grad()
def training_grid(config: Config, model: nn.Module, diffusion: GaussianDiffusion, path: Path, *, step: int,
                  label_names: Sequence[str], images: torch.Tensor | None = None,
                  labels: torch.Tensor | None = None, first_stage: Autoencoder | None = None,
                  clip: Clip | None = None, device=None) -> Path:
    """Write the grid of ``model`` (the EMA weights) to path. images, labels: training images (uint8) and their
    labels, which an autoencoder's grid reconstructs (the first 32), a super-resolution model's refines (the
    first 8) and an unCLIP decoder decodes (the first 8); first_stage: a latent run's autoencoder; clip: an unCLIP
    stage's CLIP."""
    tc, m = config.train, config.model
    if config.model_kind == "autoencoder":
        return save_grid(reconstruction_rows(model, images[:32]), path, nrow=8)
    if config.model_kind in ("clip", "prior") or clip is not None:
        return _unclip_grid(config, model, diffusion, path, step, label_names, images, labels, clip or model, device)
    if config.super_res is not None:
        x = to_float(images[:8]).to(device)
        low = area_downsample(x, config.super_res.low_res)
        cond = condition_for_labels(m.cond, labels[:8], label_names, config.data.dataset)
        run = LoadedRun(model, diffusion, config, step, path)
        refiner = Refiner(run, guidance=tc.guidance)
        refined = refiner(low, cond.to(device) if isinstance(cond, torch.Tensor) else cond,
                          torch.Generator(device).manual_seed(1234))
        nearest = torch.nn.functional.interpolate(low, size=x.shape[-2:], mode="nearest")
        return save_grid(torch.cat([nearest, refined.clamp(-1, 1), x]), path, nrow=8)
    if config.model_kind == "mlp":
        g = torch.Generator(device).manual_seed(1234)
        x = ddim_sample(model, diffusion, (2000, m.dim), steps=tc.sample_steps, generator=g, device=device,
                        threshold="none")
        return plot_points(x, title=f"{config.data.toy}, step {step}", path=path)
    x, nrow = class_grid(model, diffusion, config.sample_shape, m.cond, label_names, config.data.dataset,
                         getattr(m, "num_classes", 0), steps=tc.sample_steps, guidance=tc.guidance, device=device,
                         **config.sampler_defaults)
    if first_stage is not None:
        x = first_stage.from_latents(x).clamp(-1, 1)
    return save_grid(x, path, nrow=nrow)


def _unclip_grid(config: Config, model: nn.Module, diffusion: GaussianDiffusion, path: Path, step: int,
                 label_names: Sequence[str], images: torch.Tensor, labels: torch.Tensor, clip: Clip, device) -> Path:
    """A CLIP: the cosine similarity of one training digit per class to the ten class prompts. A prior: how CLIP
    classifies 10 sampled image embeddings per class prompt. A decoder: 8 training digits above 3 decodings of
    each one's image embedding (variations)."""
    tc = config.train
    g = torch.Generator(device).manual_seed(1234)
    run = LoadedRun(model, diffusion, config, step, path)
    if config.unclip_stage == "decoder":
        x = to_float(images[:8]).to(device)
        e = clip.encode_image(x).repeat(3, 1)
        decoded = Stage(run, "ddim", tc.sample_steps, tc.guidance)(e, g).clamp(-1, 1)
        return save_grid(torch.cat([x, decoded]), path, nrow=8)
    prompts = class_prompts(label_names, torch.arange(len(label_names)), config.data.dataset)
    text = clip.encode_text(prompts)
    if config.model_kind == "clip":
        first = [int((labels == k).nonzero()[0, 0]) for k in range(len(label_names))]
        sim = clip.encode_image(to_float(images[first]).to(device)) @ text.T
        return plot_matrix(sim.cpu(), [f"a digit {n}" for n in label_names], prompts, path=path,
                           title=f"CLIP cosine similarity, step {step}")
    per = 10
    e = Stage(run, "ddim", tc.sample_steps, tc.guidance)(text.repeat_interleave(per, 0), g)  # unit embeddings
    predicted = zero_shot_logits(e, text).argmax(-1).reshape(len(prompts), per)
    counts = torch.stack([torch.bincount(row, minlength=len(prompts)) for row in predicted])
    return plot_matrix(counts.cpu(), prompts, list(label_names), fmt="{:.0f}", path=path, xlabel="CLIP reads it as",
                       title=f"prior samples per prompt, step {step}")
