"""Tests of lemmse.operators: forward operators A, their adjoints, measurements and pre-inverses.

Book chapter 1 (``book/01_inverse_problems.md``) states y = A x + sigma e and the pre-inverses
B checked here.
"""

from __future__ import annotations

import math

import pytest
import torch

from lemmse.operators import (
    Blur,
    Denoising,
    Inpainting,
    Operator,
    preinverse,
)

SIZES = [(1, 8, 8), (3, 7, 9), (1, 9, 6), (3, 6, 5)]  # (C, H, W): odd/even H and W, C = 1 and 3


def make_operators(c, h, w):
    """One operator of each kind (and each constructor) for images of shape (c, h, w)."""
    g = torch.Generator().manual_seed(0)
    asym = torch.rand(3, 5, generator=g, dtype=torch.float64)  # asymmetric kernel
    return [
        Denoising(),
        Inpainting.center_box((c, h, w), 3),
        Inpainting.random((c, h, w), 0.3, seed=1),
        Inpainting(torch.rand(c, h, w, generator=g) > 0.5),
        Blur.gaussian((c, h, w), 1.0),
        Blur.disk((h, w), 1.5),
        Blur(asym / asym.sum()),
    ]


def direct_circular_convolution(x, kernel):
    """(k * x)[i, j] = sum_{a,b} k[a, b] x[i - a + ch, j - b + cw], indices mod (H, W), by explicit loops."""
    kh, kw = kernel.shape
    ch, cw = kh // 2, kw // 2
    out = torch.zeros_like(x)
    for a in range(kh):
        for b in range(kw):
            # torch.roll(x, s)[i] = x[i - s]
            out += kernel[a, b] * torch.roll(x, shifts=(a - ch, b - cw), dims=(-2, -1))
    return out


# ----------------------------------------------------------------------------------------
# adjointness and linearity
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SIZES)
def test_adjoint_identity_all_operators(shape):
    c, h, w = shape
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, c, h, w, generator=g, dtype=torch.float64)
    y = torch.randn(2, c, h, w, generator=g, dtype=torch.float64)
    for op in make_operators(c, h, w):
        lhs = (op.A(x) * y).sum()
        rhs = (x * op.A_adjoint(y)).sum()
        assert torch.allclose(lhs, rhs, rtol=1e-12, atol=1e-12), op


@pytest.mark.parametrize("shape", SIZES)
def test_adjoint_identity_preinverses(shape):
    c, h, w = shape
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, c, h, w, generator=g, dtype=torch.float64)
    y = torch.randn(2, c, h, w, generator=g, dtype=torch.float64)
    for op in make_operators(c, h, w):
        for kind in ("identity", "inverse"):
            B = preinverse(op, kind)
            lhs = (B(x) * y).sum()
            rhs = (x * B.A_adjoint(y)).sum()
            assert torch.allclose(lhs, rhs, rtol=1e-9, atol=1e-9), (op, kind)


def test_operators_are_linear_and_keep_shape_dtype_device():
    c, h, w = 3, 7, 8
    g = torch.Generator().manual_seed(3)
    x1 = torch.randn(2, c, h, w, generator=g)
    x2 = torch.randn(2, c, h, w, generator=g)
    for op in make_operators(c, h, w):
        out = op.A(2.0 * x1 - x2)
        assert out.shape == x1.shape and out.dtype == torch.float32 and out.device == x1.device
        assert torch.allclose(out, 2.0 * op.A(x1) - op.A(x2), atol=1e-5), op


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_any_float_dtype(dtype):
    x = torch.rand(1, 1, 6, 6).to(dtype)
    for op in make_operators(1, 6, 6):
        assert op.A(x).dtype == dtype
        assert op.A_adjoint(x).dtype == dtype
        assert op.measure(x, 0.1).dtype == dtype
        assert preinverse(op, "inverse")(x).dtype == dtype


# ----------------------------------------------------------------------------------------
# blur
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 7, 9), (2, 5, 6)])
def test_blur_equals_direct_circular_convolution(shape):
    c, h, w = shape
    g = torch.Generator().manual_seed(4)
    kernel = torch.rand(5, 3, generator=g, dtype=torch.float64)  # asymmetric: tells convolution from correlation
    kernel[0, 0] += 2.0
    x = torch.rand(2, c, h, w, generator=g, dtype=torch.float64)
    op = Blur(kernel)
    expected = direct_circular_convolution(x, kernel)
    assert torch.allclose(op.A(x), expected, atol=1e-12)
    # and the adjoint is the correlation with the same kernel (convolution with the flipped kernel)
    flipped = torch.flip(kernel, dims=(0, 1))
    assert torch.allclose(op.A_adjoint(x), direct_circular_convolution(x, flipped), atol=1e-12)


