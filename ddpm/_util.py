"""Small utilities every layer may use: typed modes, thread count, eval mode, atomic file writes.

This module imports nothing else of ddpm, so that any module can import it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["check_mode", "check_threads", "set_threads", "num_threads", "eval_mode", "atomic_write",
           "write_text_atomic", "remove_stale_temporaries", "shorten", "select_condition", "FolderLock",
           "LockError", "stop_on_sigint", "dataclass_to_dict", "dataclass_from_dict"]


def check_mode(value: str, allowed: tuple[str, ...], what: str) -> str:
    """Typed modes are exhaustive: an unknown value raises instead of silently meaning a default."""
    if value not in allowed:
        raise ValueError(f"unknown {what} {shorten(value)!r}; expected one of: {', '.join(allowed)}")
    return value


def dataclass_to_dict(obj) -> dict[str, Any]:
    """A frozen config dataclass as a plain JSON-able dict (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(obj).items()}


def dataclass_from_dict(cls, d: dict[str, Any]):
    """The inverse of dataclass_to_dict: missing keys take the defaults, unknown keys raise, naming them."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; valid fields: {sorted(known)}")
    return cls(**d)


def shorten(text, limit: int = 60) -> str:
    """str(text) cut to ``limit`` characters (error messages echo user input, but never 10 KB of it)."""
    text = str(text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_threads(n: int | None) -> int | None:
    """None (torch's choice) or a positive thread count; anything else raises."""
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"the number of threads must be a positive integer, got {n!r}")
    return n


def set_threads(n: int | None) -> None:
    """Use n intra-op CPU threads from now on (None: leave torch's choice)."""
    if check_threads(n) is not None:
        torch.set_num_threads(n)


@contextlib.contextmanager
def num_threads(n: int | None) -> Iterator[None]:
    """Use n intra-op threads inside the block (None: leave as is), then restore the previous count."""
    old = torch.get_num_threads()
    set_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def eval_mode(model) -> Iterator[None]:
    """Put an nn.Module in eval mode (no condition dropout, no dropout) inside the block, then restore it.
    Any other callable passes through untouched."""
    if not isinstance(model, nn.Module):
        yield
        return
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def select_condition(cond, idx: torch.Tensor):
    """The conditions of the items idx: a tensor is indexed, a list of prompts picked, None stays None."""
    if cond is None:
        return None
    if isinstance(cond, torch.Tensor):
        return cond[idx.to(cond.device)]
    return [cond[i] for i in idx.tolist()]


@contextlib.contextmanager
def stop_on_sigint(request_stop: Callable[[], None]) -> Iterator[None]:
    """Inside the block, Ctrl-C (SIGINT) calls ``request_stop()`` instead of raising KeyboardInterrupt, so a
    loop can stop at a clean boundary; a second Ctrl-C raises as usual. Outside the main thread (where no
    signal handler can be installed) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        request_stop()
        signal.signal(signal.SIGINT, previous)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


TMP_SUFFIX = ".tmp"


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file so that it is either the old or the complete new one, whatever happens.

    ``write(f)`` fills a temporary file next to ``path`` (named ``<name>.<random>.tmp``); it is flushed,
    fsynced and renamed over ``path`` (atomic on POSIX). On any error, Ctrl-C included, the temporary
    file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """atomic_write of a text file (UTF-8)."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def remove_stale_temporaries(folder: str | os.PathLike, names: tuple[str, ...]) -> list[Path]:
    """Delete the temporary files that a killed atomic_write of any of ``names`` left in ``folder``."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for name in names:
        for tmp in folder.glob(f"{name}.*{TMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


class LockError(RuntimeError):
    """A folder is locked by another process; the message names it."""


class FolderLock:
    """An exclusive lock on a folder (a ``lock`` file in it, held with flock while this object holds it).

    A second process that tries to take it gets a LockError naming the process that holds it. The
    operating system drops the lock when the holder exits, however it exits (SIGKILL included), so a
    stale lock file never blocks anyone.
    """

    NAME = "lock"

    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder) / self.NAME
        self._fd: int | None = None

    def acquire(self) -> FolderLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if fcntl is None:  # not POSIX (Windows): no lock
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise LockError(f"{self.path.parent} is in use by another process (pid {holder}); wait for it to "
                            f"finish or choose another --name") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()
