"""Streaming Gaussian-kernel attention: the computational core of every estimator.

All four constrained MMSE estimators (book chapters 2–5 and 7) are instances of one operation:
for each query vector ``q`` (a patch, or a whole image, of the pre-inverted measurement) and a
bank of keys ``k`` (the same patches of the measured training images) with values ``v`` (clean
training pixels),

.. math::

    \\hat v(q) = \\frac{\\sum_k \\exp\\big(-\\lVert q - k \\rVert^2 / 2\\sigma^2\\big)\\, v_k}
                     {\\sum_k \\exp\\big(-\\lVert q - k \\rVert^2 / 2\\sigma^2\\big)},

i.e. softmax attention with logits ``(q·k - ‖k‖²/2) / σ²`` (the ``‖q‖²`` term is constant per
query and cancels).  Queries and keys may be split into *groups* (query rows of group ``g`` only
see the keys of group ``g``): the local MMSE uses one group per pixel position, the
physics-aware inpainting LE-MMSE one group per observed-pixel pattern.

The key bank is never held in memory at once: :class:`StreamingAttention` consumes it chunk by
chunk with an online log-sum-exp (running maximum, rescaled numerator and denominator), so memory
is bounded by the chunk size, whatever the number of training images.

Two back-ends compute a chunk:

``"native"``
    a fused C kernel (AVX-512 or AVX2, fp32, POSIX threads; ``lemmse/_kernels/attend.c``) that
    computes the dot products, the exponentials and the accumulation in registers, never
    writing the score matrix; for large ``D`` (from 48) its register-blocked tiles run the dot
    products near the FMA peak.  Used on CPUs with AVX-512 or AVX2 for fp32 and at most 4 value
    channels, whatever ``D``, where it measures fastest (``benchmarks/bench_engine.py``).
``"torch"``
    the GEMM expansion ``q·k - ‖k‖²/2`` by a matrix product, then ``exp`` and a second product
    with the values, chunked over queries and keys within the memory budget.  Any device, fp32
    or float64; used for float64, on GPUs, for more than 4 value channels, and for the
    diagnostics of :meth:`StreamingAttention.update` with ``track=True``.

TF32 is never used (it costs 1–8 nats of logit error at small σ): callers run under
``no_tf32``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lemmse._native import load_kernel
from lemmse._runtime import no_tf32  # noqa: F401 (re-exported: estimators, groups, superres)

LOG2E = 1.4426950408889634
#: Key data swept by the native kernel per pass over a thread's queries (sized for the L2 cache).
NATIVE_KCHUNK_BYTES = 512 * 1024
#: Default bound on the working memory of one estimator call, in bytes.
DEFAULT_MEMORY_BUDGET = 1 << 30
#: Below this noise level (in the centred [0, 1] pixel scale) the logits are computed from
#: explicit differences (native kernel) or in float64 (torch path) instead of the fp32 GEMM
#: expansion, whose cancellation error grows like ‖q‖‖k‖·2⁻²⁴/σ² (chapter 7).
DIRECT_SIGMA = 0.1
#: Bound on the score block of the torch path (cache-friendly element-wise passes).
TORCH_BLOCK_BYTES = 1 << 30
#: n50 is computed exactly (from the sorted largest weights) when it is at most this many.
N50_EXACT = 256
# bins of the log-weight histogram used to count the patches holding 50 % of the mass
_HIST_BINS = 2048
_HIST_RANGE = 32.0  # nats below the total mass (bins of 1/64 nat)


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


def choose_backend(dim: int, value_dim: int, dtype: torch.dtype, device: torch.device,
                   backend: str = "auto") -> str:
    """Pick ``"native"`` or ``"torch"`` (see the module docstring; ``dim`` does not matter)."""
    if backend not in ("auto", "native", "torch"):
        raise ValueError(f"backend must be 'auto', 'native' or 'torch', got {backend!r}")
    native_ok = (device.type == "cpu" and dtype == torch.float32 and 1 <= value_dim <= 4
                 and load_kernel() is not None)
    if backend == "native":
        if not native_ok:
            raise ValueError("backend='native' needs a CPU with AVX-512 or AVX2, a C compiler, float32 and "
                             "at most 4 value channels")
        return "native"
    if backend == "torch":
        return "torch"
    return "native" if native_ok else "torch"


class StreamingAttention:
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
        self.backend = "torch" if track else choose_backend(self.D, self.Cv, self.dtype,
                                                            self.device, backend)
        self.qsq = (queries * queries).sum(1)  # for the exact log-density
        # small sigma in fp32: avoid the cancellation of the GEMM expansion
        self.direct = bool(self.dtype == torch.float32 and self.M > 0
                           and float(self.sigma.min()) < DIRECT_SIGMA)
        if self.backend == "native":
            self._fn = load_kernel()
            s = (self.inv_var * LOG2E).to(torch.float32)
            if self.direct:
                self._Q = queries.to(torch.float32).contiguous()
                self._s = (-0.5 * s).contiguous()
            else:
                self._Q = (queries * s[:, None]).contiguous()
                self._s = s.contiguous()
            self._m = torch.full((self.M,), -math.inf, dtype=torch.float32)
            self._acc = torch.zeros(self.M, self.Cv + 1, 16, dtype=torch.float32)
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
        keys = chunk.keys.to(torch.float32)
        vals = chunk.values.to(torch.float32)
        counts = k_ptr.diff()
        nblk = (counts + 15) // 16
        b_ptr = torch.zeros(self.G + 1, dtype=torch.int64)
        b_ptr[1:] = torch.cumsum(nblk, 0)
        nb = int(b_ptr[-1])
        kp = torch.zeros(nb * 16, self.D, dtype=torch.float32)
        kb = torch.zeros(nb * 16, dtype=torch.float32)
        vp = torch.zeros(nb * 16, self.Cv, dtype=torch.float32)
        if self.G == 1:
            K = keys.shape[0]
            kp[:K] = keys
            kb[:K] = -0.5 * (keys * keys).sum(1)
            vp[:K] = vals
        else:  # pad every group to whole blocks of 16 keys
            grp = torch.repeat_interleave(torch.arange(self.G), counts)
            dest = b_ptr[:-1][grp] * 16 + (torch.arange(keys.shape[0]) - k_ptr[:-1][grp])
            kp[dest] = keys
            kb[dest] = -0.5 * (keys * keys).sum(1)
            vp[dest] = vals
        Kt = kp.view(nb, 16, self.D).transpose(1, 2).contiguous()
        Vt = vp.view(nb, 16, self.Cv).transpose(1, 2).contiguous()
        self._run_native(Kt, kb, Vt, b_ptr, counts - (nblk - 1) * 16)

    def _run_native(self, Kt, kb, Vt, b_ptr, nlast):
        q0, q1 = self.q_ptr[:-1].contiguous(), self.q_ptr[1:].contiguous()
        b0, b1 = b_ptr[:-1].contiguous(), b_ptr[1:].contiguous()
        nlast = nlast.contiguous()
        # keys of one sweep sized for the L2 cache
        kchunk = max(1, NATIVE_KCHUNK_BYTES // (16 * 4 * (self.D + 1 + self.Cv)))
        rc = self._fn(self._Q.data_ptr(), self._s.data_ptr(), self.M, self.D, Kt.data_ptr(),
                      kb.data_ptr(), Vt.data_ptr(), self.Cv, self.G, q0.data_ptr(),
                      q1.data_ptr(), b0.data_ptr(), b1.data_ptr(), nlast.data_ptr(), kchunk,
                      self._m.data_ptr(), self._acc.data_ptr(), self.nthreads,
                      int(self.direct))
        if rc != 0:  # pragma: no cover - guarded by choose_backend
            raise RuntimeError(f"native attention kernel failed with code {rc}")

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

    # ------------------------------------------------------------------ diagnostics
    def begin_second_pass(self):
        """Start the pass that histograms the normalised log-weights (``track=True`` only)."""
        if not self.track:
            raise RuntimeError("begin_second_pass needs track=True")
        self._lse = self._m + torch.log(self._den)
        self._s2 = torch.zeros_like(self._den)
        self._tk_logw = torch.full((self.M, self._keep), -math.inf, dtype=self._den.dtype,
                                   device=self.device)
        self._tk_id = torch.full((self.M, self._keep), -1, dtype=torch.int64, device=self.device)
        self._hist_mass = torch.zeros(self.M, _HIST_BINS, dtype=self._den.dtype,
                                      device=self.device)
        self._hist_count = torch.zeros_like(self._hist_mass)
        self._pass = 2

    def _second_pass(self, r0, r1, S, ids, c0):
        logw = S - self._lse[r0:r1, None]  # log of the normalised weights, <= 0
        w = torch.exp(logw)
        self._s2[r0:r1] += (w * w).sum(1)
        cid = (torch.arange(c0, c0 + S.shape[1], device=self.device) if ids is None
               else ids.to(self.device))
        # the chunk's own largest weights first, then merge with the running ones
        kc = min(self._keep, logw.shape[1])
        c_l, c_pos = logw.topk(kc, dim=1)
        both_l = torch.cat([self._tk_logw[r0:r1], c_l], 1)
        both_i = torch.cat([self._tk_id[r0:r1], cid[c_pos]], 1)
        kk = min(self._keep, both_l.shape[1])
        top_l, pos = both_l.topk(kk, dim=1)
        self._tk_logw[r0:r1, :kk] = top_l
        self._tk_id[r0:r1, :kk] = both_i.gather(1, pos)
        b = (-logw * (_HIST_BINS / _HIST_RANGE)).floor().clamp_(0, _HIST_BINS - 1).long()
        self._hist_count[r0:r1].scatter_add_(1, b, torch.ones_like(logw))
        self._hist_mass[r0:r1].scatter_add_(1, b, w)

    # ------------------------------------------------------------------ results
    def result(self):
        """Return ``(out [M, Cv], lse [M])``.

        ``lse`` is ``log Σ_k exp(-‖q - k‖² / 2σ²)`` (natural log, the ``‖q‖²`` term included).
        """
        if self.backend == "native":
            den = self._acc[:, 0].double().sum(1)
            num = self._acc[:, 1:].double().sum(2)
            out = (num / den[:, None]).to(self.dtype)
            lse = (self._m.double() / LOG2E + torch.log(den)).to(self.dtype)
        else:
            out = (self._num / self._den[:, None]).to(self.dtype)
            lse = self._m + torch.log(self._den)
        if not (self.backend == "native" and self.direct):  # else the logits hold all of -|q-k|^2
            lse = lse - 0.5 * self.qsq.to(lse.dtype) / self.sigma.to(lse.dtype) ** 2
        return out, lse

    def diagnostics(self):
        """Return a dict of per-query diagnostics (after the second pass, ``track=True``).

        ``participation``: 1 / Σ w²; ``n50``: the number of largest weights holding 50 % of
        the mass (exact when it is at most :data:`N50_EXACT`, otherwise counted on a histogram of the
        log-weights with bins of 1/64 nat, accurate to about 1.6 %); ``topk_weights`` and ``topk_ids``.
        """
        if not self.track or self._pass != 2:
            raise RuntimeError("diagnostics need track=True and a completed second pass")
        participation = 1.0 / self._s2
        tw = torch.exp(self._tk_logw)
        tw = torch.where(self._tk_id >= 0, tw, torch.zeros_like(tw))
        cum = tw.cumsum(1)
        reached = cum >= 0.5
        n50_exact = torch.where(reached.any(1), reached.float().argmax(1) + 1,
                                torch.zeros(self.M, dtype=torch.int64, device=self.device))
        # histogram fallback
        cmass = self._hist_mass.cumsum(1)
        ccount = self._hist_count.cumsum(1)
        idx = (cmass < 0.5).sum(1).clamp(max=_HIST_BINS - 1)
        before_m = torch.where(idx > 0, cmass.gather(1, (idx - 1).clamp(min=0)[:, None])[:, 0],
                               torch.zeros_like(cmass[:, 0]))
        before_c = torch.where(idx > 0, ccount.gather(1, (idx - 1).clamp(min=0)[:, None])[:, 0],
                               torch.zeros_like(ccount[:, 0]))
        bin_m = self._hist_mass.gather(1, idx[:, None])[:, 0]
        bin_c = self._hist_count.gather(1, idx[:, None])[:, 0]
        need = torch.ceil((0.5 - before_m) / (bin_m / bin_c.clamp(min=1)).clamp(min=1e-300))
        n50_hist = (before_c + need.clamp(min=1)).long()
        n50 = torch.where(n50_exact > 0, n50_exact, n50_hist)
        k = self.topk
        return {"participation": participation, "n50": n50, "topk_weights": tw[:, :k],
                "topk_ids": self._tk_id[:, :k]}


def _ptr(group_ptr, total):
    if group_ptr is None:
        return torch.tensor([0, total], dtype=torch.int64)
    return group_ptr.to(device="cpu", dtype=torch.int64)
