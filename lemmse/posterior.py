"""What the weights of an estimate say: posteriors, log-densities, exact pixel weights (chapter 5).

Every estimator's output is a weighted mean of training values, with the weights of a softmax
over the admissible keys.  This module holds what is read off those weights:

- :class:`Posterior`: the estimate with per-pixel diagnostics (log-density, ``n50``,
  participation ratio, top-k sources), as the estimators' ``posterior`` methods return it;
- :func:`gaussian_log_density`: the log of the Gaussian-smoothed empirical density of the keys,
  ``log((1/K) Σ_k N(q; k, σ² I_D)) = lse - log K - (D/2) log(2πσ²)`` from the natural-log
  log-sum-exp ``lse`` of the logits ``-‖q - k‖²/2σ²`` (the one formula of the package);
- :func:`patch_posterior`: the :class:`Posterior` of a patch estimator from the diagnostics its
  attention tracked;
- :func:`decode_ids`: a key id ``n·HW + j`` as (training image ``n``, position ``j`` as
  ``(row, column)``);
- :func:`pixel_weights` and :class:`PixelWeights`: the exact weight maps behind chosen output
  pixels of a patch estimator (``LEMMSE``, ``LocalMMSE``).

The LE-MMSE output at pixel ``i`` is ``x̂[i] = Σ_{n,j} w_{n,j}(i) x_n[j]`` (book chapter 5).
:func:`pixel_weights` computes the whole weight map ``w(i)`` — one weight per training image
``n`` and position ``j`` — for a few pixels ``i``, in float64, from explicit patch differences,
through the estimator's public description :meth:`lemmse.LEMMSE.problem`.  From it follow,
exactly: the estimate at ``i`` (the number the estimator returns, up to its fp32 rounding); the
top-k source patches (the "patchwork"); ``n50`` and the participation ratio ``1 / Σ w²`` (the
mass concentration); the log-density of the query patch (as in :class:`Posterior`).
Cost: one pass over the training patches per call (all pixels of the call share it), about
``N·H·W·D`` multiply-adds per pixel; for FashionMNIST with 10 000 images this is about a second
for a handful of pixels. It is meant for inspecting pixels, not for whole images.
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["Posterior", "PixelWeights", "pixel_weights", "gaussian_log_density", "decode_ids",
           "patch_posterior"]

_CHUNK_BYTES = 128 << 20


@dataclass
class Posterior:
    """Estimate and diagnostics of the weights behind every output pixel (chapter 5).

    Attributes
    ----------
    x_hat : Tensor ``[B, C, H, W]``
        The float tensors have the estimator's dtype; the diagnostics are accumulated in
        float64 internally.
    log_density : Tensor ``[B, H, W]``
        ``log( (1/K) Σ_k N(q; k, σ² I_D) )``: the log of the Gaussian-smoothed empirical density
        of the ``K`` admissible measured training patches at the query patch ``q`` (whitened
        coordinates for the physics-aware blur).
    n50 : Tensor ``[B, H, W]`` (int64)
        Smallest number of largest weights whose sum reaches 0.5.
    participation : Tensor ``[B, H, W]``
        Participation ratio ``1 / Σ_k w_k²`` (effective number of patches).
    topk_weights : Tensor ``[B, H, W, k]``
        The ``k`` largest normalised weights, in decreasing order.
    topk_image : Tensor ``[B, H, W, k]`` (int64)
        Training image index of each of those weights.
    topk_position : Tensor ``[B, H, W, k, 2]`` (int64)
        ``(row, column)`` of the centre of the source patch (``(0, 0)`` for the MMSE; for the
        equivariant MMSE the shift by which the training image is rolled).
    """

    x_hat: torch.Tensor
    log_density: torch.Tensor
    n50: torch.Tensor
    participation: torch.Tensor
    topk_weights: torch.Tensor
    topk_image: torch.Tensor
    topk_position: torch.Tensor


def image_posterior(x_hat, *per_image, H, W):
    """A :class:`Posterior` whose per-pixel fields are one value per image (the global MMSE and
    E-MMSE): each ``[B, ...]`` diagnostic expanded to ``[B, H, W, ...]``."""
    def field(t):
        return t.view(t.shape[0], 1, 1, *t.shape[1:]).expand(t.shape[0], H, W, *t.shape[1:])
    return Posterior(x_hat, *(field(t) for t in per_image))


def patch_posterior(x_hat, lse, att, unsort, dim, sigma):
    """The :class:`Posterior` of a patch estimator from its tracked attention.

    ``x_hat`` ``[B, C, H, W]`` the estimate; ``lse`` ``[B, H*W]`` and ``att`` (a
    ``StreamingAttention`` after its second pass, queries in the group layout) from
    ``lemmse.backends.attention.solve(..., track=True)`` with ``unsort`` its permutation back to
    position order (``None``: one group); ``dim`` the patch dimension ``D``; ``sigma`` ``[B]``.
    """
    Bn, _, H, W = x_hat.shape
    HW, dt = H * W, x_hat.dtype
    d = att.diagnostics()
    K = att.n_keys.to(dt).to(x_hat.device)
    K = K.view(Bn, HW) if unsort is None else K.view(HW, Bn).transpose(0, 1)[:, unsort]
    logdens = gaussian_log_density(lse, K, dim, sigma[:, None].expand(Bn, HW))

    def back(t):  # [B·HW, ...] in the attention's layout -> [B, H, W, ...]
        t = t.view(Bn, HW, *t.shape[1:]) if unsort is None else \
            t.view(HW, Bn, *t.shape[1:]).transpose(0, 1)[:, unsort]
        return t.reshape(Bn, H, W, *t.shape[2:])

    img, position = decode_ids(back(d["topk_ids"]), HW, W)
    return Posterior(x_hat, logdens.view(Bn, H, W).to(dt), back(d["n50"]),
                     back(d["participation"]).to(dt), back(d["topk_weights"]).to(dt),
                     img, position)


def gaussian_log_density(lse, n_keys, dim, sigma):
    """``log((1/K) Σ_k N(q; k, σ² I_D)) = lse - log K - (D/2) log(2πσ²)``.

    Parameters
    ----------
    lse : Tensor
        Natural-log log-sum-exp of the logits ``-‖q - k‖²/2σ²`` over the ``K`` keys.
    n_keys : int or Tensor
        ``K`` (broadcast against ``lse``).
    dim : int
        ``D``, the dimension of the patches (or images).
    sigma : float or Tensor
        σ (broadcast against ``lse``).
    """
    log_k = math.log(n_keys) if isinstance(n_keys, numbers.Real) else torch.log(n_keys)
    var = 2 * math.pi * sigma ** 2
    log_var = math.log(var) if isinstance(sigma, numbers.Real) else torch.log(var)
    return lse - log_k - 0.5 * dim * log_var


def decode_ids(ids, HW, W):
    """``(image, position)`` of key ids ``n·HW + j``: ``n`` and ``j`` as ``(row, column)``
    ``[..., 2]``, both ``-1`` where the id is negative (no key); ``HW = W = 1``: ids that name
    images alone (position ``(0, 0)``)."""
    img = torch.div(ids, HW, rounding_mode="floor")
    pos = ids % HW
    position = torch.stack([torch.div(pos, W, rounding_mode="floor"), pos % W], -1)
    position = torch.where(ids[..., None] >= 0, position, torch.full_like(position, -1))
    img = torch.where(ids >= 0, img, torch.full_like(img, -1))
    return img, position


@dataclass
class PixelWeights:
    """The exact weights of the training patches behind ``len(pixels)`` output pixels.

    Attributes
    ----------
    pixels : list of (row, column)
    sigma : float
    weights : Tensor ``[Q, N, H, W]`` (float64)
        ``weights[q, n, r, c]``: the normalised weight of the training patch of image ``n``
        centred at ``(r, c)`` in output pixel ``pixels[q]`` (0 where inadmissible); each
        ``weights[q]`` sums to 1.
    values : Tensor ``[Q, C]`` (float64)
        ``Σ w x_n[j]``: the estimate at each pixel.
    log_density : Tensor ``[Q]`` (float64)
        ``log((1/K) Σ_k N(q; k, σ² I_D))`` over the ``K`` admissible patches (whitened
        coordinates for the physics-aware blur).
    n_admissible : Tensor ``[Q]`` (int64)
    """

    pixels: list
    sigma: float
    weights: torch.Tensor
    values: torch.Tensor
    log_density: torch.Tensor
    n_admissible: torch.Tensor

    @property
    def participation(self) -> torch.Tensor:
        """``1 / Σ w²`` per pixel ``[Q]``: the effective number of patches."""
        return 1.0 / (self.weights.flatten(1) ** 2).sum(1)

    @functools.cached_property
    def n50(self) -> torch.Tensor:
        """Smallest number of largest weights whose sum reaches 0.5, per pixel ``[Q]`` (int64;
        computed once: each pixel sorts its ``N·H·W`` weights)."""
        out = []
        for w in self.weights.flatten(1):
            top = torch.sort(w[w > 0], descending=True).values
            out.append(int(torch.searchsorted(torch.cumsum(top, 0), torch.tensor(0.5, dtype=top.dtype))) + 1)
        return torch.tensor(out, dtype=torch.int64)

    def topk(self, q: int = 0, k: int = 8):
        """The ``k`` largest weights of pixel ``pixels[q]``: ``(weights [k], image [k], position [k, 2])``."""
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        w = self.weights[q]
        H, W = w.shape[1:]
        top = torch.topk(w.flatten(), min(int(k), w.numel()))
        image, position = decode_ids(top.indices, H * W, W)
        return top.values, image, position


def _check_pixels(pixels, H, W):
    if isinstance(pixels, tuple) and len(pixels) == 2 and all(isinstance(p, numbers.Integral) for p in pixels):
        pixels = [pixels]
    try:
        pixels = [(int(r), int(c)) for r, c in pixels]
    except (TypeError, ValueError):
        raise TypeError(f"pixels must be a (row, column) pair or a list of them, got {pixels!r}") from None
    if not pixels:
        raise ValueError("pixels must not be empty")
    for r, c in pixels:
        if not (0 <= r < H and 0 <= c < W):
            raise ValueError(f"pixel {(r, c)} is outside the {H}x{W} image")
    return pixels


def pixel_weights(est: _PatchAttention, y: torch.Tensor, sigma: float, pixels) -> PixelWeights:
    """Exact weight maps behind ``pixels`` of ``est(y, sigma)`` (see the module docstring).

    Parameters
    ----------
    est : LEMMSE or LocalMMSE
    y : Tensor ``[1, C, H, W]``
        One measurement (the estimator's shape).
    sigma : float
        Noise level, > 0.
    pixels : (row, column) or list of them

    Returns
    -------
    PixelWeights
    """
    from lemmse.estimators import _PatchAttention

    if not isinstance(est, _PatchAttention):
        raise TypeError(f"est must be a LEMMSE or LocalMMSE, got {type(est).__name__}")
    if not isinstance(y, torch.Tensor) or y.ndim != 4 or y.shape[0] != 1:
        raise ValueError(f"y must be one image [1, C, H, W], got {tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__}")
    prob = est.problem(torch.float64)  # queries and keys in float64
    prob.check(y, float(sigma) if isinstance(sigma, numbers.Real) else sigma)  # validates y, sigma
    sigma = float(sigma)
    geo = prob.geometry
    H, W, C, N = geo.H, geo.W, geo.C, prob.train.shape[0]
    pixels = _check_pixels(pixels, H, W)
    idx = torch.tensor([r * W + c for r, c in pixels], dtype=torch.int64)
    with torch.no_grad():
        q = geo.patches(prob.queries(y.cpu()))[0, idx]  # [Q, D]
        gid = geo.gid
        admissible = None if gid is None else (gid[None, :] == gid[idx][:, None])  # [Q, HW]
        D = q.shape[1]
        step = max(1, _CHUNK_BYTES // (H * W * D * 8))
        logits = torch.empty(len(pixels), N, H * W, dtype=torch.float64)
        train = prob.train.cpu()
        P, r = geo.P, geo.P // 2
        qq = (q * q).sum(-1)[:, None, None]
        for n0 in range(0, N, step):
            u = prob.keys(train[n0 : n0 + step])
            if geo.whiten is None:
                # ‖q - k_j‖² = Σ_window u² - 2 (u ⋆ q)[j] + ‖q‖²: two correlations of the key images
                # (the query patches as filters), no patch is materialised
                up = F.pad(u, (r, r, r, r), mode="circular") if r else u
                kk = F.conv2d(up * up, torch.ones(1, C, P, P, dtype=torch.float64)).flatten(1)  # [Nc, HW]
                kq = F.conv2d(up, q.view(-1, C, P, P)).flatten(2).transpose(0, 1)  # [Q, Nc, HW]
            else:  # whitened patches (physics-aware blur)
                k = geo.patches(u)  # [Nc, HW, D]
                kk = (k * k).sum(-1)
                kq = torch.einsum("nkd,qd->qnk", k, q)
            d2 = kk[None] - 2 * kq + qq
            logits[:, n0 : n0 + step] = -d2.clamp_min(0) / (2 * sigma**2)
        if admissible is not None:
            logits.masked_fill_(~admissible[:, None, :], -math.inf)
        lse = torch.logsumexp(logits.flatten(1), 1)
        w = logits.sub_(lse[:, None, None]).exp_()  # in place: the weights replace the logits
        values = torch.einsum("qnk,nck->qc", w, prob.values.cpu().double().flatten(2))
        K = torch.full((len(pixels),), N * H * W, dtype=torch.int64) if admissible is None else \
            admissible.sum(1) * N
        log_density = gaussian_log_density(lse, K.double(), D, sigma)
    return PixelWeights(pixels, sigma, w.view(len(pixels), N, H, W), values, log_density, K)
