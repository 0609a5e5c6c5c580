"""Linear forward operators A for the inverse problems of the book.

The forward model is

    y = A x + sigma * e,    e ~ N(0, I),

with images ``x`` of shape ``[B, C, H, W]`` (float, pixel values in [0, 1]).
Four operators subclass :class:`Operator` (``lemmse/_operator.py``, with ``measure``), all with a
periodic (circular) boundary (this module holds three; :class:`Blur` is in ``lemmse.blur``):

- :class:`Denoising`: A = I;
- :class:`Inpainting`: A x = m * x for a 0/1 mask m (1 = observed);
- :class:`Blur`: A x = k * x, a circular convolution computed with the FFT;
- :class:`SuperResolution`: A x = the ``s × s`` block means of x (an LR image ``s`` times
  smaller per axis; the noise lives on the LR grid).

:func:`preinverse` builds the fixed pre-inverse B applied before the estimator,
x_hat = phi(B y): the identity (physics-agnostic) or an approximate inverse of A
(physics-aware: the mask for inpainting, the regularised inverse filter
1 / (k_hat + 1e-7) for blur). The pre-inverses live in ``lemmse.preinverses`` and are
re-exported here.

The vocabulary follows DeepInverse (``A``, ``A_adjoint``, measurement with a
``torch.Generator``).
See book chapter 1 (``book/01_inverse_problems.md``) for the setting.
"""

from __future__ import annotations

import numbers

import torch

# Operator (the base class) and Blur live in modules of their own, the pre-inverses in
# lemmse.preinverses; all are re-exported here.
from lemmse._operator import Operator, _check_image, _parse_image_shape
from lemmse.blur import Blur
from lemmse.preinverses import (INVERSE_FILTER_EPS, IdentityPreinverse, InverseFilterPreinverse,
                                MaskPreinverse, Preinverse, preinverse)

__all__ = [
    "Operator",
    "Denoising",
    "Inpainting",
    "Blur",
    "SuperResolution",
    "preinverse",
    "Preinverse",
    "IdentityPreinverse",
    "MaskPreinverse",
    "InverseFilterPreinverse",
]


