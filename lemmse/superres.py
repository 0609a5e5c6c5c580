"""The LE-MMSE for super-resolution and the exact Jacobian of the LE-MMSE (book chapter 15).

Super-resolution by a factor ``s`` (:class:`lemmse.operators.SuperResolution`): ``A`` averages
``s × s`` blocks and ``y = A x + σ e`` lives on the LR grid ``h × w = H/s × W/s``.
A network of the EDSR kind (convolutions on the LR grid, a pixel-shuffle head) is equivariant to
LR shifts (an LR shift by 1 moves the HR output by ``s``) and local on the LR grid: the HR block
at LR position ``i`` depends only on the ``P × P`` LR patch ``Π_i y``.  The empirical MMSE of that
class (derived in chapter 15) is the same attention as the denoising LE-MMSE, with the LR
patches of the measured training images as keys and their HR ``s × s`` blocks as values:

.. math::

    \\hat x(y)[\\mathrm{block}\\ i] =
      \\frac{\\sum_{n,j} \\omega_{n,j}(i)\\, x_n[\\mathrm{block}\\ j]}{\\sum_{n,j} \\omega_{n,j}(i)},
    \\qquad
    \\omega_{n,j}(i) = \\exp\\big(-\\lVert \\Pi_i y - \\Pi_j A x_n \\rVert^2 / 2\\sigma^2\\big),

``j`` over all LR positions (circular).  ``LEMMSE(train, SuperResolution(s), patch_size=P)``
returns a :class:`SuperResolutionLEMMSE`.

How it is computed: the ``C s²`` numbers of a block are split into groups of value channels,
each group one run of the machinery of :mod:`lemmse.estimators` on the LR grid (same keys, other
values).  The fused native attention kernel takes at most 4 value channels and the sliding-window
kernel as many as the keys have, so ``"auto"`` picks, on the CPU in float32, either
``ceil(C s² / 4)`` attention runs or ``s²`` sliding runs (one per position inside the block),
whichever is fewer after weighting a sliding run at half an attention run (measured on
FashionMNIST 14 × 14 and CIFAR-10 16 × 16, ``benchmarks/bench_superres.py``): one attention run for
grey ×2, four sliding runs for colour ×2.  Elsewhere (float64, a GPU, ``backend="torch"``) one
torch run carries all ``C s²`` values.

:func:`jacobian` gives the exact derivative of the LE-MMSE's output block at chosen pixels with
respect to its query patch (the linear part of the estimator, chapter 15):

.. math::

    \\frac{\\partial \\hat x[\\mathrm{block}\\ i]}{\\partial \\Pi_i y} =
      \\frac{1}{\\sigma^2}\\,\\mathrm{Cov}_{\\omega(i)}\\big(x_n[\\mathrm{block}\\ j],\\ \\Pi_j A x_n\\big),

the covariance between the values and the keys under the normalised weights ``ω(i)``; for a
denoising LE-MMSE (``s = 1``) the values are the centre pixels.  :func:`bank_moments` gives the
same moments under uniform weights: the ``σ → ∞`` limit, whose covariance divided by ``σ²`` is
the data-derived linear interpolator of the chapter.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from lemmse._estimator import _check_dtype, _check_images, _check_sigma
from lemmse._runtime import no_tf32
from lemmse.backends.planner import DEFAULT_MEMORY_BUDGET, joint_plan, native_available
from lemmse.estimators import LEMMSE, Posterior
from lemmse.patches import extract_patches, unfold
from lemmse.operators import Denoising, SuperResolution

__all__ = ["SuperResolutionLEMMSE", "jacobian", "bank_moments", "jacobian_response"]

#: Cost of one sliding-window run relative to one native attention run on the same LR problem
#: (measured: FashionMNIST 14×14, N = 10 000, P = 5: 1.76 s vs 2.83 s; CIFAR-10 16×16,
#: N = 4 000: 2.34 s vs 3.87 s).
_SLIDE_COST = 0.6


class _BlockBank(LEMMSE):
    """The LE-MMSE machinery on the LR grid, with some channels of the HR blocks as values."""

    def _value_images(self, n0, n1, x):
        return self._vals[n0:n1]

    def _float64_twin(self):
        twin = getattr(self, "_twin64", None)
        if twin is None:
            twin = super()._float64_twin()
            twin._vals = self._vals.double()
        return twin


class SuperResolutionLEMMSE(LEMMSE):
    """LE-MMSE for super-resolution: each HR ``s × s`` block is the softmax average of the
    training blocks whose LR patches are close to the query's LR patch (chapter 15).

    Built by ``LEMMSE(train, SuperResolution(s), patch_size=P)``; called as ``est(y, sigma)``
    with ``y`` the LR measurement ``[B, C, H/s, W/s]``, it returns the HR estimate
    ``[B, C, H, W]``.

    Parameters
    ----------
    train : Tensor ``[N, C, H, W]``
        HR training images, ``H`` and ``W`` multiples of ``s``.
    operator : SuperResolution
    patch_size : int, default 5
        Odd LR patch size ``P`` (at most the LR image size).
    preinverse : {"identity"}
        The only choice: the estimator works on the LR grid itself.
    dtype, memory_budget, backend, algorithm
        As for :class:`lemmse.estimators.LEMMSE`; ``algorithm="sliding"`` / ``"attention"`` force the
        sliding-window runs (one per position in the block) or the attention runs.

    Notes
    -----
    ``log_density`` is that of the LR query patches under the LR training patches (the same for
    every value channel); :meth:`posterior` returns the HR estimate with the diagnostics of the
    weights on the LR grid (``[B, h, w]``).  Groups other than the translations are not
    available for super-resolution.
    """

    def __init__(self, train, operator, patch_size=5, preinverse="identity", *,
                 group="translations", group_weight=1.0, dtype=None,
                 memory_budget=DEFAULT_MEMORY_BUDGET, backend="auto", algorithm="auto"):
        if not isinstance(operator, SuperResolution):
            raise TypeError(f"operator must be a SuperResolution, got {type(operator).__name__}")
        _check_images(train, "train")
        if preinverse != "identity":
            raise ValueError(f"preinverse must be 'identity' for super-resolution (the estimator "
                             f"works on the LR grid), got {preinverse!r}")
        if group not in ("translations", None):
            raise ValueError(f"group={group!r} is not available for super-resolution; use "
                             f"group='translations'")
        if algorithm not in ("auto", "sliding", "attention"):
            raise ValueError(f"algorithm must be 'auto', 'sliding' or 'attention', got "
                             f"{algorithm!r}")
        dtype = _check_dtype(dtype, train.dtype)
        s = operator.factor
        N, C, H, W = train.shape
        try:
            h, w = operator.lr_shape(H, W)
        except ValueError as e:
            raise ValueError(f"train: {str(e).split(': ', 1)[1]}") from None
        if isinstance(patch_size, numbers.Integral) and not isinstance(patch_size, bool) \
                and patch_size > min(h, w):
            raise ValueError(f"patch_size must be at most the LR image size {min(h, w)}, got "
                             f"{patch_size}")
        x = train.to(dtype)
        lr = operator.A(x)  # [N, C, h, w]
        blocks = F.pixel_unshuffle(x, s)  # [N, C s², h, w]: channel c s² + a s + b
        self.operator, self.factor, self.preinverse = operator, s, "identity"
        self.group, self.group_weight, self._rest = "translations", 1.0, None
        self.N, self.C, self.H, self.W, self.h, self.w = N, C, H, W, h, w
        self.dtype, self.device, self.backend, self.algorithm = dtype, x.device, backend, algorithm
        self.memory_budget = memory_budget
        self.patch_size = patch_size
        self.train = x
        self._lr_train, self._blocks = lr, blocks
        self._groups = self._value_groups()
        self._banks = []
        for idx, alg in self._groups:
            bank = _BlockBank(lr, Denoising(), patch_size, dtype=dtype,
                              memory_budget=memory_budget, backend=backend, algorithm=alg)
            bank._vals = blocks[:, idx].contiguous()
            self._banks.append(bank)
        self.patch_size, self.D = self._banks[0].patch_size, self._banks[0].D

    def _value_groups(self):
        """``[(channel indices, algorithm)]``: how the ``C s²`` block values are computed."""
        C, s2 = self.C, self.factor ** 2
        every = list(range(C * s2))
        phases = [[c * s2 + k for c in range(C)] for k in range(s2)]  # one block position each
        fours = [every[i:i + 4] for i in range(0, len(every), 4)]
        if self.algorithm == "sliding":
            return [(p, "sliding") for p in phases]

        def available(kernel):
            return native_available(kernel, self.dtype, self.device, self.backend)

        native = available("attention")
        if self.algorithm == "attention":
            return [(g, "attention") for g in fours] if native else [(every, "attention")]
        if not native:
            if C <= 4 and available("sliding"):
                return [(p, "sliding") for p in phases]
            return [(every, "attention")]
        slide = C <= 4 and available("sliding")
        if slide and _SLIDE_COST * s2 < len(fours):
            return [(p, "sliding") for p in phases]
        return [(g, "attention") for g in fours]

    # --- calls ---------------------------------------------------------------------------
    def _prepare(self, y, sigma):
        if isinstance(y, torch.Tensor) and y.ndim == 4 and tuple(y.shape[1:]) == \
                (self.C, self.H, self.W) and (self.h, self.w) != (self.H, self.W):
            raise ValueError(f"y has the HR shape {tuple(y.shape[1:])}; the estimator takes the "
                             f"LR measurement [B, {self.C}, {self.h}, {self.w}] "
                             f"(operator.measure(x, sigma))")
        _check_images(y, "y", dtype=self.dtype, device=self.device)
        if tuple(y.shape[1:]) != (self.C, self.h, self.w):
            raise ValueError(f"y must be the LR measurement [B, {self.C}, {self.h}, {self.w}] "
                             f"of {self.operator!r}, got images of shape {tuple(y.shape[1:])}")
        return y, _check_sigma(sigma, y.shape[0], self.dtype, self.device)

    def _estimate(self, y, s, first=None):
        """``first``: the first value group's estimate, when its bank has just computed it
        (:meth:`posterior`; its ``last_plan`` is then that call's)."""
        out = torch.empty(y.shape[0], self.C * self.factor ** 2, self.h, self.w,
                          dtype=self.dtype, device=self.device)
        plans = []
        for i, ((idx, _), bank) in enumerate(zip(self._groups, self._banks)):
            out[:, idx] = first if i == 0 and first is not None else bank._estimate(y, s)
            plans.append(bank.last_plan)
        self.last_plan = joint_plan(plans)
        return F.pixel_shuffle(out, self.factor)

    def plan(self, track=False):
        """The plan of a call: that of every run over a group of value channels, joined (path
        ``"mixed"`` when the runs differ; see :meth:`lemmse.estimators.LEMMSE.plan`)."""
        if track:
            return self._banks[0].plan(track=True)
        return joint_plan([bank.plan() for bank in self._banks])

    def log_density(self, y, sigma):
        """Log-density of every LR query patch under the smoothed LR training patches,
        ``[B, h, w]`` (see :meth:`lemmse.estimators.LEMMSE.log_density`)."""
        return super().log_density(y, sigma)

    def _log_density(self, y, s):  # the keys of every value group are the same LR patches
        return self._banks[0]._log_density(y, s)

    def posterior(self, y, sigma, topk=8):
        """The HR estimate and the diagnostics of the weights on the LR grid (``[B, h, w]``
        fields; the top-k positions are LR positions, the values their HR blocks)."""
        y, s = self._prepare(y, sigma)
        p = self._banks[0].posterior(y, s, topk)
        with torch.no_grad(), no_tf32():
            x_hat = self._estimate(y, s, first=p.x_hat)
        return Posterior(x_hat, p.log_density, p.n50, p.participation, p.topk_weights,
                         p.topk_image, p.topk_position)

    def __repr__(self):
        return (f"SuperResolutionLEMMSE(N={self.N}, image=({self.C}, {self.H}, {self.W}), "
                f"LR=({self.h}, {self.w}), patch_size={self.patch_size}, "
                f"operator={self.operator!r}, dtype={self.dtype})")

    # --- the key bank, for jacobian() ----------------------------------------------------
    def _bank_parts(self):
        bank = self._banks[0]
        return bank, self._lr_train, self._blocks, self.C * self.factor ** 2


# ---------------------------------------------------------------------------- Jacobian
def _bank_of(est):
    """``(machinery, key images, value images [N, Cv, h, w], Cv)`` of a LE-MMSE."""
    if isinstance(est, SuperResolutionLEMMSE):
        return est._bank_parts()
    if not isinstance(est, LEMMSE):
        raise TypeError(f"est must be a lemmse.LEMMSE (denoising or super-resolution), got "
                        f"{type(est).__name__}")
    if est.B.kind != "identity":
        raise ValueError("jacobian needs a physics-agnostic LE-MMSE (preinverse='identity')")
    if est._rest is not None:
        raise ValueError("jacobian is not available for 0 < group_weight < 1 (two key banks)")
    return est, est.train, est.train, est.C


def _query(est, y):
    """The single query image, validated, as ``[1, C, h, w]``."""
    if isinstance(y, torch.Tensor) and y.ndim == 3:
        y = y[None]
    if not isinstance(y, torch.Tensor) or y.ndim != 4 or y.shape[0] != 1:
        got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"y must be one measurement [C, h, w] or [1, C, h, w], got {got}")
    return y


