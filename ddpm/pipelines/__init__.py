"""The systems built on DDPM, one folder per paper, each plugged into the core through its Kinds (base.py):

    base      the stage hook (Kind), Sampling (how a run is sampled) and the registry of the folders
    latent    Stable Diffusion in miniature: a frozen autoencoder around a DDPM on its scaled latents
    cascade   Imagen in miniature: a base model of small images, a super-resolution model that refines them
    unclip    DALL-E 2 in miniature: a tiny CLIP, a diffusion prior of its image embeddings, a decoder

Import what a folder offers from the folder (``from ddpm.pipelines.cascade.stage import Refiner``); deleting a
folder and its line in base.FOLDERS leaves a working DDPM.
"""
