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
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import io
import logging
import operator
import os
import pickle
import re
import struct
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import torch

from lemmse._io import atomic_path

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
SPLITS = ("train", "test")

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

FFHQ_DIR = "ffhq-32"
FFHQ_URL = "https://github.com/NVlabs/ffhq-dataset"
#: Number of sorted FFHQ files that form the train split in the reference setup; the rest are test.
FFHQ_TRAIN_SIZE = 50_000
_FFHQ_NAME = re.compile(r"^\d+\.png$")

_DOWNLOAD_TIMEOUT = 60.0
_CHUNK = 1 << 20
MANIFEST = "MANIFEST.sha256"
_log = logging.getLogger("lemmse")
#: Files checked in this process: (resolved path, size, mtime_ns) -> how (see verify_file).
_VERIFIED: dict[tuple[str, int, int], str] = {}


# ----------------------------------------------------------------------------------------
# data root and error messages
# ----------------------------------------------------------------------------------------


def _resolve_root(root=None) -> tuple[Path, str]:
    """Return (data root, where it came from)."""
    if root is not None:
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"root must be a folder path (str or os.PathLike) or None, got "
                            f"{type(root).__name__} {root!r:.60}")
        return Path(root).expanduser(), "the argument root="
    env = os.environ.get("LEMMSE_DATA")
    if env:
        return Path(env).expanduser(), "the environment variable LEMMSE_DATA"
    return Path.home() / ".cache" / "lemmse" / "data", "the default (neither root= nor LEMMSE_DATA is set)"


def data_root(root=None) -> Path:
    """Folder that holds the data sets.

    Parameters
    ----------
    root : str or os.PathLike, optional
        Used if given.

    Returns
    -------
    pathlib.Path
        ``root``, else ``$LEMMSE_DATA`` (if set and not empty), else ``~/.cache/lemmse/data``.
    """
    return _resolve_root(root)[0]


def _how_to_get(name: str) -> str:
    if name == "fashion-mnist":
        files = ", ".join(FASHION_MNIST_MD5)
        return (
            f"Get FashionMNIST from {FASHION_MNIST_URL} (files {files}) into <root>/{FASHION_MNIST_DIR}/, "
            "or pass download=True."
        )
    if name == "cifar10":
        return (
            f"Get CIFAR-10 (python version) from {CIFAR10_URL} and extract it so that "
            f"<root>/{CIFAR10_DIR}/data_batch_1 ... exist, or pass download=True."
        )
    return (
        f"FFHQ has no automatic download: get it from {FFHQ_URL}, resize the images to 32x32 "
        f"(e.g. PIL, Image.LANCZOS) and save them as RGB PNGs <root>/{FFHQ_DIR}/00000.png, 00001.png, ... "
        "(optionally with a MANIFEST.sha256 in sha256sum format)."
    )


def _missing(name: str, path: Path, root: Path, source: str, extra: str = "") -> FileNotFoundError:
    return FileNotFoundError(
        f"{name} data not found: expected {path}{extra}.\n"
        f"Data root in use: {root} (from {source}).\n"
        "Set the data root with the argument root=... or the environment variable LEMMSE_DATA.\n"
        + _how_to_get(name)
    )


def _check_split(split) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def _check_n(n) -> int | None:
    if n is None:
        return None
    if isinstance(n, bool):
        raise TypeError(f"n must be a positive int or None, got {n!r}")
    try:
        n = operator.index(n)
    except TypeError as err:
        raise TypeError(f"n must be a positive int or None, got {n!r}") from err
    if n < 1:
        raise ValueError(f"n must be a positive int or None, got {n}")
    return n


def _to_float(images: np.ndarray) -> torch.Tensor:
    """uint8 array -> float32 tensor with values uint8 / 255."""
    x = torch.from_numpy(np.asarray(images, dtype=np.float32).copy())
    return x.div_(255.0)


# ----------------------------------------------------------------------------------------
# downloads
# ----------------------------------------------------------------------------------------


