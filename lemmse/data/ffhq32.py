"""The FFHQ-32 reader: a folder of 32 x 32 PNG faces, optionally with a sha256 manifest.

``<root>/ffhq-32/NNNNN.png``: the first 50,000 sorted files are the train split, the rest
test; images [N, 3, 32, 32]. FFHQ cannot be downloaded automatically.
Import :func:`load_ffhq32` from :mod:`lemmse.data`.
The data sets are introduced in book chapter 1 (``book/01_inverse_problems.md``).
"""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path

import numpy as np
import torch

from lemmse.data._files import (_check_download, _check_n, _check_split, _missing, _read_manifest,
                                _resolve_root, _to_float)

__all__ = ["load_ffhq32"]

FFHQ_DIR = "ffhq-32"
FFHQ_URL = "https://github.com/NVlabs/ffhq-dataset"
#: Number of sorted FFHQ files that form the train split in the reference setup; the rest are test.
FFHQ_TRAIN_SIZE = 50_000
_FFHQ_NAME = re.compile(r"^\d+\.png$")


def _how_to_get() -> str:
    """How to get the data set (ends the message of a missing file)."""
    return (
        f"FFHQ has no automatic download: get it from {FFHQ_URL}, resize the images to 32x32 "
        f"(e.g. PIL, Image.LANCZOS) and save them as RGB PNGs <root>/{FFHQ_DIR}/00000.png, 00001.png, ... "
        "(optionally with a MANIFEST.sha256 in sha256sum format)."
    )


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
        raise _missing("ffhq32", folder / "00000.png", base, source, _how_to_get(),
                       " (a folder of NNNNN.png files)")
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
    split, n, download = _check_split(split), _check_n(n), _check_download(download)
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
