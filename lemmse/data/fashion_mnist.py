"""The FashionMNIST reader: gzip IDX files, checked against the official md5s.

``<root>/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``: 60,000 train and
10,000 test images [N, 1, 28, 28] (and their labels), downloadable from Zalando's server with
``download=True``. A file that is neither official nor listed in a manifest must not have the
official layout (a corrupt official file would otherwise be read without a word).
Import :func:`load_fashion_mnist` from :mod:`lemmse.data`.
The data sets are introduced in book chapter 1 (``book/01_inverse_problems.md``).
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from lemmse.data._files import (_VERIFIED, _check_download, _check_n, _check_split,
                                _corrupt_official, _download, _key, _missing, _resolve_root,
                                _to_float, verify_file)

__all__ = ["load_fashion_mnist"]

FASHION_MNIST_DIR = "fashion-mnist"
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
#: md5 of the official files (Zalando's README; also in shared/data/README.md).
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
_FASHION_PREFIX = {"train": "train", "test": "t10k"}

#: The official files' layouts (IDX sizes): a file with one of them must have the official md5.
_FASHION_OFFICIAL_DIMS = {
    "train-images-idx3-ubyte.gz": [60_000, 28, 28],
    "train-labels-idx1-ubyte.gz": [60_000],
    "t10k-images-idx3-ubyte.gz": [10_000, 28, 28],
    "t10k-labels-idx1-ubyte.gz": [10_000],
}


def _how_to_get() -> str:
    """How to get the data set (ends the message of a missing file)."""
    files = ", ".join(FASHION_MNIST_MD5)
    return (
        f"Get FashionMNIST from {FASHION_MNIST_URL} (files {files}) into <root>/{FASHION_MNIST_DIR}/, "
        "or pass download=True."
    )


def _download_fashion_mnist(folder: Path) -> None:
    for filename, md5 in FASHION_MNIST_MD5.items():
        if not (folder / filename).is_file():
            _download(FASHION_MNIST_URL + filename, folder / filename, md5)


def _read_idx(path: Path, magic: int, ndim: int, n: int | None, what: str) -> np.ndarray:
    """Read the first ``n`` (all if None) items of a gzip IDX file as uint8 [N, *dims].

    The header is ``magic`` and ``ndim`` big-endian int32 sizes. When every item is read,
    the payload length must equal the one the header announces.
    """
    corrupt = f"{path} is truncated or corrupt"
    try:
        with gzip.open(path, "rb") as f:
            header = f.read(4 * (1 + ndim))
            if len(header) < 4 * (1 + ndim):
                raise ValueError(f"{corrupt}: the IDX header is incomplete")
            found, *dims = struct.unpack(f">{1 + ndim}i", header)
            if found != magic:
                raise ValueError(f"{corrupt}: IDX magic number {found}, expected {magic} ({what})")
            if min(dims) < 0 or (ndim > 1 and min(dims[1:]) < 1):
                raise ValueError(f"{corrupt}: invalid IDX sizes {dims}")
            total = dims[0]
            if n is not None and n > total:
                raise ValueError(f"n={n} but {path} holds only {total} items")
            count = total if n is None else n
            item = int(np.prod(dims[1:], dtype=np.int64)) if ndim > 1 else 1
            payload = f.read(count * item)
            if len(payload) != count * item:
                raise ValueError(
                    f"{corrupt}: the header announces {total} items ({total * item} bytes) "
                    f"but the payload stops after {len(payload)} bytes"
                )
            if count == total and f.read(1):
                raise ValueError(f"{corrupt}: the payload is longer than the header announces ({total} items)")
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{corrupt} (gzip error: {err})") from err
    return np.frombuffer(payload, dtype=np.uint8).reshape(count, *dims[1:])


def _fashion_path(split: str, kind: str, root, download: bool) -> Path:
    base, source = _resolve_root(root)
    folder = base / FASHION_MNIST_DIR
    path = folder / f"{_FASHION_PREFIX[split]}-{kind}-idx{3 if kind == 'images' else 1}-ubyte.gz"
    if not path.is_file():
        if download:
            _download_fashion_mnist(folder)
        else:
            raise _missing("fashion-mnist", path, base, source, _how_to_get())
    if verify_file(path, FASHION_MNIST_MD5.get(path.name)) == "custom":
        _check_not_official_fashion(path)
    return path


def _check_not_official_fashion(path: Path) -> None:
    """A FashionMNIST file that is neither official nor listed must not claim the official
    layout (a corrupt official file would otherwise be read without a word)."""
    dims = _FASHION_OFFICIAL_DIMS.get(path.name)
    if dims is None:
        return
    try:
        with gzip.open(path, "rb") as f:
            header = f.read(4 * (1 + len(dims)))
    except (OSError, EOFError, zlib.error):
        header = b""
    if len(header) < 4 * (1 + len(dims)):
        return  # the reader names the broken header
    if list(struct.unpack(f">{1 + len(dims)}i", header))[1:] == dims:
        del _VERIFIED[_key(path)]
        raise _corrupt_official(
            path, f"{' x '.join(map(str, dims))} items", FASHION_MNIST_MD5[path.name],
            f"Delete it and load again with download=True, or copy it again from "
            f"{FASHION_MNIST_URL}{path.name}.")


def load_fashion_mnist(split: str = "train", n: int | None = None, root=None, download: bool = False) -> torch.Tensor:
    r"""FashionMNIST images, :math:`x = \mathrm{uint8} / 255`.

    Parameters
    ----------
    split : {"train", "test"}
        60,000 train images (``train-images-idx3-ubyte.gz``) or 10,000 test images
        (``t10k-images-idx3-ubyte.gz``).
    n : int, optional
        Return the first ``n`` images (all if None). Only the bytes needed are
        decompressed; the header/payload length check is complete when all are read.
    root : str or os.PathLike, optional
        Data root (see :func:`data_root`); files under ``<root>/fashion-mnist/``.
    download : bool
        Download the four official files from Zalando's server if missing (md5 checked).

    Returns
    -------
    torch.Tensor
        float32 [N, 1, 28, 28] in [0, 1].

    Raises
    ------
    FileNotFoundError
        File missing (the message says where it was expected and how to get it).
    ValueError
        Truncated or corrupt file, or ``n`` larger than the split.
    """
    split, n, download = _check_split(split), _check_n(n), _check_download(download)
    path = _fashion_path(split, "images", root, download)
    images = _read_idx(path, 2051, 3, n, "an IDX3 image file")
    return _to_float(images)[:, None]