def _download(url: str, dest: Path, md5: str) -> None:
    """Download ``url`` to ``dest`` atomically (tmp file + os.replace), checking its md5.

    On a checksum mismatch or a network error nothing is left at ``dest`` or beside it.
    """
    network_errors = (urllib.error.URLError, http.client.HTTPException, OSError)
    with atomic_path(dest, suffix=".part") as tmp:
        digest = hashlib.md5(usedforsecurity=False)
        with open(tmp, "wb") as out:
            try:
                response = urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT)
            except network_errors as err:
                raise ConnectionError(
                    f"could not download {url}: {err}. Check the network connection, "
                    f"or download the file by hand and place it at {dest}."
                ) from err
            with response:
                while True:
                    try:
                        chunk = response.read(_CHUNK)
                    except network_errors as err:
                        raise ConnectionError(f"download of {url} was interrupted: {err}") from err
                    if not chunk:
                        break
                    digest.update(chunk)
                    out.write(chunk)
        if digest.hexdigest() != md5:
            raise ValueError(
                f"checksum mismatch for {url}: md5 {digest.hexdigest()}, expected {md5}; "
                "the download was discarded (try again, or download it by hand)."
            )


def _write_atomic(dest: Path, source) -> None:
    """Copy the binary stream ``source`` to ``dest`` (tmp file + os.replace)."""
    with atomic_path(dest, suffix=".part") as tmp:
        with open(tmp, "wb") as out:
            while chunk := source.read(_CHUNK):
                out.write(chunk)


def _download_fashion_mnist(folder: Path) -> None:
    for filename, md5 in FASHION_MNIST_MD5.items():
        if not (folder / filename).is_file():
            _download(FASHION_MNIST_URL + filename, folder / filename, md5)


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


# ----------------------------------------------------------------------------------------
# whole-file checksums
# ----------------------------------------------------------------------------------------


def _digest(path: Path, algorithm: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def _key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def verify_file(path, official_md5: str | None) -> str:
    """Check a whole data file once per process; return how it was checked.

    ``"official"``: its md5 is ``official_md5``; ``"manifest"``: its sha256 is the one
    ``MANIFEST.sha256`` beside it lists (ValueError when it differs); ``"custom"``: neither (not
    the official file and not listed), which the caller accepts only for a file that does not
    claim the official layout.  Cached by (path, size, modification time).
    """
    path = Path(path)
    key = _key(path)
    if key in _VERIFIED:
        return _VERIFIED[key]
    if official_md5 is not None and _digest(path, "md5") == official_md5:
        how = "official"
    else:
        manifest_path = path.with_name(MANIFEST)
        manifest = _read_manifest(manifest_path) if manifest_path.is_file() else {}
        if path.name in manifest:
            digest = _digest(path, "sha256")
            if digest != manifest[path.name]:
                raise ValueError(
                    f"sha256 mismatch for {path}: {digest}, {manifest_path} says "
                    f"{manifest[path.name]}: the file is corrupt or was changed. Replace it with "
                    f"the copy the manifest describes (or update the manifest if the change is "
                    f"deliberate).")
            how = "manifest"
        else:
            how = "custom"
            _log.info("%s is not the official file and no %s lists it: read without a checksum",
                      path, MANIFEST)
    _VERIFIED[key] = how
    return how


def _corrupt_official(path: Path, layout: str, official_md5: str, fix: str) -> ValueError:
    return ValueError(
        f"{path} is truncated or corrupt: it has the layout of the official file ({layout}) "
        f"but its md5 is {_digest(path, 'md5')}, not the official {official_md5}. {fix} (A deliberately "
        f"modified copy can be listed in {path.with_name(MANIFEST)}, sha256sum format.)")


# ----------------------------------------------------------------------------------------
# FashionMNIST (IDX in gzip)
# ----------------------------------------------------------------------------------------


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
            raise _missing("fashion-mnist", path, base, source)
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
    split, n = _check_split(split), _check_n(n)
    path = _fashion_path(split, "images", root, download)
    images = _read_idx(path, 2051, 3, n, "an IDX3 image file")
    return _to_float(images)[:, None]


# ----------------------------------------------------------------------------------------
# CIFAR-10 (python pickle batches)
# ----------------------------------------------------------------------------------------

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
            raise _missing("cifar10", folder / names[0], base, source, extra)
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
    split, n = _check_split(split), _check_n(n)
    data, _ = _cifar_read(split, n, root, download)
    return _to_float(data.reshape(-1, 3, 32, 32))


# ----------------------------------------------------------------------------------------
# FFHQ at 32 x 32 (PNG folder)
# ----------------------------------------------------------------------------------------


def _read_manifest(path: Path) -> dict[str, str]:
    """Parse a sha256sum-format manifest: lines '<hex digest>  <file name>'."""
    manifest = {}
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(None, 1)
        if len(parts) != 2 or not re.fullmatch(r"[0-9a-fA-F]{64}", parts[0]):
            raise ValueError(f"{path}, line {i}: expected '<sha256>  <file name>', got {line!r}")
        manifest[parts[1].strip().lstrip("*")] = parts[0].lower()
    return manifest


def _read_png(path: Path, raw: bytes) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw)) as img:
            img.load()
            if img.size != (32, 32):
                raise ValueError(f"{path} is {img.size[0]}x{img.size[1]}, expected a 32x32 image")
            rgb = img if img.mode == "RGB" else img.convert("RGB")
            return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"{path} is not a readable PNG (truncated or corrupt): {err}") from err


