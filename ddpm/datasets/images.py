"""The common shape of every image dataset, and reading your own images (one file: read_image; a folder of
them: load_image_folder).

    ImageDataset.images   uint8 [N, C, H, W], contiguous, held in memory
    ImageDataset.labels   int64 [N] (or None)
    ImageDataset.attributes  int8 [N, 3] (or None): style bins of digits (ddpm.datasets.attributes)
    to_float(images)      float32 in [-1, 1]  (x / 127.5 - 1: the DDPM paper's data scaling)
    to_uint8(x)           the inverse, with clamp and round
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ddpm._util import shorten
from ddpm.datasets.base import DatasetError

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

__all__ = ["IMAGE_EXTENSIONS", "MAX_IMAGE_PIXELS", "ImageDataset", "load_image_folder", "read_image", "read_digit",
           "to_float",
           "to_uint8", "area_downsample", "shrink", "upsample", "bicubic_to"]


# ---------------------------------------------------------------------------------------------------
# The common shape: uint8 in memory, [-1, 1] floats for the model
# ---------------------------------------------------------------------------------------------------


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images in {0..255} -> float32 in [-1, 1]: x / 127.5 - 1 (any shape); float images (already in
    [-1, 1]) as float32, unchanged. Other dtypes raise."""
    if images.is_floating_point():
        return images.to(torch.float32)
    if images.dtype != torch.uint8:
        raise TypeError(f"to_float expects uint8 images or floats in [-1, 1], got {images.dtype}")
    return images.to(torch.float32) / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float images in [-1, 1] -> uint8 in {0..255}; values outside [-1, 1] are clamped.

    The exact inverse of ``to_float`` on its outputs: to_uint8(to_float(u)) == u.
    """
    return ((x.detach().to(torch.float32) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


@dataclass
class ImageDataset:
    """A whole image dataset held in memory.

    images: uint8 [N, C, H, W], contiguous; labels: int64 [N] or None; label_names[k] names class k.
    attributes: int8 [N, A] or None: per-image style bins (for digits: the tercile of thickness, slant and
    width within the class, see ddpm.datasets.attributes), which text captions put into words.
    ``dataset[i]`` gives ``(image float32 [C, H, W] in [-1, 1], label or None)``, so it also works
    with torch's DataLoader, though ``BatchLoader`` is much faster for data this small.
    """

    images: torch.Tensor
    labels: torch.Tensor | None = None
    label_names: tuple[str, ...] = ()
    name: str = ""
    split: str = ""
    attributes: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.images, torch.Tensor) or self.images.dtype != torch.uint8:
            raise TypeError("ImageDataset.images must be a uint8 tensor [N, C, H, W]")
        if self.images.dim() != 4:
            raise ValueError(f"ImageDataset.images must be [N, C, H, W], got {tuple(self.images.shape)}")
        self.images = self.images.contiguous()
        if self.labels is not None:
            self.labels = torch.as_tensor(self.labels, dtype=torch.int64).contiguous()
            if self.labels.shape != (len(self.images),):
                raise ValueError(
                    f"labels must be int64 [N={len(self.images)}], got shape {tuple(self.labels.shape)}"
                )
        self.label_names = tuple(self.label_names)
        if self.attributes is not None:
            self.attributes = torch.as_tensor(self.attributes, dtype=torch.int8).contiguous()
            if self.attributes.dim() != 2 or len(self.attributes) != len(self.images):
                raise ValueError(f"attributes must be int8 [N={len(self.images)}, A], got shape "
                                 f"{tuple(self.attributes.shape)}")

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        label = self.labels[index] if self.labels is not None else None
        return to_float(self.images[index]), label

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        """Height (all built-in datasets are square)."""
        return self.images.shape[2]

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def subset(self, indices: Sequence[int] | torch.Tensor | slice) -> ImageDataset:
        """A new dataset with the selected images (e.g. ``ds.subset(slice(0, 1000))`` for quick runs)."""
        if isinstance(indices, slice):
            idx = torch.arange(len(self))[indices]
        else:
            idx = torch.as_tensor(indices, dtype=torch.int64)
        images = self.images.index_select(0, idx)
        labels = self.labels.index_select(0, idx) if self.labels is not None else None
        attributes = self.attributes.index_select(0, idx) if self.attributes is not None else None
        return ImageDataset(images, labels, self.label_names, self.name, self.split, attributes)

    def __repr__(self) -> str:
        n_classes = f", {self.num_classes} classes" if self.label_names else ""
        split = f" ({self.split})" if self.split else ""
        return (
            f"ImageDataset({self.name!r}{split}: {len(self)} x {self.channels} x "
            f"{self.images.shape[2]} x {self.images.shape[3]} uint8{n_classes})"
        )


def area_downsample(x: torch.Tensor, size: int) -> torch.Tensor:
    """Images [B, C, H, W] (floats) shrunk to size x size by averaging the pixels each output pixel covers."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return torch.nn.functional.interpolate(x, size=(size, size), mode="area")


