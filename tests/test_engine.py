"""The streaming engine (lemmse.engine): back-ends, packing, chunking and precision paths.

The estimator-level oracles live in test_estimators.py; these tests pin down the engine's own
code paths that those tiny odd-sized images do not reach (the packed native layout needs H*W to
be a multiple of 16) and compare every path with a float64 direct-difference reference.
"""

import math

import pytest
import torch

import lemmse
from lemmse import engine
from lemmse.engine import KeyChunk, StreamingAttention

needs_native = pytest.mark.skipif(engine.load_kernel() is None,
                                  reason="native kernel unavailable (no AVX-512 or AVX2, or no "
                                         "compiler)")


def reference(q, k, v, sigma, q_groups=None, k_groups=None):
    """softmax(-|q-k|^2/2 sigma^2) @ v in float64 by direct differences, optional groups."""
    q, k, v = q.double(), k.double(), v.double()
    d2 = ((q[:, None, :] - k[None, :, :]) ** 2).sum(-1)
    logits = -d2 / (2 * sigma.double()[:, None] ** 2)
    if q_groups is not None:
        logits = logits.masked_fill(q_groups[:, None] != k_groups[None, :], -math.inf)
    return torch.softmax(logits, 1) @ v, torch.logsumexp(logits, 1)


def smooth(n, c, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, c, h // 2, w // 2, generator=g)
    return torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)


@pytest.mark.parametrize("backend", ["torch", pytest.param("native", marks=needs_native)])
@pytest.mark.parametrize("sigma", [0.03, 0.3])
@pytest.mark.parametrize("groups", [False, True])
def test_streaming_attention_matches_reference(backend, sigma, groups):
    g = torch.Generator().manual_seed(1)
    M, K, D, Cv = 37, 203, 13, 3
    q = torch.rand(M, D, generator=g)
    k = torch.rand(K, D, generator=g)
    v = torch.rand(K, Cv, generator=g)
    s = torch.full((M,), sigma) * (1 + torch.rand(M, generator=g))  # per-query sigma
    if groups:  # three groups of uneven sizes (not multiples of 16)
        qg = torch.tensor([0] * 10 + [1] * 20 + [2] * 7)
        kg = torch.tensor([0] * 50 + [1] * 120 + [2] * 33)
        q_ptr, k_ptr = torch.tensor([0, 10, 30, 37]), torch.tensor([0, 50, 170, 203])
    else:
        qg = kg = q_ptr = k_ptr = None
    ref, lse_ref = reference(q, k, v, s, qg, kg)
    att = StreamingAttention(q, s, q_ptr, value_dim=Cv, memory_budget=1 << 20, backend=backend)
    # feed the keys in three chunks, split inside every group
    if groups:
        cuts = [(0, 20, 0, 60, 0, 11), (20, 50, 60, 120, 11, 33)]
        for a0, a1, b0, b1, c0, c1 in cuts:
            sel = torch.cat([torch.arange(a0, a1), torch.arange(50 + b0, 50 + b1),
                             torch.arange(170 + c0, 170 + c1)])
            ptr = torch.tensor([0, a1 - a0, a1 - a0 + b1 - b0, a1 - a0 + b1 - b0 + c1 - c0])
            att.update(KeyChunk(k[sel], v[sel], ptr))
    else:
        for c0, c1 in [(0, 64), (64, 65), (65, 203)]:
            att.update(KeyChunk(k[c0:c1], v[c0:c1]))
    out, lse = att.result()
    assert att.backend == backend
    assert (out.double() - ref).abs().max() < 1e-5
    assert (lse.double() - lse_ref).abs().max() < 1e-3 * (1 + lse_ref.abs().max())
    assert torch.equal(att.n_keys, torch.bincount(kg)[qg] if groups else torch.full((M,), K))


def test_normalising_per_chunk_then_averaging_is_wrong():
    """The online log-sum-exp is needed: averaging per-chunk softmax outputs differs."""
    g = torch.Generator().manual_seed(2)
    q, k, v = torch.rand(5, 4, generator=g), torch.rand(40, 4, generator=g), torch.rand(40, 1,
                                                                                       generator=g)
    s = torch.full((5,), 0.2)
    ref, _ = reference(q, k, v, s)
    naive = (reference(q, k[:10], v[:10], s)[0] + reference(q, k[10:], v[10:], s)[0]) / 2
    assert (naive - ref).abs().max() > 1e-3
    att = StreamingAttention(q.double(), s.double(), value_dim=1, memory_budget=1 << 20)
    att.update(KeyChunk(k[:10].double(), v[:10].double()))
    att.update(KeyChunk(k[10:].double(), v[10:].double()))
    assert (att.result()[0] - ref).abs().max() < 1e-12


