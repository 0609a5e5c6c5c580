"""σ-conditioned networks with an exact P×P receptive field.

Three architectures, all with circular padding, no normalisation over the image and a
pointwise (FiLM) σ-conditioning, so that each network ``φ`` is exactly

- **local**: ``φ(v)[i]`` depends only on the P×P window ``Π_i v`` around pixel ``i``;
- **translation-equivariant**: ``φ(T_g v) = T_g φ(v)`` for every circular shift ``g``.

Together these make ``φ(v)[i] = f(Π_i v)`` with one ``f`` shared by all pixels: the same
function class as the LE-MMSE (book chapter on the LE-MMSE; reference setup in section 7
of ``lemmse-math.md``).

All three return ``v + f(v, σ)`` (a pointwise residual, which keeps both properties). The
architectures and their building blocks are in ``lemmse.architectures``, with the
receptive-field arithmetic of each; this module builds them (:func:`make_model`, the width
rules :func:`default_width` and :func:`reference_width`), wraps them (:class:`GroupAveraged`)
and measures them (:func:`count_parameters`, :func:`receptive_field`), and every name of both
is importable from here (book chapter 8 trains and measures them).

**Super-resolution** (``make_model(..., factor=s)``, ``s > 1``; book chapter 15): the input
``v`` is the low-resolution (LR) image ``[B, C, h, w]`` and the output the high-resolution (HR)
one ``[B, C, s h, s w]``. The whole body works on the LR grid exactly as above (same circular
convolutions, same FiLM σ-conditioning); its last layer outputs ``C s²`` channels, which a
pixel-shuffle head (``F.pixel_shuffle``) maps onto the s×s HR block of each LR pixel, and the
pointwise residual adds the nearest-neighbour upsampling ``U v`` (each LR value copied onto its
block): ``x_hat = U v + S(f(v, σ))``. So the HR block of LR pixel ``i`` is a function of the
P×P LR window ``Π_i v`` only (the receptive field is P on the LR grid), the same function at
every ``i``, and a circular shift of ``v`` by 1 LR pixel shifts ``x_hat`` by ``s`` HR pixels.
``factor=1`` (the default) is the network above, unchanged.

:class:`GroupAveraged` (``make_model(..., group="d4")``) wraps any of them by group averaging,
``φ_G(v) = (1/|G|) Σ_g g⁻¹ φ(g v)``, for the grid symmetries of :mod:`lemmse.groups`
(book chapter 14): exactly equivariant to the group as well, and still local with the same
P×P window (each ``g`` maps the window of pixel ``i`` onto the window of ``g(i)``). It takes
only ``factor=1`` networks.
"""

from __future__ import annotations

import copy
from typing import Optional, Union

import torch
import torch.nn as nn

from lemmse._validate import check_choice, check_int
from lemmse.architectures import ResBlock  # noqa: F401 (re-exported: lemmse.nets.ResBlock)
from lemmse.architectures import (_CLASSES, FiLM, PatchMLP, ResNet, SigmaEmbedding, SigmaNet, UNet,
                                  _sigma_vector)

__all__ = [
    "ARCHS",
    "DEFAULT_WIDTHS",
    "SigmaNet",
    "UNet",
    "ResNet",
    "PatchMLP",
    "GroupAveraged",
    "SigmaEmbedding",
    "FiLM",
    "make_model",
    "default_width",
    "reference_width",
    "count_parameters",
    "receptive_field",
]

ARCHS = ("unet", "resnet", "patchmlp")

#: Default widths: small enough to train in minutes on a 2-core CPU (see
#: ``benchmarks/bench_train.py``).
DEFAULT_WIDTHS = {"unet": 32, "resnet": 48, "patchmlp": 96}

#: Reference widths by patch size. ResNet: the reference setup (RF = 3 + 2L); U-Net: chosen
#: here for ≈ 4 M parameters (C = 3).
_REFERENCE = {
    "resnet": {5: 640, 7: 448, 9: 384, 11: 328, 17: 256},
    "unet": {3: 512, 5: 384, 7: 320, 9: 288, 11: 256, 17: 224},
}


# --------------------------------------------------------------------------- validation


def _check_arch(arch) -> str:
    return check_choice("arch", arch, ARCHS)


def _check_patch_size(patch_size) -> int:
    patch_size = check_int("patch_size", patch_size, 3)
    if patch_size % 2 == 0:
        raise ValueError(f"patch_size must be odd, got {patch_size}")
    return patch_size


def default_width(arch: str) -> int:
    """Default (CPU-sized) width of ``arch``: see :data:`DEFAULT_WIDTHS`."""
    return DEFAULT_WIDTHS[_check_arch(arch)]


