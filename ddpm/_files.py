"""Files that survive anything: atomic writes of a file or a folder, the leftovers of killed writes, the umask, the
record beside an output, and the lock of a run folder. Every file and folder ddpm writes goes through here.

- ``atomic_write(path, write)``: a temporary file beside ``path`` (held with flock while it is written), fsynced
  and renamed over it; on any error the old file is left as it was. The result gets the mode the umask gives a
  new file (0644 under the usual 022), not mkstemp's 0600.
- ``save_atomic(obj, path)``: torch.save through atomic_write; a failed write is an OSError naming the file.
- ``atomic_folder(path)``: the same for a folder (a diffusers model: config.json and weights): written as a
  temporary folder and renamed at the end, so a kill never leaves half a model. A non-empty target is refused.
- The temporaries of a killed write are removed by the next write of the same name (a temporary whose flock is
  free has no writer left).
- ``write_json(path, obj)``: a JSON report or record, marked ``"written_by": "ddpm"`` so that a later command may
  replace it and no other JSON file (a run's config.json, a user's file).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import torch

from ddpm._util import shorten

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["atomic_write", "save_atomic", "write_text_atomic", "atomic_folder", "remove_stale_temporaries",
           "write_json", "MARK", "is_ddpm_json", "record_path", "FolderLock", "LockError", "TMP_SUFFIX",
           "new_file_mode", "save_npz"]

TMP_SUFFIX = ".tmp"
MARK = {"written_by": "ddpm"}  # the first key of every JSON file ddpm writes


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it; set back at once
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode a newly created file gets under the current umask (0o644 under the usual 022)."""
    return 0o666 & ~_umask()