def test_update_logits_equals_update():
    """Precomputed logits (q.k - |k|^2/2) / sigma^2 fed by update_logits give the same output, lse
    and diagnostics as the keys fed by update; wrong shapes are refused."""
    g = torch.Generator().manual_seed(3)
    M, K, D, Cv = 6, 50, 5, 2
    q, k = torch.rand(M, D, generator=g, dtype=torch.float64), torch.rand(K, D, generator=g,
                                                                         dtype=torch.float64)
    v = torch.rand(K, Cv, generator=g, dtype=torch.float64)
    s = torch.full((M,), 0.15, dtype=torch.float64)
    kw = dict(value_dim=Cv, memory_budget=1 << 20, backend="torch", track=True, topk=3)
    a, b = StreamingAttention(q, s, **kw), StreamingAttention(q, s, **kw)
    ids = torch.arange(K) + 100
    L = (q @ k.T - 0.5 * (k * k).sum(1)) / s[:, None] ** 2
    for p in range(2):
        if p:
            a.begin_second_pass()
            b.begin_second_pass()
        for c0, c1 in [(0, 20), (20, K)]:
            a.update(KeyChunk(k[c0:c1], v[c0:c1], None, ids[c0:c1]))
            b.update_logits(L[:, c0:c1], ids[c0:c1], v[c0:c1])
    (oa, la), (ob, lb) = a.result(), b.result()
    assert (oa - ob).abs().max() < 1e-12 and (la - lb).abs().max() < 1e-10
    da, db = a.diagnostics(), b.diagnostics()
    for name in ("participation", "topk_weights"):
        assert (da[name] - db[name]).abs().max() < 1e-12, name
    assert torch.equal(da["topk_ids"], db["topk_ids"]) and torch.equal(da["n50"], db["n50"])
    with pytest.raises(ValueError, match="logits must have shape"):
        b.update_logits(L[:2], ids)
    with pytest.raises(ValueError, match="ids must have shape"):
        b.update_logits(L, ids[:3])
    c = StreamingAttention(q, s, value_dim=Cv, memory_budget=1 << 20, backend="torch")
    with pytest.raises(ValueError, match="values"):
        c.update_logits(L, ids)


@needs_native
@pytest.mark.parametrize("C", [1, 3])
@pytest.mark.parametrize("physics", ["agnostic", "blur-aware"])
@pytest.mark.parametrize("sigma", [0.05, 0.2])
def test_packed_native_path_matches_float64(C, physics, sigma, native_isa):
    """8x8 images (H*W = 64): the estimator packs keys straight into the kernel layout."""
    train = smooth(6, C, 8, 8, 3)
    x = smooth(2, C, 8, 8, 4)
    if physics == "agnostic":
        op, pre = lemmse.Denoising(), "identity"
    else:
        op, pre = lemmse.Blur.gaussian((C, 8, 8), 0.7), "inverse"
    y = op.measure(x, sigma, generator=torch.Generator().manual_seed(5))
    fast = lemmse.LEMMSE(train, op, patch_size=3, preinverse=pre, backend="native")
    slow = lemmse.LEMMSE(train.double(), op, patch_size=3, preinverse=pre, backend="torch")
    small = lemmse.LEMMSE(train, op, patch_size=3, preinverse=pre, backend="native",
                          memory_budget=4096)  # one training image per chunk
    ref = slow(y.double(), sigma)
    assert (fast(y, sigma).double() - ref).abs().max() < 1e-5
    assert (small(y, sigma).double() - ref).abs().max() < 1e-5


@needs_native
def test_native_and_torch_backends_agree_on_real_data(real_data_root):
    train = lemmse.load_dataset("fashion-mnist", "train", n=200, root=real_data_root)
    x = lemmse.load_dataset("fashion-mnist", "test", n=2, root=real_data_root)
    y = lemmse.Denoising().measure(x, 0.2, generator=torch.Generator().manual_seed(0))
    a = lemmse.LEMMSE(train, patch_size=5, backend="native")(y, 0.2)
    b = lemmse.LEMMSE(train.double(), patch_size=5, backend="torch")(y.double(), 0.2)
    assert (a.double() - b).abs().max() < 1e-5


