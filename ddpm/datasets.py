"""Datasets: MNIST / Fashion-MNIST (IDX), CIFAR-10, image folders and 2D toy sets.

Everything a diffusion model trains on comes out of this file in one shape:

    ImageDataset.images   uint8 [N, C, H, W], contiguous, held in memory
    ImageDataset.labels   int64 [N] (or None)
    to_float(images)      float32 in [-1, 1]  (x / 127.5 - 1: the DDPM paper's data scaling)
    to_uint8(x)           the inverse, with clamp and round

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

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import math
import os
import pickle
import re
import struct
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

__all__ = [
    "CIFAR10",
    "DEFAULT_ROOT",
    "DATASET_NAMES",
    "FASHION_MNIST",
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
    "caption_templates",
    "captions_for",
    "download",
    "load_cifar10",
    "load_dataset",
    "load_fashion_mnist",
    "load_idx_dataset",
    "load_image_folder",
    "load_mnist",
    "md5_file",
    "read_idx",
    "restricted_unpickle",
    "to_float",
    "to_uint8",
    "toy2d",
]


class DatasetError(ValueError):
    """A dataset file is missing, corrupt, unsafe or could not be downloaded.

    The message names the file, says what was wrong and how to fix it.
    """


class DownloadError(DatasetError):
    """Every mirror failed. ``failures`` holds one ``(url, reason)`` per attempt."""

    def __init__(self, message: str, failures: Sequence[tuple[str, str]] = ()):
        super().__init__(message)
        self.failures = list(failures)


def _default_root() -> Path:
    """The repository's ``data/`` folder when running from a checkout, else ``./data``."""
    repo_data = Path(__file__).resolve().parent.parent / "data"
    return repo_data if repo_data.is_dir() else Path("data")


DEFAULT_ROOT = _default_root()


