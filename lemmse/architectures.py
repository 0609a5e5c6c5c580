"""The building blocks and the three architectures of :mod:`lemmse.nets`, with an exact P×P
receptive field (book chapter 8; :func:`lemmse.nets.make_model` builds them).

Receptive-field arithmetic (``r = (P - 1) / 2``): a 3×3 convolution grows the window by 2,
a 1×1 convolution and every pointwise operation (activation, FiLM, sums, concatenation)
by 0. The receptive field of a network is ``1 + 2 m``, with ``m`` the largest number of
3×3 convolutions on any path from input to output.

- ``"resnet"``: a 3×3 lift, ``L = r - 1`` residual blocks with one 3×3 convolution each and a
  1×1 projection: ``m = 1 + L = r`` (RF = 3 + 2L).
- ``"unet"``: full resolution (no down- or up-sampling), ``d = ceil(r / 2)`` levels. Encoder
  level ``k`` holds one 3×3 convolution; decoder level ``k`` holds one 3×3 convolution for
  ``k <= r - d`` and a 1×1 one above. The path through the bottom level crosses
  ``d + (r - d) = r`` 3×3 convolutions; the skip path that leaves the encoder at level
  ``k < d`` crosses ``k + min(k + 1, r - d) <= r``. So ``m = r``.
- ``"patchmlp"``: an MLP on each pixel's C·P·P patch. Its first layer is a P×P convolution
  (exactly a linear map of the circularly-unfolded patch), the other layers are 1×1.

All three return ``v + f(v, σ)`` (a pointwise residual, which keeps both properties); with
``factor = s > 1`` the body's ``C s²`` output channels go through a pixel-shuffle head
(:class:`SigmaNet`). The σ-conditioning is pointwise: :class:`SigmaEmbedding` and :class:`FiLM`.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["SigmaNet", "UNet", "ResNet", "PatchMLP", "SigmaEmbedding", "FiLM", "ResBlock"]


def _sigma_vector(sigma, batch: int, like: torch.Tensor) -> torch.Tensor:
    """σ as a [B] tensor on ``like``'s device and dtype (float, 0-d, [B] or [B,1,1,1])."""
    if isinstance(sigma, torch.Tensor):
        s = sigma.to(device=like.device, dtype=like.dtype)
        if s.ndim == 0 or s.numel() == 1:
            return s.reshape(1).expand(batch)
        s = s.reshape(-1) if s.ndim == 4 and s.shape[1:] == (1, 1, 1) else s
        if s.ndim != 1 or s.shape[0] != batch:
            raise ValueError(
                f"sigma must be a float or hold one value per image ({batch}), got shape {tuple(sigma.shape)}"
            )
        return s
    try:
        s = torch.as_tensor(sigma, dtype=like.dtype, device=like.device)
    except (TypeError, ValueError):
        raise TypeError(f"sigma must be a float or a tensor, got {type(sigma).__name__}") from None
    return _sigma_vector(s, batch, like)


# --------------------------------------------------------------------------- building blocks


def _conv(cin: int, cout: int, k: int) -> nn.Conv2d:
    """k×k convolution with circular padding ``k // 2`` (same size output)."""
    return nn.Conv2d(cin, cout, k, padding=k // 2, padding_mode="circular")


class SigmaEmbedding(nn.Module):
    """Embedding of the noise level: Fourier features of σ and log σ, then a small MLP.

    ``e(σ) = MLP([σ, log(σ + 1e-3), sin(π 2^k σ), cos(π 2^k σ)]_{k < n_freq})``, shape [B, dim].
    """

    def __init__(self, dim: int = 64, n_freq: int = 6):
        super().__init__()
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(n_freq, dtype=torch.float32))
        self.mlp = nn.Sequential(nn.Linear(2 + 2 * n_freq, dim), nn.SiLU(), nn.Linear(dim, dim), nn.SiLU())

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        s = sigma[:, None]
        arg = s * self.freqs.to(s.dtype)
        feats = torch.cat([s, torch.log(s.clamp_min(0) + 1e-3), torch.sin(arg), torch.cos(arg)], dim=1)
        return self.mlp(feats)


