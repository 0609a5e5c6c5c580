"""The sliding-window solver of the patch estimators (book chapter 7).

For a training image and a circular shift ``t``, the distances of all query pixels ``i`` to
the keys at ``i + t`` are one ``P × P`` box sum of the per-pixel squared differences
``Σ_c (v[c, p] - v_n[c, p + t])²``: a (query, key) pair costs about ``2C + 2P`` additions
instead of the ``2·C·P²`` of a patch dot product, from explicit differences (no cancellation
at small σ).  The LE-MMSE takes all ``H·W`` shifts, the local MMSE only ``t = 0``; the
physics-aware inpainting restricts them per pixel to the positions of its observed-pixel group.
The native kernel (``lemmse/_kernels/slide.c``, through ``lemmse._native.slide``) does the
arithmetic; :class:`SlidingWindow` holds its online-softmax state with the ``update`` /
``result`` interface of :class:`~lemmse.backends.attention.StreamingAttention`, and
:func:`solve` streams a ``lemmse.patches.PatchProblem`` through it.  The estimator decides what
to do with the images it flags as unreliable (``SlidingWindow.unreliable``).
"""

from __future__ import annotations

import math

import torch

from lemmse import _native
from lemmse._runtime import single_thread
from lemmse.backends.attention import LOG2E, KeyChunk
from lemmse.backends.planner import images_per_chunk

__all__ = ["SlidingWindow", "solve"]

#: Shift groups of the sliding-window kernel (independent online-softmax states, merged at the
#: end): work items for the threads even for a single query image.
SLIDE_GROUPS = 4
#: Largest |logit| (base 2) the fp32 sliding kernel is trusted with: beyond it the rounding of
#: the logits (2^-24 of their size) grows past 2^-8 and the estimator redoes the image.
FP32_LOGIT_LIMIT = 2.0 ** 16


class SlidingWindow:
    """Online softmax of every query pixel over the keys at its admissible shifts.

    The shifts are split into ``S`` fixed groups with their own online-softmax state (so a
    single query image still gives ``S`` whole-image work items), merged by :meth:`result` in
    float64; ``S`` does not depend on the thread count, so neither does the result.

    Parameters
    ----------
    queries : Tensor ``[B, C, H, W]`` (float32)
        Query images (pre-inverted, centred).
    sigma : Tensor ``[B]``
        Noise level of each query image.
    patch_size : int
        Odd ``P``.
    shifts : Tensor ``[T, 2]`` (int32)
        The shifts ``(a, b)``: pixel ``i`` sees the key centred at ``i + (a, b)``.
    gid : Tensor ``[H*W]`` (int32) or None
        Position groups: the pair ``(i, i + t)`` counts iff ``gid[i] == gid[i + t]``.
    band_rows : int
        Rows per work item of the kernel (0: the kernel chooses).
    """

    def __init__(self, queries, sigma, patch_size, shifts, gid=None, *, band_rows=0):
        Bn, C, H, W = queries.shape
        T = shifts.shape[0]
        self.S = SLIDE_GROUPS if T >= 16 * SLIDE_GROUPS else 1
        self.v, self.P, self.shifts, self.gid = queries, patch_size, shifts, gid
        self.band_rows, self.nthreads = int(band_rows), torch.get_num_threads()
        self.qs = (-0.5 * LOG2E / sigma.double() ** 2).to(torch.float32).contiguous()
        SW = 16 * ((W + 15) // 16)
        self._m = torch.full((Bn, self.S, H, SW), -math.inf, dtype=torch.float32)
        self._acc = torch.zeros(Bn, self.S, H, C + 1, SW, dtype=torch.float64)
        #: ``[B]`` bool after :meth:`result`: images whose fp32 logits reached
        #: ``FP32_LOGIT_LIMIT`` or whose state is not finite.
        self.unreliable = None

    def update(self, chunk: KeyChunk) -> None:
        """Fold one chunk of training images: ``chunk.keys`` the key images ``[Nc, C, H, W]``,
        ``chunk.values`` their value images ``[Nc, C, H, W]`` (both float32, contiguous)."""
        _native.slide(self.v, self.qs, self.P, chunk.keys, chunk.values, self.shifts, self.S,
                      self.gid, self._m, self._acc, band_rows=self.band_rows,
                      nthreads=self.nthreads)

    def result(self):
        """Return ``(x_hat [B, C, H, W] (float32), lse [B, H*W] (float64))``, ``lse`` the
        natural-log log-sum-exp of the logits ``-‖q - k‖²/2σ²`` (all of it: no term dropped)."""
        Bn, _, H, W = self.v.shape
        # merge the S groups: sums rescaled to the largest running maximum (base 2)
        m = self._m[..., :W].double()
        top = m.amax(1, keepdim=True)
        scale = torch.exp2(m - top).nan_to_num_(0.0)  # a group that saw no admissible key: 0
        acc = (self._acc[..., :W] * scale[:, :, :, None]).sum(1)  # [B, H, C+1, W]
        out = acc[:, :, 1:] / acc[:, :, :1]  # [B, H, C, W]
        x_hat = out.permute(0, 2, 1, 3).to(torch.float32).contiguous()
        lse = (top[:, 0] * math.log(2.0) + torch.log(acc[:, :, 0])).reshape(Bn, H * W)
        self.unreliable = (top.flatten(1).abs().amax(1) >= FP32_LOGIT_LIMIT) | \
            ~torch.isfinite(x_hat).flatten(1).all(1) | ~torch.isfinite(lse).all(1)
        return x_hat, lse


def solve(problem, y, s, shifts, gid, *, memory_budget, band_rows=0):
    """Solve a patch-attention problem (float32, CPU) by the sliding window, the training set
    streamed in chunks within ``memory_budget``.

    Returns
    -------
    ``(x_hat [B, C, H, W], lse [B, H*W] (float64), unreliable [B] (bool))``
    """
    train, P = problem.train, problem.geometry.P
    Bn, C, H, W = y.shape
    N = train.shape[0]
    with single_thread():
        v = problem.queries(y).to(torch.float32).contiguous()
    window = SlidingWindow(v, s, P, shifts, gid, band_rows=band_rows)
    step = images_per_chunk(N, memory_budget, 3 * C * H * W * 4)  # keys, values, a temporary
    for n0 in range(0, N, step):
        x = train[n0:n0 + step]
        with single_thread():
            u = problem.keys(x).to(torch.float32).contiguous()
        window.update(KeyChunk(u, problem.values[n0:n0 + step].contiguous()))
    x_hat, lse = window.result()
    return x_hat, lse, window.unreliable
