"""The patch estimators for every σ > 0: no NaN, and the nearest-patch limit as σ → 0.

The sliding-window kernel holds its logits -‖q - k‖²/2σ² in float32.  When σ is tiny next to the
patch distances (σ = 5e-5 on real images: logits of 10^8 and more) their rounding exceeded the
kernel's slack and the online maximum overflowed its sums into NaN (issue 18, item 1).  The
estimators now redo such query images in float64.  These tests compare every path with the
float64 brute-force oracle of ``oracles.py``, down to σ = 1e-8 (where it is the centre pixel of
the nearest key patch) and for inputs far outside [0, 1].
"""

from __future__ import annotations

import warnings

import pytest
import torch

import lemmse
import oracles as O

pytestmark = pytest.mark.usefixtures("native_isa")

F64 = torch.float64
H = W = 8
P = 3


def _data(C, seed=0):
    train = O.smooth_images(3, C, H, W, seed=seed)
    x = O.smooth_images(2, C, H, W, seed=seed + 100)
    g = torch.Generator().manual_seed(seed)
    return train, x, g


@pytest.mark.parametrize("sigma", [5e-5, 1e-5, 1e-8])
@pytest.mark.parametrize("C", [1, 3])
@pytest.mark.parametrize("algorithm", ["auto", "attention"])
def test_lemmse_tiny_sigma_matches_oracle(sigma, C, algorithm):
    train, x, g = _data(C)
    y = x + sigma * torch.randn(x.shape, generator=g, dtype=F64)
    est = lemmse.LEMMSE(train.float(), patch_size=P, algorithm=algorithm)
    out = est(y.float(), sigma)
    assert torch.isfinite(out).all()
    ref = O.lemmse(train, y, sigma, ("denoising",), P)
    assert (out.double() - ref).abs().max() <= 1e-5


@pytest.mark.parametrize("sigma", [5e-5, 1e-8])
def test_lemmse_tiny_sigma_is_nearest_patch(sigma):
    """σ → 0: every pixel takes the centre of its nearest training patch (no ties here)."""
    train, x, g = _data(1, seed=3)
    y = x + sigma * torch.randn(x.shape, generator=g, dtype=F64)
    out = lemmse.LEMMSE(train.float(), patch_size=P)(y.float(), sigma).double()
    logits = O.lemmse_logits(train, y, 1.0, ("denoising",), P)  # -d / 2
    best = logits.flatten(3).argmax(-1)  # [B, H, W] index into (n, j)
    values = train.permute(0, 2, 3, 1).reshape(-1, 1)  # [N*H*W, C]
    nearest = values[best].permute(0, 3, 1, 2)
    assert (out - nearest).abs().max() <= 1e-6


@pytest.mark.parametrize("sigma", [1e-5, 1e-8])
def test_local_mmse_tiny_sigma(sigma):
    train, x, g = _data(1, seed=1)
    y = x + sigma * torch.randn(x.shape, generator=g, dtype=F64)
    out = lemmse.LocalMMSE(train.float(), patch_size=P)(y.float(), sigma)
    assert torch.isfinite(out).all()
    ref = O.local_mmse(train, y, sigma, ("denoising",), P)
    assert (out.double() - ref).abs().max() <= 1e-5


@pytest.mark.parametrize("sigma", [1e-5, 1e-8])
def test_log_density_tiny_sigma(sigma):
    train, x, g = _data(1, seed=2)
    y = x + sigma * torch.randn(x.shape, generator=g, dtype=F64)
    ld = lemmse.LEMMSE(train.float(), patch_size=P).log_density(y.float(), sigma)
    assert torch.isfinite(ld).all()
    ref = O.log_density(O.lemmse_logits(train, y, sigma, ("denoising",), P), sigma, P * P)
    # log-densities of order 10^15 at σ = 1e-8: compare relative to their size
    assert ((ld.double() - ref).abs() / ref.abs().clamp_min(1.0)).max() <= 1e-5


def test_inpainting_physics_aware_tiny_sigma():
    train, x, g = _data(1, seed=4)
    mask = O.box_mask(1, H, W, 3)
    op = lemmse.Inpainting(mask.float())
    sigma = 1e-5
    y = mask * x + sigma * torch.randn(x.shape, generator=g, dtype=F64)
    est = lemmse.LEMMSE(train.float(), op, patch_size=P, preinverse="inverse")
    out = est(y.float(), sigma)
    assert torch.isfinite(out).all()
    ref = O.lemmse(train, y, sigma, ("inpainting", mask), P, preinverse="inverse")
    assert (out.double() - ref).abs().max() <= 1e-5


@pytest.mark.parametrize("scale", [30.0, -20.0])
def test_inputs_far_outside_unit_range(scale):
    """Queries far from every training patch (logits of 10^5 and more at σ = 0.1)."""
    train, x, _ = _data(1, seed=5)
    y = scale * x + 0.5
    est = lemmse.LEMMSE(train.float(), patch_size=P)
    out = est(y.float(), 0.1)
    assert torch.isfinite(out).all()
    ref = O.lemmse(train, y, 0.1, ("denoising",), P)
    assert (out.double() - ref).abs().max() <= 1e-5