class FiLM(nn.Module):
    """Per-channel scale and shift from the σ embedding: ``h (1 + γ(e)) + β(e)`` (pointwise)."""

    def __init__(self, emb_dim: int, channels: int):
        super().__init__()
        self.lin = nn.Linear(emb_dim, 2 * channels)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.lin(emb).chunk(2, dim=1)
        return torch.addcmul(beta[:, :, None, None], h, 1 + gamma[:, :, None, None])


class ResBlock(nn.Module):
    """Pre-activation residual block with one k×k convolution (k = 1 or 3).

    ``h + W_1 SiLU(FiLM(W_k SiLU(h), e))``: grows the receptive field by ``k - 1``.
    """

    def __init__(self, width: int, k: int, emb_dim: int):
        super().__init__()
        self.conv = _conv(width, width, k)
        self.film = FiLM(emb_dim, width)
        self.out = _conv(width, width, 1)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return h + self.out(F.silu(self.film(self.conv(F.silu(h)), emb)))


class SigmaNet(nn.Module):
    """Base class: ``model(v, sigma) -> x_hat``, v [B, C, H, W], σ a float or one value per image.

    With ``factor = s > 1`` (super-resolution) v is the LR image [B, C, h, w] and
    ``x_hat = U v + pixel_shuffle(f(v, σ), s)`` is [B, C, s h, s w] (module docstring); the body
    ``residual`` then returns ``C s²`` channels on the LR grid.

    Attributes ``arch``, ``channels``, ``patch_size``, ``width``, ``factor`` and ``hparams``
    (the keyword arguments of :func:`~lemmse.nets.make_model` that rebuild it; ``factor`` only when > 1).
    """

    arch: str = ""

    def __init__(self, channels: int, patch_size: int, width: int, emb_dim: int = 64,
                 factor: int = 1):
        super().__init__()
        self.channels = channels
        self.patch_size = patch_size
        self.width = width
        self.emb_dim = emb_dim
        self.factor = factor
        self.embed = SigmaEmbedding(emb_dim)

    @property
    def out_channels(self) -> int:
        """Channels of the body's output on the input grid: ``C s²``."""
        return self.channels * self.factor**2

    @property
    def hparams(self) -> dict:
        h = {
            "arch": self.arch,
            "channels": self.channels,
            "patch_size": self.patch_size,
            "width": self.width,
            "emb_dim": self.emb_dim,
        }
        if self.factor != 1:  # factor-1 checkpoints were written before the field existed
            h["factor"] = self.factor
        return h

    def forward(self, v: torch.Tensor, sigma) -> torch.Tensor:
        if not isinstance(v, torch.Tensor) or v.ndim != 4 or v.shape[1] != self.channels:
            shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise ValueError(f"v must be a tensor [B, {self.channels}, H, W], got {shape}")
        emb = self.embed(_sigma_vector(sigma, v.shape[0], v))
        if self.factor == 1:
            return v + self.residual(v, emb)
        s = self.factor
        B, C, h, w = v.shape
        up = v[:, :, :, None, :, None].expand(B, C, h, s, w, s).reshape(B, C, h * s, w * s)
        return up + F.pixel_shuffle(self.residual(v, emb), s)

    def residual(self, v: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class ResNet(SigmaNet):
    """3×3 lift, ``L = (P - 3) / 2`` residual blocks with one 3×3 convolution, 1×1 projection.

    Receptive field ``3 + 2L = P``.
    """

    arch = "resnet"

    def __init__(self, channels: int, patch_size: int, width: int, emb_dim: int = 64,
                 factor: int = 1):
        super().__init__(channels, patch_size, width, emb_dim, factor)
        self.n_blocks = (patch_size - 3) // 2
        self.lift = _conv(channels, width, 3)
        self.film = FiLM(emb_dim, width)
        self.blocks = nn.ModuleList([ResBlock(width, 3, emb_dim) for _ in range(self.n_blocks)])
        self.proj = _conv(width, self.out_channels, 1)

    def residual(self, v, emb):
        h = self.film(self.lift(v), emb)
        for block in self.blocks:
            h = block(h, emb)
        return self.proj(F.silu(h))


class UNet(SigmaNet):
    """U-Net at full resolution (no down- or up-sampling) with skip connections.

    ``d = ceil(r / 2)`` levels, ``r = (P - 1) / 2``. Encoder: ``e_0 = W_1 v``,
    ``e_k = ResBlock_3(e_{k-1})``. Bottom: ``u_{d+1} = ResBlock_1(e_d)``. Decoder:
    ``u_k = ResBlock_{k_k}(W_1 [u_{k+1}, e_{k-1}])`` with a 3×3 convolution for ``k <= r - d`` and
    a 1×1 one above. Output ``W_1 SiLU(u_1)``. Receptive field P (module docstring).
    """

    arch = "unet"

    def __init__(self, channels: int, patch_size: int, width: int, emb_dim: int = 64,
                 factor: int = 1):
        super().__init__(channels, patch_size, width, emb_dim, factor)
        r = (patch_size - 1) // 2
        self.levels = d = (r + 1) // 2
        self.decoder_kernels = [3 if k <= r - d else 1 for k in range(1, d + 1)]
        self.lift = _conv(channels, width, 1)
        self.enc = nn.ModuleList([ResBlock(width, 3, emb_dim) for _ in range(d)])
        self.mid = ResBlock(width, 1, emb_dim)
        self.merge = nn.ModuleList([_conv(2 * width, width, 1) for _ in range(d)])
        self.dec = nn.ModuleList([ResBlock(width, k, emb_dim) for k in self.decoder_kernels])
        self.proj = _conv(width, self.out_channels, 1)

    def residual(self, v, emb):
        skips = [self.lift(v)]  # skips[k] = e_k
        for block in self.enc:
            skips.append(block(skips[-1], emb))
        u = self.mid(skips[-1], emb)
        for k in range(self.levels, 0, -1):  # decoder level k merges the encoder's input e_{k-1}
            u = self.dec[k - 1](self.merge[k - 1](torch.cat([u, skips[k - 1]], dim=1)), emb)
        return self.proj(F.silu(u))


class PatchMLP(SigmaNet):
    """MLP on each pixel's circular P×P patch: ``f(Π_i v) = W_out σ(... σ(FiLM(W_1 vec(Π_i v))))``.

    The first layer ``W_1`` (C·P² -> width) is a P×P convolution with circular padding,
    i.e. exactly a linear map of the unfolded patch (``F.pad(mode="circular")`` + ``F.unfold``);
    the ``depth - 1`` hidden layers and the output layer are 1×1 convolutions. Nothing is
    computed over the whole image, so the network is strictly local.
    """

    arch = "patchmlp"

    def __init__(self, channels: int, patch_size: int, width: int, emb_dim: int = 64,
                 depth: int = 3, factor: int = 1):
        super().__init__(channels, patch_size, width, emb_dim, factor)
        self.depth = depth
        self.first = _conv(channels, width, patch_size)
        self.hidden = nn.ModuleList([_conv(width, width, 1) for _ in range(depth - 1)])
        self.films = nn.ModuleList([FiLM(emb_dim, width) for _ in range(depth)])
        self.proj = _conv(width, self.out_channels, 1)

    @property
    def hparams(self) -> dict:
        return {**super().hparams, "depth": self.depth}

    def patches(self, v: torch.Tensor) -> torch.Tensor:
        """Circular P×P patches of every pixel, ``[B, C·P·P, H, W]`` (channel-major, like ``F.unfold``)."""
        r = self.patch_size // 2
        B, C, H, W = v.shape
        cols = F.unfold(F.pad(v, (r, r, r, r), mode="circular"), self.patch_size)
        return cols.reshape(B, C * self.patch_size**2, H, W)

    def residual(self, v, emb):
        h = F.silu(self.films[0](self.first(v), emb))
        for layer, film in zip(self.hidden, self.films[1:]):
            h = F.silu(film(layer(h), emb))
        return self.proj(h)


_CLASSES = {"unet": UNet, "resnet": ResNet, "patchmlp": PatchMLP}