def reference_width(arch: str, patch_size: int) -> int:
    """Width of the reference setup (about 2–10 M parameters, section 7 of the math notes).

    ResNet: (width, L) = (640, 1), (448, 2), (384, 3), (328, 4), (256, 7) for
    P = 5, 7, 9, 11, 17 (reference setup). U-Net: 512, 384, 320, 288, 256, 224 for
    P = 3, 5, 7, 9, 11, 17 (≈ 4–6 M parameters). Other P: the nearest listed one.
    PatchMLP: 1024 hidden units (≈ 2.5–3.5 M parameters).
    """
    arch = _check_arch(arch)
    patch_size = _check_patch_size(patch_size)
    if arch == "patchmlp":
        return 1024
    table = _REFERENCE[arch]
    return table[min(table, key=lambda p: (abs(p - patch_size), p))]


def _resolve_width(arch: str, patch_size: int, width) -> int:
    if width is None or width == "default":
        return default_width(arch)
    if width == "reference":
        return reference_width(arch, patch_size)
    if isinstance(width, str):
        raise ValueError(f"width must be a positive integer, None, 'default' or 'reference', got {width!r}")
    return check_int("width", width, 1)




class GroupAveraged(nn.Module):
    """``φ_G(v, σ) = (1/|G|) Σ_g g⁻¹ φ(g v, σ)``: a network made exactly G-equivariant.

    ``base`` is a :class:`SigmaNet`; ``group`` a name of ``lemmse.groups.GROUPS`` other than
    "translations" (or a ``Group``). The ``|G|`` transformed copies of a batch go through ``base``
    as one batch of ``|G| B`` images, so a step costs about ``|G|`` times the base network's.
    The attributes of :class:`SigmaNet` (``arch``, ``channels``, ``patch_size``, ``width``,
    ``hparams``) are the base network's, with ``group`` added.
    """

    def __init__(self, base: SigmaNet, group):
        super().__init__()
        from lemmse.groups import get_group

        if not isinstance(base, SigmaNet):
            raise TypeError(f"base must be a SigmaNet, got {type(base).__name__}")
        if base.factor != 1:
            raise ValueError(f"group averaging is only implemented for factor=1 networks, got a "
                             f"super-resolution network with factor={base.factor}; use "
                             f"group=None (or 'translations') with factor > 1")
        self.group = get_group(group)
        if len(self.group) == 1:
            raise ValueError("group='translations' needs no averaging: use the base network itself")
        self.base = base

    arch = property(lambda self: self.base.arch)
    channels = property(lambda self: self.base.channels)
    patch_size = property(lambda self: self.base.patch_size)
    width = property(lambda self: self.base.width)
    factor = property(lambda self: self.base.factor)

    @property
    def hparams(self) -> dict:
        return {**self.base.hparams, "group": self.group.name}

    def forward(self, v: torch.Tensor, sigma) -> torch.Tensor:
        if not isinstance(v, torch.Tensor) or v.ndim != 4 or v.shape[1] != self.channels:
            shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise ValueError(f"v must be a tensor [B, {self.channels}, H, W], got {shape}")
        if self.group.needs_square and v.shape[-1] != v.shape[-2]:
            raise ValueError(f"group {self.group.name!r} needs square images, got {v.shape[-2]}x{v.shape[-1]}")
        B, k = v.shape[0], len(self.group)
        s = _sigma_vector(sigma, B, v).repeat(k)
        out = self.base(self.group.orbit(v), s)
        return sum(g.inverse.apply(out[j * B:(j + 1) * B]) for j, g in enumerate(self.group)) / k


