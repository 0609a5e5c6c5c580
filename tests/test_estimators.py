r"""Tests of the four estimators against float64 brute-force oracles (tests/oracles.py).

Book chapters: MMSE (eq. in section "MMSE", ch. 2), E-MMSE (ch. 3), L-MMSE (ch. 4),
LE-MMSE physics-agnostic (ch. 5, sec. 5.1) and physics-aware (sec. 5.2 blur, 5.3 inpainting),
diagnostics (sec. 5.4). The math reference is /work/shared/reference/lemmse-math.md.

Layout:

1. oracle self-checks (no lemmse import; they validate the oracles against each other);
2. estimators vs oracles, float32 (atol 1e-5) and float64 (atol 1e-10), sigma in {0.01, 0.1, 1};
3. exact circular-shift equivariance (E-MMSE, LE-MMSE);
4. exact locality (L-MMSE, LE-MMSE): the set of pixels of y that change x_hat[i] is the window;
5. identities and limits (P = H, sigma -> 0, sigma -> infinity, ...);
6. chunked vs unchunked (memory_budget), per-image sigma;
7. posterior diagnostics;
8. bad input.

``lemmse.estimators`` and ``lemmse.operators`` are imported lazily inside the tests, so the
oracle self-checks run even while the package is incomplete.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

try:  # tests/ without __init__.py: pytest puts tests/ on sys.path
    import oracles as O
except ImportError:  # tests/ as a package
    from tests import oracles as O

F32, F64 = torch.float32, torch.float64
SIGMAS = (0.01, 0.1, 1.0)
ATOL = {F32: 1e-5, F64: 1e-10}

# ----------------------------------------------------------------------------------------
# Data and cases
# ----------------------------------------------------------------------------------------

# name: channels, height, width, training images, patch size, seed
DATASETS = {
    "g9": dict(C=1, H=9, W=9, N=5, P=5, seed=1),  # grey 9x9
    "c7": dict(C=3, H=7, W=7, N=4, P=3, seed=2),  # colour 7x7
    "r79": dict(C=1, H=7, W=9, N=4, P=3, seed=3),  # grey, not square (catches H/W mix-ups)
}

# Blur kernels with dyadic entries (exact in float32, sums exactly 1).
# Symmetric separable [1, 4, 22, 4, 1] / 32 per axis: std 0.707 px, |khat| >= 0.25 on any grid.
_K1 = torch.tensor([1.0, 4.0, 22.0, 4.0, 1.0], dtype=F64) / 32
KERNEL_SYM = _K1[:, None] * _K1[None, :]
# Asymmetric 3x3 (catches convolution/correlation and conj mix-ups); |khat| >= 0.25.
KERNEL_ASYM = torch.tensor([[0.0, 1.0, 0.0], [1.0, 10.0, 2.0], [0.0, 1.0, 1.0]], dtype=F64) / 16


@functools.lru_cache(maxsize=None)
def dataset(name: str):
    """train [N, C, H, W] and two clean test images x [2, C, H, W] (float64, float32-exact), a fixed
    noise draw e [2, C, H, W]. Test image 0 is a fresh image, test image 1 a shifted training image."""
    d = DATASETS[name]
    C, H, W, N = d["C"], d["H"], d["W"], d["N"]
    imgs = O.smooth_images(N + 1, C, H, W, seed=d["seed"])
    train = imgs[:N]
    x = torch.stack([imgs[N], torch.roll(train[1], shifts=(2, 1), dims=(-2, -1))])
    g = torch.Generator().manual_seed(100 + d["seed"])
    e = torch.randn(2, C, H, W, generator=g, dtype=F64)
    return train, x, e


@functools.lru_cache(maxsize=None)
def oracle_op(ds: str, opname: str):
    """The oracle's operator tuple for a dataset and an operator name."""
    d = DATASETS[ds]
    C, H, W = d["C"], d["H"], d["W"]
    if opname == "denoising":
        return ("denoising",)
    if opname == "box":
        return ("inpainting", O.box_mask(C, H, W, 3))
    if opname == "random":
        return ("inpainting", O.random_mask(C, H, W, 0.3, seed=1234))
    if opname == "chanmask":  # a different random pattern in each channel
        return ("inpainting", O.random_mask(C, H, W, 0.3, seed=7, per_channel=True))
    if opname == "blur":
        return ("blur", KERNEL_SYM)
    if opname == "blur_asym":
        return ("blur", KERNEL_ASYM)
    raise KeyError(opname)


def measurement(ds: str, opname: str, sigma) -> torch.Tensor:
    """y = A x + sigma e, rounded to float32 values (returned as float64)."""
    train, x, e = dataset(ds)
    s = O.sigma_vector(sigma, x.shape[0])[:, None, None, None]
    y = O.apply_A(oracle_op(ds, opname), x) + s * e
    return y.to(F32).to(F64)


def lemmse_operator(op):
    """The lemmse.operators object for an oracle operator tuple."""
    from lemmse.operators import Blur, Denoising, Inpainting

    if op[0] == "denoising":
        return Denoising()
    if op[0] == "inpainting":
        mask = op[1]
        return Inpainting(mask[0] if mask.shape[0] == 1 else mask)
    if op[0] == "blur":
        return Blur(op[1].clone())
    raise KeyError(op[0])


def make(estimator: str, train: torch.Tensor, op, P=None, preinverse=None, **kwargs):
    """Build lemmse.estimators.<estimator> on a float32 copy of train."""
    import lemmse.estimators as E

    cls = getattr(E, estimator)
    args = dict(operator=lemmse_operator(op))
    if estimator in ("LocalMMSE", "LEMMSE"):
        args["patch_size"] = P
    if preinverse is not None:
        args["preinverse"] = preinverse
    return cls(train.to(F32), **args, **kwargs)


def run_est(est, y: torch.Tensor, sigma, dtype) -> torch.Tensor:
    """Call the estimator on y cast to dtype; return its output as float64."""
    if not isinstance(sigma, float):
        sigma = torch.as_tensor(sigma, dtype=dtype)
    out = est(y.to(dtype), sigma)
    assert isinstance(out, torch.Tensor)
    assert out.shape == y.shape, f"x_hat has shape {tuple(out.shape)}, expected {tuple(y.shape)}"
    assert out.dtype == dtype, f"x_hat has dtype {out.dtype}, expected {dtype}"
    return out.to(F64)


def oracle(estimator, ds, opname, P, preinverse, y, sigma):
    train, _, _ = dataset(ds)
    op = oracle_op(ds, opname)
    if estimator == "MMSE":
        return O.mmse(train, y, sigma, op)
    if estimator == "EquivariantMMSE":
        return O.equivariant_mmse(train, y, sigma, op)
    if estimator == "LocalMMSE":
        return O.local_mmse(train, y, sigma, op, P)
    if estimator == "LEMMSE":
        return O.lemmse(train, y, sigma, op, P, preinverse or "identity")
    raise KeyError(estimator)