def test_blur_kernel_as_large_as_the_image():
    g = torch.Generator().manual_seed(5)
    kernel = torch.rand(7, 5, generator=g, dtype=torch.float64)
    x = torch.rand(1, 1, 7, 5, generator=g, dtype=torch.float64)
    assert torch.allclose(Blur(kernel).A(x), direct_circular_convolution(x, kernel), atol=1e-12)


def test_blur_of_constant_is_constant():
    x = torch.full((2, 3, 9, 10), 0.37, dtype=torch.float64)
    for op in [Blur.gaussian((9, 10), 1.0), Blur.gaussian((9, 10), 3.0), Blur.disk((9, 10), 2.5)]:
        assert torch.allclose(op.A(x), x, atol=1e-12), op
        assert torch.allclose(op.A_adjoint(x), x, atol=1e-12), op


def test_blur_of_delta_is_the_centred_kernel():
    op = Blur.gaussian((11, 11), 1.0)
    x = torch.zeros(1, 1, 11, 11, dtype=torch.float64)
    x[..., 5, 5] = 1.0
    y = op.A(x)[0, 0]
    kh, kw = op.kernel.shape
    assert torch.allclose(y[5 - kh // 2 : 5 + kh // 2 + 1, 5 - kw // 2 : 5 + kw // 2 + 1], op.kernel, atol=1e-12)


def test_gaussian_kernel_support_and_values():
    op = Blur.gaussian((32, 32), 1.0)
    assert op.kernel.shape == (9, 9)  # radius ceil(4 * 1.0) = 4
    assert math.isclose(float(op.kernel.sum()), 1.0, rel_tol=1e-12)
    k = op.kernel
    assert math.isclose(float(k[4, 5] / k[4, 4]), math.exp(-0.5), rel_tol=1e-12)
    assert Blur.gaussian((32, 32), 0.3).kernel.shape == (5, 5)  # ceil(1.2) = 2
    # clipped so that it fits the image: odd, at most H x W
    assert Blur.gaussian((3, 8, 7), 5.0).kernel.shape == (7, 7)
    assert Blur.gaussian((6, 6), 5.0).kernel.shape == (5, 5)


def test_disk_kernel():
    k = Blur.disk((28, 28), 2.5).kernel
    assert k.shape == (5, 5)
    assert math.isclose(float(k.sum()), 1.0, rel_tol=1e-12)
    support = k > 0
    # distance <= 2.5: all of the 5x5 square except the 4 corners (distance sqrt(8) > 2.5)
    assert int(support.sum()) == 21
    assert not support[0, 0] and support[0, 1] and support[2, 2]
    assert torch.allclose(k[support], torch.full((21,), 1 / 21, dtype=torch.float64))
    assert int((Blur.disk((9, 9), 1.0).kernel > 0).sum()) == 5


def test_transfer_is_cached_and_typed():
    op = Blur.gaussian((8, 8), 1.0)
    t32 = op.transfer(8, 8, torch.float32, "cpu")
    assert t32.dtype == torch.complex64 and t32.shape == (8, 8)
    assert op.transfer(8, 8, torch.float32, "cpu") is t32
    t64 = op.transfer(8, 8, torch.float64, "cpu")
    assert t64.dtype == torch.complex128
    # a symmetric kernel centred at (0, 0) has a real transfer function, equal to 1 at frequency 0
    assert torch.allclose(t64.imag, torch.zeros(8, 8, dtype=torch.float64), atol=1e-12)
    assert math.isclose(float(t64[0, 0].real), 1.0, rel_tol=1e-12)


# ----------------------------------------------------------------------------------------
# inpainting masks
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "h, w, size, top, left",
    [
        (9, 9, 3, 3, 3),  # odd / odd: exactly centred
        (15, 11, 5, 5, 3),
        (8, 8, 4, 2, 2),  # even / even: exactly centred
        (28, 28, 15, 7, 7),  # odd hole in even image: centre pixel at H // 2 = 14
        (9, 9, 4, 2, 2),  # even hole in odd image: half a pixel up-left
        (5, 5, 5, 0, 0),  # hole covers everything
    ],
)
def test_center_box_geometry(h, w, size, top, left):
    op = Inpainting.center_box((3, h, w), size)
    assert op.mask.shape == (1, 3, h, w) and op.mask.dtype == torch.float32
    expected = torch.ones(h, w)
    expected[top : top + size, left : left + size] = 0
    for c in range(3):
        assert torch.equal(op.mask[0, c], expected)
    assert int((op.mask[0, 0] == 0).sum()) == size * size


def test_center_box_odd_is_symmetric():
    m = Inpainting.center_box((13, 13), 5).mask[0, 0]
    assert torch.equal(m, torch.flip(m, dims=(0, 1)))
    assert m[6, 6] == 0 and m.shape == (13, 13)


@pytest.mark.parametrize("h, w, fraction", [(28, 28, 0.3), (7, 9, 0.5), (32, 32, 0.0), (5, 6, 1.0), (10, 10, 0.125)])
def test_random_mask_count(h, w, fraction):
    op = Inpainting.random((3, h, w), fraction, seed=1234)
    assert op.mask.shape == (1, 3, h, w)
    n_missing = (op.mask[0, 0] == 0).sum().item()
    assert n_missing == round(fraction * h * w)
    for c in range(1, 3):  # the same pattern in every channel
        assert torch.equal(op.mask[0, c], op.mask[0, 0])


def test_random_mask_seed_reproducible():
    a = Inpainting.random((28, 28), 0.3, seed=1234).mask
    b = Inpainting.random((28, 28), 0.3, seed=1234).mask
    c = Inpainting.random((28, 28), 0.3, seed=1235).mask
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # the documented construction
    order = torch.randperm(28 * 28, generator=torch.Generator().manual_seed(1234))
    expected = torch.ones(28 * 28)
    expected[order[: round(0.3 * 28 * 28)]] = 0
    assert torch.equal(a[0, 0].flatten(), expected)


@pytest.mark.parametrize("mask_shape", [(6, 7), (3, 6, 7), (1, 3, 6, 7), (1, 1, 6, 7)])
def test_inpainting_mask_shapes(mask_shape):
    g = torch.Generator().manual_seed(6)
    mask = torch.rand(*mask_shape, generator=g) > 0.4
    op = Inpainting(mask)
    assert op.mask.ndim == 4 and op.mask.dtype == torch.float32
    x = torch.rand(2, 3, 6, 7, generator=g)
    assert torch.equal(op.A(x), mask.float().reshape(op.mask.shape) * x)
    assert torch.equal(Inpainting(mask.float()).mask, op.mask)


# ----------------------------------------------------------------------------------------
# measurements
# ----------------------------------------------------------------------------------------


def test_measure_noise_std():
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(7))
    for op in [Denoising(), Inpainting.center_box((128, 128), 31), Blur.gaussian((128, 128), 1.0)]:
        y = op.measure(x, 0.2, generator=torch.Generator().manual_seed(8))
        noise = y - op.A(x)  # 49152 samples: the std estimate is within ~0.3 % (1 sd)
        assert abs(noise.std().item() - 0.2) < 0.004, op
        assert abs(noise.mean().item()) < 0.004, op


