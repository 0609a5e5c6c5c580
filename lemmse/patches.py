"""The geometry of the patch estimators: patches, whitening, admissibility groups (chapters 4–6).

What a patch-attention problem is made of, before any backend solves it:

- :func:`extract_patches` / :func:`unfold`: the circular ``P × P`` patch around every pixel
  (chapter 4), as rows ``[N, H*W, D]`` or columns ``[N, D, H*W]``, ``D = C·P²``;
- :func:`whitening`: ``L⁻ᵀ`` for a stationary pre-inverse ``B`` (the physics-aware blur,
  chapter 6), ``S = Π B Bᵀ Πᵀ = L Lᵀ``: the Mahalanobis distance for the patch noise covariance
  ``σ² S`` is the plain distance of the whitened patches ``p @ L⁻ᵀ``;
- :func:`pattern_groups`: one group per observed-pixel pattern of a mask (the physics-aware
  inpainting, chapter 6): a query position only sees the key positions of its own group;
- :class:`PatchGeometry`: the three together for one estimator (patch size, whitening, groups),
  with the position layout sorted by group and the number of admissible keys per position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lemmse._runtime import warn_caller

__all__ = ["extract_patches", "unfold", "whitening", "pattern_groups", "PatchGeometry"]


def extract_patches(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Circular ``P × P`` patches around every pixel.

    Parameters
    ----------
    x : Tensor ``[N, C, H, W]``
    patch_size : int
        Odd ``P <= min(H, W)``.

    Returns
    -------
    Tensor ``[N, H*W, C*P*P]``
        Row ``i = h*W + w`` is the patch centred at pixel ``(h, w)``, flattened in
        ``(channel, row, column)`` order.
    """
    return unfold(x, patch_size).transpose(1, 2)


def unfold(x, P):
    """``F.unfold`` of the circularly padded image, ``[N, C*P*P, H*W]``, as one strided copy."""
    N, C, H, W = x.shape
    r = P // 2
    xp = F.pad(x, (r, r, r, r), mode="circular") if r > 0 else x
    s = xp.stride()
    view = xp.as_strided((N, C, P, P, H, W), (s[0], s[1], s[2], s[3], s[2], s[3]))
    return view.reshape(N, C * P * P, H * W)


#: :func:`whitening` warns above this condition number of the patch noise covariance.
WHITENING_COND_WARN = 1e12


def whitening(B, C, H, W, P, device):
    """``L⁻ᵀ`` (float64 ``[D, D]``, so that ``patches @ L⁻ᵀ`` are whitened) for a stationary
    pre-inverse ``B`` (``B.is_filter``), else ``None``; ``S = L Lᵀ`` is the covariance of the
    ``P × P`` patches of ``B e`` for white noise ``e`` (chapter 6)."""
    if not B.is_filter:
        return None
    bhat = B.transfer(H, W, torch.float64, "cpu")
    r = torch.fft.ifft2(bhat.abs() ** 2).real  # autocorrelation of the filter
    a = torch.arange(P)
    dh = (a[:, None, None, None] - a[None, None, :, None]) % H
    dw = (a[None, :, None, None] - a[None, None, None, :]) % W
    S = r[dh, dw].reshape(P * P, P * P)
    S = torch.kron(torch.eye(C, dtype=torch.float64), S)
    ev = torch.linalg.eigvalsh(S)
    if float(ev[-1]) > WHITENING_COND_WARN * float(ev[0]):
        warn_caller(f"the physics-aware blur's patch noise covariance has condition number "
                    f"{float(ev[-1] / ev[0]):.1e} (its inverse filter reaches "
                    f"|b̂| = {float(bhat.abs().max()):.1e}, where the blur's transfer function "
                    f"is near 0): the whitened distances lose about "
                    f"{math.log10(float(ev[-1] / ev[0])):.0f} of float64's 16 digits, and the "
                    f"estimate is only as accurate as what remains (measured: 1e-4 at 1e13)")
    L = torch.linalg.cholesky(S)
    Linv = torch.linalg.solve_triangular(L, torch.eye(S.shape[0], dtype=torch.float64),
                                         upper=False)
    return Linv.T.to(device).contiguous()