@functools.lru_cache(maxsize=None)
def oracle_case(estimator, ds, opname, preinverse, sigma):
    """(y, oracle x_hat) for a case at one sigma, cached across dtypes."""
    y = measurement(ds, opname, sigma)
    P = DATASETS[ds]["P"]
    return y, oracle(estimator, ds, opname, P, preinverse, y, sigma)


# (estimator, dataset, operator, preinverse)
CASES = (
    [("MMSE", ds, op, None) for ds in ("g9", "c7") for op in ("denoising", "box", "random", "blur")]
    + [("EquivariantMMSE", ds, op, None) for ds in ("g9", "c7") for op in ("denoising", "box", "random", "blur")]
    + [("EquivariantMMSE", "r79", "blur_asym", None)]
    + [("LocalMMSE", ds, op, None) for ds in ("g9", "c7") for op in ("denoising", "box", "random", "blur")]
    + [("LocalMMSE", "r79", "denoising", None)]
    + [("LEMMSE", ds, op, "identity") for ds in ("g9", "c7") for op in ("denoising", "box", "random", "blur")]
    + [("LEMMSE", "r79", op, "identity") for op in ("denoising", "blur_asym")]
    + [
        ("LEMMSE", "g9", "blur", "inverse"),
        ("LEMMSE", "c7", "blur", "inverse"),
        ("LEMMSE", "g9", "blur_asym", "inverse"),
        ("LEMMSE", "r79", "blur_asym", "inverse"),
        ("LEMMSE", "g9", "box", "inverse"),
        ("LEMMSE", "c7", "box", "inverse"),
        ("LEMMSE", "g9", "random", "inverse"),
        ("LEMMSE", "c7", "random", "inverse"),
        ("LEMMSE", "c7", "chanmask", "inverse"),
        ("LEMMSE", "g9", "denoising", "inverse"),
    ]
)


def case_id(case):
    est, ds, op, pre = case
    return f"{est}-{ds}-{op}" + (f"-{pre}" if pre else "")


# ========================================================================================
# 1. Oracle self-checks (run without lemmse)
# ========================================================================================