def test_measure_noise_inside_the_hole():
    op = Inpainting.center_box((16, 16), 8)
    y = op.measure(torch.ones(1, 1, 16, 16), 0.5, generator=torch.Generator().manual_seed(0))
    assert (y[0, 0, 4:12, 4:12] != 0).all()


@pytest.mark.parametrize("sigma", [[0.01, 0.3, 1.0], torch.tensor([0.01, 0.3, 1.0]), (0.01, 0.3, 1.0)])
def test_measure_per_image_sigma(sigma):
    x = torch.rand(3, 1, 96, 96, generator=torch.Generator().manual_seed(9))
    y = Denoising().measure(x, sigma, generator=torch.Generator().manual_seed(10))
    stds = (y - x).flatten(1).std(dim=1)
    for got, want in zip(stds.tolist(), [0.01, 0.3, 1.0]):
        assert abs(got / want - 1) < 0.03


def test_measure_generator_reproducible():
    x = torch.rand(2, 3, 8, 8)
    op = Blur.gaussian((8, 8), 1.0)
    y1 = op.measure(x, 0.1, generator=torch.Generator().manual_seed(11))
    y2 = op.measure(x, 0.1, generator=torch.Generator().manual_seed(11))
    y3 = op.measure(x, 0.1, generator=torch.Generator().manual_seed(12))
    assert torch.equal(y1, y2)
    assert not torch.equal(y1, y3)
    # noise drawn with torch.randn(..., generator=generator) on x's dtype
    e = torch.randn(x.shape, generator=torch.Generator().manual_seed(11))
    assert torch.allclose(y1, op.A(x) + 0.1 * e, atol=1e-6)


