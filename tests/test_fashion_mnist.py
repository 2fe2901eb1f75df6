"""Fashion-MNIST: where it is found (data/fashion-mnist, then Debian's package), how it is checked (the md5 of the
decompressed bytes, so a recompressed copy passes and a changed one does not), and the real files where Debian's
package is installed (`apt-get install dataset-fashion-mnist`; .ci/run installs it)."""

import dataclasses
import gzip

import numpy as np
import pytest
import torch
from test_datasets import dead_url, idx_bytes, md5, server, tiny_idx_source  # noqa: F401 (fixtures)

import ddpm.datasets.idx as idx
from ddpm.datasets import DatasetError, load_dataset, load_fashion_mnist
from ddpm.datasets.idx import FASHION_MNIST, SYSTEM_FASHION_MNIST

HAVE_DEBIAN = all((SYSTEM_FASHION_MNIST / f"{f.filename}.gz").is_file()
                  for f in (*FASHION_MNIST.train, *FASHION_MNIST.test))
needs_debian = pytest.mark.skipif(
    not HAVE_DEBIAN, reason=f"Fashion-MNIST not installed in {SYSTEM_FASHION_MNIST} "
                            "(as root: apt-get update && apt-get install dataset-fashion-mnist)")


@pytest.fixture
def places(tmp_path, monkeypatch):
    """(the repository's data folder, the system folder), both empty, and the tiny source's files to copy in."""
    data, system = tmp_path / "data", tmp_path / "system"
    system.mkdir(parents=True)
    monkeypatch.setattr(idx, "DEFAULT_ROOT", data)
    www = tmp_path / "files"
    www.mkdir()
    tiny, arrays = tiny_idx_source(www, ())
    source = dataclasses.replace(FASHION_MNIST, mirrors=(), train=tiny.train, test=tiny.test)
    return data, system, www, source, arrays


def test_found_in_the_system_folder_then_the_data_folder_first(places):
    data, system, www, source, arrays = places
    for f in source.test:
        (system / f"{f.filename}.gz").write_bytes((www / f"{f.filename}.gz").read_bytes())
    ds = load_fashion_mnist(None, "test", download=False, source=source, system_root=system)
    np.testing.assert_array_equal(ds.labels.numpy(), arrays["test"][1])
    assert ds.label_names[7] == "sneaker"
    # a copy in data/fashion-mnist wins: make it differ (raw, not gzipped) and check that it is the one read
    (data / "fashion-mnist").mkdir(parents=True)
    images, labels = arrays["test"]
    swapped = (labels + 1) % 10
    test = (dataclasses.replace(source.test[0]), dataclasses.replace(source.test[1], md5=md5(idx_bytes(swapped))))
    (data / "fashion-mnist" / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(images))
    (data / "fashion-mnist" / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(swapped))
    ds = load_fashion_mnist(None, "test", download=False, source=dataclasses.replace(source, test=test),
                            system_root=system)
    np.testing.assert_array_equal(ds.labels.numpy(), swapped)


def test_missing_everywhere_says_both_ways_in_one_line(places, dead_url):  # noqa: F811
    data, system, _, source, _ = places
    with pytest.raises(DatasetError) as info:
        load_fashion_mnist(None, "train", download=False, source=source, system_root=system)
    message = str(info.value)
    assert "\n" not in message and "apt-get install dataset-fashion-mnist" in message
    assert str(data / "fashion-mnist") in message and str(system) in message and "internet" in message
    offline = dataclasses.replace(source, mirrors=(dead_url,))
    with pytest.raises(DatasetError) as info:
        load_fashion_mnist(None, "train", source=offline, system_root=system, progress=False)
    message = str(info.value)
    assert "\n" not in message and "download failed (unreachable" in message and "apt-get install" in message
    assert not any(p.is_file() for p in (data / "fashion-mnist").glob("*"))  # no partial file left behind


def test_downloads_into_the_data_folder_when_found_nowhere(places, server):  # noqa: F811
    data, system, _, source, arrays = places
    base, www = server
    tiny, arrays = tiny_idx_source(www, (base,))
    source = dataclasses.replace(source, mirrors=(base + "/",), train=tiny.train, test=tiny.test)
    ds = load_fashion_mnist(None, "test", source=source, system_root=system, progress=False)
    np.testing.assert_array_equal(ds.labels.numpy(), arrays["test"][1])
    assert sorted(p.name for p in (data / "fashion-mnist").iterdir()) == ["t10k-images-idx3-ubyte.gz",
                                                                         "t10k-labels-idx1-ubyte.gz"]


@needs_debian
def test_debian_files_are_the_real_dataset():
    """6,000 images per class in train and 1,000 in test (the dataset's published counts), 28 x 28; loading
    checked the md5 of every decompressed file against REFERENCE.md's."""
    for split, per_class in (("train", 6000), ("test", 1000)):
        ds = load_dataset("fashion-mnist", split)
        assert ds.images.shape == (10 * per_class, 1, 28, 28) and ds.images.dtype == torch.uint8
        assert torch.bincount(ds.labels, minlength=10).tolist() == [per_class] * 10
        assert ds.label_names == ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                                  "sneaker", "bag", "ankle boot")


@needs_debian
def test_a_recompressed_copy_passes_and_a_changed_one_does_not(tmp_path):
    """The check is on the decompressed bytes: the same labels gzipped anew (another .gz md5, as Debian's are
    against upstream's) load; one label changed is refused, naming the file."""
    raw = gzip.decompress((SYSTEM_FASHION_MNIST / "t10k-labels-idx1-ubyte.gz").read_bytes())
    images = (SYSTEM_FASHION_MNIST / "t10k-images-idx3-ubyte.gz").read_bytes()
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(images)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(raw, compresslevel=1, mtime=12345))
    ds = load_fashion_mnist(tmp_path, "test", download=False)
    assert len(ds) == 10000
    changed = bytearray(raw)
    changed[8] = (changed[8] + 1) % 10  # the first label, still a valid class
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(changed)))
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte.gz: md5 of the decompressed file"):
        load_fashion_mnist(tmp_path, "test", download=False)


def test_class_names_as_the_sample_command_reads_them():
    """--class takes Fashion-MNIST's names however a user types them; a wrong one lists the classes."""
    from types import SimpleNamespace

    from ddpm.cli.common import UsageError, class_index
    loaded = SimpleNamespace(label_names=FASHION_MNIST.label_names, cond="class",
                             config=SimpleNamespace(model=SimpleNamespace(num_classes=10)))
    for typed, k in (("sneaker", 7), ("Sneaker", 7), ("ankle boot", 9), ("ankle-boot", 9), ("Ankle_Boot", 9),
                     ("T-shirt", 0), ("tshirt", 0), ("3", 3)):
        assert class_index(typed, loaded) == k, typed
    for typed in ("shoe", "-", ""):
        with pytest.raises(UsageError, match="7=sneaker"):
            class_index(typed, loaded)


@needs_debian
def test_the_shipped_classifier_reads_real_test_images_as_data_readme_says():
    """data/classifiers/fashion-mnist.pt, the judge of evaluate: 89.63% on the 10,000 real test images."""
    from ddpm.metrics.classifier import classifier_features, load_or_train_classifier
    clf, info = load_or_train_classifier(dataset="fashion-mnist")
    assert not info["trained_now"] and abs(info["test_accuracy"] - 0.8963) < 1e-4
    test = load_dataset("fashion-mnist", "test")
    _, logits = classifier_features(clf, test)
    assert abs((logits.argmax(1) == test.labels).double().mean().item() - info["test_accuracy"]) < 1e-4