def shrink(dataset: ImageDataset, size: int) -> ImageDataset:
    """The dataset with its images area-averaged to size x size (a cascade's low-resolution data), as uint8."""
    if size > dataset.image_size:
        raise ValueError(f"cannot shrink {dataset.image_size}x{dataset.image_size} images to {size}x{size}")
    images = to_uint8(area_downsample(to_float(dataset.images), size))
    return ImageDataset(images, dataset.labels, dataset.label_names, dataset.name, dataset.split, dataset.attributes)



# ---------------------------------------------------------------------------------------------------
# Your own images
# ---------------------------------------------------------------------------------------------------

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


# the largest image read: 64 Mpixels (8192 x 8192); a larger one is refused from its header, before decoding
MAX_IMAGE_PIXELS = 8192 * 8192


def read_image(path: str | os.PathLike, channels: int = 3) -> Image.Image:
    """An image file -> a Pillow image, 8-bit "L" (channels 1) or "RGB" (channels 3), upright (EXIF rotation).

    What Pillow's ``convert`` alone gets wrong is done here, and anything unreadable is one DatasetError line
    that names the file:
      - larger than MAX_IMAGE_PIXELS: refused from its declared size, before decoding (a decompression bomb);
      - 16-bit grayscale (mode "I;16" or "I", 0..65535): scaled by 255 / 65535, not clipped at 255; a float
        image (mode "F") is read as values in [0, 1];
      - transparency (RGBA, LA, P or a colour marked transparent): composited over white, or over black when
        that shows more, so a drawing made only in the alpha channel (black or white strokes on a transparent
        ground) keeps its strokes.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    name = shorten(path, 80)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, with its size
            with Image.open(path) as im:
                w, h = im.size
                if w * h > MAX_IMAGE_PIXELS:
                    raise DatasetError(_too_large(name, f"{w}x{h} pixels"))
                img = _over_ground(_eight_bit(ImageOps.exif_transpose(im), name))
                return img.convert("L" if channels == 1 else "RGB")  # a new, loaded image
    except DatasetError:
        raise
    except Image.DecompressionBombError as e:  # beyond Pillow's own limit: refused by Image.open itself
        found = re.search(r"\((\d+) pixels\)", str(e))
        raise DatasetError(_too_large(name, f"{int(found[1]):,} pixels" if found else "too many pixels")) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as e:
        raise DatasetError(f"{name}: cannot read this image ({type(e).__name__}: {e})") from None


def read_digit(path: str | os.PathLike, size: int = 28, channels: int = 1) -> Tensor:
    """An image file -> [1, channels, size, size] in [-1, 1]: read by read_image, resized by box averaging, a
    light figure on a dark ground like MNIST's (a mostly light image is inverted, as a digit drawn in ink on paper
    is). One DatasetError line on a file it cannot read."""
    from PIL import Image

    im = read_image(path, channels=channels)
    pixels = np.asarray(im.resize((size, size), Image.Resampling.BOX), dtype=np.float32) / 255
    if pixels.mean() > 0.5:
        pixels = 1.0 - pixels
    pixels = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(pixels) * 2 - 1)[None]


def _too_large(name: str, declared: str) -> str:
    side = math.isqrt(MAX_IMAGE_PIXELS)
    return (f"{name}: the image is too large ({declared} declared; at most {MAX_IMAGE_PIXELS:,} pixels are read): "
            f"give an image of at most {side}x{side}")


def _eight_bit(im: Image.Image, name: str) -> Image.Image:
    """16-bit ("I;16", "I": 0..65535) and float ("F": [0, 1]) grayscale as 8-bit "L"; other modes as they are."""
    from PIL import Image

    if not (im.mode.startswith("I;16") or im.mode in ("I", "F")):
        return im
    a = np.asarray(im, dtype=np.float32)
    top = 1.0 if im.mode == "F" else 65535.0
    if a.size and not (np.isfinite(a).all() and a.min() >= 0 and a.max() <= top):
        raise DatasetError(f"{name}: a mode {im.mode} image with values from {a.min():g} to {a.max():g}; ddpm reads "
                           f"16-bit images (0..65535) and float images in [0, 1]: save it as an 8- or 16-bit image")
    return Image.fromarray(np.round(a * (255 / top)).astype(np.uint8))


def _over_ground(im: Image.Image) -> Image.Image:
    """An image with transparency composited over white, or over black when that shows more (a larger spread of
    gray levels): light strokes on a transparent ground would vanish on white. Opaque images as they are."""
    from PIL import Image, ImageStat

    if im.mode not in ("RGBA", "LA", "PA", "RGBa", "La") and "transparency" not in im.info:
        return im
    rgba = im.convert("RGBA")
    white, black = (Image.alpha_composite(Image.new("RGBA", rgba.size, (v, v, v, 255)), rgba) for v in (255, 0))
    spread = [ImageStat.Stat(g.convert("L")).stddev[0] for g in (white, black)]
    return black if spread[1] > spread[0] else white


def _load_image(path: Path, image_size: int, channels: int) -> np.ndarray:
    """One image -> uint8 [H, W] or [H, W, 3]: scale the short side to ``image_size``, crop the center."""
    from PIL import Image

    try:
        img = read_image(path, channels)
    except DatasetError as e:
        raise DatasetError(f"{e}; remove or replace it.") from None
    w, h = img.size
    scale = image_size / min(w, h)
    new_w, new_h = max(image_size, round(w * scale)), max(image_size, round(h * scale))
    img = img.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (new_w - image_size) // 2, (new_h - image_size) // 2
    img = img.crop((left, top, left + image_size, top + image_size))
    return np.array(img, dtype=np.uint8)  # a writable copy


def load_image_folder(root: str | os.PathLike, image_size: int, channels: int = 3) -> ImageDataset:
    """Load every image under ``root``, resized (short side) and center-cropped to image_size.

    Images directly in ``root`` form an unlabeled dataset; images in sub-folders get labels from the
    sub-folder names (sorted, label_names = folder names), like ``root/cat/*.jpg``, ``root/dog/*.jpg``.
    channels: 1 (grayscale) or 3 (RGB). Returns uint8 [N, channels, image_size, image_size].
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder of images.")
    loose = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    class_dirs = [d for d in sorted(root.iterdir()) if d.is_dir() and _images_under(d)]
    if class_dirs and loose:
        raise DatasetError(
            f"{root}: has images both directly inside it ({loose[0].name}, ...) and in sub-folders "
            f"({class_dirs[0].name}/, ...). Put all images in class sub-folders, or all in one folder."
        )
    if class_dirs:
        files = [(p, k) for k, d in enumerate(class_dirs) for p in _images_under(d)]
        label_names = tuple(d.name for d in class_dirs)
    else:
        files = [(p, -1) for p in loose]
        label_names = ()
    if not files:
        raise DatasetError(f"{root}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)}).")
    images = torch.empty(len(files), channels, image_size, image_size, dtype=torch.uint8)
    for i, (path, _) in enumerate(files):
        array = _load_image(path, image_size, channels)
        images[i] = torch.from_numpy(array.reshape(image_size, image_size, channels)).permute(2, 0, 1)
    labels = torch.tensor([k for _, k in files], dtype=torch.int64) if class_dirs else None
    return ImageDataset(images, labels, label_names, name=root.resolve().name)


def upsample(x: Tensor, size: int) -> Tensor:
    """Images [B, C, h, w] in [-1, 1] enlarged to size x size by bicubic interpolation (clamped to [-1, 1])."""
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(-1.0, 1.0)


def bicubic_to(images: Tensor, size: int) -> Tensor:
    """uint8 images enlarged to size x size by bicubic interpolation, as uint8: the baseline a super-resolution
    model must beat, and how a base model's small samples reach a classifier made for full-size digits."""
    if images.shape[-1] == size:
        return images
    return to_uint8(upsample(to_float(images), size))
