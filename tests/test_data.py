"""Datasets: fixed splits, normalisation from the training split only, readable errors."""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from nni_visplugin.data.datasets import DatasetError, load_dataset


def test_digits_splits_are_fixed_disjoint_and_test_free_by_default():
    a = load_dataset("digits")
    b = load_dataset("digits")
    assert a.test is None  # what the search uses never holds the test split
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10
    assert (a.train[0] == b.train[0]).all() and (a.val[1] == b.val[1]).all()
    full = load_dataset("digits", with_test=True)
    assert len(full.train[0]) + len(full.val[0]) + len(full.test[0]) == 1797
    rows = lambda t: {r.numpy().tobytes() for r in t[0]}  # noqa: E731
    assert not (rows(full.train) & rows(full.test)) and not (rows(full.val) & rows(full.test))
    assert abs(float(a.train[0].mean())) < 1e-4  # normalised with the training split's statistics
    # every class present in validation (stratified)
    assert set(a.val[1].tolist()) == set(range(10))


def test_max_train_samples_keeps_a_stratified_subset():
    s = load_dataset("digits", max_train_samples=300)
    assert abs(len(s.train[0]) - 300) <= 10
    counts = np.bincount(s.train[1].numpy())
    assert counts.min() >= 25


def _write_idx(path, array):
    header = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def _fake_fashion(directory, gz: bool, n=60, nt=20):
    rng = np.random.default_rng(0)
    sfx = ".gz" if gz else ""
    _write_idx(directory / f"train-images-idx3-ubyte{sfx}", rng.integers(0, 255, (n, 28, 28)))
    _write_idx(directory / f"train-labels-idx1-ubyte{sfx}", np.arange(n) % 10)
    _write_idx(directory / f"t10k-images-idx3-ubyte{sfx}", rng.integers(0, 255, (nt, 28, 28)))
    _write_idx(directory / f"t10k-labels-idx1-ubyte{sfx}", np.arange(nt) % 10)


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_idx_files(tmp_path, gz):
    _fake_fashion(tmp_path, gz)
    s = load_dataset("fashion-mnist", tmp_path, with_test=True)
    assert s.input_shape == (1, 28, 28) and s.num_classes == 10
    assert len(s.train[0]) + len(s.val[0]) == 60 and len(s.test[0]) == 20


def test_missing_and_truncated_files_name_the_path(tmp_path):
    with pytest.raises(DatasetError, match=str(tmp_path / "nowhere")):
        load_dataset("fashion-mnist", tmp_path / "nowhere")
    _fake_fashion(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte"):
        load_dataset("fashion-mnist", tmp_path)
    _fake_fashion(tmp_path, gz=False)
    f = tmp_path / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(DatasetError, match="truncated"):
        load_dataset("fashion-mnist", tmp_path)


def test_imagefolder_and_cifar_errors(tmp_path):
    from PIL import Image

    for c, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
        (tmp_path / "imgs" / f"class{c}").mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (20, 14), colour).save(tmp_path / "imgs" / f"class{c}" / f"{i}.png")
    s = load_dataset("imagefolder", tmp_path / "imgs", image_size=16, with_test=True)
    assert s.input_shape == (3, 16, 16) and s.num_classes == 2
    (tmp_path / "imgs" / "class0" / "bad.png").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="bad.png"):
        load_dataset("imagefolder", tmp_path / "imgs")
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("imagefolder", tmp_path / "none")
    with pytest.raises(DatasetError, match="CIFAR-10 not found"):
        load_dataset("cifar10", tmp_path)
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_dataset("mnist")


@pytest.mark.skipif(not __import__("os").path.isdir("/usr/share/datasets/fashion-mnist"),
                    reason="Debian's dataset-fashion-mnist is not installed (.ci/run installs it)")
def test_real_fashion_mnist_from_debian_package():
    s = load_dataset("fashion-mnist", with_test=True)
    assert s.input_shape == (1, 28, 28) and s.num_classes == 10
    assert len(s.train[0]) + len(s.val[0]) == 60000 and len(s.test[0]) == 10000
    assert np.bincount(s.test[1].numpy()).tolist() == [1000] * 10