# ----------------------------------------------------------------------------------------
# pre-inverses
# ----------------------------------------------------------------------------------------


def test_preinverse_identity_for_every_operator():
    x = torch.rand(2, 3, 8, 9)
    for op in make_operators(3, 8, 9):
        B = preinverse(op, "identity")
        assert B.kind == "identity"
        assert torch.equal(B(x), x)


def test_preinverse_mask():
    op = Inpainting.center_box((3, 8, 8), 4)
    B = preinverse(op, "inverse")
    assert B.kind == "inverse"
    assert torch.equal(B.mask, op.mask)
    y = torch.randn(2, 3, 8, 8)
    assert torch.equal(B(y), op.mask * y)


def test_preinverse_denoising_inverse_is_identity():
    B = preinverse(Denoising(), "inverse")
    x = torch.rand(1, 1, 5, 5)
    assert torch.equal(B(x), x)


@pytest.mark.parametrize("make", [lambda: Blur.gaussian((12, 13), 1.0), lambda: Blur.disk((12, 13), 2.5)])
def test_inverse_filter_times_blur_transfer_is_one(make):
    op = make()
    B = preinverse(op, "inverse")
    assert B.kind == "inverse"
    khat = op.transfer(12, 13, torch.float64)
    prod = B.transfer(12, 13, torch.float64) * khat
    ok = khat.abs() > 1e-3
    assert ok.any()
    assert torch.allclose(prod[ok], torch.ones_like(prod[ok]), atol=1e-3)
    # definition: 1 / (khat + 1e-7)
    assert torch.allclose(B.transfer(12, 13, torch.float64), 1 / (khat + 1e-7))
    assert B.transfer(12, 13, torch.float32).dtype == torch.complex64
    # B A x ~ x for a gently blurred image (Gaussian: all |khat| well above 1e-7)
    if "gaussian" in repr(op):
        x = torch.rand(2, 3, 12, 13, dtype=torch.float64, generator=torch.Generator().manual_seed(13))
        assert torch.allclose(B(op.A(x)), x, atol=1e-4)


def test_reprs_are_readable():
    assert repr(Denoising()) == "Denoising()"
    assert repr(Inpainting.center_box((28, 28), 15)) == "Inpainting.center_box(image_shape=(1, 28, 28), size=15)"
    assert repr(Inpainting.random((28, 28), 0.3, 1234)) == (
        "Inpainting.random(image_shape=(1, 28, 28), fraction=0.3, seed=1234) [235 missing pixels]"
    )
    assert repr(Blur.gaussian((28, 28), 1.0)) == "Blur.gaussian(image_shape=(28, 28), std=1.0) [kernel 9x9]"
    assert repr(Blur.disk((28, 28), 2.5)) == "Blur.disk(image_shape=(28, 28), radius=2.5) [kernel 5x5]"
    assert "Blur(kernel 3x3" in repr(Blur(torch.ones(3, 3) / 9))
    assert "Identity" in repr(preinverse(Denoising(), "identity"))
    assert "Mask" in repr(preinverse(Inpainting.center_box((8, 8), 2), "inverse"))
    assert "InverseFilter" in repr(preinverse(Blur.gaussian((8, 8), 1.0), "inverse"))


def test_names():
    assert Denoising().name == "denoising"
    assert Inpainting.center_box((8, 8), 2).name == "inpainting"
    assert Blur.gaussian((8, 8), 1.0).name == "blur"
    assert all(isinstance(op, Operator) for op in make_operators(1, 8, 8))


# ----------------------------------------------------------------------------------------
# bad inputs
# ----------------------------------------------------------------------------------------


