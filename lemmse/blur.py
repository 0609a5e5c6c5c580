"""The blur operator and the circular-filter machinery it shares with its inverse filter.

A stationary filter with a periodic boundary acts on images ``[B, C, H, W]`` as
``IFFT(FFT(x) * t)`` for a transfer function ``t`` of shape ``[H, W]``; its adjoint uses
``conj(t)``. :class:`_CircularFilter` holds what :class:`Blur` (``t`` = the kernel's FFT) and
:class:`lemmse.preinverses.InverseFilterPreinverse` (``t = 1 / (k̂ + 1e-7)``) have in
common: the transfer function computed in complex128, cast and cached per
(H, W, dtype, device), the check that the kernel fits the image, and the application.
:class:`Blur` is also importable from :mod:`lemmse.operators` and :mod:`lemmse`.
See book chapter 1 (``book/01_inverse_problems.md``) for the blur and its inverse filter.
"""

from __future__ import annotations

import math

import torch

from lemmse._operator import Operator, _check_image, _parse_image_shape

__all__ = ["Blur"]


def _real_compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """FFT working precision for images of dtype ``dtype``: float64 stays, others use float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _complex_dtype(dtype: torch.dtype) -> torch.dtype:
    """Complex dtype of the transfer function used for images of (real or complex) ``dtype``."""
    if dtype in (torch.complex64, torch.complex128):
        return dtype
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point or complex dtype, got {dtype}")
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def _apply_transfer(x: torch.Tensor, transfer: torch.Tensor) -> torch.Tensor:
    """IFFT(FFT(x) * transfer).real over the last two dims, in x's dtype."""
    work = x.to(_real_compute_dtype(x.dtype))
    out = torch.fft.ifft2(torch.fft.fft2(work) * transfer).real
    return out.to(x.dtype)


