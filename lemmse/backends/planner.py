"""Which backend solves a patch-attention problem, and why (book chapter 7).

The one place where a path is chosen.  :func:`plan` reads a
``lemmse.patches.PatchProblem`` (its geometry, dtype, device and value channels) and the
estimator's ``backend`` and ``algorithm`` arguments, and returns a :class:`Plan`: the path
(``"slide"``: the sliding-window kernel of :mod:`lemmse.backends.sliding`; ``"attention"``: the
streaming patch attention of :mod:`lemmse.backends.attention`), the back-end that computes it
(``"native"`` or ``"torch"``), whether the keys go straight into the native kernel's blocks
of 16, and a sentence saying why.  :func:`attention_backend` is the same choice for a bare
:class:`~lemmse.backends.attention.StreamingAttention` (``choose_backend`` is its old name),
:func:`native_available` whether a kernel can run at all (for the super-resolution LE-MMSE,
which splits its values into runs by it), :func:`joint_plan` one plan for such runs.

The rules, measured in ``benchmarks/bench_engine.py``:

- the sliding window, for every call (not the diagnostics of ``posterior``) in float32 on the
  CPU with at most 4 channels and unwhitened distances, when the kernel is available (a CPU
  with AVX-512 or AVX2, a C compiler, ``LEMMSE_NATIVE`` not ``0``);
- else the patch attention: its native kernel in float32 on the CPU for 1 to 4 value channels
  (any patch dimension ``D``), torch otherwise (float64, GPUs, more value channels, the
  diagnostics); keys are packed straight from the unfolded images when blocks of 16 keys never
  straddle two images (one group, ``H·W`` a multiple of 16).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lemmse._native import isa, load_kernel, load_slide_kernel
from lemmse._runtime import warn_caller

__all__ = ["Plan", "plan", "attention_backend", "choose_backend", "images_per_chunk",
           "joint_plan", "native_available", "DEFAULT_MEMORY_BUDGET"]

#: Default bound on the working memory of one estimator call, in bytes.
DEFAULT_MEMORY_BUDGET = 1 << 30
#: Largest chunk of training images streamed at once, in bytes: small chunks stay in malloc's
#: heap, where fresh multi-100-MB buffers cost page faults on every chunk (measured 5x slower).
CHUNK_BYTES = 64 << 20
_BACKENDS = ("auto", "native", "torch")
_UNAVAILABLE = "the native kernel is unavailable (AVX-512 or AVX2, a C compiler, LEMMSE_NATIVE)"


@dataclass(frozen=True)
class Plan:
    """How a call is computed.

    Attributes
    ----------
    path : {"slide", "attention"}
        The sliding-window kernel or the streaming patch attention.
    backend : {"native", "torch"}
        Who computes it (the sliding window is always native).
    pack : bool
        Keys packed straight into the native attention kernel's blocks of 16 keys.
    reason : str
        Why this path and back-end, in words.
    """

    path: str
    backend: str
    pack: bool
    reason: str


def images_per_chunk(n_images, memory_budget, bytes_per_image):
    """Training images per chunk: within ``memory_budget`` and ``CHUNK_BYTES``, with room
    for about four buffers of ``bytes_per_image``, at least one.

    A budget below one image's working memory cannot be kept: the training set is then
    streamed one image at a time (slow, and above the budget), with a warning that says so."""
    need = 4 * max(1, bytes_per_image)
    if memory_budget < need and n_images > 1:
        warn_caller(f"memory_budget={memory_budget} bytes is below the working memory of one "
                    f"training image (about {need} bytes): the training set is streamed one "
                    f"image at a time, slowly and above the budget; raise memory_budget "
                    f"(default {DEFAULT_MEMORY_BUDGET} bytes, 1 GiB)")
    cap = min(memory_budget, CHUNK_BYTES)
    return max(1, min(n_images, cap // need))


def native_available(kernel, dtype, device, backend="auto"):
    """Whether the native ``kernel`` (``"attention"`` or ``"sliding"``) can compute in
    ``dtype`` on ``device`` under ``backend`` (float32, the CPU, not ``"torch"``, the kernel
    built; channel counts aside)."""
    if backend == "torch" or device.type != "cpu" or dtype != torch.float32:
        return False
    return (load_kernel() if kernel == "attention" else load_slide_kernel()) is not None


def attention_backend(value_dim, dtype, device, backend="auto", track=False):
    """``(name, reason)``: ``"native"`` or ``"torch"`` for a streaming attention with
    ``value_dim`` value channels in ``dtype`` on ``device`` (see the module docstring)."""
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be 'auto', 'native' or 'torch', got {backend!r}")
    if track:
        return "torch", "the diagnostics (track=True) are accumulated by the torch back-end"
    why = None
    if device.type != "cpu":
        why = f"device {device} (the native kernel runs on the CPU)"
    elif dtype != torch.float32:
        why = f"{dtype} (the native kernel computes in float32)"
    elif not 1 <= value_dim <= 4:
        why = f"{value_dim} value channels (the native kernel takes 1 to 4)"
    elif load_kernel() is None:
        why = _UNAVAILABLE
    if backend == "native":
        if why is not None:
            raise ValueError("backend='native' needs a CPU with AVX-512 or AVX2, a C compiler, "
                             "float32 and at most 4 value channels")
        return "native", f"backend='native': the native kernel ({isa()})"
    if backend == "torch":
        return "torch", "backend='torch'"
    if why is None:
        return "native", f"the native kernel ({isa()}, float32 on the CPU)"
    return "torch", f"torch, as the native kernel does not apply: {why}"


def choose_backend(dim: int, value_dim: int, dtype: torch.dtype, device: torch.device,
                   backend: str = "auto") -> str:
    """Pick ``"native"`` or ``"torch"`` for a streaming attention (``dim`` does not matter):
    the name of :func:`attention_backend`."""
    return attention_backend(value_dim, dtype, device, backend)[0]


def joint_plan(plans):
    """One :class:`Plan` for several runs of one call (the super-resolution LE-MMSE computes
    groups of value channels separately): path and back-end ``"mixed"`` when they differ."""
    paths, backends = {p.path for p in plans}, {p.backend for p in plans}
    return Plan(paths.pop() if len(paths) == 1 else "mixed",
                backends.pop() if len(backends) == 1 else "mixed", False,
                f"{len(plans)} run(s) over groups of value channels: "
                + "; ".join(dict.fromkeys(p.reason for p in plans)))


def _slide_obstacle(problem, backend):
    """Why the sliding-window kernel cannot solve ``problem``, or ``None`` when it can."""
    geo, train = problem.geometry, problem.train
    if backend == "torch":
        return "backend='torch'"
    if geo.whiten is not None:
        return "the physics-aware blur (whitened distances)"
    if train.dtype != torch.float32 or train.device.type != "cpu":
        return f"{train.dtype} on {train.device} (it needs float32 on the CPU)"
    if geo.C > 4:
        return f"{geo.C} channels (at most 4)"
    if load_slide_kernel() is None:
        return _UNAVAILABLE
    return None


def plan(problem, *, backend="auto", algorithm="auto", track=False) -> Plan:
    """The :class:`Plan` for ``problem`` (a ``lemmse.patches.PatchProblem``).

    ``algorithm="sliding"`` raises a ValueError when the sliding window does not apply;
    ``"attention"`` always takes the patch attention; ``track=True`` (the diagnostics of
    ``posterior``) takes the torch patch attention.
    """
    if algorithm not in ("auto", "sliding", "attention"):
        raise ValueError(f"algorithm must be 'auto', 'sliding' or 'attention', got {algorithm!r}")
    geo, train = problem.geometry, problem.train
    if track:
        return Plan("attention", "torch", False, "the diagnostics of posterior (track=True): "
                                                 "the torch patch attention")
    if algorithm == "attention":
        why = "algorithm='attention'"
    else:
        why = _slide_obstacle(problem, backend)
        if why is None:
            return Plan("slide", "native", False,
                        f"the sliding-window kernel ({isa()}, float32 on the CPU, {geo.C} "
                        f"channel(s), unwhitened distances)")
        if algorithm == "sliding":
            raise ValueError(f"algorithm='sliding' does not apply here: {why}; use "
                             f"algorithm='auto'")
    name, because = attention_backend(problem.values.shape[1], train.dtype, train.device,
                                      backend)
    pack = name == "native" and geo.gid is None and (geo.H * geo.W) % 16 == 0
    packed = "; keys packed from the unfolded images into blocks of 16" if pack else ""
    return Plan("attention", name, pack,
                f"patch attention on {because}{packed} (not the sliding window: {why})")
