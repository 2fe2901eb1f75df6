"""Imagen's frozen text encoder (Saharia et al. 2022, Sec. 2.1) in miniature: the mnist-text U-Net whose text
encoder is the Transformer of this project's CLIP, copied and frozen, instead of one trained jointly with the U-Net.

Imagen's central finding is that a large text encoder pretrained on text alone (T5-XXL), kept frozen, serves
text-to-image better than one trained on the image-caption pairs, and that scaling it matters more than scaling the
U-Net. Here the pretrained encoder is the text tower of the tiny CLIP (ddpm.pipelines.unclip.clip), trained on the
same captions by the contrastive loss; the kind "clip-text" (preset "mnist-text-clip") copies it into the U-Net's
text conditioner (ddpm.nn.conditioning.TextConditioner: the same class, so the same vocabulary, prompt length and
widths) and freezes it:

    frozen, CLIP's:   token and position embeddings, the Transformer layers, the final LayerNorm
                      (what the U-Net's cross-attention reads, and the pooled mean)
    learned:          the U-Net's own projection of the pooled vector into its time embedding (to_emb: CLIP's maps
                      to its 64-d contrastive space, the U-Net's to the 4 ch time embedding), as Imagen learns
                      the layers that read T5's outputs

The run's config names the CLIP (UnclipConfig: path and fingerprint, as unCLIP's prior and decoder do); loading
the run refuses a CLIP whose weights differ. Everything else is the mnist-text preset's.
"""

from __future__ import annotations

from torch import nn

from ddpm.pipelines.base import Kind
from ddpm.pipelines.unclip.clip import Clip
from ddpm.pipelines.unclip.stage import UnclipConfig, load_clip

__all__ = ["ClipTextKind", "FROZEN_PREFIXES", "frozen_text_weights", "copy_frozen_text"]

# the parts of a TextConditioner that are CLIP's, frozen (its to_emb is the U-Net's own, learned)
FROZEN_PREFIXES = ("token_embedding.", "position_embedding", "layers.", "norm.")
MATCHED = ("vocab", "max_prompt_len", "text_dim", "text_layers", "text_heads")  # UNetConfig = ClipConfig fields


def _frozen(name: str) -> bool:
    return name.startswith(FROZEN_PREFIXES)


def frozen_text_weights(encoder: nn.Module) -> dict[str, nn.Parameter]:
    """The frozen parameters of a TextConditioner (a CLIP's text tower or a U-Net's conditioner), by name."""
    return {n: p for n, p in encoder.named_parameters() if _frozen(n)}


def _unet(net: nn.Module) -> nn.Module:
    """The U-Net inside a DistributedDataParallel or torch.compile wrapper."""
    net = getattr(net, "module", net)
    return getattr(net, "_orig_mod", net)


def copy_frozen_text(unet: nn.Module, clip: Clip) -> None:
    """Copy the CLIP's text tower into the U-Net's text conditioner and freeze it (requires_grad False: no
    gradient, so the optimizer leaves it, and its weight decay, alone)."""
    target = frozen_text_weights(unet.conditioner)
    source = frozen_text_weights(clip.text_encoder)
    for name, p in target.items():
        p.data.copy_(source[name].data)
        p.requires_grad_(False)


class ClipTextKind(Kind):
    """A text-to-image U-Net (cond="text") whose text encoder is its CLIP's, frozen (UnclipConfig in Config.stage)."""

    name = "clip-text"
    section = UnclipConfig
    frozen_field = "clip"

    def check(self, config) -> None:
        super().check(config)
        if config.cond != "text":
            raise ValueError(f"a 'clip-text' run is a text-conditioned U-Net (cond='text') whose text encoder is its "
                             f"CLIP's, got cond={config.cond!r}")

    def attach(self, config, device):
        clip, fingerprint = load_clip(config.stage, device=device)
        differ = [f for f in MATCHED if getattr(clip.config, f) != getattr(config.model, f)]
        if differ:
            pairs = ", ".join(f"{f} {getattr(clip.config, f) if f != 'vocab' else len(clip.config.vocab)} vs "
                              f"{getattr(config.model, f) if f != 'vocab' else len(config.model.vocab)}"
                              for f in differ)
            raise ValueError(f"the CLIP {config.stage.clip} has another text encoder than this U-Net's ({pairs}): "
                             f"build the U-Net with the CLIP's (preset mnist-text-clip does)")
        if config.stage.fingerprint is None:
            config = config.replace(fingerprint=fingerprint)
        return clip, config

    def load_frozen(self, config, relative_to, device):
        return load_clip(config.stage, relative_to, device)[0]  # refuses a CLIP with other weights

    def training_inputs(self, net, diffusion, frozen, config, x0, cond, t):
        unet = _unet(net)
        if any(p.requires_grad for p in frozen_text_weights(unet.conditioner).values()):
            copy_frozen_text(unet, frozen)  # the first step (or the first after --resume)
        return net, x0, cond, t

    def on_stop(self, models, images) -> None:
        """The EMA's copy of the frozen encoder is an average of the CLIP's weights with the random ones it started
        from, within rounding of the CLIP's: set it to the raw network's, which are the CLIP's exactly."""
        raw, ema = (_unet(m) for m in models)
        source = frozen_text_weights(raw.conditioner)
        for name, p in frozen_text_weights(ema.conditioner).items():
            p.data.copy_(source[name].data)

    def next_steps(self, config, run_dir):
        return (f"python -m ddpm evaluate --run {run_dir} --n-samples 1000 --sampler dpmpp-2m --steps 15 --guidance "
                f"1.5 --bpd-images 0; python -m ddpm sample --run {run_dir} --prompt \"a thick seven\"")
