"""The base class of the forward operators, and the input checks every operator shares.

:class:`Operator` states the forward model of the book,

    y = A x + sigma * e,    e ~ N(0, I),

for images ``x`` of shape ``[B, C, H, W]`` (float, pixel values in [0, 1]): subclasses give
``A`` and ``A_adjoint``, :meth:`Operator.measure` draws ``y``.
The private checks here (an image tensor, σ per image, an image shape) are shared by the
operators (:mod:`lemmse.operators`) and the pre-inverses (:mod:`lemmse.preinverses`).
Import :class:`Operator` from :mod:`lemmse.operators` or :mod:`lemmse`.
See book chapter 1 (``book/01_inverse_problems.md``) for the setting.
"""

from __future__ import annotations

import torch

from lemmse._validate import check_finite_output, check_images, parse_sigma

__all__ = ["Operator"]


def _check_image(x, name: str = "x") -> torch.Tensor:
    """Check that ``x`` is a real floating-point tensor of shape [B, C, H, W] with data (the
    structural part of ``lemmse._validate.check_images``: values are not read)."""
    return check_images(x, name, finite=False, allow_empty=True)


def _sigma_per_image(sigma, batch: int, dtype: torch.dtype, device) -> torch.Tensor:
    """``sigma`` (a float or one value per image) as a [batch, 1, 1, 1] tensor
    (``lemmse._validate.parse_sigma``: positive, finite, one value per image, not 0 in
    ``dtype``)."""
    return parse_sigma(sigma, batch, dtype, device).reshape(batch, 1, 1, 1)


def _parse_image_shape(image_shape) -> tuple[int, int, int]:
    """Return (C, H, W) from ``image_shape`` given as (C, H, W) or (H, W) (C = 1)."""
    try:
        dims = tuple(int(d) for d in image_shape)
        ok = all(int(d) == d for d in image_shape)
    except (TypeError, ValueError) as err:
        raise TypeError(f"image_shape must be (C, H, W) or (H, W) of ints, got {image_shape!r}") from err
    if not ok or len(dims) not in (2, 3) or min(dims) < 1:
        raise ValueError(f"image_shape must be (C, H, W) or (H, W) of positive ints, got {image_shape!r}")
    return (1,) + dims if len(dims) == 2 else dims


class Operator:
    r"""Base class of the linear forward operators A.

    Subclasses implement :meth:`A` and :meth:`A_adjoint`; :meth:`measure` draws
    ``y = A x + sigma * e`` with ``e ~ N(0, I)``.
    All tensors are ``[B, C, H, W]`` (any real float dtype, any device); the boundary is
    circular.
    See book chapter 1 (``book/01_inverse_problems.md``).

    Attributes
    ----------
    name : str
        ``"denoising"``, ``"inpainting"`` or ``"blur"``.
    """

    name: str = "operator"

    def A(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the forward operator, ``A x``; x of shape [B, C, H, W]."""
        raise NotImplementedError

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Apply the adjoint, ``A^T y``; y of shape [B, C, H, W]."""
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`A`."""
        return self.A(x)

    def measure(self, x: torch.Tensor, sigma, generator: torch.Generator | None = None) -> torch.Tensor:
        r"""Draw a noisy measurement :math:`y = A x + \sigma e`, :math:`e \sim N(0, I)`.

        The noise is added to the whole measurement (inside an inpainting hole too).

        Parameters
        ----------
        x : torch.Tensor
            Images, shape [B, C, H, W], real float dtype.
        sigma : float or sequence or torch.Tensor
            Noise standard deviation: one float for all images, or a 1-D tensor/sequence
            with one positive value per image (broadcast over C, H, W).
        generator : torch.Generator, optional
            Source of the noise (``torch.randn(..., generator=generator)`` on x's device
            and dtype); it must live on x's device.

        Returns
        -------
        torch.Tensor
            y, shape [B, C, H, W], dtype and device of x.

        Raises
        ------
        TypeError
            ``x`` not a real floating-point tensor; ``sigma`` a bool, complex or text value;
            ``generator`` not a torch.Generator.
        ValueError
            ``x`` not [B, C, H, W], empty, on the meta device or not finite; ``sigma`` not
            positive and finite, not one value per image, or 0 in x's dtype; a measurement
            that overflows x's dtype.
        """
        check_images(x, "x")  # a real float tensor [B, C, H, W] with data, not empty, finite
        s = _sigma_per_image(sigma, x.shape[0], x.dtype, x.device)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got "
                            f"{type(generator).__name__} (make one with "
                            f"torch.Generator().manual_seed(seed))")
        if generator is not None and generator.device.type != x.device.type:
            raise ValueError(f"generator is on {generator.device}, but x is on {x.device}")
        y = self.A(x)
        e = torch.randn(y.shape, generator=generator, dtype=y.dtype, device=y.device)
        return check_finite_output(
            y + s * e, "the measurement y", lambda:
            f"x (|x| up to {float(x.abs().max()):.3g}) or sigma (up to {float(s.max()):.3g}) "
            f"overflows {x.dtype}; images should be in [0, 1] (or use float64)")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
