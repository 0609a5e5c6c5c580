"""FSDS, the frequency-spectrum distribution similarity (reference A.3, ``lemmse.metrics.fsds``).

The oracle below recomputes the six steps of A.3 with plain numpy loops over an explicit DFT
(``exp(-2πi(k m / H + l n / W))``), not with ``rfft2``, flips or ``cumsum``.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from lemmse.metrics import fsds, psnr


def fsds_oracle(pred: np.ndarray, target: np.ndarray) -> float:
    """A.3 by hand for one image ``[C, H, W]``: standardise, pad, DFT, split, integrate, score."""

    def standardise(x):
        vals = x.ravel().astype(np.float64)
        n = vals.size
        mean = sum(vals) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
        return (x - mean) / std

    def integrated_halves(x):
        C, H, W = x.shape
        if H % 2:                                   # one zero row at the bottom
            x = np.concatenate([x, np.zeros((C, 1, W))], axis=1)
            H += 1
        L = W // 2 + 1                              # the non-negative column frequencies
        F = np.zeros((C, H, L), dtype=complex)
        for c in range(C):
            for k in range(H):
                for l in range(L):
                    acc = 0j
                    for m in range(H):
                        for n in range(W):
                            acc += x[c, m, n] * np.exp(-2j * np.pi * (k * m / H + l * n / W))
                    F[c, k, l] = acc
        halves = []
        for rows in (range(0, H // 2), [H - 1 - k for k in range(H // 2)]):
            Fh = F[:, list(rows), :]
            D = np.zeros_like(Fh)
            for c in range(C):
                for a in range(Fh.shape[1]):
                    for b in range(L):
                        D[c, a, b] = Fh[c, : a + 1, : b + 1].sum()
            halves.append(D)
        return halves

    P = integrated_halves(standardise(np.asarray(pred, dtype=np.float64)))
    T = integrated_halves(standardise(np.asarray(target, dtype=np.float64)))
    num = sum(float((abs(p - t) ** 2).sum()) for p, t in zip(P, T))
    den = sum(float((abs(t) ** 2).sum()) for t in T)
    return -10 * math.log10(num / den)


def smooth_field(C, H, W, width=2.0, seed=0):
    """A smooth Gaussian random field in [0, 1] (white noise low-passed with a Gaussian)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(C, H, W, generator=g, dtype=torch.float64)
    fy = torch.fft.fftfreq(H, dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(W, dtype=torch.float64)[None, :]
    x = torch.fft.ifft2(torch.fft.fft2(z) * torch.exp(-2 * (math.pi * width) ** 2
                                                      * (fy ** 2 + fx ** 2))).real
    return (x - x.min()) / (x.max() - x.min())


@pytest.mark.parametrize("shape", [(1, 3, 4), (1, 4, 4), (2, 3, 5), (1, 5, 2)])
def test_matches_hand_computed_dft(shape):
    g = torch.Generator().manual_seed(1)
    T = torch.rand(shape, generator=g, dtype=torch.float64)
    P = T + 0.3 * torch.randn(shape, generator=g, dtype=torch.float64)
    want = fsds_oracle(P.numpy(), T.numpy())
    assert fsds(P, T) == pytest.approx(want, rel=1e-10, abs=1e-10)


def test_hand_computed_case_is_not_symmetric():
    """The target is the denominator: swapping the arguments changes the score."""
    g = torch.Generator().manual_seed(2)
    T = torch.rand(1, 4, 4, generator=g, dtype=torch.float64)
    P = torch.rand(1, 4, 4, generator=g, dtype=torch.float64)
    assert fsds(P, T) == pytest.approx(fsds_oracle(P.numpy(), T.numpy()), rel=1e-10)
    assert fsds(T, P) == pytest.approx(fsds_oracle(T.numpy(), P.numpy()), rel=1e-10)
    assert abs(fsds(P, T) - fsds(T, P)) > 1e-3


def test_odd_height_is_padded_after_standardising():
    """Odd H: the zero row comes after standardisation (padding first would change the mean)."""
    g = torch.Generator().manual_seed(3)
    T = torch.rand(1, 3, 4, generator=g, dtype=torch.float64)
    P = torch.rand(1, 3, 4, generator=g, dtype=torch.float64)
    got = fsds(P, T)
    pad = torch.zeros(1, 1, 4, dtype=torch.float64)
    padded_first = fsds(torch.cat([P, pad], 1), torch.cat([T, pad], 1))
    assert got == pytest.approx(fsds_oracle(P.numpy(), T.numpy()), rel=1e-10)
    assert abs(got - padded_first) > 1e-3


@pytest.mark.parametrize("a, b", [(3.0, -1.0), (0.01, 5.0), (1.0, 100.0)])
def test_affine_invariance(a, b):
    T = smooth_field(3, 12, 10, seed=4)
    P = T + 0.05 * torch.randn(T.shape, generator=torch.Generator().manual_seed(5),
                               dtype=torch.float64)
    ref = fsds(P, T)
    assert fsds(a * P + b, T) == pytest.approx(ref, abs=1e-9)
    assert fsds(P, a * T + b) == pytest.approx(ref, abs=1e-9)


def test_negative_scale_is_not_invariant():
    T = smooth_field(1, 8, 8, seed=6)
    P = T + 0.05 * torch.randn(T.shape, generator=torch.Generator().manual_seed(7),
                               dtype=torch.float64)
    assert fsds(-P, T) < fsds(P, T) - 10


def test_identical_is_inf_without_warning(recwarn):
    T = smooth_field(2, 6, 7, seed=8)
    assert fsds(T, T) == math.inf
    assert fsds(T.float(), T.float()) == math.inf
    out = fsds(T[None].repeat(2, 1, 1, 1), T[None].repeat(2, 1, 1, 1))
    assert out.dtype == torch.float64 and torch.isinf(out).all() and (out > 0).all()
    assert len(recwarn) == 0


def test_close_inputs_give_large_finite_scores():
    T = smooth_field(1, 8, 8, seed=9)
    near = fsds(T + 1e-6 * torch.sin(torch.arange(64.0, dtype=torch.float64)).reshape(1, 8, 8), T)
    assert 80 < near < math.inf


def _one_pixel_shift_vs_noise(T):
    shifted = torch.roll(T, 1, dims=-1)
    sigma = 10 ** (-30 / 20)                        # PSNR ≈ 30 dB for images in [0, 1]
    noisy = T + sigma * torch.randn(T.shape, generator=torch.Generator().manual_seed(10),
                                    dtype=T.dtype)
    p_noise = float(psnr(noisy[None], T[None])[0])
    assert 29 < p_noise < 31
    return fsds(shifted, T), fsds(noisy, T), float(psnr(shifted[None], T[None])[0])


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_one_pixel_shift_scores_far_below_mild_noise(seed):
    """Phase sensitivity: a circular one-pixel shift of a smooth image loses > 5 dB to noise
    at 30 dB PSNR (about 12 dB on these fields)."""
    s_shift, s_noise, _ = _one_pixel_shift_vs_noise(smooth_field(1, 32, 32, seed=seed))
    assert s_shift < s_noise - 5


def test_one_pixel_shift_on_real_images():
    if not os.environ.get("LEMMSE_DATA"):
        pytest.skip("LEMMSE_DATA not set")
    import lemmse
    try:
        x = lemmse.load_dataset("fashion-mnist", split="test", n=4)
    except (FileNotFoundError, OSError) as err:
        pytest.skip(f"fashion-mnist not available: {err}")
    for T in x.double():
        s_shift, s_noise, _ = _one_pixel_shift_vs_noise(T)
        assert s_shift < s_noise - 5


def test_batch_equals_loop_and_returns_float64_tensor():
    g = torch.Generator().manual_seed(14)
    T = torch.rand(4, 2, 7, 6, generator=g)
    P = T + 0.1 * torch.randn(T.shape, generator=g)
    out = fsds(P, T)
    assert isinstance(out, torch.Tensor) and out.shape == (4,) and out.dtype == torch.float64
    loop = [fsds(p, t) for p, t in zip(P, T)]
    assert all(isinstance(v, float) for v in loop)
    assert torch.allclose(out, torch.tensor(loop, dtype=torch.float64), rtol=0, atol=1e-12)
    assert len(set(loop)) == 4                      # the images really differ


def test_float32_inputs_are_computed_in_float64():
    g = torch.Generator().manual_seed(15)
    T = torch.rand(1, 6, 6, generator=g)
    P = T + 0.1 * torch.randn(T.shape, generator=g)
    assert fsds(P, T) == pytest.approx(fsds_oracle(P.double().numpy(), T.double().numpy()),
                                       rel=1e-10)


def test_lower_frequencies_weigh_more():
    """The same error energy costs more at a low frequency than at a high one."""
    T = smooth_field(1, 16, 16, seed=16)
    m = torch.arange(16, dtype=torch.float64)
    low = 0.05 * torch.cos(2 * math.pi * m / 16)[None, None, :].expand(1, 16, 16)
    high = 0.05 * torch.cos(2 * math.pi * 7 * m / 16)[None, None, :].expand(1, 16, 16)
    assert fsds(T + high, T) > fsds(T + low, T) + 3


def test_errors():
    x = torch.rand(1, 4, 4)
    with pytest.raises(ValueError, match="same shape"):
        fsds(x, torch.rand(1, 4, 5))
    with pytest.raises(ValueError, match=r"\[C, H, W\] or \[B, C, H, W\]"):
        fsds(torch.rand(4, 4), torch.rand(4, 4))
    with pytest.raises(TypeError, match="pred must be a torch.Tensor"):
        fsds(x.numpy(), x)
    with pytest.raises(TypeError, match="target must be a real floating-point"):
        fsds(x, (x * 255).to(torch.uint8))
    with pytest.raises(ValueError, match="target: the image is constant"):
        fsds(x, torch.full_like(x, 0.5))
    with pytest.raises(ValueError, match="pred: the image is constant"):
        fsds(torch.zeros_like(x), x)
    with pytest.raises(ValueError, match=r"pred: image\(s\) \[1\] of the batch is constant"):
        fsds(torch.stack([x, torch.ones_like(x)]), torch.stack([x, x]))
    with pytest.raises(ValueError, match="NaN or Inf"):
        fsds(x, torch.where(x > 0.5, math.nan, x))
    with pytest.raises(ValueError, match="at least two values"):
        fsds(torch.rand(1, 1, 1), torch.rand(1, 1, 1))