def test_isa_selection(monkeypatch):
    """The instruction set of the native kernels: the CPU's best, AVX2 on request, none when
    switched off; a bad request names the variable."""
    from lemmse import _native

    own = _native.isa()
    assert own in (None, "avx512", "avx2")
    monkeypatch.setenv("LEMMSE_ISA", "avx2")
    assert _native.isa() == (None if own is None else "avx2")
    monkeypatch.setenv("LEMMSE_ISA", "sse2")
    with pytest.raises(ValueError, match="LEMMSE_ISA"):
        _native.isa()
    monkeypatch.delenv("LEMMSE_ISA")
    monkeypatch.setenv("LEMMSE_NATIVE", "0")
    assert _native.isa() is None and engine.load_kernel() is None
    assert "-mno-avx512f" in _native._flags("avx2") and "-mavx512f" in _native._flags("avx512")


def test_choose_backend_rules():
    cpu = torch.device("cpu")
    assert engine.choose_backend(25, 1, torch.float64, cpu) == "torch"
    assert engine.choose_backend(25, 5, torch.float32, cpu) == "torch"
    with pytest.raises(ValueError, match="backend"):
        engine.choose_backend(25, 1, torch.float32, cpu, "cuda")
    with pytest.raises(ValueError, match="native"):
        engine.choose_backend(25, 1, torch.float64, cpu, "native")
    if engine.load_kernel() is not None:
        assert engine.choose_backend(25, 1, torch.float32, cpu) == "native"
        assert engine.choose_backend(363, 3, torch.float32, cpu) == "native"  # any D


# ---------------------------------------------------------------- large D (wide native tiles)
def clustered(M, K, D, Cv, sigma, seed, centre=0.3):
    """Queries and keys around one centre, spread so that tens of keys share the softmax mass
    (|q - k|^2 / 2 sigma^2 of a few nats) whatever sigma and D: a non-degenerate test.  With the
    centre at 0, a zero padding key would get a logit of the same order as the real keys."""
    g = torch.Generator().manual_seed(seed)
    c = centre * torch.rand(D, generator=g)
    tau = 1.5 * sigma / math.sqrt(D)
    q = c + tau * torch.randn(M, D, generator=g)
    k = c + tau * torch.randn(K, D, generator=g)
    v = torch.rand(K, Cv, generator=g)
    s = sigma * (1 + 0.2 * torch.rand(M, generator=g))  # per-query sigma
    return q, k, v, s


def native_attention(q, s, chunks, Cv, q_ptr=None, nthreads=None):
    att = StreamingAttention(q, s, q_ptr, value_dim=Cv, memory_budget=1 << 20, backend="native")
    if nthreads is not None:
        att.nthreads = nthreads
    for kc in chunks:
        att.update(kc)
    return att.result()


@needs_native
@pytest.mark.parametrize("D", [48, 97, 150, 363])
@pytest.mark.parametrize("sigma", [0.05, 0.2, 1.0])
@pytest.mark.parametrize("direct", [False, True])
@pytest.mark.parametrize("Cv", [1, 2, 3, 4])
def test_native_large_dim_matches_float64(D, sigma, direct, Cv, monkeypatch, native_isa):
    """Wide tiles: 12 query rows x 2 key blocks on AVX-512 (6 rows x 1 block on AVX2), every
    remainder height (8, 4, 2, 1; on AVX2 4, 3, 2, 1) and a remainder of one key block, a partial
    last block, both logit modes (forced through DIRECT_SIGMA).  Run once per instruction set
    (the ``native_isa`` fixture)."""
    small_sigma = sigma < engine.DIRECT_SIGMA
    monkeypatch.setattr(engine, "DIRECT_SIGMA", math.inf if direct else 0.0)
    # rows: AVX-512 36 + 4 + 2 + 1, 36 + 8 + 2 + 1, 36 + 8 + 1, 36 + 8;
    #       AVX2   42 + 1, 42 + 4 + 1, 42 + 3, 42 + 2
    M = {1: 43, 2: 47, 3: 45, 4: 44}[Cv]
    q, k, v, s = clustered(M, 300, D, Cv, sigma, seed=D + Cv, centre=0.3 if Cv % 2 else 0.0)
    ref, lse_ref = reference(q, k, v, s)
    # chunks of 8 blocks (8 keys in the last), 7 blocks (4 in the last), 5 full blocks
    out, lse = native_attention(q, s, [KeyChunk(k[a:b], v[a:b]) for a, b in
                                       [(0, 120), (120, 220), (220, 300)]], Cv)
    tol = 1e-5
    if not direct and small_sigma:
        # the regime the engine leaves to direct differences: the expansion q.k - |k|^2/2
        # cancels in fp32 (chapter 7); ask for no more error than a plain fp32 GEMM expansion
        plain = torch.softmax((q @ k.T - 0.5 * (k * k).sum(1)) / s[:, None] ** 2, 1) @ v
        tol = max(tol, 2 * float((plain.double() - ref).abs().max()))
    assert (out.double() - ref).abs().max() <= tol
    assert (lse.double() - lse_ref).abs().max() < 1e-4 * (1 + lse_ref.abs().max())