def test_oracle_conv_matches_contract_fft_formula():
    """The loop convolution equals IFFT(FFT(x) khat), khat = FFT(kernel zero-padded, centre rolled to 0)."""
    for kernel in (KERNEL_SYM, KERNEL_ASYM):
        for H, W in ((7, 9), (9, 9)):
            x = torch.randn(2, 3, H, W, dtype=F64, generator=torch.Generator().manual_seed(0))
            kh, kw = kernel.shape
            pad = torch.zeros(H, W, dtype=F64)
            pad[:kh, :kw] = kernel
            khat = torch.fft.fft2(torch.roll(pad, shifts=(-(kh // 2), -(kw // 2)), dims=(0, 1)))
            ref = torch.fft.ifft2(torch.fft.fft2(x) * khat).real
            assert torch.allclose(O.circular_conv(x, kernel), ref, atol=1e-13)
            # the inverse filter matrix has transfer 1/(khat + 1e-7)
            Bmat = O.inverse_filter_matrix(kernel, H, W)
            refB = torch.fft.ifft2(torch.fft.fft2(x) / (khat + 1e-7)).real
            assert torch.allclose(O.apply_pixel_matrix(Bmat, x), refB, atol=1e-12)


def test_oracle_windows_match_unfold():
    """Window extraction equals torch's unfold with circular padding (an independent route)."""
    x = torch.randn(2, 3, 7, 9, dtype=F64, generator=torch.Generator().manual_seed(1))
    for P in (1, 3, 5, 7):
        h = P // 2
        padded = torch.nn.functional.pad(x, (h, h, h, h), mode="circular")
        cols = torch.nn.functional.unfold(padded, P)  # [B, C*P*P, H*W]
        ref = cols.transpose(1, 2).reshape(2, 7, 9, -1)
        assert torch.equal(O.all_windows(x, P), ref)


@pytest.mark.parametrize("ds", ["g9", "c7"])
@pytest.mark.parametrize("opname", ["denoising", "box", "blur_asym"])
def test_oracle_le_full_patch_equals_e(ds, opname):
    """LE oracle with a full-torus patch equals the E oracle (both agnostic)."""
    train, _, _ = dataset(ds)
    H = DATASETS[ds]["H"]
    y = measurement(ds, opname, 0.2)
    op = oracle_op(ds, opname)
    a = O.lemmse(train, y, 0.2, op, H)
    b = O.equivariant_mmse(train, y, 0.2, op)
    assert (a - b).abs().max() < 1e-12


@pytest.mark.parametrize("ds", ["g9", "c7"])
def test_oracle_local_full_patch_equals_mmse(ds):
    train, _, _ = dataset(ds)
    H = DATASETS[ds]["H"]
    op = oracle_op(ds, "random")
    y = measurement(ds, "random", 0.2)
    assert (O.local_mmse(train, y, 0.2, op, H) - O.mmse(train, y, 0.2, op)).abs().max() < 1e-12


@pytest.mark.parametrize("ds", ["g9", "c7"])
def test_oracle_inverse_blur_full_patch_equals_e(ds):
    """Physics-aware blur oracle with P = H: the Mahalanobis distance in S = B B^T undoes B, so it
    equals the agnostic E-MMSE oracle with the blur."""
    train, _, _ = dataset(ds)
    H = DATASETS[ds]["H"]
    op = oracle_op(ds, "blur_asym")
    y = measurement(ds, "blur_asym", 0.2)
    a = O.lemmse(train, y, 0.2, op, H, "inverse")
    b = O.equivariant_mmse(train, y, 0.2, op)
    assert (a - b).abs().max() < 1e-9


def test_oracle_inverse_blur_delta_kernel_equals_agnostic_denoising():
    """A delta kernel: B = I/(1 + 1e-7), S = B B^T, the Mahalanobis distance is ||y - x||^2 exactly."""
    train, _, _ = dataset("c7")
    y = measurement("c7", "denoising", 0.1)
    delta = torch.zeros(3, 3, dtype=F64)
    delta[1, 1] = 1
    a = O.lemmse(train, y, 0.1, ("blur", delta), 3, "inverse")
    b = O.lemmse(train, y, 0.1, ("denoising",), 3)
    assert (a - b).abs().max() < 1e-10


def test_oracle_inverse_blur_covariance_is_stationary():
    H, W, P = 7, 9, 3
    Bmat = O.inverse_filter_matrix(KERNEL_ASYM, H, W)
    S0 = O.window_covariance(Bmat, 0, 0, P, 2, H, W)
    for r, c in ((3, 4), (6, 8), (0, 8)):
        assert torch.allclose(O.window_covariance(Bmat, r, c, P, 2, H, W), S0, atol=1e-12)
    assert torch.linalg.eigvalsh(S0).min() > 0.5  # well conditioned with this kernel


@pytest.mark.parametrize("ds", ["g9", "c7"])
def test_oracle_inverse_inpainting_full_mask_equals_agnostic(ds):
    train, _, _ = dataset(ds)
    d = DATASETS[ds]
    y = measurement(ds, "denoising", 0.1)
    ones = ("inpainting", torch.ones(1, d["H"], d["W"], dtype=F64))
    a = O.lemmse(train, y, 0.1, ones, d["P"], "inverse")
    b = O.lemmse(train, y, 0.1, ("denoising",), d["P"])
    assert (a - b).abs().max() < 1e-12


def _has_translation_symmetry(mask: torch.Tensor) -> bool:
    H, W = mask.shape[-2:]
    return any(
        torch.equal(torch.roll(mask, (a, b), dims=(-2, -1)), mask) for a, b in O.positions(H, W) if (a, b) != (0, 0)
    )


@pytest.mark.parametrize("ds", ["g9", "c7"])
def test_oracle_inverse_inpainting_full_patch_equals_mmse(ds):
    """Physics-aware inpainting with P = H and a mask with no translation symmetry: only j = i is
    admissible, the distance is ||mask (y - x_n)||^2, i.e. the MMSE with the inpainting operator."""
    train, _, _ = dataset(ds)
    op = oracle_op(ds, "random")
    assert not _has_translation_symmetry(op[1])
    y = measurement(ds, "random", 0.2)
    a = O.lemmse(train, y, 0.2, op, DATASETS[ds]["H"], "inverse")
    b = O.mmse(train, y, 0.2, op)
    assert (a - b).abs().max() < 1e-12


def test_oracle_weights_normalised_and_le_is_equivariant():
    train, _, _ = dataset("r79")
    op = oracle_op("r79", "blur_asym")
    y = measurement("r79", "blur_asym", 0.3)
    logits = O.lemmse_logits(train, y, 0.3, op, 3)
    w, part, n50, _ = O.posterior_stats(logits)
    assert torch.allclose(w.sum(dim=(3, 4, 5)), torch.ones(2, 7, 9, dtype=F64), atol=1e-12)
    assert bool((part >= 1).all()) and bool((n50 >= 1).all())
    a = O.lemmse(train, torch.roll(y, (2, -3), dims=(-2, -1)), 0.3, op, 3)
    b = torch.roll(O.lemmse(train, y, 0.3, op, 3), (2, -3), dims=(-2, -1))
    assert (a - b).abs().max() < 1e-12


def test_oracle_test_data_is_generic():
    """No two training patches coincide (keeps argmax/top-k comparisons free of exact ties)."""
    for ds, d in DATASETS.items():
        train, x, _ = dataset(ds)
        k = O.all_windows(train, d["P"]).reshape(-1, d["C"] * d["P"] ** 2)
        dist = torch.cdist(k, k)
        dist.fill_diagonal_(math.inf)
        assert dist.min() > 1e-2, ds
        assert float(train.min()) >= 0 and float(train.max()) <= 1
        assert torch.equal(train.to(F32).to(F64), train)


# ========================================================================================
# 2. Estimators vs oracles
# ========================================================================================


@pytest.mark.parametrize("dtype", [F32, F64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_estimator_matches_oracle(case, sigma, dtype):
    estimator, ds, opname, pre = case
    train, _, _ = dataset(ds)
    y, ref = oracle_case(estimator, ds, opname, pre, sigma)
    kwargs = {} if dtype == F32 else {"dtype": F64}
    est = make(estimator, train, oracle_op(ds, opname), DATASETS[ds]["P"], pre, **kwargs)
    out = run_est(est, y, sigma, dtype)
    err = float((out - ref).abs().max())
    assert err <= ATOL[dtype], f"max abs error {err:.3g} > {ATOL[dtype]:g}"


def test_default_dtype_is_train_dtype_and_inputs_untouched():
    import lemmse.estimators as E
    from lemmse.operators import Denoising

    train, _, _ = dataset("c7")
    y = measurement("c7", "denoising", 0.1)
    classes = ((E.MMSE, {}), (E.EquivariantMMSE, {}), (E.LocalMMSE, {"patch_size": 3}), (E.LEMMSE, {"patch_size": 3}))
    for cls, kw in classes:
        t64 = train.clone()
        y64 = y.clone()
        out = cls(t64, Denoising(), **kw)(y64, 0.1)
        assert out.dtype == F64, cls.__name__
        assert torch.equal(t64, train) and torch.equal(y64, y), f"{cls.__name__} modified its inputs"
        t32, y32 = train.to(F32), y.to(F32)
        out32 = cls(t32, Denoising(), **kw)(y32, 0.1)
        assert out32.dtype == F32, cls.__name__
        assert torch.equal(t32, train.to(F32)) and torch.equal(y32, y.to(F32))


# ========================================================================================
# 3. Equivariance
# ========================================================================================

EQUIVARIANT_CASES = [
    ("EquivariantMMSE", "g9", "denoising", None),
    ("EquivariantMMSE", "c7", "box", None),
    ("EquivariantMMSE", "r79", "blur_asym", None),
    ("LEMMSE", "g9", "denoising", "identity"),
    ("LEMMSE", "g9", "box", "identity"),
    ("LEMMSE", "c7", "random", "identity"),
    ("LEMMSE", "r79", "blur_asym", "identity"),
    ("LEMMSE", "g9", "blur", "inverse"),
    ("LEMMSE", "r79", "blur_asym", "inverse"),
]


@pytest.mark.parametrize("shift", [(2, -3), (1, 4)])
@pytest.mark.parametrize("case", EQUIVARIANT_CASES, ids=case_id)
def test_shift_equivariance(case, shift):
    """x_hat(T_g y) = T_g x_hat(y) for circular shifts (physics-aware blur: B commutes with T_g)."""
    estimator, ds, opname, pre = case
    train, _, _ = dataset(ds)
    est = make(estimator, train, oracle_op(ds, opname), DATASETS[ds]["P"], pre)
    y = measurement(ds, opname, 0.2)
    a = run_est(est, torch.roll(y, shift, dims=(-2, -1)), 0.2, F32)
    b = torch.roll(run_est(est, y, 0.2, F32), shift, dims=(-2, -1))
    assert (a - b).abs().max() <= 1e-5


def test_shift_equivariance_test_can_fail():
    """Control: the L-MMSE with a fixed hole is not shift-equivariant, and the check above sees it."""
    train, _, _ = dataset("g9")
    est = make("LocalMMSE", train, oracle_op("g9", "box"), 5)
    y = measurement("g9", "box", 0.2)
    a = run_est(est, torch.roll(y, (2, -3), dims=(-2, -1)), 0.2, F32)
    b = torch.roll(run_est(est, y, 0.2, F32), (2, -3), dims=(-2, -1))
    assert (a - b).abs().max() > 1e-3


# ========================================================================================
# 4. Locality
# ========================================================================================

LOCAL_CASES = [
    ("LocalMMSE", "g9", "denoising", None),
    ("LocalMMSE", "c7", "box", None),
    ("LocalMMSE", "r79", "blur", None),
    ("LEMMSE", "g9", "denoising", "identity"),
    ("LEMMSE", "c7", "random", "identity"),
    ("LEMMSE", "r79", "blur_asym", "identity"),
    ("LEMMSE", "g9", "random", "inverse"),
    ("LEMMSE", "c7", "chanmask", "inverse"),
    ("LEMMSE", "c7", "box", "inverse"),
]


def _perturbation_batch(y0: torch.Tensor, r: int, c: int, P: int, delta: float = 0.7):
    """Batch of copies of y0 [C, H, W]: index 0 unchanged, index 1 changed at every pixel outside the
    window of (r, c), then one copy per offset in the (P+2) x (P+2) square around (r, c), changed at
    that single pixel (all channels). Returns the batch and the list of offsets."""
    C, H, W = y0.shape
    h = P // 2
    rows, cols = O.window_index(r, c, P, H, W)
    inside = torch.zeros(H, W, dtype=torch.bool)
    inside[torch.tensor(rows)[:, None], torch.tensor(cols)[None, :]] = True
    batch = [y0.clone(), torch.where(inside, y0, y0 + delta)]
    offsets = [(dr, dc) for dr in range(-h - 1, h + 2) for dc in range(-h - 1, h + 2)]
    for dr, dc in offsets:
        yp = y0.clone()
        yp[:, (r + dr) % H, (c + dc) % W] += delta
        batch.append(yp)
    return torch.stack(batch), offsets


@pytest.mark.parametrize("case", LOCAL_CASES, ids=case_id)
def test_locality(case):
    """x_hat[i] depends on y exactly through the P x P window of i: perturbing any pixel outside it
    leaves x_hat[i] unchanged (atol 1e-6); perturbing a pixel inside it changes x_hat[i]
    (physics-aware inpainting: only the observed pixels of the window, since B y = mask * y)."""
    estimator, ds, opname, pre = case
    d = DATASETS[ds]
    P, H, W = d["P"], d["H"], d["W"]
    train, _, _ = dataset(ds)
    op = oracle_op(ds, opname)
    est = make(estimator, train, op, P, pre)
    y0 = measurement(ds, opname, 0.3)[0]
    r, c = 1, W - 1  # near a corner: the window wraps around
    batch, offsets = _perturbation_batch(y0, r, c, P)
    out = run_est(est, batch, 0.5, F32)[:, :, r, c]  # [K, C]
    change = (out - out[0]).abs().amax(dim=1)
    assert change[1] <= 1e-6, "changing y outside the window changed x_hat[i]"
    observed = O.full_mask(op, d["C"], H, W).amax(0) if (pre == "inverse" and op[0] == "inpainting") else None
    h = P // 2
    for k, (dr, dc) in enumerate(offsets):
        in_window = abs(dr) <= h and abs(dc) <= h
        expect = in_window and (observed is None or observed[(r + dr) % H, (c + dc) % W] > 0)
        if expect:
            assert change[k + 2] > 1e-4, f"pixel at offset {(dr, dc)} is in the window but x_hat[i] did not change"
        else:
            assert change[k + 2] <= 1e-6, f"pixel at offset {(dr, dc)} changed x_hat[i] ({float(change[k + 2]):.3g})"


def test_locality_physics_aware_blur_in_v():
    """Physics-aware blur: x_hat is local in v = B y (not in y, B being global). Perturb v outside the
    window of i and map back, y' = (A + 1e-7 I) v' (so B y' = v'); x_hat[i] must not move."""
    ds = "g9"
    d = DATASETS[ds]
    P, H, W = d["P"], d["H"], d["W"]
    train, _, _ = dataset(ds)
    op = oracle_op(ds, "blur")
    est = make("LEMMSE", train, op, P, "inverse", dtype=F64)
    Bmat = O.inverse_filter_matrix(op[1], H, W)
    Minv = O.conv_matrix(op[1], H, W) + O.EPS_INVERSE * torch.eye(H * W, dtype=F64)
    y0 = measurement(ds, "blur", 0.3)[0]
    v0 = O.apply_pixel_matrix(Bmat, y0)
    r, c = 7, 0
    vbatch, offsets = _perturbation_batch(v0, r, c, P, delta=0.3)
    ybatch = O.apply_pixel_matrix(Minv, vbatch)
    out = run_est(est, ybatch, 0.5, F64)[:, :, r, c]
    change = (out - out[0]).abs().amax(dim=1)
    assert change[1] <= 1e-9
    h = P // 2
    for k, (dr, dc) in enumerate(offsets):
        if abs(dr) <= h and abs(dc) <= h:
            assert change[k + 2] > 1e-4, (dr, dc)
        else:
            assert change[k + 2] <= 1e-9, (dr, dc)


# ========================================================================================
# 5. Identities and limits
# ========================================================================================


@pytest.mark.parametrize("ds", ["g9", "c7"])
@pytest.mark.parametrize("opname", ["denoising", "box", "blur_asym"])
def test_lemmse_full_patch_equals_equivariant_mmse(ds, opname):
    """Ch. 5: a patch covering the whole (odd, square) torus makes the LE-MMSE the E-MMSE."""
    train, _, _ = dataset(ds)
    H = DATASETS[ds]["H"]
    op = oracle_op(ds, opname)
    y = measurement(ds, opname, 0.1)
    for sigma in (0.1, 0.5):
        a = run_est(make("LEMMSE", train, op, H), y, sigma, F32)
        b = run_est(make("EquivariantMMSE", train, op), y, sigma, F32)
        assert (a - b).abs().max() <= 1e-5, sigma


@pytest.mark.parametrize("ds", ["g9", "c7"])
def test_physics_aware_blur_full_patch_equals_equivariant_mmse(ds):
    """With P = H the Mahalanobis distance in S = B B^T undoes B: LE-MMSE (inverse) = E-MMSE (blur)."""
    train, _, _ = dataset(ds)
    H = DATASETS[ds]["H"]
    op = oracle_op(ds, "blur_asym")
    y = measurement(ds, "blur_asym", 0.1)
    a = run_est(make("LEMMSE", train, op, H, "inverse", dtype=F64), y, 0.1, F64)
    b = run_est(make("EquivariantMMSE", train, op, dtype=F64), y, 0.1, F64)
    assert (a - b).abs().max() <= 1e-8


@pytest.mark.parametrize("ds", ["g9", "c7"])
def test_physics_aware_inpainting_full_patch_equals_mmse(ds):
    """With P = H and a mask without translation symmetry only j = i is admissible: the MMSE."""
    train, _, _ = dataset(ds)
    H = DATASETS[ds]["H"]
    op = oracle_op(ds, "random")
    y = measurement(ds, "random", 0.1)
    a = run_est(make("LEMMSE", train, op, H, "inverse"), y, 0.1, F32)
    b = run_est(make("MMSE", train, op), y, 0.1, F32)
    assert (a - b).abs().max() <= 1e-5


@pytest.mark.parametrize("ds", ["g9", "c7"])
@pytest.mark.parametrize("opname", ["denoising", "random", "blur"])
def test_local_mmse_full_patch_equals_mmse(ds, opname):
    train, _, _ = dataset(ds)
    H = DATASETS[ds]["H"]
    op = oracle_op(ds, opname)
    y = measurement(ds, opname, 0.1)
    a = run_est(make("LocalMMSE", train, op, H), y, 0.1, F32)
    b = run_est(make("MMSE", train, op), y, 0.1, F32)
    assert (a - b).abs().max() <= 1e-5


@pytest.mark.parametrize(
    "case",
    [
        ("LEMMSE", "g9", "denoising", "identity"),
        ("LEMMSE", "c7", "box", "identity"),
        ("LEMMSE", "r79", "blur_asym", "identity"),
        ("LEMMSE", "g9", "random", "inverse"),
        ("LEMMSE", "c7", "blur", "inverse"),
    ],
    ids=case_id,
)
def test_lemmse_small_sigma_copies_nearest_patch(case):
    """sigma -> 0 (1e-3): each pixel is the centre of its nearest training patch. The query is a shifted,
    noiseless training image, so the nearest patch is the image's own (distance 0) wherever it is
    unique; where it is not (e.g. inside a hole) the copy is the mean over the tied keys."""
    _, ds, opname, pre = case
    d = DATASETS[ds]
    train, _, _ = dataset(ds)
    op = oracle_op(ds, opname)
    # a shifted training image (for a fixed mask: unshifted, so that its own measured patches are keys)
    xq = train[2:3] if op[0] == "inpainting" else torch.roll(train[2:3], (1, 2), dims=(-2, -1))
    y = O.apply_A(op, xq).to(F32).to(F64)
    sigma = 1e-3
    logits = O.lemmse_logits(train, y, sigma, op, d["P"], pre)[0]  # [H, W, N, H, W]
    values = train.permute(0, 2, 3, 1)  # [N, H, W, C]
    est = run_est(make("LEMMSE", train, op, d["P"], pre), y, sigma, F32)[0]
    n_unique = 0
    for r, c in O.positions(d["H"], d["W"]):
        lg = logits[r, c].reshape(-1)
        best = lg.max()
        tied = lg >= best - 1e-9 * abs(best) - 1e-12
        runner_up = lg[~tied].max() if bool((~tied).any()) else torch.tensor(-math.inf, dtype=F64)
        assert best - runner_up > 30, "test data: second-nearest patch too close for sigma = 1e-3"
        centre = values.reshape(-1, d["C"])[tied].mean(0)
        assert (est[:, r, c] - centre).abs().max() <= 1e-5, (r, c)
        if int(tied.sum()) == 1:
            n_unique += 1
            assert (est[:, r, c] - xq[0, :, r, c]).abs().max() <= 1e-5, (r, c)
    assert n_unique >= d["H"] * d["W"] // 2


@pytest.mark.parametrize("estimator", ["MMSE", "EquivariantMMSE", "LocalMMSE", "LEMMSE"])
@pytest.mark.parametrize("ds", ["g9", "c7"])
def test_large_sigma_gives_means(estimator, ds):
    """sigma -> infinity (1e4): uniform weights. MMSE and L-MMSE: the mean training image;
    E-MMSE and LE-MMSE: the mean of all centre values (per channel), a constant image."""
    d = DATASETS[ds]
    train, _, _ = dataset(ds)
    op = oracle_op(ds, "box")
    y = measurement(ds, "box", 0.1)
    out = run_est(make(estimator, train, op, d["P"], None), y, 1e4, F32)
    if estimator in ("MMSE", "LocalMMSE"):
        ref = train.mean(0, keepdim=True)
    else:
        ref = train.mean(dim=(0, 2, 3))[None, :, None, None]
    assert (out - ref).abs().max() <= 1e-5


@pytest.mark.parametrize("opname", ["denoising", "box", "random", "blur"])
@pytest.mark.parametrize("ds", ["g9", "c7"])
def test_mmse_of_training_image_at_small_sigma_returns_it(ds, opname):
    train, _, _ = dataset(ds)
    op = oracle_op(ds, opname)
    Ax = O.apply_A(op, train)
    d = ((Ax[:, None] - Ax[None]) ** 2).sum(dim=(2, 3, 4))
    d.fill_diagonal_(math.inf)
    assert d.min() / (2 * 1e-3**2) > 50  # test data: the training images are far apart
    est = make("MMSE", train, op)
    k = 3
    out = run_est(est, Ax[k : k + 1].to(F32).to(F64), 1e-3, F32)
    assert (out[0] - train[k]).abs().max() <= 1e-5


@pytest.mark.parametrize("ds", ["g9", "c7"])
def test_inverse_preinverse_of_denoising_is_identity(ds):
    train, _, _ = dataset(ds)
    op = oracle_op(ds, "denoising")
    y = measurement(ds, "denoising", 0.1)
    P = DATASETS[ds]["P"]
    a = run_est(make("LEMMSE", train, op, P, "inverse"), y, 0.1, F32)
    b = run_est(make("LEMMSE", train, op, P, "identity"), y, 0.1, F32)
    assert (a - b).abs().max() <= 1e-6


def test_physics_aware_inpainting_full_mask_equals_agnostic_denoising():
    ds = "c7"
    train, _, _ = dataset(ds)
    d = DATASETS[ds]
    y = measurement(ds, "denoising", 0.1)
    ones = ("inpainting", torch.ones(1, d["H"], d["W"], dtype=F64))
    a = run_est(make("LEMMSE", train, ones, 3, "inverse"), y, 0.1, F32)
    b = run_est(make("LEMMSE", train, ("denoising",), 3), y, 0.1, F32)
    assert (a - b).abs().max() <= 1e-5


@pytest.mark.parametrize("sigma", [0.05, 1.0])
def test_physics_aware_inpainting_unobserved_window_is_mean_of_hidden_centres(sigma):
    """A 5x5 hole on a 7x7 image with P = 3: the windows of the central 3x3 pixels are entirely
    unobserved, every such key has distance 0, so x_hat there is the mean of x_n[j] over n and over
    the 9 central positions j, whatever y and sigma."""
    train, _, _ = dataset("c7")
    op = ("inpainting", O.box_mask(3, 7, 7, 5))
    y = measurement("c7", "denoising", sigma)  # the noise inside the hole is ignored by B = mask
    out = run_est(make("LEMMSE", train, op, 3, "inverse"), y, sigma, F32)
    ref = train[:, :, 2:5, 2:5].mean(dim=(0, 2, 3))
    for r in range(2, 5):
        for c in range(2, 5):
            assert (out[:, :, r, c] - ref).abs().max() <= 1e-6, (r, c)


# ========================================================================================
# 6. Chunking and per-image sigma
# ========================================================================================

SMALL_CASES = [
    ("MMSE", "c7", "blur", None),
    ("EquivariantMMSE", "g9", "random", None),
    ("EquivariantMMSE", "c7", "denoising", None),
    ("LocalMMSE", "g9", "box", None),
    ("LEMMSE", "g9", "denoising", "identity"),
    ("LEMMSE", "c7", "box", "identity"),
    ("LEMMSE", "r79", "blur_asym", "inverse"),
    ("LEMMSE", "c7", "chanmask", "inverse"),
    ("LEMMSE", "g9", "random", "inverse"),
]


@pytest.mark.parametrize("case", SMALL_CASES, ids=case_id)
def test_chunked_equals_unchunked(case):
    """A 16 KiB memory budget forces many key/query chunks (online log-sum-exp); same result."""
    estimator, ds, opname, pre = case
    train, _, _ = dataset(ds)
    op = oracle_op(ds, opname)
    P = DATASETS[ds]["P"]
    for sigma in (0.02, 0.3):
        y = measurement(ds, opname, sigma)
        a = run_est(make(estimator, train, op, P, pre, memory_budget=2**14), y, sigma, F32)
        b = run_est(make(estimator, train, op, P, pre), y, sigma, F32)
        assert (a - b).abs().max() <= 1e-6, sigma


@pytest.mark.parametrize("case", SMALL_CASES, ids=case_id)
def test_per_image_sigma_equals_separate_calls(case):
    estimator, ds, opname, pre = case
    train, _, _ = dataset(ds)
    op = oracle_op(ds, opname)
    est = make(estimator, train, op, DATASETS[ds]["P"], pre)
    sig = (0.05, 0.4)
    y = measurement(ds, opname, sig)
    both = run_est(est, y, torch.tensor(sig), F32)
    for b in range(2):
        alone = run_est(est, y[b : b + 1], sig[b], F32)
        assert (both[b] - alone[0]).abs().max() <= 1e-6, b
    # a float and a vector of equal values agree
    same = run_est(est, y, torch.tensor([0.2, 0.2]), F32)
    assert (same - run_est(est, y, 0.2, F32)).abs().max() <= 1e-6


# ========================================================================================
# 7. Posterior diagnostics
# ========================================================================================

POSTERIOR_CASES = [
    ("LEMMSE", "g9", "denoising", "identity"),
    ("LEMMSE", "c7", "box", "identity"),
    ("LEMMSE", "r79", "blur_asym", "identity"),
    ("LEMMSE", "g9", "blur", "inverse"),
    ("LEMMSE", "c7", "random", "inverse"),
    ("LEMMSE", "c7", "chanmask", "inverse"),
]
POSTERIOR_TOL = {  # weights (atol), participation (rtol), log density (atol, nats), n50 margin
    F32: dict(w=2e-5, part=1e-4, logp=1e-3, margin=1e-4),
    F64: dict(w=1e-10, part=1e-9, logp=1e-8, margin=1e-9),
}


@functools.lru_cache(maxsize=None)
def oracle_posterior(ds, opname, pre, sigma):
    train, _, _ = dataset(ds)
    y = measurement(ds, opname, sigma)
    logits = O.lemmse_logits(train, y, sigma, oracle_op(ds, opname), DATASETS[ds]["P"], pre)
    return (y, logits, *O.posterior_stats(logits))


@pytest.mark.parametrize(
    "sigma,dtype",
    [(0.1, F32), (1.0, F32), (0.01, F64), (0.1, F64), (1.0, F64)],
    ids=["0.1-fp32", "1-fp32", "0.01-fp64", "0.1-fp64", "1-fp64"],
)
@pytest.mark.parametrize("case", POSTERIOR_CASES, ids=case_id)
def test_posterior_matches_oracle(case, sigma, dtype):
    _, ds, opname, pre = case
    d = DATASETS[ds]
    B, H, W, C, P = 2, d["H"], d["W"], d["C"], d["P"]
    tol = POSTERIOR_TOL[dtype]
    k = 5
    train, _, _ = dataset(ds)
    y, logits, w, part, n50, margin = oracle_posterior(ds, opname, pre, sigma)
    kwargs = {} if dtype == F32 else {"dtype": F64}
    est = make("LEMMSE", train, oracle_op(ds, opname), P, pre, **kwargs)
    post = est.posterior(y.to(dtype), sigma, topk=k)
    # topk is bounded by the largest number of admissible keys of a pixel (issue 18, item 7)
    k = min(k, int((logits > -math.inf).reshape(B, H, W, -1).sum(-1).max()))

    assert tuple(post.x_hat.shape) == (B, C, H, W)
    for name in ("log_density", "n50", "participation"):
        assert tuple(getattr(post, name).shape) == (B, H, W), name
    assert tuple(post.topk_weights.shape) == (B, H, W, k)
    assert tuple(post.topk_image.shape) == (B, H, W, k)
    assert tuple(post.topk_position.shape) == (B, H, W, k, 2)

    # x_hat equals the estimator's call (to the oracle tolerance: the two may take different paths)
    assert (post.x_hat.to(F64) - run_est(est, y, sigma, dtype)).abs().max() <= ATOL[dtype]

    # top-k weights: normalised, sorted, equal to the oracle's largest weights ...
    tw = post.topk_weights.to(F64)
    assert bool((tw >= 0).all()) and bool((tw.sum(-1) <= 1 + tol["w"]).all())
    assert bool((tw[..., 1:] <= tw[..., :-1] + 1e-12).all()), "topk_weights not sorted descending"
    w_sorted = torch.sort(w.reshape(B, H, W, -1), dim=-1, descending=True).values[..., :k]
    assert (tw - w_sorted).abs().max() <= tol["w"]
    # ... and each (image, position) points at a key whose oracle weight is the reported one.
    # Physics-aware inpainting may have fewer than k admissible keys: the surplus entries are padding,
    # image -1 and position (-1, -1) with weight exactly 0, and only there.
    n_idx = post.topk_image.long()
    pos = post.topk_position.long()
    n_admissible = (logits > -math.inf).reshape(B, H, W, -1).sum(-1)  # oracle: admissible keys
    pad = torch.arange(k)[None, None, None, :] >= n_admissible[..., None]
    assert torch.equal(n_idx == -1, pad), "topk_image is -1 exactly where there are fewer than k keys"
    assert bool((pos[pad] == -1).all()) and bool((tw[pad] == 0).all())
    n_idx, pos = n_idx.clamp(min=0), pos.clamp(min=0)
    assert bool((n_idx < train.shape[0]).all())
    assert bool((pos[..., 0] >= 0).all()) and bool((pos[..., 0] < H).all())
    assert bool((pos[..., 1] >= 0).all()) and bool((pos[..., 1] < W).all())
    bi = torch.arange(B)[:, None, None, None].expand(B, H, W, k)
    ri = torch.arange(H)[None, :, None, None].expand(B, H, W, k)
    ci = torch.arange(W)[None, None, :, None].expand(B, H, W, k)
    w_at = w[bi, ri, ci, n_idx, pos[..., 0], pos[..., 1]]
    w_at = torch.where(pad, torch.zeros_like(w_at), w_at)
    assert (w_at - tw).abs().max() <= tol["w"], "topk_image/topk_position do not point at the top weights"
    # where the largest oracle weight is clearly the largest, top-1 is exactly its key
    flat = w.reshape(B, H, W, -1)
    top2 = torch.topk(flat, 2, dim=-1)
    clear = (top2.values[..., 0] - top2.values[..., 1]) > 1e-3
    arg = top2.indices[..., 0]
    Hn = H * W
    assert bool(clear.any())
    assert torch.equal(n_idx[..., 0][clear], (arg // Hn)[clear])
    assert torch.equal(pos[..., 0, 0][clear], ((arg % Hn) // W)[clear])
    assert torch.equal(pos[..., 0, 1][clear], (arg % W)[clear])

    # participation ratio and n50
    assert torch.allclose(post.participation.to(F64), part, rtol=tol["part"], atol=0)
    robust = margin > tol["margin"]
    assert robust.float().mean() > 0.8
    assert torch.equal(post.n50.long()[robust], n50[robust])

    # log density: agnostic only, log mean_{n,j} N(q; k_{n,j}, sigma^2 I)
    if pre == "identity":
        ref = O.log_density(logits, sigma, C * P * P)
        assert (post.log_density.to(F64) - ref).abs().max() <= tol["logp"]


def global_logits(estimator, ds, opname, y, sigma):
    """Brute-force float64 logits [B, N, H, W] of the MMSE (all shifts but (0, 0) set to -inf) or
    the E-MMSE: -||y - T_(a, c) A x_n||^2 / 2 sigma^2, T rolling down by a and right by c."""
    train, _, _ = dataset(ds)
    Ax = O.apply_A(oracle_op(ds, opname), train.to(F64))
    N, C, H, W = Ax.shape
    s = O.sigma_vector(sigma, y.shape[0])
    out = torch.full((y.shape[0], N, H, W), -math.inf, dtype=F64)
    for b in range(y.shape[0]):
        for a, c in O.positions(H, W):
            if estimator == "MMSE" and (a, c) != (0, 0):
                continue
            key = torch.roll(Ax, shifts=(a, c), dims=(-2, -1))
            out[b, :, a, c] = -((y[b] - key) ** 2).sum(dim=(1, 2, 3)) / (2 * s[b] ** 2)
    return out


@pytest.mark.parametrize("dtype", [F32, F64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("sigma", [0.05, 0.3])
@pytest.mark.parametrize("estimator,ds,opname", [
    ("MMSE", "g9", "denoising"), ("MMSE", "c7", "blur"),
    ("EquivariantMMSE", "g9", "denoising"), ("EquivariantMMSE", "r79", "blur_asym"),
    ("EquivariantMMSE", "c7", "denoising"),
])
def test_global_posterior_matches_oracle(estimator, ds, opname, sigma, dtype):
    """MMSE and E-MMSE posterior(): weights over the N (MMSE) or N*H*W (E-MMSE) keys, constant
    over the pixels, against softmax(brute-force logits); topk_position is the key's shift."""
    d = DATASETS[ds]
    B, C, H, W = 2, d["C"], d["H"], d["W"]
    train, _, _ = dataset(ds)
    y = measurement(ds, opname, sigma)
    L = global_logits(estimator, ds, opname, y, sigma)  # [B, N, H, W]
    kwargs = {} if dtype == F32 else {"dtype": F64}
    est = make(estimator, train, oracle_op(ds, opname), **kwargs)
    k = 4
    post = est.posterior(y.to(dtype), sigma, topk=k)
    tol = POSTERIOR_TOL[dtype]
    assert (post.x_hat.to(F64) - run_est(est, y, sigma, dtype)).abs().max() <= ATOL[dtype]
    for name in ("log_density", "n50", "participation"):
        t = getattr(post, name)
        assert tuple(t.shape) == (B, H, W), name
        assert bool((t == t[:, :1, :1]).all()), f"{name} is not constant over the image"
    flat = L.reshape(B, -1)
    w = torch.softmax(flat, dim=1)
    srt = torch.sort(w, dim=1, descending=True)
    tw = post.topk_weights.to(F64)[:, 0, 0]  # [B, k]
    assert (tw - srt.values[:, :k]).abs().max() <= tol["w"]
    assert torch.allclose(post.participation.to(F64)[:, 0, 0], 1 / (w ** 2).sum(1),
                          rtol=tol["part"], atol=0)
    cum = srt.values.cumsum(1)
    n50 = (cum < 0.5).sum(1) + 1
    margin = torch.minimum(0.5 - torch.where(n50 >= 2, cum.gather(1, (n50 - 2).clamp(min=0)[:, None])[:, 0],
                                             torch.zeros(B, dtype=F64)),
                           cum.gather(1, (n50 - 1)[:, None])[:, 0] - 0.5)
    robust = margin > tol["margin"]
    assert torch.equal(post.n50[:, 0, 0][robust], n50[robust])
    N = train.shape[0]
    K = N if estimator == "MMSE" else N * H * W
    D = C * H * W
    s = O.sigma_vector(sigma, B)
    ref = torch.logsumexp(flat, 1) - math.log(K) - 0.5 * D * torch.log(2 * math.pi * s ** 2)
    assert (post.log_density.to(F64)[:, 0, 0] - ref).abs().max() <= tol["logp"]
    # the sources point at keys of the reported weights
    img = post.topk_image[:, 0, 0].long()
    pos = post.topk_position[:, 0, 0].long()
    assert bool((img >= 0).all()) and bool((img < N).all())
    w4 = w.view(B, N, H, W)
    at = w4[torch.arange(B)[:, None], img, pos[..., 0], pos[..., 1]]
    assert (at - tw).abs().max() <= tol["w"]
    if estimator == "MMSE":
        assert bool((pos == 0).all())
    # where the top weight is clearly the largest, top-1 is exactly its key
    clear = (srt.values[:, 0] - srt.values[:, 1]) > 1e-3
    arg = srt.indices[:, 0]
    assert torch.equal(img[:, 0][clear], (arg // (H * W))[clear])
    assert torch.equal(pos[:, 0, 0][clear], (arg % (H * W) // W)[clear])
    assert torch.equal(pos[:, 0, 1][clear], (arg % W)[clear])


def test_posterior_chunked_equals_unchunked():
    ds, opname = "c7", "box"
    train, _, _ = dataset(ds)
    op = oracle_op(ds, opname)
    y = measurement(ds, opname, 0.05).to(F32)
    a = make("LEMMSE", train, op, 3, memory_budget=2**14).posterior(y, 0.05, topk=4)
    b = make("LEMMSE", train, op, 3).posterior(y, 0.05, topk=4)
    assert (a.x_hat - b.x_hat).abs().max() <= 1e-5
    assert (a.log_density - b.log_density).abs().max() <= 1e-4
    assert (a.topk_weights - b.topk_weights).abs().max() <= 1e-5
    assert torch.allclose(a.participation, b.participation, rtol=1e-4)
    assert torch.equal(a.n50, b.n50)


# ========================================================================================
# 8. Bad input
# ========================================================================================


def _small():
    train, _, _ = dataset("c7")
    return train.to(F32), measurement("c7", "denoising", 0.1).to(F32)


@functools.lru_cache(maxsize=None)
def _small_estimator(name: str):
    train, _ = _small()
    return make(name, train, ("denoising",), 3, None)


def _with_value(y, value):
    """A copy of y with one entry set to value."""
    y = y.clone()
    y[1, 2, 3, 4] = value
    return y


ALL = ["MMSE", "EquivariantMMSE", "LocalMMSE", "LEMMSE"]
PATCHED = ["LocalMMSE", "LEMMSE"]

# (id, argument name regex, exception types, function of (est, y) that must raise)
CALL_ERRORS = [
    ("y-2d", "y", ValueError, lambda est, y: est(y[0, 0], 0.1)),
    ("y-3d", "y", ValueError, lambda est, y: est(y[0], 0.1)),
    ("y-5d", "y", ValueError, lambda est, y: est(y[None], 0.1)),
    ("y-channels", "y", ValueError, lambda est, y: est(y[:, :1], 0.1)),
    ("y-height", "y", ValueError, lambda est, y: est(y[:, :, :5], 0.1)),
    ("y-width", "y", ValueError, lambda est, y: est(torch.cat([y, y], dim=-1), 0.1)),
    ("y-nan", "y", ValueError, lambda est, y: est(_with_value(y, math.nan), 0.1)),
    ("y-inf", "y", ValueError, lambda est, y: est(_with_value(y, math.inf), 0.1)),
    ("y-float64", "y", (TypeError, ValueError), lambda est, y: est(y.to(F64), 0.1)),
    ("y-uint8", "y", (TypeError, ValueError), lambda est, y: est((y * 255).to(torch.uint8), 0.1)),
    ("y-numpy", "y", TypeError, lambda est, y: est(y.numpy(), 0.1)),
    ("y-list", "y", TypeError, lambda est, y: est(y.tolist(), 0.1)),
    ("sigma-zero", "sigma", ValueError, lambda est, y: est(y, 0.0)),
    ("sigma-negative", "sigma", ValueError, lambda est, y: est(y, -0.1)),
    ("sigma-nan", "sigma", ValueError, lambda est, y: est(y, math.nan)),
    ("sigma-inf", "sigma", ValueError, lambda est, y: est(y, math.inf)),
    ("sigma-one-bad", "sigma", ValueError, lambda est, y: est(y, torch.tensor([0.1, 0.0]))),
    ("sigma-length", "sigma", ValueError, lambda est, y: est(y, torch.tensor([0.1, 0.2, 0.3]))),
    ("sigma-2d", "sigma", (TypeError, ValueError), lambda est, y: est(y, torch.full((2, 2), 0.1))),
    ("sigma-string", "sigma", (TypeError, ValueError), lambda est, y: est(y, "0.1")),
]


@pytest.mark.parametrize("estimator", ALL)
@pytest.mark.parametrize("bad", CALL_ERRORS, ids=[c[0] for c in CALL_ERRORS])
def test_bad_call_raises(estimator, bad):
    _, argname, exc, fn = bad
    est = _small_estimator(estimator)
    _, y = _small()
    with pytest.raises(exc, match=rf"\b{argname}\b"):
        fn(est, y)


def _construct(name, **overrides):
    import lemmse.estimators as E
    from lemmse.operators import Denoising

    train, _ = _small()
    kwargs = dict(operator=Denoising())
    if name in PATCHED:
        kwargs["patch_size"] = 3
    kwargs.update(overrides)
    train_arg = kwargs.pop("train", train)
    return getattr(E, name)(train_arg, **kwargs)


def _nan_train():
    t, _ = _small()
    t = t.clone()
    t[1, 2, 3, 4] = math.nan
    return t


# (id, estimators, argument name regex, exception types, constructor overrides)
CONSTRUCT_ERRORS = [
    ("patch-even", PATCHED, "patch_size", ValueError, lambda: dict(patch_size=4)),
    ("patch-too-large", PATCHED, "patch_size", ValueError, lambda: dict(patch_size=9)),
    ("patch-zero", PATCHED, "patch_size", ValueError, lambda: dict(patch_size=0)),
    ("patch-negative", PATCHED, "patch_size", ValueError, lambda: dict(patch_size=-3)),
    ("patch-float", PATCHED, "patch_size", (TypeError, ValueError), lambda: dict(patch_size=3.0)),
    ("train-nan", ALL, "train", ValueError, lambda: dict(train=_nan_train())),
    ("train-empty", ALL, "train", ValueError, lambda: dict(train=_small()[0][:0])),
    ("train-3d", ALL, "train", ValueError, lambda: dict(train=_small()[0][0])),
    ("train-numpy", ALL, "train", TypeError, lambda: dict(train=_small()[0].numpy())),
    ("train-int", ALL, "train", (TypeError, ValueError), lambda: dict(train=(_small()[0] * 255).to(torch.uint8))),
    ("preinverse-unknown", ["LEMMSE"], "preinverse|kind", ValueError, lambda: dict(preinverse="pseudo")),
    ("dtype-int", ALL, "dtype", (TypeError, ValueError), lambda: dict(dtype=torch.int32)),
    ("memory-budget-negative", ALL, "memory_budget", ValueError, lambda: dict(memory_budget=-1)),
]


@pytest.mark.parametrize("bad", CONSTRUCT_ERRORS, ids=[c[0] for c in CONSTRUCT_ERRORS])
def test_bad_construction_raises(bad):
    _, names, argname, exc, overrides = bad
    for name in names:
        with pytest.raises(exc, match=argname):
            _construct(name, **overrides())


def test_operator_size_mismatch_raises():
    """An inpainting mask or a blur kernel that does not fit the training images."""
    import lemmse.estimators as E
    from lemmse.operators import Blur, Inpainting

    train, y = _small()
    # at construction or, at the latest, at the first call
    with pytest.raises(ValueError, match="mask|operator|train"):
        E.LEMMSE(train, Inpainting(torch.ones(9, 9)), patch_size=3)(y, 0.1)
    with pytest.raises(ValueError, match="mask|operator|train"):
        E.LEMMSE(train, Inpainting(torch.ones(2, 7, 7)), patch_size=3)(y, 0.1)  # 2 channels for 3
    with pytest.raises(ValueError, match="kernel|operator|train"):
        E.MMSE(train, Blur(torch.ones(9, 9) / 81))(y, 0.1)


def test_posterior_bad_topk_raises():
    est = _small_estimator("LEMMSE")
    _, y = _small()
    for topk in (0, -1):
        with pytest.raises(ValueError, match="topk"):
            est.posterior(y, 0.1, topk=topk)


def test_bad_input_is_checked_before_work_and_good_input_still_works():
    """After a rejected call the estimator still works (no state corrupted by validation)."""
    est = _small_estimator("LEMMSE")
    _, y = _small()
    with pytest.raises(ValueError):
        est(y, -1.0)
    out = est(y, 0.1)
    assert out.shape == y.shape and bool(torch.isfinite(out).all())
