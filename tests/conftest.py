"""Test-suite settings: one intra-op thread.

The tests run many tiny networks, where OpenMP thread hand-offs cost more than the arithmetic, and on a
shared 2-core machine two spinning threads per process slow everything down several times.
"""

import torch

torch.set_num_threads(1)
