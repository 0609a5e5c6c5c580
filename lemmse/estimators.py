"""The four constrained empirical MMSE estimators (book chapters 2–6).

Each estimator is built once from a training set ``train`` ``[N, C, H, W]`` and a forward
operator, and called as ``est(y, sigma)`` on a batch of measurements ``y = A x + σ e``
``[B, C, H, W]``; it applies the pre-inverse ``B`` itself and returns ``x_hat`` ``[B, C, H, W]``.
All boundaries are circular.

- ``MMSE`` (chapter 2): ``x̂ = Σ_n softmax_n(-‖y - A x_n‖²/2σ²) x_n``;
- ``EquivariantMMSE`` (chapter 3): ``x̂ = Σ_{n,g} softmax_{n,g}(-‖y - T_g A x_n‖²/2σ²) T_g x_n``;
- ``LocalMMSE`` (chapter 4): ``x̂[i] = Σ_n softmax_n(-‖Π_i y - Π_i A x_n‖²/2σ²) x_n[i]``;
- ``LEMMSE`` (chapter 5): ``x̂[i] = Σ_{n,j} softmax_{n,j}(-‖Π_i y - Π_j A x_n‖²/2σ²) x_n[j]``.

These are the physics-agnostic forms (``B = I``).
``LEMMSE(..., group="d4")`` (chapter 14) takes as bank the orbit of the training patches under a
group of grid symmetries (:mod:`lemmse.groups`: ``"d4"``, ``"c4"``, ``"c2"``, ``"flips"``;
``"translations"`` is the estimator above), optionally with a weight ``group_weight = λ`` on the
keys of the non-identity elements; it is exactly equivariant to the group and the shifts.
Physics-aware variants (``preinverse="inverse"``, chapter 6): for a blur, ``B`` is the
regularised inverse filter and distances are Mahalanobis for the patch noise covariance
``σ² S``, ``S = Π B Bᵀ Πᵀ`` (computed by whitening queries and keys with ``L⁻¹``, ``S = L Lᵀ``,
in float64); for inpainting, ``B`` is the mask and a query position only sees key positions with
the same observed-pixel pattern, with distances over the observed pixels.

How ``LEMMSE`` and ``LocalMMSE`` are computed (the ``backend`` argument):

- **sliding window** (native, ``lemmse/_kernels/slide.c``): for every training image and
  every circular shift ``t`` (all ``H·W`` shifts for the LE-MMSE, only ``t = 0`` for the local
  MMSE) the distances of all query pixels ``i`` to the keys at ``i + t`` are one ``P × P`` box sum
  of the per-pixel squared differences ``Σ_c (v[c, p] - v_n[c, p + t])²``, so a (query, key)
  pair costs about ``2C + 2P`` additions instead of the ``2·C·P²`` of a patch dot product, from
  explicit differences (no cancellation at small σ).  Used for every call (not
  :meth:`~LEMMSE.posterior`) with ``backend`` ``"auto"`` or ``"native"`` when the estimator
  computes in float32 on the CPU, has at most 4 channels, is not the physics-aware blur
  (whitened distances), and the kernel is available (a CPU with AVX-512 or AVX2, a C compiler,
  ``LEMMSE_NATIVE`` not ``0``).  The physics-aware inpainting restricts the shifts per pixel to
  the positions with the same observed-pixel pattern.
- otherwise, **patch attention** (:mod:`lemmse.engine`): every patch is extracted and the
  streaming softmax attention runs on the ``D = C·P²``-dimensional patches (its fused native
  kernel or torch).  ``backend="torch"`` always takes this path with the torch back-end;
  :meth:`~LEMMSE.posterior` always takes it.
"""

from __future__ import annotations

import contextlib
import copy
import math
import numbers

import torch

from lemmse._native import load_slide_kernel
from lemmse._validate import bound_topk, check_topk
from lemmse.engine import DEFAULT_MEMORY_BUDGET, LOG2E, KeyChunk, StreamingAttention, no_tf32
from lemmse.operators import Denoising, Operator, SuperResolution
from lemmse.operators import preinverse as make_preinverse
from lemmse.patches import (PatchGeometry, PatchProblem, extract_patches, pattern_groups, unfold,
                            whitening)
from lemmse.posterior import Posterior, decode_ids, gaussian_log_density, image_posterior

_CHUNK_BYTES = 64 << 20
#: Shift groups of the sliding-window kernel (independent online-softmax states, merged at the
#: end): work items for the threads even for a single query image.
_SLIDE_GROUPS = 4
#: Largest |logit| (base 2) the fp32 sliding kernel is trusted with: beyond it the rounding of
#: the logits (2^-24 of their size) grows past 2^-8 and query images are redone in float64.
_FP32_LOGIT_LIMIT = 2.0 ** 16

__all__ = ["MMSE", "EquivariantMMSE", "LocalMMSE", "LEMMSE", "Posterior", "extract_patches"]


