"""Build and load the optional native (C, AVX-512) attention kernel.

The kernel source ships with the package (``lemmse/_kernels/attend_avx512.c``).  It is compiled
on first use with the system C compiler into a per-user cache directory and loaded with
:mod:`ctypes`; no build step is needed at install time.  When the CPU lacks AVX-512, no C
compiler is found, or ``LEMMSE_NATIVE=0`` is set, :func:`load_kernel` returns ``None`` and the
engine uses its pure-torch path (same results, slower on the CPU).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

_KERNELS = Path(__file__).with_name("_kernels")
_SRC = _KERNELS / "attend_avx512.c"
_HEADERS = (_KERNELS / "avx512_common.h",)  # part of every kernel's cache key
_FLAGS = ["-O3", "-march=native", "-mavx512f", "-mavx512dq", "-mfma", "-pthread", "-shared",
          "-fPIC", "-std=c11"]
_lock = threading.Lock()
_cache: dict[str, object] = {}


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cache_dir() -> Path:
    """Directory holding compiled kernels (``LEMMSE_CACHE`` or ``~/.cache/lemmse``)."""
    root = os.environ.get("LEMMSE_CACHE") or os.path.join(Path.home(), ".cache", "lemmse")
    return Path(root) / "kernels"


def _build(dst: Path, src: Path = _SRC) -> None:
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise RuntimeError("no C compiler found")
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=dst.parent)
    os.close(fd)
    try:
        subprocess.run([cc, *_FLAGS, str(src), "-o", tmp, "-lm"], check=True,
                       capture_output=True, text=True)
        os.replace(tmp, dst)  # atomic: a half-written library is never loaded
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_kernel():
    """Return the ctypes function ``lemmse_attend_f32``, or ``None`` if unavailable."""
    if os.environ.get("LEMMSE_NATIVE", "1") == "0":
        return None
    if platform.machine() not in ("x86_64", "AMD64") or "avx512f" not in _cpu_flags():
        return None
    with _lock:
        if "fn" in _cache:
            return _cache["fn"]
        src = _SRC.read_bytes() + b"".join(h.read_bytes() for h in _HEADERS)
        key = hashlib.sha256(src + " ".join(_FLAGS).encode()
                             + " ".join(sorted(_cpu_flags())).encode()).hexdigest()[:16]
        so = cache_dir() / f"attend_avx512_{key}.so"
        fn = None
        try:
            if not so.exists():
                _build(so)
            lib = ctypes.CDLL(str(so))
            fn = lib.lemmse_attend_f32
            p = ctypes.c_void_p
            i64 = ctypes.c_int64
            fn.argtypes = [p, p, i64, i64, p, p, p, i64, i64, p, p, p, p, p, i64, p, p,
                           ctypes.c_int, ctypes.c_int]
            fn.restype = ctypes.c_int
        except (OSError, RuntimeError, subprocess.CalledProcessError):
            fn = None
        _cache["fn"] = fn
        return fn
