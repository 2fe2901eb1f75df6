"""The training data of a run: the images of its dataset (with their style attributes when a text model has the
words for them; shrunk to DataConfig.image_size for a cascade's base), or a 2D toy's points; what the run's Kind
adds (a latent run's images' posterior moments under its autoencoder, encoded once)."""

from __future__ import annotations

from torch import nn

from ddpm.config import Config
from ddpm.datasets import BatchLoader, ImageDataset, caption_vocabulary, load_dataset, shrink, toy2d, with_attributes
from ddpm.runtime import DistInfo

__all__ = ["training_loader"]


def training_loader(config: Config, batch_size: int, dist: DistInfo, dataset: ImageDataset | None = None,
                    frozen: nn.Module | None = None) -> BatchLoader:
    """This rank's BatchLoader of the config's training data (or of ``dataset``), batch_size per rank; images
    that do not fit the run (Kind.fits: the network, or the frozen network they go through first), or a
    conditional model without labels, raise."""
    dc, tc = config.data, config.train
    common = dict(shuffle=True, drop_last=True, seed=tc.seed, rank=dist.rank, world_size=dist.world_size)
    if dc.dataset == "toy2d" and dataset is None:
        return BatchLoader(toy2d(dc.toy, dc.toy_size, seed=tc.seed), batch_size, **common)
    hook = config.hook
    if dataset is None:
        dataset = load_dataset(dc.dataset, split="train", root=dc.root)
        # text runs put the digits' style into words, if their vocabulary has the words (older runs' do not)
        vocab = hook.captions_vocab(config, frozen)
        if vocab is not None and set(caption_vocabulary(dc.dataset)) <= set(vocab):
            dataset = with_attributes(dataset, root=dc.root)  # measured on the full-size digits
    if dc.image_size is not None and dataset.image_size > dc.image_size:  # a cascade's base: area-averaged
        dataset = shrink(dataset, dc.image_size)
    channels, size = hook.fits(config, frozen)
    if (dataset.channels, dataset.image_size) != (channels, size):
        raise ValueError(f"the {dataset.name} images are {dataset.channels}x{dataset.image_size}x"
                         f"{dataset.image_size} but the model expects {channels}x{size}x{size}; pick a preset made "
                         f"for this dataset")
    if config.cond != "none" and dataset.labels is None:
        raise ValueError(f"cond={config.cond!r} needs labels but the dataset {dataset.name} has none; use cond='none'")
    common.update(hook.loader_options(config, frozen, dataset.images))
    return BatchLoader(dataset, batch_size, hflip=dc.hflip, **common)
