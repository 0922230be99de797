"""Datasets -> train / validation (/ test) splits as normalised tensors.

The split is fixed by ``split_seed`` and independent of the search seed, so every trial of an
experiment sees the same validation data. ``load_dataset(..., with_test=False)`` is what the
search uses: the test split is not even read, so it cannot leak into search or tuning.
"""
from __future__ import annotations

import gzip
import logging
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from nni_visplugin.utils.errors import UserError

__all__ = ["DATASETS", "CHANNELS", "Splits", "load_dataset", "DatasetError"]

_logger = logging.getLogger(__name__)

DATASETS = ("digits", "fashion-mnist", "cifar10", "imagefolder")
# Channels of the images each dataset yields, known before it is read. An image folder is read as
# RGB whatever its files hold: a grayscale image comes out with its one channel repeated three times.
CHANNELS = {"digits": 1, "fashion-mnist": 1, "cifar10": 3, "imagefolder": 3}
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


class DatasetError(UserError, ValueError):
    """A dataset cannot be read; the message names the path or the setting to fix."""


@dataclass
class Splits:
    name: str
    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor] | None
    num_classes: int
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train[0].shape[1:]
        return int(c), int(h), int(w)


def _stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (rest, held_out) with ``fraction`` of every class held out."""
    rng = np.random.default_rng(seed)
    rest, held = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        k = int(round(len(idx) * fraction))
        held.append(idx[:k])
        rest.append(idx[k:])
    return np.sort(np.concatenate(rest)), np.sort(np.concatenate(held))


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            zero, dtype, ndim = struct.unpack(">HBB", f.read(4))
            if zero != 0 or dtype != 0x08:
                raise DatasetError(f"{path} is not an unsigned-byte IDX file")
            shape = struct.unpack(">" + "I" * ndim, f.read(4 * ndim))
            data = np.frombuffer(f.read(), dtype=np.uint8)
    except (OSError, EOFError, struct.error) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from None
    if data.size != int(np.prod(shape)):
        raise DatasetError(f"{path} is truncated: expected {int(np.prod(shape))} values, found {data.size}")
    return data.reshape(shape)


def _find(directory: Path, stem: str) -> Path:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DatasetError(f"missing {directory / stem}[.gz]; install Debian's dataset-fashion-mnist "
                       f"or pass --data-dir to a directory holding the Fashion-MNIST IDX files")


def _load_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]
    y = d.target.astype(np.int64)
    # 20% of every class is the test split, fixed once for everyone (seed 0).
    rest, test = _stratified_split(y, 0.2, seed=0)
    return x[rest], y[rest], x[test], y[test]


def _download(name: str, root: Path) -> Path:
    """Opt-in (``download=True``) fetch through torchvision, for users who are online."""
    from torchvision import datasets

    root.mkdir(parents=True, exist_ok=True)
    _logger.info("downloading %s into %s", name, root)
    if name == "fashion-mnist":
        for train in (True, False):
            datasets.FashionMNIST(str(root), train=train, download=True)
        return root / "FashionMNIST" / "raw"
    for train in (True, False):
        datasets.CIFAR10(str(root), train=train, download=True)
    return root


def _load_fashion_mnist(data_dir: Path, download: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if download and not (data_dir / "train-images-idx3-ubyte.gz").exists() \
            and not (data_dir / "train-images-idx3-ubyte").exists():
        data_dir = _download("fashion-mnist", data_dir)
    if not data_dir.is_dir():
        raise DatasetError(f"Fashion-MNIST directory {data_dir} does not exist; install Debian's "
                           f"dataset-fashion-mnist or pass --data-dir")
    x = _read_idx(_find(data_dir, "train-images-idx3-ubyte")).astype(np.float32)[:, None] / 255.0
    y = _read_idx(_find(data_dir, "train-labels-idx1-ubyte")).astype(np.int64)
    xt = _read_idx(_find(data_dir, "t10k-images-idx3-ubyte")).astype(np.float32)[:, None] / 255.0
    yt = _read_idx(_find(data_dir, "t10k-labels-idx1-ubyte")).astype(np.int64)
    if len(x) != len(y) or len(xt) != len(yt):
        raise DatasetError(f"Fashion-MNIST files in {data_dir} disagree on the number of images and labels")
    return x, y, xt, yt


def _load_cifar10(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from torchvision.datasets import CIFAR10

    try:
        train = CIFAR10(str(root), train=True, download=False)
        test = CIFAR10(str(root), train=False, download=False)
    except RuntimeError as exc:
        raise DatasetError(f"CIFAR-10 not found under {root} ({exc}); pass --data-dir to the directory holding "
                           f"cifar-10-batches-py") from None
    to_x = lambda d: d.data.astype(np.float32).transpose(0, 3, 1, 2) / 255.0  # noqa: E731
    return to_x(train), np.asarray(train.targets, np.int64), to_x(test), np.asarray(test.targets, np.int64)


def _load_imagefolder(root: Path, image_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list]:
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist")
    tf = transforms.Compose([transforms.Resize((image_size, image_size)), transforms.ToTensor()])

    def read(directory: Path) -> tuple[np.ndarray, np.ndarray, list]:
        try:
            ds = ImageFolder(str(directory), transform=tf, loader=lambda p: _open_rgb(p))
        except (FileNotFoundError, RuntimeError) as exc:
            raise DatasetError(f"cannot read image folder {directory}: {exc}") from None
        xs, ys = [], []
        for i in range(len(ds)):
            try:
                img, label = ds[i]
            except Exception as exc:
                raise DatasetError(f"cannot read image {ds.samples[i][0]}: {exc}") from None
            xs.append(img.numpy())
            ys.append(label)
        return np.stack(xs).astype(np.float32), np.asarray(ys, np.int64), ds.classes

    if (root / "train").is_dir() and (root / "test").is_dir():
        x, y, classes = read(root / "train")
        xt, yt, test_classes = read(root / "test")
        if test_classes != classes:
            raise DatasetError(f"{root}/train and {root}/test have different class folders")
        return x, y, xt, yt, classes
    x, y, classes = read(root)
    rest, test = _stratified_split(y, 0.2, seed=0)
    return x[rest], y[rest], x[test], y[test], classes


def _open_rgb(path: str):
    from PIL import Image

    with open(path, "rb") as f:
        return Image.open(f).convert("RGB")


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, *, val_fraction: float = 0.2,
                 max_train_samples: int = 0, image_size: int = 32, split_seed: int = 0,
                 with_test: bool = False, download: bool = False) -> Splits:
    """Load ``name`` into normalised tensors split into train / val (/ test).

    ``val_fraction`` of the training data (stratified, fixed by ``split_seed``) is the validation
    split; ``max_train_samples`` > 0 keeps a stratified subset of the rest (cheap searches on large
    datasets). Mean and standard deviation are measured on the training split only. ``download``
    lets torchvision fetch Fashion-MNIST or CIFAR-10 into ``data_dir`` when they are missing.
    """
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if not 0 < val_fraction < 1:
        raise DatasetError(f"val_fraction must be in (0, 1), got {val_fraction}")
    classes = None
    if name == "digits":
        x, y, xt, yt = _load_digits()
    elif name == "fashion-mnist":
        from nni_visplugin.utils.files import cache_dir

        default = cache_dir() / "fashion-mnist" if download else FASHION_MNIST_DIR
        x, y, xt, yt = _load_fashion_mnist(Path(data_dir or default), download)
    elif name == "cifar10":
        if data_dir is None:
            raise DatasetError("cifar10 needs --data-dir (the torchvision CIFAR-10 root)")
        if download:
            _download("cifar10", Path(data_dir))
        x, y, xt, yt = _load_cifar10(Path(data_dir))
    else:
        if data_dir is None:
            raise DatasetError("imagefolder needs --data-dir (a directory of class folders)")
        x, y, xt, yt, classes = _load_imagefolder(Path(data_dir), image_size)

    train_idx, val_idx = _stratified_split(y, val_fraction, seed=split_seed)
    if max_train_samples and max_train_samples < len(train_idx):
        keep, _ = _stratified_split(y[train_idx], 1 - max_train_samples / len(train_idx), seed=split_seed + 1)
        train_idx = train_idx[keep]
    num_classes = int(max(y.max(), yt.max()) + 1)
    if len(np.unique(y[train_idx])) < 2:
        raise DatasetError(f"dataset {name!r} has fewer than 2 classes in its training split")

    xtr = x[train_idx]
    mean = xtr.mean(axis=(0, 2, 3))
    std = xtr.std(axis=(0, 2, 3)) + 1e-6

    def prep(a: np.ndarray, b: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        a = (a - mean[None, :, None, None]) / std[None, :, None, None]
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)), torch.from_numpy(b)

    splits = Splits(name=name, train=prep(xtr, y[train_idx]), val=prep(x[val_idx], y[val_idx]),
                    test=prep(xt, yt) if with_test else None, num_classes=num_classes,
                    mean=mean.tolist(), std=std.tolist())
    _logger.info("dataset %s: %d train, %d val%s, shape %s, %d classes", name, len(train_idx), len(val_idx),
                 f", {len(yt)} test" if with_test else "", splits.input_shape, num_classes)
    if classes:
        _logger.info("classes: %s", classes)
    return splits
