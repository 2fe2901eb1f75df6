"""Masks for inpainting: 1 keeps a pixel of the input, 0 lets the model draw it.

A named mask says which part is *hidden* (drawn by the model): "right" hides the right half and keeps the left,
as ``python -m ddpm edit --mask right`` reads. "random" hides random strokes: a few thick random walks, a
different mask per image, from the generator. A PNG mask is white (or any light value) where the model draws and
black where the input is kept, the convention of the inpainting tools (diffusers, Stable Diffusion's web UIs).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor

from ddpm._util import check_mode
from ddpm.datasets import read_image

__all__ = ["MASK_NAMES", "named_mask", "read_mask", "to_grid", "check_mask"]

MASK_NAMES = ("left", "right", "top", "bottom", "center", "random")


def named_mask(name: str, n: int, size: int, generator: torch.Generator | None = None) -> Tensor:
    """[n, 1, size, size] float of 0s and 1s that hides the named part (see the module docstring)."""
    check_mode(name, MASK_NAMES, "mask")
    keep = torch.ones(n, 1, size, size)
    half, quarter = size // 2, size // 4
    if name == "left":
        keep[..., :half] = 0
    elif name == "right":
        keep[..., half:] = 0
    elif name == "top":
        keep[..., :half, :] = 0
    elif name == "bottom":
        keep[..., half:, :] = 0
    elif name == "center":
        keep[..., quarter:size - quarter, quarter:size - quarter] = 0
    else:
        keep = _random_strokes(n, size, generator)
    return keep


def _random_strokes(n: int, size: int, generator: torch.Generator | None) -> Tensor:
    """Three random walks of 12 steps per image, drawn 3 pixels wide: hides about a third of a 28x28 image."""
    hidden = torch.zeros(n, 1, size, size)
    for k in range(n):
        for _ in range(3):
            y, x = (int(v) for v in torch.randint(0, size, (2,), generator=generator))
            for _ in range(12):
                hidden[k, 0, max(y - 1, 0):y + 2, max(x - 1, 0):x + 2] = 1
                dy, dx = (int(v) for v in torch.randint(-2, 3, (2,), generator=generator))
                y, x = min(max(y + dy, 0), size - 1), min(max(x + dx, 0), size - 1)
    return 1 - hidden


def read_mask(path: str | os.PathLike, size: int) -> Tensor:
    """A PNG mask -> [1, 1, size, size] of 0s and 1s: light (>= 128) is drawn by the model, dark is kept. Its size
    must be the image's (size x size); a mask with grey levels between 32 and 223 is not binary and refused."""
    im = read_image(path, channels=1)
    if im.size != (size, size):
        raise ValueError(f"the mask {path} is {im.size[0]}x{im.size[1]} pixels, the images {size}x{size}: give a "
                         f"mask of the images' size")
    values = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(1, 1, size, size).float()
    if bool(((values > 32) & (values < 223)).any()):
        raise ValueError(f"the mask {path} is not binary (it has grey levels): paint it black (keep) and white "
                         f"(draw)")
    return (values < 128).float()


def check_mask(mask: Tensor) -> None:
    """One line for a mask that keeps every pixel or none of some image (nothing to edit, or no input left)."""
    kept = mask.flatten(1).mean(1)
    if bool((kept == 1).any()):
        raise ValueError("the mask keeps every pixel: nothing is left to draw (white marks what the model draws)")
    if bool((kept == 0).any()):
        raise ValueError("the mask keeps no pixel: that is ordinary sampling (python -m ddpm sample), not inpainting")


def to_grid(mask: Tensor, side: int) -> Tensor:
    """A pixel mask on a coarser grid (a latent's side x side): a cell is kept only if all its pixels are, so
    nothing the model must draw is fixed by a latent (zero-shot latent inpainting)."""
    if mask.shape[-1] == side:
        return mask
    return -F.adaptive_max_pool2d(-mask, side)  # min over each cell