def make_model(
    arch: str,
    channels: int,
    patch_size: int,
    width: Union[int, str, None] = None,
    *,
    emb_dim: int = 64,
    depth: Optional[int] = None,
    group: Optional[str] = None,
    factor: int = 1,
) -> nn.Module:
    """Build a σ-conditioned network with receptive field exactly P×P.

    ``x_hat = model(v, sigma) = v + f(v, σ)``, ``x_hat[i]`` a function of the P×P circular
    window ``Π_i v`` only, the same function at every pixel. With ``factor = s > 1``
    (super-resolution, book chapter 15): ``x_hat = U v + pixel_shuffle(f(v, σ), s)``, the s×s
    HR block of LR pixel ``i`` a function of the P×P LR window ``Π_i v`` only.

    Parameters
    ----------
    arch : {"unet", "resnet", "patchmlp"}
    channels : int
        C, the number of image channels (1 or 3).
    patch_size : int
        P, odd, >= 3: the receptive field.
    width : int, "default", "reference" or None
        Number of features (hidden units for PatchMLP). None/"default": :data:`DEFAULT_WIDTHS`
        (CPU-sized); "reference": :func:`reference_width` (≈ 2–10 M parameters).
    emb_dim : int
        Size of the σ embedding.
    depth : int, optional
        PatchMLP only: number of hidden layers (default 3).
    group : str, optional
        None or "translations": the network itself; another name of ``lemmse.groups.GROUPS``
        ("d4", "c4", "c2", "flips"): the network wrapped in :class:`GroupAveraged`
        (``factor=1`` only).
    factor : int
        s >= 1, the super-resolution scale: 1 (default) maps [B, C, H, W] to [B, C, H, W];
        s > 1 maps the LR image [B, C, h, w] to the HR one [B, C, s h, s w] (pixel-shuffle head
        and nearest-neighbour residual; ``lemmse.operators.SuperResolution(s)``).

    Returns
    -------
    SigmaNet or GroupAveraged
        ``model(v, sigma)``: v [B, C, H, W], σ a float or [B] -> [B, C, s H, s W].

    Raises
    ------
    TypeError
        ``factor`` (or another integer argument) not an integer (a bool or 1.5).
    ValueError
        ``factor < 1``; ``factor > 1`` with a ``group``; bad ``arch``, ``patch_size``, ...
    """
    factor = check_int("factor", factor, 1)
    if group is not None and group != "translations":
        if factor != 1:
            raise ValueError(f"group={group!r} needs factor=1 (group averaging of "
                             f"super-resolution networks is not implemented), got factor={factor}")
        return GroupAveraged(make_model(arch, channels, patch_size, width, emb_dim=emb_dim, depth=depth), group)
    arch = _check_arch(arch)
    channels = check_int("channels", channels, 1)
    patch_size = _check_patch_size(patch_size)
    width = _resolve_width(arch, patch_size, width)
    emb_dim = check_int("emb_dim", emb_dim, 1)
    if arch == "patchmlp":
        depth = 3 if depth is None else check_int("depth", depth, 1)
        return PatchMLP(channels, patch_size, width, emb_dim, depth=depth, factor=factor)
    if depth is not None:
        raise ValueError(f"depth is only used by arch='patchmlp', got depth={depth!r} for arch={arch!r}")
    return _CLASSES[arch](channels, patch_size, width, emb_dim, factor=factor)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (only those with ``requires_grad`` if ``trainable_only``).

    Models from :func:`lemmse.train.load_checkpoint` are frozen, so the default counts all.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def receptive_field(
    model: nn.Module,
    image_shape,
    *,
    sigma: float = 0.5,
    seed: int = 0,
    return_mask: bool = False,
):
    """Measured receptive field: support of ``∂ x_hat[:, i] / ∂ v`` for the centre pixel i.

    Computed in float64 on a copy of the model (its current, e.g. random, weights) at a random
    input; the gradient of the sum over channels of the centre output pixel
    ``i = (H // 2, W // 2)`` w.r.t. the input is taken, and its support (nonzero in any channel)
    is measured. For a super-resolution network (``model.factor = s > 1``) the input is the LR
    image and the output taken is the whole s×s HR block of the centre LR pixel ``i``: the
    receptive field is measured on the LR grid, ``(P, P)`` as well.

    Parameters
    ----------
    model : SigmaNet
    image_shape : tuple
        Shape of the network's input, (C, H, W) or (H, W) (then C = ``model.channels``); the LR
        grid for ``factor > 1``. Take H, W > P to see the full window.
    sigma : float
        Noise level given to the network.
    seed : int
        Seed of the random input.
    return_mask : bool
        Also return the support mask [H, W] (bool, centred at (H // 2, W // 2)).

    Returns
    -------
    (h, w) : tuple of int
        Size of the bounding box of the support; ``(P, P)`` for an exactly local network.
    mask : torch.Tensor, optional
    """
    shape = tuple(int(s) for s in image_shape)
    if len(shape) == 2:
        shape = (getattr(model, "channels", 1),) + shape
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"image_shape must be (C, H, W) or (H, W), got {image_shape!r}")
    C, H, W = shape
    probe = copy.deepcopy(model).to(device="cpu", dtype=torch.float64).eval()
    gen = torch.Generator().manual_seed(seed)
    v = torch.rand((1, C, H, W), generator=gen, dtype=torch.float64).requires_grad_(True)
    out = probe(v, sigma)
    s = int(getattr(model, "factor", 1))
    i, j = s * (H // 2), s * (W // 2)
    out[0, :, i:i + s, j:j + s].sum().backward()
    mask = (v.grad[0] != 0).any(dim=0)
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    cols = torch.nonzero(mask.any(dim=0)).flatten()
    size = (0, 0) if rows.numel() == 0 else (int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1))
    return (size, mask) if return_mask else size
