"""Image-quality metrics: ``psnr`` and the spectral similarity ``fsds``.

:func:`psnr` is the peak signal-to-noise ratio per image, first used in book chapter 1
(``book/01_inverse_problems.md``); :func:`fsds`, the phase-sensitive spectral similarity of
Deng et al. (ICML 2024), is used in the chapter on super-resolution
(``book/15_superresolution.md``).
"""

from __future__ import annotations

import math

import torch

from lemmse._validate import check_float, check_images


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, in dB.

    ``PSNR = 10 log10(data_range² / mean((x - y)²))`` over ``C, H, W``.

    Parameters
    ----------
    x, y : Tensor ``[B, C, H, W]``
        Same shape.
    data_range : float
        Peak value (1 for images in [0, 1]).

    Returns
    -------
    Tensor ``[B]`` (``inf`` where the images are equal)

    Raises
    ------
    TypeError
        ``x`` or ``y`` not a real floating-point tensor; ``data_range`` not a number.
    ValueError
        Shapes that differ or are not ``[B, C, H, W]``; an empty, meta or non-finite input;
        inputs on two devices; ``data_range`` not positive and finite.
    """
    check_images(x, "x")
    check_images(y, "y", device=x.device, device_name="x")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape [B, C, H, W], got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")
    data_range = check_float("data_range", data_range)
    if not data_range > 0:
        raise ValueError(f"data_range must be positive (the peak value, 1 for images in [0, 1]), "
                         f"got {data_range}")
    mse = ((x.double() - y.double()) ** 2).mean(dim=(1, 2, 3))
    return 10 * torch.log10(data_range ** 2 / mse)


def _fsds_parts(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(D⁺, D⁻)`` of standardised float64 images ``[B, C, H, W]`` (steps 2–5 of fsds)."""
    if x.shape[-2] % 2:
        x = torch.cat([x, x.new_zeros(*x.shape[:-2], 1, x.shape[-1])], dim=-2)
    F = torch.fft.rfft2(x, norm="backward")
    half = F.shape[-2] // 2
    f_plus = F[..., :half, :]
    f_minus = F[..., half:, :].flip(-2)          # F⁻[k] = F[H - 1 - k]
    return (f_plus.cumsum(-2).cumsum(-1), f_minus.cumsum(-2).cumsum(-1))


def fsds(pred: torch.Tensor, target: torch.Tensor):
    r"""Frequency Spectrum Distribution Similarity (FSDS) of ``pred`` to ``target``, in dB.

    The phase-sensitive spectral similarity of Deng et al. (ICML 2024), computed exactly as the
    authors' code does (reference A.3), in float64:

    1. standardise each image globally, :math:`X \leftarrow (X - \bar X) / s_X`, mean and
       unbiased standard deviation over all ``C·H·W`` values;
    2. if ``H`` is odd, append one row of zeros at the bottom (after standardising);
    3. :math:`F = \mathrm{rfft2}(X)` over ``(H, W)``, unnormalised (``norm="backward"``),
       shape ``[C, H, W//2 + 1]``;
    4. split the rows: :math:`F^+ = F[0 : H/2]`, :math:`F^-[k] = F[H - 1 - k]` for
       ``k = 0 … H/2 - 1`` (the lower half, flipped);
    5. :math:`D^\pm` = 2-D cumulative sums of the complex :math:`F^\pm` (rows, then columns);
    6. :math:`\mathrm{FSDS}(P, T) = -10 \log_{10}
       \dfrac{\sum |D^+_P - D^+_T|^2 + |D^-_P - D^-_T|^2}{\sum |D^+_T|^2 + |D^-_T|^2}`,
       sums over channels, rows and columns.

    Higher is better. The cumulative sums weight the low frequencies most, and the complex
    differences make the score phase-sensitive: a one-pixel shift scores far below mild noise.

    Conventions (the authors' scripts disagree on the first, and leave the second undefined):

    - the **target** is in the denominator, so ``fsds(pred, target) != fsds(target, pred)``;
    - identical inputs (after standardisation, bit for bit) give ``+inf``, without a warning;
    - the score is invariant to ``a·X + b`` with ``a > 0`` for either argument (up to
      rounding), because of step 1; ``a < 0`` flips the standardised image and changes it.

    Parameters
    ----------
    pred, target : Tensor ``[C, H, W]`` or ``[B, C, H, W]``
        Real floating-point images of the same shape (any range: step 1 removes it), finite,
        with at least two values and not constant (a constant image has no standard deviation:
        a ValueError).

    Returns
    -------
    float
        For a single image ``[C, H, W]``.
    Tensor ``[B]`` (float64)
        For a batch: one score per image, the same numbers as a loop over the images.

    Raises
    ------
    TypeError
        If an input is not a real floating-point tensor.
    ValueError
        If the shapes differ or are not ``[C, H, W]`` / ``[B, C, H, W]``, if an input is empty,
        on the meta device or on another device than ``pred``, if a value is not finite, or if
        an image is constant.
    """
    for name, x in (("pred", pred), ("target", target)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor [C, H, W] or [B, C, H, W], "
                            f"got {type(x).__name__}")
        if not x.dtype.is_floating_point:
            raise TypeError(f"{name} must be a real floating-point tensor, got dtype {x.dtype}; "
                            f"convert it with .double() (FSDS computes in float64 anyway)")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} "
                         f"and {tuple(target.shape)}")
    if pred.ndim not in (3, 4):
        raise ValueError(f"pred and target must be [C, H, W] or [B, C, H, W], got "
                         f"{pred.ndim} dimensions {tuple(pred.shape)}")
    for name, x in (("pred", pred), ("target", target)):  # devices and sizes before values
        check_images(x, name, ndims=(3, 4), device=pred.device, device_name="pred", finite=False)
    single = pred.ndim == 3
    P = pred.detach().to(torch.float64)
    T = target.detach().to(torch.float64)
    if single:
        P, T = P[None], T[None]
    if P[0].numel() < 2:
        raise ValueError(f"pred and target: each image needs at least two values to be "
                         f"standardised, got shape {tuple(pred.shape)}")
    standardised = []
    for name, x in (("pred", P), ("target", T)):
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} holds NaN or Inf values; FSDS needs finite images")
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True, unbiased=True)
        flat = (std.flatten() == 0).nonzero().flatten().tolist()
        if flat:
            where = "the image" if single else f"image(s) {flat} of the batch"
            raise ValueError(f"{name}: {where} is constant (standard deviation 0); FSDS "
                             f"standardises each image and is undefined for a constant one")
        standardised.append((x - mean) / std)
    (dp_plus, dp_minus), (dt_plus, dt_minus) = map(_fsds_parts, standardised)
    err = ((dp_plus - dt_plus).abs() ** 2).sum(dim=(1, 2, 3)) \
        + ((dp_minus - dt_minus).abs() ** 2).sum(dim=(1, 2, 3))
    ref = (dt_plus.abs() ** 2).sum(dim=(1, 2, 3)) + (dt_minus.abs() ** 2).sum(dim=(1, 2, 3))
    ratio = err / ref
    tiny = torch.finfo(ratio.dtype).tiny          # no log10(0): identical inputs give +inf
    score = torch.where(ratio > 0, -10 * torch.log10(ratio.clamp_min(tiny)),
                        torch.full_like(ratio, math.inf))
    return float(score[0]) if single else score
