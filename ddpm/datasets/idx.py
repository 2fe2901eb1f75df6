"""IDX files (LeCun's format) and the two datasets stored in it: MNIST and Fashion-MNIST.

Files are checked before they are trusted: the IDX header (magic number, dimensions, length) first,
then the md5 of the decompressed file (or of the .gz as served by the mirrors). The shipped MNIST
lives in ``data/mnist``; Fashion-MNIST is read from ``data/fashion-mnist``, else from where Debian's
package ``dataset-fashion-mnist`` puts it (``/usr/share/datasets/fashion-mnist``), else downloaded into
``data/fashion-mnist``.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ddpm.datasets.base import DEFAULT_ROOT, DatasetError, DownloadError, _check_split
from ddpm.datasets.files import _check_file_md5, _fetch_all, _is_verified, _mark_verified, _md5_bytes
from ddpm.datasets.images import ImageDataset

__all__ = [
    "FASHION_MNIST",
    "IDX_IMAGES_MAGIC",
    "IDX_LABELS_MAGIC",
    "MNIST",
    "MNIST_LABEL_NAMES",
    "IdxFile",
    "IdxSource",
    "SYSTEM_FASHION_MNIST",
    "load_fashion_mnist",
    "load_idx_dataset",
    "load_mnist",
    "read_idx",
]

IDX_LABELS_MAGIC = 0x00000801  # 2049: uint8, 1 dimension (N,)
IDX_IMAGES_MAGIC = 0x00000803  # 2051: uint8, 3 dimensions (N, rows, cols)
# IDX header: two zero bytes, a type code, the number of dimensions, then one big-endian int32 per dim.
# The one table of type codes: numpy reads the data with these dtypes, and error messages name them.
_IDX_TYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"
_DEFAULT_FIX = "Delete it and download it again, or replace it with a good copy."


def _read_maybe_gzip(path: Path, fix: str) -> bytes:
    """The file's bytes, decompressed if it is gzip (detected by content: browsers sometimes unpack a
    .gz but keep the name)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found. {fix}") from None
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as exc:
        raise DatasetError(f"{path}: the gzip data is truncated or corrupt ({exc}). {fix}") from None


def _describe_magic(magic: int) -> str:
    code, ndim = (magic >> 8) & 0xFF, magic & 0xFF
    kind = np.dtype(_IDX_TYPES[code]).name if code in _IDX_TYPES else "?"
    return f"{magic} = 0x{magic:08x}: {kind} with {ndim} dimension{'s' * (ndim != 1)}"


def _parse_idx(data: bytes, path: Path, expected_magic: int | None, fix: str) -> np.ndarray:
    if len(data) < 4:
        raise DatasetError(f"{path}: truncated: {len(data)} bytes, not even an IDX header. {fix}")
    magic = int.from_bytes(data[:4], "big")
    code, ndim = data[2], data[3]
    if data[0] != 0 or data[1] != 0 or code not in _IDX_TYPES or ndim == 0:
        raise DatasetError(
            f"{path}: not an IDX file (magic number 0x{magic:08x}; an IDX file starts with 0x0000, a type "
            f"code and the number of dimensions). {fix}"
        )
    if expected_magic is not None and magic != expected_magic:
        raise DatasetError(
            f"{path}: wrong IDX magic number {_describe_magic(magic)}; expected "
            f"{_describe_magic(expected_magic)}. Is this the right file? {fix}"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path}: truncated inside the IDX header ({len(data)} of {header} bytes). {fix}")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_TYPES[code])
    count = math.prod(dims)
    expected = header + count * dtype.itemsize
    if len(data) < expected:
        raise DatasetError(
            f"{path}: truncated: {len(data)} bytes, but its header ({' x '.join(map(str, dims))} "
            f"{dtype.name}) needs {expected}. {fix}"
        )
    if len(data) > expected:
        raise DatasetError(
            f"{path}: {len(data) - expected} unexpected bytes after the data its header describes "
            f"({' x '.join(map(str, dims))}). {fix}"
        )
    array = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=True)  # native byte order, writable


