"""What the estimators share: construction, checks, pre-inverse, the patch problem (chapters 2–7).

- ``_check_images``, ``_check_sigma``, ``_check_dtype``: the estimators' input rules, the
  package's one image and σ rule (``lemmse._validate``) plus what an estimator adds (the
  training set's image shape, dtype and device; ``1/σ²`` finite in the compute dtype);
- :class:`_Estimator`: the training set, the operator and its pre-inverse ``B`` (chapter 6),
  the dtype, the memory budget and the ``backend`` argument, all checked once; the query and
  key images (measured, pre-inverted, centred); ``__call__`` and ``posterior`` around each
  estimator's ``_estimate`` and ``_posterior``.
- :class:`_PatchAttention`: the patch estimators (``LocalMMSE``, ``LEMMSE``, chapters 4–5) as
  one patch-attention problem (:meth:`~_PatchAttention.problem`: geometry, training images,
  values, query and key maps), handed to :mod:`lemmse.backends` as
  :func:`lemmse.backends.plan` decides (chapter 7), with the float64 guard for the query images
  float32 cannot be trusted with, and the log-density and posterior read off the result.

The public estimators are in :mod:`lemmse.estimators`.
"""

from __future__ import annotations

import copy
import numbers
import sys

import torch

from lemmse._runtime import no_tf32, progress_bars
from lemmse._validate import bound_topk, check_bool, check_images, check_topk, parse_sigma
from lemmse.backends import attention, planner, sliding
from lemmse.backends.planner import DEFAULT_MEMORY_BUDGET, images_per_chunk
from lemmse.operators import Denoising, Operator
from lemmse.operators import preinverse as make_preinverse
from lemmse.patches import PatchGeometry, PatchProblem, whitening
from lemmse.posterior import gaussian_log_density, patch_posterior


# ---------------------------------------------------------------------------- checks
def _check_images(x, name, *, dtype=None, shape=None, device=None):
    """``x`` if :func:`lemmse._validate.check_images` accepts it (a finite, non-empty, real
    floating-point batch ``[B, C, H, W]`` with data) and it has the image ``shape``, ``dtype``
    and ``device`` an estimator was built with (each when given), else the TypeError or
    ValueError of the package's one rule, naming ``name``."""
    check_images(x, name, device=device, device_name="the training set")
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        raise ValueError(f"{name} has images of shape {tuple(x.shape[1:])} (C, H, W), but the "
                         f"training set has {tuple(shape)}")
    if dtype is not None and x.dtype != dtype:
        raise ValueError(f"{name} has dtype {x.dtype}, but the estimator computes in {dtype}; "
                         f"convert it with {name}.to({dtype})")
    return x


def _check_sigma(sigma, batch, dtype, device):
    """σ as a ``[batch]`` tensor of ``dtype`` on ``device``: :func:`lemmse._validate.parse_sigma`
    (a float or one value per image, positive and finite, still positive in ``dtype``), and
    ``1/σ²``, which the logits multiply by, finite in ``dtype``."""
    s = parse_sigma(sigma, batch, dtype, device)
    if not bool(torch.isfinite((s.double() ** -2).to(dtype)).all()):
        low = float(s.min())
        raise ValueError(f"sigma = {low:g} is too small for {dtype}: 1/sigma^2 overflows; use "
                         f"sigma >= {2 * torch.finfo(dtype).max ** -0.5:.1e} or float64")
    return s


