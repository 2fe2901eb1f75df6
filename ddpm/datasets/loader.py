"""Batching in memory: one cursor for images and 2D points.

Small datasets fit in memory (MNIST as uint8: 47 MB, CIFAR-10: 150 MB), so ``BatchLoader`` batches
them by indexing a tensor: no worker processes, no per-image Python, and on a 2-core CPU the loader
costs a small fraction of a training step.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import NamedTuple

import torch

from ddpm.datasets.attributes import MIRRORED
from ddpm.datasets.images import ImageDataset, to_float

__all__ = ["BatchLoader", "Labels"]


class Labels(NamedTuple):
    """What a batch of a dataset with attributes has besides its images: labels int64 [B] and the style
    bins int8 [B, A] (see ImageDataset.attributes). Datasets without attributes give the label tensor alone."""

    labels: torch.Tensor
    attributes: torch.Tensor

    def to(self, device) -> Labels:
        return Labels(self.labels.to(device), self.attributes.to(device))


Batch = tuple[torch.Tensor, torch.Tensor | Labels | None]  # (x, y) as the loader yields it


class BatchLoader:
    """Yields batches by indexing in-memory tensors:

    - from an ImageDataset: (x float32 [B, C, H, W] in [-1, 1], y int64 [B] or None); when the dataset
      carries attributes, y is ``Labels(labels [B], attributes int8 [B, A])`` instead (text runs put them
      into captions), so ``for x, y in loader`` reads every dataset alike;
    - from a tensor of points [N, D] (e.g. ``toy2d``): (points [B, D] as they are, None);
    - with ``encoded`` (a float tensor [N, ...] aligned with the dataset's images, e.g. an autoencoder's latent
      moments computed once): those rows in place of the images, with the same labels (no flips).

    The order of epoch e is a pure function of (seed, e): a permutation drawn from
    ``torch.Generator().manual_seed(seed + e)`` (or 0..N-1 if not shuffle), and, with hflip, a coin per
    image for a random horizontal flip (the DDPM paper's CIFAR-10 augmentation; leave it off for digits;
    images only). So a run resumes exactly from ``state_dict()`` = {seed, epoch, batch}, and every DDP
    rank draws the same permutation and takes its own share: rank r gets positions r, r + world_size, ...
    (batch_size is per rank). All ranks yield the same number of batches (drop_last: the remainder is
    dropped; else the order is padded by wrapping).

    The loader is a cursor: iterating runs from the current (epoch, batch) to the end of that epoch
    and then moves to the next epoch, so ``for x, y in loader`` each epoch sees a new order, and a
    loop broken mid-epoch continues where it stopped. ``set_epoch(e)`` jumps to the start of epoch e.
    The seed is ``seed`` if given, else ``generator.initial_seed()``, else 0.
    """

    def __init__(
        self,
        dataset: ImageDataset | torch.Tensor,
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = True,
        hflip: bool = False,
        generator: torch.Generator | None = None,
        rank: int = 0,
        world_size: int = 1,
        *,
        seed: int | None = None,
        encoded: torch.Tensor | None = None,
    ):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.is_points = isinstance(dataset, torch.Tensor)  # else an ImageDataset
        if self.is_points and dataset.dim() != 2:
            raise ValueError(f"points must be a tensor [N, D], got shape {tuple(dataset.shape)}")
        if self.is_points and hflip:
            raise ValueError("hflip flips images; points [N, D] have no horizontal axis")
        if encoded is not None and (self.is_points or hflip or len(encoded) != len(dataset)):
            raise ValueError("encoded must have one row per image of an image dataset, and cannot be flipped")
        self.dataset, self.encoded = dataset, encoded
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.hflip = hflip
        self.rank = rank
        self.world_size = world_size
        if seed is None:
            seed = generator.initial_seed() if generator is not None else 0
        self.seed = int(seed)
        self.epoch = 0
        self.batch = 0  # index of the next batch within self.epoch
        n = len(dataset)
        self.per_rank = n // world_size if drop_last else -(-n // world_size)
        if len(self) == 0:
            raise ValueError(
                f"{n} {'points' if self.is_points else 'images'} give no full batch of {batch_size} per rank "
                f"(world_size={world_size}); use a smaller batch_size or drop_last=False"
            )

    def __len__(self) -> int:
        """Batches per epoch (on each rank)."""
        if self.drop_last:
            return self.per_rank // self.batch_size
        return -(-self.per_rank // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.batch = int(epoch), 0

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.seed, self.epoch, self.batch = int(state["seed"]), int(state["epoch"]), int(state["batch"])

    def epoch_plan(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This rank's indices int64 [per_rank] for an epoch, and flip flags bool [per_rank] (or None)."""
        n = len(self.dataset)
        g = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        flips = torch.rand(n, generator=g) < 0.5 if self.hflip else None
        total = self.per_rank * self.world_size
        if total > n:  # pad by wrapping around so every rank gets per_rank positions
            pad = torch.arange(total - n) % n
            order = torch.cat([order, order[pad]])
            flips = torch.cat([flips, flips[pad]]) if flips is not None else None
        mine = slice(self.rank, total, self.world_size)
        return order[mine].contiguous(), (flips[mine].contiguous() if flips is not None else None)

    def _take(self, index: torch.Tensor, flip: torch.Tensor | None) -> Batch:
        """The batch at positions ``index`` int64 [B], flipped where ``flip`` bool [B] says so."""
        if self.is_points:
            return self.dataset.index_select(0, index), None
        if self.encoded is not None:
            x = self.encoded.index_select(0, index)
        else:
            x = self.dataset.images.index_select(0, index)  # uint8 copy [B, C, H, W]
            if flip is not None:
                x[flip] = x[flip].flip(-1)  # flip before the float conversion: 4x less memory traffic
            x = to_float(x)
        labels = self.dataset.labels.index_select(0, index) if self.dataset.labels is not None else None
        if labels is None or self.dataset.attributes is None:
            return x, labels
        attributes = self.dataset.attributes.index_select(0, index)
        if flip is not None:  # a mirrored digit leans the other way
            for k in MIRRORED:
                attributes[flip, k] = 2 - attributes[flip, k]
        return x, Labels(labels, attributes)

    def __iter__(self) -> Iterator[Batch]:
        epoch, start = self.epoch, self.batch
        if start >= len(self):  # stopped after the last batch of an epoch: go on with the next one
            epoch, start = epoch + 1, 0
        order, flips = self.epoch_plan(epoch)
        bs = self.batch_size
        for b in range(start, len(self)):
            span = slice(b * bs, (b + 1) * bs)
            batch = self._take(order[span], flips[span] if flips is not None else None)
            self.epoch, self.batch = epoch, b + 1  # the state to save after training on this batch
            yield batch
        self.epoch, self.batch = epoch + 1, 0

    def forever(self) -> Iterator[Batch]:
        """Batches across epochs without end (for step-based training loops)."""
        while True:
            yield from self