def _ffhq_files(root, split: str) -> tuple[Path, list[Path]]:
    base, source = _resolve_root(root)
    folder = base / FFHQ_DIR
    files = sorted(p for p in folder.glob("*.png") if _FFHQ_NAME.match(p.name)) if folder.is_dir() else []
    if not files:
        raise _missing("ffhq32", folder / "00000.png", base, source, " (a folder of NNNNN.png files)")
    if split == "train":
        return folder, files[:FFHQ_TRAIN_SIZE]
    test = files[FFHQ_TRAIN_SIZE:]
    if not test:
        raise ValueError(
            f"no FFHQ-32 test images in {folder}: the split convention takes the first "
            f"{FFHQ_TRAIN_SIZE:,} sorted files as train and the rest as test, and this copy holds "
            f"only {len(files):,} files (all train)"
        )
    return folder, test


def load_ffhq32(split: str = "train", n: int | None = None, root=None, download: bool = False) -> torch.Tensor:
    r"""FFHQ faces at 32 x 32, :math:`x = \mathrm{uint8} / 255`.

    Split convention (the reference setup): the files ``<root>/ffhq-32/NNNNN.png`` are
    sorted by name; the first 50,000 are the train split and the rest the test split.
    A copy with at most 50,000 files therefore has no test images (``split="test"`` raises).
    Images are decoded with PIL and converted to RGB; each must be 32 x 32.
    If ``ffhq-32/MANIFEST.sha256`` exists (``sha256sum`` format), the sha256 of every file
    read is checked against it.

    Parameters
    ----------
    split : {"train", "test"}
    n : int, optional
        Return the first ``n`` images of the split (all if None); only those files are read.
    root : str or os.PathLike, optional
        Data root (see :func:`data_root`).
    download : bool
        Not supported: FFHQ is distributed through Google Drive
        (https://github.com/NVlabs/ffhq-dataset) and must be resized to 32 x 32; a missing
        folder raises FileNotFoundError explaining this whatever ``download`` is.

    Returns
    -------
    torch.Tensor
        float32 [N, 3, 32, 32] in [0, 1].

    Raises
    ------
    FileNotFoundError
        No PNG files.
    ValueError
        No test images, ``n`` too large, checksum mismatch, unreadable or wrong-size PNG.
    """
    split, n = _check_split(split), _check_n(n)
    folder, files = _ffhq_files(root, split)
    if n is not None and n > len(files):
        raise ValueError(f"n={n} but the FFHQ-32 {split} split in {folder} holds only {len(files)} images")
    files = files[:n]
    manifest_path = folder / "MANIFEST.sha256"
    manifest = _read_manifest(manifest_path) if manifest_path.is_file() else None
    images = np.empty((len(files), 3, 32, 32), dtype=np.uint8)
    for i, path in enumerate(files):
        raw = path.read_bytes()
        if manifest is not None:
            if path.name not in manifest:
                raise ValueError(f"{path} is not listed in {manifest_path}")
            digest = hashlib.sha256(raw).hexdigest()
            if digest != manifest[path.name]:
                raise ValueError(
                    f"sha256 mismatch for {path}: {digest}, {manifest_path} says {manifest[path.name]} "
                    "(the file is corrupt or was changed)"
                )
        images[i] = _read_png(path, raw)
    return _to_float(images)


# ----------------------------------------------------------------------------------------
# dispatch and labels
# ----------------------------------------------------------------------------------------

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
    if name == "ffhq32":
        raise ValueError("name='ffhq32' has no labels (FFHQ is an unlabelled face data set)")
    if name == "fashion-mnist":
        path = _fashion_path(split, "labels", root, download)
        labels = _read_idx(path, 2049, 1, n, "an IDX1 label file")
    else:
        _, lab = _cifar_read(split, n, root, download)
        labels = np.asarray(lab, dtype=np.int64)
    return torch.from_numpy(np.asarray(labels, dtype=np.int64).copy())
