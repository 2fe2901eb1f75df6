"""Test-suite settings: one intra-op thread; the digits that the tiny training runs of several files share.

The tests run many tiny networks, where OpenMP thread hand-offs cost more than the arithmetic, and on a
shared 2-core machine two spinning threads per process slow everything down several times.
"""

import pytest
import torch

from ddpm.datasets import ImageDataset, load_dataset

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits():
    """The first 256 MNIST training digits, as a dataset a Trainer can take (tiny runs of every stage)."""
    train = load_dataset("mnist", "train")
    return ImageDataset(train.images[:256], train.labels[:256], train.label_names, "mnist", "train")
