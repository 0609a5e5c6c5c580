"""The super-resolution LE-MMSE and the exact Jacobian (book chapter 15, equation eq-sr-lemmse).

The oracle below is written from the formula alone, in float64 with explicit loops: the LR
image of a training image is the mean of each s×s block, the key of LR position j is the P×P
circular window of that LR image around j, its value the HR block of j, and the estimate of
block i is the softmax average of the values with logits -‖Π_i y - key‖² / 2σ².
"""

from __future__ import annotations

import math

import pytest
import torch

import lemmse
from lemmse.superres import (SuperResolutionLEMMSE, bank_moments, jacobian,
                             jacobian_response)

F64 = torch.float64


def block_means(x, s):
    N, C, H, W = x.shape
    out = torch.zeros(N, C, H // s, W // s, dtype=F64)
    for a in range(H // s):
        for b in range(W // s):
            out[:, :, a, b] = x[:, :, s * a:s * a + s, s * b:s * b + s].double().mean((2, 3))
    return out


def window(v, i1, i2, P):
    """The P×P circular window of v [C, h, w] centred at (i1, i2), flattened."""
    C, h, w = v.shape
    r = P // 2
    rows = [(i1 + d) % h for d in range(-r, r + 1)]
    cols = [(i2 + d) % w for d in range(-r, r + 1)]
    return v[:, rows][:, :, cols].reshape(-1)


def oracle(train, y, sigma, P, s):
    train, y = train.double(), y.double()
    N, C, H, W = train.shape
    h, w = H // s, W // s
    lr = block_means(train, s)
    keys, vals = [], []
    for n in range(N):
        for j1 in range(h):
            for j2 in range(w):
                keys.append(window(lr[n], j1, j2, P))
                vals.append(train[n, :, s * j1:s * j1 + s, s * j2:s * j2 + s])
    keys, vals = torch.stack(keys), torch.stack(vals)
    out = torch.zeros(y.shape[0], C, H, W, dtype=F64)
    for b in range(y.shape[0]):
        for i1 in range(h):
            for i2 in range(w):
                q = window(y[b], i1, i2, P)
                logit = -((keys - q) ** 2).sum(1) / (2 * sigma ** 2)
                wgt = torch.softmax(logit, 0)
                out[b, :, s * i1:s * i1 + s, s * i2:s * i2 + s] = \
                    (wgt[:, None, None, None] * vals).sum(0)
    return out


def data(N, C, H, W, seed):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(N, C, H // 2, W // 2, generator=g)
    x = torch.nn.functional.interpolate(base, size=(H, W), mode="bilinear",
                                        align_corners=False)
    return (x + 0.1 * torch.rand(N, C, H, W, generator=g)).clamp(0, 1)


@pytest.mark.parametrize("sigma", [0.01, 0.1, 1.0])
@pytest.mark.parametrize("C,s,P,algorithm", [(1, 2, 3, "auto"), (3, 2, 3, "auto"),
                                             (1, 2, 3, "sliding"), (3, 2, 3, "attention"),
                                             (1, 3, 3, "auto"), (2, 2, 5, "auto")])
def test_matches_oracle_fp32(sigma, C, s, P, algorithm):
    H = W = 6 * s if P == 5 else 4 * s
    train = data(5, C, H, W, seed=1)
    op = lemmse.SuperResolution(s)
    x = data(2, C, H, W, seed=2)
    y = op.measure(x, 0.1, torch.Generator().manual_seed(3))
    est = lemmse.LEMMSE(train, op, patch_size=P, algorithm=algorithm)
    assert isinstance(est, SuperResolutionLEMMSE)
    out = est(y, sigma)
    assert out.shape == x.shape and out.dtype == torch.float32
    ref = oracle(train, y, sigma, P, s)
    # D = 50 at σ = 0.01: logits of several thousand, whose fp32 rounding the denoising
    # LE-MMSE on the same LR images shows too (1.3e-5 on its attention path)
    tol = 5e-5 if (P == 5 and sigma == 0.01) else 1e-5
    assert (out.double() - ref).abs().max() <= tol


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_matches_oracle_float64(backend):
    train = data(4, 2, 8, 8, seed=4).double()
    op = lemmse.SuperResolution(2)
    y = op.measure(data(3, 2, 8, 8, seed=5).double(), 0.05, torch.Generator().manual_seed(0))
    est = lemmse.LEMMSE(train, op, patch_size=3, backend=backend)
    sig = torch.tensor([0.03, 0.2, 0.7], dtype=F64)
    out = est(y, sig)
    ref = torch.cat([oracle(train, y[b:b + 1], float(sig[b]), 3, 2) for b in range(3)])
    assert (out - ref).abs().max() <= 1e-12


def test_paths_agree():
    train = data(6, 3, 8, 8, seed=6)
    op = lemmse.SuperResolution(2)
    y = op.measure(data(2, 3, 8, 8, seed=7), 0.1, torch.Generator().manual_seed(1))
    outs = [lemmse.LEMMSE(train, op, patch_size=3, algorithm=a, backend=b)(y, 0.15)
            for a, b in [("auto", "auto"), ("sliding", "auto"), ("attention", "auto"),
                         ("auto", "torch")]]
    for o in outs[1:]:
        assert (o - outs[0]).abs().max() <= 2e-6


def test_lr_shift_moves_hr_output_by_s():
    s = 2
    train = data(4, 1, 12, 12, seed=8).double()
    op = lemmse.SuperResolution(s)
    est = lemmse.LEMMSE(train, op, patch_size=3)
    y = op.measure(data(1, 1, 12, 12, seed=9).double(), 0.1, torch.Generator().manual_seed(2))
    for a, b in [(1, 0), (0, 2), (3, 5)]:
        lhs = est(torch.roll(y, (a, b), (2, 3)), 0.1)
        rhs = torch.roll(est(y, 0.1), (s * a, s * b), (2, 3))
        assert (lhs - rhs).abs().max() <= 1e-12
    # a shift by a fraction of a block is not an LR shift: the output is not just moved
    assert (est(y, 0.1) - torch.roll(est(y, 0.1), (1, 0), (2, 3))).abs().max() > 1e-3


def test_locality_on_lr_grid():
    s, P = 2, 3
    train = data(5, 1, 14, 14, seed=10).double()
    op = lemmse.SuperResolution(s)
    est = lemmse.LEMMSE(train, op, patch_size=P)
    y = op.measure(data(1, 1, 14, 14, seed=11).double(), 0.1, torch.Generator().manual_seed(3))
    base = est(y, 0.1)
    i1, i2 = 3, 4
    block = (slice(None), slice(None), slice(s * i1, s * i1 + s), slice(s * i2, s * i2 + s))
    for p1, p2 in [(0, 0), (6, 6), (3, 6), (1, 4), (5, 2)]:  # outside the 3×3 LR window
        z = y.clone()
        z[0, 0, p1, p2] += 0.7
        assert torch.equal(est(z, 0.1)[block], base[block])
    z = y.clone()
    z[0, 0, i1 + 1, i2 - 1] += 0.7  # inside
    assert (est(z, 0.1)[block] - base[block]).abs().max() > 1e-4


def test_sigma_limits():
    s = 2
    train = data(4, 1, 8, 8, seed=12).double()
    op = lemmse.SuperResolution(s)
    est = lemmse.LEMMSE(train, op, patch_size=3)
    y = op.measure(data(1, 1, 8, 8, seed=13).double(), 0.1, torch.Generator().manual_seed(4))
    # σ → ∞: every block is the mean block of the training set
    mean_block = train.reshape(4, 1, 4, 2, 4, 2).mean((0, 2, 4))  # [1, 2, 2]
    big = est(y, 1e6)
    assert (big - mean_block.repeat(1, 4, 4)[None]).abs().max() <= 1e-9
    # σ → 0: the block of the nearest LR patch (ties are impossible for random data)
    small = est(y, 1e-4)
    lr = block_means(train, s)
    for i1, i2 in [(0, 0), (2, 3)]:
        q = window(y[0], i1, i2, 3)
        best, arg = math.inf, None
        for n in range(4):
            for j1 in range(4):
                for j2 in range(4):
                    d = float(((window(lr[n], j1, j2, 3) - q) ** 2).sum())
                    if d < best:
                        best, arg = d, (n, j1, j2)
        n, j1, j2 = arg
        want = train[n, :, s * j1:s * j1 + s, s * j2:s * j2 + s]
        got = small[0, :, s * i1:s * i1 + s, s * i2:s * i2 + s]
        assert (got - want).abs().max() <= 1e-9


def test_factor_one_is_the_denoising_lemmse():
    train = data(4, 1, 8, 8, seed=14)
    y = train[:2] + 0.1 * torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    a = lemmse.LEMMSE(train, lemmse.SuperResolution(1), patch_size=3)(y, 0.2)
    b = lemmse.LEMMSE(train, patch_size=3)(y, 0.2)
    assert (a - b).abs().max() <= 1e-6


def test_log_density_and_posterior():
    train = data(4, 1, 8, 8, seed=15)
    op = lemmse.SuperResolution(2)
    est = lemmse.LEMMSE(train, op, patch_size=3)
    y = op.measure(data(2, 1, 8, 8, seed=16), 0.1, torch.Generator().manual_seed(6))
    ld = est.log_density(y, 0.1)
    # the LR patches under the LR training patches: the denoising LE-MMSE's log-density on
    # the LR images
    ref = lemmse.LEMMSE(op.A(train), patch_size=3).log_density(y, 0.1)
    assert ld.shape == (2, 4, 4) and (ld - ref).abs().max() <= 1e-4
    post = est.posterior(y, 0.1, topk=3)
    assert torch.equal(post.x_hat, est(y, 0.1))
    assert post.topk_weights.shape == (2, 4, 4, 3)
    assert bool((post.topk_position < 4).all())


def test_errors():
    train = data(3, 1, 8, 8, seed=17)
    op = lemmse.SuperResolution(2)
    with pytest.raises(ValueError, match="not divisible"):
        lemmse.LEMMSE(data(3, 1, 9, 8, seed=1), op)
    with pytest.raises(ValueError, match="preinverse"):
        lemmse.LEMMSE(train, op, patch_size=3, preinverse="inverse")
    with pytest.raises(ValueError, match="group"):
        lemmse.LEMMSE(train, op, patch_size=3, group="d4")
    with pytest.raises(ValueError, match="patch_size must be at most the LR image size 4"):
        lemmse.LEMMSE(train, op, patch_size=5)
    est = lemmse.LEMMSE(train, op, patch_size=3)
    with pytest.raises(ValueError, match="HR shape"):
        est(train[:1], 0.1)
    with pytest.raises(ValueError, match=r"LR measurement \[B, 1, 4, 4\]"):
        est(torch.rand(1, 1, 5, 4), 0.1)
    with pytest.raises(ValueError, match="sigma"):
        est(op.A(train[:1]), -1.0)
    for bad in (0, -2):
        with pytest.raises(ValueError, match="factor"):
            lemmse.SuperResolution(bad)
    for bad in (1.5, True, "2"):
        with pytest.raises(TypeError, match="factor"):
            lemmse.SuperResolution(bad)
    with pytest.raises(ValueError, match="kind='inverse'"):
        lemmse.preinverse(op, "inverse")


def test_operator_adjoint_and_measure():
    op = lemmse.SuperResolution(3)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 2, 6, 9, generator=g, dtype=F64)
    y = torch.rand(2, 2, 2, 3, generator=g, dtype=F64)
    assert torch.allclose(op.A(x), block_means(x, 3))
    assert abs(float((op.A(x) * y).sum() - (x * op.A_adjoint(y)).sum())) <= 1e-12
    m = op.measure(x, 0.5, torch.Generator().manual_seed(1))
    assert m.shape == (2, 2, 2, 3)
    e = torch.randn(2, 2, 2, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    assert torch.allclose(m, op.A(x) + 0.5 * e)


# ---------------------------------------------------------------------------- Jacobian
def fd_jacobian(est, y, sigma, i1, i2, P, s, eps=1e-6):
    """Central differences of the output block at LR (i1, i2) w.r.t. its window."""
    C, h, w = y.shape[1:]
    r = P // 2
    J = torch.zeros(C * s * s, C, P, P, dtype=F64)
    for c in range(C):
        for a in range(P):
            for b in range(P):
                p1, p2 = (i1 + a - r) % h, (i2 + b - r) % w
                up, dn = y.clone(), y.clone()
                up[0, c, p1, p2] += eps
                dn[0, c, p1, p2] -= eps
                d = (est(up, sigma) - est(dn, sigma)) / (2 * eps)
                blk = d[0, :, s * i1:s * i1 + s, s * i2:s * i2 + s]  # [C, s, s]
                J[:, c, a, b] = blk.reshape(-1)
    return J


@pytest.mark.parametrize("C,s", [(1, 2), (2, 2), (1, 1)])
def test_jacobian_matches_finite_differences(C, s):
    P = 3
    train = data(4, C, 4 * s, 4 * s, seed=20).double()
    op = lemmse.SuperResolution(s) if s > 1 else lemmse.Denoising()
    y = op.measure(data(1, C, 4 * s, 4 * s, seed=21).double(), 0.1,
                   torch.Generator().manual_seed(7))
    est = lemmse.LEMMSE(train, op, patch_size=P)
    largest = 0.0
    for sigma in (0.08, 0.3):
        J = jacobian(est, y, sigma, [(1, 2), (3, 0)])
        assert J.shape == (2, C * s * s, C, P, P)
        for k, (i1, i2) in enumerate([(1, 2), (3, 0)]):
            ref = fd_jacobian(est, y, sigma, i1, i2, P, s)
            assert (J[k] - ref).abs().max() <= 1e-6 * max(1.0, float(ref.abs().max()))
            largest = max(largest, float(ref.abs().max()))
    assert largest > 1e-2  # not a trivially zero derivative


def test_jacobian_large_sigma_limit_is_bank_covariance():
    train = data(4, 1, 8, 8, seed=22).double()
    op = lemmse.SuperResolution(2)
    est = lemmse.LEMMSE(train, op, patch_size=3)
    y = op.measure(data(1, 1, 8, 8, seed=23).double(), 0.1, torch.Generator().manual_seed(8))
    mv, mk, cov = bank_moments(est)
    # oracle of the uniform covariance: all (block, LR patch) pairs of the training set
    lr = block_means(train, 2)
    V, K = [], []
    for n in range(4):
        for j1 in range(4):
            for j2 in range(4):
                V.append(train[n, 0, 2 * j1:2 * j1 + 2, 2 * j2:2 * j2 + 2].reshape(-1))
                K.append(window(lr[n], j1, j2, 3))
    V, K = torch.stack(V), torch.stack(K)
    ref = (V - V.mean(0)).T @ (K - K.mean(0)) / V.shape[0]
    assert (cov.reshape(4, 9) - ref).abs().max() <= 1e-12
    assert (mv - V.mean(0)).abs().max() <= 1e-12
    big = 1e4
    J = jacobian(est, y, big, [(2, 1)])[0]
    assert (J * big ** 2 - cov).abs().max() <= 1e-4 * float(cov.abs().max())


def test_jacobian_response_is_the_probed_impulse_response():
    s, P = 2, 3
    train = data(5, 1, 12, 12, seed=24).double()
    op = lemmse.SuperResolution(s)
    est = lemmse.LEMMSE(train, op, patch_size=P)
    c = torch.full((1, 1, 6, 6), 0.4, dtype=F64)
    J = jacobian(est, c, 0.2, [(3, 3)])[0]
    resp = jacobian_response(J, s)  # [1, 6, 6]: the impulse's block at rows/cols [2, 4)
    eps = 1e-6
    d = c.clone()
    d[0, 0, 3, 3] += eps
    probe = (est(d, 0.2) - est(c, 0.2))[0] / eps  # [1, 12, 12]
    # the impulse's HR block is rows/cols [6, 8); the response map covers LR 2..4
    assert (probe[:, 4:10, 4:10] - resp).abs().max() <= 1e-5
    outside = probe.clone()
    outside[:, 4:10, 4:10] = 0
    assert outside.abs().max() <= 1e-9  # locality: nothing beyond the P×P LR window
    assert resp.abs().max() > 1e-3


def test_jacobian_errors():
    train = data(3, 1, 8, 8, seed=25)
    op = lemmse.SuperResolution(2)
    est = lemmse.LEMMSE(train, op, patch_size=3)
    y = op.A(train[:1])
    with pytest.raises(ValueError, match="pixels"):
        jacobian(est, y, 0.1, [(4, 0)])
    with pytest.raises(ValueError, match="one measurement"):
        jacobian(est, torch.cat([y, y]), 0.1, [(0, 0)])
    with pytest.raises(TypeError, match="est"):
        jacobian(lemmse.MMSE(train), y, 0.1, [(0, 0)])
    blur = lemmse.Blur.gaussian((1, 8, 8), 1.0)
    with pytest.raises(ValueError, match="physics-agnostic"):
        jacobian(lemmse.LEMMSE(train, blur, patch_size=3, preinverse="inverse"),
                 train[:1], 0.1, [(0, 0)])
    with pytest.raises(ValueError, match="value channels"):
        jacobian_response(torch.zeros(3, 1, 3, 3), 2)
