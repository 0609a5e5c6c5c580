"""The data files behind the loaders: the data root, downloads and whole-file checksums.

Shared by the readers of :mod:`lemmse.data` (one module per data set): :func:`data_root`
(``root``, else ``$LEMMSE_DATA``, else ``~/.cache/lemmse/data``) and the message of a missing
data set; an atomic, md5-checked download; :func:`verify_file`, which checks a whole file once
per process against its official md5 or a ``MANIFEST.sha256`` beside it; and the argument
checks every loader shares (split, ``n``) and the uint8 → float conversion.
Import the public names from :mod:`lemmse.data`.
The data sets are introduced in book chapter 1 (``book/01_inverse_problems.md``).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import operator
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch

from lemmse._io import atomic_path

__all__ = ["data_root", "verify_file", "SPLITS", "MANIFEST"]

SPLITS = ("train", "test")
_DOWNLOAD_TIMEOUT = 60.0
_CHUNK = 1 << 20
MANIFEST = "MANIFEST.sha256"
_log = logging.getLogger("lemmse")
#: Files checked in this process: (resolved path, size, mtime_ns) -> how (see verify_file).
_VERIFIED: dict[tuple[str, int, int], str] = {}


# ----------------------------------------------------------------------------------------
# data root, error messages, argument checks
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


def _missing(name: str, path: Path, root: Path, source: str, how_to_get: str,
             extra: str = "") -> FileNotFoundError:
    """The FileNotFoundError of a missing data set: where it was looked for, how to get it."""
    return FileNotFoundError(
        f"{name} data not found: expected {path}{extra}.\n"
        f"Data root in use: {root} (from {source}).\n"
        "Set the data root with the argument root=... or the environment variable LEMMSE_DATA.\n"
        + how_to_get
    )


def _check_split(split) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def _check_download(download) -> bool:
    """``download`` if it is True or False: a string such as "no" is a TypeError, not True."""
    from lemmse._validate import check_bool

    return check_bool("download", download)


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
