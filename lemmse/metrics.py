"""Image-quality metrics."""

from __future__ import annotations

import torch


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
    """
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError("x and y must be torch.Tensor")
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"x and y must both be [B, C, H, W] of the same shape, got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    if not data_range > 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    mse = ((x.double() - y.double()) ** 2).mean(dim=(1, 2, 3))
    return 10 * torch.log10(data_range ** 2 / mse)
