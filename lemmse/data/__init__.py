"""Loaders for the image data sets of the book: FashionMNIST, CIFAR-10 and FFHQ at 32 x 32.

Every loader returns the first ``n`` images of a split as a float32 tensor
``[N, C, H, W]`` with values ``uint8 / 255`` in [0, 1]:

- ``"fashion-mnist"``: [N, 1, 28, 28], splits train (60,000) / test (10,000),
  files ``fashion-mnist/{train,t10k}-images-idx3-ubyte.gz``;
- ``"cifar10"``: [N, 3, 32, 32], splits train / test,
  files ``cifar-10-batches-py/{data_batch_1..5,test_batch}``;
- ``"ffhq32"``: [N, 3, 32, 32], files ``ffhq-32/NNNNN.png`` (+ optional ``MANIFEST.sha256``);
  the first 50,000 sorted files are train, the rest test.

The data root is the ``root`` argument, else the environment variable ``LEMMSE_DATA``,
else ``~/.cache/lemmse/data`` (:func:`data_root`).
FashionMNIST and CIFAR-10 can be downloaded from their official addresses with
``download=True`` (checksums verified); FFHQ cannot (see :func:`load_ffhq32`).
Nothing is downloaded unless asked for.

Every file is checked whole on its first use in a process, even when only its first images are
read (:func:`verify_file`): a FashionMNIST file or CIFAR-10 batch must be the official one (its
md5) or be listed in a ``MANIFEST.sha256`` beside it (``sha256sum`` format, for copies of your
own).  A file that has the official layout (60,000 or 10,000 FashionMNIST items, 10,000 CIFAR-10
images) but not the official bytes is corrupt (ValueError naming it and how to replace it); a
smaller or different copy without a manifest cannot be checked and is read as it is (logged
once).  The result is cached per process by (path, size, modification time); the first
FashionMNIST train load costs about 60 ms more for it (md5 of 26 MB).
The data sets are introduced in book chapter 1 (``book/01_inverse_problems.md``).

The package holds one module per data set (``lemmse.data.fashion_mnist``,
``lemmse.data.cifar10``, ``lemmse.data.ffhq32``) and the file machinery they share
(``lemmse/data/_files.py``: data root, downloads, checksums); every name is importable from
``lemmse.data``.
"""

from __future__ import annotations

import numpy as np
import torch

from lemmse.data._files import (MANIFEST, SPLITS, _check_download, _check_n, _check_split,
                                data_root, verify_file)
from lemmse.data.cifar10 import (CIFAR10_BATCH_MD5, CIFAR10_DIR, CIFAR10_MD5, CIFAR10_URL,
                                 _cifar_read, load_cifar10)
from lemmse.data.fashion_mnist import (FASHION_MNIST_DIR, FASHION_MNIST_MD5, FASHION_MNIST_URL,
                                       _FASHION_OFFICIAL_DIMS, _fashion_path, _read_idx,
                                       load_fashion_mnist)
from lemmse.data.ffhq32 import FFHQ_DIR, FFHQ_TRAIN_SIZE, FFHQ_URL, load_ffhq32

__all__ = [
    "data_root",
    "load_dataset",
    "load_fashion_mnist",
    "load_cifar10",
    "load_ffhq32",
    "load_labels",
    "verify_file",
]

DATASETS = ("fashion-mnist", "cifar10", "ffhq32")

_LOADERS = {"fashion-mnist": load_fashion_mnist, "cifar10": load_cifar10, "ffhq32": load_ffhq32}


def _check_name(name) -> str:
    if name not in DATASETS:
        raise ValueError(f"name must be one of {DATASETS}, got {name!r}")
    return name


def load_dataset(
    name: str, split: str = "train", n: int | None = None, root=None, download: bool = False
) -> torch.Tensor:
    r"""The first ``n`` images of a data set split, :math:`x = \mathrm{uint8} / 255`.

    Parameters
    ----------
    name : {"fashion-mnist", "cifar10", "ffhq32"}
    split : {"train", "test"}
    n : int, optional
        Number of images (the first ones of the split); all present if None.
    root : str or os.PathLike, optional
        Data root; default ``$LEMMSE_DATA`` or ``~/.cache/lemmse/data`` (:func:`data_root`).
    download : bool
        Download missing files (FashionMNIST and CIFAR-10 only).

    Returns
    -------
    torch.Tensor
        float32 [N, C, H, W] in [0, 1]: [N, 1, 28, 28] for FashionMNIST,
        [N, 3, 32, 32] for CIFAR-10 and FFHQ-32.

    See :func:`load_fashion_mnist`, :func:`load_cifar10`, :func:`load_ffhq32`.
    """
    return _LOADERS[_check_name(name)](split=split, n=n, root=root, download=download)


def load_labels(
    name: str, split: str = "train", n: int | None = None, root=None, download: bool = False
) -> torch.Tensor:
    """Class labels (0-9) of the first ``n`` images of a split.

    Parameters
    ----------
    name : {"fashion-mnist", "cifar10"}
        FFHQ has no labels (ValueError).
    split, n, root, download
        As in :func:`load_dataset`.

    Returns
    -------
    torch.Tensor
        int64 [N], aligned with :func:`load_dataset`'s images.
    """
    name, split, n = _check_name(name), _check_split(split), _check_n(n)
    download = _check_download(download)
    if name == "ffhq32":
        raise ValueError("name='ffhq32' has no labels (FFHQ is an unlabelled face data set)")
    if name == "fashion-mnist":
        path = _fashion_path(split, "labels", root, download)
        labels = _read_idx(path, 2049, 1, n, "an IDX1 label file")
    else:
        _, lab = _cifar_read(split, n, root, download)
        labels = np.asarray(lab, dtype=np.int64)
    return torch.from_numpy(np.asarray(labels, dtype=np.int64).copy())
