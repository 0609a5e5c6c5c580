"""Runtime glue shared by training and the estimators: the device, the allocator, TF32.

- :func:`resolve_device`: "auto" -> CUDA when available, else the CPU; other device strings
  checked (book chapter 8, the ``device`` field of :class:`lemmse.train.TrainConfig`).
- :func:`tune_allocator`: glibc's ``mallopt`` so that large CPU activations are not fresh
  ``mmap`` s (process-wide; the command line and ``benchmarks/bench_train.py`` call it).
- :func:`no_tf32`: TF32 off for CUDA matrix products and convolutions inside a block, so that
  float32 on a GPU means float32 (book chapter 7 on why the engine never uses TF32; also the
  training loop).
- :func:`single_thread`: torch on one thread inside a block (the memory-bound copies of the
  native backends, chapter 7);
- :func:`compiled_forward`: a network's forward through ``torch.compile``, falling back to the
  eager forward with one warning where compilation fails (``TrainConfig(compile=True)``);
- :func:`warn_caller`: a warning attributed to the user's line, not to the package's inside.
"""

from __future__ import annotations

import contextlib
import contextvars
import warnings

import torch

__all__ = ["resolve_device", "tune_allocator", "no_tf32", "compiled_forward"]


def resolve_device(device: str = "auto") -> torch.device:
    """"auto" -> CUDA when available, else CPU; other devices are checked (a device string or a
    torch.device, not the meta device, CUDA present?) by ``lemmse._validate.check_device``."""
    from lemmse._validate import check_device

    return check_device(device, "device", auto=True)


def tune_allocator(threshold: int = 1 << 30) -> bool:
    """Keep large CPU buffers in glibc's heap instead of fresh ``mmap`` s (process-wide).

    On this project's CPU machine each fresh multi-MB activation costs page faults, which made
    CPU training 2–4× slower. Sets ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` with
    ``mallopt``; the process then keeps its peak memory. Called by the command line and the
    benchmark, never implicitly by the library. Returns False where glibc is not available.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(-3, int(threshold)) == 1  # M_MMAP_THRESHOLD
        ok = libc.mallopt(-1, int(threshold) * 2) == 1 and ok  # M_TRIM_THRESHOLD
        return bool(ok)
    except (OSError, AttributeError):
        return False


@contextlib.contextmanager
def no_tf32():
    """TF32 off for CUDA matmuls and convolutions for the duration of the block (restored
    afterwards); the deprecation warnings some torch versions give on setting the flags are
    silenced."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def compiled_forward(model: torch.nn.Module):
    """``model``'s forward through ``torch.compile``; on the first call, when compiling fails,
    one RuntimeWarning and the eager forward from then on (same arguments, same step).

    For the training loop (``TrainConfig(compile=True)``): the warning points at the caller of
    the function that calls the returned forward (``stacklevel=3``).
    """
    compiled = torch.compile(model)
    state = {"fn": compiled}

    def forward(v, sigma):
        if state["fn"] is compiled:
            try:
                return compiled(v, sigma)
            except Exception as err:  # inductor raises many types (no compiler, unsupported op)
                warnings.warn(f"torch.compile failed ({type(err).__name__}: {str(err).strip()[:200]}); "
                              f"training eagerly (same result, slower). compile=False silences this.",
                              RuntimeWarning, stacklevel=3)
                state["fn"] = model
        return state["fn"](v, sigma)

    return forward


@contextlib.contextmanager
def single_thread():
    """Run memory-bound torch ops on one thread: with two OpenMP threads on a busy 2-core
    machine, a descheduled thread stalls every parallel region (measured 40x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


_PROGRESS = contextvars.ContextVar("lemmse_progress", default=None)


@contextlib.contextmanager
def progress_bars(description):
    """Within the block, the chunked solvers (``lemmse.backends.attention.solve``) show a
    progress bar over their chunks, labelled ``description`` (``None``: no bar); used by the
    estimators' ``posterior(progress=...)``."""
    token = _PROGRESS.set(description)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


def progress_bar(total):
    """A tqdm bar of ``total`` steps inside :func:`progress_bars`, else ``None``."""
    description = _PROGRESS.get()
    if description is None or total < 2:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="chunk", leave=False)


def warn_caller(message: str, category=RuntimeWarning) -> None:
    """``warnings.warn`` attributed to the first frame outside the package (the user's line
    that built the estimator or made the call), however deep inside ``lemmse`` it is raised."""
    import os
    import sys

    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame, level = sys._getframe(1), 2
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