# ---------------------------------------------------------------------------------------------------
# The common shape: uint8 in memory, [-1, 1] floats for the model
# ---------------------------------------------------------------------------------------------------


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images in {0..255} -> float32 in [-1, 1]: x / 127.5 - 1 (any shape)."""
    if images.dtype != torch.uint8:
        raise TypeError(f"to_float expects uint8 images, got {images.dtype} (already converted?)")
    return images.to(torch.float32) / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float images in [-1, 1] -> uint8 in {0..255}; values outside [-1, 1] are clamped.

    The exact inverse of ``to_float`` on its outputs: to_uint8(to_float(u)) == u.
    """
    return ((x.detach().to(torch.float32) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


@dataclass
class ImageDataset:
    """A whole image dataset held in memory.

    images: uint8 [N, C, H, W], contiguous; labels: int64 [N] or None; label_names[k] names class k.
    ``dataset[i]`` gives ``(image float32 [C, H, W] in [-1, 1], label or None)``, so it also works
    with torch's DataLoader, though ``BatchLoader`` is much faster for data this small.
    """

    images: torch.Tensor
    labels: torch.Tensor | None = None
    label_names: tuple[str, ...] = ()
    name: str = ""
    split: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.images, torch.Tensor) or self.images.dtype != torch.uint8:
            raise TypeError("ImageDataset.images must be a uint8 tensor [N, C, H, W]")
        if self.images.dim() != 4:
            raise ValueError(f"ImageDataset.images must be [N, C, H, W], got {tuple(self.images.shape)}")
        self.images = self.images.contiguous()
        if self.labels is not None:
            self.labels = torch.as_tensor(self.labels, dtype=torch.int64).contiguous()
            if self.labels.shape != (len(self.images),):
                raise ValueError(
                    f"labels must be int64 [N={len(self.images)}], got shape {tuple(self.labels.shape)}"
                )
        self.label_names = tuple(self.label_names)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        label = self.labels[index] if self.labels is not None else None
        return to_float(self.images[index]), label

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        """Height (all built-in datasets are square)."""
        return self.images.shape[2]

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def subset(self, indices: Sequence[int] | torch.Tensor | slice) -> ImageDataset:
        """A new dataset with the selected images (e.g. ``ds.subset(slice(0, 1000))`` for quick runs)."""
        if isinstance(indices, slice):
            images = self.images[indices]
            labels = self.labels[indices] if self.labels is not None else None
        else:
            idx = torch.as_tensor(indices, dtype=torch.int64)
            images = self.images.index_select(0, idx)
            labels = self.labels.index_select(0, idx) if self.labels is not None else None
        return ImageDataset(images.clone(), labels, self.label_names, self.name, self.split)

    def __repr__(self) -> str:
        n_classes = f", {self.num_classes} classes" if self.label_names else ""
        split = f" ({self.split})" if self.split else ""
        return (
            f"ImageDataset({self.name!r}{split}: {len(self)} x {self.channels} x "
            f"{self.images.shape[2]} x {self.images.shape[3]} uint8{n_classes})"
        )


# ---------------------------------------------------------------------------------------------------
# Checksums and downloads
# ---------------------------------------------------------------------------------------------------

# md5 checks already passed in this process: (path, size, mtime_ns, md5). A file that changes on disk
# changes its size or mtime and is checked again.
_VERIFIED: set[tuple[str, int, int, str]] = set()


def _md5() -> Any:
    return hashlib.md5(usedforsecurity=False)  # a checksum against corruption, not a security claim


def md5_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex md5 of a file, read in chunks."""
    h = _md5()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def _cache_key(path: Path, md5: str) -> tuple[str, int, int, str]:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns, md5)


def _is_verified(path: Path, md5: str) -> bool:
    return _cache_key(path, md5) in _VERIFIED


def _mark_verified(path: Path, md5: str) -> None:
    _VERIFIED.add(_cache_key(path, md5))


def _check_file_md5(path: Path, md5: str, fix: str) -> None:
    """md5 of the file on disk must be ``md5`` (cached per process)."""
    if _is_verified(path, md5):
        return
    got = md5_file(path)
    if got != md5:
        raise DatasetError(f"{path}: md5 mismatch (got {got}, expected {md5}); the file is corrupt. {fix}")
    _mark_verified(path, md5)


def _short_reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return f"unreachable ({exc.reason})"
    return f"{type(exc).__name__}: {exc}"


def download(
    urls: Sequence[str],
    dest: str | os.PathLike,
    md5: str | None,
    *,
    progress: bool = True,
    timeout: float = 30.0,
    chunk_size: int = 1 << 20,
) -> Path:
    """Download one file to ``dest``, trying each mirror in ``urls`` in order.

    The bytes stream into a temporary file next to ``dest`` (with a tqdm progress bar), their md5 is
    computed on the way, and only a complete, verified file is renamed to ``dest`` (os.replace is
    atomic), so ``dest`` is either absent, the old file, or the good new one: never a partial file.
    If ``dest`` already exists with the right md5 nothing is downloaded. ``md5=None`` skips the check
    (for files without a published checksum). Raises DownloadError listing each URL and why it failed.
    """
    dest = Path(dest)
    if dest.is_file() and md5 is not None and md5_file(dest) == md5:
        _mark_verified(dest, md5)
        return dest
    if not urls:
        raise DownloadError(f"No URL to download {dest.name} from; place the file at {dest.resolve()}.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures: list[tuple[str, str]] = []
    for url in urls:
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                reason = _stream(url, out, md5, desc=dest.name, progress=progress, timeout=timeout,
                                 chunk_size=chunk_size)
            if reason is None:
                os.replace(tmp, dest)
                if md5 is not None:
                    _mark_verified(dest, md5)
                return dest
            failures.append((url, reason))
        except (OSError, http.client.HTTPException, ValueError) as exc:
            failures.append((url, _short_reason(exc)))
        finally:
            tmp.unlink(missing_ok=True)  # also on KeyboardInterrupt: never leave a partial file
    lines = "\n".join(f"  {url}: {reason}" for url, reason in failures)
    checksum = f" (md5 {md5})" if md5 else ""
    raise DownloadError(
        f"Could not download {dest.name}; every mirror failed:\n{lines}\n"
        f"If this machine is offline, download it elsewhere from one of the URLs above and place it at "
        f"{dest.resolve()}{checksum}.",
        failures,
    )


def _stream(url: str, out: io.BufferedWriter, md5: str | None, *, desc: str, progress: bool,
            timeout: float, chunk_size: int) -> str | None:
    """Copy ``url`` into ``out``; None on success, else why the bytes are not the expected file."""
    request = urllib.request.Request(url, headers={"User-Agent": "ddpm-educational/0.1 (python urllib)"})
    h = _md5()
    received = 0
    with urllib.request.urlopen(request, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                  disable=not progress, leave=False) as bar:
            while chunk := response.read(chunk_size):
                out.write(chunk)
                h.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and received != total:
        return f"incomplete download ({received} of {total} bytes)"
    if md5 is not None and h.hexdigest() != md5:
        return f"md5 mismatch (got {h.hexdigest()}, expected {md5}): the mirror served a different file"
    return None


def _fetch_all(files: Sequence[tuple[Path, Sequence[str], str | None]], what: str, progress: bool) -> None:
    """Download several files; if one fails, the error lists every file still to be placed by hand."""
    for i, (dest, urls, md5) in enumerate(files):
        try:
            download(urls, dest, md5, progress=progress)
        except DownloadError as exc:
            todo = "\n".join(
                f"  {d.resolve()}  from {u[0] if u else '?'}" + (f"  (md5 {m})" if m else "")
                for d, u, m in files[i:]
            )
            failed = "\n".join(f"  {url}: {reason}" for url, reason in exc.failures)
            raise DownloadError(
                f"Could not download {what}: every mirror failed for {dest.name}:\n{failed}\n"
                f"If this machine is offline, download these files elsewhere and place them here:\n{todo}",
                exc.failures,
            ) from exc


# ---------------------------------------------------------------------------------------------------
# IDX files: MNIST and Fashion-MNIST
# ---------------------------------------------------------------------------------------------------

IDX_LABELS_MAGIC = 0x00000801  # 2049: uint8, 1 dimension (N,)
IDX_IMAGES_MAGIC = 0x00000803  # 2051: uint8, 3 dimensions (N, rows, cols)
# IDX header: two zero bytes, a type code, the number of dimensions, then one big-endian int32 per dim.
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
    kind = {0x08: "uint8", 0x09: "int8", 0x0B: "int16", 0x0C: "int32", 0x0D: "float32", 0x0E: "float64"}
    return f"{magic} = 0x{magic:08x}: {kind.get(code, '?')} with {ndim} dimension{'s' * (ndim != 1)}"


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
# in captions ("a photo of a t-shirt").
FASHION_MNIST = IdxSource(
    name="fashion-mnist",
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    label_names=("t-shirt", "trouser", "pullover", "dress", "coat",
                 "sandal", "shirt", "sneaker", "bag", "ankle boot"),
    train=(
        IdxFile("train-images-idx3-ubyte", "8d4fb7e6c68d591d4c3dfef9ec88bf0d", None, 60000),
        IdxFile("train-labels-idx1-ubyte", "25c81989df183df01b3e8a0aad5dffbe", None, 60000),
    ),
    test=(
        IdxFile("t10k-images-idx3-ubyte", "bef4ecab320f06d8554ea6380940ec79", None, 10000),
        IdxFile("t10k-labels-idx1-ubyte", "bb300cfdad3c16e7a12a480ee83cd310", None, 10000),
    ),
)


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise DatasetError(f"unknown split {split!r}; use 'train' or 'test'")


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
            got = _md5()
            got.update(data)
            if got.hexdigest() != spec.md5:
                raise DatasetError(
                    f"{path}: md5 of the decompressed file is {got.hexdigest()}, expected {spec.md5} "
                    f"({spec.filename}); the file is corrupt or not the original. {fix}"
                )
            _mark_verified(path, spec.md5)
    elif spec.gz_md5 is not None and path.name.endswith(".gz"):
        _check_file_md5(path, spec.gz_md5, fix)
    return array


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
    root = Path(root)
    images_spec, labels_spec = getattr(source, split)
    urls = {s.filename: [f"{m.rstrip('/')}/{s.filename}.gz" for m in source.mirrors]
            for s in (images_spec, labels_spec)}
    paths = {s.filename: _locate(root, s.filename) for s in (images_spec, labels_spec)}
    missing = [s for s in (images_spec, labels_spec) if paths[s.filename] is None]
    if missing:
        wanted = [(root / f"{s.filename}.gz", urls[s.filename], s.gz_md5) for s in missing]
        if not download:
            todo = "\n".join(f"  {d.resolve()}  from {u[0]}" for d, u, _ in wanted)
            raise DatasetError(
                f"{source.name} {split} files missing in {root.resolve()}. Pass download=True, or "
                f"place them there (gzipped or raw):\n{todo}"
            )
        _fetch_all(wanted, f"{source.name} ({split})", progress)
        paths = {s.filename: _locate(root, s.filename) for s in (images_spec, labels_spec)}

    def fix(p: Path) -> str:
        where = f" (from {source.mirrors[0]})" if source.mirrors else ""
        text = f"Delete {p} so it is downloaded again{where}, or replace it with a good copy"
        if p.parent.resolve() == (DEFAULT_ROOT / "mnist").resolve():
            text += f" (this is the shipped copy: git checkout -- {p})"
        return text + "."

    images_path, labels_path = paths[images_spec.filename], paths[labels_spec.filename]
    images = _load_idx_file(images_path, images_spec, IDX_IMAGES_MAGIC, verify, fix(images_path))
    labels = _load_idx_file(labels_path, labels_spec, IDX_LABELS_MAGIC, verify, fix(labels_path))
    for array, spec, path in ((images, images_spec, images_path), (labels, labels_spec, labels_path)):
        if spec.count is not None and len(array) != spec.count:
            raise DatasetError(f"{path}: {len(array)} items, expected {spec.count}. {fix(path)}")
    if len(images) != len(labels):
        raise DatasetError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels; "
            f"they do not belong together. {fix(images_path)}"
        )
    size = source.image_size
    if size is not None and images.shape[1:] != (size, size):
        raise DatasetError(f"{images_path}: images are {images.shape[1:]}, expected {size} x {size}.")
    if labels.size and int(labels.max()) >= len(source.label_names):
        raise DatasetError(
            f"{labels_path}: label {int(labels.max())} out of range for {len(source.label_names)} classes."
        )
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
) -> ImageDataset:
    """Fashion-MNIST (Zalando): 10 clothing classes, same format and sizes as MNIST.

    Downloaded into ``data/fashion-mnist`` on first use; the md5 of the .gz files is checked.
    """
    root = DEFAULT_ROOT / "fashion-mnist" if root is None else root
    return load_idx_dataset(source, root, split, download, verify=True, progress=progress)


# ---------------------------------------------------------------------------------------------------
# CIFAR-10: a tarball of pickles, opened with a restricted unpickler
# ---------------------------------------------------------------------------------------------------


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
                fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{fname}.", suffix=".tmp")
                tmp = Path(tmp_name)
                try:
                    h = _md5()
                    with os.fdopen(fd, "wb") as out:
                        while chunk := src.read(1 << 20):
                            out.write(chunk)
                            h.update(chunk)
                    if h.hexdigest() != md5:
                        raise DatasetError(
                            f"{archive}: {member.name} has md5 {h.hexdigest()}, expected {md5}. {fix}"
                        )
                    os.replace(tmp, folder / fname)
                    _mark_verified(folder / fname, md5)
                finally:
                    tmp.unlink(missing_ok=True)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DatasetError(f"{archive}: cannot read the archive ({exc}). {fix}") from None


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
    needed = (*_CIFAR_SPLITS[split], "batches.meta")
    if not all((folder / f).is_file() for f in needed):
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

    def read(fname: str) -> dict[str, Any]:
        path = folder / fname
        md5 = source.batch_md5.get(fname)
        if md5 is None:
            raise DatasetError(f"{path}: no md5 known for this file; refusing to unpickle it.")
        fix = f"Delete {folder} (and {source.archive} if it is corrupt too) and load again to re-extract it."
        _check_file_md5(path, md5, fix)  # never unpickle a file before its checksum matches
        return _str_keys(restricted_unpickle(path.read_bytes(), str(path)), str(path))

    meta = read("batches.meta")
    label_names = tuple(n.decode("latin1") if isinstance(n, bytes) else str(n)
                        for n in meta.get("label_names", ()))
    if len(label_names) != 10:
        raise DatasetError(f"{folder / 'batches.meta'}: expected 10 label_names, got {label_names!r}.")
    datas, labels = [], []
    for fname in _CIFAR_SPLITS[split]:
        batch = read(fname)
        data, batch_labels = batch.get("data"), batch.get("labels")
        if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
                and data.shape[1] == 3 * 32 * 32):
            raise DatasetError(f"{folder / fname}: 'data' is not a uint8 array [n, 3072].")
        if not (isinstance(batch_labels, list | tuple | np.ndarray) and len(batch_labels) == len(data)):
            raise DatasetError(f"{folder / fname}: 'labels' must hold one label per image.")
        batch_labels = np.asarray(batch_labels, dtype=np.int64)
        if batch_labels.size and (batch_labels.min() < 0 or batch_labels.max() >= len(label_names)):
            raise DatasetError(f"{folder / fname}: labels out of range 0..{len(label_names) - 1}.")
        datas.append(data)
        labels.append(batch_labels)
    images = np.concatenate(datas).reshape(-1, 3, 32, 32)  # [N, 3072] -> [N, C, H, W]
    return ImageDataset(
        images=torch.from_numpy(images),
        labels=torch.from_numpy(np.concatenate(labels)),
        label_names=label_names,
        name="cifar10",
        split=split,
    )


# ---------------------------------------------------------------------------------------------------
# One entry point by name
# ---------------------------------------------------------------------------------------------------

DATASET_NAMES = ("mnist", "fashion-mnist", "cifar10")
_ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist", "cifar-10": "cifar10",
            "cifar_10": "cifar10"}


def load_dataset(
    name: str, split: str = "train", root: str | os.PathLike | None = None, download: bool = True
) -> ImageDataset:
    """Load a dataset by name ("mnist", "fashion-mnist", "cifar10"); ``root`` is the data folder
    (default: the repository's ``data/``), MNIST and Fashion-MNIST live in sub-folders of it."""
    key = _ALIASES.get(name.lower(), name.lower())
    root = DEFAULT_ROOT if root is None else Path(root)
    if key == "mnist":
        return load_mnist(root / "mnist", split, download)
    if key == "fashion-mnist":
        return load_fashion_mnist(root / "fashion-mnist", split, download)
    if key == "cifar10":
        return load_cifar10(root, split, download)
    raise DatasetError(
        f"unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)} "
        f"(or load_image_folder for your own images)"
    )


# ---------------------------------------------------------------------------------------------------
# Your own images
# ---------------------------------------------------------------------------------------------------

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _load_image(path: Path, image_size: int, channels: int) -> np.ndarray:
    """One image -> uint8 [H, W] or [H, W, 3]: scale the short side to ``image_size``, crop the center."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)  # photos store their rotation in EXIF
            if img.mode in ("RGBA", "LA", "P") and (img.mode != "P" or "transparency" in img.info):
                rgba = img.convert("RGBA")  # transparent pixels become white, not black
                img = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                img.alpha_composite(rgba)
            img = img.convert("L" if channels == 1 else "RGB")
            w, h = img.size
            scale = image_size / min(w, h)
            new_w, new_h = max(image_size, round(w * scale)), max(image_size, round(h * scale))
            img = img.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=3.0)
            left, top = (new_w - image_size) // 2, (new_h - image_size) // 2
            img = img.crop((left, top, left + image_size, top + image_size))
            return np.array(img, dtype=np.uint8)  # a writable copy
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"{path}: cannot read this image ({exc}); remove or replace it.") from None


def load_image_folder(root: str | os.PathLike, image_size: int, channels: int = 3) -> ImageDataset:
    """Load every image under ``root``, resized (short side) and center-cropped to image_size.

    Images directly in ``root`` form an unlabeled dataset; images in sub-folders get labels from the
    sub-folder names (sorted, label_names = folder names), like ``root/cat/*.jpg``, ``root/dog/*.jpg``.
    channels: 1 (grayscale) or 3 (RGB). Returns uint8 [N, channels, image_size, image_size].
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder of images.")
    loose = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    class_dirs = [d for d in sorted(root.iterdir()) if d.is_dir() and _images_under(d)]
    if class_dirs and loose:
        raise DatasetError(
            f"{root}: has images both directly inside it ({loose[0].name}, ...) and in sub-folders "
            f"({class_dirs[0].name}/, ...). Put all images in class sub-folders, or all in one folder."
        )
    if class_dirs:
        files = [(p, k) for k, d in enumerate(class_dirs) for p in _images_under(d)]
        label_names = tuple(d.name for d in class_dirs)
    else:
        files = [(p, -1) for p in loose]
        label_names = ()
    if not files:
        raise DatasetError(f"{root}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)}).")
    images = torch.empty(len(files), channels, image_size, image_size, dtype=torch.uint8)
    for i, (path, _) in enumerate(files):
        array = _load_image(path, image_size, channels)
        images[i] = torch.from_numpy(array.reshape(image_size, image_size, channels)).permute(2, 0, 1)
    labels = torch.tensor([k for _, k in files], dtype=torch.int64) if class_dirs else None
    return ImageDataset(images, labels, label_names, name=root.resolve().name)


# ---------------------------------------------------------------------------------------------------
# Captions from label names (for text conditioning)
# ---------------------------------------------------------------------------------------------------

# The one set of digit captions: a text model trained on random picks learns that "seven", "7" and the
# phrasing around them mean the same thing, so any of these prompts works at sampling time.
_DIGIT_TEMPLATES = ("a handwritten {name}", "a handwritten {index}", "the digit {name}", "the digit {index}",
                    "number {name}", "number {index}", "{a} {name}", "{name}")
_OBJECT_TEMPLATES = ("a photo of {a} {name}", "{a} {name}", "a picture of {a} {name}",
                     "an image of {a} {name}", "a small photo of the {name}", "the {name}")


def _article(name: str) -> str:
    return "an" if name[:1].lower() in "aeiou" else "a"


def caption_templates(label_name: str, index: int, dataset: str = "") -> list[str]:
    """Every caption for one class, e.g. "a handwritten seven", "the digit 7" for MNIST's class 7.

    dataset "mnist" gets digit templates; any other dataset gets object templates ("a photo of an
    airplane"). The union over classes is the text vocabulary a caption model needs.
    """
    templates = _DIGIT_TEMPLATES if dataset == "mnist" else _OBJECT_TEMPLATES
    return [t.format(name=label_name, index=index, a=_article(label_name)) for t in templates]


CIFAR10_LABEL_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def dataset_label_names(dataset: str) -> tuple[str, ...]:
    """The class names of a named dataset, known without loading it (for building a text vocabulary)."""
    names = {"mnist": MNIST_LABEL_NAMES, "fashion-mnist": FASHION_MNIST.label_names, "cifar10": CIFAR10_LABEL_NAMES}
    key = _ALIASES.get(dataset.lower(), dataset.lower())
    if key not in names:
        raise DatasetError(f"no class names for dataset {dataset!r}; known: {', '.join(names)}")
    return names[key]


def caption_vocabulary(dataset: str) -> tuple[str, ...]:
    """Every word of every caption template of every class of a dataset, sorted: a text model's vocabulary."""
    words = set()
    for k, name in enumerate(dataset_label_names(dataset)):
        for caption in caption_templates(name, k, dataset):
            words.update(re.findall(r"\w+(?:'\w+)*", caption.lower()))
    return tuple(sorted(words))


def class_prompts(label_names: Sequence[str], labels: torch.Tensor, dataset: str) -> list[str]:
    """The canonical prompt of each label (its first caption template), e.g. "a handwritten seven"."""
    return [caption_templates(label_names[k], k, dataset)[0] for k in torch.as_tensor(labels).reshape(-1).tolist()]


def captions_for(
    label_names: Sequence[str],
    labels: torch.Tensor,
    generator: torch.Generator | None = None,
    dataset: str | None = None,
) -> list[str]:
    """One random caption per label: labels int64 [B] -> B strings.

    ``dataset`` picks the templates (see caption_templates); by default MNIST's label names
    ("zero", ..., "nine") get the digit templates and anything else the object templates.
    """
    if dataset is None:
        dataset = "mnist" if tuple(label_names) == MNIST_LABEL_NAMES else ""
    per_class = [caption_templates(n, k, dataset) for k, n in enumerate(label_names)]
    labels = torch.as_tensor(labels).reshape(-1).tolist()
    choice = torch.rand(len(labels), generator=generator).tolist()
    return [per_class[y][int(u * len(per_class[y]))] for y, u in zip(labels, choice, strict=True)]


# ---------------------------------------------------------------------------------------------------
# 2D toy datasets: see the whole distribution (and the model's samples) in one scatter plot
# ---------------------------------------------------------------------------------------------------

TOY2D_NAMES = ("swiss-roll", "moons", "8gaussians", "checkerboard")


def toy2d(name: str, n: int, seed: int = 0) -> torch.Tensor:
    """n points of a 2D toy distribution, float32 [n, 2], each coordinate with std of about 1.

    swiss-roll: a spiral; moons: two interleaved half circles; 8gaussians: eight small blobs on a
    circle; checkerboard: uniform on the 8 dark squares of a 4x4 board. Same (name, n, seed), same points.
    """
    if name not in TOY2D_NAMES:
        raise ValueError(f"unknown 2D toy dataset {name!r}; choose one of {', '.join(TOY2D_NAMES)}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    g = torch.Generator().manual_seed(seed)
    if name == "swiss-roll":
        t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g, dtype=torch.float64))  # angle = radius
        x = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1)
        x = x + 0.3 * torch.randn(n, 2, generator=g, dtype=torch.float64)
        x = x / 7.0
    elif name == "moons":
        theta = math.pi * torch.rand(n, generator=g, dtype=torch.float64)
        lower = torch.rand(n, generator=g) < 0.5
        upper_xy = torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)
        lower_xy = torch.stack([1 - torch.cos(theta), 0.5 - torch.sin(theta)], dim=1)
        x = torch.where(lower[:, None], lower_xy, upper_xy) - torch.tensor([0.5, 0.25], dtype=torch.float64)
        x = x + 0.05 * torch.randn(n, 2, generator=g, dtype=torch.float64)
        x = x * torch.tensor([1.15, 2.0], dtype=torch.float64)
    elif name == "8gaussians":
        k = torch.randint(0, 8, (n,), generator=g).to(torch.float64)
        angle = k * (math.pi / 4)
        x = 1.4 * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
        x = x + 0.1 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    else:  # checkerboard: pick a dark square (i + j even) of a 4x4 board on [-2, 2]^2, uniform inside
        col = torch.randint(0, 4, (n,), generator=g)
        row = 2 * torch.randint(0, 2, (n,), generator=g) + (col % 2)  # rows with (row + col) even
        u = torch.rand(n, 2, generator=g, dtype=torch.float64)
        x = torch.stack([col + u[:, 0], row + u[:, 1]], dim=1) - 2.0
        x = x * (math.sqrt(3) / 2)  # U(-2, 2) has std 2/sqrt(3)
    return x.to(torch.float32)


# ---------------------------------------------------------------------------------------------------
# Batching in memory
# ---------------------------------------------------------------------------------------------------


class BatchLoader:
    """Yields (x float32 [B, C, H, W] in [-1, 1], y int64 [B] or None) by indexing in-memory tensors.

    The order of epoch e is a pure function of (seed, e): a permutation (or 0..N-1 if not shuffle),
    and, with hflip, a coin per image for a random horizontal flip (the DDPM paper's CIFAR-10
    augmentation; leave it off for digits). So a run resumes exactly from ``state_dict()``
    = {seed, epoch, batch}, and every DDP rank draws the same permutation and takes its own share:
    rank r gets positions r, r + world_size, ... (batch_size is per rank). All ranks yield the same
    number of batches (drop_last: the remainder is dropped; else the order is padded by wrapping).

    The loader is a cursor: iterating runs from the current (epoch, batch) to the end of that epoch
    and then moves to the next epoch, so ``for x, y in loader`` each epoch sees a new order, and a
    loop broken mid-epoch continues where it stopped. ``set_epoch(e)`` jumps to the start of epoch e.
    The seed is ``seed`` if given, else ``generator.initial_seed()``, else 0.
    """

    def __init__(
        self,
        dataset: ImageDataset,
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = True,
        hflip: bool = False,
        generator: torch.Generator | None = None,
        rank: int = 0,
        world_size: int = 1,
        *,
        seed: int | None = None,
    ):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.dataset = dataset
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
                f"{n} images give no full batch of {batch_size} per rank (world_size={world_size}); "
                f"use a smaller batch_size or drop_last=False"
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
        """This rank's image indices int64 [per_rank] for an epoch, and flip flags bool [per_rank]."""
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

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        epoch, start = self.epoch, self.batch
        if start >= len(self):  # stopped after the last batch of an epoch: go on with the next one
            epoch, start = epoch + 1, 0
        order, flips = self.epoch_plan(epoch)
        images, labels, bs = self.dataset.images, self.dataset.labels, self.batch_size
        for b in range(start, len(self)):
            index = order[b * bs:(b + 1) * bs]
            x = images.index_select(0, index)  # uint8 copy [B, C, H, W]
            if flips is not None:
                flip = flips[b * bs:(b + 1) * bs]
                x[flip] = x[flip].flip(-1)  # flip before the float conversion: 4x less memory traffic
            y = labels.index_select(0, index) if labels is not None else None
            self.epoch, self.batch = epoch, b + 1  # the state to save after training on this batch
            yield to_float(x), y
        self.epoch, self.batch = epoch + 1, 0

    def forever(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """Batches across epochs without end (for step-based training loops)."""
        while True:
            yield from self
