"""One way to write a file: completely or not at all (an implementation detail, in no chapter).

:func:`atomic_path` hands out a temporary path beside the destination (same folder, so the
final ``os.replace`` is atomic on POSIX and Windows) and moves it into place only when the
``with`` block succeeds; on any exception, including KeyboardInterrupt, the temporary file is
removed and the destination is left as it was. Every writer of the package goes through it:
checkpoints (:mod:`lemmse.train`), manifests, CSVs and cached LE-MMSE outputs
(:mod:`lemmse.experiments`), downloads and extracted data (:mod:`lemmse.data`) and the native
kernels (:mod:`lemmse._native`).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Iterator, Union

__all__ = ["atomic_path", "write_text_atomic"]


@contextlib.contextmanager
def atomic_path(dest: Union[str, os.PathLike], suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside ``dest`` that becomes ``dest`` when the block succeeds.

    The folder of ``dest`` is created if needed. The temporary name is hidden and unique per
    call (``.<name>.<random><suffix>``); the file gets the permissions of an ordinary new file.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_text_atomic(dest: Union[str, os.PathLike], text: str) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``dest`` atomically; returns ``dest``."""
    with atomic_path(dest) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    return Path(dest)
