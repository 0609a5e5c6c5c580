"""Minimum-norm shallow ReLU denoisers and the empirical MMSE of a point set (book/13_minnorm.md).

A one-hidden-layer ReLU denoiser of ``d``-dimensional inputs,

    h(y) = Σ_k a_k [w_kᵀ y + b_k]₊ + V y + c,

has the representation cost ``½ Σ_k (‖a_k‖² + ‖w_k‖²)`` (the biases ``b_k``, the linear part
``V`` and the offset ``c`` are free).  Among the denoisers that map every noisy training sample
``y_{n,m}`` to its clean point ``x_n``, the one of least cost is the *minimum-norm denoiser*,
the limit of training with a vanishing weight decay.  In one dimension it has a closed form
(chapter 13 proves it): flat at ``x_n`` on each noisy cluster ``[lo_n, hi_n]`` and a straight ramp
across each gap, of cost ``∫|h″| = 2 Σ_n s_n`` with the slopes
``s_n = (x_{n+1} − x_n) / (lo_{n+1} − hi_n)``.  The other answer to the same data is the
empirical MMSE (the paper's eMMSE), the softmax average of the clean points.

- :func:`minnorm_denoiser_1d`: the closed form, a :class:`MinNormDenoiser1D` (callable, with its
  knots, slopes and cost);
- :func:`emmse_1d`, :func:`emmse`: the empirical MMSE of a point set at noise σ (log-sum-exp,
  float64, stable down to any σ > 0);
- :class:`ShallowDenoiser` and :func:`train_shallow`: the network and its training to
  interpolation with a small weight decay on the representation cost (in
  ``lemmse.shallow``, re-exported here).
"""

from __future__ import annotations

import math

import numpy as np
import torch

# the network side of the chapter lives in lemmse.shallow
from lemmse.shallow import ShallowDenoiser, train_shallow

__all__ = ["MinNormDenoiser1D", "minnorm_denoiser_1d", "emmse_1d", "emmse", "ShallowDenoiser",
           "train_shallow"]


# --------------------------------------------------------------------------- input checks


def _vector(v, name: str) -> torch.Tensor:
    """A 1-D finite real float64 tensor from an array, a tensor or a sequence."""
    if isinstance(v, torch.Tensor):
        t = v.detach()
    else:
        try:
            t = torch.as_tensor(np.asarray(v))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{name} must be a 1-D array of real numbers ({err})") from None
    if t.is_complex() or t.dtype == torch.bool or not (t.is_floating_point() or t.dtype in (
            torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise ValueError(f"{name} must be a 1-D array of real numbers, got dtype {t.dtype}")
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name} is empty; give at least one point")
    t = t.to(torch.float64).cpu()
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return t


def _sigma(sigma) -> float:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float, np.floating, np.integer)):
        if isinstance(sigma, torch.Tensor) and sigma.numel() == 1 and not sigma.is_complex():
            sigma = sigma.item()
        else:
            raise ValueError(f"sigma must be a positive real number, got {sigma!r}")
    sigma = float(sigma)
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma}")
    return sigma


def _as_input(y, name: str = "y"):
    """(float64 tensor, function converting a float64 result back to y's type)."""
    if isinstance(y, torch.Tensor):
        if y.is_complex() or y.dtype == torch.bool:
            raise ValueError(f"{name} must be real, got dtype {y.dtype}")
        dtype = y.dtype if y.is_floating_point() else torch.float64
        dev = y.device
        return y.detach().to(torch.float64).cpu(), lambda r: r.to(device=dev, dtype=dtype)
    scalar = np.isscalar(y)
    a = np.asarray(y)
    if a.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be real numbers, got dtype {a.dtype}")
    if scalar:
        return torch.as_tensor(a, dtype=torch.float64), lambda r: float(r)
    return torch.as_tensor(a.astype(np.float64)), lambda r: r.numpy()


# --------------------------------------------------------------------------- closed form