def _check_dtype(dtype, default):
    """The compute dtype: ``default`` (the training images') when ``dtype`` is None, else
    ``dtype`` if it is float32 or float64, else a ValueError."""
    dtype = default if dtype is None else dtype
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    return dtype


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
        dtype = _check_dtype(dtype, train.dtype)
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
        return images_per_chunk(self.N, self.memory_budget, bytes_per_image)

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

    def posterior(self, y, sigma, topk=8, progress=None):
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
        progress : bool or None
            Show a progress bar over the chunks of the training set (patch estimators);
            ``None``: when standard error is a terminal.

        Returns
        -------
        Posterior
        """
        topk = check_topk(topk)
        progress = check_bool("progress", progress) if progress is not None else \
            sys.stderr.isatty()
        y, s = self._prepare(y, sigma)
        label = f"{type(self).__name__}.posterior" if progress else None
        with progress_bars(label):
            return self._checked_posterior(y, s, topk)

    def _checked_posterior(self, y, s, topk, x_hat=None):
        """:meth:`posterior` of checked ``y``, ``s``: ``topk`` capped for the memory budget;
        ``x_hat``, the estimate, when the caller has it already (``lemmse.distributed``)."""
        n_keys, n_queries = self._posterior_size(y.shape[0])
        topk = bound_topk(topk, n_keys, n_queries, self.memory_budget)
        with torch.no_grad(), no_tf32():
            return self._posterior(y, s, int(topk), x_hat)

    def log_density(self, y, sigma):
        """Log-density of the queries under the Gaussian-smoothed keys, from one pass.

        ``log((1/K) Σ_k N(q; k, σ² I_D))`` (``lemmse.posterior.gaussian_log_density``):
        the ``log_density`` of :meth:`posterior` at the cost of one call, without its second
        pass.  For the patch estimators ``q = Π_i v`` is the query patch of pixel ``i`` and the
        keys its ``K`` admissible (measured, pre-inverted) training patches, whitened for the
        physics-aware blur (sliding-window kernel where it applies); for the :class:`MMSE`
        ``q`` is the query image and the keys the ``N`` measured training images, ``D`` the
        entries the distance sees (the observed ones under a physics-aware mask), in float64;
        for the :class:`EquivariantMMSE` the keys are their ``N·H·W`` circular shifts (FFT
        correlations in float64).  The global ones give one value per image, repeated over its
        pixels.  High values: the query is typical of the training data (chapter "What the
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
            return self._log_density(y, s)

    def _per_image(self, t):
        """A per-image float64 value ``[B]`` as a field ``[B, H, W]`` in the estimator's dtype
        (the global estimators' log-density, as their posterior reports it)."""
        return t.to(self.dtype).view(-1, 1, 1).expand(-1, self.H, self.W).contiguous()

    def __repr__(self):
        extra = f", patch_size={self.patch_size}" if hasattr(self, "patch_size") else ""
        return (f"{type(self).__name__}(N={self.N}, image=({self.C}, {self.H}, {self.W}){extra}, "
                f"operator={self.operator!r}, preinverse={self.preinverse!r}, dtype={self.dtype})")


# ---------------------------------------------------------------------------- patch family
class _PatchAttention(_Estimator):
    """Estimators of the form x̂[i] = Σ_{admissible (n, j)} softmax(-d(Π_i v, Π_j v_n)) x_n[j].

    A patch estimator describes its problem (:meth:`problem`); :func:`lemmse.backends.plan`
    chooses who solves it (:meth:`plan`, the sliding window or the patch attention, see the
    module docstring) and :mod:`lemmse.backends` solves it; ``last_plan`` is the plan of the
    latest call.  ``algorithm="attention"`` forces the patch attention (for comparisons);
    ``algorithm="sliding"`` requires the sliding-window kernel and raises where it does not
    apply.
    """

    _slide_band_rows = 0  # rows per work item of the sliding kernel (0: the kernel chooses)
    last_plan = None

    def __init__(self, train, operator=None, patch_size=5, preinverse="identity", *,
                 algorithm="auto", **kw):
        super().__init__(train, operator, preinverse, **kw)
        if algorithm not in ("auto", "sliding", "attention"):
            raise ValueError(f"algorithm must be 'auto', 'sliding' or 'attention', got "
                             f"{algorithm!r}")
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
    def _gid(self):  # [H*W] group id of each position, or None
        return self.geometry.gid

    @property
    def _last_path(self):  # the old name of last_plan.path ("slide" or "attention")
        return None if self.last_plan is None else self.last_plan.path

    def _position_groups(self):
        raise NotImplementedError

    def _slide_shifts(self):
        """``(shifts [T, 2] int32, gid [H*W] int32 or None)``: the key positions ``i + t`` a
        query pixel ``i`` sees (the sliding window's form of the admissible keys)."""
        raise NotImplementedError

    # --- values: the clean centre pixels, unless a subclass attaches others ------------
    def _value_images(self, n0, n1, x):
        """Values of the keys of training images ``n0:n1`` (``x = self.train[n0:n1]``), an
        image ``[n1 - n0, Cv, H, W]`` on the key grid: the centre pixels themselves."""
        return x

    # --- the problem, and who solves it -------------------------------------------------
    def problem(self, dtype=None):
        """The patch-attention problem this estimator describes (see
        ``lemmse.patches.PatchProblem``): its geometry, training images, values, and the
        maps to query and key images, in ``dtype`` (default: the estimator's; ``torch.float64``
        for exact diagnostics such as ``lemmse.pixel_weights``).  With whitened distances (the
        physics-aware blur) the query and key images stay in float64 until the patches are
        whitened (``PatchGeometry.patches``)."""
        images = torch.float64 if self.geometry.whiten is not None else dtype
        return PatchProblem(self.geometry, self.train, self._value_images(0, self.N, self.train),
                            lambda y: self._query_images(y, images),
                            lambda x: self._keys_images(x, images), self._prepare,
                            dtype or self.dtype)

    def plan(self, track=False):
        """The :class:`lemmse.backends.Plan` of a call (``track=True``: of the diagnostics of
        :meth:`posterior`): the path, the back-end, and why."""
        return self._plan(self.problem(), track)

    def _plan(self, problem, track=False):
        return planner.plan(problem, backend=self.backend, algorithm=self.algorithm, track=track)

    def _attend(self, y, s, track=False, topk=8):
        problem = self.problem()
        return attention.solve(problem, y, s, self._plan(problem, track),
                               memory_budget=self.memory_budget, track=track, topk=topk)

    def _x_lse(self, y, s, need_lse=True):
        """``(x_hat, lse)``: the estimate and the natural-log log-sum-exp of the logits.

        Query images the fp32 paths cannot be trusted with (see :meth:`_float64_twin`) are
        recomputed in float64; ``need_lse=False``: a non-finite ``lse`` alone is no reason."""
        problem = self.problem()
        self.last_plan = p = self._plan(problem)
        if p.path == "slide":
            x_hat, lse, bad = sliding.solve(problem, y, s, *self._slide_shifts(),
                                            memory_budget=self.memory_budget,
                                            band_rows=self._slide_band_rows)
        else:
            x_hat, lse = attention.solve(problem, y, s, p, memory_budget=self.memory_budget)
            ok = torch.isfinite(x_hat).flatten(1).all(1)
            if need_lse:
                ok = ok & torch.isfinite(lse).all(1)
            bad = ~ok if self.dtype == torch.float32 else None
        if bad is not None and bool(bad.any()):
            x64, lse64 = self._float64_twin()._attend(y[bad].double(), s[bad].double())
            x_hat[bad], lse[bad] = x64.to(self.dtype), lse64.to(lse.dtype)
        return x_hat, lse

    def _estimate(self, y, s):
        return self._x_lse(y, s, need_lse=False)[0]

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

    def _n_keys(self):
        """Number of admissible keys of each query position ``[H*W]`` (int64)."""
        return self.geometry.n_keys(self.N)

    def _lse_and_keys(self, y, s):
        """``(lse [B, H*W], K [1, H*W])`` in float64: log-sum-exp and number of keys."""
        return self._x_lse(y, s)[1].double(), self._n_keys().to(torch.float64)[None]

    def _log_density(self, y, s):
        lse, K = self._lse_and_keys(y, s)
        logdens = gaussian_log_density(lse, K, self.D, s.double()[:, None])
        return logdens.view(y.shape[0], self.H, self.W).to(self.dtype)

    def _posterior_size(self, batch):
        return int(self._n_keys().max()), batch * self.H * self.W

    def _posterior(self, y, s, topk, x_hat=None):
        _, lse, att, unsort = self._attend(y, s, track=True, topk=topk)
        if x_hat is None:
            x_hat = self._estimate(y, s)  # the estimate exactly as a call computes it
        return patch_posterior(x_hat, lse, att, unsort, self.D, s)
