r"""Float64 brute-force oracles for the four estimators (book chapters 2-5).

These are written to be obviously correct, not fast: explicit loops over positions,
direct differences :math:`\|q - k\|^2` (no GEMM expansion), dense matrices for the
blur and its inverse filter, everything in float64 with plain torch.
They deliberately use nothing from ``lemmse``: an operator is described by a small
tuple, and the tests build the matching ``lemmse.operators`` object separately.

Conventions (shared with ``lemmse``, see ``/tmp/contract.md`` and the math reference):

- images are ``[N, C, H, W]``; everything is circular (periodic);
- a patch :math:`\Pi_i v` is the P x P circular window centred at pixel ``i = (r, c)``
  over all C channels, flattened channel-major then row then column (D = C P^2);
- ``torch.roll(x, (a, b))[r, c] = x[r - a, c - b]`` is the shift :math:`T_g`, g = (a, b);
- an operator is ``("denoising",)``, ``("inpainting", mask)`` with mask ``[C or 1, H, W]``
  of 0/1 (1 = observed), or ``("blur", kernel)`` with an odd ``[kh, kw]`` kernel;
- the blur is a true circular convolution,
  :math:`(A x)[r, c] = \sum_{a, b} k[a, b]\, x[r - a + c_h, c - b + c_w]`,
  whose transfer function is the FFT of the kernel zero-padded and rolled so that its
  centre sits at (0, 0);
- the physics-aware pre-inverse of a blur has transfer :math:`1 / (\hat k + 10^{-7})`,
  i.e. it is the matrix :math:`(A + 10^{-7} I)^{-1}` (the identity has transfer 1).
"""

from __future__ import annotations

import functools
import math

import torch

F64 = torch.float64
EPS_INVERSE = 1e-7


# ----------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------


def single_threaded(fn):
    """Run fn with one torch thread (restored afterwards): the oracles do many tiny operations, for
    which thread start-up costs more than it saves (ten times more on a loaded 2-core machine)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(n)

    return wrapper



def positions(H: int, W: int):
    """All pixel positions (r, c) in row-major order."""
    return [(r, c) for r in range(H) for c in range(W)]


def window_index(r: int, c: int, P: int, H: int, W: int):
    """Row and column indices of the P x P circular window centred at (r, c)."""
    h = P // 2
    rows = [(r + d) % H for d in range(-h, h + 1)]
    cols = [(c + d) % W for d in range(-h, h + 1)]
    return rows, cols


def window(v: torch.Tensor, r: int, c: int, P: int) -> torch.Tensor:
    """Patch Pi_(r,c) v of v [..., C, H, W], flattened to [..., C*P*P]."""
    H, W = v.shape[-2:]
    rows, cols = window_index(r, c, P, H, W)
    patch = v[..., rows, :][..., cols]
    return patch.reshape(*v.shape[:-3], -1)


def sigma_vector(sigma, B: int) -> torch.Tensor:
    """sigma as a float64 vector of length B (float -> repeated)."""
    s = torch.as_tensor(sigma, dtype=F64).reshape(-1)
    if s.numel() == 1:
        s = s.repeat(B)
    assert s.numel() == B
    return s


def softmax_weights(logits: torch.Tensor) -> torch.Tensor:
    """exp(logits - max) / sum, over all entries of a tensor (-inf entries get weight 0)."""
    m = logits.max()
    e = torch.exp(logits - m)
    return e / e.sum()


# ----------------------------------------------------------------------------------------
# Operators in float64, by brute force
# ----------------------------------------------------------------------------------------


def circular_conv(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """(k conv x)[r, c] = sum_{a,b} k[a,b] x[r - a + ch, c - b + cw], as a sum of rolls."""
    kernel = kernel.to(F64)
    kh, kw = kernel.shape
    ch, cw = kh // 2, kw // 2
    out = torch.zeros_like(x, dtype=F64)
    for a in range(kh):
        for b in range(kw):
            out = out + kernel[a, b] * torch.roll(x.to(F64), shifts=(a - ch, b - cw), dims=(-2, -1))
    return out


def conv_matrix(kernel: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Dense [H*W, H*W] matrix of the circular convolution, column m = conv(unit impulse m)."""
    M = torch.zeros(H * W, H * W, dtype=F64)
    for m in range(H * W):
        e = torch.zeros(H * W, dtype=F64)
        e[m] = 1.0
        M[:, m] = circular_conv(e.reshape(H, W), kernel).reshape(-1)
    return M