class Denoising(Operator):
    r"""Denoising: :math:`A = I`, so :math:`y = x + \sigma e`.

    ``A`` and ``A_adjoint`` return a copy of their input.
    See book chapter 1 (``book/01_inverse_problems.md``).
    """

    name = "denoising"

    def A(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x`` (a copy); shape [B, C, H, W]."""
        return _check_image(x).clone()

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Return ``y`` (a copy); shape [B, C, H, W]."""
        return _check_image(y, "y").clone()


class Inpainting(Operator):
    r"""Inpainting: :math:`A x = m \odot x` with a 0/1 mask m (1 = observed, 0 = missing).

    A is an orthogonal projection, so :math:`A^T = A`.
    See book chapter 1 (``book/01_inverse_problems.md``).

    Parameters
    ----------
    mask : torch.Tensor
        0/1 values (bool or float), shape [H, W], [C, H, W] or [1, C, H, W].
        A mask with one channel applies to every channel of the image.

    Attributes
    ----------
    mask : torch.Tensor
        float32 tensor of shape [1, C or 1, H, W].
    """

    name = "inpainting"

    def __init__(self, mask):
        if not isinstance(mask, torch.Tensor):
            try:
                mask = torch.as_tensor(mask)
            except (TypeError, ValueError) as err:
                raise TypeError(f"mask must be a tensor of 0/1 values, got {type(mask).__name__}") from err
        if mask.ndim == 2:
            mask = mask[None, None]
        elif mask.ndim == 3:
            mask = mask[None]
        elif mask.ndim == 4:
            if mask.shape[0] != 1:
                raise ValueError(f"mask of 4 dimensions must have shape [1, C, H, W], got {tuple(mask.shape)}")
        else:
            raise ValueError(f"mask must have shape [H, W], [C, H, W] or [1, C, H, W], got {tuple(mask.shape)}")
        if mask.is_complex():
            raise TypeError(f"mask must be real (bool or float 0/1), got {mask.dtype}")
        m = mask.detach().to(device="cpu", dtype=torch.float32)
        if not bool(((m == 0) | (m == 1)).all()):
            raise ValueError("mask must contain only 0 and 1 (1 = observed, 0 = missing)")
        self.mask = m.contiguous()
        self._cache: dict = {}
        self._description: str | None = None

    # -- constructors ----------------------------------------------------------------------

    @classmethod
    def center_box(cls, image_shape, size: int) -> Inpainting:
        r"""Inpainting with a ``size`` x ``size`` hole of missing pixels in the middle.

        Convention: the hole covers rows ``H//2 - size//2`` to ``H//2 - size//2 + size - 1``
        (and the same for columns).
        For odd H and odd size the hole is exactly centred (its centre pixel is H//2).
        When the parities differ it cannot be exactly centred: an odd hole in an even image
        has its centre pixel at H//2 (half a pixel below/right of the image centre), an
        even hole in an odd image sits half a pixel above/left. Even H and even size are
        exactly centred.

        Parameters
        ----------
        image_shape : tuple
            (C, H, W) or (H, W).
        size : int
            Side of the hole, 1 <= size <= min(H, W).

        Returns
        -------
        Inpainting
            Operator with a mask of shape [1, C, H, W].
        """
        c, h, w = _parse_image_shape(image_shape)
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive int, got {size!r}")
        if size > h or size > w:
            raise ValueError(f"size must fit in the image ({h}x{w}), got {size}")
        mask = torch.ones(1, c, h, w)
        top, left = h // 2 - size // 2, w // 2 - size // 2
        mask[..., top : top + size, left : left + size] = 0
        op = cls(mask)
        op._description = f"center_box(image_shape=({c}, {h}, {w}), size={size})"
        return op

    @classmethod
    def random(cls, image_shape, fraction: float, seed: int) -> Inpainting:
        r"""Inpainting with a random set of missing pixels, the same in every channel.

        Exactly ``round(fraction * H * W)`` pixels (Python rounding) are missing: the first
        ones of ``torch.randperm(H * W, generator=torch.Generator().manual_seed(seed))``
        in row-major order.

        Parameters
        ----------
        image_shape : tuple
            (C, H, W) or (H, W).
        fraction : float
            Fraction of missing pixels, in [0, 1].
        seed : int
            Seed of the CPU ``torch.Generator`` drawing the pattern.

        Returns
        -------
        Inpainting
            Operator with a mask of shape [1, C, H, W].
        """
        c, h, w = _parse_image_shape(image_shape)
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
            raise TypeError(f"fraction must be a float in [0, 1], got {fraction!r}")
        if not (0.0 <= float(fraction) <= 1.0):
            raise ValueError(f"fraction must be in [0, 1], got {fraction}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}")
        n_missing = int(round(float(fraction) * h * w))
        gen = torch.Generator(device="cpu").manual_seed(seed)
        order = torch.randperm(h * w, generator=gen)
        flat = torch.ones(h * w)
        flat[order[:n_missing]] = 0
        mask = flat.reshape(1, 1, h, w).expand(1, c, h, w).contiguous()
        op = cls(mask)
        op._description = (
            f"random(image_shape=({c}, {h}, {w}), fraction={fraction}, seed={seed}) [{n_missing} missing pixels]"
        )
        return op

    # -- application -----------------------------------------------------------------------

    def _mask_for(self, x: torch.Tensor, name: str) -> torch.Tensor:
        _check_image(x, name)
        mc, mh, mw = self.mask.shape[1:]
        if tuple(x.shape[-2:]) != (mh, mw) or mc not in (1, x.shape[1]):
            raise ValueError(
                f"{name} of shape {tuple(x.shape)} does not match the mask of shape "
                f"{tuple(self.mask.shape)} (need the same H, W and C equal to the mask's or mask C = 1)"
            )
        key = (x.dtype, x.device)
        if key not in self._cache:
            self._cache[key] = self.mask.to(device=x.device, dtype=x.dtype)
        return self._cache[key]

    def A(self, x: torch.Tensor) -> torch.Tensor:
        r"""Return :math:`m \odot x`; x of shape [B, C, H, W] with the mask's H, W."""
        return self._mask_for(x, "x") * x

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        r"""Return :math:`m \odot y` (A is self-adjoint)."""
        return self._mask_for(y, "y") * y

    def __repr__(self) -> str:
        if self._description is not None:
            return f"Inpainting.{self._description}"
        missing = int((self.mask == 0).sum())
        return f"Inpainting(mask shape {tuple(self.mask.shape)}, {missing} missing values)"


class SuperResolution(Operator):
    r"""Super-resolution by an integer factor ``s``: :math:`A` averages ``s × s`` blocks.

    A high-resolution (HR) image ``[B, C, H, W]`` maps to the low-resolution (LR) image
    ``[B, C, H/s, W/s]`` whose pixel ``(j1, j2)`` is the mean of the HR pixels
    ``[s j1, s j1 + s) × [s j2, s j2 + s)``; :meth:`measure` adds the noise on the LR grid.
    ``A_adjoint`` spreads each LR value over its block, divided by ``s²``
    (so that ``<A x, y> = <x, A^T y>``).  ``H`` and ``W`` must be multiples of ``s``.
    See the book chapter on super-resolution (``book/15_superresolution.md``).

    Parameters
    ----------
    factor : int
        The scale factor ``s >= 1`` (``s = 1`` is denoising).
    """

    name = "superresolution"

    def __init__(self, factor: int = 2):
        if isinstance(factor, bool) or not isinstance(factor, numbers.Integral):
            raise TypeError(f"factor must be a positive integer, got {factor!r}")
        factor = int(factor)
        if factor < 1:
            raise ValueError(f"factor must be a positive integer, got {factor}")
        self.factor = factor

    def lr_shape(self, H: int, W: int) -> tuple[int, int]:
        """The LR grid ``(H / s, W / s)`` of an HR image; a ValueError if not divisible."""
        s = self.factor
        if H % s or W % s:
            raise ValueError(f"x: the image size {H}×{W} is not divisible by the factor {s} "
                             f"of {self!r}; crop or pad the images to a multiple of {s}")
        return H // s, W // s

    def A(self, x: torch.Tensor) -> torch.Tensor:
        """Block means: ``[B, C, H, W]`` → ``[B, C, H/s, W/s]``."""
        _check_image(x)
        B, C, H, W = x.shape
        h, w = self.lr_shape(H, W)
        s = self.factor
        return x.reshape(B, C, h, s, w, s).mean(dim=(3, 5))

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``[B, C, h, w]`` → ``[B, C, s h, s w]``: each value spread over its block, / s²."""
        _check_image(y, "y")
        s = self.factor
        B, C, h, w = y.shape
        out = y[:, :, :, None, :, None].expand(B, C, h, s, w, s) / (s * s)
        return out.reshape(B, C, h * s, w * s).contiguous()

    def __repr__(self) -> str:
        return f"SuperResolution(factor={self.factor})"
