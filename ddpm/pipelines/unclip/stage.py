"""unCLIP (Ramesh et al. 2022, "Hierarchical Text-Conditional Image Generation with CLIP Latents"; DALL-E 2) in
miniature: three ordinary runs, composed.

    CLIP (--preset mnist-clip)        image encoder + text encoder, contrastive loss (ddpm.pipelines.unclip.clip)
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ddpm.checkpoints import LoadedRun, frozen_path, load_frozen_network
from ddpm.datasets import class_prompts, to_float
from ddpm.nn.unet import UNet, UNetConfig
from ddpm.pipelines.base import GridInputs, Kind, Sampling
from ddpm.pipelines.unclip.clip import Clip, ClipConfig
from ddpm.pipelines.unclip.prior import DiffusionPrior, PriorConfig
from ddpm.viz import plot_matrix, save_grid

__all__ = ["UnclipConfig", "ClipKind", "PriorKind", "DecoderKind", "load_clip", "to_prior_space", "from_prior_space",
           "zero_shot_logits", "slerp", "Unclip", "PRIOR_SAMPLING", "DECODER_SAMPLING", "VARIATIONS_GUIDANCE",
           "check_unclip"]

# How the pipeline samples unless told otherwise (measured in docs/results.md, "unCLIP"). The prior's guidance picks
# the digit and its style; the decoder samples unguided and stochastically (DDIM with eta = 1, as the cascade's SR
# stage): deterministic samplers leave background speckle, and its guidance costs Frechet distance.
PRIOR_SAMPLING = Sampling("ddim", 50, 2.0, {"threshold": "none"})  # embeddings are not pixels: no clipping
DECODER_SAMPLING = Sampling("ddim", 50, 1.0, {"eta": 1.0})
# Variations decode a real digit's embedding: guidance 1.5 keeps more of what it says (the digit) at some diversity
VARIATIONS_GUIDANCE = 1.5
TRAIN_CLIP = "python -m ddpm train --preset mnist-clip, or name yours: --clip PATH"


@dataclass(frozen=True)
class UnclipConfig:
    """The CLIP that a stage of unCLIP is built on (Config.stage of kinds "prior" and "decoder"): a diffusion prior
    models its image embeddings given its text embeddings; a decoder turns its image embeddings into images.

    clip: its run folder or exported .pt (looked up as a latent run's autoencoder is); fingerprint: the SHA-256 of
    its weights, filled in when training starts; loading refuses a CLIP whose weights differ, and a pipeline refuses
    a prior and a decoder built on different CLIPs.
    """

    clip: str = "runs/mnist-clip"
    fingerprint: str | None = None


def load_clip(unclip: UnclipConfig, relative_to: str | Path | None = None,
              device: str | torch.device = "cpu") -> tuple[Clip, str]:
    """(the CLIP an unCLIP prior or decoder names, eval mode and frozen, the fingerprint of its weights)."""
    path = frozen_path(unclip.clip, relative_to, "CLIP", TRAIN_CLIP)
    clip, fingerprint = load_frozen_network(path, "clip", unclip.fingerprint, "unCLIP stage")
    return clip.to(device), fingerprint


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


def check_unclip(prior: LoadedRun | None, decoder: LoadedRun) -> None:
    """One line on why two runs are not an unCLIP pair (not a prior and a decoder, or built on different CLIPs);
    prior None: only the decoder is checked (variations need no prior)."""
    if prior is not None and prior.config.kind != "prior":
        raise ValueError(f"{prior.path} is not a diffusion prior (preset {prior.config.preset!r}); train one with "
                         f"--preset mnist-prior")
    if decoder.config.kind != "decoder":
        raise ValueError(f"{decoder.path} is not an unCLIP decoder (preset {decoder.config.preset!r}); train one with "
                         f"--preset mnist-decoder")
    if prior is None:
        return
    a, b = prior.config.stage.fingerprint, decoder.config.stage.fingerprint
    if a != b:
        raise ValueError(f"{prior.path} and {decoder.path} were trained on different CLIPs (fingerprints "
                         f"{str(a)[:12]} and {str(b)[:12]}); train both on the same one")


class Unclip:
    """text -> CLIP text embedding -> prior -> image embedding -> decoder -> image; and image variations.

    prior, decoder: loaded runs (prior None: variations only); prior_sampling, decoder_sampling: how each is sampled
    (None: PRIOR_SAMPLING, DECODER_SAMPLING); variations_guidance: the decoder's guidance for variations.
    ``self.clip`` is the decoder's CLIP (the prior's has the same weights: check_unclip). ``describe()`` says which
    runs the pipeline composes and how it samples them."""

    def __init__(self, prior: LoadedRun | None, decoder: LoadedRun, prior_sampling: Sampling | None = None,
                 decoder_sampling: Sampling | None = None, variations_guidance: float = VARIATIONS_GUIDANCE):
        check_unclip(prior, decoder)
        self.prior, self.decoder = prior, decoder
        self.prior_sampling = prior_sampling or PRIOR_SAMPLING
        self.decoder_sampling = decoder_sampling or DECODER_SAMPLING
        self.variations_guidance = variations_guidance
        self.clip: Clip = decoder.frozen

    def describe(self) -> dict[str, Any]:
        stage = self.decoder.config.stage
        out: dict[str, Any] = {}
        for name, run, s in (("prior", self.prior, self.prior_sampling), ("decoder", self.decoder,
                                                                            self.decoder_sampling)):
            if run is None:  # variations only
                continue
            out.update({name: str(run.path), f"{name}_step": run.step, f"{name}_sampler": s.sampler,
                        f"{name}_steps": s.steps, f"{name}_guidance": s.guidance, f"{name}_options": dict(s.options)})
        return {**out, "clip": stage.clip, "clip_fingerprint": stage.fingerprint}

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
        if self.prior is None:
            raise ValueError("this unCLIP has no prior (it decodes image embeddings only): give it one for text")
        e_txt = self.text_embeddings(prompts)
        return self.prior.sample(e_txt.to(self.prior.diffusion.betas.device), None, self.prior_sampling, generator)

    @torch.no_grad()
    def decode(self, image_emb: Tensor, generator: torch.Generator | None = None,
               guidance: float | None = None) -> Tensor:
        """Unit CLIP image embeddings [B, D] -> images [B, C, H, W] in [-1, 1] (guidance: instead of the
        decoder sampling's)."""
        s = self.decoder_sampling if guidance is None else dataclasses.replace(self.decoder_sampling,
                                                                               guidance=guidance)
        return self.decoder.sample(image_emb.to(self.decoder.diffusion.betas.device), None, s, generator).clamp(-1, 1)

    @torch.no_grad()
    def __call__(self, prompts: list[str], generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Prompts -> (images, the image embeddings the prior chose for them)."""
        e = self.prior_sample(prompts, generator)
        return self.decode(e, generator), e

    @torch.no_grad()
    def variations(self, images: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Images [B, C, H, W] -> [B * n] decodings of their embeddings with different noise (image i's n
        variations at rows i * n ... i * n + n - 1), decoded with ``variations_guidance``."""
        e = self.image_embeddings(images).repeat_interleave(n, dim=0)
        return self.decode(e, generator, guidance=self.variations_guidance)


# ---------------------------------------------------------------------------------------------- the kinds of run
class _OnClip(Kind):
    """A prior or a decoder: a diffusion model that builds on a frozen CLIP (UnclipConfig in Config.stage)."""

    section = UnclipConfig
    frozen_field = "clip"
    evaluation = "ddpm.pipelines.unclip.evaluate"

    def check(self, config) -> None:
        if not isinstance(config.stage, UnclipConfig) or config.cond != "embedding":
            raise ValueError(f"an unCLIP {self.name} needs an UnclipConfig stage (its CLIP) and a network conditioned "
                             f"on an embedding, got stage={config.stage} and cond={config.cond!r}")

    def embed_dim(self, config) -> int:
        return config.model.embed_dim

    def attach(self, config, device):
        clip, fingerprint = load_clip(config.stage, device=device)
        if clip.config.embed_dim != self.embed_dim(config):
            raise ValueError(f"the CLIP {config.stage.clip} makes {clip.config.embed_dim}-d embeddings but the "
                             f"{self.name} is built for {self.embed_dim(config)}-d ones")
        if config.stage.fingerprint is None:
            config = config.replace(fingerprint=fingerprint)
        return clip, config

    def load_frozen(self, config, relative_to, device):
        return load_clip(config.stage, relative_to, device)[0]

    def fits(self, config, frozen):
        return frozen.config.in_channels, frozen.config.image_size  # the images the CLIP encodes

    def usage(self, run):
        return (f"{run.path} is unCLIP's {self.name}: use python -m ddpm unclip --{self.name} {run.path} --prompt "
                f"\"a thick seven\"" + (", or --variations 0" if self.name == "decoder" else ""))

    def next_steps(self, config, run_dir):
        return (f"python -m ddpm evaluate --run {run_dir}; python -m ddpm unclip --{self.name} {run_dir} --prompt "
                f"\"a thick seven\"")


class ClipKind(Kind):
    """unCLIP's encoders: trained on their own contrastive loss over digits and captions, not on L_simple."""

    name = "clip"
    networks = {"clip": (ClipConfig, Clip)}
    evaluation = "ddpm.pipelines.unclip.evaluate"

    def captions_vocab(self, config, frozen):
        return config.model.vocab

    def loss(self, net, diffusion, config, x0, cond, t, noise):
        return net(x0, cond), None  # symmetric InfoNCE per pair, no timesteps

    def grid(self, g: GridInputs, path: Path) -> Path:
        """The cosine similarity of one training digit per class to the ten class prompts."""
        prompts = class_prompts(g.label_names, torch.arange(len(g.label_names)), g.config.data.dataset)
        text = g.model.encode_text(prompts)
        first = [int((g.labels == k).nonzero()[0, 0]) for k in range(len(g.label_names))]
        sim = g.model.encode_image(to_float(g.images[first]).to(g.device)) @ text.T
        return plot_matrix(sim.cpu(), [f"a digit {n}" for n in g.label_names], prompts, path=path,
                           title=f"CLIP cosine similarity, step {g.step}")

    def usage(self, run):
        return f"{run.path} is a CLIP (unCLIP's encoders), not a diffusion model: see python -m ddpm evaluate --run " \
               f"{run.path}"

    def next_steps(self, config, run_dir):
        return (f"python -m ddpm evaluate --run {run_dir}; python -m ddpm train --preset mnist-prior and --preset "
                f"mnist-decoder (their configs name runs/mnist-clip; another CLIP: --clip {run_dir})")


class PriorKind(_OnClip):
    """The diffusion prior: x_0 = sqrt(D) e_img of a batch's images, given e_txt of their captions."""

    name = "prior"
    networks = {"prior": (PriorConfig, DiffusionPrior)}

    def embed_dim(self, config) -> int:
        return config.model.dim

    def sampler_defaults(self, config):
        return {"threshold": "none"}  # a predicted z_0 is a scaled embedding, not pixels in [-1, 1]

    def captions_vocab(self, config, frozen):
        return frozen.config.vocab  # the captions go to the CLIP's text encoder

    @torch.no_grad()
    def training_inputs(self, net, diffusion, frozen, config, x0, cond, t):
        return net, to_prior_space(frozen.encode_image(x0.float())), frozen.encode_text(cond), t

    def sampling(self, config) -> Sampling:
        return PRIOR_SAMPLING

    def decode(self, frozen, x):
        return from_prior_space(x)

    def grid(self, g: GridInputs, path: Path) -> Path:
        """How CLIP classifies 10 sampled image embeddings per class prompt."""
        clip, tc, per = g.frozen, g.config.train, 10
        prompts = class_prompts(g.label_names, torch.arange(len(g.label_names)), g.config.data.dataset)
        text = clip.encode_text(prompts)
        run = LoadedRun(g.model, g.diffusion, g.config, g.step, path, frozen=clip)
        e = run.sample(text.repeat_interleave(per, 0), None, Sampling("ddim", tc.sample_steps, tc.guidance),
                       torch.Generator(g.device).manual_seed(1234))  # unit embeddings
        predicted = zero_shot_logits(e, text).argmax(-1).reshape(len(prompts), per)
        counts = torch.stack([torch.bincount(row, minlength=len(prompts)) for row in predicted])
        return plot_matrix(counts.cpu(), prompts, list(g.label_names), fmt="{:.0f}", path=path,
                           xlabel="CLIP reads it as", title=f"prior samples per prompt, step {g.step}")


class DecoderKind(_OnClip):
    """The decoder: the pixel U-Net given the CLIP image embedding of its own training images."""

    name = "decoder"
    networks = {"unet": (UNetConfig, UNet)}

    @torch.no_grad()
    def training_inputs(self, net, diffusion, frozen, config, x0, cond, t):
        return net, x0, frozen.encode_image(x0.float()), t

    def sampling(self, config) -> Sampling:
        return DECODER_SAMPLING

    def grid(self, g: GridInputs, path: Path) -> Path:
        """8 training digits above 3 decodings of each one's image embedding (variations)."""
        tc = g.config.train
        x = to_float(g.images[:8]).to(g.device)
        e = g.frozen.encode_image(x).repeat(3, 1)
        run = LoadedRun(g.model, g.diffusion, g.config, g.step, path, frozen=g.frozen)
        decoded = run.sample(e, None, Sampling("ddim", tc.sample_steps, tc.guidance, {"eta": 1.0}),
                             torch.Generator(g.device).manual_seed(1234)).clamp(-1, 1)
        return save_grid(torch.cat([x, decoded]), path, nrow=8)
