"""Datasets: MNIST / Fashion-MNIST (IDX), CIFAR-10, image folders and 2D toy sets.

Everything a diffusion model trains on comes out of this package in one shape:

    ImageDataset.images   uint8 [N, C, H, W], contiguous, held in memory
    ImageDataset.labels   int64 [N] (or None)
    ImageDataset.attributes  int8 [N, 3] (or None): digit style bins, loaded for text runs
    to_float(images)      float32 in [-1, 1]  (x / 127.5 - 1: the DDPM paper's data scaling)
    to_uint8(x)           the inverse, with clamp and round

A tour, in the order the data flows:

    base.py       DatasetError, DownloadError, DEFAULT_ROOT (the repository's data/ folder)
    images.py     ImageDataset, to_float / to_uint8, shrink (area averaging); your own images: read_image (one
                  file: 16-bit, transparency, size limit), read_digit (one as the model's data), load_image_folder
    files.py      md5 checks (remembered per process), download: atomic, verified, mirror by mirror
    idx.py        IDX files: read_idx; MNIST and Fashion-MNIST (sources, load_mnist, load_fashion_mnist)
    cifar10.py    CIFAR-10, its pickles opened with a restricted unpickler
    registry.py   load_dataset(name), DATASET_NAMES, dataset_label_names(name)
    toy2d.py      2D point clouds (swiss-roll, moons, ...) float32 [n, 2]
    attributes.py digit style measured from pixels (thickness, slant, width), per-class terciles, cached
    loader.py     BatchLoader: the one cursor over images or points (shuffle, DDP shards, resume)
    captions.py   the one caption grammar: digit, attribute phrases, held-out combinations, vocabulary

Small datasets fit in memory as uint8 (MNIST: 47 MB, CIFAR-10: 150 MB), so ``BatchLoader`` batches
them by indexing a tensor: no worker processes, no per-image Python, and on a 2-core CPU the loader
costs a small fraction of a training step.

Files are checked before they are trusted: IDX headers (magic number, dimensions, length), md5
checksums, and CIFAR-10's pickles are opened with a restricted unpickler that can build nothing but
plain Python values and numpy arrays. Downloads go to a temporary file, are verified, then renamed,
so an interrupted or corrupt download never leaves a file behind. Every user-facing failure is a
``DatasetError`` that names the file, says what is wrong and how to fix it.

The shipped MNIST lives in ``data/mnist`` (the repository's ``data/`` folder is the default root);
Fashion-MNIST and CIFAR-10 are downloaded into ``data/`` on first use.
"""

from ddpm.datasets.attributes import (
    ATTRIBUTES,
    attribute_bins,
    measure_digits,
    mnist_edges,
    mnist_measures,
    tercile_edges,
    with_attributes,
)
from ddpm.datasets.base import DEFAULT_ROOT, DatasetError, DownloadError
from ddpm.datasets.captions import (
    ATTRIBUTE_WORDS,
    HELD_OUT,
    attribute_prompt,
    caption_max_words,
    caption_templates,
    caption_vocabulary,
    captions_for,
    class_prompts,
    is_held_out,
    split_words,
)
from ddpm.datasets.cifar10 import CIFAR10, CIFAR10_LABEL_NAMES, Cifar10Source, load_cifar10, restricted_unpickle
from ddpm.datasets.files import _is_verified as _is_verified  # tests check the md5 cache
from ddpm.datasets.files import download, md5_file
from ddpm.datasets.idx import (
    FASHION_MNIST,
    IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
    MNIST,
    MNIST_LABEL_NAMES,
    IdxFile,
    IdxSource,
    load_fashion_mnist,
    load_idx_dataset,
    load_mnist,
    read_idx,
)
from ddpm.datasets.images import (
    IMAGE_EXTENSIONS,
    MAX_IMAGE_PIXELS,
    ImageDataset,
    area_downsample,
    bicubic_to,
    load_image_folder,
    read_digit,
    read_image,
    shrink,
    to_float,
    to_uint8,
    upsample,
)
from ddpm.datasets.loader import BatchLoader, Labels
from ddpm.datasets.registry import DATASET_NAMES, dataset_label_names, load_dataset
from ddpm.datasets.toys import TOY2D_NAMES, toy2d

__all__ = [
    "area_downsample",
    "bicubic_to",
    "upsample",
    "shrink",
    "ATTRIBUTES",
    "ATTRIBUTE_WORDS",
    "HELD_OUT",
    "CIFAR10",
    "CIFAR10_LABEL_NAMES",
    "DEFAULT_ROOT",
    "DATASET_NAMES",
    "FASHION_MNIST",
    "IDX_IMAGES_MAGIC",
    "IDX_LABELS_MAGIC",
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "MNIST",
    "MNIST_LABEL_NAMES",
    "TOY2D_NAMES",
    "BatchLoader",
    "Cifar10Source",
    "DatasetError",
    "DownloadError",
    "IdxFile",
    "IdxSource",
    "ImageDataset",
    "Labels",
    "attribute_bins",
    "attribute_prompt",
    "caption_max_words",
    "caption_templates",
    "caption_vocabulary",
    "captions_for",
    "class_prompts",
    "dataset_label_names",
    "download",
    "is_held_out",
    "load_cifar10",
    "load_dataset",
    "load_fashion_mnist",
    "load_idx_dataset",
    "load_image_folder",
    "load_mnist",
    "md5_file",
    "measure_digits",
    "mnist_edges",
    "mnist_measures",
    "read_idx",
    "read_image",
    "read_digit",
    "restricted_unpickle",
    "split_words",
    "tercile_edges",
    "to_float",
    "to_uint8",
    "toy2d",
    "with_attributes",
]
