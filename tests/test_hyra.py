"""The frequency view of a restorer (``lemmse.hyra``): probing, HyRA's split, sinc, spectra.

The known linear map of these tests is written independently of the module: an explicit loop
that adds a kernel ``k`` into the HR image at ``s j - o`` for each LR pixel ``j`` (zero
insertion at the block's top-left, then convolution about the origin ``o``), circularly.
"""

from __future__ import annotations

import math

import pytest
import torch

from lemmse.hyra import (bicubic, decompose, energy_above, ideal_sinc, impulse_response,
                         linear_part, log_spectrum, polyphase, zero_insert)

D = torch.float64


def splat(k: torch.Tensor, s: int):
    """``v ↦ Σ_j v[:, :, j] k[:, o + n - s j]`` (circular), by loops; ``k`` is ``[C, K1, K2]``."""
    C, K1, K2 = k.shape
    o1, o2 = s * ((K1 // s) // 2), s * ((K2 // s) // 2)

    def f(v):
        B, _, h, w = v.shape
        out = torch.zeros(B, C, s * h, s * w, dtype=v.dtype)
        for j1 in range(h):
            for j2 in range(w):
                for a1 in range(K1):
                    for a2 in range(K2):
                        n1 = (s * j1 + a1 - o1) % (s * h)
                        n2 = (s * j2 + a2 - o2) % (s * w)
                        out[:, :, n1, n2] += v[:, :, j1, j2] * k[:, a1, a2].to(v.dtype)
        return out
    return f


def nearest(s):
    return lambda v: v.repeat_interleave(s, -2).repeat_interleave(s, -1)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)


# ---------------------------------------------------------------------------- probing


@pytest.mark.parametrize("s, m", [(1, 3), (2, 3), (3, 1), (2, 5)])
def test_impulse_response_recovers_a_known_kernel(s, m):
    k = rand(2, s * m, s * m, seed=s + m)               # asymmetric, signed
    h = impulse_response(splat(k, s), m, channels=2, factor=s)
    assert h.dtype == D and h.shape == (2, s * m, s * m)
    assert torch.allclose(h, k, rtol=0, atol=1e-12)


def test_larger_probe_embeds_the_kernel_about_the_central_block():
    s, m, n = 2, 3, 7
    k = rand(1, s * m, s * m, seed=1)
    h = impulse_response(splat(k, s), n, factor=s)
    lo = s * (n // 2) - s * (m // 2)                     # the origins coincide
    want = torch.zeros(1, s * n, s * n, dtype=D)
    want[:, lo: lo + s * m, lo: lo + s * m] = k
    assert torch.allclose(h, want, rtol=0, atol=1e-12)


def test_denoiser_response_is_the_centred_kernel():
    k = rand(1, 3, 3, seed=2)
    h = impulse_response(splat(k, 1), (5, 7), factor=1)
    assert h[0, 1:4, 2:5].sub(k[0]).abs().max() < 1e-12
    assert h.abs().sum() - k.abs().sum() < 1e-12


@pytest.mark.parametrize("s", [1, 2, 3, 4])
def test_nearest_upsampling_responds_with_the_central_box(s):
    n = 5
    h = impulse_response(nearest(s), n, channels=3, factor=s)
    box = torch.zeros(3, s * n, s * n, dtype=D)
    box[:, s * 2: s * 3, s * 2: s * 3] = 1
    assert torch.equal(h, box)
    # the block centre is the array centre: the box is point-symmetric about it
    assert torch.equal(h, h.flip(-1, -2))


def test_background_is_subtracted_and_eps_does_not_matter_for_an_affine_map():
    k = rand(1, 6, 6, seed=3)
    lin = splat(k, 2)
    f = lambda v: lin(v) + 0.7                          # affine: L v + b
    for c in (0.0, 0.3):
        for eps in (1.0, 1e-3):
            h = impulse_response(f, 3, factor=2, background=c, eps=eps)
            assert torch.allclose(h, k, rtol=0, atol=1e-10)


def test_one_batched_call_with_background_first():
    calls = []

    def f(v):
        calls.append((v.shape, v.dtype, v[:, 0, 1, 1].tolist()))
        return nearest(2)(v)
    impulse_response(f, 3, factor=2, background=0.25, eps=0.5)
    assert calls == [((2, 1, 3, 3), D, [0.25, 0.75])]


def test_nonlinear_map_probe_is_the_finite_difference_and_the_jacobian():
    s, c = 2, 0.5
    f = lambda v: nearest(s)(v) ** 2
    box = impulse_response(nearest(s), 5, factor=s)
    for eps in (1.0, 0.1):                              # ((c + ε)² - c²)/ε = 2c + ε
        h = impulse_response(f, 5, factor=s, background=c, eps=eps)
        assert torch.allclose(h, (2 * c + eps) * box, rtol=0, atol=1e-12)
    # a smooth non-linear map: small eps gives the Jacobian-vector product at the background
    k = rand(1, 6, 6, seed=4)
    lin = splat(k, s)
    g = lambda v: torch.tanh(lin(v))
    v0 = torch.full((1, 1, 3, 3), c, dtype=D)
    delta = torch.zeros_like(v0)
    delta[0, 0, 1, 1] = 1
    _, jvp = torch.autograd.functional.jvp(g, v0, delta)
    h = impulse_response(g, 3, factor=s, background=c, eps=1e-7)
    assert torch.allclose(h, jvp[0], rtol=0, atol=1e-6)
    assert not torch.allclose(impulse_response(g, 3, factor=s, background=c), jvp[0],
                              atol=1e-3)


def test_float32_callable_falls_back_to_float32():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 1, 3, padding=1, padding_mode="circular", bias=True)
    f = lambda v: conv(nearest(2)(v))                  # float32 weights: float64 raises
    h = impulse_response(f, 5, factor=2, eps=1.0)
    # the same map in float64, written out: nearest upsampling, then the circular conv
    w = conv.weight.detach().double()[0, 0]
    box = torch.zeros(1, 1, 10, 10, dtype=D)
    box[..., 4:6, 4:6] = 1
    padded = torch.nn.functional.pad(box, (1, 1, 1, 1), mode="circular")
    want = torch.nn.functional.conv2d(padded, w[None, None])[0]     # the bias cancels
    assert h.dtype == D
    assert torch.allclose(h, want, rtol=0, atol=1e-5)
    h32 = impulse_response(f, 5, factor=2, dtype=torch.float32)
    assert torch.allclose(h, h32, rtol=0, atol=0)


def test_polyphase_components_are_the_lr_filters_of_each_output_phase():
    s, m = 2, 3
    k = rand(1, s * m, s * m, seed=5)
    f = splat(k, s)
    g = polyphase(impulse_response(f, m, factor=s), s)
    assert g.shape == (s, s, 1, m, m)
    x = rand(1, 1, 4, 5, seed=6)
    out = f(x)
    for r1 in range(s):
        for r2 in range(s):
            for i1 in range(4):
                for i2 in range(5):
                    # out[s i + r] = Σ_q g_r[q] x[i + m//2 - q], LR indices circular
                    want = sum(g[r1, r2, 0, q1, q2] * x[0, 0, (i1 + m // 2 - q1) % 4,
                                                        (i2 + m // 2 - q2) % 5]
                               for q1 in range(m) for q2 in range(m))
                    assert abs(out[0, 0, s * i1 + r1, s * i2 + r2] - want) < 1e-12


# ---------------------------------------------------------------------------- HyRA split


def test_zero_insert_puts_values_at_the_top_left():
    x = rand(2, 3, 2, 3, seed=7)
    z = zero_insert(x, 3)
    assert z.shape == (2, 3, 6, 9)
    assert torch.equal(z[:, :, ::3, ::3], x)
    mask = torch.ones_like(z, dtype=torch.bool)
    mask[:, :, ::3, ::3] = False
    assert (z[mask] == 0).all()


@pytest.mark.parametrize("s, m", [(1, 3), (2, 3), (3, 3)])
def test_linear_part_of_an_impulse_is_h_and_of_a_linear_map_is_the_map(s, m):
    k = rand(2, s * m, s * m, seed=8)                   # asymmetric: correlation would fail
    delta = torch.zeros(1, 2, m, m, dtype=D)
    delta[:, :, m // 2, m // 2] = 1
    assert torch.allclose(linear_part(delta, k, s)[0], k, rtol=0, atol=1e-12)
    x = rand(3, 2, 4, 5, seed=9)
    N, H, G = decompose(splat(k, s), x, k, s)
    assert torch.allclose(N, splat(k, s)(x), rtol=0, atol=1e-12)
    assert G.abs().max() < 1e-12 and torch.equal(G, N - H)


def test_decompose_with_the_probed_response_of_a_linear_map_gives_zero_g():
    s = 2
    k = rand(1, s * 3, s * 3, seed=10)
    f = splat(k, s)
    h = impulse_response(f, 7, factor=s)                # a larger probe: zero-padded kernel
    x = rand(2, 1, 3, 4, seed=11)                       # image smaller than the kernel
    _, _, G = decompose(f, x, h, s)
    assert G.abs().max() < 1e-12


def test_moving_the_impulse_moves_the_response_by_s():
    s, m = 3, 3
    k = rand(1, s * m, s * m, seed=12)
    h = impulse_response(splat(k, s), m, factor=s)
    for d1, d2 in ((1, 0), (0, 1), (1, -1)):
        delta = torch.zeros(1, 1, m, m, dtype=D)
        delta[0, 0, m // 2 + d1, m // 2 + d2] = 1
        want = torch.roll(h, (s * d1, s * d2), dims=(-2, -1))
        assert torch.allclose(linear_part(delta, h, s)[0], want, rtol=0, atol=1e-12)
        assert torch.allclose(splat(k, s)(delta)[0], want, rtol=0, atol=1e-12)


def test_nonlinear_map_has_nonzero_g_and_h_from_the_jacobian_probe():
    s, c = 2, 0.5
    f = lambda v: nearest(s)(v) ** 2
    h = impulse_response(f, 3, factor=s, background=c, eps=1e-8)
    x = 0.5 + 0.3 * rand(1, 1, 4, 4, seed=13)
    N, H, G = decompose(f, x, h, s)
    assert torch.allclose(H, 2 * c * nearest(s)(x), rtol=0, atol=1e-6)   # H = J(c) x
    assert G.abs().max() > 0.05
    assert torch.allclose(G, nearest(s)(x) ** 2 - H, rtol=0, atol=1e-12)


def test_linear_part_broadcasts_one_kernel_to_all_channels():
    k = rand(6, 6, seed=14)
    x = rand(1, 3, 3, 3, seed=15)
    H = linear_part(x, k, 2)
    for c in range(3):
        assert torch.allclose(H[:, c:c + 1], linear_part(x[:, c:c + 1], k[None], 2), atol=1e-14)


# ---------------------------------------------------------------------------- interpolators


@pytest.mark.parametrize("s", [1, 2, 3, 4])
def test_ideal_sinc_interpolates(s):
    n = 9
    h = ideal_sinc(s, n)
    o = s * (n // 2)
    assert h.shape == (s * n, s * n) and h.dtype == D
    assert h[o, o] == pytest.approx(1.0, abs=1e-15)
    t = torch.arange(s * n) - o
    on_lr_grid = (t % s == 0) & (t != 0)
    assert h[on_lr_grid].abs().max() < 1e-15            # zero rows at multiples of s
    assert h[:, on_lr_grid].abs().max() < 1e-15
    assert torch.allclose(h, h[:, o:o + 1] * h[o:o + 1, :], atol=1e-15)   # separable
    # the negative side lobes are there
    if s > 1:
        assert h[o, o + s + s // 2] < -0.05


@pytest.mark.parametrize("s", [2, 3])
def test_ideal_sinc_sum_tends_to_s_squared(s):
    assert float(ideal_sinc(s, 201).sum()) == pytest.approx(s * s, rel=1e-3)
    assert float(ideal_sinc(s, 5).sum()) != pytest.approx(s * s, rel=1e-3)


def test_ideal_sinc_block_centre_origin():
    h = ideal_sinc(3, 5, origin="block-centre")
    assert h[7, 7] == pytest.approx(1.0)                 # s (n//2) + (s-1)/2 = 6 + 1
    assert torch.allclose(h[1:, 1:], ideal_sinc(3, 5)[:-1, :-1], atol=1e-15)
    h2 = ideal_sinc(2, 5, origin="block-centre")
    assert torch.allclose(h2, h2.flip(-1, -2), atol=1e-15) and h2.max() < 1
    assert torch.equal(ideal_sinc(1, 3), ideal_sinc(1, 3, origin="block-centre"))


def test_ideal_sinc_is_the_response_of_its_linear_part():
    s, n = 2, 7
    h = ideal_sinc(s, n)
    assert torch.allclose(impulse_response(lambda v: linear_part(v, h, s), n, factor=s)[0], h,
                          atol=1e-12)


@pytest.mark.parametrize("s", [2, 3, 4])
def test_bicubic_is_centred_linear_and_circular(s):
    h = impulse_response(lambda v: bicubic(v, s), 7, factor=s)
    assert torch.allclose(h, h.flip(-1, -2), atol=1e-14)     # centred on the block centre
    assert float(h.sum()) == pytest.approx(s * s, abs=1e-12)  # constants are preserved
    x = rand(2, 3, 5, 6, seed=16)
    _, _, G = decompose(lambda v: bicubic(v, s), x, h, s)
    assert G.abs().max() < 1e-12
    _, _, G_edge = decompose(lambda v: bicubic(v, s, circular=False), x, h, s)
    assert G_edge.abs().max() > 1e-2                         # torch clamps the edges
    inner = bicubic(x, s)[..., 2 * s:-2 * s, 2 * s:-2 * s]
    assert torch.allclose(inner, bicubic(x, s, circular=False)[..., 2 * s:-2 * s, 2 * s:-2 * s])


# ---------------------------------------------------------------------------- spectra


def test_energy_above_of_constant_checkerboard_and_cosines():
    ones = torch.ones(2, 8, 8, dtype=D)
    assert energy_above(ones, 0.25) == 0.0
    m = torch.arange(8, dtype=D)
    checker = torch.cos(math.pi * (m[:, None] + m[None, :]))[None]
    assert energy_above(checker, 0.25) == pytest.approx(1.0, abs=1e-13)
    assert energy_above(checker, 0.25, radial=True) == pytest.approx(1.0, abs=1e-13)
    cos = lambda f1, f2: torch.cos(2 * math.pi * (f1 * m[:, None] + f2 * m[None, :]))[None]
    assert energy_above(cos(1 / 8, 0), 0.2) == pytest.approx(0.0, abs=1e-13)
    assert energy_above(cos(3 / 8, 0), 0.2) == pytest.approx(1.0, abs=1e-13)
    assert energy_above(cos(2 / 8, 0), 0.25) == pytest.approx(0.0, abs=1e-13)  # closed band
    assert energy_above(cos(2 / 8, 2 / 8), 0.3) == pytest.approx(0.0, abs=1e-13)
    assert energy_above(cos(2 / 8, 2 / 8), 0.3, radial=True) == pytest.approx(1.0, abs=1e-13)
    half = energy_above(ones + cos(3 / 8, 0), 0.2)          # DC 64, the cosine 32
    assert half == pytest.approx(1 / 3, abs=1e-14)


@pytest.mark.parametrize("s", [2, 3])
def test_zero_insertion_puts_all_but_one_over_s_squared_above_lr_nyquist(s):
    x = rand(2, 3, 5, 7, seed=17)
    out = energy_above(zero_insert(x, s), 1 / (2 * s))
    assert out.shape == (2,) and out.dtype == D
    assert torch.allclose(out, torch.full((2,), 1 - 1 / s ** 2, dtype=D), atol=1e-13)
    # the ideal interpolator keeps almost nothing above it, nearest keeps a lot
    xs = rand(1, 1, 15, 15, seed=18)
    sinc_out = linear_part(xs, ideal_sinc(s, 15), s)[0]
    assert energy_above(sinc_out, 1 / (2 * s)) < 0.02
    assert energy_above(nearest(s)(xs)[0], 1 / (2 * s)) > 0.1


def test_log_spectrum_layout_and_values():
    H, W = 6, 5
    x = torch.full((2, H, W), 0.5, dtype=D)
    spec = log_spectrum(x)
    assert spec.shape == (2, H, W) and spec.dtype == D
    dc = 20 * math.log10(0.5 * math.sqrt(H * W) + 1e-12)
    assert spec[0, H // 2, W // 2] == pytest.approx(dc)
    rest = spec.clone()
    rest[:, H // 2, W // 2] = -240
    assert torch.allclose(rest, torch.full_like(rest, -240.0), atol=1e-3)
    m = torch.arange(W, dtype=D)
    c = torch.cos(2 * math.pi * 2 * m / W)[None, None, :].expand(1, H, W)
    sc = log_spectrum(c, floor=1e-9)
    peaks = (sc[0] > 0).nonzero().tolist()
    assert peaks == [[H // 2, W // 2 - 2], [H // 2, W // 2 + 2]]
    assert float((10 ** (spec / 10)).sum()) == pytest.approx(float((x ** 2).sum()))  # Parseval


# ---------------------------------------------------------------------------- errors


def test_errors():
    f = nearest(2)
    with pytest.raises(ValueError, match="lr_shape must be odd"):
        impulse_response(f, 4, factor=2)
    with pytest.raises(ValueError, match="lr_shape must be an odd positive int"):
        impulse_response(f, (3, 3, 3), factor=2)
    with pytest.raises(ValueError, match="factor must be a positive integer"):
        impulse_response(f, 3, factor=0)
    with pytest.raises(ValueError, match="factor must be a positive integer"):
        impulse_response(f, 3, factor=True)
    with pytest.raises(ValueError, match="channels must be a positive integer"):
        impulse_response(f, 3, channels=0, factor=2)
    with pytest.raises(ValueError, match="eps must be positive"):
        impulse_response(f, 3, factor=2, eps=0.0)
    with pytest.raises(ValueError, match="background must be a finite real"):
        impulse_response(f, 3, factor=2, background=math.nan)
    with pytest.raises(ValueError, match=r"f returned shape \(2, 1, 6, 6\), expected "
                                         r"\(2, 1, 9, 9\)"):
        impulse_response(f, 3, factor=3)
    with pytest.raises(TypeError, match="f must return a torch.Tensor"):
        impulse_response(lambda v: v.numpy(), 3)
    with pytest.raises(TypeError, match="f must be a callable"):
        impulse_response("net", 3)
    with pytest.raises(ValueError, match="eps=1e-10 vanishes"):
        impulse_response(f, 3, factor=2, background=1.0, eps=1e-10, dtype=torch.float32)
    with pytest.raises(ValueError, match="f returned NaN"):
        impulse_response(lambda v: f(v) / 0 * 0, 3, factor=2)
    x = torch.rand(1, 2, 3, 3, dtype=D)
    with pytest.raises(ValueError, match="h must be"):
        linear_part(x, torch.rand(2, 4, 4), 2)            # m = 2 is even
    with pytest.raises(ValueError, match="h must be"):
        linear_part(x, torch.rand(3, 6, 6), 2)            # 3 channels for 2
    with pytest.raises(ValueError, match="x_lr must be"):
        linear_part(x[0], torch.rand(2, 6, 6), 2)
    with pytest.raises(ValueError, match="expected"):
        decompose(f, x, torch.rand(2, 9, 9, dtype=D), 3)
    with pytest.raises(ValueError, match="origin must be"):
        ideal_sinc(2, 3, origin="centre")
    with pytest.raises(ValueError, match="cutoff must be >= 0"):
        energy_above(torch.rand(1, 4, 4), -0.1)
    with pytest.raises(ValueError, match="all zeros"):
        energy_above(torch.zeros(1, 4, 4), 0.1)
    with pytest.raises(ValueError, match="floor must be positive"):
        log_spectrum(torch.rand(4, 4), floor=0)
    with pytest.raises(ValueError, match="h must be a tensor"):
        polyphase(torch.rand(1, 5, 6), 2)