def read_idx(path: str | os.PathLike, expected_magic: int | None = None) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw) into a numpy array of the dimensions in its header.

    IDX (LeCun's format for MNIST): big-endian; bytes 0-1 are zero, byte 2 the element type
    (0x08 = uint8), byte 3 the number of dimensions, then one int32 per dimension, then the data.
    MNIST images have magic 2051 (uint8, N x 28 x 28, data at byte 16), labels 2049 (uint8, N, byte 8).
    Raises DatasetError naming the file on a bad magic number, a truncated file or trailing bytes.
    """
    path = Path(path)
    return _parse_idx(_read_maybe_gzip(path, _DEFAULT_FIX), path, expected_magic, _DEFAULT_FIX)


@dataclass(frozen=True)
class IdxFile:
    """One IDX file of a dataset, as served by its mirrors (``filename + ".gz"``)."""

    filename: str  # without ".gz", e.g. "train-images-idx3-ubyte"
    gz_md5: str | None  # md5 of the .gz on the mirrors (checked when downloading)
    md5: str | None = None  # md5 of the decompressed file (checked on first use), if known
    count: int | None = None  # number of items, if known


@dataclass(frozen=True)
class IdxSource:
    """Where an IDX dataset comes from and how to check it. ``dataclasses.replace`` it to point at
    another mirror or at test files."""

    name: str
    mirrors: tuple[str, ...]  # base URLs, tried in order
    label_names: tuple[str, ...]
    train: tuple[IdxFile, IdxFile]  # (images, labels)
    test: tuple[IdxFile, IdxFile]
    image_size: int | None = 28


MNIST_LABEL_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

MNIST = IdxSource(
    name="mnist",
    mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    label_names=MNIST_LABEL_NAMES,
    train=(
        IdxFile("train-images-idx3-ubyte", "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "6bbc9ace898e44ae57da46a324031adb", 60000),
        IdxFile("train-labels-idx1-ubyte", "d53e105ee54ea40749a09fcbcd1e9432",
                "a25bea736e30d166cdddb491f175f624", 60000),
    ),
    test=(
        IdxFile("t10k-images-idx3-ubyte", "9fb629c4189551a2d022fa330f9573f3",
                "2646ac647ad5339dbf082846283269ea", 10000),
        IdxFile("t10k-labels-idx1-ubyte", "ec29112dd5afa0611ce80d1b7f02629c",
                "27ae3e4e09519cfbb04c329615203637", 10000),
    ),
)

# Official names are "T-shirt/top", "Trouser", ...; lower case and one word per class reads better
# in captions ("a photo of a t-shirt"). The .gz md5s are upstream's (checked on download); the md5s of the
# decompressed files are those of Debian's package, whose .gz were recompressed (another .gz md5, the
# same images): checking the decompressed bytes accepts either copy and nothing else.
FASHION_MNIST = IdxSource(
    name="fashion-mnist",
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    label_names=("t-shirt", "trouser", "pullover", "dress", "coat",
                 "sandal", "shirt", "sneaker", "bag", "ankle boot"),
    train=(
        IdxFile("train-images-idx3-ubyte", "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "f4a8712d7a061bf5bd6d2ca38dc4d50a", 60000),
        IdxFile("train-labels-idx1-ubyte", "25c81989df183df01b3e8a0aad5dffbe",
                "9018921c3c673c538a1fc5bad174d6f9", 60000),
    ),
    test=(
        IdxFile("t10k-images-idx3-ubyte", "bef4ecab320f06d8554ea6380940ec79",
                "8181f5470baa50b63fa0f6fddb340f0a", 10000),
        IdxFile("t10k-labels-idx1-ubyte", "bb300cfdad3c16e7a12a480ee83cd310",
                "15d484375f8d13e6eb1aabb0c3f46965", 10000),
    ),
)
SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")  # Debian: apt-get install dataset-fashion-mnist
_GET_FASHION_MNIST = (
    "get it with Debian's package (as root: apt-get update && apt-get install dataset-fashion-mnist, into "
    f"{SYSTEM_FASHION_MNIST}), or let ddpm download it into data/fashion-mnist on a machine with internet "
    "(python -c \"import ddpm.datasets as d; d.load_fashion_mnist()\") and copy that folder here"
)


def _locate(root: Path, filename: str) -> Path | None:
    for candidate in (root / f"{filename}.gz", root / filename):
        if candidate.is_file():
            return candidate
    return None


def _load_idx_file(path: Path, spec: IdxFile, magic: int, verify: bool, fix: str) -> np.ndarray:
    data = _read_maybe_gzip(path, fix)
    array = _parse_idx(data, path, magic, fix)  # structure first: "truncated" beats "md5 mismatch"
    if not verify:
        return array
    if spec.md5 is not None:  # the decompressed bytes are the same whatever the gzip container
        if not _is_verified(path, spec.md5):
            got = _md5_bytes(data)
            if got != spec.md5:
                raise DatasetError(
                    f"{path}: md5 of the decompressed file is {got}, expected {spec.md5} "
                    f"({spec.filename}); the file is corrupt or not the original. {fix}"
                )
            _mark_verified(path, spec.md5)
    elif spec.gz_md5 is not None and path.name.endswith(".gz"):
        _check_file_md5(path, spec.gz_md5, fix)
    return array


def _fix(source: IdxSource, path: Path) -> str:
    """How to repair a bad file: download it again, or restore the shipped MNIST with git."""
    where = f" (from {source.mirrors[0]})" if source.mirrors else ""
    text = f"Delete {path} so it is downloaded again{where}, or replace it with a good copy"
    if path.parent.resolve() == (DEFAULT_ROOT / "mnist").resolve():
        text += f" (this is the shipped copy: git checkout -- {path})"
    return text + "."


def _idx_paths(source: IdxSource, root: Path, split: str, download: bool, progress: bool) -> list[Path]:
    """The [images, labels] files of a split in ``root`` (gzipped or raw), downloading missing ones."""
    specs = getattr(source, split)
    paths = [_locate(root, s.filename) for s in specs]
    missing = [s for s, path in zip(specs, paths, strict=True) if path is None]
    if not missing:
        return paths
    wanted = [(root / f"{s.filename}.gz", [f"{m.rstrip('/')}/{s.filename}.gz" for m in source.mirrors], s.gz_md5)
              for s in missing]
    if not download:
        todo = "\n".join(f"  {d.resolve()}  from {u[0]}" for d, u, _ in wanted)
        raise DatasetError(
            f"{source.name} {split} files missing in {root.resolve()}. Pass download=True, or "
            f"place them there (gzipped or raw):\n{todo}"
        )
    _fetch_all(wanted, f"{source.name} ({split})", progress)
    return [_locate(root, s.filename) for s in specs]


def _check_pair(source: IdxSource, split: str, images: np.ndarray, labels: np.ndarray,
                paths: list[Path]) -> None:
    """Counts, image size and label range of a split's two arrays, checked against ``source``."""
    images_path, labels_path = paths
    for array, spec, path in zip((images, labels), getattr(source, split), paths, strict=True):
        if spec.count is not None and len(array) != spec.count:
            raise DatasetError(f"{path}: {len(array)} items, expected {spec.count}. {_fix(source, path)}")
    if len(images) != len(labels):
        raise DatasetError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels; "
            f"they do not belong together. {_fix(source, images_path)}"
        )
    size = source.image_size
    if size is not None and images.shape[1:] != (size, size):
        raise DatasetError(f"{images_path}: images are {images.shape[1:]}, expected {size} x {size}.")
    if labels.size and int(labels.max()) >= len(source.label_names):
        raise DatasetError(
            f"{labels_path}: label {int(labels.max())} out of range for {len(source.label_names)} classes."
        )