class MinNormDenoiser1D:
    """The univariate minimum-norm interpolating denoiser (chapter 13, theorem ``thm-mn-1d``).

    ``h(y) = x_1 + Σ_n (x_{n+1} − x_n) · clip((y − hi_n) / (lo_{n+1} − hi_n), 0, 1)``: flat at
    ``x_n`` on ``[lo_n, hi_n]``, constant outside the outermost clusters, a straight ramp of slope
    ``s_n`` across each gap.  Build it with :func:`minnorm_denoiser_1d`.

    Attributes
    ----------
    clean, lo, hi : tensor [N], float64
    knots_y, knots_x : tensor [2N], float64
        The knots ``(lo_1, x_1), (hi_1, x_1), (lo_2, x_2), …, (hi_N, x_N)``; ``h`` is the
        piecewise-linear interpolant of the knots, constant beyond the end ones.
    slopes : tensor [N − 1], float64
        ``s_n = (x_{n+1} − x_n) / (lo_{n+1} − hi_n)``.
    cost : float
        ``∫|h″| = 2 Σ_n s_n``, the least representation cost of a ReLU network equal to ``h``.
    """

    def __init__(self, clean: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor):
        self.clean, self.lo, self.hi = clean, lo, hi
        self.knots_y = torch.stack([lo, hi], 1).flatten()
        self.knots_x = torch.stack([clean, clean], 1).flatten()
        self.slopes = (clean[1:] - clean[:-1]) / (lo[1:] - hi[:-1])
        self.cost = float(2 * self.slopes.abs().sum())

    def __call__(self, y):
        """``h(y)`` elementwise, for a float, an array or a tensor of any shape (same type back)."""
        t, back = _as_input(y)
        if torch.isnan(t).any():
            raise ValueError("y contains NaN")
        out = self.clean[0].expand(t.shape).clone()
        for n in range(len(self.slopes)):
            out += (self.clean[n + 1] - self.clean[n]) * (
                (t - self.hi[n]) / (self.lo[n + 1] - self.hi[n])).clamp(0, 1)
        return back(out)

    def relu_units(self):
        """A ReLU network equal to ``h`` with the least cost: ``(a, w, b)`` of its ``2(N − 1)`` units.

        ``h(y) = x_1 + Σ_k a_k [w_k y + b_k]₊`` with balanced units ``|a_k| = |w_k| = √s_n``
        (units ``s_n [y − hi_n]₊`` and ``−s_n [y − lo_{n+1}]₊``), so ``½ Σ (a_k² + w_k²) = cost``.
        """
        r = self.slopes.sqrt()
        a = torch.stack([r, -r], 1).flatten()
        w = torch.stack([r, r], 1).flatten()
        b = torch.stack([-r * self.hi[:-1], -r * self.lo[1:]], 1).flatten()
        return a, w, b

    def __repr__(self):
        return f"MinNormDenoiser1D(N={len(self.clean)}, cost={self.cost:.4g})"


def minnorm_denoiser_1d(clean, lo, hi) -> MinNormDenoiser1D:
    """The univariate minimum-norm denoiser of clean points and the spans of their noisy clusters.

    For clean points ``x_1 < … < x_N`` whose noisy samples lie in the disjoint intervals
    ``[lo_n, hi_n]`` (in increasing order), the least-cost ReLU denoiser that maps every sample of
    cluster ``n`` to ``x_n`` (with at least two samples per cluster, at ``lo_n`` and ``hi_n``) is

    ``h*(y) = x_1 + Σ_n (x_{n+1} − x_n) clip((y − hi_n)/(lo_{n+1} − hi_n), 0, 1)``,

    of cost ``∫|h*″| = 2 Σ_n (x_{n+1} − x_n)/(lo_{n+1} − hi_n)`` (book chapter 13).

    Parameters
    ----------
    clean : array or tensor [N]
        Strictly increasing clean points.
    lo, hi : array or tensor [N]
        Cluster ``n`` spans ``[lo[n], hi[n]]``, ``lo[n] < hi[n] < lo[n + 1]``.

    Returns
    -------
    MinNormDenoiser1D
        Callable ``h(y)`` on floats, arrays or tensors of any shape, with ``knots_y``,
        ``knots_x``, ``slopes``, ``cost`` and ``relu_units()``.

    Raises
    ------
    ValueError
        Different lengths, unsorted clean points, an empty cluster (``lo >= hi``), or clusters
        that overlap, touch or are out of order.
    """
    clean, lo, hi = _vector(clean, "clean"), _vector(lo, "lo"), _vector(hi, "hi")
    if not (len(clean) == len(lo) == len(hi)):
        raise ValueError(f"clean, lo and hi must have the same length, got {len(clean)}, "
                         f"{len(lo)} and {len(hi)}")
    bad = torch.nonzero(clean[1:] <= clean[:-1]).flatten()
    if len(bad):
        n = int(bad[0])
        raise ValueError(f"clean must be strictly increasing: clean[{n}] = {clean[n].item():g} "
                         f">= clean[{n + 1}] = {clean[n + 1].item():g}; sort the points (and "
                         "their clusters) first")
    bad = torch.nonzero(lo >= hi).flatten()
    if len(bad):
        n = int(bad[0])
        raise ValueError(f"cluster {n} is empty: lo[{n}] = {lo[n].item():g} >= hi[{n}] = "
                         f"{hi[n].item():g}; each cluster needs lo < hi (two or more samples)")
    bad = torch.nonzero(lo[1:] <= hi[:-1]).flatten()
    if len(bad):
        n = int(bad[0])
        raise ValueError(f"clusters {n} and {n + 1} overlap or are out of order: hi[{n}] = "
                         f"{hi[n].item():g} >= lo[{n + 1}] = {lo[n + 1].item():g}; the closed "
                         "form needs disjoint clusters in the order of the clean points "
                         "(the low-noise regime)")
    return MinNormDenoiser1D(clean, lo, hi)


