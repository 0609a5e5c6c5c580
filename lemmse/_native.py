"""Build, load and call the optional native (C, AVX-512 or AVX2) kernels (book chapter 7).

The kernel sources ship with the package (``lemmse/_kernels/``): ``attend.c``, the fused patch
attention of :mod:`lemmse.backends.attention`, and ``slide.c``, the sliding-window LE-MMSE of
:mod:`lemmse.backends.sliding`.  This module is the one place that knows their C signatures:
:func:`attend` and :func:`slide` take tensors, check their dtype, shape and layout, and raise
a RuntimeError when a kernel reports a failure.  Both kernels are written once against the
vector layer ``simd.h`` and compiled, on first use, with the system C compiler for the best
instruction set the CPU has: AVX-512 (``-mavx512f -mavx512dq``, 16 fp32 lanes) or AVX2 with
FMA (8 lanes).  The library goes into a per-user cache directory and is loaded with
:mod:`ctypes`; no build step is needed at install time.  ``LEMMSE_ISA=avx2`` builds the AVX2
variant on an AVX-512 machine (to test it there).  When the CPU has neither, no C compiler is
found, or ``LEMMSE_NATIVE=0`` is set, :func:`load_kernel` and :func:`load_slide_kernel` return
``None`` and the callers use their pure-torch paths (same results, slower on the CPU).

Cache and environment variables:

- the libraries live in :func:`cache_dir`: ``$LEMMSE_CACHE/kernels``, else
  ``$XDG_CACHE_HOME/lemmse/kernels``, else ``~/.cache/lemmse/kernels``; each ``.so`` is named
  by a hash of its source, the shared header, the flags and the CPU flags, and has its sha256
  in a ``.so.sha256`` file beside it, checked before loading (a truncated or overwritten
  library is rebuilt, never loaded); builds are written to a temporary file and renamed;
- the first use of a kernel on a machine builds it (about 10 s): a one-line note goes to the
  ``lemmse`` logger, or to stderr when logging is not configured;
- ``CC`` chooses the C compiler (default ``gcc``, else ``cc``);
- ``LEMMSE_NATIVE=0`` chooses the pure-torch paths deliberately (no warning);
- ``LEMMSE_ISA=avx2`` builds the AVX2 variant on an AVX-512 machine.

When a kernel is unavailable for any other reason (no compiler, a cache that cannot be
written, a library that does not load), one RuntimeWarning per kernel says why and how to fix
it, and the pure-torch path is used.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import torch

from lemmse._io import atomic_path, write_text_atomic
from lemmse._runtime import warn_caller

_KERNELS = Path(__file__).with_name("_kernels")
_HEADERS = (_KERNELS / "simd.h",)  # part of every kernel's cache key
_FLAGS = ["-O3", "-march=native"]
_ISA_FLAGS = {"avx512": ["-mavx512f", "-mavx512dq", "-mfma"],
              "avx2": ["-mavx2", "-mfma", "-mno-avx512f"]}
_LINK = ["-pthread", "-shared", "-fPIC", "-std=c11"]
_lock = threading.Lock()
_log = logging.getLogger("lemmse")
_cache: dict[tuple[str, str], object] = {}


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cache_dir() -> Path:
    """Directory holding compiled kernels: ``$LEMMSE_CACHE/kernels``, else
    ``$XDG_CACHE_HOME/lemmse/kernels``, else ``~/.cache/lemmse/kernels``."""
    root = os.environ.get("LEMMSE_CACHE")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = os.path.join(xdg if xdg else os.path.join(Path.home(), ".cache"), "lemmse")
    return Path(root) / "kernels"


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _verified(so: Path) -> bool:
    """The cached library is the one that was built: its sha256 matches the one stored beside
    it (a truncated or overwritten file would crash the process when loaded)."""
    digest = so.with_name(so.name + ".sha256")
    try:
        return so.is_file() and digest.read_text().strip() == _file_sha256(so)
    except OSError:
        return False


@functools.lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    warn_caller(message)


def _note(message: str) -> None:
    """One line to the ``lemmse`` logger, or to stderr when logging is not configured."""
    _log.info(message)
    if not _log.hasHandlers():
        print(message, file=sys.stderr, flush=True)


def isa() -> str | None:
    """The instruction set the native kernels are built for on this CPU: ``"avx512"``,
    ``"avx2"`` or ``None`` (no native kernels: not x86-64, neither instruction set, or
    ``LEMMSE_NATIVE=0``).  ``LEMMSE_ISA=avx2`` asks for AVX2 on an AVX-512 machine."""
    if os.environ.get("LEMMSE_NATIVE", "1") == "0":
        return None
    if platform.machine() not in ("x86_64", "AMD64"):
        return None
    flags = _cpu_flags()
    want = os.environ.get("LEMMSE_ISA", "").lower()
    if want not in ("", "avx512", "avx2"):
        raise ValueError(f"LEMMSE_ISA must be 'avx512' or 'avx2', got {want!r}")
    if want != "avx2" and {"avx512f", "avx512dq"} <= flags:
        return "avx512"
    if {"avx2", "fma"} <= flags:
        return "avx2"
    return None


def _flags(isa_: str) -> list[str]:
    return [*_FLAGS, *_ISA_FLAGS[isa_], *_LINK]


def _build(dst: Path, src: Path, flags: list[str]) -> None:
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise RuntimeError("no C compiler found")
    with atomic_path(dst, suffix=".so") as tmp:  # a half-written library is never loaded
        subprocess.run([cc, *flags, str(src), "-o", str(tmp), "-lm"], check=True,
                       capture_output=True, text=True)
        digest = _file_sha256(tmp)
    write_text_atomic(dst.with_name(dst.name + ".sha256"), digest + "\n")


def _load(name: str, symbol: str, argtypes: list, restype=ctypes.c_int):
    """Compile (once, cached by a hash of the source, the shared headers, the flags and the CPU)
    and load ``lemmse/_kernels/<name>.c`` for :func:`isa`; return its ctypes function ``symbol``
    or ``None``."""
    isa_ = isa()
    if isa_ is None:
        return None
    with _lock:
        if (name, isa_) in _cache:
            return _cache[name, isa_]
        src_path = _KERNELS / f"{name}.c"
        flags = _flags(isa_)
        src = src_path.read_bytes() + b"".join(h.read_bytes() for h in _HEADERS)
        key = hashlib.sha256(src + " ".join(flags).encode()
                             + " ".join(sorted(_cpu_flags())).encode()).hexdigest()[:16]
        so = cache_dir() / f"{name}_{isa_}_{key}.so"
        fn = None
        try:
            if not _verified(so):  # missing, or not the file that was built: (re)build it
                _note(f"lemmse: building the native kernel {name!r} for {isa_} in {so.parent} "
                      f"(first use, about 10 s; cached afterwards)")
                _build(so, src_path, flags)
            fn = getattr(ctypes.CDLL(str(so)), symbol)
            fn.argtypes = argtypes
            fn.restype = restype
        except (OSError, RuntimeError, AttributeError, subprocess.CalledProcessError) as err:
            why = getattr(err, "stderr", None) or str(err)
            _warn_once(f"lemmse: the native kernel {name!r} is unavailable ({why.strip()[:300]}); "
                       f"falling back to the pure-torch path (same results, 2-30x slower). "
                       f"Fix: install a C compiler (gcc) or set CC, and make the cache "
                       f"{cache_dir()} writable (or point LEMMSE_CACHE elsewhere); "
                       f"LEMMSE_NATIVE=0 silences this by choosing the torch path.")
            fn = None
        _cache[name, isa_] = fn
        return fn


_p, _i64, _int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
_F32, _F64, _I32, _I64 = torch.float32, torch.float64, torch.int32, torch.int64
# The C signatures, spelled once (see the headers of lemmse/_kernels/attend.c and slide.c).
_ATTEND_ARGS = [_p, _p, _i64, _i64, _p, _p, _p, _i64, _i64, _p, _p, _p, _p, _p, _i64, _p, _p,
                _int, _int]
_SLIDE_ARGS = [_p, _p, _i64, _i64, _i64, _i64, _i64, _p, _p, _i64, _p, _i64, _i64, _p, _p, _p,
               _i64, _int]


def load_kernel():
    """Return the ctypes function ``lemmse_attend_f32`` (fused patch attention), or ``None``."""
    return _load("attend", "lemmse_attend_f32", _ATTEND_ARGS)


def load_slide_kernel():
    """Return the ctypes function ``lemmse_slide_f32`` (sliding-window LE-MMSE), or ``None``."""
    return _load("slide", "lemmse_slide_f32", _SLIDE_ARGS)


def _addr(name, t, dtype, shape=None):
    """The data pointer of ``t`` after checking what the C code assumes of it."""
    if t.dtype != dtype or t.device.type != "cpu" or not t.is_contiguous():
        raise ValueError(f"native kernel argument {name} must be a contiguous {dtype} CPU "
                         f"tensor, got {t.dtype} on {t.device} (contiguous: {t.is_contiguous()})")
    if shape is not None and t.numel() != math.prod(shape):  # the C code sees flat memory
        raise ValueError(f"native kernel argument {name} must hold {tuple(shape)} elements, got "
                         f"{tuple(t.shape)}")
    return t.data_ptr()


def attend(Q, qscale, Kt, kb, Vt, q_ptr, b_ptr, nlast, m, acc, *, kchunk, nthreads, direct):
    """One chunk of keys through the fused attention kernel (``attend.c``), state in place.

    Parameters
    ----------
    Q : Tensor ``[M, D]`` (float32)
        Queries, scaled by ``qscale`` unless ``direct``.
    qscale : Tensor ``[M]`` (float32)
        ``log2(e)/σ²`` per query (``-log2(e)/2σ²`` when ``direct``).
    Kt, kb, Vt : Tensors ``[nb, D, 16]``, ``[nb, 16]``, ``[nb, Cv, 16]`` (float32)
        Keys, ``-‖k‖²/2`` and values in blocks of 16 keys.
    q_ptr, b_ptr : Tensors ``[G + 1]`` (int64)
        Offsets of each group's queries and key blocks.
    nlast : Tensor ``[G]`` (int64)
        Number of real keys in each group's last block.
    m, acc : Tensors ``[M]`` (float32), ``[M, Cv + 1, 16]`` (float64)
        Running maximum (base 2) and per-lane sums, updated in place (the kernel sums each sweep
        of ``kchunk`` blocks in float32 and merges it into ``acc``).
    kchunk : int
        Key blocks per sweep over a thread's queries.
    nthreads : int
    direct : bool
        Logits from explicit differences instead of the GEMM expansion.
    """
    fn = load_kernel()
    if fn is None:
        raise RuntimeError("the native attention kernel is unavailable (see lemmse._native)")
    M, D = Q.shape
    nb, Cv = Vt.shape[0], Vt.shape[1]
    G = q_ptr.numel() - 1
    q0, q1 = q_ptr[:-1].contiguous(), q_ptr[1:].contiguous()
    b0, b1 = b_ptr[:-1].contiguous(), b_ptr[1:].contiguous()
    rc = fn(_addr("Q", Q, _F32), _addr("qscale", qscale, _F32, (M,)), M, D,
            _addr("Kt", Kt, _F32, (nb, D, 16)), _addr("kb", kb, _F32, (nb, 16)),
            _addr("Vt", Vt, _F32), Cv, G, _addr("q0", q0, _I64), _addr("q1", q1, _I64),
            _addr("b0", b0, _I64), _addr("b1", b1, _I64), _addr("nlast", nlast, _I64, (G,)),
            int(kchunk), _addr("m", m, _F32, (M,)), _addr("acc", acc, _F64, (M, Cv + 1, 16)),
            int(nthreads), int(direct))
    if rc != 0:
        raise RuntimeError(f"native attention kernel failed with code {rc} (M={M}, D={D}, "
                           f"Cv={Cv}, G={G}); use backend='torch'")


def slide(V, qs, P, U, X, shifts, groups, gid, m, acc, *, band_rows, nthreads):
    """One chunk of training images through the sliding-window kernel (``slide.c``).

    Parameters
    ----------
    V : Tensor ``[B, C, H, W]`` (float32)
        Query images.
    qs : Tensor ``[B]`` (float32)
        ``-log2(e)/2σ²`` per query image.
    P : int
        Odd patch size.
    U, X : Tensors ``[N, C, H, W]`` (float32)
        Key images and their clean values.
    shifts : Tensor ``[T, 2]`` (int32)
        The circular shifts ``(a, b)`` pairing pixel ``i`` with the key at ``i + (a, b)``.
    groups : int
        ``S``: the shifts split into ``S`` groups with their own state.
    gid : Tensor ``[H*W]`` (int32) or None
        Position groups (``None``: every pair admissible).
    m, acc : Tensors ``[B, S, H, SW]`` (float32), ``[B, S, H, C + 1, SW]`` (float64)
        Running maximum (base 2) and sums, ``SW = 16 ceil(W / 16)``, updated in place.
    band_rows : int
        Rows per work item (0: the kernel chooses).
    nthreads : int
    """
    fn = load_slide_kernel()
    if fn is None:
        raise RuntimeError("the sliding-window kernel is unavailable (see lemmse._native)")
    B, C, H, W = V.shape
    N, T, SW = U.shape[0], shifts.shape[0], 16 * ((W + 15) // 16)
    g = 0 if gid is None else _addr("gid", gid, _I32, (H * W,))
    rc = fn(_addr("V", V, _F32), _addr("qs", qs, _F32, (B,)), B, C, H, W, int(P),
            _addr("U", U, _F32, (N, C, H, W)), _addr("X", X, _F32, (N, C, H, W)), N,
            _addr("shifts", shifts, _I32, (T, 2)), T, int(groups), g,
            _addr("m", m, _F32, (B, groups, H, SW)),
            _addr("acc", acc, _F64, (B, groups, H, C + 1, SW)), int(band_rows), int(nthreads))
    if rc != 0:
        raise RuntimeError(f"sliding-window kernel failed with code {rc} (B={B}, C={C}, H={H}, "
                           f"W={W}, P={P}); use backend='torch'")
