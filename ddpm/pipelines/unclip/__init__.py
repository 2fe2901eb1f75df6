"""unCLIP (Ramesh et al. 2022, DALL-E 2) in miniature: a tiny CLIP, a diffusion prior of its image embeddings given
its text embeddings, and a decoder of images given image embeddings.

    clip.py      the CLIP: a CNN image encoder and a Transformer text encoder, symmetric InfoNCE, learned temperature
    prior.py     the diffusion prior's network: a residual MLP over embeddings
    stage.py     its config section (UnclipConfig), the kinds "clip", "prior" and "decoder", the Unclip pipeline
    evaluate.py  each stage judged (zero-shot, retrieval; the prior's embeddings; text to image; variations)
    figures.py   similarity matrices, embedding projections
    cli.py       python -m ddpm unclip
    text.py      the kind "clip-text": a text-to-image U-Net whose text encoder is the CLIP's, frozen (Imagen's finding)
"""

from ddpm.pipelines.unclip.stage import ClipKind, DecoderKind, PriorKind
from ddpm.pipelines.unclip.text import ClipTextKind

KINDS = {"clip": ClipKind(), "prior": PriorKind(), "decoder": DecoderKind(), "clip-text": ClipTextKind()}
