"""Linear forward operators A and pre-inverses B for the inverse problems of the book.

The forward model is

    y = A x + sigma * e,    e ~ N(0, I),

with images ``x`` of shape ``[B, C, H, W]`` (float, pixel values in [0, 1]).
Three operators are provided, all with a periodic (circular) boundary:

- :class:`Denoising`: A = I;
- :class:`Inpainting`: A x = m * x for a 0/1 mask m (1 = observed);
- :class:`Blur`: A x = k * x, a circular convolution computed with the FFT;
- :class:`SuperResolution`: A x = the ``s × s`` block means of x (an LR image ``s`` times
  smaller per axis; the noise lives on the LR grid).

:func:`preinverse` builds the fixed pre-inverse B applied before the estimator,
x_hat = phi(B y): the identity (physics-agnostic) or an approximate inverse of A
(physics-aware: the mask for inpainting, the regularised inverse filter
1 / (k_hat + 1e-7) for blur).

The vocabulary follows DeepInverse (``A``, ``A_adjoint``, measurement with a
``torch.Generator``).
See book chapter 1 (``book/01_inverse_problems.md``) for the setting.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

from lemmse._validate import check_finite_output

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

#: Regularisation added to the blur transfer function in the inverse filter (reference value).
INVERSE_FILTER_EPS = 1e-7

_PREINVERSE_KINDS = ("identity", "inverse")


# ----------------------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------------------


def _check_image(x, name: str = "x") -> torch.Tensor:
    """Check that ``x`` is a floating-point tensor of shape [B, C, H, W]."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [B, C, H, W], got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{name} must have 4 dimensions [B, C, H, W], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a real floating-point dtype, got {x.dtype}")
    return x


def _sigma_per_image(sigma, batch: int, dtype: torch.dtype, device) -> torch.Tensor:
    """Turn ``sigma`` (a float or one value per image) into a [batch, 1, 1, 1] tensor.

    Raises ValueError naming ``sigma`` if a value is not positive and finite, or if the
    number of values is not ``batch``.
    """
    from lemmse._validate import screen_sigma

    if isinstance(sigma, bool):
        raise TypeError(f"sigma must be a float or one value per image, got {sigma!r}")
    sigma = screen_sigma(sigma)  # bool / complex / text values inside sequences and arrays
    if isinstance(sigma, torch.Tensor):
        s = sigma.detach().to(device="cpu", dtype=torch.float64)
    elif isinstance(sigma, (int, float)):
        s = torch.tensor(float(sigma), dtype=torch.float64)
    elif isinstance(sigma, Sequence) or hasattr(sigma, "__array__"):
        try:
            s = torch.as_tensor(sigma, dtype=torch.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(f"sigma must be a float or a 1-D sequence of floats, got {sigma!r}") from err
    else:
        raise TypeError(f"sigma must be a float or one value per image, got {type(sigma).__name__}")
    if s.ndim > 1:
        raise ValueError(f"sigma must be a float or a 1-D tensor/sequence, got shape {tuple(s.shape)}")
    if s.ndim == 1 and s.numel() != batch:
        raise ValueError(f"sigma must have one value per image (length {batch}), got length {s.numel()}")
    if not bool(torch.isfinite(s).all()) or not bool((s > 0).all()):
        raise ValueError(f"sigma must be positive and finite, got {s.tolist()}")
    s = s.expand(batch) if s.ndim == 1 else s.reshape(1).expand(batch)
    return s.to(device=device, dtype=dtype).reshape(batch, 1, 1, 1)


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


# ----------------------------------------------------------------------------------------
# operators
# ----------------------------------------------------------------------------------------


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
        """
        _check_image(x)
        if x.is_complex() or not bool(torch.isfinite(x).all()):
            raise ValueError("x must hold real, finite values: it contains NaN or Inf "
                             f"({int((~torch.isfinite(x)).sum())} of {x.numel()} entries)")
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


class Blur(Operator):
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
        cdtype = _complex_dtype(dtype)
        device = torch.device(device)
        key = (int(H), int(W), cdtype, device)
        if key not in self._cache:
            kh, kw = self.kernel.shape
            if kh > H or kw > W:
                raise ValueError(f"kernel of size {kh}x{kw} is larger than the image {H}x{W}")
            pad = torch.zeros(int(H), int(W), dtype=torch.float64)
            pad[:kh, :kw] = self.kernel
            pad = torch.roll(pad, shifts=(-(kh // 2), -(kw // 2)), dims=(0, 1))
            self._cache[key] = torch.fft.fft2(pad).to(device=device, dtype=cdtype)
        return self._cache[key]

    def _transfer_for(self, x: torch.Tensor, name: str) -> torch.Tensor:
        _check_image(x, name)
        kh, kw = self.kernel.shape
        h, w = x.shape[-2:]
        if kh > h or kw > w:
            raise ValueError(f"kernel of size {kh}x{kw} is larger than the image ({name} is {h}x{w})")
        return self.transfer(h, w, x.dtype, x.device)

    def A(self, x: torch.Tensor) -> torch.Tensor:
        r"""Return :math:`\mathrm{IFFT}(\mathrm{FFT}(x)\,\hat k)`, real, shape of x."""
        return _apply_transfer(x, self._transfer_for(x, "x"))

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        r"""Return :math:`\mathrm{IFFT}(\mathrm{FFT}(y)\,\overline{\hat k})`, real, shape of y."""
        return _apply_transfer(y, self._transfer_for(y, "y").conj())

    def __repr__(self) -> str:
        if self._description is not None:
            return f"Blur.{self._description}"
        kh, kw = self.kernel.shape
        return f"Blur(kernel {kh}x{kw}, sum {float(self.kernel.sum()):.4g})"


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


# ----------------------------------------------------------------------------------------
# pre-inverses
# ----------------------------------------------------------------------------------------


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
        True when B must be applied in float64 (an inverse filter amplifies the round-off of
        an fp32 FFT by up to 1/|k̂|); the same as ``is_filter`` for the pre-inverses here.
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


class InverseFilterPreinverse(Preinverse):
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
        cdtype = _complex_dtype(dtype)
        device = torch.device(device)
        key = (int(H), int(W), cdtype, device)
        if key not in self._cache:
            khat = self.op.transfer(H, W, torch.float64, "cpu")
            self._cache[key] = (1.0 / (khat + self.eps)).to(device=device, dtype=cdtype)
        return self._cache[key]

    def _transfer_for(self, v: torch.Tensor, name: str) -> torch.Tensor:
        _check_image(v, name)
        kh, kw = self.op.kernel.shape
        h, w = v.shape[-2:]
        if kh > h or kw > w:
            raise ValueError(f"kernel of size {kh}x{kw} is larger than the image ({name} is {h}x{w})")
        return self.transfer(h, w, v.dtype, v.device)

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        r"""Return :math:`\mathrm{IFFT}(\mathrm{FFT}(y) / (\hat k + 10^{-7})).\mathrm{real}`, shape of y."""
        return _apply_transfer(y, self._transfer_for(y, "y"))

    A = __call__

    def A_adjoint(self, v: torch.Tensor) -> torch.Tensor:
        r"""Adjoint of B: multiplier :math:`\overline{1 / (\hat k + 10^{-7})}`, real part."""
        return _apply_transfer(v, self._transfer_for(v, "v").conj())

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