def _hold(fd: int) -> None:
    """flock a temporary while it is written: a temporary whose lock is free was left by a killed process."""
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _abandoned(path: Path) -> bool:
    """Whether no live process holds this temporary (file or folder) with flock."""
    if fcntl is None:  # pragma: no cover - Windows: cannot tell
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def remove_stale_temporaries(folder: str | os.PathLike, names: tuple[str, ...]) -> list[Path]:
    """Delete the temporaries (files or folders) that killed atomic writes of any of ``names`` left in ``folder``;
    one that a live process is still writing stays."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for name in names:
        for tmp in folder.glob(f"{glob_escape(name)}.*{TMP_SUFFIX}"):
            if _abandoned(tmp):
                shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
                removed.append(tmp)
    return removed


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file so that it is either the old or the complete new one, whatever happens.

    ``write(f)`` fills a temporary file next to ``path`` (named ``<name>.<random>.tmp``, flocked while written);
    it is flushed, fsynced, given the umask's mode and renamed over ``path`` (atomic on POSIX). On any error,
    Ctrl-C included, the temporary is removed and ``path`` is left as it was. Leftovers of killed writes of the
    same name are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, (path.name,))
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        _hold(fd)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_atomic(obj: dict[str, Any], path: str | os.PathLike) -> Path:
    """torch.save to a temporary file next to ``path``, fsync, then rename over it (atomic_write).

    A failed write is an OSError naming the file (ENOSPC on a full disk), as for any other file: torch's zip writer
    turns the OSError of the file it writes into a RuntimeError of its own ("unexpected pos ...",
    "PytorchStreamWriter failed writing file ..."), which is mapped back here."""
    path = Path(path)
    failed: list[OSError] = []

    class Recording:  # the temporary file, remembering the OSError of a write that failed
        def __init__(self, f):
            self.f = f

        def write(self, data):
            try:
                return self.f.write(data)
            except OSError as e:
                failed.append(e)
                raise

        def __getattr__(self, name):
            return getattr(self.f, name)

    try:
        return atomic_write(path, lambda f: torch.save(obj, Recording(f)))
    except RuntimeError as e:
        if failed:
            raise OSError(failed[0].errno, failed[0].strerror or str(failed[0]), str(path)) from None
        if "PytorchStreamWriter" not in str(e) and "file write failed" not in str(e):
            raise
        full = shutil.disk_usage(path.parent).free < 1 << 20
        raise OSError(errno.ENOSPC if full else errno.EIO, "No space left on device" if full else
                      f"write failed ({str(e).splitlines()[0][:120]})", str(path)) from None


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """atomic_write of a text file (UTF-8)."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Fill a folder so that it appears whole or not at all: yields a temporary folder beside ``path``
    (``<name>.<random>.tmp``, flocked while it is filled), renamed to ``path`` when the block ends. On any error the
    temporary goes and ``path`` is as it was. ``path`` must not exist or be an empty folder (a ValueError says so:
    ddpm never replaces a folder's contents)."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        what = "a file" if not path.is_dir() else "a folder that is not empty"
        raise ValueError(f"{shorten(path, 160)} is {what}; give a new folder name (ddpm does not replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, (path.name,))
    tmp = Path(tempfile.mkdtemp(prefix=path.name + ".", suffix=TMP_SUFFIX, dir=path.parent))
    fd = os.open(tmp, os.O_RDONLY)
    try:
        _hold(fd)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 -> what the umask gives a new folder
        yield tmp
        for child in tmp.iterdir():  # the files' data on disk before the rename makes them visible
            with open(child, "rb") as f:
                os.fsync(f.fileno())
        if path.is_dir():
            path.rmdir()  # empty (checked above)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        os.close(fd)


def record_path(output: str | os.PathLike) -> Path:
    """Where the record of an output goes (what made it): its name with .json added, a name no other file of ddpm
    has (samples/x.png -> samples/x.png.json)."""
    output = Path(output)
    return output.with_name(output.name + ".json")


def is_ddpm_json(path: str | os.PathLike) -> bool:
    """Whether a file is a JSON report or record that ddpm wrote (write_json's mark), which ddpm may replace."""
    try:
        with open(path, "rb") as f:
            head = f.read(64 * 1024 * 1024)
        obj = json.loads(head)
    except (OSError, ValueError):
        return False
    return isinstance(obj, dict) and obj.get("written_by") == MARK["written_by"]


def write_json(path: str | os.PathLike, obj: dict[str, Any]) -> Path:
    """A JSON report or record, atomically, marked as ddpm's (its first key: "written_by": "ddpm")."""
    return write_text_atomic(path, json.dumps({**MARK, **obj}, indent=2) + "\n")


class LockError(RuntimeError):
    """A folder is locked by another process; the message names it."""


class FolderLock:
    """An exclusive lock on a folder (a ``lock`` file in it, held with flock while this object holds it).

    A second process that tries to take it gets a LockError naming the process that holds it. The
    operating system drops the lock when the holder exits, however it exits (SIGKILL included), so a
    stale lock file never blocks anyone. ``created`` says whether acquire made the folder (so that a refused
    run can take it away again: ``release(remove_if_unused=True)``).
    """

    NAME = "lock"

    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder) / self.NAME
        self._fd: int | None = None
        self.created = False

    def acquire(self) -> FolderLock:
        self.created = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if fcntl is None:  # not POSIX (Windows): no lock
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
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

    def release(self, remove_if_unused: bool = False) -> None:
        """Drop the lock; with remove_if_unused, also take away the lock file, and the folder if acquire made it
        and nothing else was written in it (a refused run leaves no trace)."""
        if self._fd is None:
            return
        if remove_if_unused:
            folder = self.path.parent
            others = [p for p in folder.iterdir() if p != self.path] if folder.is_dir() else []
            if not others:
                self.path.unlink(missing_ok=True)
                if self.created:
                    with contextlib.suppress(OSError):
                        folder.rmdir()
        os.close(self._fd)  # closing the descriptor drops the flock
        self._fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


def save_npz(path: str | os.PathLike, arrays: dict) -> Path:
    """Arrays (tensors or NumPy arrays, by name) as one uncompressed .npz, written atomically; read them back with
    numpy.load(path) (no pickles: allow_pickle stays False)."""
    import numpy as np

    plain = {name: np.asarray(a.cpu() if hasattr(a, "cpu") else a) for name, a in arrays.items()}
    return atomic_write(path, lambda f: np.savez(f, **plain))