def inverse_filter_matrix(kernel: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Dense matrix of the regularised inverse filter, transfer 1/(khat + 1e-7) = (A + 1e-7 I)^-1."""
    return _inverse_filter_matrix(tuple(map(tuple, kernel.to(F64).tolist())), H, W).clone()


@functools.lru_cache(maxsize=32)
@single_threaded
def _inverse_filter_matrix(kernel: tuple, H: int, W: int) -> torch.Tensor:
    M = conv_matrix(torch.tensor(kernel, dtype=F64), H, W)
    return torch.linalg.inv(M + EPS_INVERSE * torch.eye(H * W, dtype=F64))


def apply_pixel_matrix(M: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Apply an [H*W, H*W] matrix to every channel of x [..., C, H, W]."""
    H, W = x.shape[-2:]
    flat = x.to(F64).reshape(*x.shape[:-2], H * W)
    return (flat @ M.T).reshape(x.shape)


def apply_A(op, x: torch.Tensor) -> torch.Tensor:
    """Forward operator A in float64."""
    kind = op[0]
    x = x.to(F64)
    if kind == "denoising":
        return x.clone()
    if kind == "inpainting":
        return op[1].to(F64) * x
    if kind == "blur":
        return circular_conv(x, op[1])
    raise ValueError(kind)


def full_mask(op, C: int, H: int, W: int) -> torch.Tensor:
    """The inpainting mask broadcast to [C, H, W] (float64 0/1)."""
    return op[1].to(F64).expand(C, H, W).clone()


# ----------------------------------------------------------------------------------------
# The estimators
# ----------------------------------------------------------------------------------------


@single_threaded
def mmse(train, y, sigma, op) -> torch.Tensor:
    """x_hat(y) = sum_n w_n x_n, w = softmax_n(-||y - A x_n||^2 / (2 sigma^2))."""
    train, y = train.to(F64), y.to(F64)
    s = sigma_vector(sigma, y.shape[0])
    Ax = apply_A(op, train)
    out = torch.empty_like(y)
    for b in range(y.shape[0]):
        d = ((y[b] - Ax) ** 2).sum(dim=(1, 2, 3))  # [N]
        w = softmax_weights(-d / (2 * s[b] ** 2))
        out[b] = (w[:, None, None, None] * train).sum(0)
    return out


@single_threaded
def equivariant_mmse(train, y, sigma, op) -> torch.Tensor:
    """x_hat(y) = sum_{n,g} w_{n,g} T_g x_n, w = softmax_{n,g}(-||y - T_g A x_n||^2 / (2 sigma^2))."""
    train, y = train.to(F64), y.to(F64)
    s = sigma_vector(sigma, y.shape[0])
    H, W = train.shape[-2:]
    Ax = apply_A(op, train)
    keys, values = [], []
    for a, b in positions(H, W):
        keys.append(torch.roll(Ax, shifts=(a, b), dims=(-2, -1)))
        values.append(torch.roll(train, shifts=(a, b), dims=(-2, -1)))
    keys = torch.cat(keys)  # [G*N, C, H, W]
    values = torch.cat(values)
    out = torch.empty_like(y)
    for bi in range(y.shape[0]):
        d = ((y[bi] - keys) ** 2).sum(dim=(1, 2, 3))
        w = softmax_weights(-d / (2 * s[bi] ** 2))
        out[bi] = (w[:, None, None, None] * values).sum(0)
    return out


@single_threaded
def local_mmse(train, y, sigma, op, P: int) -> torch.Tensor:
    """x_hat(y)[:, i] = sum_n x_n[:, i] softmax_n(-||Pi_i y - Pi_i A x_n||^2 / (2 sigma^2))."""
    train, y = train.to(F64), y.to(F64)
    s = sigma_vector(sigma, y.shape[0])
    H, W = train.shape[-2:]
    Ax = apply_A(op, train)
    out = torch.empty_like(y)
    for b in range(y.shape[0]):
        for r, c in positions(H, W):
            q = window(y[b], r, c, P)  # [D]
            k = window(Ax, r, c, P)  # [N, D]
            d = ((q - k) ** 2).sum(-1)
            w = softmax_weights(-d / (2 * s[b] ** 2))
            out[b, :, r, c] = (w[:, None] * train[:, :, r, c]).sum(0)
    return out


def all_windows(v: torch.Tensor, P: int) -> torch.Tensor:
    """All windows of v [N, C, H, W]: [N, H, W, D], entry [n, r, c] = Pi_(r,c) v_n."""
    N, C, H, W = v.shape
    out = torch.empty(N, H, W, C * P * P, dtype=F64)
    for r, c in positions(H, W):
        out[:, r, c] = window(v.to(F64), r, c, P)
    return out


@single_threaded
def lemmse_logits(train, y, sigma, op, P: int, preinverse: str = "identity") -> torch.Tensor:
    """Attention logits of the LE-MMSE, [B, H, W, N, H, W]: entry [b, i, n, j] is the log-weight of
    key (n, j) for query pixel i of image b (-inf where a key is not admissible).

    preinverse "identity": -||Pi_i y - Pi_j A x_n||^2 / (2 sigma^2).
    preinverse "inverse", blur: v = B y, keys Pi_j(B A x_n), distance (q-k)^T S^-1 (q-k) / (2 sigma^2)
        with S = Q Q^T, Q = Pi_i B (one block per channel), built from the dense matrix of B.
    preinverse "inverse", inpainting: v = mask * y; key position j admissible iff the mask window at j
        equals the mask window at i (all channels); distance over the observed entries only.
    preinverse "inverse", denoising: B = I, same as "identity".
    """
    train, y = train.to(F64), y.to(F64)
    B_, C, H, W = y.shape
    N = train.shape[0]
    s = sigma_vector(sigma, B_)
    kind = op[0]
    D = C * P * P
    logits = torch.empty(B_, H, W, N, H, W, dtype=F64)

    if preinverse == "identity" or (preinverse == "inverse" and kind == "denoising"):
        keys = all_windows(apply_A(op, train), P)  # [N, H, W, D]
        for b in range(B_):
            for r, c in positions(H, W):
                q = window(y[b], r, c, P)
                d = ((q - keys) ** 2).sum(-1)  # [N, H, W]
                logits[b, r, c] = -d / (2 * s[b] ** 2)
        return logits

    if preinverse != "inverse":
        raise ValueError(preinverse)

    if kind == "blur":
        Bmat = inverse_filter_matrix(op[1], H, W)
        v = apply_pixel_matrix(Bmat, y)  # B y
        keys = all_windows(apply_pixel_matrix(Bmat, apply_A(op, train)), P)  # Pi_j B A x_n
        for r, c in positions(H, W):
            S_inv = torch.linalg.inv(window_covariance(Bmat, r, c, P, C, H, W))
            for b in range(B_):
                q = window(v[b], r, c, P)
                diff = (q - keys).reshape(-1, D)  # [N*H*W, D]
                d = ((diff @ S_inv) * diff).sum(-1).reshape(N, H, W)  # (q-k)^T S^-1 (q-k)
                logits[b, r, c] = -d / (2 * s[b] ** 2)
        return logits

    if kind == "inpainting":
        mask = full_mask(op, C, H, W)
        v = mask * y
        keys = all_windows(mask * apply_A(op, train), P)  # Pi_j (B A x_n), B = mask
        patterns = all_windows(mask[None], P)[0]  # [H, W, D]
        for b in range(B_):
            for r, c in positions(H, W):
                pat = patterns[r, c]  # [D] 0/1
                admissible = (patterns == pat).all(-1)  # [H, W]
                obs = pat.bool()
                q = window(v[b], r, c, P)
                d = ((q[obs] - keys[..., obs]) ** 2).sum(-1)  # [N, H, W]
                lg = -d / (2 * s[b] ** 2)
                lg = torch.where(admissible[None], lg, torch.full_like(lg, -math.inf))
                logits[b, r, c] = lg
        return logits

    raise ValueError(kind)


def window_covariance(Bmat, r, c, P, C, H, W) -> torch.Tensor:
    """S = Q Q^T, Q = rows of the (per channel) matrix of B in the window at (r, c): the covariance
    of the window of B e for white e, channels independent. Shape [D, D], D = C P^2."""
    rows, cols = window_index(r, c, P, H, W)
    idx = [rr * W + cc for rr in rows for cc in cols]
    Q = Bmat[idx]  # [P*P, H*W]
    S1 = Q @ Q.T
    return torch.block_diag(*([S1] * C))


@single_threaded
def lemmse_from_logits(train, logits) -> torch.Tensor:
    """x_hat[b, :, i] = sum_{n,j} softmax(logits[b, i])[n, j] x_n[:, j]."""
    train = train.to(F64)
    B_, H, W = logits.shape[:3]
    C = train.shape[1]
    out = torch.empty(B_, C, H, W, dtype=F64)
    values = train.permute(0, 2, 3, 1)  # [N, H, W, C]
    for b in range(B_):
        for r, c in positions(H, W):
            w = softmax_weights(logits[b, r, c])  # [N, H, W]
            out[b, :, r, c] = (w[..., None] * values).sum(dim=(0, 1, 2))
    return out


def lemmse(train, y, sigma, op, P: int, preinverse: str = "identity") -> torch.Tensor:
    """LE-MMSE by brute force (see lemmse_logits)."""
    return lemmse_from_logits(train, lemmse_logits(train, y, sigma, op, P, preinverse))


# ----------------------------------------------------------------------------------------
# Posterior diagnostics
# ----------------------------------------------------------------------------------------


@single_threaded
def posterior_stats(logits: torch.Tensor):
    """From logits [B, H, W, N, H, W]: weights (same shape), participation 1/sum w^2 [B, H, W],
    n50 (smallest m such that the m largest weights sum to >= 0.5) [B, H, W], and the margins
    (0.5 - sum of the n50-1 largest, sum of the n50 largest - 0.5) that say how robust n50 is."""
    B_, H, W = logits.shape[:3]
    weights = torch.empty_like(logits)
    part = torch.empty(B_, H, W, dtype=F64)
    n50 = torch.empty(B_, H, W, dtype=torch.long)
    margin = torch.empty(B_, H, W, dtype=F64)
    for b in range(B_):
        for r, c in positions(H, W):
            w = softmax_weights(logits[b, r, c])
            weights[b, r, c] = w
            part[b, r, c] = 1.0 / (w**2).sum()
            srt = torch.sort(w.reshape(-1), descending=True).values
            cum = torch.cumsum(srt, 0)
            m = int((cum < 0.5).sum()) + 1  # first index where cum >= 0.5, 1-based
            n50[b, r, c] = m
            below = 0.5 - (cum[m - 2] if m >= 2 else torch.tensor(0.0, dtype=F64))
            above = cum[m - 1] - 0.5
            margin[b, r, c] = min(float(below), float(above))
    return weights, part, n50, margin


@single_threaded
def log_density(logits: torch.Tensor, sigma, D: int) -> torch.Tensor:
    """log mean_{n,j} N(q; k_{n,j}, sigma^2 I_D) = logsumexp(logits) - log K - (D/2) log(2 pi sigma^2)."""
    B_, H, W = logits.shape[:3]
    K = logits[0, 0, 0].numel()
    s = sigma_vector(sigma, B_)
    out = torch.empty(B_, H, W, dtype=F64)
    for b in range(B_):
        for r, c in positions(H, W):
            out[b, r, c] = (
                torch.logsumexp(logits[b, r, c].reshape(-1), 0)
                - math.log(K)
                - 0.5 * D * math.log(2 * math.pi * float(s[b]) ** 2)
            )
    return out


# ----------------------------------------------------------------------------------------
# Test data
# ----------------------------------------------------------------------------------------


def smooth_images(n: int, C: int, H: int, W: int, seed: int) -> torch.Tensor:
    """n random smooth-plus-edge images in [0, 1], float64 values exactly representable in float32.

    Each image is a blurred white-noise field (circular Gaussian low-pass in Fourier) plus a
    step edge at a random angle, rescaled to [0.05, 0.95]: no flat regions, so no two patches
    coincide (which keeps the argmax/top-k tests free of ties)."""
    g = torch.Generator().manual_seed(seed)
    fy = torch.fft.fftfreq(H, dtype=F64)[:, None]
    fx = torch.fft.fftfreq(W, dtype=F64)[None, :]
    lowpass = torch.exp(-(fy**2 + fx**2) / (2 * 0.15**2))
    rr = torch.arange(H, dtype=F64)[:, None] - H / 2
    cc = torch.arange(W, dtype=F64)[None, :] - W / 2
    imgs = torch.empty(n, C, H, W, dtype=F64)
    for i in range(n):
        noise = torch.randn(C, H, W, generator=g, dtype=F64)
        field = torch.fft.ifft2(torch.fft.fft2(noise) * lowpass).real
        theta = float(torch.rand(1, generator=g, dtype=F64)) * 2 * math.pi
        offset = float(torch.rand(1, generator=g, dtype=F64)) * 2 - 1
        edge = ((math.cos(theta) * rr + math.sin(theta) * cc) > offset).to(F64)
        x = field / field.std() + 0.8 * edge
        x = x - x.amin(dim=(-2, -1), keepdim=True)
        x = x / x.amax(dim=(-2, -1), keepdim=True)
        imgs[i] = 0.05 + 0.9 * x
    return imgs.to(torch.float32).to(F64)


def box_mask(C: int, H: int, W: int, size: int) -> torch.Tensor:
    """[1, H, W] float64 mask with a size x size hole (0s) centred."""
    m = torch.ones(1, H, W, dtype=F64)
    r0, c0 = (H - size) // 2, (W - size) // 2
    m[:, r0 : r0 + size, c0 : c0 + size] = 0
    return m


def random_mask(C: int, H: int, W: int, fraction: float, seed: int, per_channel: bool = False) -> torch.Tensor:
    """Float64 mask with round(fraction * H * W) missing pixels per channel, [1 or C, H, W]."""
    g = torch.Generator().manual_seed(seed)
    k = round(fraction * H * W)
    layers = []
    for _ in range(C if per_channel else 1):
        m = torch.ones(H * W, dtype=F64)
        m[torch.randperm(H * W, generator=g)[:k]] = 0
        layers.append(m.reshape(H, W))
    return torch.stack(layers)


# ----------------------------------------------------------------------------------------
# Extended precision: the physics-aware blur when float64 itself is not enough
# ----------------------------------------------------------------------------------------


def lemmse_inverse_blur_mp(train, y, sigma: float, kernel, P: int, digits: int = 40) -> torch.Tensor:
    """The physics-aware blur LE-MMSE (one channel) in ``digits`` significant digits (mpmath).

    For a kernel whose transfer function vanishes somewhere (a zero at the Nyquist frequency),
    ``B = (A + 1e-7 I)^-1`` multiplies that frequency by 1e7, the window covariance ``S`` has a
    condition number near 1e13, and the float64 brute force above loses the estimate (its ``S``
    is formed from a product of two such matrices).  Here everything after the exact dyadic
    blur matrix is computed in ``digits`` digits: ``B``, the query and key windows, ``S^-1``, the
    distances ``(q - k)^T S^-1 (q - k)`` and the softmax.  Slow: tiny problems only.
    """
    import mpmath as mp

    with mp.workdps(digits):
        train, y = train.to(F64), y.to(F64)
        H, W = y.shape[-2:]
        n = H * W
        A = conv_matrix(kernel.to(F64), H, W)
        Am = mp.matrix([[mp.mpf(float(v)) for v in row] for row in A.tolist()])
        Bm = (Am + mp.mpf(EPS_INVERSE) * mp.eye(n)) ** -1
        win = []
        for r, c in positions(H, W):
            rows, cols = window_index(r, c, P, H, W)
            win.append([rr * W + cc for rr in rows for cc in cols])
        BBt = Bm * Bm.T
        S = mp.matrix([[BBt[a, b] for b in win[0]] for a in win[0]])  # stationary: any window
        Si = S ** -1

        def column(img):
            return mp.matrix([mp.mpf(float(v)) for v in img.reshape(-1).tolist()])

        keys = []  # [N][H*W] windows of B A x_n
        for x in train[:, 0]:
            v = Bm * (Am * column(x))
            keys.append([[v[k] for k in w] for w in win])
        values = [[mp.mpf(float(v)) for v in x.reshape(-1).tolist()] for x in train[:, 0]]
        out = torch.empty(y.shape[0], 1, H, W, dtype=F64)
        for b in range(y.shape[0]):
            q = Bm * column(y[b, 0])
            for i, w in enumerate(win):
                qi = [q[k] for k in w]
                logits, vals = [], []
                for kn, vn in zip(keys, values):
                    for j in range(n):
                        d = mp.matrix([qa - ka for qa, ka in zip(qi, kn[j])])
                        logits.append(-(d.T * Si * d)[0] / (2 * mp.mpf(sigma) ** 2))
                        vals.append(vn[j])
                top = max(logits)
                ws = [mp.exp(lg - top) for lg in logits]
                out[b, 0].view(-1)[i] = float(mp.fsum(wv * v for wv, v in zip(ws, vals)) / mp.fsum(ws))
        return out
