"""Networks: the U-Net eps_theta(x_t, t, cond), the timestep embedding and the conditioners."""

from ddpm.nn.conditioning import MNIST_CAPTION_VOCAB, Tokenizer, mnist_captions
from ddpm.nn.embeddings import timestep_embedding
from ddpm.nn.unet import UNET_PRESETS, UNet, UNetConfig

__all__ = [
    "MNIST_CAPTION_VOCAB",
    "UNET_PRESETS",
    "Tokenizer",
    "UNet",
    "UNetConfig",
    "mnist_captions",
    "timestep_embedding",
]