def test_bad_sigma():
    x = torch.rand(2, 1, 4, 4)
    op = Denoising()
    for bad in [0.0, -0.1, float("nan"), float("inf"), [0.1, -0.1], torch.tensor([0.1, float("nan")])]:
        with pytest.raises(ValueError, match="sigma"):
            op.measure(x, bad)
    with pytest.raises(ValueError, match=r"sigma.*length 2"):
        op.measure(x, [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="sigma"):
        op.measure(x, torch.ones(2, 1))
    with pytest.raises(TypeError, match="sigma"):
        op.measure(x, "0.1")


def test_bad_images():
    for op in make_operators(1, 6, 6):
        with pytest.raises(ValueError, match="x must have 4 dimensions"):
            op.A(torch.rand(6, 6))
        with pytest.raises(TypeError, match="x must have a real floating-point dtype"):
            op.A(torch.ones(1, 1, 6, 6, dtype=torch.int64))
        with pytest.raises(ValueError, match="y must have 4 dimensions"):
            op.A_adjoint(torch.rand(1, 6, 6))
        with pytest.raises(TypeError, match="x must be a torch.Tensor"):
            op.measure([[0.0]], 0.1)


def test_bad_mask():
    with pytest.raises(ValueError, match="mask must contain only 0 and 1"):
        Inpainting(torch.full((4, 4), 0.5))
    with pytest.raises(ValueError, match="mask must have shape"):
        Inpainting(torch.ones(4))
    with pytest.raises(ValueError, match="mask of 4 dimensions"):
        Inpainting(torch.ones(2, 1, 4, 4))
    op = Inpainting(torch.ones(3, 4, 4))
    with pytest.raises(ValueError, match="x of shape .* does not match the mask"):
        op.A(torch.rand(1, 3, 4, 5))
    with pytest.raises(ValueError, match="x of shape .* does not match the mask"):
        op.A(torch.rand(1, 2, 4, 4))
    with pytest.raises(ValueError, match="y of shape .* does not match the mask"):
        preinverse(op, "inverse")(torch.rand(1, 1, 3, 3))


def test_bad_mask_constructors():
    with pytest.raises(ValueError, match="size must fit"):
        Inpainting.center_box((8, 8), 9)
    with pytest.raises(ValueError, match="size must be a positive int"):
        Inpainting.center_box((8, 8), 0)
    with pytest.raises(ValueError, match="image_shape"):
        Inpainting.center_box((8,), 2)
    with pytest.raises(ValueError, match="fraction must be in"):
        Inpainting.random((8, 8), 1.5, seed=0)
    with pytest.raises(TypeError, match="seed"):
        Inpainting.random((8, 8), 0.5, seed=0.5)


def test_bad_kernels():
    with pytest.raises(ValueError, match="kernel must be 2-D"):
        Blur(torch.ones(3))
    with pytest.raises(ValueError, match="kernel sizes must be odd"):
        Blur(torch.ones(4, 3))
    with pytest.raises(ValueError, match="kernel must contain only finite"):
        Blur(torch.full((3, 3), float("nan")))
    op = Blur(torch.ones(5, 5) / 25)
    with pytest.raises(ValueError, match="kernel of size 5x5 is larger than the image"):
        op.A(torch.rand(1, 1, 4, 8))
    with pytest.raises(ValueError, match="kernel of size 5x5 is larger than the image"):
        preinverse(op, "inverse")(torch.rand(1, 1, 8, 4))
    with pytest.raises(ValueError, match="std must be positive"):
        Blur.gaussian((8, 8), 0.0)
    with pytest.raises(ValueError, match="radius must be positive"):
        Blur.disk((8, 8), -1.0)
    with pytest.raises(ValueError, match="radius 4.0 gives a 9x9 disk that does not fit"):
        Blur.disk((8, 8), 4.0)


def test_bad_preinverse_kind():
    with pytest.raises(ValueError, match="kind must be one of 'identity', 'inverse'"):
        preinverse(Denoising(), "pinv")
    with pytest.raises(TypeError, match="op must be an Operator"):
        preinverse("blur", "inverse")


def test_preinverse_states_what_estimators_need():
    """The Preinverse properties (mask, is_filter, needs_float64) replace attribute probing."""
    from lemmse.operators import Preinverse
    g = torch.Generator().manual_seed(1)
    inp, blur = Inpainting(torch.rand(1, 8, 8, generator=g) > 0.5), Blur(torch.ones(3, 3) / 9)
    ident, mask, filt = (preinverse(Denoising(), "inverse"), preinverse(inp, "inverse"),
                         preinverse(blur, "inverse"))
    assert all(isinstance(b, Preinverse) for b in (ident, mask, filt))
    assert (ident.kind, mask.kind, filt.kind) == ("identity", "inverse", "inverse")
    assert ident.mask is None and filt.mask is None
    assert torch.equal(mask.mask, inp.mask)
    assert (ident.is_filter, mask.is_filter, filt.is_filter) == (False, False, True)
    assert (ident.needs_float64, mask.needs_float64, filt.needs_float64) == (False, False, True)
    assert filt.transfer(8, 8).shape == (8, 8)
    with pytest.raises(TypeError, match="not a filter"):
        mask.transfer(8, 8)
