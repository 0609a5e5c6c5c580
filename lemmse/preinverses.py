"""The pre-inverses B applied to the measurement before an estimator, x_hat = phi(B y).

:class:`Preinverse` states what an estimator needs to know of B (``kind``, ``mask``,
``is_filter``, ``needs_float64``, ``transfer``) instead of probing attributes; the three
pre-inverses are the identity (physics-agnostic, :class:`IdentityPreinverse`), the mask of an
inpainting (:class:`MaskPreinverse`) and the regularised inverse filter 1 / (k_hat + 1e-7) of a
blur (:class:`InverseFilterPreinverse`). :func:`preinverse` builds the one for an operator.
Every name here is also importable from :mod:`lemmse.operators` (and ``preinverse`` from
:mod:`lemmse`); the module is named in the plural so that ``lemmse.preinverse`` stays the
function.
See book chapter 1 (``book/01_inverse_problems.md``) for B and chapter 6
(``book/06_physics.md``) for what each property changes in the estimators.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from lemmse._operator import Operator, _check_image
from lemmse.blur import Blur, _CircularFilter

if TYPE_CHECKING:
    from lemmse.operators import Inpainting

__all__ = [
    "preinverse",
    "Preinverse",
    "IdentityPreinverse",
    "MaskPreinverse",
    "InverseFilterPreinverse",
]

#: Regularisation added to the blur transfer function in the inverse filter (reference value).
INVERSE_FILTER_EPS = 1e-7

_PREINVERSE_KINDS = ("identity", "inverse")


class Preinverse:
    r"""What an estimator needs to know of a pre-inverse B, stated instead of probed.

    A pre-inverse is a callable ``B(v)`` on [B, C, H, W] tensors with ``A`` / ``A_adjoint``;
    the estimators read three properties of it (book chapter 6,
    ``book/06_physics.md``, derives what each one changes):

    Attributes
    ----------
    kind : str
        ``"identity"`` (physics-agnostic, B = I) or ``"inverse"`` (physics-aware).
    mask : torch.Tensor or None
        The observed-pixel mask [1, C or 1, H, W] when B is a masking (distances are then taken
        over observed pixels only), else None.
    is_filter : bool
        True when B is a stationary filter with a transfer function, ``transfer(H, W, dtype,
        device)`` (distances are then whitened by its autocorrelation).
    needs_float64 : bool
        True when B must be applied in float64 (an inverse filter amplifies the round-off
        of an fp32 FFT by up to :math:`1 / \lvert \hat k \rvert`); the same as
        ``is_filter`` for the pre-inverses here.
    """

    kind = "identity"
    mask = None
    is_filter = False

    @property
    def needs_float64(self) -> bool:
        return self.is_filter

    def transfer(self, H: int, W: int, dtype: torch.dtype = torch.float32, device="cpu"):
        """Transfer function of B; only for a filter (``is_filter``)."""
        raise TypeError(f"{type(self).__name__} is not a filter: it has no transfer function "
                        f"(check is_filter first)")


class IdentityPreinverse(Preinverse):
    """Pre-inverse B = I (physics-agnostic): ``B(v) = v`` (a copy).

    Attributes
    ----------
    kind : str
        ``"identity"``.
    """

    kind = "identity"

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """Return ``v`` (a copy); shape [B, C, H, W]."""
        return _check_image(v, "v").clone()

    A = __call__

    def A_adjoint(self, v: torch.Tensor) -> torch.Tensor:
        """Adjoint of B = I: a copy of ``v``."""
        return self(v)

    def __repr__(self) -> str:
        return "IdentityPreinverse()"


class MaskPreinverse(Preinverse):
    r"""Pre-inverse of inpainting, :math:`B y = m \odot y` (B = A, the mask).

    Attributes
    ----------
    kind : str
        ``"inverse"``.
    mask : torch.Tensor
        The operator's mask, float32 [1, C or 1, H, W].
    """

    kind = "inverse"

    def __init__(self, op: Inpainting):
        self._op = op
        self.mask = op.mask

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        r"""Return :math:`m \odot y`; y of shape [B, C, H, W]."""
        return self._op._mask_for(y, "y") * y

    A = __call__

    def A_adjoint(self, v: torch.Tensor) -> torch.Tensor:
        r"""Adjoint of B: :math:`m \odot v`."""
        return self._op._mask_for(v, "v") * v

    def __repr__(self) -> str:
        return f"MaskPreinverse({self._op!r})"


class InverseFilterPreinverse(_CircularFilter, Preinverse):
    r"""Regularised inverse filter of a blur, :math:`B y = \mathrm{IFFT}(\mathrm{FFT}(y) / (\hat k + 10^{-7}))`.

    The constant :math:`10^{-7}` is added to the (complex) transfer function, as in the
    reference code; where :math:`|\hat k|` is tiny the filter amplifies noise strongly.
    See book chapter 1 (``book/01_inverse_problems.md``).

    Attributes
    ----------
    kind : str
        ``"inverse"``.
    op : Blur
        The blur it inverts.
    """

    kind = "inverse"
    is_filter = True

    def __init__(self, op: Blur, eps: float = INVERSE_FILTER_EPS):
        self.op = op
        self.eps = eps
        self._cache: dict = {}

    def transfer(self, H: int, W: int, dtype: torch.dtype = torch.float32, device="cpu") -> torch.Tensor:
        r"""Transfer function :math:`1 / (\hat k + 10^{-7})`, complex [H, W].

        Computed in complex128 and cast to the complex dtype matching ``dtype``
        (float64 -> complex128, other floats -> complex64); cached per (H, W, dtype, device).
        """
        return self._cached_transfer(H, W, dtype, device)

    @property
    def _kernel_shape(self) -> tuple[int, int]:
        return tuple(self.op.kernel.shape)

    def _transfer_f64(self, H: int, W: int) -> torch.Tensor:
        return 1.0 / (self.op.transfer(H, W, torch.float64, "cpu") + self.eps)

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        r"""Return :math:`\mathrm{IFFT}(\mathrm{FFT}(y) / (\hat k + 10^{-7})).\mathrm{real}`, shape of y."""
        return self._filter(y, "y")

    A = __call__

    def A_adjoint(self, v: torch.Tensor) -> torch.Tensor:
        r"""Adjoint of B: multiplier :math:`\overline{1 / (\hat k + 10^{-7})}`, real part."""
        return self._filter(v, "v", adjoint=True)

    def __repr__(self) -> str:
        return f"InverseFilterPreinverse({self.op!r}, eps={self.eps:g})"


def preinverse(op: Operator, kind: str = "identity"):
    r"""Pre-inverse B applied to the measurement before the estimator, :math:`\hat x = \phi(B y)`.

    Parameters
    ----------
    op : Operator
        The forward operator (:class:`Denoising`, :class:`Inpainting` or :class:`Blur`).
    kind : {"identity", "inverse"}
        ``"identity"``: B = I for any operator (physics-agnostic).
        ``"inverse"`` (physics-aware): the mask for :class:`Inpainting`
        (:math:`B y = m \odot y`), the regularised inverse filter
        :math:`1 / (\hat k + 10^{-7})` for :class:`Blur`, and B = I for
        :class:`Denoising` (whose inverse is the identity; the returned object then has
        ``kind == "identity"``).

    Returns
    -------
    Preinverse
        An :class:`IdentityPreinverse`, :class:`MaskPreinverse` or
        :class:`InverseFilterPreinverse`: callable ``B(v)`` on [B, C, H, W] tensors, with
        ``A`` / ``A_adjoint`` methods and the properties ``kind``, ``mask``, ``is_filter``,
        ``needs_float64``.

    See book chapter 1 (``book/01_inverse_problems.md``).
    """
    # imported here, not at the top: lemmse.operators re-exports this module's names
    from lemmse.operators import Denoising, Inpainting, SuperResolution

    if not isinstance(kind, str) or kind not in _PREINVERSE_KINDS:
        kinds = ", ".join(map(repr, _PREINVERSE_KINDS))
        raise ValueError(f"preinverse: kind must be one of {kinds}, "
                         f"got {kind!r} (the pre-inverse B: 'identity' for the physics-agnostic "
                         f"estimator, 'inverse' for the physics-aware one)")
    if not isinstance(op, Operator):
        raise TypeError(f"op must be an Operator (Denoising, Inpainting or Blur), got {type(op).__name__}")
    if kind == "identity" or isinstance(op, Denoising):
        return IdentityPreinverse()
    if isinstance(op, SuperResolution):
        raise ValueError("kind='inverse' is not defined for SuperResolution (its estimators and "
                         "networks work on the LR grid directly); use kind='identity'")
    if isinstance(op, Inpainting):
        return MaskPreinverse(op)
    if isinstance(op, Blur):
        return InverseFilterPreinverse(op)
    raise TypeError(f"op: no 'inverse' pre-inverse is defined for {type(op).__name__}")