# --------------------------------------------------------------------------- empirical MMSE


def emmse(points, y, sigma, values=None, chunk: int = 2 ** 24) -> torch.Tensor:
    """Empirical MMSE of a point set: ``Σ_n v_n e^{−‖y − p_n‖²/2σ²} / Σ_n e^{−‖y − p_n‖²/2σ²}``.

    The posterior mean of ``x`` given ``y = x + σ e`` when ``x`` is uniform on the points
    ``p_n`` (with ``values=None``, ``v_n = p_n``); with ``values`` the centre pixels of the
    points, the patch version is the LE-MMSE of chapter 5 evaluated at given patches.  Computed
    in float64 with a log-sum-exp, so it is finite for every σ > 0 (at small σ it is the value of
    the nearest point).  Distances are exact coordinate sums for ``d <= 8`` and a float64 matrix
    product (``‖y‖² − 2yᵀp + ‖p‖²``) above, for speed on patches.

    Parameters
    ----------
    points : tensor [N, d]
    y : tensor [..., d]
    sigma : float > 0, or a sequence of them
        With a sequence, the distances are computed once for all noise levels and the result
        has a leading dimension ``[S]``.
    values : tensor [N, k] or [N], optional
        Default ``points``.
    chunk : int
        Queries are processed in blocks of about ``chunk`` query-point pairs (bounded memory).

    Returns
    -------
    tensor [..., k] (or [...] for 1-D ``values``), float64; ``[S, ...]`` for a sequence of σ.
    """
    many = isinstance(sigma, (list, tuple)) or (
        isinstance(sigma, (np.ndarray, torch.Tensor)) and sigma.ndim == 1)
    sigmas = [_sigma(s) for s in (list(sigma) if many else [sigma])]
    if not sigmas:
        raise ValueError("sigma is an empty sequence; give at least one noise level")
    p = torch.as_tensor(points)
    if p.dim() != 2 or p.shape[0] == 0:
        raise ValueError(f"points must be a non-empty [N, d] tensor, got shape {tuple(p.shape)}")
    p = p.detach().to(torch.float64).cpu()
    v = p if values is None else torch.as_tensor(values).detach().to(torch.float64).cpu()
    if v.shape[0] != p.shape[0] or v.dim() not in (1, 2):
        raise ValueError(f"values must be [N] or [N, k] with N = {p.shape[0]} (one per point), "
                         f"got shape {tuple(v.shape)}")
    q = torch.as_tensor(y).detach().to(torch.float64).cpu()
    if q.dim() == 0 or q.shape[-1] != p.shape[1]:
        raise ValueError(f"y must be [..., d] with d = {p.shape[1]} (the points' dimension), got "
                         f"shape {tuple(q.shape)}")
    if not (torch.isfinite(p).all() and torch.isfinite(q).all()):
        raise ValueError("points and y must be finite (NaN or Inf found)")
    lead = q.shape[:-1]
    q = q.reshape(-1, p.shape[1])
    vv = v if v.dim() == 2 else v[:, None]
    out = torch.empty(len(sigmas), q.shape[0], vv.shape[1], dtype=torch.float64)
    step = max(1, chunk // p.shape[0])
    # In low dimension (d <= 8) the squared distances are summed coordinate by coordinate: the
    # expansion ‖q‖² − 2qᵀp + ‖p‖² loses ~1e-16 ‖q‖² to cancellation, which 1/2σ² amplifies at
    # tiny σ.  In higher dimension (patches) the expansion is a matrix product, ~30x faster here.
    mode = "donot_use_mm_for_euclid_dist" if p.shape[1] <= 8 else "use_mm_for_euclid_dist"
    for i in range(0, q.shape[0], step):
        d2 = torch.cdist(q[i:i + step], p, compute_mode=mode).square_().neg_()
        for k, sigma in enumerate(sigmas):
            out[k, i:i + step] = torch.softmax(d2 / (2 * sigma ** 2), 1) @ vv
    out = out.reshape(len(sigmas), *lead, vv.shape[1])
    out = out if v.dim() == 2 else out[..., 0]
    return out if many else out[0]


def emmse_1d(points, y, sigma):
    """Empirical MMSE of scalar points at noise σ, elementwise in ``y`` (any shape).

    ``x̂(y) = Σ_n x_n e^{−(y − x_n)²/2σ²} / Σ_n e^{−(y − x_n)²/2σ²}`` in float64 by a log-sum-exp
    (see :func:`emmse`); returns the type of ``y`` (float, array or tensor).
    """
    p = _vector(points, "points")
    t, back = _as_input(y)
    if not torch.isfinite(t).all():
        raise ValueError("y must be finite (NaN or Inf found)")
    return back(emmse(p[:, None], t[..., None], sigma)[..., 0])