@needs_native
@pytest.mark.parametrize("direct", [False, True])
def test_native_large_dim_groups(direct, monkeypatch, native_isa):
    monkeypatch.setattr(engine, "DIRECT_SIGMA", math.inf if direct else 0.0)
    D, Cv = 150, 3
    q, k, v, s = clustered(45, 250, D, Cv, 0.2, seed=7)
    qg = torch.tensor([0] * 13 + [1] * 25 + [2] * 7)
    kg = torch.tensor([0] * 50 + [1] * 167 + [2] * 33)
    ref, _ = reference(q, k, v, s, qg, kg)
    out, _ = native_attention(q, s, [KeyChunk(k, v, torch.tensor([0, 50, 217, 250]))], Cv,
                              torch.tensor([0, 13, 38, 45]))
    assert (out.double() - ref).abs().max() <= 1e-5


@needs_native
@pytest.mark.parametrize("direct", [False, True])
def test_native_large_dim_chunking_and_threads(direct, monkeypatch, native_isa):
    """Feeding the keys in chunks changes only the rounding; the number of threads changes
    nothing (each query row is computed by one thread, in key order)."""
    monkeypatch.setattr(engine, "DIRECT_SIGMA", math.inf if direct else 0.0)
    D, Cv = 363, 3
    q, k, v, s = clustered(71, 800, D, Cv, 0.2, seed=8)
    whole = native_attention(q, s, [KeyChunk(k, v)], Cv)
    parts = native_attention(q, s, [KeyChunk(k[a:b], v[a:b]) for a, b in
                                    [(0, 16), (16, 33), (33, 500), (500, 800)]], Cv)
    assert (whole[0] - parts[0]).abs().max() < 1e-6
    assert (whole[1] - parts[1]).abs().max() < 1e-5
    one = native_attention(q, s, [KeyChunk(k, v)], Cv, nthreads=1)
    for n in (2, 3, 5):
        many = native_attention(q, s, [KeyChunk(k, v)], Cv, nthreads=n)
        assert torch.equal(one[0], many[0]) and torch.equal(one[1], many[1])


def test_direct_path_is_used_below_direct_sigma():
    q = torch.rand(4, 3)
    small = StreamingAttention(q, torch.full((4,), engine.DIRECT_SIGMA / 2), value_dim=1,
                               memory_budget=1 << 20)
    large = StreamingAttention(q, torch.full((4,), engine.DIRECT_SIGMA * 2), value_dim=1,
                               memory_budget=1 << 20)
    assert small.direct and not large.direct


def test_no_tf32_restores_flags():
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with engine.no_tf32():
            assert not torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


@needs_native
@pytest.mark.parametrize("D", [9, 48])
def test_native_sums_keep_the_tail_of_many_small_weights(D, native_isa):
    """16 keys at the query (weight 1, value 1), then 2^19 keys of weight 1e-8 each (value 0):
    the exact output is 16 / (16 + 2^19 e-8) = 1 - 3.3e-4.  Each small term is below half an
    ulp of a lane's running denominator (~1), so a kernel that sums the whole stream in fp32
    loses the tail and returns 1 (it did, and its log-sum-exp was 3e-4 low); the kernel sums
    each sweep of ``kchunk`` blocks from zero in fp32 and merges it into a float64 state, so
    only the small terms of the first sweep, which shares its fp32 sum with the 16 large ones,
    are lost (about 750 blocks x 1e-8: 7e-6).  Narrow (D = 9) and wide (D = 48) tiles; keys fed
    in three chunks."""
    K, sigma = 16 + (1 << 19), 1.0
    far = math.sqrt(2 * sigma**2 * math.log(1e8) / D)  # |q - k|^2 / 2 sigma^2 = ln 1e8
    q = torch.zeros(8, D)
    k = torch.full((K, D), far)
    k[:16] = 0.0
    v = torch.zeros(K, 1)
    v[:16] = 1.0
    s = torch.full((8,), sigma)
    w = math.exp(-(far**2) * D / (2 * sigma**2))
    exact = 16 / (16 + (K - 16) * w)
    out, lse = native_attention(q, s, [KeyChunk(k[a:b], v[a:b]) for a, b in
                                       [(0, K // 3), (K // 3, K - 5), (K - 5, K)]], 1)
    assert 1 - exact > 3e-4
    assert (out.double() - exact).abs().max() < 2e-5
    assert (lse.double() - math.log(16 + (K - 16) * w)).abs().max() < 2e-5
