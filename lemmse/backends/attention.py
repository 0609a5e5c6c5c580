"""Streaming Gaussian-kernel attention and the key packing of its native kernel (book chapter 7).

Every constrained MMSE estimator (chapters 2–5) is one operation: for each query vector ``q``
(a patch, or a whole image, of the pre-inverted measurement) and a bank of keys ``k`` (the same
patches of the measured training images) with values ``v`` (clean training pixels),

.. math::

    \\hat v(q) = \\frac{\\sum_k \\exp\\big(-\\lVert q - k \\rVert^2 / 2\\sigma^2\\big)\\, v_k}
                     {\\sum_k \\exp\\big(-\\lVert q - k \\rVert^2 / 2\\sigma^2\\big)},

softmax attention with logits ``(q·k - ‖k‖²/2) / σ²`` (the ``‖q‖²`` term cancels).  Queries
and keys may be split into *groups* (query rows of group ``g`` only see the keys of group
``g``): one group per pixel position for the local MMSE, one per observed-pixel pattern for the
physics-aware inpainting LE-MMSE.  :class:`StreamingAttention` consumes the key bank chunk by
chunk with an online log-sum-exp, so memory is bounded by the chunk, whatever the number of
training images.  Two back-ends compute a chunk (:func:`lemmse.backends.plan` chooses):

``"native"``
    a fused C kernel (AVX-512 or AVX2, fp32, POSIX threads; ``lemmse/_kernels/attend.c``,
    called through ``lemmse._native.attend``) that computes dot products, exponentials and
    accumulation in registers, never writing the score matrix; it reads keys in blocks of 16
    (:func:`pack_keys`, or :func:`packed_chunk` straight from the unfolded images).
``"torch"``
    the GEMM expansion by a matrix product, ``exp``, a second product with the values, chunked
    within the memory budget; any device, fp32 or float64; also the diagnostics (``track``).

:func:`solve` runs a whole ``lemmse.patches.PatchProblem`` through it.  TF32 is never
used (1–8 nats of logit error at small σ): callers run under ``no_tf32``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lemmse import _native
from lemmse._native import load_kernel  # noqa: F401 (lemmse.engine.load_kernel)
from lemmse._runtime import no_tf32, progress_bar, single_thread  # noqa: F401 (no_tf32: lemmse.engine)
from lemmse.backends._tracking import N50_EXACT, _Diagnostics
from lemmse.backends.planner import (DEFAULT_MEMORY_BUDGET, attention_backend,
                                     choose_backend, images_per_chunk)
from lemmse.patches import unfold

# also importable from here (lemmse.engine is this module): choose_backend,
# DEFAULT_MEMORY_BUDGET, N50_EXACT, load_kernel, no_tf32
__all__ = ["KeyChunk", "StreamingAttention", "pack_keys", "packed_chunk", "solve", "DIRECT_SIGMA",
           "LOG2E"]

LOG2E = 1.4426950408889634
#: Key data swept by the native kernel per pass over a thread's queries (sized for the L2 cache).
NATIVE_KCHUNK_BYTES = 512 * 1024
#: Below this noise level (in the centred [0, 1] pixel scale) the logits are computed from
#: explicit differences (native kernel) or in float64 (torch path) instead of the fp32 GEMM
#: expansion, whose cancellation error grows like ‖q‖‖k‖·2⁻²⁴/σ² (chapter 7).
DIRECT_SIGMA = 0.1
#: Bound on the score block of the torch path (cache-friendly element-wise passes).
TORCH_BLOCK_BYTES = 1 << 30


@dataclass
class KeyChunk:
    """One chunk of the key bank.

    Attributes
    ----------
    keys : Tensor ``[K, D]``
        Key vectors, sorted by group when the attention is grouped.
    values : Tensor ``[K, Cv]``
        Values attached to the keys.
    group_ptr : Tensor ``[G + 1]`` (int64, CPU) or None
        Offsets of each group's keys (``None``: one group).
    ids : Tensor ``[K]`` (int64) or None
        A global identifier per key, returned by the top-k diagnostics.
    packed : tuple of Tensors or None
        ``(Kt [nb, D, 16], kb [nb, 16], Vt [nb, Cv, 16])``: the keys already in the native
        kernel's block layout (one group, ``16·nb`` keys, ``kb = -‖k‖²/2``); then ``keys`` and
        ``values`` may be ``None``.  Saves the re-packing copies on the native path.
    """

    keys: torch.Tensor | None
    values: torch.Tensor | None
    group_ptr: torch.Tensor | None = None
    ids: torch.Tensor | None = None
    packed: tuple | None = None


class StreamingAttention(_Diagnostics):
    """Online-softmax accumulator over chunks of keys (see the module docstring).

    Parameters
    ----------
    queries : Tensor ``[M, D]``
        Query vectors, sorted by group when grouped.
    sigma : Tensor ``[M]``
        Noise level of each query (σ > 0).
    group_ptr : Tensor ``[G + 1]`` or None
        Offsets of each group's queries (``None``: one group).
    value_dim : int
        Number of value channels ``Cv``.
    memory_budget : int
        Bound in bytes on the temporary memory of one :meth:`update`.
    backend : {"auto", "native", "torch"}
    track : bool
        Also accumulate the diagnostics (second-moment log-sum-exp, top-k, log-weight
        histogram); forces the torch back-end and needs a second pass (:meth:`begin_second_pass`).
    topk : int
        Number of largest weights kept per query when ``track``.
    """

    def __init__(self, queries, sigma, group_ptr=None, *, value_dim, memory_budget,
                 backend="auto", track=False, topk=8):
        self.q = queries
        self.M, self.D = queries.shape
        self.Cv = int(value_dim)
        self.dtype, self.device = queries.dtype, queries.device
        self.budget = int(memory_budget)
        self.nthreads = torch.get_num_threads()
        self.sigma = sigma.to(self.dtype)
        self.inv_var = 1.0 / self.sigma ** 2
        self.q_ptr = _ptr(group_ptr, self.M)
        self.G = self.q_ptr.numel() - 1
        self.track = bool(track)
        self.backend = attention_backend(self.Cv, self.dtype, self.device, backend, track)[0]
        self.qsq = (queries * queries).sum(1)  # for the exact log-density
        # small sigma in fp32: avoid the cancellation of the GEMM expansion
        self.direct = bool(self.dtype == torch.float32 and self.M > 0
                           and float(self.sigma.min()) < DIRECT_SIGMA)
        if self.backend == "native":
            s = (self.inv_var * LOG2E).to(torch.float32)
            if self.direct:
                self._Q = queries.to(torch.float32).contiguous()
                self._s = (-0.5 * s).contiguous()
            else:
                self._Q = (queries * s[:, None]).contiguous()
                self._s = s.contiguous()
            self._m = torch.full((self.M,), -math.inf, dtype=torch.float32)
            self._acc = torch.zeros(self.M, self.Cv + 1, 16, dtype=torch.float64)
        else:  # the diagnostics are accumulated in float64
            sdt = torch.float64 if self.track else self.dtype
            self._m = torch.full((self.M,), -math.inf, dtype=sdt, device=self.device)
            self._den = torch.zeros(self.M, dtype=sdt, device=self.device)
            self._num = torch.zeros(self.M, self.Cv, dtype=sdt, device=self.device)
        self.n_keys = torch.zeros(self.M, dtype=torch.int64)
        self._pass = 1
        if self.track:
            self.topk = int(topk)
            # weights kept exactly per query: n50 is exact whenever it is at most this
            self._keep = max(self.topk, N50_EXACT)

    # ------------------------------------------------------------------ chunk update
    def update(self, chunk: KeyChunk) -> None:
        """Fold one chunk of keys into the running state."""
        if chunk.packed is not None:
            if self.backend != "native" or self.G != 1:
                raise ValueError("packed key chunks need the native back-end and one group")
            if self._pass == 1:
                self.n_keys += chunk.packed[0].shape[0] * 16
            self._run_native(*chunk.packed, torch.tensor([0, chunk.packed[0].shape[0]]),
                             torch.tensor([16]))
            return
        k_ptr = _ptr(chunk.group_ptr, chunk.keys.shape[0])
        if k_ptr.numel() - 1 != self.G:
            raise ValueError(f"key chunk has {k_ptr.numel() - 1} groups, queries have {self.G}")
        if self._pass == 1:
            self.n_keys += torch.repeat_interleave(k_ptr.diff(), self.q_ptr.diff())
        if self.backend == "native":
            self._update_native(chunk, k_ptr)
            return
        for g in range(self.G) if self.G > 1 else [0]:
            qs, qe = int(self.q_ptr[g]), int(self.q_ptr[g + 1])
            ks, ke = int(k_ptr[g]), int(k_ptr[g + 1])
            if qe > qs and ke > ks:
                ids = None if chunk.ids is None else chunk.ids[ks:ke]
                self._update_torch(qs, qe, chunk.keys[ks:ke], chunk.values[ks:ke], ids)

    def _update_native(self, chunk, k_ptr):
        self._run_native(*pack_keys(chunk.keys.to(torch.float32),
                                    chunk.values.to(torch.float32), k_ptr))

    def _run_native(self, Kt, kb, Vt, b_ptr, nlast):
        # keys of one sweep sized for the L2 cache
        kchunk = max(1, NATIVE_KCHUNK_BYTES // (16 * 4 * (self.D + 1 + self.Cv)))
        _native.attend(self._Q, self._s, Kt, kb, Vt, self.q_ptr, b_ptr, nlast.contiguous(),
                       self._m, self._acc, kchunk=kchunk, nthreads=self.nthreads,
                       direct=self.direct)

    def _update_torch(self, qs, qe, keys, vals, ids):
        # logits in float64 when fp32 would cancel badly (small sigma)
        ldt = torch.float64 if (self.direct or self.track) else self.dtype
        keys = keys.to(ldt)
        vals = vals.to(self._num.dtype)
        kk = 0.5 * (keys * keys).sum(1)
        K = keys.shape[0]
        # rows x cols of the score block within the budget (a few temporaries of that size)
        per = self.dtype.itemsize * (6 if self.track else 3)
        budget = min(self.budget, TORCH_BLOCK_BYTES)
        cols = max(1, min(K, budget // (per * max(1, min(qe - qs, 1024)))))
        rows = max(1, min(qe - qs, budget // (per * cols)))
        for r0 in range(qs, qe, rows):
            r1 = min(qe, r0 + rows)
            q = self.q[r0:r1].to(ldt)
            iv = (1.0 / self.sigma[r0:r1, None].to(ldt) ** 2)
            for c0 in range(0, K, cols):
                c1 = min(K, c0 + cols)
                S = torch.addmm(kk[None, c0:c1], q, keys[c0:c1].T, beta=-1.0)  # q.k - |k|^2/2
                S = S.mul_(iv)
                if not self.track:
                    S = S.to(self.dtype)
                if self._pass == 2:
                    self._second_pass(r0, r1, S, None if ids is None else ids[c0:c1], c0)
                    continue
                self._fold(r0, r1, S, vals[c0:c1])

    def _fold(self, r0, r1, S, vals):
        """Online softmax of the logit block ``S`` [r1 - r0, K] (overwritten) with values [K, Cv]."""
        bm = S.amax(1)
        m_new = torch.maximum(self._m[r0:r1], bm)
        scale = torch.exp(self._m[r0:r1] - m_new)
        # clamp: exp of very negative logits gives denormals, ~100x slower to compute;
        # weights below e^-87 (fp32) / e^-700 (fp64) of the largest are negligible
        S.sub_(m_new[:, None]).clamp_(min=-87.0 if S.dtype == torch.float32 else -700.0)
        S.exp_()
        self._den[r0:r1] = self._den[r0:r1] * scale + S.sum(1)
        self._num[r0:r1] = self._num[r0:r1] * scale[:, None] + S @ vals
        self._m[r0:r1] = m_new

    def update_logits(self, logits, ids, values=None):
        """Fold a block of precomputed logits of every query (torch back-end).

        For estimators whose keys are cheaper to score another way (the FFT correlations of the
        equivariant MMSE).  ``logits`` ``[M, K]`` follows the engine's convention,
        ``(q·k - ‖k‖²/2) / σ²`` (the ``‖q‖²`` term is left to :meth:`result`); ``ids`` ``[K]``
        (int64) names the keys for the top-k; ``values`` ``[K, Cv]`` (``None`` when
        ``value_dim`` is 0).  In the second pass (``track=True``) it updates the diagnostics.
        """
        if self.backend != "torch":
            raise ValueError("update_logits needs the torch back-end")
        if logits.ndim != 2 or logits.shape[0] != self.M:
            raise ValueError(f"logits must have shape [{self.M}, K], got {tuple(logits.shape)}")
        K = logits.shape[1]
        if ids is None or tuple(ids.shape) != (K,):
            raise ValueError(f"ids must have shape [{K}], got "
                             f"{None if ids is None else tuple(ids.shape)}")
        if self._pass == 2:
            self._second_pass(0, self.M, logits.to(self._den.dtype), ids, 0)
            return
        S = logits.to(self._den.dtype, copy=True)  # _fold overwrites it
        if values is None:
            if self.Cv != 0:
                raise ValueError(f"values [K, {self.Cv}] are needed (value_dim={self.Cv})")
            values = S.new_zeros(K, 0)
        self.n_keys += K
        self._fold(0, self.M, S, values.to(self._num.dtype))

    # ------------------------------------------------------------------ results
    def result(self):
        """Return ``(out [M, Cv], lse [M])``.

        ``lse`` is ``log Σ_k exp(-‖q - k‖² / 2σ²)`` (natural log, the ``‖q‖²`` term included).
        """
        if self.backend == "native":
            den = self._acc[:, 0].sum(1)
            num = self._acc[:, 1:].sum(2)
            out = (num / den[:, None]).to(self.dtype)
            lse = (self._m.double() / LOG2E + torch.log(den)).to(self.dtype)
        else:
            out = (self._num / self._den[:, None]).to(self.dtype)
            lse = self._m + torch.log(self._den)
        if not (self.backend == "native" and self.direct):  # else the logits hold all of -|q-k|^2
            lse = lse - 0.5 * self.qsq.to(lse.dtype) / self.sigma.to(lse.dtype) ** 2
        return out, lse

def _ptr(group_ptr, total):
    if group_ptr is None:
        return torch.tensor([0, total], dtype=torch.int64)
    return group_ptr.to(device="cpu", dtype=torch.int64)


# ---------------------------------------------------------------------------- key packing
def pack_keys(keys, values, k_ptr):
    """Keys ``[K, D]`` and values ``[K, Cv]`` (float32, sorted by group, offsets ``k_ptr``) in
    the native kernel's layout: ``(Kt [nb, D, 16], kb [nb, 16], Vt [nb, Cv, 16], b_ptr [G + 1],
    nlast [G])``, every group padded to whole blocks of 16 keys, ``kb = -‖k‖²/2``."""
    G, D, Cv = k_ptr.numel() - 1, keys.shape[1], values.shape[1]
    counts = k_ptr.diff()
    nblk = (counts + 15) // 16
    b_ptr = torch.zeros(G + 1, dtype=torch.int64)
    b_ptr[1:] = torch.cumsum(nblk, 0)
    nb = int(b_ptr[-1])
    kp = torch.zeros(nb * 16, D, dtype=torch.float32)
    kb = torch.zeros(nb * 16, dtype=torch.float32)
    vp = torch.zeros(nb * 16, Cv, dtype=torch.float32)
    if G == 1:
        K = keys.shape[0]
        kp[:K] = keys
        kb[:K] = -0.5 * (keys * keys).sum(1)
        vp[:K] = values
    else:  # pad every group to whole blocks of 16 keys
        grp = torch.repeat_interleave(torch.arange(G), counts)
        dest = b_ptr[:-1][grp] * 16 + (torch.arange(keys.shape[0]) - k_ptr[:-1][grp])
        kp[dest] = keys
        kb[dest] = -0.5 * (keys * keys).sum(1)
        vp[dest] = values
    Kt = kp.view(nb, 16, D).transpose(1, 2).contiguous()
    Vt = vp.view(nb, 16, Cv).transpose(1, 2).contiguous()
    return Kt, kb, Vt, b_ptr, counts - (nblk - 1) * 16


def packed_chunk(key_images, values, geometry, dtype=None):
    """A :class:`KeyChunk` already in the native kernel's blocks of 16 keys, from the key
    images ``[Nc, C, H, W]`` and value images ``[Nc, Cv, H, W]`` of whole training images
    (one group, ``H·W`` a multiple of 16, so that no block straddles two images): the patch
    columns of the unfolded images are the blocks, with no re-packing copy; the keys in
    ``dtype`` (default the key images')."""
    Nc, Cv, D, HW = values.shape[0], values.shape[1], geometry.D, geometry.H * geometry.W
    with single_thread():
        u = unfold(key_images, geometry.P)  # [Nc, D, HW]
    if geometry.whiten is not None:  # float64 GEMM on all threads (on one: 40 % of a CIFAR call)
        u = geometry.whiten.T @ u.double()
    u = u.to(dtype or key_images.dtype)
    with single_thread():
        Kt = u.view(Nc, D, HW // 16, 16).permute(0, 2, 1, 3).reshape(-1, D, 16)
        kb = -0.5 * (Kt * Kt).sum(1)
        Vt = values.reshape(Nc, Cv, HW // 16, 16).permute(0, 2, 1, 3).reshape(-1, Cv, 16)
        packed = (Kt.contiguous(), kb.contiguous(), Vt.contiguous())
    return KeyChunk(None, None, packed=packed)


# ---------------------------------------------------------------------------- patch problems
def _chunk(problem, n0, n1, order, pos_ptr, track, pack):
    """The keys of training images ``n0:n1`` of ``problem``, in the queries' group layout."""
    geo = problem.geometry
    x, values = problem.train[n0:n1], problem.values[n0:n1]
    if pack:
        with single_thread():  # the key images too (the pre-inverse's FFTs): see single_thread
            u = problem.keys(x)
        return packed_chunk(u, values, geo, problem.dtype)
    k = geo.patches(problem.keys(x), problem.dtype)  # [Nc, HW, D]
    Cv = values.shape[1]
    v = values.flatten(2).transpose(1, 2)  # [Nc, HW, Cv]
    Nc, HW, device = k.shape[0], k.shape[1], problem.train.device
    ids = None
    if order is None:
        keys, vals = k.reshape(-1, geo.D), v.reshape(-1, Cv)
        if track:
            ids = torch.arange(n0 * HW, n1 * HW, device=device)
        return KeyChunk(keys, vals, None, ids)
    keys = k[:, order].transpose(0, 1).reshape(-1, geo.D)
    vals = v[:, order].transpose(0, 1).reshape(-1, Cv)
    if track:
        n_idx = torch.arange(n0, n1, device=device)
        ids = (n_idx[None, :] * HW + order.to(device)[:, None]).reshape(-1)
    return KeyChunk(keys.contiguous(), vals.contiguous(), pos_ptr * Nc, ids)


def solve(problem, y, s, plan, *, memory_budget, track=False, topk=8):
    """Solve a patch-attention problem (a ``lemmse.patches.PatchProblem``) for the
    measurements ``y`` ``[B, C, H, W]`` at noise levels ``s`` ``[B]`` by the streaming
    attention, the training set streamed in chunks within ``memory_budget``.

    The queries are sorted by admissibility group (position-major), each chunk of keys
    likewise; ``plan`` (:func:`lemmse.backends.plan`) gives the back-end and the packing.

    Returns
    -------
    ``(x_hat [B, Cv, H, W], lse [B, H*W])``, and with ``track`` also ``(attention, unsort)``
    (the :class:`StreamingAttention` after its second pass and the permutation from the group
    layout back to position order, ``None`` with one group).
    """
    geo = problem.geometry
    Bn, HW, D, N = y.shape[0], geo.H * geo.W, geo.D, problem.train.shape[0]
    Cv = problem.values.shape[1]
    order, pos_ptr = geo.layout()
    q = geo.patches(problem.queries(y), problem.dtype)  # [B, HW, D]
    sig = s[:, None].expand(Bn, HW)
    if order is None:
        Q, S, q_ptr = q.reshape(-1, D), sig.reshape(-1), None
    else:
        Q = q[:, order].transpose(0, 1).reshape(-1, D)
        S = sig[:, order].transpose(0, 1).reshape(-1)
        q_ptr = pos_ptr * Bn
    att = StreamingAttention(Q.contiguous(), S.contiguous(), q_ptr, value_dim=Cv,
                             memory_budget=memory_budget, backend=plan.backend, track=track,
                             topk=topk)
    per_image = HW * (D + Cv + 2) * problem.train.dtype.itemsize * 3
    step = images_per_chunk(N, memory_budget, per_image)
    pack = plan.pack and not track
    passes = 2 if track else 1
    bar = progress_bar(passes * -(-N // step))
    for p in range(passes):
        if p == 1:
            att.begin_second_pass()
        for n0 in range(0, N, step):
            att.update(_chunk(problem, n0, min(N, n0 + step), order, pos_ptr, track, pack))
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    out, lse = att.result()
    # back to [B, HW, ...] in position order
    if order is None:
        out, lse = out.view(Bn, HW, Cv), lse.view(Bn, HW)
        unsort = None
    else:
        unsort = torch.argsort(order)
        out = out.view(HW, Bn, Cv).transpose(0, 1)[:, unsort]
        lse = lse.view(HW, Bn).transpose(0, 1)[:, unsort]
    x_hat = out.transpose(1, 2).reshape(Bn, Cv, geo.H, geo.W)
    return (x_hat, lse, att, unsort) if track else (x_hat, lse)
