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

Every estimator describes its problem; :mod:`lemmse.backends` solves it (chapter 7).
``LEMMSE`` and ``LocalMMSE`` are patch-attention problems (``problem()``): a call takes the
sliding-window kernel where it applies (float32 on the CPU, at most 4 channels, unwhitened
distances, the native kernel available), else the streaming patch attention (its fused native
kernel or torch); ``plan()`` says which and why (:func:`lemmse.backends.plan`), and
``posterior`` always takes the torch patch attention.  The ``MMSE`` streams whole images
through the torch attention; the ``EquivariantMMSE`` scores all shifts at once with FFTs.
All four share ``est(y, sigma)``, ``posterior(y, sigma, topk)`` and
``log_density(y, sigma)``.
"""

from __future__ import annotations

import math
import numbers

import torch

from lemmse._estimator import _check_images, _Estimator, _PatchAttention
from lemmse.backends.attention import KeyChunk, StreamingAttention
from lemmse.operators import Denoising, SuperResolution
from lemmse.patches import extract_patches, pattern_groups
from lemmse.posterior import Posterior, decode_ids, gaussian_log_density, image_posterior

__all__ = ["MMSE", "EquivariantMMSE", "LocalMMSE", "LEMMSE", "Posterior", "extract_patches"]

# ---------------------------------------------------------------------------- patch family
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
        applies, else the patch attention of :mod:`lemmse.backends.attention`, whose ``"auto"``
        may pick torch; :meth:`plan` says which and why); ``"torch"``: the patch attention
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

    def posterior(self, y, sigma, topk=8, progress=None):
        """Estimate plus the diagnostics of the weights (see :class:`Posterior`); not for
        ``0 < group_weight < 1``."""
        if self._rest is not None:
            raise ValueError("posterior is not available for 0 < group_weight < 1 (two key "
                             "banks); use group_weight=1 or 0, or call the estimator")
        return super().posterior(y, sigma, topk, progress=progress)

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

    def _run(self, y, s, track=False, topk=8, dtype=None, values=True):
        """``(x_hat or None, lse, attention, D)`` by the torch attention over whole images, in
        ``dtype`` (default: the estimator's); ``values=False``: the log-sum-exp alone."""
        dt = dtype or self.dtype
        Q = self._flat(self._query_images(y)).to(dt).contiguous()
        D = Q.shape[1]
        Cv = self.C * self.H * self.W if values else 0
        att = StreamingAttention(Q, s.to(dt), None, value_dim=Cv,
                                 memory_budget=self.memory_budget, backend="torch", track=track,
                                 topk=topk)
        step = self._images_per_chunk((D + Cv) * dt.itemsize * 2)
        for p in range(2 if track else 1):
            if p == 1:
                att.begin_second_pass()
            for n0 in range(0, self.N, step):
                x = self.train[n0:n0 + step]
                ids = torch.arange(n0, n0 + x.shape[0], device=self.device) if track else None
                att.update(KeyChunk(self._flat(self._keys_images(x)).to(dt).contiguous(),
                                    x.flatten(1)[:, :Cv], None, ids))
        out, lse = att.result()
        return (out.view(-1, self.C, self.H, self.W) if values else None), lse, att, D

    def _estimate(self, y, s):
        return self._run(y, s)[0]

    def _log_density(self, y, s):  # one float64 pass, no values
        _, lse, _, D = self._run(y, s, dtype=torch.float64, values=False)
        return self._per_image(gaussian_log_density(lse, self.N, D, s.double()))

    def _posterior_size(self, batch):
        return self.N, batch

    def _posterior(self, y, s, topk, x_hat=None):
        _, lse, att, D = self._run(y, s, track=True, topk=topk)
        if x_hat is None:
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

    def _log_density(self, y, s):  # one pass of FFT correlations, in float64
        f64, HW = torch.float64, self.H * self.W
        v = self._query_images(y).to(f64)
        lse = torch.full((v.shape[0],), -math.inf, dtype=f64, device=self.device)
        for _, _, L in self._logit_chunks(v, s):  # (⟨v, T_g a_n⟩ - ‖a_n‖²/2) / σ²
            lse = torch.logaddexp(lse, torch.logsumexp(L.flatten(1), 1))
        s64 = s.to(f64)
        lse = lse - 0.5 * (v * v).sum(dim=(1, 2, 3)) / s64 ** 2  # the ‖v‖² term
        return self._per_image(gaussian_log_density(lse, self.N * HW, self.C * HW, s64))

    def _posterior_size(self, batch):
        return self.N * self.H * self.W, batch

    def _posterior(self, y, s, topk, x_hat=None):
        """Diagnostics over the ``N·H·W`` keys ``T_g A x_n``: two extra passes, in float64."""
        f64 = torch.float64
        if x_hat is None:
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
