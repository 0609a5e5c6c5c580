r"""``log_density`` of the global estimators (MMSE, chapter 2; E-MMSE, chapter 3) against a
float64 brute force written here, independently of the package and of tests/oracles.py.

The definition is the one of the patch estimators (``lemmse.posterior.gaussian_log_density``,
chapter 5): the log of the Gaussian-smoothed empirical density of the keys at the query,

.. math:: \log p_\sigma(v) = \log \frac1K \sum_k \mathcal N(v; k, \sigma^2 I_D)
          = \log \sum_k e^{-\|v - k\|^2 / 2\sigma^2} - \log K - \tfrac D2 \log(2\pi\sigma^2),

with, for the MMSE, the ``K = N`` measured training images as keys (``D`` = the entries the
distance sees: the observed ones under a physics-aware mask) and, for the E-MMSE, their
``K = N·H·W`` circular shifts (``D = C·H·W``).  One value per image, repeated over the pixels.
"""

from __future__ import annotations

import math

import pytest
import torch

import lemmse
from lemmse.operators import Blur, Inpainting


def brute_log_density(y, keys, sigma, entries=None):
    """``[B]``: the formula above, one key at a time, in float64 (``entries``: bool ``[C, H,
    W]`` of the entries the distance sees, all by default)."""
    y, keys = y.double(), keys.double()
    if entries is None:
        entries = torch.ones(y.shape[1:], dtype=torch.bool)
    D = int(entries.sum())
    out = []
    for b in range(y.shape[0]):
        s = float(sigma[b]) if isinstance(sigma, (list, tuple)) else float(sigma)
        logits = torch.stack([-((y[b] - k)[entries] ** 2).sum() / (2 * s * s) for k in keys])
        out.append(torch.logsumexp(logits, 0) - math.log(len(keys))
                   - 0.5 * D * math.log(2 * math.pi * s * s))
    return torch.stack(out)


def all_shifts(x):
    """Every circular shift of every image of ``x`` ``[N, C, H, W]``: ``[N·H·W, C, H, W]``."""
    H, W = x.shape[-2:]
    return torch.stack([torch.roll(xn, (a, b), (-2, -1)) for xn in x
                        for a in range(H) for b in range(W)])


def data(C=1, H=6, W=5, N=7, B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    train = torch.rand(N, C, H, W, generator=g, dtype=torch.float64)
    y = train[:B] + 0.3 * torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    return train, y


def check_field(got, want, H, W, atol, rtol=0.0):
    assert got.shape == (want.shape[0], H, W)
    assert bool((got == got[:, :1, :1]).all()), "one value per image, repeated over the pixels"
    err = (got[:, 0, 0].double() - want).abs()
    assert bool((err <= atol + rtol * want.abs()).all()), (got[:, 0, 0], want)


@pytest.mark.parametrize("sigma", [0.05, 0.3, 2.0])
@pytest.mark.parametrize("C", [1, 3])
def test_mmse_denoising_float64(sigma, C):
    train, y = data(C=C)
    got = lemmse.MMSE(train).log_density(y, sigma)
    assert got.dtype == torch.float64
    check_field(got, brute_log_density(y, train, sigma), 6, 5, 1e-9, 1e-12)


@pytest.mark.parametrize("sigma", [0.05, 0.3])
def test_mmse_float32_and_per_image_sigma(sigma):
    train, y = data(C=3, seed=1)
    sig = [sigma, 2 * sigma, 0.7]
    got = lemmse.MMSE(train.float()).log_density(y.float(), sig)
    assert got.dtype == torch.float32
    # the query is rounded to float32, σ too: compare with the brute force on those values
    sig32 = [float(torch.tensor(s, dtype=torch.float32)) for s in sig]
    want = brute_log_density(y.float(), train.float(), sig32)
    check_field(got, want, 6, 5, 1e-3, 1e-5)


def test_mmse_physics_aware_masks_and_blur():
    train, y = data(C=2, seed=2)
    g = torch.Generator().manual_seed(3)
    mask = (torch.rand(1, 1, 6, 5, generator=g) > 0.4).double()
    op = Inpainting(mask)
    meas = op.A(y)
    got = lemmse.MMSE(train, op, preinverse="inverse").log_density(meas, 0.2)
    seen = mask.expand(1, 2, 6, 5)[0].bool()
    check_field(got, brute_log_density(meas, op.A(train), 0.2, seen), 6, 5, 1e-9, 1e-12)
    blur = Blur(torch.tensor([[0.0, 0.2, 0.0], [0.2, 0.2, 0.2], [0.0, 0.2, 0.0]]))
    meas = blur.A(y)
    for pre in ("identity", "inverse"):  # both: the distances of the measurements themselves
        got = lemmse.MMSE(train, blur, preinverse=pre).log_density(meas, 0.2)
        check_field(got, brute_log_density(meas, blur.A(train), 0.2), 6, 5, 1e-9, 1e-12)


@pytest.mark.parametrize("sigma", [0.1, 0.4, 3.0])
@pytest.mark.parametrize("C", [1, 2])
def test_equivariant_mmse_float64(sigma, C):
    train, y = data(C=C, N=4, seed=4)
    got = lemmse.EquivariantMMSE(train).log_density(y, sigma)
    check_field(got, brute_log_density(y, all_shifts(train), sigma), 6, 5, 1e-9, 1e-12)


def test_equivariant_mmse_float32_and_shift_invariance():
    train, y = data(C=3, N=4, seed=5)
    est = lemmse.EquivariantMMSE(train.float())
    got = est.log_density(y.float(), 0.25)
    sig32 = float(torch.tensor(0.25, dtype=torch.float32))
    check_field(got, brute_log_density(y.float(), all_shifts(train.float()), sig32), 6, 5,
                1e-3, 1e-5)
    # the bank holds every shift, so a shifted query has the same density
    moved = est.log_density(torch.roll(y.float(), (2, 3), (-2, -1)), 0.25)
    assert (moved - got).abs().max() <= 1e-4


@pytest.mark.parametrize("name", ["MMSE", "EquivariantMMSE"])
def test_matches_posterior(name):
    """One pass (log_density) and two (posterior) give the same log-density."""
    train, y = data(N=5, seed=6)
    est = getattr(lemmse, name)(train)
    got = est.log_density(y, [0.2, 0.5, 0.1])
    post = est.posterior(y, [0.2, 0.5, 0.1]).log_density
    assert (got - post).abs().max() <= 1e-9


@pytest.mark.parametrize("name", ["MMSE", "EquivariantMMSE"])
def test_checks_its_inputs(name):
    train, y = data(N=5)
    est = getattr(lemmse, name)(train)
    with pytest.raises(ValueError, match="sigma"):
        est.log_density(y, -1.0)
    with pytest.raises(ValueError, match="y"):
        est.log_density(y[:, :, :4], 0.1)
