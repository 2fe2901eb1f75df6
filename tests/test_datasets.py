"""Tests for ddpm.datasets.

MNIST is read from the shipped data/mnist. Every other path (downloads, Fashion-MNIST, CIFAR-10,
image folders) runs on files these tests write in the real formats, served by a local http.server on
127.0.0.1: nothing touches the network.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import http.server
import io
import os
import pickle
import shutil
import socket
import struct
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm import datasets as D
from ddpm.datasets import (
    FASHION_MNIST,
    MNIST,
    TOY2D_NAMES,
    BatchLoader,
    Cifar10Source,
    DatasetError,
    DownloadError,
    IdxFile,
    IdxSource,
    ImageDataset,
    caption_templates,
    captions_for,
    download,
    load_cifar10,
    load_dataset,
    load_fashion_mnist,
    load_idx_dataset,
    load_image_folder,
    load_mnist,
    read_idx,
    restricted_unpickle,
    to_float,
    to_uint8,
    toy2d,
)

MNIST_DIR = D.DEFAULT_ROOT / "mnist"
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# ---------------------------------------------------------------------------------------------------
# Fixtures: a local HTTP server and an unreachable URL
# ---------------------------------------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        if self.path.endswith(".short"):  # promises more bytes than it sends, then hangs up
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"only ten b")
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture
def server(tmp_path):
    """(base URL, served folder) of an HTTP server on 127.0.0.1 serving tmp_path/www."""
    www = tmp_path / "www"
    www.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=www))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", www
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture
def dead_url():
    """A base URL on a port where nothing listens (connection refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ---------------------------------------------------------------------------------------------------
# Writers for the real file formats
# ---------------------------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file: 0x0000, type code, ndim, big-endian int32 dims, big-endian data."""
    codes = {"uint8": 0x08, "int8": 0x09, "int16": 0x0B, "int32": 0x0C, "float32": 0x0D, "float64": 0x0E}
    header = bytes([0, 0, codes[array.dtype.name], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def py2_pickle(obj) -> bytes:
    """Protocol-2 bytes shaped like Python 2's cPickle output, as in the real CIFAR-10 batches:
    str as BINSTRING, numpy arrays via numpy.core.multiarray._reconstruct with raw str data."""
    out = bytearray(b"\x80\x02")

    def put(o):
        if isinstance(o, dict):
            out.extend(b"}(")
            for k, v in o.items():
                put(k)
                put(v)
            out.extend(b"u")
        elif isinstance(o, list):
            out.extend(b"](")
            for v in o:
                put(v)
            out.extend(b"e")
        elif isinstance(o, tuple):
            out.extend(b"(")
            for v in o:
                put(v)
            out.extend(b"t")
        elif o is None:
            out.extend(b"N")
        elif isinstance(o, bool):
            out.extend(b"\x88" if o else b"\x89")
        elif isinstance(o, int):
            out.extend(b"J" + struct.pack("<i", o))
        elif isinstance(o, str | bytes):
            raw = o.encode("latin1") if isinstance(o, str) else o
            size = bytes([len(raw)]) if len(raw) < 256 else struct.pack("<I", len(raw))
            out.extend((b"U" if len(raw) < 256 else b"T") + size + raw)  # SHORT_BINSTRING / BINSTRING
        elif isinstance(o, np.ndarray):
            assert o.dtype == np.uint8
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n")
            put((0,))
            put("b")
            out.extend(b"tR(")  # _reconstruct(ndarray, (0,), 'b'), then its state:
            put(1)
            put(tuple(o.shape))
            out.extend(b"cnumpy\ndtype\n(")
            put("u1")
            put(0)
            put(1)
            out.extend(b"tR")
            put((3, "|", None, None, None, -1, -1, 0))
            out.extend(b"b")  # BUILD the dtype
            put(False)
            put(o.tobytes())
            out.extend(b"tb")  # BUILD the array
        else:
            raise TypeError(type(o))

    put(obj)
    out.extend(b".")
    return bytes(out)


def cifar_batches(n_per_batch: int = 6, n_test: int = 4, seed: int = 0) -> dict[str, dict]:
    rng = np.random.default_rng(seed)
    batches = {}
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        n = n_test if name == "test_batch" else n_per_batch
        batches[name] = {
            "batch_label": f"batch {i}",
            "labels": [int(v) for v in rng.integers(0, 10, n)],
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "filenames": [f"img_{i}_{j}.png" for j in range(n)],
        }
    return batches


def cifar_tarball(path: Path, files: dict[str, bytes]) -> Cifar10Source:
    """Write a cifar-10-python.tar.gz holding ``files`` and return a source with their own md5s."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return Cifar10Source(urls=(), md5=md5(path.read_bytes()),
                         batch_md5={name: md5(data) for name, data in files.items()})


def cifar_files(batches: dict[str, dict]) -> dict[str, bytes]:
    files = {name: py2_pickle(b) for name, b in batches.items()}
    meta = {"num_cases_per_batch": 10000, "label_names": CIFAR_NAMES, "num_vis": 3072}
    files["batches.meta"] = py2_pickle(meta)
    return files


class Evil:
    """Unpickling this runs a shell command (the classic pickle attack)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ---------------------------------------------------------------------------------------------------
# The shipped MNIST
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist_train():
    return load_mnist(split="train", download=False)


def test_mnist_train_matches_the_original(mnist_train):
    ds = mnist_train
    assert len(ds) == 60000
    assert ds.images.shape == (60000, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert ds.images.is_contiguous()
    assert ds.labels.dtype == torch.int64
    assert torch.bincount(ds.labels).tolist() == MNIST_TRAIN_COUNTS
    assert ds.label_names == ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
    assert (ds.name, ds.split, ds.channels, ds.image_size, ds.num_classes) == ("mnist", "train", 1, 28, 10)
    x = to_float(ds.images[:2000])
    assert x.dtype == torch.float32 and x.min() == -1.0 and x.max() == 1.0
    image, label = ds[0]
    assert image.shape == (1, 28, 28) and label.item() == 5  # the first MNIST training digit is a 5


def test_mnist_test_split_and_md5_cache():
    ds = load_mnist(split="test", download=False)
    assert ds.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(ds.labels).tolist() == MNIST_TEST_COUNTS
    x = to_float(ds.images)
    assert x.min() >= -1 and x.max() <= 1
    for f in MNIST.test:  # verified once, remembered for the file's size and mtime
        assert D._is_verified(MNIST_DIR / f"{f.filename}.gz", f.md5)


def test_load_dataset_by_name_and_unknown_names(tmp_path):
    ds = load_dataset("mnist", split="test", download=False)
    assert len(ds) == 10000 and ds.name == "mnist"
    with pytest.raises(DatasetError, match="mnist, fashion-mnist, cifar10"):
        load_dataset("imagenet")
    with pytest.raises(DatasetError, match="split"):
        load_mnist(split="validation")


def _copy_test_split(dst: Path, raw_images: bytes) -> None:
    dst.mkdir(exist_ok=True)
    shutil.copy(MNIST_DIR / "t10k-labels-idx1-ubyte.gz", dst)
    (dst / "t10k-images-idx3-ubyte").write_bytes(raw_images)  # raw (not gzipped) files work too


def test_flipped_byte_fails_md5(tmp_path):
    raw = bytearray(gzip.decompress((MNIST_DIR / "t10k-images-idx3-ubyte.gz").read_bytes()))
    _copy_test_split(tmp_path / "good", bytes(raw))
    assert len(load_mnist(tmp_path / "good", "test", download=False)) == 10000

    raw[16 + 14 * 28 + 14] ^= 0x01  # one pixel of the first image: the structure stays valid
    _copy_test_split(tmp_path / "bad", bytes(raw))
    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte: md5 .*expected 2646ac647ad5339dbf0828"):
        load_mnist(tmp_path / "bad", "test", download=False)
    # verify=False trusts the file: the structure checks still pass
    assert len(load_mnist(tmp_path / "bad", "test", download=False, verify=False)) == 10000


def test_truncated_files_give_clear_errors(tmp_path):
    raw = gzip.decompress((MNIST_DIR / "t10k-labels-idx1-ubyte.gz").read_bytes())
    short = tmp_path / "t10k-labels-idx1-ubyte"
    short.write_bytes(raw[:5000])
    with pytest.raises(DatasetError, match=r"t10k-labels-idx1-ubyte: truncated: 5000 bytes.*needs 10008"):
        read_idx(short)
    gz = tmp_path / "cut.gz"
    gz.write_bytes((MNIST_DIR / "t10k-labels-idx1-ubyte.gz").read_bytes()[:2000])
    with pytest.raises(DatasetError, match=r"cut.gz: the gzip data is truncated or corrupt"):
        read_idx(gz)
    header_only = tmp_path / "header"
    header_only.write_bytes(raw[:6])
    with pytest.raises(DatasetError, match="truncated inside the IDX header"):
        read_idx(header_only)
    extra = tmp_path / "extra"
    extra.write_bytes(raw + b"\0\0\0")
    with pytest.raises(DatasetError, match="3 unexpected bytes"):
        read_idx(extra)
    # through the loader, a truncated shipped-file copy names the file (before any md5 complaint)
    images = gzip.decompress((MNIST_DIR / "t10k-images-idx3-ubyte.gz").read_bytes())
    _copy_test_split(tmp_path / "m", images[:-1])
    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte: truncated"):
        load_mnist(tmp_path / "m", "test", download=False)


def test_wrong_magic_numbers(tmp_path):
    labels = gzip.decompress((MNIST_DIR / "t10k-labels-idx1-ubyte.gz").read_bytes())
    # a labels file where the images file should be: a valid IDX file, but the wrong one
    _copy_test_split(tmp_path / "m", labels)
    with pytest.raises(DatasetError, match=r"images-idx3-ubyte: wrong IDX magic number 2049.*expected 2051"):
        load_mnist(tmp_path / "m", "test", download=False)
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(DatasetError, match=r"junk: not an IDX file \(magic number 0x89504e47"):
        read_idx(junk)
    with pytest.raises(DatasetError, match="wrong IDX magic"):
        read_idx(MNIST_DIR / "t10k-labels-idx1-ubyte.gz", expected_magic=D.IDX_IMAGES_MAGIC)


def test_missing_files_without_download(tmp_path):
    with pytest.raises(DatasetError, match=r"(?s)download=True.*train-images-idx3-ubyte.gz.*train-labels"):
        load_mnist(tmp_path, download=False)


# ---------------------------------------------------------------------------------------------------
# Synthetic IDX files
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_synthetic(tmp_path, dtype, gz):
    rng = np.random.default_rng(1)
    array = (rng.normal(size=(3, 4, 5)) * 50).astype(dtype)
    data = idx_bytes(array)
    path = tmp_path / ("a.idx.gz" if gz else "a.idx")
    path.write_bytes(gzip.compress(data) if gz else data)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative and back.flags.writeable
    np.testing.assert_array_equal(back, array)


def tiny_idx_source(www: Path, mirrors: tuple[str, ...], n_train=50, n_test=20) -> tuple[IdxSource, dict]:
    """Synthetic MNIST-layout files (gzipped in www/) and a source with their own md5s."""
    rng = np.random.default_rng(0)
    arrays, files = {}, {}
    for split, n in (("train", n_train), ("test", n_test)):
        prefix = "train" if split == "train" else "t10k"
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        arrays[split] = (images, labels)
        pair = []
        for kind, array in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)):
            name = f"{prefix}-{kind}"
            raw = idx_bytes(array)
            gz = gzip.compress(raw, mtime=0)
            (www / f"{name}.gz").write_bytes(gz)
            pair.append(IdxFile(name, gz_md5=md5(gz), md5=md5(raw), count=n))
        files[split] = tuple(pair)
    source = IdxSource("tiny", mirrors, tuple(f"c{k}" for k in range(10)), files["train"], files["test"])
    return source, arrays


def test_synthetic_idx_dataset_downloads_and_loads(tmp_path, server, dead_url):
    base, www = server
    source, arrays = tiny_idx_source(www, (dead_url, base))  # the first mirror is down
    root = tmp_path / "tiny"
    for split in ("train", "test"):
        ds = load_idx_dataset(source, root, split, progress=False)
        images, labels = arrays[split]
        assert ds.images.shape == (len(images), 1, 28, 28)
        np.testing.assert_array_equal(ds.images[:, 0].numpy(), images)
        np.testing.assert_array_equal(ds.labels.numpy(), labels)
        assert ds.label_names == source.label_names
    assert leftovers(root) == sorted(f"{f.filename}.gz" for f in (*source.train, *source.test))
    # loading again needs no server
    no_mirror = dataclasses.replace(source, mirrors=(dead_url,))
    assert len(load_idx_dataset(no_mirror, root, "train", download=False)) == 50


def test_fashion_mnist_download(tmp_path, server):
    base, www = server
    tiny, arrays = tiny_idx_source(www, (base,))
    # Fashion-MNIST's own names and checks (no decompressed md5 known: the .gz md5 is checked)
    source = dataclasses.replace(
        FASHION_MNIST, mirrors=(base + "/",),
        train=tuple(dataclasses.replace(f, md5=None) for f in tiny.train),
        test=tuple(dataclasses.replace(f, md5=None) for f in tiny.test),
    )
    ds = load_fashion_mnist(tmp_path / "fashion-mnist", "test", source=source, progress=False)
    np.testing.assert_array_equal(ds.labels.numpy(), arrays["test"][1])
    assert ds.name == "fashion-mnist" and ds.label_names[0] == "t-shirt" and len(ds.label_names) == 10
    # a corrupted .gz on disk is caught by its md5
    path = tmp_path / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz"
    data = bytearray(path.read_bytes())
    data[-9] ^= 0xFF  # the last compressed byte: gzip or the md5 check complains, naming the file
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte.gz"):
        load_fashion_mnist(tmp_path / "fashion-mnist", "test", download=False, source=source)


def test_mnist_offline_message_and_no_partial_files(tmp_path, server, dead_url):
    base, www = server  # serves nothing: 404 for every file
    source = dataclasses.replace(MNIST, mirrors=(dead_url, base))
    root = tmp_path / "mnist"
    with pytest.raises(DatasetError) as info:
        load_mnist(root, "train", source=source, progress=False)
    message = str(info.value)
    assert f"{dead_url}/train-images-idx3-ubyte.gz: unreachable" in message
    assert f"{base}/train-images-idx3-ubyte.gz: HTTP 404" in message
    assert "offline" in message
    # names every file still needed, where to put it, and its md5
    assert str((root / "train-images-idx3-ubyte.gz").resolve()) in message
    assert str((root / "train-labels-idx1-ubyte.gz").resolve()) in message
    assert "f68b3c2dcbeaaa9fbdd348bbdeb94873" in message
    assert leftovers(root) == []


# ---------------------------------------------------------------------------------------------------
# download()
# ---------------------------------------------------------------------------------------------------


def test_download_tries_mirrors_and_verifies(tmp_path, server, dead_url):
    base, www = server
    good = os.urandom(300_000)
    (www / "good").mkdir()
    (www / "good" / "f.bin").write_bytes(good)
    (www / "corrupt").mkdir()
    (www / "corrupt" / "f.bin").write_bytes(good[:-1] + b"?")
    dest = tmp_path / "out" / "f.bin"
    urls = [f"{dead_url}/f.bin", f"{base}/missing/f.bin", f"{base}/corrupt/f.bin", f"{base}/good/f.bin"]
    assert download(urls, dest, md5(good), progress=False) == dest
    assert dest.read_bytes() == good
    assert leftovers(dest.parent) == ["f.bin"]
    # already there and valid: no network needed
    assert download([f"{dead_url}/f.bin"], dest, md5(good), progress=False) == dest
    # no checksum: accepted as served
    assert download([f"{base}/good/f.bin"], tmp_path / "nosum", None, progress=False).read_bytes() == good


def test_download_failure_leaves_nothing(tmp_path, server, dead_url):
    base, www = server
    (www / "corrupt.bin").write_bytes(b"not the file")
    dest = tmp_path / "out" / "f.bin"
    urls = [f"{dead_url}/f.bin", f"{base}/missing.bin", f"{base}/corrupt.bin", f"{base}/x.short"]
    with pytest.raises(DownloadError) as info:
        download(urls, dest, md5(b"the file"), progress=False)
    assert [u for u, _ in info.value.failures] == urls
    reasons = [r for _, r in info.value.failures]
    assert reasons[0].startswith("unreachable")
    assert reasons[1] == "HTTP 404 File not found"
    assert reasons[2].startswith("md5 mismatch")
    assert "IncompleteRead" in reasons[3] or "incomplete download" in reasons[3]
    message = str(info.value)
    assert all(u in message for u in urls)
    assert f"place it at {dest.resolve()} (md5 {md5(b'the file')})" in message
    assert leftovers(dest.parent) == []  # no partial or temporary file


def test_download_replaces_a_corrupt_file_atomically(tmp_path, server):
    base, www = server
    (www / "f.bin").write_bytes(b"fresh")
    dest = tmp_path / "f.bin"
    dest.write_bytes(b"stale")
    with pytest.raises(DownloadError):
        download([f"{base}/nope"], dest, md5(b"fresh"), progress=False)
    assert dest.read_bytes() == b"stale"  # a failed download never touches the old file
    download([f"{base}/f.bin"], dest, md5(b"fresh"), progress=False)
    assert dest.read_bytes() == b"fresh"


# ---------------------------------------------------------------------------------------------------
# CIFAR-10 and the restricted unpickler
# ---------------------------------------------------------------------------------------------------


def test_cifar10_synthetic_tarball(tmp_path, server, dead_url):
    base, www = server
    batches = cifar_batches()
    source = cifar_tarball(www / "cifar-10-python.tar.gz", cifar_files(batches))
    source = dataclasses.replace(source, urls=(f"{dead_url}/c.tgz", f"{base}/cifar-10-python.tar.gz"))
    root = tmp_path / "data"
    train = load_cifar10(root, "train", source=source, progress=False)
    assert train.images.shape == (30, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.images.is_contiguous()
    assert train.label_names == tuple(CIFAR_NAMES) and train.name == "cifar10"
    expected = np.concatenate([batches[f"data_batch_{k}"]["data"] for k in range(1, 6)])
    labels = sum((batches[f"data_batch_{k}"]["labels"] for k in range(1, 6)), [])
    assert train.labels.tolist() == labels
    # row layout: 1024 red values, then green, then blue, each 32x32 row-major
    img = train.images[7]
    row = expected[7]
    assert img[0, 0, 0] == row[0] and img[0, 0, 1] == row[1] and img[0, 1, 0] == row[32]
    assert img[1, 0, 0] == row[1024] and img[2, 31, 31] == row[3071]
    np.testing.assert_array_equal(train.images.reshape(30, -1).numpy(), expected)
    # extracted files stay; the test split loads without the server
    (www / "cifar-10-python.tar.gz").unlink()
    test = load_cifar10(root, "test", source=source, progress=False)
    assert test.images.shape == (4, 3, 32, 32) and test.labels.tolist() == batches["test_batch"]["labels"]
    assert sorted(leftovers(root)) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]
    # a batch changed after extraction is caught by its md5 before it is unpickled
    batch = root / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(batch.read_bytes()[:-2] + b"x.")
    with pytest.raises(DatasetError, match=r"test_batch: md5 mismatch"):
        load_cifar10(root, "test", source=source, download=False)


def test_cifar10_archive_md5_checked_before_extraction(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    cifar_tarball(root / "cifar-10-python.tar.gz", cifar_files(cifar_batches()))
    # the real checksums do not match this archive: nothing may be extracted or unpickled
    with pytest.raises(DatasetError, match=r"cifar-10-python.tar.gz: md5 mismatch.*c58f30108f718f92721af3b9"):
        load_cifar10(root, download=False)
    assert not (root / "cifar-10-batches-py").exists()
    with pytest.raises(DatasetError, match=r"place cifar-10-python.tar.gz \(md5 c58f3010"):
        load_cifar10(tmp_path / "empty", download=False)


def test_cifar10_offline(tmp_path, dead_url):
    source = dataclasses.replace(D.CIFAR10, urls=(f"{dead_url}/cifar-10-python.tar.gz",))
    with pytest.raises(DatasetError, match=r"(?s)unreachable.*offline.*cifar-10-python.tar.gz"):
        load_cifar10(tmp_path, source=source, progress=False)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_restricted_unpickle_reads_plain_values_and_arrays(protocol):
    obj = {"data": np.arange(12, dtype=np.uint8).reshape(3, 4), "f": np.linspace(0, 1, 5),
           "labels": [1, 2, 3], "name": "x", "raw": b"\x00\xff", "t": (1.5, None, True)}
    back = restricted_unpickle(pickle.dumps(obj, protocol=protocol))
    np.testing.assert_array_equal(back["data"], obj["data"])
    np.testing.assert_array_equal(back["f"], obj["f"])
    plain = ("labels", "name", "raw", "t")
    assert {k: back[k] for k in plain} == {k: obj[k] for k in plain}


def test_py2_pickle_writer_matches_numpy():
    array = np.arange(3072 * 2, dtype=np.uint8).reshape(2, 3072)
    back = restricted_unpickle(py2_pickle({"data": array, "labels": [3, 4]}))
    np.testing.assert_array_equal(back["data"], array)
    assert back["labels"] == [3, 4]


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, protocol):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"data": Evil(marker)}, protocol=protocol)
    with pytest.raises(DatasetError, match=r"refused to unpickle.*system.*not allowed"):
        restricted_unpickle(payload, "evil.pkl")
    assert not marker.exists()
    for other in (pickle.dumps(eval, protocol=protocol), pickle.dumps(np.array([marker], dtype=object))):
        with pytest.raises(DatasetError, match="refused"):
            restricted_unpickle(other)