def _moments(est, y, sigma, pixels):
    """Weighted moments of values and keys for the query patches at ``pixels``.

    Returns float64 ``(mean_v [K, Cv], mean_k [K, D], cov [K, Cv, D])``, keys centred as the
    estimator centres them; ``sigma=None``: uniform weights (the same for every pixel).
    """
    bank, keys_img, vals_img, Cv = _bank_of(est)
    P, D = bank.patch_size, bank.D
    h, w = keys_img.shape[-2:]
    if sigma is None:
        q = None
        K = 1
    else:
        y = _query(est, y)
        y, s = est._prepare(y, sigma)
        pix = torch.as_tensor(pixels, dtype=torch.int64).reshape(-1, 2)
        if pix.numel() == 0 or bool(((pix < 0) | (pix >= torch.tensor([h, w]))).any()):
            raise ValueError(f"pixels must be (row, column) pairs inside the {h}×{w} grid of "
                             f"the estimator's outputs, got {pixels!r}")
        qp = extract_patches(bank._query_images(y).double(), P)[0]  # [hw, D]
        q = qp[pix[:, 0] * w + pix[:, 1]]  # [K, D]
        K = q.shape[0]
        inv = 1.0 / float(s[0].double()) ** 2
    m = torch.full((K, 1), -math.inf, dtype=torch.float64)
    Z = torch.zeros(K, 1, dtype=torch.float64)
    Sv = torch.zeros(K, Cv, dtype=torch.float64)
    Sk = torch.zeros(K, D, dtype=torch.float64)
    Svk = torch.zeros(K, Cv, D, dtype=torch.float64)
    step = max(1, (32 << 20) // (8 * h * w * (D + Cv) * max(1, K)))
    with torch.no_grad():
        for n0 in range(0, keys_img.shape[0], step):
            kx = keys_img[n0:n0 + step]
            k = unfold(bank._keys_images(kx).double(), P).transpose(1, 2).reshape(-1, D)
            v = vals_img[n0:n0 + step].double().flatten(2).transpose(1, 2).reshape(-1, Cv)
            if q is None:
                logit = torch.zeros(1, k.shape[0], dtype=torch.float64)
            else:
                logit = -0.5 * inv * torch.cdist(q, k).square()  # [K, M]
            top = torch.maximum(m, logit.amax(1, keepdim=True))
            scale = torch.exp(m - top)
            e = torch.exp(logit - top)
            Z = Z * scale + e.sum(1, keepdim=True)
            Sv = Sv * scale + e @ v
            Sk = Sk * scale + e @ k
            Svk = Svk * scale[:, :, None] + torch.einsum("km,mv,md->kvd", e, v, k)
            m = top
    mv, mk = Sv / Z, Sk / Z
    cov = Svk / Z[:, :, None] - mv[:, :, None] * mk[:, None, :]
    return mv, mk, cov


def jacobian(est, y, sigma, pixels):
    """Exact Jacobian of a LE-MMSE's output at LR ``pixels`` with respect to the query patch.

    ``J[k] = Cov_{ω(i_k)}(values, keys) / σ²`` (chapter 15): the derivative of the output block
    (``C s²`` values, ordered ``c s² + a s + b`` for the HR pixel ``(s i1 + a, s i2 + b)``; the
    ``C`` centre values for a denoiser) with respect to the query patch ``Π_i y``, computed in
    float64 over the whole key bank.

    Parameters
    ----------
    est : LEMMSE or SuperResolutionLEMMSE
        Physics-agnostic, one key bank (``group_weight`` 0 or 1).
    y : Tensor ``[C, h, w]`` or ``[1, C, h, w]``
        One measurement (the estimator's dtype and device).
    sigma : float
    pixels : sequence of ``(row, column)``
        Output positions on the measurement grid.

    Returns
    -------
    Tensor ``[K, Cv, C, P, P]`` (float64)
        ``J[k, v, c, a, b] = ∂ x̂_v(i_k) / ∂ y[c, i_k + (a - r, b - r)]`` (circular indices,
        ``r = (P - 1) / 2``).
    """
    _, _, cov = _moments(est, y, sigma, pixels)
    s = float(_check_sigma(sigma, 1, torch.float64, "cpu")[0])
    bank = _bank_of(est)[0]
    P, C = bank.patch_size, bank.C
    return (cov / s ** 2).reshape(cov.shape[0], cov.shape[1], C, P, P)


def bank_moments(est):
    """Uniform-weight moments of the key bank: the ``σ → ∞`` limit of the LE-MMSE.

    Returns ``(mean_value [Cv], mean_key [C, P, P], cov [Cv, C, P, P])`` in float64, keys
    centred as the estimator centres them (their mean is then ≈ 0); for large σ,
    ``x̂(i) ≈ mean_value + cov · (Π_i y - offset - mean_key) / σ²`` (chapter 15).
    """
    bank = _bank_of(est)[0]
    mv, mk, cov = _moments(est, None, None, None)
    P, C = bank.patch_size, bank.C
    return mv[0], mk[0].reshape(C, P, P), cov[0].reshape(-1, C, P, P)


def jacobian_response(J, factor, size=None):
    """HR impulse response of the linear map of a Jacobian at a constant background.

    On a constant query every pixel has the same weights, so one ``J`` ``[Cv, C, P, P]`` (for
    example ``jacobian(...)[0]`` or ``bank_moments(est)[2] / σ²``) holds the whole response to an
    LR impulse at LR pixel ``j``: the HR block at LR position ``j - d`` receives ``J[:, :, r + d]``.
    Returned for channel ``c → c`` (the same channel in and out), centred: the impulse's
    block occupies rows/columns ``[s r, s r + s)`` of a ``[C, s P, s P]`` map (padded with zeros
    to ``size`` HR pixels per axis, the block staying at the centre, if given).
    """
    if not isinstance(J, torch.Tensor) or J.ndim != 4:
        raise ValueError(f"J must be a Jacobian [Cv, C, P, P], got "
                         f"{tuple(J.shape) if isinstance(J, torch.Tensor) else type(J).__name__}")
    s = int(factor)
    Cv, C, P, _ = J.shape
    if Cv != C * s * s:
        raise ValueError(f"J has {Cv} value channels, expected C s² = {C * s * s} for factor {s}")
    r = (P - 1) // 2
    out = torch.zeros(C, s * P, s * P, dtype=J.dtype)
    Jb = J.reshape(C, s, s, C, P, P)
    for c in range(C):
        for d1 in range(-r, r + 1):
            for d2 in range(-r, r + 1):
                # the block at LR offset -d from the impulse sees it at patch offset +d
                b1, b2 = r - d1, r - d2
                out[c, s * b1:s * b1 + s, s * b2:s * b2 + s] = Jb[c, :, :, c, r + d1, r + d2]
    if size is not None:
        pad = int(size) - s * P
        if pad < 0:
            raise ValueError(f"size must be at least s P = {s * P}, got {size}")
        lo = pad // 2
        out = F.pad(out, (lo, pad - lo, lo, pad - lo))
    return out
