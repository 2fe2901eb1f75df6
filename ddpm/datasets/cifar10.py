"""CIFAR-10: a tarball of pickles, opened with a restricted unpickler.

A pickle is a program, so a downloaded one is never trusted: the archive's md5 is checked before it
is extracted, each batch's md5 before it is read, and the unpickler builds nothing but plain Python
values and numpy arrays. Downloaded into ``data/`` on first use.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import tarfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from ddpm.datasets.base import DEFAULT_ROOT, DatasetError, _check_split
from ddpm.datasets.files import _check_file_md5, _copy_md5, _fetch_all, _mark_verified, _write_verified
from ddpm.datasets.images import ImageDataset

__all__ = ["CIFAR10", "CIFAR10_LABEL_NAMES", "Cifar10Source", "load_cifar10", "restricted_unpickle"]


@dataclass(frozen=True)
class Cifar10Source:
    """Where CIFAR-10 comes from and the md5 of the archive and of each file in it."""

    urls: tuple[str, ...]
    md5: str  # of the archive
    batch_md5: Mapping[str, str] = field(default_factory=dict)  # file name -> md5
    archive: str = "cifar-10-python.tar.gz"
    folder: str = "cifar-10-batches-py"


CIFAR10 = Cifar10Source(
    urls=("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
    md5="c58f30108f718f92721af3b95e74349a",
    batch_md5={
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
        "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    },
)
_CIFAR_SPLITS = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
# The class names in batches.meta, known without loading the dataset (for a text vocabulary).
CIFAR10_LABEL_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class _Refused(pickle.UnpicklingError):
    """The pickle asks for something the restricted unpickler does not build."""


def _refuse_object_dtype(*args: Any) -> np.dtype:
    dtype = np.dtype(*args)
    if dtype.hasobject:  # an object array would unpickle arbitrary Python objects element by element
        raise _Refused(f"numpy dtype {dtype} holds Python objects")
    return dtype


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Protocol-2 pickles written by Python 3 store bytes as _codecs.encode(text, "latin1").
    if not isinstance(text, str) or encoding.lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise _Refused("_codecs.encode is only allowed as str -> latin1 bytes")
    return text.encode("latin1")


# The only globals a CIFAR-10 batch needs: how numpy rebuilds an array. Module names differ between
# numpy 1 (numpy.core) and 2 (numpy._core); the functions are taken from numpy's own reduce tuples so
# that nothing is imported by name.
_RECONSTRUCT = np.zeros(1).__reduce_ex__(2)[0]
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]
_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _refuse_object_dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain values (dict, list, tuple, str, bytes, numbers, bool, None) and numpy arrays.

    A pickle is a program: any global it names can be called (``os.system`` included). Every global
    goes through ``find_class``, so refusing all but numpy's array reconstruction makes loading safe.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise _Refused(f"global '{module}.{name}' is not allowed") from None

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("persistent ids are not allowed")


def restricted_unpickle(data: bytes, what: str = "pickle") -> Any:
    """Unpickle ``data`` allowing only plain Python values and numpy arrays.

    Python 2 strings decode as latin-1 (how numpy arrays from Python 2 pickles, like CIFAR-10's, must
    be read). Anything else (a class, a function such as os.system) raises DatasetError naming ``what``
    before it is called.
    """
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except _Refused as exc:
        raise DatasetError(
            f"{what}: refused to unpickle it ({exc}). It should hold only plain Python values and numpy "
            f"arrays, so it is not a genuine data file and may be malicious; delete it and download the "
            f"dataset again."
        ) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, struct.error, MemoryError,
            AttributeError, IndexError, KeyError) as exc:
        raise DatasetError(f"{what}: corrupt pickle ({type(exc).__name__}: {exc}); delete it and download "
                           f"the dataset again.") from None


def _str_keys(obj: Any, what: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise DatasetError(f"{what}: expected a dict, got {type(obj).__name__}; not a CIFAR-10 file.")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _extract_member(src: IO[bytes], dest: Path, md5: str) -> str | None:
    """Copy an archive member to ``dest`` (atomically) if its md5 is ``md5``; else return the md5 it has."""

    def fill(out: IO[bytes]) -> str | None:
        got, _ = _copy_md5(src, out)
        return None if got == md5 else got

    return _write_verified(dest, fill)


def _extract_cifar(archive: Path, root: Path, source: Cifar10Source) -> None:
    """Extract the known batch files, by exact name, each verified before it is renamed into place.

    Only regular files with the expected names are read, so a crafted archive cannot write elsewhere.
    """
    folder = root / source.folder
    folder.mkdir(parents=True, exist_ok=True)
    fix = f"Delete {archive} and download it again."
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = {m.name: m for m in tar.getmembers() if m.isfile()}
            for fname, md5 in source.batch_md5.items():
                member = members.get(f"{source.folder}/{fname}")
                if member is None:
                    raise DatasetError(f"{archive}: no file {source.folder}/{fname} in the archive. {fix}")
                src = tar.extractfile(member)
                assert src is not None
                got = _extract_member(src, folder / fname, md5)
                if got is not None:
                    raise DatasetError(f"{archive}: {member.name} has md5 {got}, expected {md5}. {fix}")
                _mark_verified(folder / fname, md5)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DatasetError(f"{archive}: cannot read the archive ({exc}). {fix}") from None


def _ensure_extracted(root: Path, split: str, download: bool, source: Cifar10Source, progress: bool) -> None:
    """Make sure the batches of ``split`` are in ``root/source.folder``: extract them from the archive,
    downloading it first if needed (``download``), else checking the md5 of the one already there."""
    folder = root / source.folder
    if all((folder / f).is_file() for f in (*_CIFAR_SPLITS[split], "batches.meta")):
        return
    archive = root / source.archive
    if download:
        _fetch_all([(archive, source.urls, source.md5)], "CIFAR-10", progress)
    elif not archive.is_file():
        raise DatasetError(
            f"CIFAR-10 not found in {root.resolve()}: pass download=True, or place {source.archive} "
            f"(md5 {source.md5}, from {source.urls[0]}) in that folder."
        )
    else:
        _check_file_md5(archive, source.md5, f"Delete {archive} and download it again.")
    _extract_cifar(archive, root, source)


def _read_batch(folder: Path, fname: str, source: Cifar10Source) -> dict[str, Any]:
    """One pickled file of the dataset, unpickled (restrictedly) only after its md5 matches."""
    path = folder / fname
    md5 = source.batch_md5.get(fname)
    if md5 is None:
        raise DatasetError(f"{path}: no md5 known for this file; refusing to unpickle it.")
    fix = f"Delete {folder} (and {source.archive} if it is corrupt too) and load again to re-extract it."
    _check_file_md5(path, md5, fix)  # never unpickle a file before its checksum matches
    return _str_keys(restricted_unpickle(path.read_bytes(), str(path)), str(path))


def _batch_arrays(batch: dict[str, Any], path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A batch's images uint8 [n, 3072] and labels int64 [n], checked."""
    data, labels = batch.get("data"), batch.get("labels")
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3 * 32 * 32):
        raise DatasetError(f"{path}: 'data' is not a uint8 array [n, 3072].")
    if not (isinstance(labels, list | tuple | np.ndarray) and len(labels) == len(data)):
        raise DatasetError(f"{path}: 'labels' must hold one label per image.")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetError(f"{path}: labels out of range 0..{num_classes - 1}.")
    return data, labels