class _CircularFilter:
    """Mixin of a circular filter: cached transfer function, size check, application.

    A subclass sets ``self._cache = {}``, gives :attr:`_kernel_shape` (``(kh, kw)``, the
    support that must fit the image) and :meth:`_transfer_f64` (the transfer function for an
    ``H × W`` image as complex128 on the CPU), and documents its public ``transfer(H, W, dtype,
    device)`` as ``return self._cached_transfer(H, W, dtype, device)``.
    """

    _cache: dict

    @property
    def _kernel_shape(self) -> tuple[int, int]:
        raise NotImplementedError

    def _transfer_f64(self, H: int, W: int) -> torch.Tensor:
        raise NotImplementedError

    def _cached_transfer(self, H: int, W: int, dtype: torch.dtype, device) -> torch.Tensor:
        """:meth:`_transfer_f64` cast to the complex dtype matching ``dtype``, cached."""
        cdtype = _complex_dtype(dtype)
        device = torch.device(device)
        key = (int(H), int(W), cdtype, device)
        if key not in self._cache:
            self._cache[key] = self._transfer_f64(int(H), int(W)).to(device=device, dtype=cdtype)
        return self._cache[key]

    def _transfer_for(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """The transfer function for the images ``x`` (checked; the kernel must fit)."""
        _check_image(x, name)
        kh, kw = self._kernel_shape
        h, w = x.shape[-2:]
        if kh > h or kw > w:
            raise ValueError(f"kernel of size {kh}x{kw} is larger than the image ({name} is {h}x{w})")
        return self.transfer(h, w, x.dtype, x.device)

    def _filter(self, x: torch.Tensor, name: str, adjoint: bool = False) -> torch.Tensor:
        """``IFFT(FFT(x) * t).real`` (``conj(t)`` for the adjoint), in x's dtype."""
        t = self._transfer_for(x, name)
        return _apply_transfer(x, t.conj() if adjoint else t)


class Blur(_CircularFilter, Operator):
    r"""Circular blur :math:`A x = k \circledast x`, computed as :math:`\mathrm{IFFT}(\mathrm{FFT}(x)\,\hat k)`.

    :math:`\hat k` (:meth:`transfer`) is the 2-D FFT of the kernel zero-padded to the image
    size and rolled so that its centre sits at index (0, 0); the adjoint uses
    :math:`\overline{\hat k}`. This is a true convolution (the kernel is flipped),
    :math:`(A x)[i, j] = \sum_{a, b} k[a, b]\, x[i - a + c_h, j - b + c_w]` with indices
    modulo (H, W) and :math:`(c_h, c_w)` the kernel centre; for a symmetric kernel it
    equals the correlation. Results are real.
    Images of dtype float64 are transformed in float64, other float dtypes in float32
    (the result is cast back to the input dtype).
    See book chapter 1 (``book/01_inverse_problems.md``).

    Parameters
    ----------
    kernel : torch.Tensor
        Shape [kh, kw], odd sizes, centred; normally non-negative and summing to 1.
        It must not be larger than the images it is applied to.

    Attributes
    ----------
    kernel : torch.Tensor
        The kernel, float64, on the CPU.
    """

    name = "blur"

    def __init__(self, kernel):
        if not isinstance(kernel, torch.Tensor):
            try:
                kernel = torch.as_tensor(kernel, dtype=torch.float64)
            except (TypeError, ValueError) as err:
                raise TypeError(f"kernel must be a 2-D tensor, got {type(kernel).__name__}") from err
        if kernel.ndim != 2:
            raise ValueError(f"kernel must be 2-D [kh, kw], got shape {tuple(kernel.shape)}")
        kh, kw = kernel.shape
        if kh % 2 == 0 or kw % 2 == 0:
            raise ValueError(f"kernel sizes must be odd (the centre is a pixel), got {kh}x{kw}")
        if kernel.is_complex():
            raise TypeError(f"kernel must be real, got {kernel.dtype}")
        k = kernel.detach().to(device="cpu", dtype=torch.float64).clone()
        if not bool(torch.isfinite(k).all()):
            raise ValueError("kernel must contain only finite values")
        self.kernel = k
        self._cache: dict = {}
        self._description: str | None = None

    @classmethod
    def gaussian(cls, image_shape, std: float) -> Blur:
        r"""Isotropic Gaussian blur, :math:`k[a, b] \propto \exp(-(a^2 + b^2) / (2\,\mathrm{std}^2))`.

        The support is :math:`|a|, |b| \le \lceil 4\,\mathrm{std} \rceil`, clipped so that the
        kernel fits the image (at most H x W, odd sizes); the kernel sums to 1.

        Parameters
        ----------
        image_shape : tuple
            (C, H, W) or (H, W) of the images it will blur.
        std : float
            Standard deviation in pixels, > 0.
        """
        _, h, w = _parse_image_shape(image_shape)
        if isinstance(std, bool) or not isinstance(std, (int, float)):
            raise TypeError(f"std must be a positive float, got {std!r}")
        if not (math.isfinite(std) and std > 0):
            raise ValueError(f"std must be positive and finite, got {std}")
        r = math.ceil(4 * std)
        rh, rw = min(r, (h - 1) // 2), min(r, (w - 1) // 2)
        a = torch.arange(-rh, rh + 1, dtype=torch.float64)
        b = torch.arange(-rw, rw + 1, dtype=torch.float64)
        k = torch.exp(-(a[:, None] ** 2 + b[None, :] ** 2) / (2 * float(std) ** 2))
        op = cls(k / k.sum())
        op._description = f"gaussian(image_shape=({h}, {w}), std={std}) [kernel {2 * rh + 1}x{2 * rw + 1}]"
        return op

    @classmethod
    def disk(cls, image_shape, radius: float) -> Blur:
        r"""Defocus (disk) blur: :math:`k[a, b] \propto 1\{a^2 + b^2 \le \mathrm{radius}^2\}`, summing to 1.

        The kernel is :math:`(2 \lfloor \mathrm{radius} \rfloor + 1)` pixels wide and must
        fit the image.

        Parameters
        ----------
        image_shape : tuple
            (C, H, W) or (H, W) of the images it will blur.
        radius : float
            Radius in pixels, > 0.
        """
        _, h, w = _parse_image_shape(image_shape)
        if isinstance(radius, bool) or not isinstance(radius, (int, float)):
            raise TypeError(f"radius must be a positive float, got {radius!r}")
        if not (math.isfinite(radius) and radius > 0):
            raise ValueError(f"radius must be positive and finite, got {radius}")
        r = math.floor(radius)
        if 2 * r + 1 > min(h, w):
            raise ValueError(f"radius {radius} gives a {2 * r + 1}x{2 * r + 1} disk that does not fit a {h}x{w} image")
        a = torch.arange(-r, r + 1, dtype=torch.float64)
        k = ((a[:, None] ** 2 + a[None, :] ** 2) <= float(radius) ** 2).to(torch.float64)
        op = cls(k / k.sum())
        op._description = f"disk(image_shape=({h}, {w}), radius={radius}) [kernel {2 * r + 1}x{2 * r + 1}]"
        return op

    def transfer(self, H: int, W: int, dtype: torch.dtype = torch.float32, device="cpu") -> torch.Tensor:
        r"""Transfer function :math:`\hat k`: FFT of the centred, zero-padded kernel.

        Parameters
        ----------
        H, W : int
            Image size; the kernel must fit (kh <= H, kw <= W).
        dtype : torch.dtype
            Real dtype of the images (float64 -> complex128, other floats -> complex64)
            or the complex dtype wanted.
        device : torch.device or str

        Returns
        -------
        torch.Tensor
            Complex tensor [H, W]; cached per (H, W, dtype, device).
            Computed in float64 and then cast.
        """
        return self._cached_transfer(H, W, dtype, device)

    @property
    def _kernel_shape(self) -> tuple[int, int]:
        return tuple(self.kernel.shape)

    def _transfer_f64(self, H: int, W: int) -> torch.Tensor:
        kh, kw = self.kernel.shape
        if kh > H or kw > W:
            raise ValueError(f"kernel of size {kh}x{kw} is larger than the image {H}x{W}")
        pad = torch.zeros(H, W, dtype=torch.float64)
        pad[:kh, :kw] = self.kernel
        pad = torch.roll(pad, shifts=(-(kh // 2), -(kw // 2)), dims=(0, 1))
        return torch.fft.fft2(pad)

    def A(self, x: torch.Tensor) -> torch.Tensor:
        r"""Return :math:`\mathrm{IFFT}(\mathrm{FFT}(x)\,\hat k)`, real, shape of x."""
        return self._filter(x, "x")

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        r"""Return :math:`\mathrm{IFFT}(\mathrm{FFT}(y)\,\overline{\hat k})`, real, shape of y."""
        return self._filter(y, "y", adjoint=True)

    def __repr__(self) -> str:
        if self._description is not None:
            return f"Blur.{self._description}"
        kh, kw = self.kernel.shape
        return f"Blur(kernel {kh}x{kw}, sum {float(self.kernel.sum()):.4g})"
