"""The CIFAR-10 reader: the python pickle batches, unpickled safely and checked.

``<root>/cifar-10-batches-py/{data_batch_1..5,test_batch}``: train and test images
[N, 3, 32, 32] (and their labels); ``download=True`` fetches and extracts the official archive.
The batches are unpickled by an unpickler that only builds numpy arrays; a batch of the official
size must be the official one.
Import :func:`load_cifar10` from :mod:`lemmse.data`.
The data sets are introduced in book chapter 1 (``book/01_inverse_problems.md``).
"""

from __future__ import annotations

import contextlib
import gzip
import os
import pickle
import struct
import tarfile
import tempfile
import zlib
from pathlib import Path

import numpy as np
import torch

from lemmse.data._files import (_VERIFIED, _check_download, _check_n, _check_split,
                                _corrupt_official, _download, _key, _missing, _resolve_root,
                                _to_float, _write_atomic, verify_file)

__all__ = ["load_cifar10"]

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
_CIFAR_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
_CIFAR_ARCHIVE_MEMBERS = _CIFAR_BATCHES["train"] + _CIFAR_BATCHES["test"] + ["batches.meta"]
#: md5 of the official batches, as extracted from the official archive (torchvision lists the same).
CIFAR10_BATCH_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
#: Images in every official CIFAR-10 batch: a batch of this size must have the official md5.
_CIFAR_OFFICIAL_IMAGES = 10_000


def _how_to_get() -> str:
    """How to get the data set (ends the message of a missing file)."""
    return (
        f"Get CIFAR-10 (python version) from {CIFAR10_URL} and extract it so that "
        f"<root>/{CIFAR10_DIR}/data_batch_1 ... exist, or pass download=True."
    )


def _download_cifar10(folder: Path) -> None:
    """Download the official tar.gz, check its md5 and extract the batches into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, archive = tempfile.mkstemp(dir=folder, prefix=".cifar-10-python.", suffix=".tar.gz")
    os.close(fd)
    archive = Path(archive)
    try:
        _download(CIFAR10_URL, archive, CIFAR10_MD5)
        try:
            with tarfile.open(archive, "r:gz") as tar:
                for name in _CIFAR_ARCHIVE_MEMBERS:
                    try:
                        member = tar.getmember(f"{CIFAR10_DIR}/{name}")
                    except KeyError as err:
                        raise ValueError(f"{CIFAR10_URL}: the archive has no member {CIFAR10_DIR}/{name}") from err
                    if not member.isfile():
                        raise ValueError(f"{CIFAR10_URL}: {CIFAR10_DIR}/{name} is not a regular file")
                    with tar.extractfile(member) as source:
                        _write_atomic(folder / name, source)
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as err:
            raise ValueError(f"{CIFAR10_URL}: the downloaded archive is truncated or corrupt ({err})") from err
    finally:
        with contextlib.suppress(FileNotFoundError):
            archive.unlink()


_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickler that only builds numpy arrays and plain Python objects (no arbitrary code)."""

    def find_class(self, module, name):
        if (module, name) in _PICKLE_ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch")


def _get(batch: dict, key: str):
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise KeyError(key)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, list]:
    """Return (data uint8 [N, 3072], labels list of N ints) of one CIFAR-10 pickle batch."""
    corrupt = f"{path} is not a valid CIFAR-10 batch (truncated or corrupt)"
    try:
        with open(path, "rb") as f:
            batch = _BatchUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            ImportError, struct.error, MemoryError) as err:
        raise ValueError(f"{corrupt}: {type(err).__name__}: {err}") from err
    if not isinstance(batch, dict):
        raise ValueError(f"{corrupt}: expected a dict, got {type(batch).__name__}")
    try:
        data, labels = _get(batch, "data"), _get(batch, "labels")
    except KeyError as err:
        raise ValueError(f"{corrupt}: no {err.args[0]!r} key (keys: {list(batch)})") from None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"{corrupt}: 'data' must be a uint8 array [N, 3072], got {desc}")
    labels = list(labels)
    if len(labels) != data.shape[0]:
        raise ValueError(f"{corrupt}: {data.shape[0]} images but {len(labels)} labels")
    return data, labels


def _cifar_read(split: str, n: int | None, root, download: bool) -> tuple[np.ndarray, list]:
    base, source = _resolve_root(root)
    folder = base / CIFAR10_DIR
    names = _CIFAR_BATCHES[split]
    present = [folder / name for name in names if (folder / name).is_file()]
    if not present:
        if download:
            _download_cifar10(folder)
            present = [folder / name for name in names if (folder / name).is_file()]
        if not present:
            extra = "" if split == "test" else " (and data_batch_2 ... data_batch_5)"
            raise _missing("cifar10", folder / names[0], base, source, _how_to_get(), extra)
    datas, labels, read = [], [], []
    for path in present:
        how = verify_file(path, CIFAR10_BATCH_MD5.get(path.name))
        data, lab = _read_cifar_batch(path)
        if how == "custom" and data.shape[0] == _CIFAR_OFFICIAL_IMAGES:
            del _VERIFIED[_key(path)]
            raise _corrupt_official(
                path, f"{_CIFAR_OFFICIAL_IMAGES:,} images", CIFAR10_BATCH_MD5[path.name],
                f"Replace it with the official batch: extract it again from {CIFAR10_URL}, or "
                f"delete the batches in {folder} and load again with download=True.")
        datas.append(data)
        labels.extend(lab)
        read.append(path.name)
        if n is not None and len(labels) >= n:
            break
    data = np.concatenate(datas)
    if n is not None and n > data.shape[0]:
        raise ValueError(
            f"n={n} but the CIFAR-10 {split} split here holds only {data.shape[0]} images "
            f"(files read in {folder}: {', '.join(read)})"
        )
    return data[:n], labels[:n]


def load_cifar10(split: str = "train", n: int | None = None, root=None, download: bool = False) -> torch.Tensor:
    r"""CIFAR-10 images, :math:`x = \mathrm{uint8} / 255`.

    The batches present among ``data_batch_1`` ... ``data_batch_5`` (train) or
    ``test_batch`` (test) are read in that order and concatenated (a partial copy, e.g.
    only the first 4,000 images of ``data_batch_1``, gives a shorter split). Each row of a
    batch's ``data`` is the 1024 red values, then green, then blue, each 32 x 32 row-major.
    Batches are unpickled with ``encoding="bytes"``, accepting ``b"data"`` or ``"data"``
    keys, by an unpickler that only builds numpy arrays.

    Parameters
    ----------
    split : {"train", "test"}
    n : int, optional
        Return the first ``n`` images (all present if None); only the batches needed are read.
    root : str or os.PathLike, optional
        Data root (see :func:`data_root`); files under ``<root>/cifar-10-batches-py/``.
    download : bool
        If no batch of the split is present, download the official archive
        (md5 checked) and extract its batches.

    Returns
    -------
    torch.Tensor
        float32 [N, 3, 32, 32] in [0, 1].

    Raises
    ------
    FileNotFoundError
        No batch of the split present.
    ValueError
        Corrupt batch, or ``n`` larger than the images present (the message names the
        files read).
    """
    split, n, download = _check_split(split), _check_n(n), _check_download(download)
    data, _ = _cifar_read(split, n, root, download)
    return _to_float(data.reshape(-1, 3, 32, 32))