def load_cifar10(
    root: str | os.PathLike | None = None,
    split: str = "train",
    download: bool = True,
    *,
    source: Cifar10Source = CIFAR10,
    progress: bool = True,
) -> ImageDataset:
    """CIFAR-10: 50,000 train / 10,000 test 32x32 RGB images in 10 classes, uint8 [N, 3, 32, 32].

    ``root`` holds ``cifar-10-python.tar.gz`` and the extracted ``cifar-10-batches-py/``. The archive's
    md5 is checked before extraction, each batch's md5 before it is unpickled (restrictedly).
    Each batch is a dict: data uint8 [n, 3072] (1024 R, then G, then B values, each a 32x32 image in
    row-major order, so a reshape gives [n, 3, 32, 32]) and labels, a list of n ints.
    """
    _check_split(split)
    root = DEFAULT_ROOT if root is None else Path(root)
    folder = root / source.folder
    _ensure_extracted(root, split, download, source, progress)
    meta = _read_batch(folder, "batches.meta", source)
    label_names = tuple(n.decode("latin1") if isinstance(n, bytes) else str(n)
                        for n in meta.get("label_names", ()))
    if len(label_names) != 10:
        raise DatasetError(f"{folder / 'batches.meta'}: expected 10 label_names, got {label_names!r}.")
    arrays = [_batch_arrays(_read_batch(folder, f, source), folder / f, len(label_names))
              for f in _CIFAR_SPLITS[split]]
    images = np.concatenate([data for data, _ in arrays]).reshape(-1, 3, 32, 32)  # [N, 3072] -> [N, C, H, W]
    return ImageDataset(
        images=torch.from_numpy(images),
        labels=torch.from_numpy(np.concatenate([labels for _, labels in arrays])),
        label_names=label_names,
        name="cifar10",
        split=split,
    )