def test_moderate_sigma_keeps_the_fp32_kernel():
    """The guard does not fire at ordinary σ: the sliding kernel's result is returned as is."""
    train, x, g = _data(1, seed=6)
    y = x + 0.2 * torch.randn(x.shape, generator=g, dtype=F64)
    est = lemmse.LEMMSE(train.float(), patch_size=P)
    est(y.float(), 0.2)
    assert getattr(est, "_twin64", None) is None


#: ``k̂ = 0`` at the Nyquist frequency of an even grid: the inverse filter ``1/(k̂ + 1e-7)``
#: multiplies that frequency of the noise by 1e7.
NYQUIST_KERNEL = torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=F64) / 16


@pytest.mark.filterwarnings("ignore:the physics-aware blur:RuntimeWarning")  # tested below
@pytest.mark.parametrize("backend", ["native", "torch"])
def test_ill_conditioned_inverse_filter_matches_extended_precision(backend):
    """The physics-aware blur LE-MMSE when the pre-inverted query images reach 1e6 and the
    window covariance has a condition number near 1e13, against a 40-digit oracle: float32
    holds such images to ~1e-1, and the whitening, which scales that frequency back down, must
    not turn the round-off into errors of the patches (before the fix the images were cast to
    float32 before the whitening: 3e-2 off).  The float64 brute force of ``oracles.lemmse`` is
    itself about 0.7 off here; the package's float64, which whitens with a Cholesky factor of
    ``S`` built from ``|b̂|²`` in the Fourier domain, is about 1e-4 off."""
    torch.manual_seed(0)
    train = O.smooth_images(2, 1, 6, 6, seed=3)
    x = O.smooth_images(1, 1, 6, 6, seed=103)
    g = torch.Generator().manual_seed(3)
    op = lemmse.Blur(NYQUIST_KERNEL.float())
    y = O.apply_A(("blur", NYQUIST_KERNEL), x) + 0.2 * torch.randn(x.shape, generator=g, dtype=F64)
    exact = O.lemmse_inverse_blur_mp(train, y, 0.2, NYQUIST_KERNEL, P)
    est64 = lemmse.LEMMSE(train, op, patch_size=P, preinverse="inverse", backend="torch")
    est32 = lemmse.LEMMSE(train.float(), op, patch_size=P, preinverse="inverse", backend=backend)
    assert est64.B(y).abs().max() > 1e5  # as ill-conditioned as claimed
    assert (est64(y, 0.2) - exact).abs().max() < 1e-3
    assert (est32(y.float(), 0.2).double() - exact).abs().max() < 1e-3


@pytest.mark.filterwarnings("ignore:the physics-aware blur:RuntimeWarning")  # tested below
@pytest.mark.parametrize("name", ["LEMMSE", "LocalMMSE"])
@pytest.mark.parametrize("backend", ["native", "torch"])
def test_ill_conditioned_inverse_filter_float32_equals_float64(name, backend):
    """Every output of the float32 physics-aware blur estimators (estimate, posterior,
    log-density) stays with float64 on the ill-conditioned kernel (before: 3e-2 off the
    estimate, 2e-1 off the log-density)."""
    train, x, g = _data(1, seed=3)
    op = lemmse.Blur(NYQUIST_KERNEL.float())
    y = O.apply_A(("blur", NYQUIST_KERNEL), x) + 0.2 * torch.randn(x.shape, generator=g, dtype=F64)
    cls = getattr(lemmse, name)
    exact = cls(train, op, patch_size=P, preinverse="inverse")  # float64
    est = cls(train.float(), op, patch_size=P, preinverse="inverse", backend=backend)
    ref = exact(y, 0.2)
    assert (est(y.float(), 0.2).double() - ref).abs().max() < 1e-5
    assert (est.posterior(y.float(), 0.2).x_hat.double() - ref).abs().max() < 1e-5
    log_density = exact.log_density(y, 0.2)
    assert (est.log_density(y.float(), 0.2).double() - log_density).abs().max() < 1e-4


def test_ill_conditioned_whitening_warns_at_the_callers_line():
    """float64 itself is only good to ~1e-4 on the kernel above (condition number 1e13): the
    estimator says so once, at the line that built it; the book's blurs (condition numbers
    1.6e6 and 4.9e3) build without a word."""
    train = O.smooth_images(2, 1, 8, 8, seed=3).float()
    op = lemmse.Blur(NYQUIST_KERNEL.float())
    for cls in (lemmse.LEMMSE, lemmse.LocalMMSE):
        with pytest.warns(RuntimeWarning, match=r"condition number 1\.\de\+13") as record:
            cls(train, op, patch_size=P, preinverse="inverse")
        assert len(record) == 1 and record[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for C, H, blur in [(1, 28, lemmse.Blur.gaussian((1, 28, 28), 1.0)),
                           (1, 28, lemmse.Blur.disk((1, 28, 28), 2.5)),
                           (3, 32, lemmse.Blur.gaussian((3, 32, 32), 1.0))]:
            lemmse.LEMMSE(torch.rand(2, C, H, H), blur, patch_size=5, preinverse="inverse")