def test_malicious_cifar_batch_with_matching_md5_runs_nothing(tmp_path, server):
    """Even when the checksum matches (a poisoned mirror and manifest), the unpickler refuses."""
    base, www = server
    marker = tmp_path / "pwned"
    files = cifar_files(cifar_batches())
    files["data_batch_3"] = pickle.dumps({"data": Evil(marker), "labels": []}, protocol=2)
    source = cifar_tarball(www / "cifar-10-python.tar.gz", files)
    source = dataclasses.replace(source, urls=(f"{base}/cifar-10-python.tar.gz",))
    with pytest.raises(DatasetError, match=r"data_batch_3: refused to unpickle.*system"):
        load_cifar10(tmp_path / "data", source=source, progress=False)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------------
# Image folders
# ---------------------------------------------------------------------------------------------------


def _stripes(w: int, h: int, mode: str = "RGB"):
    """Left third red, middle green, right third blue (or columns of a gray ramp for mode 'L')."""
    from PIL import Image

    array = np.zeros((h, w, 3), dtype=np.uint8)
    array[:, : w // 3, 0] = 255
    array[:, w // 3: 2 * w // 3, 1] = 255
    array[:, 2 * w // 3:, 2] = 255
    return Image.fromarray(array).convert(mode)


def test_image_folder_with_classes(tmp_path):
    (tmp_path / "cats").mkdir()
    (tmp_path / "dogs" / "nested").mkdir(parents=True)
    _stripes(90, 30).save(tmp_path / "cats" / "wide.png")
    _stripes(30, 60, "RGBA").save(tmp_path / "cats" / "tall.png")
    _stripes(40, 40, "L").save(tmp_path / "dogs" / "nested" / "gray.jpg")
    (tmp_path / "dogs" / "notes.txt").write_text("not an image")
    ds = load_image_folder(tmp_path, image_size=12)
    assert ds.images.shape == (3, 3, 12, 12) and ds.images.dtype == torch.uint8
    assert ds.label_names == ("cats", "dogs") and ds.labels.tolist() == [0, 0, 1]
    wide = ds.images[1]  # sorted: tall.png, wide.png; the wide image is cropped to its green middle
    assert wide[1].float().mean() > 240 and wide[0].float().mean() < 15 and wide[2].float().mean() < 15
    gray = load_image_folder(tmp_path, image_size=8, channels=1)
    assert gray.images.shape == (3, 1, 8, 8) and gray.channels == 1 and gray.image_size == 8


def test_image_folder_flat_and_errors(tmp_path):
    for i in range(3):
        _stripes(20 + i, 20).save(tmp_path / f"{i}.png")
    ds = load_image_folder(tmp_path, image_size=16, channels=3)
    assert len(ds) == 3 and ds.labels is None and ds.label_names == ()
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match="broken.jpg: cannot read"):
        load_image_folder(tmp_path, image_size=16)
    (tmp_path / "broken.jpg").unlink()
    (tmp_path / "sub").mkdir()
    _stripes(20, 20).save(tmp_path / "sub" / "x.png")
    with pytest.raises(DatasetError, match="both directly inside it"):
        load_image_folder(tmp_path, image_size=16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images found"):
        load_image_folder(tmp_path / "empty", image_size=16)
    with pytest.raises(ValueError, match="channels"):
        load_image_folder(tmp_path, image_size=16, channels=2)


# ---------------------------------------------------------------------------------------------------
# The common shape, captions, toy sets
# ---------------------------------------------------------------------------------------------------


def test_to_float_and_back():
    u = torch.arange(256, dtype=torch.uint8)
    x = to_float(u)
    assert x[0] == -1 and x[-1] == 1 and x.dtype == torch.float32
    assert (x.double() - (u.double() / 127.5 - 1)).abs().max() < 1e-6
    assert torch.equal(to_uint8(x), u)
    assert to_uint8(torch.tensor([-3.0, 3.0, 0.0])).tolist() == [0, 255, 128]
    assert torch.equal(to_float(x), x) and to_float(x.double()).dtype == torch.float32  # floats pass through
    with pytest.raises(TypeError):
        to_float(u.to(torch.int16))


def test_image_dataset_checks_and_subset():
    images = torch.zeros(4, 1, 2, 2, dtype=torch.uint8)
    ds = ImageDataset(images, torch.tensor([0, 1, 2, 3]), ("a", "b", "c", "d"), "toy")
    assert len(ds.subset([1, 3])) == 2 and ds.subset(slice(0, 3)).labels.tolist() == [0, 1, 2]
    with pytest.raises(TypeError):
        ImageDataset(images.float())
    with pytest.raises(ValueError):
        ImageDataset(images, torch.tensor([0, 1]))


def test_captions():
    names = D.MNIST_LABEL_NAMES
    assert "a handwritten seven" in caption_templates("seven", 7, "mnist")
    assert "the digit 7" in caption_templates("seven", 7, "mnist")
    assert "number seven" in caption_templates("seven", 7, "mnist")
    labels = torch.tensor([7, 0, 3] * 20)
    caps = captions_for(names, labels, torch.Generator().manual_seed(0))
    assert len(caps) == 60
    for caption, y in zip(caps, labels.tolist(), strict=True):
        assert caption in caption_templates(names[y], y, "mnist")
    assert len(set(caps[0::3])) > 1  # templates are drawn at random
    assert caps == captions_for(names, labels, torch.Generator().manual_seed(0))
    photo = caption_templates("airplane", 0, "cifar10")
    assert "a photo of an airplane" in photo
    assert "a photo of a truck" in caption_templates("truck", 9, "cifar10")
    ships = captions_for(CIFAR_NAMES, torch.tensor([8] * 5))
    assert all(c in caption_templates("ship", 8, "") for c in ships)


def test_toy2d():
    for name in TOY2D_NAMES:
        x = toy2d(name, 4000, seed=1)
        assert x.shape == (4000, 2) and x.dtype == torch.float32
        assert torch.equal(x, toy2d(name, 4000, seed=1)) and not torch.equal(x, toy2d(name, 4000, seed=2))
        assert ((x.std(0) > 0.6) & (x.std(0) < 1.4)).all() and x.abs().max() < 4
    board = toy2d("checkerboard", 4000)
    cells = torch.floor(board / (3**0.5 / 2) + 2).long()
    assert ((cells[:, 0] + cells[:, 1]) % 2 == 0).all()  # only the dark squares
    with pytest.raises(ValueError, match="swiss-roll, moons, 8gaussians, checkerboard"):
        toy2d("spiral", 10)


# ---------------------------------------------------------------------------------------------------
# BatchLoader
# ---------------------------------------------------------------------------------------------------


def indexed_dataset(n: int = 103) -> ImageDataset:
    """Image i holds the number i (mod 256) in its first pixel and an asymmetric row to test flips."""
    images = torch.zeros(n, 1, 2, 3, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    images[:, 0, 1] = torch.tensor([10, 20, 30], dtype=torch.uint8)
    return ImageDataset(images, torch.arange(n), tuple(map(str, range(n))), "indexed")


def ids(x: torch.Tensor) -> list[int]:
    """Recover image indices from a (possibly flipped) batch."""
    u = to_uint8(x)
    return torch.maximum(u[:, 0, 0, 0], u[:, 0, 0, 2]).tolist()


def test_loader_epoch_covers_everything_once():
    ds = indexed_dataset(100)
    loader = BatchLoader(ds, batch_size=10, shuffle=True, drop_last=True, seed=3)
    assert len(loader) == 10
    seen = []
    for x, y in loader:
        assert x.shape == (10, 1, 2, 3) and x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.min() >= -1 and x.max() <= 1
        assert ids(x) == y.tolist()  # labels follow their images
        seen += y.tolist()
    assert sorted(seen) == list(range(100)) and seen != list(range(100))
    second = [v for _, y in loader for v in y.tolist()]  # the cursor moved to epoch 1: a new order
    assert sorted(second) == list(range(100)) and second != seen
    assert [v for _, y in BatchLoader(ds, 10, shuffle=False) for v in y.tolist()] == list(range(100))


def test_loader_drop_last_and_lengths():
    ds = indexed_dataset(103)
    assert len(BatchLoader(ds, 10)) == 10
    assert sum(len(y) for _, y in BatchLoader(ds, 10, drop_last=False)) == 103
    assert [len(y) for _, y in BatchLoader(ds, 10, drop_last=False)][-1] == 3
    with pytest.raises(ValueError, match="no full batch"):
        BatchLoader(ds, 200)
    unlabeled = ImageDataset(ds.images)
    assert all(y is None for _, y in BatchLoader(unlabeled, 50))


def test_loader_is_a_pure_function_of_seed_and_epoch_and_resumes_exactly():
    ds = indexed_dataset(103)
    a = BatchLoader(ds, 8, hflip=True, generator=torch.Generator().manual_seed(11))
    assert a.seed == 11
    run = []
    for _ in range(2):  # two full epochs, remembering the state after each batch
        for x, y in a:
            run.append((a.state_dict(), x.clone(), y.clone()))
    assert a.state_dict() == {"seed": 11, "epoch": 2, "batch": 0}
    k = len(run) // 2 + 3  # resume in the middle of the second epoch
    b = BatchLoader(ds, 8, hflip=True)  # seed comes from the saved state
    b.load_state_dict(run[k][0])
    rest = [(x, y) for x, y in b]
    assert len(rest) == len(run) - k - 1
    for (x, y), (_, x_ref, y_ref) in zip(rest, run[k + 1:], strict=True):
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
    c = BatchLoader(ds, 8, hflip=True, seed=11)
    c.set_epoch(1)
    assert torch.equal(next(iter(c))[1], run[len(run) // 2][2])
    # a loop broken after an epoch's last batch starts the next epoch, not an empty one
    d = BatchLoader(ds, 8, seed=11)
    for i, _ in enumerate(d):
        if i == len(d) - 1:
            break
    assert len(list(d)) == len(d) and d.epoch == 2


def test_loader_shards_for_ddp():
    ds = indexed_dataset(103)
    for drop_last in (True, False):
        shards = [BatchLoader(ds, 5, drop_last=drop_last, rank=r, world_size=3, seed=4) for r in range(3)]
        assert len({len(s) for s in shards}) == 1  # every rank takes the same number of steps
        got = [[v for _, y in s for v in y.tolist()] for s in shards]
        flat = sum(got, [])
        if drop_last:
            assert len(flat) == len(set(flat)) == 3 * 30  # disjoint: 34 per rank -> 6 batches of 5
        else:
            assert set(flat) == set(range(103)) and len(flat) == 3 * 35  # padded by wrapping
    with pytest.raises(ValueError, match="rank"):
        BatchLoader(ds, 5, rank=3, world_size=3)


def test_loader_hflip():
    ds = indexed_dataset(100)
    x = torch.cat([x for x, _ in BatchLoader(ds, 50, shuffle=False, hflip=True, seed=0)])
    rows = to_uint8(x)[:, 0, 1].tolist()
    flipped = sum(r == [30, 20, 10] for r in rows)
    assert sum(r == [10, 20, 30] for r in rows) + flipped == 100 and 25 < flipped < 75
    plain = torch.cat([x for x, _ in BatchLoader(ds, 50, shuffle=False)])
    assert torch.equal(plain, to_float(ds.images))


def expected_point_batches(points, batch_size, seed, epoch, rank=0, world_size=1):
    """The documented rule, written out: permute with Generator().manual_seed(seed + epoch), take every
    world_size-th position from rank on, cut into full batches (the remainder is dropped)."""
    order = torch.randperm(len(points), generator=torch.Generator().manual_seed(seed + epoch))
    mine = order[rank::world_size]
    return [points[mine[b * batch_size:(b + 1) * batch_size]]
            for b in range(len(points) // (batch_size * world_size))]


def test_loader_serves_points_by_the_permutation_rule():
    points = toy2d("moons", 103, seed=5)
    for world_size in (1, 3):
        for rank in range(world_size):
            loader = BatchLoader(points, 8, seed=9, rank=rank, world_size=world_size)
            for epoch in range(3):  # the cursor moves on to a new order each epoch
                got = list(loader)
                want = expected_point_batches(points, 8, 9, epoch, rank, world_size)
                assert len(got) == len(want) == len(loader) == 103 // (8 * world_size)
                for (x, y), ref in zip(got, want, strict=True):
                    assert y is None and x.dtype == torch.float32 and torch.equal(x, ref)
            assert loader.state_dict() == {"seed": 9, "epoch": 3, "batch": 0}
    with pytest.raises(ValueError, match="horizontal"):
        BatchLoader(points, 8, hflip=True)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        BatchLoader(points.reshape(103, 2, 1), 8)
    with pytest.raises(ValueError, match="103 points give no full batch"):
        BatchLoader(points, 200)


def test_loader_over_points_resumes_mid_epoch():
    points = toy2d("8gaussians", 100, seed=2)
    a = BatchLoader(points, 7, seed=4, rank=1, world_size=2)
    batches = a.forever()
    run = []
    for _ in range(3 * len(a)):  # three epochs, with the state after each batch
        x, _ = next(batches)
        run.append((a.state_dict(), x))
    k = len(a) + 2  # in the middle of the second epoch
    b = BatchLoader(points, 7, rank=1, world_size=2)
    b.load_state_dict(run[k][0])
    assert b.state_dict() == {"seed": 4, "epoch": 1, "batch": 3}
    rest = b.forever()
    for _, x_ref in run[k + 1:]:
        assert torch.equal(next(rest)[0], x_ref)


def test_loader_keeps_up_with_training(mnist_train):
    """Batches of 128 MNIST digits with flips cost well under a millisecond each (thousands per second
    on a 2-core CPU); the bound is loose because the machine running the tests may be busy."""
    loader = BatchLoader(mnist_train, 128, hflip=True, seed=0)
    assert len(loader) == 468
    batches = iter(loader)
    next(batches)
    start = time.perf_counter()
    for _ in range(50):
        x, y = next(batches)
    assert x.shape == (128, 1, 28, 28) and y.shape == (128,)
    assert time.perf_counter() - start < 5.0
