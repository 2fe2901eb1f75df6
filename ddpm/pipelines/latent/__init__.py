"""Latent diffusion (Rombach et al. 2022, Stable Diffusion) in miniature: a frozen autoencoder around the ordinary
DDPM on its scaled latents.

    autoencoder.py  the first stage: a KL-regularized convolutional autoencoder (f = 4: 1x28x28 <-> 4x7x7)
    stage.py        its config section (LatentConfig), the kinds "autoencoder" and "latent" (ddpm.pipelines.base)
    evaluate.py     a first stage judged: reconstruction PSNR, the classifier on reconstructions, its latents
    bench.py        the latent DDPM against the pixel DDPM of the same budget
    figures.py      latents, their histogram and forward process, trajectories decoded, interpolations
"""

from ddpm.pipelines.latent.stage import AutoencoderKind, LatentKind

KINDS = {"autoencoder": AutoencoderKind(), "latent": LatentKind()}