# ---------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def _single_thread():
    """Run memory-bound torch ops on one thread: with two OpenMP threads on a busy 2-core
    machine, a descheduled thread stalls every parallel region (measured 40x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _check_images(x, name, *, dtype=None, shape=None, device=None):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [B, C, H, W], got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{name} must have shape [B, C, H, W] (4 dimensions), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty: it needs at least one image, got {tuple(x.shape)}")
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        raise ValueError(f"{name} has images of shape {tuple(x.shape[1:])} (C, H, W), but the "
                         f"training set has {tuple(shape)}")
    if dtype is not None and x.dtype != dtype:
        raise ValueError(f"{name} has dtype {x.dtype}, but the estimator computes in {dtype}; "
                         f"convert it with {name}.to({dtype})")
    if device is not None and x.device != device:
        raise ValueError(f"{name} is on device {x.device}, but the training set is on {device}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or Inf values")
    return x


def _check_sigma(sigma, batch, dtype, device):
    """σ as a ``[batch]`` tensor of ``dtype`` on ``device``: a float or one value per image,
    positive and finite, and still positive in ``dtype`` (the one σ rule of the package: the
    estimators and :func:`lemmse.train.predict` use it)."""
    from lemmse._validate import screen_sigma

    sigma = screen_sigma(sigma)  # bool / complex / text values, alone or as elements
    if isinstance(sigma, bool) or (isinstance(sigma, torch.Tensor) and sigma.dtype == torch.bool):
        raise TypeError("sigma must be a float or one value per image, got a bool")
    if isinstance(sigma, torch.Tensor) and (sigma.is_complex() or not (
            sigma.is_floating_point() or sigma.dtype in (torch.int32, torch.int64))):
        raise TypeError(f"sigma must hold real numbers, got a tensor of dtype {sigma.dtype}")
    if isinstance(sigma, complex):
        raise TypeError(f"sigma must be a real number, got {sigma!r}")
    if isinstance(sigma, numbers.Real):
        s = torch.full((batch,), float(sigma), dtype=torch.float64, device=device)
    else:
        try:
            s = torch.as_tensor(sigma, dtype=torch.float64, device=device)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"sigma must be a float or a sequence/tensor of {batch} floats, "
                            f"got {type(sigma).__name__}") from None
        if s.ndim == 0:
            s = s.expand(batch)
        if s.ndim != 1 or s.shape[0] != batch:
            raise ValueError(f"sigma must be a float or have one value per image ({batch}), got "
                             f"shape {tuple(s.shape)}")
    if not torch.isfinite(s).all() or not (s > 0).all():
        raise ValueError(f"sigma must be positive and finite, got {s.tolist()}")
    low = float(s.min())
    s = s.to(dtype)
    if not (s > 0).all():
        raise ValueError(f"sigma = {low:g} underflows to 0 in {dtype} (smallest positive normal "
                         f"{torch.finfo(dtype).tiny:g}); use a larger sigma or float64")
    if not torch.isfinite((s.double() ** -2).to(dtype)).all():
        raise ValueError(f"sigma = {low:g} is too small for {dtype}: 1/sigma^2 overflows; use "
                         f"sigma >= {2 * torch.finfo(dtype).max ** -0.5:.1e} or float64")
    return s.contiguous()


# ---------------------------------------------------------------------------- base class
class _Estimator:
    """Shared construction, validation and pre-inverse handling."""

    _supports_inverse = True

    def __init__(self, train, operator=None, preinverse="identity", *, dtype=None,
                 memory_budget=DEFAULT_MEMORY_BUDGET, backend="auto", offset=None):
        _check_images(train, "train")
        operator = Denoising() if operator is None else operator
        if not isinstance(operator, Operator):
            raise TypeError(f"operator must be a lemmse.operators.Operator (Denoising, Inpainting,"
                            f" Blur), got {type(operator).__name__}")
        if dtype is None:
            dtype = train.dtype
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        if not isinstance(memory_budget, numbers.Integral) or memory_budget < 4096:
            raise ValueError(f"memory_budget must be an integer number of bytes >= 4096, got "
                             f"{memory_budget!r}")
        if backend not in ("auto", "native", "torch"):
            raise ValueError(f"backend must be 'auto', 'native' or 'torch', got {backend!r}")
        self.B = make_preinverse(operator, preinverse)  # validates the kind
        if self.B.kind == "inverse" and not self._supports_inverse and \
                not isinstance(operator, Denoising):
            raise ValueError(f"preinverse='inverse' is not available for "
                             f"{type(self).__name__}; use LEMMSE or LocalMMSE for the "
                             f"physics-aware estimators")
        try:
            operator.A(train[:1])
        except (ValueError, RuntimeError) as e:
            raise ValueError(f"operator {operator!r} does not fit the training images of shape "
                             f"{tuple(train.shape[1:])}: {e}") from None
        self.train = train.to(dtype)
        self.operator = operator
        self.preinverse = preinverse
        self.dtype = dtype
        self.device = train.device
        self.memory_budget = int(memory_budget)
        self.backend = backend
        self.N, self.C, self.H, self.W = train.shape
        # centring offset (per channel): distances are invariant to it, fp32 cancellation is not;
        # ``offset=`` [C] fixes it (the whole set's mean for a shard, lemmse.distributed)
        offset = self.train.mean(dim=(0, 2, 3)) if offset is None else \
            torch.as_tensor(offset, dtype=dtype, device=self.device).flatten()
        if offset.numel() != self.C or not torch.isfinite(offset).all():
            raise ValueError(f"offset must be {self.C} finite numbers (one per channel), got "
                             f"{offset.tolist()}")
        self._offset = offset.view(1, -1, 1, 1)

    # measured, pre-inverted, centred training images.  An inverse filter amplifies the
    # round-off of an fp32 FFT by up to 1/|k̂|, so pre-inverses are applied in float64.
    # ``dtype=torch.float64``: computed and returned in float64 (the exact diagnostics).
    def _keys_images(self, x, dtype=None):
        if self.B.needs_float64 or dtype == torch.float64:
            return (self.B(self.operator.A(x.double())) - self._offset).to(dtype or self.dtype)
        return self.B(self.operator.A(x)) - self._offset

    def _query_images(self, y, dtype=None):
        if self.B.needs_float64 or dtype == torch.float64:
            return (self.B(y.double()) - self._offset).to(dtype or self.dtype)
        return self.B(y) - self._offset

    def _prepare(self, y, sigma):
        _check_images(y, "y", dtype=self.dtype, shape=(self.C, self.H, self.W), device=self.device)
        return y, _check_sigma(sigma, y.shape[0], self.dtype, self.device)

    def _images_per_chunk(self, bytes_per_image):
        # within the budget, and at most _CHUNK_BYTES: small chunks stay in malloc's heap,
        # where fresh multi-100-MB buffers cost page faults on every chunk (measured 5x slower)
        cap = min(self.memory_budget, _CHUNK_BYTES)
        return max(1, min(self.N, cap // max(1, 4 * bytes_per_image)))

    def __call__(self, y, sigma):
        """Estimate ``x`` from the measurement ``y`` at noise level ``sigma``.

        Parameters
        ----------
        y : Tensor ``[B, C, H, W]``
            Measurements ``A x + σ e`` (same dtype and device as the estimator).
        sigma : float or sequence/Tensor ``[B]``
            Noise standard deviation, one value for all images or one per image.

        Returns
        -------
        Tensor ``[B, C, H, W]``
        """
        y, s = self._prepare(y, sigma)
        with torch.no_grad(), no_tf32():
            return self._estimate(y, s)

    def posterior(self, y, sigma, topk=8):
        """Estimate plus the diagnostics of the weights (see :class:`Posterior`).

        Two passes over the training set on the torch back-end (slower than a call).  For the
        :class:`MMSE` and :class:`EquivariantMMSE` the per-pixel fields are constant over the
        image; for the latter ``topk_image`` is the training image ``n`` and ``topk_position``
        the shift ``g = (rows, columns)`` by which it is rolled (down and right), in float64.

        Parameters
        ----------
        y : Tensor ``[B, C, H, W]``
        sigma : float or sequence/Tensor ``[B]``
        topk : int
            Number of largest weights reported per pixel.

        Returns
        -------
        Posterior
        """
        topk = check_topk(topk)
        y, s = self._prepare(y, sigma)
        n_keys, n_queries = self._posterior_size(y.shape[0])
        topk = bound_topk(topk, n_keys, n_queries, self.memory_budget)
        with torch.no_grad(), no_tf32():
            return self._posterior(y, s, int(topk))

    def __repr__(self):
        extra = f", patch_size={self.patch_size}" if hasattr(self, "patch_size") else ""
        return (f"{type(self).__name__}(N={self.N}, image=({self.C}, {self.H}, {self.W}){extra}, "
                f"operator={self.operator!r}, preinverse={self.preinverse!r}, dtype={self.dtype})")


# ---------------------------------------------------------------------------- patch family
class _PatchAttention(_Estimator):
    """Estimators of the form x̂[i] = Σ_{admissible (n, j)} softmax(-d(Π_i v, Π_j v_n)) x_n[j].

    A call takes the sliding-window kernel when it applies (see the module docstring), else the
    patch attention of :mod:`lemmse.engine`; ``_last_path`` records which (``"slide"`` or
    ``"attention"``). ``algorithm="attention"`` forces the patch attention (for comparisons);
    ``algorithm="sliding"`` requires the sliding-window kernel and raises where it does not apply.
    """

    _slide_band_rows = 0  # rows per work item of the sliding kernel (0: the kernel chooses)

    def __init__(self, train, operator=None, patch_size=5, preinverse="identity", *, algorithm="auto", **kw):
        super().__init__(train, operator, preinverse, **kw)
        if algorithm not in ("auto", "sliding", "attention"):
            raise ValueError(f"algorithm must be 'auto', 'sliding' or 'attention', got {algorithm!r}")
        self.algorithm = algorithm
        if isinstance(patch_size, bool) or not isinstance(patch_size, numbers.Integral):
            raise TypeError(f"patch_size must be an odd integer, got {patch_size!r}")
        if patch_size < 1 or patch_size % 2 == 0:
            raise ValueError(f"patch_size must be odd and positive, got {patch_size}")
        if patch_size > min(self.H, self.W):
            raise ValueError(f"patch_size must be at most the image size {min(self.H, self.W)}, "
                             f"got {patch_size}")
        self.patch_size = int(patch_size)
        self.D = self.C * patch_size ** 2
        P = self.patch_size
        self.geometry = PatchGeometry(self.C, self.H, self.W, P,
                                      whitening(self.B, self.C, self.H, self.W, P, self.device),
                                      self._position_groups())

    @property
    def _whiten(self):  # float64 L^-T or None
        return self.geometry.whiten

    @property
    def _gid(self):  # [H*W] group id of each position, or None
        return self.geometry.gid

    def _position_groups(self):
        raise NotImplementedError

    def _patches(self, v):
        return self.geometry.patches(v)

    def _run(self, y, s, track=False, topk=8, with_lse=False):
        Bn, HW, C = y.shape[0], self.H * self.W, self._value_channels()
        order, pos_ptr = self.geometry.layout()
        q = self._patches(self._query_images(y))  # [B, HW, D]
        sig = s[:, None].expand(Bn, HW)
        if order is None:
            Q, S, q_ptr = q.reshape(-1, self.D), sig.reshape(-1), None
        else:
            Q = q[:, order].transpose(0, 1).reshape(-1, self.D)
            S = sig[:, order].transpose(0, 1).reshape(-1)
            q_ptr = pos_ptr * Bn
        att = StreamingAttention(Q.contiguous(), S.contiguous(), q_ptr, value_dim=C,
                                 memory_budget=self.memory_budget, backend=self.backend,
                                 track=track, topk=topk)
        per_image = HW * (self.D + C + 2) * self.dtype.itemsize * 3
        step = self._images_per_chunk(per_image)
        passes = 2 if track else 1
        # keys straight into the native kernel's block layout when blocks of 16 keys never
        # straddle two images (H*W a multiple of 16, one group)
        self._pack = (not track and order is None and HW % 16 == 0 and att.backend == "native")
        for p in range(passes):
            if p == 1:
                att.begin_second_pass()
            for n0 in range(0, self.N, step):
                att.update(self._chunk(n0, min(self.N, n0 + step), order, pos_ptr, track))
        out, lse = att.result()
        # back to [B, HW, ...] in position order
        if order is None:
            out, lse = out.view(Bn, HW, C), lse.view(Bn, HW)
            unsort = None
        else:
            unsort = torch.argsort(order)
            out = out.view(HW, Bn, C).transpose(0, 1)[:, unsort]
            lse = lse.view(HW, Bn).transpose(0, 1)[:, unsort]
        x_hat = out.transpose(1, 2).reshape(Bn, C, self.H, self.W)
        if not track:
            return (x_hat, lse) if with_lse else x_hat
        return x_hat, lse, att, unsort

    # --- values: the clean centre pixels, unless a subclass attaches others ------------
    def _value_channels(self):
        return self.C

    def _value_images(self, n0, n1, x):
        """Values of the keys of training images ``n0:n1`` (``x = self.train[n0:n1]``), an
        image ``[n1 - n0, Cv, H, W]`` on the key grid: the centre pixels themselves."""
        return x

    def _chunk(self, n0, n1, order, pos_ptr, track):
        x = self.train[n0:n1]
        if getattr(self, "_pack", False):
            return self._packed_chunk(x, self._value_images(n0, n1, x))
        k = self._patches(self._keys_images(x))  # [Nc, HW, D]
        Cv = self._value_channels()
        v = self._value_images(n0, n1, x).flatten(2).transpose(1, 2)  # [Nc, HW, Cv]
        Nc, HW = k.shape[0], k.shape[1]
        ids = None
        if order is None:
            keys, vals = k.reshape(-1, self.D), v.reshape(-1, Cv)
            if track:
                ids = torch.arange(n0 * HW, n1 * HW, device=self.device)
            return KeyChunk(keys, vals, None, ids)
        keys = k[:, order].transpose(0, 1).reshape(-1, self.D)
        vals = v[:, order].transpose(0, 1).reshape(-1, Cv)
        if track:
            n_idx = torch.arange(n0, n1, device=self.device)
            ids = (n_idx[None, :] * HW + order.to(self.device)[:, None]).reshape(-1)
        return KeyChunk(keys.contiguous(), vals.contiguous(), pos_ptr * Nc, ids)

    def _packed_chunk(self, x, values):
        Nc, C, D, HW = x.shape[0], values.shape[1], self.D, self.H * self.W
        with _single_thread():
            u = unfold(self._keys_images(x), self.patch_size)  # [Nc, D, HW]
        if self._whiten is not None:  # float64 GEMM, on all threads (measured: 40 % of a CIFAR call on one)
            u = (self._whiten.T @ u.double()).to(self.dtype)
        with _single_thread():
            Kt = u.view(Nc, D, HW // 16, 16).permute(0, 2, 1, 3).reshape(-1, D, 16)
            kb = -0.5 * (Kt * Kt).sum(1)
            Vt = values.reshape(Nc, C, HW // 16, 16).permute(0, 2, 1, 3).reshape(-1, C, 16)
            packed = (Kt.contiguous(), kb.contiguous(), Vt.contiguous())
        return KeyChunk(None, None, packed=packed)

    def _estimate(self, y, s):
        plan = self._slide_plan()
        if plan is not None:
            self._last_path = "slide"
            return self._slide(y, s, *plan)
        self._last_path = "attention"
        x_hat = self._run(y, s)
        bad = ~torch.isfinite(x_hat).flatten(1).all(1)
        if self.dtype == torch.float32 and bool(bad.any()):
            x_hat[bad] = self._float64_twin()._run(y[bad].double(), s[bad].double()).to(self.dtype)
        return x_hat

    # --- precision guard ------------------------------------------------------------------
    def _float64_twin(self):
        """The same estimator in float64 on the torch patch attention (built once).

        The fp32 paths hold logits ``-‖q - k‖²/2σ²`` in float32: when σ is tiny next to the patch
        distances (or the inputs are far outside the training range) the logits reach 2^16 and
        more, their rounding error exceeds the gaps between the best keys, and the sliding
        kernel's online maximum can even overflow its sums.  Such query images are recomputed
        here, in float64, where the estimate tends to the nearest patch's centre as σ → 0.
        """
        twin = getattr(self, "_twin64", None)
        if twin is None:
            twin = copy.copy(self)
            twin.__dict__.pop("_shifts_cache", None)
            twin.train = self.train.double()
            twin._offset = self._offset.double()
            twin.dtype = torch.float64
            twin.backend = "torch"
            twin.algorithm = "attention"
            self._twin64 = twin
        return twin

    # --- sliding-window path -----------------------------------------------------------
    def _slide_shifts(self):
        """``(shifts [T, 2] int32, gid [H*W] int32 or None)`` for the sliding kernel."""
        raise NotImplementedError

    def _slide_plan(self):
        """``(kernel, shifts, gid)`` when the sliding-window kernel applies, else ``None``."""
        if self.algorithm == "attention":
            return None
        why = None
        if self.backend == "torch":
            why = "backend='torch'"
        elif self._whiten is not None:
            why = "the physics-aware blur (whitened distances)"
        elif self.dtype != torch.float32 or self.device.type != "cpu":
            why = f"{self.dtype} on {self.device} (it needs float32 on the CPU)"
        elif self.C > 4:
            why = f"{self.C} channels (at most 4)"
        fn = None if why else load_slide_kernel()
        if fn is None:
            if self.algorithm == "sliding":
                why = why or "the native kernel is unavailable (AVX-512 or AVX2, a C compiler, LEMMSE_NATIVE)"
                raise ValueError(f"algorithm='sliding' does not apply here: {why}; use algorithm='auto'")
            return None
        return (fn, *self._slide_shifts())

    def _slide(self, y, s, fn, shifts, gid, with_lse=False):
        """x̂ by the sliding-window kernel, streaming the training set in chunks.

        The shifts are split into ``S`` fixed groups with their own online-softmax state (so a
        single query image still gives ``S`` whole-image work items), merged here in float64;
        ``S`` does not depend on the thread count, so neither does the result.
        """
        Bn, C, H, W = y.shape
        SW = 16 * ((W + 15) // 16)
        T = shifts.shape[0]
        S = _SLIDE_GROUPS if T >= 16 * _SLIDE_GROUPS else 1
        with _single_thread():
            v = self._query_images(y).to(torch.float32).contiguous()
        qs = (-0.5 * LOG2E / s.double() ** 2).to(torch.float32).contiguous()
        m = torch.full((Bn, S, H, SW), -math.inf, dtype=torch.float32)
        acc = torch.zeros(Bn, S, H, C + 1, SW, dtype=torch.float64)
        step = self._images_per_chunk(3 * C * H * W * 4)  # keys, values, a temporary
        nthreads = torch.get_num_threads()
        g = 0 if gid is None else gid.data_ptr()
        for n0 in range(0, self.N, step):
            x = self.train[n0:n0 + step]
            with _single_thread():
                u = self._keys_images(x).to(torch.float32).contiguous()
            x = self._value_images(n0, n0 + step, x).contiguous()
            rc = fn(v.data_ptr(), qs.data_ptr(), Bn, C, H, W, self.patch_size, u.data_ptr(),
                    x.data_ptr(), x.shape[0], shifts.data_ptr(), T, S, g, m.data_ptr(),
                    acc.data_ptr(), int(self._slide_band_rows), nthreads)
            if rc != 0:
                raise RuntimeError(f"sliding-window kernel failed with code {rc} (B={Bn}, C={C}, "
                                   f"H={H}, W={W}, P={self.patch_size}); use backend='torch'")
        # merge the S groups: sums rescaled to the largest running maximum (base 2)
        m = m[..., :W].double()
        top = m.amax(1, keepdim=True)
        scale = torch.exp2(m - top).nan_to_num_(0.0)  # a group that saw no admissible key: 0
        acc = (acc[..., :W] * scale[:, :, :, None]).sum(1)  # [B, H, C+1, W]
        out = acc[:, :, 1:] / acc[:, :, :1]  # [B, H, C, W]
        x_hat = out.permute(0, 2, 1, 3).to(self.dtype).contiguous()
        # natural-log log-sum-exp of the logits -‖q - k‖²/2σ² (all of it: no term dropped)
        lse = (top[:, 0] * math.log(2.0) + torch.log(acc[:, :, 0])).reshape(Bn, H * W)
        # precision guard: fp32 logits of 2^16 and more (σ tiny next to the distances) or a
        # non-finite state: those query images again in float64 (see _float64_twin)
        bad = (top.flatten(1).abs().amax(1) >= _FP32_LOGIT_LIMIT) | \
            ~torch.isfinite(x_hat).flatten(1).all(1) | ~torch.isfinite(lse).all(1)
        if bool(bad.any()):
            x64, lse64 = self._float64_twin()._run(y[bad].double(), s[bad].double(),
                                                   with_lse=True)
            x_hat[bad] = x64.to(self.dtype)
            lse[bad] = lse64
        if not with_lse:
            return x_hat
        return x_hat, lse

    def _n_keys(self):
        """Number of admissible keys of each query position ``[H*W]`` (int64)."""
        return self.geometry.n_keys(self.N)

    def _x_lse(self, y, s):
        """``(x_hat, lse)``: the estimate and the natural-log log-sum-exp of the logits."""
        plan = self._slide_plan()
        if plan is not None:
            self._last_path = "slide"
            return self._slide(y, s, *plan, with_lse=True)
        self._last_path = "attention"
        x_hat, lse = self._run(y, s, with_lse=True)
        bad = ~(torch.isfinite(x_hat).flatten(1).all(1) & torch.isfinite(lse).all(1))
        if self.dtype == torch.float32 and bool(bad.any()):
            x64, lse64 = self._float64_twin()._run(y[bad].double(), s[bad].double(),
                                                   with_lse=True)
            x_hat[bad], lse[bad] = x64.to(self.dtype), lse64.to(lse.dtype)
        return x_hat, lse

    def _lse_and_keys(self, y, s):
        """``(lse [B, H*W], K [1, H*W])`` in float64: log-sum-exp and number of keys."""
        return self._x_lse(y, s)[1].double(), self._n_keys().to(torch.float64)[None]

    def log_density(self, y, sigma):
        """Log-density of every query patch under the smoothed training patches, from one pass.

        ``log((1/K) Σ_k N(Π_i v; k, σ² I_D))`` over the ``K`` admissible (measured, pre-inverted)
        training patches ``k`` of pixel ``i`` — the ``log_density`` of :meth:`posterior`, without
        its second pass and at the cost of one call (sliding-window kernel where it applies).
        High values: the query patch is typical of the training patches (chapter "What the
        agreement reveals").

        Parameters
        ----------
        y : Tensor ``[B, C, H, W]``
        sigma : float or sequence/Tensor ``[B]``

        Returns
        -------
        Tensor ``[B, H, W]``
        """
        y, s = self._prepare(y, sigma)
        with torch.no_grad(), no_tf32():
            lse, K = self._lse_and_keys(y, s)
            logdens = gaussian_log_density(lse, K, self.D, s.double()[:, None])
        return logdens.view(y.shape[0], self.H, self.W).to(self.dtype)

    def problem(self, dtype=None):
        """The patch-attention problem this estimator describes (see
        ``lemmse.patches.PatchProblem``): its geometry, training images, values, and the
        maps to query and key images, in ``dtype`` (default: the estimator's; ``torch.float64``
        for exact diagnostics such as ``lemmse.pixel_weights``)."""
        return PatchProblem(self.geometry, self.train, self._value_images(0, self.N, self.train),
                            lambda y: self._query_images(y, dtype),
                            lambda x: self._keys_images(x, dtype), self._prepare)

    def _posterior_size(self, batch):
        return int(self._n_keys().max()), batch * self.H * self.W

    def _posterior(self, y, s, topk):
        _, lse, att, unsort = self._run(y, s, track=True, topk=topk)
        x_hat = self._estimate(y, s)  # the estimate exactly as a call computes it
        Bn, H, W = y.shape[0], self.H, self.W
        HW = H * W
        d = att.diagnostics()
        K = att.n_keys.to(self.dtype).to(self.device)
        sq = s[:, None].expand(Bn, HW)
        if unsort is None:
            K = K.view(Bn, HW)
        else:
            K = K.view(HW, Bn).transpose(0, 1)[:, unsort]
        logdens = gaussian_log_density(lse, K, self.D, sq)

        def back(t):
            t = t.view(Bn, HW, *t.shape[1:]) if unsort is None else \
                t.view(HW, Bn, *t.shape[1:]).transpose(0, 1)[:, unsort]
            return t.reshape(Bn, H, W, *t.shape[2:])

        img, position = decode_ids(back(d["topk_ids"]), HW, W)
        dt = self.dtype
        return Posterior(x_hat, logdens.view(Bn, H, W).to(dt), back(d["n50"]),
                         back(d["participation"]).to(dt), back(d["topk_weights"]).to(dt),
                         img, position)


class LEMMSE(_PatchAttention):
    """Local-equivariant MMSE (chapter 5): x̂[i] = Σ_{n,j} softmax_{n,j}(-‖Π_i v - Π_j v_n‖²/2σ²) x_n[j].

    Parameters
    ----------
    train : Tensor ``[N, C, H, W]``
        Training images (the empirical prior); their dtype is the default compute dtype.
    operator : Operator, default ``Denoising()``
    patch_size : int, default 5
        Odd receptive field ``P`` (``P × P`` windows, all channels jointly: ``D = C P²``).
    preinverse : {"identity", "inverse"}
        Physics-agnostic (``B = I``) or physics-aware (blur: whitened distance; inpainting:
        observed-pattern groups).
    dtype : torch.dtype, optional
        ``torch.float32`` (default for fp32 training data) or ``torch.float64``.
    memory_budget : int
        Bound in bytes on the working memory (default 1 GiB); the training set is streamed in
        chunks that fit.
    backend : {"auto", "native", "torch"}
        ``"auto"`` and ``"native"``: the native kernels (the sliding-window kernel where it
        applies, see :mod:`lemmse.estimators`, else the patch attention of
        :mod:`lemmse.engine`, whose ``"auto"`` may pick torch); ``"torch"``: the patch attention
        with the torch back-end.
    algorithm : {"auto", "sliding", "attention"}
        ``"auto"``: the sliding-window kernel where it applies, else the patch attention;
        ``"attention"``: always the patch attention; ``"sliding"``: the sliding-window kernel, and
        a ValueError at the call where it does not apply.
    group : str, default ``"translations"``
        A group of grid symmetries (:mod:`lemmse.groups`: ``"d4"``, ``"c4"``, ``"c2"``,
        ``"flips"``, ``"translations"``).  The key bank becomes the patch bank of the orbit
        ``{g · x_n : g ∈ G}`` of the training set (chapter 14), so the estimator is exactly
        equivariant to ``G`` as well as to the shifts.  The operator must commute with ``G``
        (denoising always; inpainting with a ``G``-invariant mask; a blur with a
        ``G``-invariant kernel), else a ValueError.  ``"translations"``: today's estimator.
    group_weight : float in [0, 1], default 1
        Prior weight λ of the keys of the non-identity elements (``log λ`` added to their
        logits): ``x̂ = (Z_e x̂_e + λ Z_r x̂_r) / (Z_e + λ Z_r)`` with ``x̂_e, Z_e`` the estimate
        and partition function of the identity bank, ``x̂_r, Z_r`` those of the other
        elements.  λ = 1: the full group; λ = 0: the translation estimator.

    Examples
    --------
    >>> est = LEMMSE(train, patch_size=5)          # doctest: +SKIP
    >>> x_hat = est(y, sigma=0.2)                  # doctest: +SKIP
    >>> est_d4 = LEMMSE(train, patch_size=5, group="d4", group_weight=0.5)  # doctest: +SKIP
    """

    def __new__(cls, *args, **kw):
        # LEMMSE(train, SuperResolution(s), ...) is the super-resolution LE-MMSE (chapter 15)
        op = args[1] if len(args) > 1 else kw.get("operator")
        if cls is LEMMSE and isinstance(op, SuperResolution):
            from lemmse.superres import SuperResolutionLEMMSE

            return super().__new__(SuperResolutionLEMMSE)
        return super().__new__(cls)

    def __init__(self, train, operator=None, patch_size=5, preinverse="identity", *,
                 group="translations", group_weight=1.0, **kw):
        from lemmse.groups import check_commutes, get_group

        G = get_group(group)
        lam = group_weight
        if isinstance(lam, bool) or not isinstance(lam, numbers.Real) or \
                not 0.0 <= float(lam) <= 1.0:
            raise ValueError(f"group_weight must be a number in [0, 1], got {group_weight!r}")
        self.group, self.group_weight = G.name, float(lam)
        self._rest = None
        if len(G) == 1:
            super().__init__(train, operator, patch_size, preinverse, **kw)
            return
        _check_images(train, "train")
        check_commutes(G, Denoising() if operator is None else operator, *train.shape[-2:])
        if self.group_weight == 0.0:
            super().__init__(train, operator, patch_size, preinverse, **kw)
            return
        rest = torch.cat([g.apply(train) for g in G.elements[1:]])
        if self.group_weight == 1.0:  # one bank: the orbit of the training set
            super().__init__(torch.cat([train, rest]), operator, patch_size, preinverse, **kw)
            return
        super().__init__(train, operator, patch_size, preinverse, **kw)
        self._rest = LEMMSE(rest, operator, patch_size, preinverse, **kw)

    def _estimate(self, y, s):
        if self._rest is None:
            return super()._estimate(y, s)
        x0, l0 = self._x_lse(y, s)
        x1, l1 = self._rest._x_lse(y, s)
        logit = l1.double() - l0.double() + math.log(self.group_weight)
        a = torch.sigmoid(logit).view(y.shape[0], 1, self.H, self.W)
        return ((1.0 - a) * x0.double() + a * x1.double()).to(self.dtype)

    def _lse_and_keys(self, y, s):
        if self._rest is None:
            return super()._lse_and_keys(y, s)
        l0, k0 = super()._lse_and_keys(y, s)
        l1, k1 = self._rest._lse_and_keys(y, s)
        lam = self.group_weight
        return torch.logaddexp(l0, l1 + math.log(lam)), k0 + lam * k1

    def posterior(self, y, sigma, topk=8):
        """Estimate plus the diagnostics of the weights (see :class:`Posterior`); not for
        ``0 < group_weight < 1``."""
        if self._rest is not None:
            raise ValueError("posterior is not available for 0 < group_weight < 1 (two key "
                             "banks); use group_weight=1 or 0, or call the estimator")
        return super().posterior(y, sigma, topk)

    def __repr__(self):
        r = super().__repr__()
        if self.group == "translations":
            return r
        return r[:-1] + f", group={self.group!r}, group_weight={self.group_weight:g})"

    def _position_groups(self):
        return pattern_groups(self.B, self.C, self.H, self.W, self.patch_size)

    def _slide_shifts(self):
        if not hasattr(self, "_shifts_cache"):
            a, b = torch.meshgrid(torch.arange(self.H), torch.arange(self.W), indexing="ij")
            shifts = torch.stack([a.flatten(), b.flatten()], 1).to(torch.int32).contiguous()
            gid = None if self._gid is None else self._gid.to(torch.int32).contiguous()
            self._shifts_cache = (shifts, gid)
        return self._shifts_cache


class LocalMMSE(_PatchAttention):
    """Local (not equivariant) MMSE (chapter 4): x̂[i] = Σ_n softmax_n(-‖Π_i v - Π_i v_n‖²/2σ²) x_n[i].

    Every pixel position has its own key bank (the training patches at that same position).
    Parameters as :class:`LEMMSE`.  With ``preinverse="inverse"`` and a mask, distances are over
    the observed pixels of the window (all keys at one position share its pattern).
    """

    def _position_groups(self):
        return torch.arange(self.H * self.W, dtype=torch.int64)

    def _slide_shifts(self):  # keys only at the query's own position: the shift t = 0
        return torch.zeros(1, 2, dtype=torch.int32), None


# ---------------------------------------------------------------------------- global ones
class MMSE(_Estimator):
    """Unconstrained empirical MMSE (chapter 2): x̂ = Σ_n softmax_n(-‖v - v_n‖²/2σ²) x_n.

    Parameters as :class:`LEMMSE` without ``patch_size``.  With ``preinverse="inverse"``, a mask
    restricts distances to the observed pixels, and for a blur the whitened distance equals the
    distance between the measurements themselves (``B`` is invertible), so the agnostic and
    aware MMSE coincide.
    """

    def _flat(self, v):
        v = v.flatten(1)
        mask = self.B.mask
        if mask is not None:
            keep = mask.expand(1, self.C, self.H, self.W).flatten().bool()
            v = v[:, keep]
        return v

    def _query_images(self, y):  # physics-aware blur == agnostic (see class docstring)
        if self.B.is_filter:
            return y - self._offset
        return super()._query_images(y)

    def _keys_images(self, x):
        if self.B.is_filter:
            return self.operator.A(x) - self._offset
        return super()._keys_images(x)

    def _run(self, y, s, track=False, topk=8):
        Q = self._flat(self._query_images(y)).contiguous()
        D = Q.shape[1]
        Cv = self.C * self.H * self.W
        att = StreamingAttention(Q, s, None, value_dim=Cv, memory_budget=self.memory_budget,
                                 backend="torch", track=track, topk=topk)
        step = self._images_per_chunk((D + Cv) * self.dtype.itemsize * 2)
        for p in range(2 if track else 1):
            if p == 1:
                att.begin_second_pass()
            for n0 in range(0, self.N, step):
                x = self.train[n0:n0 + step]
                ids = torch.arange(n0, n0 + x.shape[0], device=self.device) if track else None
                att.update(KeyChunk(self._flat(self._keys_images(x)).contiguous(),
                                    x.flatten(1), None, ids))
        out, lse = att.result()
        return out.view(-1, self.C, self.H, self.W), lse, att, D

    def _estimate(self, y, s):
        return self._run(y, s)[0]

    def _posterior_size(self, batch):
        return self.N, batch

    def _posterior(self, y, s, topk):
        _, lse, att, D = self._run(y, s, track=True, topk=topk)
        x_hat = self._estimate(y, s)
        d = att.diagnostics()
        logdens = gaussian_log_density(lse, self.N, D, s)
        image, pos = decode_ids(d["topk_ids"], 1, 1)  # ids name images; position (0, 0)
        dt = self.dtype
        return image_posterior(x_hat, logdens.to(dt), d["n50"], d["participation"].to(dt),
                               d["topk_weights"].to(dt), image, pos, H=self.H, W=self.W)


class EquivariantMMSE(_Estimator):
    """Translation-equivariant MMSE (chapter 3).

    x̂ = Σ_{n,g} w_{n,g} T_g x_n with w = softmax_{n,g}(-‖y - T_g A x_n‖²/2σ²) over all ``H·W``
    circular shifts ``g``.  The correlations ``⟨y, T_g A x_n⟩`` for all shifts and the output
    ``Σ_n w_n ⊛ x_n`` are computed with FFTs (float64 internally, as the logits at small σ
    need it), streaming over chunks of training images with an online log-sum-exp.
    Physics-agnostic only (``preinverse="identity"``).
    """

    _supports_inverse = False

    def _logit_chunks(self, v, s, extra_bytes_per_image=0):
        """Yield ``(n0, x, L)`` per chunk of training images ``x`` (float64) from ``n0``: the
        logits ``L[b, n, a, c] = (⟨v_b, T_(a,c) A x_n⟩ - ‖A x_n‖²/2) / σ_b²`` ``[B, Nc, H, W]``
        of every key, the shift ``(a, c)`` rolling the image down and right."""
        f64 = torch.float64
        Bn = v.shape[0]
        Vf = torch.fft.rfft2(v)
        inv_var = (1.0 / s.to(f64) ** 2).view(Bn, 1, 1, 1)
        per_image = self.C * self.H * self.W * 16 * (Bn + 2) + extra_bytes_per_image
        step = self._images_per_chunk(per_image)
        for n0 in range(0, self.N, step):
            x = self.train[n0:n0 + step].to(f64)
            a = self._keys_images(x).to(f64)
            Af = torch.fft.rfft2(a)
            # corr[b, n, g] = Σ_c Σ_p v[b,c,p] a[n,c,p-g]
            corr = torch.fft.irfft2((Vf[:, None] * Af.conj()[None]).sum(2), s=(self.H, self.W))
            half = 0.5 * (a * a).sum(dim=(1, 2, 3))
            yield n0, x, (corr - half.view(1, -1, 1, 1)) * inv_var

    def _estimate(self, y, s):
        f64 = torch.float64
        v = self._query_images(y).to(f64)  # [B, C, H, W]
        Bn = v.shape[0]
        m = torch.full((Bn,), -math.inf, dtype=f64, device=self.device)
        den = torch.zeros(Bn, dtype=f64, device=self.device)
        num = torch.zeros(Bn, self.C, self.H, self.W, dtype=f64, device=self.device)
        for _, x, L in self._logit_chunks(v, s):  # L: [B, Nc, H, W]
            bm = L.amax(dim=(1, 2, 3))
            m_new = torch.maximum(m, bm)
            scale = torch.exp(m - m_new)
            Wt = torch.exp(L - m_new.view(Bn, 1, 1, 1))
            den = den * scale + Wt.sum(dim=(1, 2, 3))
            Xf = torch.fft.rfft2(x)  # [Nc, C, H, W/2+1]
            conv = torch.fft.irfft2((torch.fft.rfft2(Wt)[:, :, None] * Xf[None]).sum(1),
                                    s=(self.H, self.W))
            num = num * scale.view(Bn, 1, 1, 1) + conv
            m = m_new
        return (num / den.view(Bn, 1, 1, 1)).to(self.dtype)

    def _posterior_size(self, batch):
        return self.N * self.H * self.W, batch

    def _posterior(self, y, s, topk):
        """Diagnostics over the ``N·H·W`` keys ``T_g A x_n``: two extra passes, in float64."""
        f64 = torch.float64
        x_hat = self._estimate(y, s)
        v = self._query_images(y).to(f64)
        Bn, H, W, HW = v.shape[0], self.H, self.W, self.H * self.W
        att = StreamingAttention(v.flatten(1), s.to(f64), None, value_dim=0,
                                 memory_budget=self.memory_budget, backend="torch",
                                 track=True, topk=topk)
        extra = 48 * Bn * HW  # the second pass's temporaries per key
        for p in range(2):
            if p == 1:
                att.begin_second_pass()
            for n0, _, L in self._logit_chunks(v, s, extra):
                ids = torch.arange(n0 * HW, n0 * HW + L[0].numel(), device=self.device)
                att.update_logits(L.reshape(Bn, -1), ids)
        _, lse = att.result()
        d = att.diagnostics()
        logdens = gaussian_log_density(lse, self.N * HW, self.C * HW, s.to(f64))
        image, pos = decode_ids(d["topk_ids"], HW, W)
        dt = self.dtype
        return image_posterior(x_hat, logdens.to(dt), d["n50"], d["participation"].to(dt),
                               d["topk_weights"].to(dt), image, pos, H=H, W=W)