def load_idx_dataset(
    source: IdxSource,
    root: str | os.PathLike,
    split: str = "train",
    download: bool = True,
    verify: bool = True,
    progress: bool = True,
) -> ImageDataset:
    """Load one split of an IDX dataset (MNIST layout) from ``root``, downloading missing files.

    Looks for ``<filename>.gz`` or the raw ``<filename>`` in ``root``; checks magic numbers,
    dimensions, lengths and (``verify``) md5; returns images uint8 [N, 1, H, W] and labels int64 [N].
    """
    _check_split(split)
    paths = _idx_paths(source, Path(root), split, download, progress)
    (images_spec, labels_spec), (images_path, labels_path) = getattr(source, split), paths
    images = _load_idx_file(images_path, images_spec, IDX_IMAGES_MAGIC, verify, _fix(source, images_path))
    labels = _load_idx_file(labels_path, labels_spec, IDX_LABELS_MAGIC, verify, _fix(source, labels_path))
    _check_pair(source, split, images, labels, paths)
    return ImageDataset(
        images=torch.from_numpy(images).unsqueeze(1),  # [N, 1, H, W]
        labels=torch.from_numpy(labels.astype(np.int64)),
        label_names=source.label_names,
        name=source.name,
        split=split,
    )


def load_mnist(
    root: str | os.PathLike | None = None,
    split: str = "train",
    download: bool = True,
    verify: bool = True,
    *,
    source: IdxSource = MNIST,
    progress: bool = True,
) -> ImageDataset:
    """MNIST: 60,000 train / 10,000 test handwritten digits, uint8 [N, 1, 28, 28], labels 0..9.

    Reads the shipped files in ``data/mnist`` (root=None), gzipped or raw. The md5 of each decompressed
    file is checked on first use in a process; if files are missing they are downloaded (S3 mirror
    first) and their md5 checked.
    """
    root = DEFAULT_ROOT / "mnist" if root is None else root
    return load_idx_dataset(source, root, split, download, verify, progress)


