"""unCLIP (Ramesh et al. 2022, "Hierarchical Text-Conditional Image Generation with CLIP Latents"; DALL-E 2) in
miniature: three ordinary runs, composed.

    CLIP (--preset mnist-clip)        image encoder + text encoder, contrastive loss (ddpm.nn.clip)
    prior (--preset mnist-prior)      a diffusion model of CLIP image embeddings z = sqrt(D) e_img, conditioned on the
                                      CLIP text embedding e_txt, predicting z_0 (x0-prediction), guided
    decoder (--preset mnist-decoder)  the pixel U-Net conditioned on e_img (time embedding + 4 tokens), guided

    text -> e_txt -> prior -> z_0 -> e_img = z_0 / |z_0| -> decoder -> image
    image -> e_img -> decoder with other noise -> variations (the same embedding, other details)

The prior and the decoder name their CLIP (UnclipConfig: path and fingerprint); the Trainer encodes each batch
with it (``training_inputs``): the prior's x_0 is the scaled image embedding and its condition the text
embedding of the batch's captions; the decoder's condition is the image embedding of its own images. The
condition's null, for classifier-free guidance, is the zero vector (ddpm.nn.conditioning.EmbeddingConditioner).
Why sqrt(D): the embeddings are unit vectors, so a coordinate is about 1 / sqrt(D) in size; scaled, the prior's
data has unit scale per coordinate like the images the process was designed for.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ddpm.checkpoints import LoadedRun, load_clip
from ddpm.config import Config
from ddpm.nn.clip import Clip
from ddpm.samplers import default_steps, sample

__all__ = ["attach_clip", "training_inputs", "to_prior_space", "from_prior_space", "zero_shot_logits", "slerp",
           "Stage", "Unclip", "PRIOR_SAMPLER", "PRIOR_STEPS", "PRIOR_GUIDANCE", "DECODER_SAMPLER", "DECODER_STEPS",
           "DECODER_ETA", "DECODER_GUIDANCE", "VARIATIONS_GUIDANCE", "for_variations", "check_unclip"]

# How the pipeline samples unless told otherwise (measured in docs/results.md, "unCLIP"). The prior's guidance picks
# the digit and its style; the decoder samples unguided and stochastically (DDIM with eta = 1, as the cascade's SR
# stage): deterministic samplers leave background speckle, and its guidance costs Frechet distance.
PRIOR_SAMPLER, PRIOR_STEPS, PRIOR_GUIDANCE = "ddim", 50, 2.0
DECODER_SAMPLER, DECODER_STEPS, DECODER_ETA, DECODER_GUIDANCE = "ddim", 50, 1.0, 1.0
# Variations decode a real digit's embedding: guidance 1.5 keeps more of what it says (the digit) at some diversity
VARIATIONS_GUIDANCE = 1.5


def attach_clip(config: Config, device) -> tuple[Clip, Config]:
    """(the frozen CLIP of a prior or decoder config, the config with the CLIP's fingerprint filled in). Raises
    CheckpointError (missing, different weights) or ValueError (a CLIP of another size than the network's)."""
    clip, fingerprint = load_clip(config.unclip, device=device)
    want = config.model.dim if config.model_kind == "prior" else config.model.embed_dim
    if clip.config.embed_dim != want:
        raise ValueError(f"the CLIP {config.unclip.clip} makes {clip.config.embed_dim}-d embeddings but the "
                         f"{config.model_kind} is built for {want}-d ones")
    if config.unclip.fingerprint is None:
        config = config.replace(fingerprint=fingerprint)
    return clip, config


def to_prior_space(e: Tensor) -> Tensor:
    """Unit CLIP embeddings [B, D] -> the prior's data, sqrt(D) e (unit scale per coordinate)."""
    return e * math.sqrt(e.shape[-1])


def from_prior_space(z: Tensor) -> Tensor:
    """The prior's samples [B, D] -> unit CLIP image embeddings (CLIP compares directions only)."""
    return F.normalize(z.float(), dim=-1)


def zero_shot_logits(image_emb: Tensor, class_text_emb: Tensor) -> Tensor:
    """CLIP's zero-shot classifier: the cosine similarity of each image embedding [B, D] to each class prompt's
    text embedding [K, D] -> [B, K] (argmax: the class)."""
    return image_emb.float() @ class_text_emb.float().T


def slerp(a: Tensor, b: Tensor, w: Tensor | float) -> Tensor:
    """Spherical interpolation between unit vectors a, b [..., D] at fractions w (0 -> a, 1 -> b): the path
    DALL-E 2 uses between two images' embeddings."""
    w = torch.as_tensor(w, dtype=a.dtype, device=a.device).reshape(-1, *([1] * a.dim()))
    omega = torch.arccos((a * b).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))
    return (torch.sin((1 - w) * omega) * a + torch.sin(w * omega) * b) / torch.sin(omega)


@torch.no_grad()
def training_inputs(clip: Clip, config: Config, x0: Tensor, captions: list[str] | None) -> tuple[Tensor, Any]:
    """What a prior or decoder trains on, for a batch of images and their captions: the prior (x_0 = sqrt(D)
    e_img, cond = e_txt), the decoder (x_0 = the images, cond = e_img)."""
    e_img = clip.encode_image(x0.float())
    if config.model_kind == "prior":
        return to_prior_space(e_img), clip.encode_text(captions)
    return x0, e_img


@dataclass
class Stage:
    """A loaded prior or decoder and how to sample it (sampler None: the stage's default; guidance None: the
    stage's PRIOR_GUIDANCE or DECODER_GUIDANCE; options: the sampler's keyword arguments; a decoder's DDIM gets
    eta = 1 unless they say otherwise)."""

    run: LoadedRun
    sampler: str | None = None
    steps: int | None = None
    guidance: float | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def settings(self) -> dict[str, Any]:
        """The sampler, steps and guidance this stage uses (its defaults resolved)."""
        run = self.run
        prior = run.config.model_kind == "prior"
        sampler = self.sampler or (PRIOR_SAMPLER if prior else DECODER_SAMPLER)
        if self.steps is not None:
            steps = self.steps
        elif self.sampler is None:  # the stage's own default, with its own sampler
            steps = PRIOR_STEPS if prior else DECODER_STEPS
        else:
            steps = default_steps(sampler, run.diffusion.T)
        guidance = self.guidance if self.guidance is not None else (PRIOR_GUIDANCE if prior else DECODER_GUIDANCE)
        options = dict(self.options)
        if sampler == "ddim" and options.get("eta") is None and not prior:
            options["eta"] = DECODER_ETA
        return {"sampler": sampler, "steps": steps, "guidance": guidance, "options": options}

    @torch.no_grad()
    def __call__(self, cond: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Conditions [B, D] (a zero row: unconditional) -> samples: a prior's as unit CLIP image embeddings
        [B, D], a decoder's as images [B, C, H, W]."""
        run, s = self.run, self.settings()
        device = run.diffusion.betas.device
        x = sample(run.model, run.diffusion, (cond.shape[0], *run.shape), cond.to(device), sampler=s["sampler"],
                   steps=s["steps"], guidance_scale=s["guidance"], generator=generator, device=device,
                   **run.sampler_options(s["options"]))
        return from_prior_space(x) if run.config.unclip_stage == "prior" else x


def for_variations(decoder: Stage) -> Stage:
    """The decoder Stage as variations use it: guidance VARIATIONS_GUIDANCE unless the stage sets its own."""
    return decoder if decoder.guidance is not None else dataclasses.replace(decoder, guidance=VARIATIONS_GUIDANCE)


def check_unclip(prior: LoadedRun, decoder: LoadedRun) -> None:
    """One line on why two runs are not an unCLIP pair (not a prior and a decoder, or built on different CLIPs)."""
    if prior.config.model_kind != "prior":
        raise ValueError(f"{prior.path} is not a diffusion prior (preset {prior.config.preset!r}); train one with "
                         f"--preset mnist-prior")
    if decoder.config.unclip_stage != "decoder":
        raise ValueError(f"{decoder.path} is not an unCLIP decoder (preset {decoder.config.preset!r}); train one with "
                         f"--preset mnist-decoder")
    a, b = prior.config.unclip.fingerprint, decoder.config.unclip.fingerprint
    if a != b:
        raise ValueError(f"{prior.path} and {decoder.path} were trained on different CLIPs (fingerprints "
                         f"{str(a)[:12]} and {str(b)[:12]}); train both on the same one")


class Unclip:
    """text -> CLIP text embedding -> prior -> image embedding -> decoder -> image; and image variations.

    prior, decoder: Stages (or LoadedRuns, sampled with the defaults). ``self.clip`` is the decoder's CLIP (the
    prior's has the same weights: check_unclip). ``describe()`` says which runs the pipeline composes."""

    def __init__(self, prior: Stage | LoadedRun, decoder: Stage | LoadedRun):
        self.prior = prior if isinstance(prior, Stage) else Stage(prior)
        self.decoder = decoder if isinstance(decoder, Stage) else Stage(decoder)
        check_unclip(self.prior.run, self.decoder.run)
        self.clip: Clip = self.decoder.run.clip

    def describe(self) -> dict[str, Any]:
        unclip = self.decoder.run.config.unclip
        return {"prior": str(self.prior.run.path), "prior_step": self.prior.run.step, **{
                    f"prior_{k}": v for k, v in self.prior.settings().items()},
                "decoder": str(self.decoder.run.path), "decoder_step": self.decoder.run.step, **{
                    f"decoder_{k}": v for k, v in self.decoder.settings().items()},
                "clip": unclip.clip, "clip_fingerprint": unclip.fingerprint}

    @torch.no_grad()
    def text_embeddings(self, prompts: list[str]) -> Tensor:
        return self.clip.encode_text(list(prompts))

    @torch.no_grad()
    def image_embeddings(self, images: Tensor) -> Tensor:
        """Images [B, C, H, W] in [-1, 1] -> unit CLIP image embeddings [B, D]."""
        return self.clip.encode_image(images.to(self.clip.log_logit_scale.device).float())

    @torch.no_grad()
    def prior_sample(self, prompts: list[str], generator: torch.Generator | None = None) -> Tensor:
        """Prompts -> sampled unit CLIP image embeddings [B, D]."""
        return self.prior(self.text_embeddings(prompts), generator)

    @torch.no_grad()
    def decode(self, image_emb: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Unit CLIP image embeddings [B, D] -> images [B, C, H, W] in [-1, 1]."""
        return self.decoder(image_emb, generator).clamp(-1, 1)

    @torch.no_grad()
    def __call__(self, prompts: list[str], generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Prompts -> (images, the image embeddings the prior chose for them)."""
        e = self.prior_sample(prompts, generator)
        return self.decode(e, generator), e

    @torch.no_grad()
    def variations(self, images: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Images [B, C, H, W] -> [B * n] decodings of their embeddings with different noise (image i's n
        variations at rows i * n ... i * n + n - 1), decoded with VARIATIONS_GUIDANCE unless the decoder Stage
        sets its guidance."""
        e = self.image_embeddings(images).repeat_interleave(n, dim=0)
        return for_variations(self.decoder)(e, generator).clamp(-1, 1)
