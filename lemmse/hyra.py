r"""The frequency view of a restorer: impulse responses, HyRA and spectra.

A super-resolution (SR) map ``N`` takes an LR image ``[B, C, h, w]`` to an HR image
``[B, C, s h, s w]`` (``s`` the factor; ``s = 1`` is a denoiser). Deng et al. (ICML 2024,
reference A) observed that the HR response of a trained SR network to an LR impulse looks like
the separable sinc :math:`\mathrm{sinc}(t_1/s)\,\mathrm{sinc}(t_2/s)`, the impulse response of
the ideal ``×s`` interpolator (zero insertion, then an ideal low-pass of cut-off π/s per axis),
and proposed the *hybrid response analysis* (HyRA)

.. math::  N(I) = H(I) + G(I),

where ``H`` is the linear shift-invariant system whose impulse response ``h`` is the probed
one, and ``G = N - H`` is the rest, by definition: whatever ``N`` does that no filter does
(it "injects the high frequencies" above the LR Nyquist frequency). The split is definitional:
any ``h`` gives one; the choice of ``h`` is what carries meaning.

Probing done properly (:func:`impulse_response`)
    ``h = (N(c + ε δ_j) - N(c)) / ε``, with ``δ_j`` an LR impulse (1 in every channel at the
    LR pixel ``j``, 0 elsewhere) on a constant background ``c``, in float64 where ``N``
    accepts it, never clamped nor quantised (the negative side lobes are the point), and with
    ``N(c)`` subtracted (an affine map ``L v + b`` gives ``h = L δ_j``, not ``L δ_j + b``).
    ``c = 0, ε = 1`` is the authors' probe; ``ε → 0`` gives the column ``J_N(c) δ_j`` of the
    Jacobian at the background, the local linearisation. For a linear ``N`` all ``ε`` agree.

Layout and phases
    The LR grid of the probe has odd sizes ``n₁ × n₂`` and the impulse sits at its centre
    pixel ``j = (n₁ // 2, n₂ // 2)``. The HR response is returned as the full HR map
    ``[C, s n₁, s n₂]``, not rolled: LR pixel ``j`` owns the HR block
    ``[s j₁, s j₁ + s) × [s j₂, s j₂ + s)``, which is then the central ``s × s`` block, and the
    block centre ``s j + (s - 1)/2`` is the array centre ``(s n - 1)/2`` (between pixels when
    ``s`` is even). The *origin* of ``h`` is the top-left pixel of that block,
    ``o = (s (n₁ // 2), s (n₂ // 2))``: it is where zero insertion puts the LR value, and the
    displacement 0 of the filter in ``H``. For ``s = 1`` it is the centre pixel and ``h`` is
    the ordinary centred impulse response of a denoiser.

    A map that is equivariant to LR shifts (an LR shift by 1 moves the output by ``s``, as
    convolutions on the LR grid with a pixel-shuffle head are) and linear is, exactly,
    zero insertion followed by a convolution with one HR filter:
    ``N(I)[n] = Σ_j I[j] h[o + n - s j]``. Seen from the HR grid it is periodically
    shift-variant: the output pixel at position ``r ∈ {0 … s-1}²`` inside its block (its
    *phase*) is an LR filter ``g_r`` of the input, ``N(I)[s i + r] = Σ_j g_r[n//2 + i - j] I[j]``,
    with ``g_r[q] = h[s q + r]``. These ``s²`` phases are the polyphase components of the one
    HR map (:func:`polyphase`): a single LR impulse shows all of them at once, because the
    impulse's response covers every output position of every block. What one probe does not
    tell is whether ``N`` is LR-equivariant (boundaries) and how it depends on ``c`` and ``ε``
    (the non-linearity): probe with other ``c`` and ``ε`` for that.

The linear part (:func:`linear_part`, :func:`decompose`)
    ``H(I) = h ⊛ Z_s(I)``: zero insertion :func:`zero_insert` (each LR value at the **top-left**
    pixel of its ``s × s`` block, the authors' convention, zeros elsewhere), then a per-channel
    circular **convolution** with ``h`` about its origin ``o``. With this convention
    ``H(δ_j) = h`` exactly: ``H`` is the LTI system whose impulse response is ``h``. The authors'
    script writes it as a correlation (``conv2d``), which is the same when ``h`` is
    point-symmetric about ``o`` and otherwise mirrors the response.

Spectra (:func:`log_spectrum`, :func:`energy_above`)
    Frequencies are in cycles per (HR) pixel, per axis in ``[-1/2, 1/2)``; the LR Nyquist
    frequency of a ``×s`` map is ``1 / (2 s)``: :func:`energy_above` with that cut-off says how
    much of the energy of ``G`` (or of any image) lies outside the band that the LR grid can
    represent. Both live in ``lemmse.frequency``, with the reference interpolators
    :func:`ideal_sinc` and :func:`bicubic`; all four are re-exported here.

References: the book chapter on super-resolution (``book/15_superresolution.md``); reference
``related-analyses.md`` section A (A.1 observation, A.2 HyRA); Deng, Xu, Duan, Wu, Shu,
L.-J. Deng, *Exploring the Low-Pass Filtering Behavior in Image Super-Resolution*, ICML 2024.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import torch

# the reference interpolators, the spectra and the argument checks live in lemmse.frequency
from lemmse.frequency import (_check_factor, _check_lr_image, _check_lr_shape, _check_real,
                              bicubic, energy_above, ideal_sinc, log_spectrum)

__all__ = [
    "impulse_response",
    "polyphase",
    "zero_insert",
    "linear_part",
    "decompose",
    "ideal_sinc",
    "bicubic",
    "log_spectrum",
    "energy_above",
]

# ----------------------------------------------------------------------------------------
# calling the map under study
# ----------------------------------------------------------------------------------------


def _call(f: Callable, v: torch.Tensor, dtype) -> torch.Tensor:
    """``f(v)`` in float64 when ``dtype`` is None and ``f`` accepts it, else in float32."""
    if dtype is not None:
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"dtype must be None or a floating torch.dtype, got {dtype!r}")
        out = f(v.to(dtype))
    else:
        try:
            out = f(v.to(torch.float64))
        except (RuntimeError, TypeError):           # e.g. float32 weights: "expected Double"
            out = f(v.to(torch.float32))
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"f must return a torch.Tensor [B, C, s h, s w], got "
                        f"{type(out).__name__}")
    return out


def _check_output(out: torch.Tensor, shape: tuple, factor: int) -> torch.Tensor:
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"f returned shape {tuple(out.shape)}, expected {tuple(shape)} "
                         f"(the LR input [B, C, h, w] times factor={factor} per axis); check "
                         f"factor, or that f maps [B, C, h, w] to [B, C, s h, s w]")
    if not bool(torch.isfinite(out).all()):
        raise ValueError("f returned NaN or Inf values; check f on the probe or image input")
    return out.detach().to(torch.float64)


# ----------------------------------------------------------------------------------------
# probing
# ----------------------------------------------------------------------------------------


def impulse_response(f: Callable, lr_shape, channels: int = 1, factor: int = 1,
                     background: float = 0.0, eps: float = 1.0, dtype=None) -> torch.Tensor:
    r"""The HR response of ``f`` to an LR impulse on a constant background.

    .. math::  h = \frac{f(c + \varepsilon\,\delta_j) - f(c)}{\varepsilon},

    with ``δ_j`` the LR image that is 1 in every channel at the centre pixel
    ``j = (n₁ // 2, n₂ // 2)`` and 0 elsewhere, ``c`` the constant image ``background``. Both
    inputs go through ``f`` in one batched call ``f([c, c + ε δ_j])``; nothing is clamped.
    The denominator is the increment actually represented in the compute dtype.

    Layout (see the module docstring): the result is the full HR map, ``h[:, a₁, a₂]`` the
    output at HR pixel ``(a₁, a₂)``. The impulse's HR block is the central ``s × s`` block
    ``[s (n // 2), s (n // 2) + s)`` per axis, whose centre is the array centre; the origin
    used by :func:`linear_part` (displacement 0) is its top-left pixel
    ``o = (s (n₁ // 2), s (n₂ // 2))``. For ``factor = 1`` this is the ordinary centred impulse
    response of a denoiser. The ``s²`` sub-pixel phases are all in this map: see
    :func:`polyphase`.

    Parameters
    ----------
    f : callable
        ``[B, C, n₁, n₂]`` → ``[B, C, s n₁, s n₂]``: a network ``lambda v: model(v, sigma)``, an
        estimator ``lambda v: est(v, sigma)``, :func:`bicubic`, ...
    lr_shape : int or (int, int)
        Odd LR probe size ``(n₁, n₂)``: large enough to hold the response (the receptive
        field, in LR pixels), as ``f``'s boundary handling reaches the edges otherwise.
    channels : int
        Number of channels ``C`` of the input.
    factor : int
        Scale factor ``s`` (1 for a denoiser).
    background : float
        The constant ``c``.
    eps : float
        The impulse height ``ε > 0``: 1 for the authors' probe, small (``1e-3`` … ``1e-6`` in
        float64) for the Jacobian ``J_f(c) δ_j``.
    dtype : torch.dtype or None
        Compute dtype of the call. None: float64, and float32 if ``f`` raises on float64
        (a float32 network); then keep ``ε`` well above the float32 rounding of ``c``.

    Returns
    -------
    Tensor ``[C, s n₁, s n₂]``, float64
        The impulse response ``h``; per channel, the sum over input channels of the response
        (the impulse is in all channels at once, as in the authors' probe).
    """
    if not callable(f):
        raise TypeError(f"f must be a callable [B, C, h, w] -> [B, C, s h, s w], got "
                        f"{type(f).__name__}")
    n1, n2 = _check_lr_shape(lr_shape)
    if isinstance(channels, bool) or not isinstance(channels, numbers.Integral) or channels < 1:
        raise ValueError(f"channels must be a positive integer, got {channels!r}")
    s = _check_factor(factor)
    c = _check_real(background, "background")
    eps = _check_real(eps, "eps", positive=True)
    v = torch.full((2, int(channels), n1, n2), c, dtype=torch.float64)
    v[1, :, n1 // 2, n2 // 2] += eps
    compute = torch.float64 if dtype is None else dtype
    out = _call(f, v, dtype)
    if dtype is None and out.dtype != torch.float64:
        compute = torch.float32
    v_c = v.to(compute)
    step = float(v_c[1, 0, n1 // 2, n2 // 2].double() - v_c[0, 0, n1 // 2, n2 // 2].double())
    if step == 0:
        raise ValueError(f"eps={eps} vanishes against background={c} in {compute}; use a "
                         f"larger eps or float64")
    out = _check_output(out, (2, int(channels), s * n1, s * n2), s)
    return (out[1] - out[0]) / step


def polyphase(h: torch.Tensor, factor: int) -> torch.Tensor:
    r"""The ``s²`` sub-pixel phases of an HR impulse response, as LR filters.

    .. math::  g_{r}[c, q] = h[c, s q + r], \qquad r \in \{0, …, s-1\}^2,

    so that, for a linear LR-equivariant map with response ``h`` (laid out as
    :func:`impulse_response` returns it), the output pixel at position ``r`` inside the HR
    block of LR pixel ``i`` is ``Σ_j g_r[n // 2 + i - j] I[j]`` (circular). ``g_r[n // 2]`` is
    the weight of the LR pixel on the output pixels of its own block.

    Parameters
    ----------
    h : Tensor ``[C, s n₁, s n₂]``
    factor : int
        The scale ``s``.

    Returns
    -------
    Tensor ``[s, s, C, n₁, n₂]``
        ``out[r₁, r₂] = g_(r₁, r₂)``.
    """
    s = _check_factor(factor)
    if not isinstance(h, torch.Tensor) or h.ndim != 3 or h.shape[1] % s or h.shape[2] % s:
        shape = tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__
        raise ValueError(f"h must be a tensor [C, s n1, s n2] with sizes divisible by "
                         f"factor={s}, got {shape}")
    C, S1, S2 = h.shape
    return h.reshape(C, S1 // s, s, S2 // s, s).permute(2, 4, 0, 1, 3)


# ----------------------------------------------------------------------------------------
# the linear part
# ----------------------------------------------------------------------------------------


def zero_insert(x_lr: torch.Tensor, factor: int) -> torch.Tensor:
    r"""Zero-insertion upsampling: ``Z_s(I)[s i] = I[i]``, zero elsewhere.

    Each LR value goes to the **top-left** pixel of its ``s × s`` HR block (the authors'
    convention); the other ``s² - 1`` pixels of the block are 0.

    Parameters
    ----------
    x_lr : Tensor ``[B, C, h, w]``
    factor : int

    Returns
    -------
    Tensor ``[B, C, s h, s w]``, same dtype.
    """
    x_lr = _check_lr_image(x_lr)
    s = _check_factor(factor)
    B, C, h, w = x_lr.shape
    out = x_lr.new_zeros(B, C, s * h, s * w)
    out[:, :, ::s, ::s] = x_lr
    return out


def _kernel_layout(h, channels: int, factor: int) -> torch.Tensor:
    """``h`` as float64 ``[C or 1, s m₁, s m₂]``, checked (odd ``m₁, m₂``)."""
    if not isinstance(h, torch.Tensor) or not h.dtype.is_floating_point:
        raise TypeError(f"h must be a real floating-point tensor [C, s m1, s m2], got "
                        f"{type(h).__name__ if not isinstance(h, torch.Tensor) else h.dtype}")
    if h.ndim == 2:
        h = h[None]
    s = factor
    if h.ndim != 3 or h.shape[0] not in (1, channels) or any(
            k % s or (k // s) % 2 == 0 for k in h.shape[1:]):
        raise ValueError(f"h must be [C, s m1, s m2] (or [s m1, s m2], or C = 1 for all "
                         f"channels) with m1, m2 odd, the layout of impulse_response; got "
                         f"shape {tuple(h.shape)} for factor={s} and C={channels}")
    if not bool(torch.isfinite(h).all()):
        raise ValueError("h holds NaN or Inf values")
    return h.detach().to(torch.float64)


def linear_part(x_lr: torch.Tensor, h: torch.Tensor, factor: int) -> torch.Tensor:
    r"""HyRA's linear part ``H(I)``: zero insertion, then a circular convolution with ``h``.

    .. math::  H(I)[c, n] = \sum_{m} Z_s(I)[c, m]\; h[c, o + n - m]
               = \sum_j I[c, j]\, h[c, o + n - s j],

    indices of the HR image circular (period ``s h × s w``), ``o = (s (m₁ // 2), s (m₂ // 2))``
    the origin of ``h`` (the top-left pixel of its central block, as laid out by
    :func:`impulse_response`), and ``h`` zero outside its array. A kernel larger than the
    image wraps around (its values add up modulo the image size). With this convention
    ``H(δ_j) = h`` for the LR impulse at the centre of an LR image of size ``(m₁, m₂)``.
    Computed with the FFT in float64.

    Parameters
    ----------
    x_lr : Tensor ``[B, C, h, w]``
        LR images.
    h : Tensor ``[C, s m₁, s m₂]``, ``[1, s m₁, s m₂]`` or ``[s m₁, s m₂]``, ``m`` odd
        The impulse response (one per channel, or one for all channels).
    factor : int
        The scale ``s``.

    Returns
    -------
    Tensor ``[B, C, s h, s w]``, float64
    """
    x_lr = _check_lr_image(x_lr)
    s = _check_factor(factor)
    B, C, lh, lw = x_lr.shape
    k = _kernel_layout(h, C, s)
    S1, S2 = s * lh, s * lw
    K1, K2 = k.shape[1:]
    o1, o2 = s * ((K1 // s) // 2), s * ((K2 // s) // 2)
    # the kernel on the HR torus: displacement d = a - o goes to d mod S
    rows = (torch.arange(K1) - o1) % S1
    cols = (torch.arange(K2) - o2) % S2
    torus = k.new_zeros(k.shape[0], S1, S2)
    ch = torch.arange(k.shape[0])[:, None, None]
    torus.index_put_((ch, rows[None, :, None], cols[None, None, :]), k, accumulate=True)
    z = zero_insert(x_lr.detach().to(torch.float64), s)
    return torch.fft.irfft2(torch.fft.rfft2(z) * torch.fft.rfft2(torus), s=(S1, S2))


def decompose(f: Callable, x_lr: torch.Tensor, h: torch.Tensor, factor: int,
              dtype=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""HyRA: ``N(I) = H(I) + G(I)``, with ``N = f``, ``H`` = :func:`linear_part`, ``G = N - H``.

    Parameters
    ----------
    f : callable
        ``[B, C, h, w]`` → ``[B, C, s h, s w]``, as in :func:`impulse_response`.
    x_lr : Tensor ``[B, C, h, w]``
        The LR input ``I``.
    h : Tensor
        The impulse response (see :func:`linear_part` for the layouts accepted).
    factor : int
        The scale ``s``.
    dtype : torch.dtype or None
        Compute dtype of ``f`` (None: float64 if ``f`` accepts it, else float32).

    Returns
    -------
    (N, H, G) : three Tensors ``[B, C, s h, s w]``, float64
        ``G = N - H`` exactly. ``G = 0`` (up to rounding) iff ``f`` is the LTI system of ``h``.
    """
    if not callable(f):
        raise TypeError(f"f must be a callable [B, C, h, w] -> [B, C, s h, s w], got "
                        f"{type(f).__name__}")
    x_lr = _check_lr_image(x_lr)
    s = _check_factor(factor)
    H = linear_part(x_lr, h, s)
    N = _check_output(_call(f, x_lr.detach(), dtype), tuple(H.shape), s)
    return N, H, N - H