def pattern_groups(B, C, H, W, P):
    """Group id ``[H*W]`` (int64, CPU) of the observed-pixel pattern of every position's
    ``P × P`` window under the mask of ``B``; ``None`` without a mask or with one pattern."""
    mask = B.mask
    if mask is None:
        return None
    m = mask.to(torch.float64).expand(1, C, H, W)
    pat = extract_patches(m, P)[0]  # [H*W, D]
    _, gid = torch.unique(pat, dim=0, return_inverse=True)
    if int(gid.max()) == 0:
        return None
    return gid.to(torch.int64).cpu()


@dataclass
class PatchGeometry:
    """Patches of one estimator: size, whitening and admissibility groups.

    Attributes
    ----------
    C, H, W, P : int
        Channels, image size and odd patch size; ``D = C P²``.
    whiten : Tensor ``[D, D]`` (float64) or None
        :func:`whitening` of the pre-inverse.
    gid : Tensor ``[H*W]`` (int64, CPU) or None
        Group of every position (``None``: one group, every key admissible for every query).
    """

    C: int
    H: int
    W: int
    P: int
    whiten: torch.Tensor | None = None
    gid: torch.Tensor | None = None

    @property
    def D(self) -> int:
        return self.C * self.P ** 2

    def patches(self, v, dtype=None):
        """Patches ``[N, H*W, D]`` of ``v`` (whitened in float64), in ``dtype`` (default
        ``v``'s).  Whitened problems pass their images in float64 and cast only here: a
        pre-inverse that divides by a small ``k̂`` gives images of large values (``σ/k̂``)
        whose float32 round-off the whitening would turn into errors of the patches."""
        dtype = dtype or v.dtype
        if self.whiten is None:
            return extract_patches(v, self.P).to(dtype)
        return (extract_patches(v.double(), self.P) @ self.whiten).to(dtype)

    def layout(self):
        """``(order, ptr)``: the positions sorted by group and the offsets of every group in
        that order, ``(None, None)`` with one group."""
        if self.gid is None:
            return None, None
        order = torch.argsort(self.gid, stable=True)
        counts = torch.bincount(self.gid, minlength=int(self.gid.max()) + 1)
        counts = counts[counts > 0]
        ptr = torch.zeros(counts.numel() + 1, dtype=torch.int64)
        ptr[1:] = torch.cumsum(counts, 0)
        assert int(ptr[-1]) == self.H * self.W
        return order, ptr

    def n_keys(self, N):
        """Number of admissible keys of every query position ``[H*W]`` (int64) for ``N``
        training images."""
        HW = self.H * self.W
        if self.gid is None:
            return torch.full((HW,), N * HW, dtype=torch.int64)
        counts = torch.bincount(self.gid, minlength=int(self.gid.max()) + 1)
        return N * counts[self.gid]


@dataclass
class PatchProblem:
    """A patch-attention problem, as an estimator describes it (chapter 5):
    ``x̂[i] = Σ_{admissible (n, j)} softmax_{n,j}(-‖Π_i q - Π_j k_n‖²/2σ²) v_n[j]``.

    Attributes
    ----------
    geometry : PatchGeometry
        Patch size, whitening (the metric) and admissibility groups.
    train : Tensor ``[N, C, H, W]``
        The clean training images the keys are made from.
    values : Tensor ``[N, Cv, H, W]``
        The value of every key, on the key grid (the centre pixels: ``train`` itself; the HR
        blocks for super-resolution).
    queries : callable
        ``y [B, C, H, W]`` → the query images (pre-inverted, centred).
    keys : callable
        Training images ``x`` → the key images (measured, pre-inverted, centred).
    check : callable
        ``(y, sigma)`` → ``(y, σ [B])`` validated for the estimator.
    dtype : torch.dtype
        The dtype the problem is solved in; the query and key images are in float64 when the
        geometry whitens (see :meth:`PatchGeometry.patches`), else in this dtype.
    """

    geometry: PatchGeometry
    train: torch.Tensor
    values: torch.Tensor
    queries: object
    keys: object
    check: object
    dtype: torch.dtype = torch.float32
