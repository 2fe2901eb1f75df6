"""Where a run executes: the device (cuda, mps or cpu) and DistributedDataParallel setup under torchrun."""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass

import torch
import torch.distributed

__all__ = ["DEVICE_HELP", "select_device", "keep_freed_memory", "DistInfo", "setup_distributed", "rng_state",
           "set_rng_state"]

DEVICE_HELP = "auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps"


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEEP_BYTES = 1 << 30


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep the memory freed tensors leave, for the next ones (True where it is glibc's).

    A training step frees and allocates the same large activations every time. By default glibc serves blocks
    above its mmap threshold (128 KiB at first, adapting up to 32 MiB) with fresh mmap'd pages and returns freed
    memory at the top of the heap to the system, so every step page-faults its activations in again, and the
    kernel zeroes each page first. Serving blocks up to 1 GiB from the heap and trimming only above 1 GiB reuses
    the pages instead (fewer page faults, faster steps: docs/cpu.md), the resident memory staying at the run's
    peak. Process-wide; every command of the CLI sets it; a no-op on other C libraries (macOS, Windows, musl)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
    except (OSError, TypeError):
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # not glibc: a mallopt there (if any) has other parameters
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def select_device(name: str = "auto") -> torch.device:
    """"auto": cuda, then mps, then cpu; otherwise the named device, with a one-line error if it is
    not a device name or not present on this machine."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {str(name)[:40]!r}; expected {DEVICE_HELP}") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {name!r} is not supported here; expected {DEVICE_HELP}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available here; use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} requested but this machine has {torch.cuda.device_count()} "
                             f"CUDA device(s)")
    if device.type == "mps" and not _mps_available():
        raise ValueError(f"device {name!r} requested but MPS is not available here; use --device cpu or auto")
    return device


@dataclass(frozen=True)
class DistInfo:
    """Which process this is in a DistributedDataParallel job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed(env: dict[str, str], device_name: str = "auto") -> tuple[DistInfo, torch.device]:
    """Start DDP if torchrun set RANK/WORLD_SIZE (nccl on GPUs, gloo on CPUs); return (info, device)."""
    world = int(env.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), select_device(device_name)
    info = DistInfo(int(env["RANK"]), world, int(env.get("LOCAL_RANK", "0")))
    device = select_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return info, device


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The global random number generators' states that a run on ``device`` draws from (CPU, and CUDA's)."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(device: torch.device, state: dict[str, torch.Tensor]) -> None:
    """Restore what rng_state returned."""
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)
