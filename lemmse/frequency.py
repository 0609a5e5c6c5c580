r"""Yardsticks of an upsampler in frequency: reference interpolators and spectra.

The references against which :mod:`lemmse.hyra` reads a probed response ``h``: the ideal ``×s``
interpolator's impulse response (:func:`ideal_sinc`, the separable sinc) and bicubic
upsampling (:func:`bicubic`, linear, with a periodic boundary by default).
The spectra (:func:`log_spectrum`, :func:`energy_above`): frequencies are in cycles per (HR)
pixel, per axis in ``[-1/2, 1/2)``; the LR Nyquist frequency of a ``×s`` map is ``1 / (2 s)``:
:func:`energy_above` with that cut-off says how much of the energy of ``G`` (or of any image)
lies outside the band that the LR grid can represent.

The argument checks here (factor, LR shape, real numbers, images) are shared with
:mod:`lemmse.hyra`, which re-exports every public name of this module.
See the book chapter on super-resolution (``book/15_superresolution.md``).
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

__all__ = ["ideal_sinc", "bicubic", "log_spectrum", "energy_above"]

# ----------------------------------------------------------------------------------------
# argument checks (shared with lemmse.hyra)
# ----------------------------------------------------------------------------------------


def _check_factor(factor) -> int:
    if isinstance(factor, bool) or not isinstance(factor, numbers.Integral) or factor < 1:
        raise ValueError(f"factor must be a positive integer (the scale s; 1 for a "
                         f"denoiser), got {factor!r}")
    return int(factor)


def _check_lr_shape(lr_shape) -> tuple[int, int]:
    if isinstance(lr_shape, numbers.Integral) and not isinstance(lr_shape, bool):
        lr_shape = (lr_shape, lr_shape)
    if not (isinstance(lr_shape, (tuple, list)) and len(lr_shape) == 2
            and all(isinstance(n, numbers.Integral) and not isinstance(n, bool)
                    for n in lr_shape)):
        raise ValueError(f"lr_shape must be an odd positive int or a pair (n1, n2) of them, "
                         f"got {lr_shape!r}")
    n1, n2 = (int(n) for n in lr_shape)
    if n1 < 1 or n2 < 1 or n1 % 2 == 0 or n2 % 2 == 0:
        raise ValueError(f"lr_shape must be odd positive sizes (the impulse sits at the centre "
                         f"pixel), got {(n1, n2)}; use e.g. {(n1 | 1, n2 | 1)}")
    return n1, n2


def _check_real(value, name: str, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    if positive and not value > 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return float(value)


def _check_lr_image(x, name: str = "x_lr") -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [B, C, h, w], got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a real floating-point tensor, got dtype {x.dtype}")
    if x.ndim != 4:
        raise ValueError(f"{name} must be [B, C, h, w], got shape {tuple(x.shape)}")
    return x


def _check_images(x, name: str = "x") -> tuple[torch.Tensor, bool]:
    """``x`` as float64 ``[B, C, H, W]`` and whether it was a single ``[C, H, W]`` image."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [C, H, W] or [B, C, H, W], "
                        f"got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a real floating-point tensor, got dtype {x.dtype}")
    if x.ndim not in (3, 4):
        raise ValueError(f"{name} must be [C, H, W] or [B, C, H, W], got shape "
                         f"{tuple(x.shape)}")
    single = x.ndim == 3
    x = x.detach().to(torch.float64)
    return (x[None] if single else x), single


# ----------------------------------------------------------------------------------------
# reference interpolators
# ----------------------------------------------------------------------------------------