def load_fashion_mnist(
    root: str | os.PathLike | None = None,
    split: str = "train",
    download: bool = True,
    *,
    source: IdxSource = FASHION_MNIST,
    progress: bool = True,
    system_root: Path = SYSTEM_FASHION_MNIST,
) -> ImageDataset:
    """Fashion-MNIST (Zalando): 10 clothing classes, same format and sizes as MNIST.

    ``root=None`` looks in ``data/fashion-mnist``, then in ``/usr/share/datasets/fashion-mnist`` (Debian's
    ``dataset-fashion-mnist``); when neither holds the split's files it downloads them into
    ``data/fashion-mnist`` (``download``), and if that fails too, one line says both ways to get them. The md5
    of each decompressed file is checked, so upstream's and Debian's copies both pass.
    """
    if root is not None:
        return load_idx_dataset(source, root, split, download, verify=True, progress=progress)
    _check_split(split)
    local = DEFAULT_ROOT / "fashion-mnist"
    for candidate in (local, system_root):
        if all(_locate(candidate, f.filename) is not None for f in getattr(source, split)):
            return load_idx_dataset(source, candidate, split, download=False, verify=True, progress=progress)
    if download:
        try:  # download() makes the folder
            return load_idx_dataset(source, local, split, download=True, verify=True, progress=progress)
        except DownloadError as exc:
            reason = exc.failures[0][1] if exc.failures else "no mirror answered"
            raise DatasetError(f"Fashion-MNIST {split} files are in neither {local} nor {system_root}, and the "
                               f"download failed ({reason}): {_GET_FASHION_MNIST}.") from None
    raise DatasetError(f"Fashion-MNIST {split} files are in neither {local} nor {system_root}: "
                       f"{_GET_FASHION_MNIST}.")