def ideal_sinc(factor: int, lr_shape, origin: str = "top-left") -> torch.Tensor:
    r"""The ideal ``×s`` interpolator's impulse response, ``sinc(t₁/s) sinc(t₂/s)``.

    ``sinc(u) = sin(π u) / (π u)``, ``t = a - o`` the HR displacement of pixel ``a`` from the
    sample position ``o``, on the HR grid ``[s n₁, s n₂]`` of :func:`impulse_response`
    (truncated to the array, not periodised). It is 1 at ``o`` and 0 at every other
    displacement that is a multiple of ``s`` along either axis (an interpolator: LR samples
    pass unchanged); its continuous-limit sum is ``s²`` (Poisson:
    :math:`\sum_t \mathrm{sinc}(t/s) = s`), the DC gain of zero insertion followed by an ideal
    low-pass, so ``H`` maps a constant LR image to the same constant.

    Parameters
    ----------
    factor : int
        The scale ``s``.
    lr_shape : int or (int, int)
        Odd LR sizes ``(n₁, n₂)``; the array is ``[s n₁, s n₂]``.
    origin : {"top-left", "block-centre"}
        Where the LR sample sits: ``"top-left"``, ``o = s (n // 2)``, the zero-insertion
        position of :func:`zero_insert` (the reading "zero insertion + ideal low-pass" of
        reference A.1); ``"block-centre"``, ``o = s (n // 2) + (s - 1)/2``, the array centre,
        where the response of a network trained on block means (and of :func:`bicubic`)
        is centred (half-integer for even ``s``: then no pixel is exactly 1).

    Returns
    -------
    Tensor ``[s n₁, s n₂]``, float64
        Usable as ``h`` in :func:`linear_part` (one filter for all channels).
    """
    s = _check_factor(factor)
    n1, n2 = _check_lr_shape(lr_shape)
    if origin not in ("top-left", "block-centre"):
        raise ValueError(f"origin must be 'top-left' or 'block-centre', got {origin!r}")
    shift = 0.0 if origin == "top-left" else (s - 1) / 2

    def axis(n):
        t = torch.arange(s * n, dtype=torch.float64) - (s * (n // 2) + shift)
        return torch.sinc(t / s)

    return axis(n1)[:, None] * axis(n2)[None, :]


def bicubic(x_lr: torch.Tensor, factor: int, circular: bool = True) -> torch.Tensor:
    r"""Bicubic upsampling by ``s``: ``F.interpolate(mode="bicubic", align_corners=False)``.

    The cubic convolution kernel of torch (``a = -0.75``), HR pixel ``n`` read at the LR
    coordinate ``(n + 1/2)/s - 1/2`` (pixel centres aligned: the response to an LR impulse is
    centred on its block centre, the array centre of :func:`impulse_response`). With
    ``circular=True`` (default) the LR image is first wrapped around by 2 pixels per side (the
    kernel's reach) and the result cropped, so that the boundary is periodic like that of
    :func:`linear_part` and the map is exactly LR-shift-equivariant on the torus; with
    ``circular=False`` it is torch's own (edge-clamped) boundary. Linear: ``G = 0``.

    Parameters
    ----------
    x_lr : Tensor ``[B, C, h, w]``
    factor : int
    circular : bool

    Returns
    -------
    Tensor ``[B, C, s h, s w]``, dtype of ``x_lr``.
    """
    x_lr = _check_lr_image(x_lr)
    s = _check_factor(factor)
    if not circular:
        return F.interpolate(x_lr, scale_factor=s, mode="bicubic", align_corners=False)
    p = 2
    _, _, h, w = x_lr.shape
    rows = torch.arange(-p, h + p) % h
    cols = torch.arange(-p, w + p) % w
    wrapped = x_lr[:, :, rows][:, :, :, cols]
    up = F.interpolate(wrapped, scale_factor=s, mode="bicubic", align_corners=False)
    return up[:, :, s * p: s * (p + h), s * p: s * (p + w)]


# ----------------------------------------------------------------------------------------
# spectra
# ----------------------------------------------------------------------------------------


def log_spectrum(x: torch.Tensor, floor: float = 1e-12) -> torch.Tensor:
    r"""Centred log-magnitude spectrum per channel, in dB: ``20 log10(|F| + floor)``.

    ``F = fftshift(fft2(x, norm="ortho"))`` over the last two axes (orthonormal, so that
    ``Σ |F|² = Σ x²``). After the shift, index ``k`` of an axis of length ``n`` holds the
    frequency ``(k - n // 2) / n`` cycles per pixel (DC at ``(H // 2, W // 2)``; the
    ``[-1/2, 1/2)`` range of ``fftshift(fftfreq(n))``). ``floor`` keeps exact zeros finite
    (at ``20 log10(floor)`` dB).

    Parameters
    ----------
    x : Tensor ``[..., H, W]``
        Real images (``[C, H, W]``, ``[B, C, H, W]``, ...).
    floor : float
        Positive.

    Returns
    -------
    Tensor, same shape, float64
    """
    if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point or x.ndim < 2:
        raise ValueError(f"x must be a real floating-point tensor [..., H, W], got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    floor = _check_real(floor, "floor", positive=True)
    spec = torch.fft.fftshift(torch.fft.fft2(x.detach().to(torch.float64), norm="ortho"),
                              dim=(-2, -1))
    return 20 * torch.log10(spec.abs() + floor)


def energy_above(x: torch.Tensor, cutoff: float, radial: bool = False):
    r"""Fraction of the spectral energy of ``x`` above a frequency ``cutoff``.

    .. math::  \frac{\sum_{\nu : \|\nu\| > f_c} |X(\nu)|^2}{\sum_\nu |X(\nu)|^2},

    ``X = fft2(x)`` per channel, sums over channels and frequencies ``ν = (ν₁, ν₂)`` in
    cycles per pixel (``fftfreq``, in ``[-1/2, 1/2)``). ``‖ν‖ = max(|ν₁|, |ν₂|)`` by default,
    so "above" is outside the square band ``[-f_c, f_c]²``: with ``f_c = 1/(2 s)``, the LR
    Nyquist frequency, the band that an LR grid ``s`` times coarser represents;
    ``radial=True`` uses ``√(ν₁² + ν₂²)``. A frequency exactly at ``f_c`` counts as below
    (the band is closed). The DC term counts: a constant image gives 0, a checkerboard 1, and
    zero insertion of any odd-sized LR image gives exactly ``1 - 1/s²`` at ``f_c = 1/(2 s)``.

    Parameters
    ----------
    x : Tensor ``[C, H, W]`` or ``[B, C, H, W]``
        Real images, not all zero.
    cutoff : float
        ``f_c ≥ 0``, cycles per pixel.
    radial : bool
        Radial instead of per-axis (square) band.

    Returns
    -------
    float for ``[C, H, W]``; Tensor ``[B]`` float64 for a batch.
    """
    x, single = _check_images(x)
    fc = _check_real(cutoff, "cutoff")
    if fc < 0:
        raise ValueError(f"cutoff must be >= 0 (cycles per pixel, the LR Nyquist frequency "
                         f"is 1/(2 s)), got {cutoff!r}")
    H, W = x.shape[-2:]
    nu1 = torch.fft.fftfreq(H, dtype=torch.float64).abs()[:, None]
    nu2 = torch.fft.fftfreq(W, dtype=torch.float64).abs()[None, :]
    norm = torch.sqrt(nu1 ** 2 + nu2 ** 2) if radial else torch.maximum(nu1, nu2)
    above = norm > fc + 1e-12
    power = torch.fft.fft2(x).abs() ** 2
    total = power.sum(dim=(1, 2, 3))
    if bool((total == 0).any()):
        raise ValueError("x: an image is all zeros; its fraction of energy above the cutoff "
                         "is undefined")
    frac = (power * above).sum(dim=(1, 2, 3)) / total
    return float(frac[0]) if single else frac
