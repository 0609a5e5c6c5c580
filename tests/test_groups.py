"""Grid symmetry groups and the group-equivariant LE-MMSE (book chapter 14).

The oracle below is written independently of ``lemmse``: it transforms every training *patch*
by the 2 x 2 signed permutation matrices of the group (acting on the patch offsets), and takes
the softmax over the whole bank in float64 with ``log λ`` added to the logits of the keys of the
non-identity elements (equation ``eq-sym-weighted`` of chapter 14).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import oracles as O
from lemmse import Blur, Denoising, Inpainting, LEMMSE
from lemmse.groups import GROUPS, get_group, symmetry_score

F64 = torch.float64

# the groups as matrices M acting on patch offsets d = (row, column): (g p)[M d] = p[d]
_R = ((0, 1), (-1, 0))  # a rotation by 90 degrees (orientation irrelevant for the bank)
_MATS = {
    "translations": [((1, 0), (0, 1))],
    "c2": [((1, 0), (0, 1)), ((-1, 0), (0, -1))],
    "flips": [((1, 0), (0, 1)), ((1, 0), (0, -1)), ((-1, 0), (0, 1)), ((-1, 0), (0, -1))],
}
_MATS["c4"] = [((1, 0), (0, 1)), _R, ((-1, 0), (0, -1)), ((0, -1), (1, 0))]
_MATS["d4"] = _MATS["c4"] + [((1, 0), (0, -1)), ((-1, 0), (0, 1)), ((0, 1), (1, 0)),
                             ((0, -1), (-1, 0))]


def _transform_patch(p, M, P):
    """p [.., C, P, P] -> the patch with (g p)[M d] = p[d] (explicit offset loop)."""
    r = P // 2
    out = torch.empty_like(p)
    for a in range(-r, r + 1):
        for b in range(-r, r + 1):
            a2 = M[0][0] * a + M[0][1] * b
            b2 = M[1][0] * a + M[1][1] * b
            out[..., a2 + r, b2 + r] = p[..., a + r, b + r]
    return out


def _all_patches(x, P):
    """[N, C, H, W] -> [N, H*W, C, P, P] circular windows by explicit rolls."""
    N, C, H, W = x.shape
    r = P // 2
    out = torch.empty(N, H, W, C, P, P, dtype=x.dtype)
    for a in range(-r, r + 1):
        for b in range(-r, r + 1):
            # window at (h, w) holds x[h + a, w + b]
            out[..., a + r, b + r] = torch.roll(x, (-a, -b), (-2, -1)).permute(0, 2, 3, 1)
    return out.reshape(N, H * W, C, P, P)


def oracle_group_lemmse(train, y, sigma, P, group, lam):
    """float64 brute force: bank {M p : M in G, p a training patch}, prior weight λ on M != I."""
    train, y = train.to(F64), y.to(F64)
    N, C, H, W = train.shape
    pt = _all_patches(train, P).reshape(-1, C, P, P)
    keys, logw = [], []
    for k, M in enumerate(_MATS[group]):
        keys.append(_transform_patch(pt, M, P).reshape(pt.shape[0], -1))
        logw.append(torch.full((pt.shape[0],), 0.0 if k == 0 else
                               (math.log(lam) if lam > 0 else -math.inf), dtype=F64))
    keys, logw = torch.cat(keys), torch.cat(logw)
    vals = keys.view(keys.shape[0], C, P, P)[:, :, P // 2, P // 2]  # centre pixels [K, C]
    out = torch.empty_like(y)
    for b in range(y.shape[0]):
        q = _all_patches(y[b:b + 1], P)[0].reshape(H * W, -1)
        d2 = ((q[:, None, :] - keys[None]) ** 2).sum(-1)
        w = torch.softmax(-d2 / (2 * sigma ** 2) + logw[None], dim=1)
        out[b] = (w @ vals).T.reshape(C, H, W)
    return out


def _data(C=1, H=7, W=7, N=3, seed=0):
    imgs = O.smooth_images(N + 2, C, H, W, seed=seed).to(torch.float32)
    return imgs[:N], imgs[N:]


# ------------------------------------------------------------------------- group laws
@pytest.mark.parametrize("name,order", [("d4", 8), ("c4", 4), ("c2", 2), ("flips", 4),
                                        ("translations", 1)])
def test_group_laws(name, order):
    G = get_group(name)
    assert len(G) == order and G.elements[0].name == "e"
    x = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    names = {g.name for g in G}
    assert len(names) == order  # distinct elements
    acts = {g.name: g.apply(x) for g in G}
    assert len({tuple(a.flatten().tolist()) for a in acts.values()}) == order  # distinct actions
    assert torch.equal(G.elements[0].apply(x), x)
    for g, h in itertools.product(G, G):
        gh = g * h
        assert gh.name in names  # closure
        assert torch.equal(gh.apply(x), g.apply(h.apply(x)))
    for g in G:
        assert g.inverse.name in names
        assert torch.equal(g.inverse.apply(g.apply(x)), x)
        assert (g * g.inverse).name == "e"
    for g, h, k in itertools.product(G, G, G):
        assert ((g * h) * k).name == (g * (h * k)).name


def test_group_errors():
    with pytest.raises(ValueError, match="must be one of"):
        get_group("d8")
    x = torch.rand(1, 1, 4, 6)
    with pytest.raises(ValueError, match="square"):
        get_group("d4").elements[1].apply(x)
    get_group("flips").orbit(x)  # reflections are fine on rectangles
    with pytest.raises(ValueError, match="square"):
        LEMMSE(torch.rand(2, 1, 6, 8), patch_size=3, group="c4")
    LEMMSE(torch.rand(2, 1, 6, 8), patch_size=3, group="flips")


# ------------------------------------------------------------------------- the estimator
@pytest.mark.parametrize("group", ["d4", "c4", "c2", "flips"])
@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0])
def test_matches_oracle(group, lam):
    train, y = _data()
    noise = torch.randn(y.shape, generator=torch.Generator().manual_seed(5))
    est = LEMMSE(train, patch_size=3, group=group, group_weight=lam)
    for sigma in (0.05, 0.2, 1.0):
        yy = (y + sigma * noise).float()
        ref = oracle_group_lemmse(train, yy, sigma, 3, group, lam)
        out = est(yy, sigma)
        assert out.dtype == torch.float32
        err = (out.double() - ref).abs().max().item()
        assert err <= 1e-5, (group, lam, sigma, err)


def test_matches_oracle_colour():
    train, y = _data(C=3, H=6, W=6, N=2, seed=3)
    est = LEMMSE(train, patch_size=3, group="d4", group_weight=0.3)
    ref = oracle_group_lemmse(train, y, 0.3, 3, "d4", 0.3)
    assert (est(y, 0.3).double() - ref).abs().max().item() <= 1e-5


def test_oracle_can_fail():
    """The oracle distinguishes the groups and the weights (else the tests above prove little)."""
    train, y = _data()
    a = oracle_group_lemmse(train, y, 0.2, 3, "d4", 1.0)
    assert (a - oracle_group_lemmse(train, y, 0.2, 3, "c4", 1.0)).abs().max() > 1e-3
    assert (a - oracle_group_lemmse(train, y, 0.2, 3, "d4", 0.3)).abs().max() > 1e-3
    assert (a - oracle_group_lemmse(train, y, 0.2, 3, "translations", 1.0)).abs().max() > 1e-3


def test_translations_bitwise_default():
    train, y = _data(N=4)
    ref = LEMMSE(train, patch_size=3)(y, 0.2)
    assert torch.equal(LEMMSE(train, patch_size=3, group="translations")(y, 0.2), ref)
    assert torch.equal(LEMMSE(train, patch_size=3, group="d4", group_weight=0.0)(y, 0.2), ref)
    ref_a = LEMMSE(train, patch_size=3, algorithm="attention")(y, 0.2)
    assert torch.equal(LEMMSE(train, patch_size=3, group="translations",
                              algorithm="attention")(y, 0.2), ref_a)


@pytest.mark.parametrize("group", ["d4", "c4", "c2", "flips"])
def test_group_and_shift_equivariance(group):
    train, y = _data(N=4, H=8, W=8)
    est = LEMMSE(train, patch_size=3, group=group)
    out = est(y, 0.2)
    for g in get_group(group):
        assert (est(g.apply(y), 0.2) - g.apply(out)).abs().max() <= 1e-5
    ys = torch.roll(y, (2, 3), (-2, -1))
    assert (est(ys, 0.2) - torch.roll(out, (2, 3), (-2, -1))).abs().max() <= 1e-5
    # the translation estimator is not D4-equivariant on these data: the test can fail
    plain = LEMMSE(train, patch_size=3)
    errs = [(plain(g.apply(y), 0.2) - g.apply(plain(y, 0.2))).abs().max() for g in get_group(group)]
    assert max(errs) > 1e-3


def test_locality():
    train, y = _data(N=3, H=9, W=9)
    est = LEMMSE(train, patch_size=3, group="d4", group_weight=0.3)
    out = est(y, 0.2)
    y2 = y.clone()
    y2[:, :, 0, 0] += 0.7  # outside the 3 x 3 window of pixel (4, 4)
    out2 = est(y2, 0.2)
    assert torch.equal(out2[:, :, 4, 4], out[:, :, 4, 4])
    assert (out2[:, :, 0, 0] - out[:, :, 0, 0]).abs().max() > 1e-4


def test_log_density_of_group():
    train, y = _data()
    orbit = get_group("d4").orbit(train)
    a = LEMMSE(train, patch_size=3, group="d4").log_density(y, 0.2)
    b = LEMMSE(orbit, patch_size=3).log_density(y, 0.2)
    assert (a - b).abs().max() <= 1e-4
    # weighted: log( (Σ_e N + λ Σ_r N) / (K_e + λ K_r) ) from the two banks
    e = LEMMSE(train, patch_size=3).log_density(y, 0.2).double()
    r = LEMMSE(orbit[train.shape[0]:], patch_size=3).log_density(y, 0.2).double()
    lam = 0.3
    ke, kr = 1.0, 7.0
    ref = torch.logaddexp(e + math.log(ke), r + math.log(lam * kr)) - math.log(ke + lam * kr)
    c = LEMMSE(train, patch_size=3, group="d4", group_weight=lam).log_density(y, 0.2)
    assert (c.double() - ref).abs().max() <= 1e-4


def test_physics_aware_inpainting_invariant_mask_is_equivariant():
    train, y = _data(N=3, H=8, W=8)
    op = Inpainting.center_box((1, 8, 8), 2)
    assert all(torch.equal(g.apply(op.mask), op.mask) for g in get_group("d4"))
    est = LEMMSE(train, op, patch_size=3, preinverse="inverse", group="d4")
    yy = op.A(y)
    out = est(yy, 0.2)
    for g in get_group("d4"):
        assert (est(g.apply(yy), 0.2) - g.apply(out)).abs().max() <= 1e-5


def test_errors():
    train, _ = _data()
    with pytest.raises(ValueError, match="group must be one of"):
        LEMMSE(train, patch_size=3, group="rotations")
    for lam in (-0.1, 1.5, True, "1", math.nan):
        with pytest.raises(ValueError, match="group_weight"):
            LEMMSE(train, patch_size=3, group="d4", group_weight=lam)
    mask = torch.ones(7, 7)
    mask[1, 2] = 0  # not invariant under the reflections
    with pytest.raises(ValueError, match="does not commute"):
        LEMMSE(train, Inpainting(mask), patch_size=3, group="flips")
    asym = torch.tensor([[0.0, 1.0, 0.0], [1.0, 10.0, 2.0], [0.0, 1.0, 1.0]], dtype=F64) / 16
    with pytest.raises(ValueError, match="does not commute"):
        LEMMSE(train, Blur(asym), patch_size=3, group="c2")
    LEMMSE(train, Blur.gaussian((1, 7, 7), 1.0), patch_size=3, group="d4")
    LEMMSE(train, Blur(asym), patch_size=3)  # no group: fine
    LEMMSE(train, Denoising(), patch_size=3, group="d4")


# ------------------------------------------------------------------------- symmetry score
def test_symmetry_score():
    imgs = O.smooth_images(40, 1, 8, 8, seed=2).float()
    ramp = torch.linspace(0, 1, 8).view(1, 1, 8, 1)
    asym = 0.3 * imgs + 0.7 * ramp  # brighter towards the bottom: not flip_v-invariant
    G = get_group("d4")
    sym = G.orbit(imgs[:30])
    res = symmetry_score(sym, G.orbit(imgs[30:]), "d4", 3, [0.1, 0.3], n_patches=200, seed=0)
    assert res["elements"] == list(GROUPS["d4"])
    assert res["score"].shape == (2, 8) and res["score"][:, 0].abs().max() == 0
    assert res["score"].abs().max() < 0.15
    res2 = symmetry_score(asym[:30], asym[30:], "d4", 3, [0.1, 0.3], n_patches=200, seed=0)
    fv = res2["elements"].index("flip_v")
    assert (res2["score"][:, fv] < -0.5).all()
    assert res2["nn_ratio"][fv] > 1.2
    with pytest.raises(ValueError, match="sigma"):
        symmetry_score(sym, sym, "d4", 3, 0.0)


def _oracle_symmetry_score(train, test, group, P, sigmas, n_patches, seed):
    """float64 brute force of the score and the nearest-neighbour ratio (same patch draws)."""
    gen = torch.Generator().manual_seed(seed)
    Nt, C, H, W = test.shape
    idx_img = torch.randint(Nt, (n_patches,), generator=gen)
    idx_pos = torch.randint(H * W, (n_patches,), generator=gen)
    q = _all_patches(test.double(), P)[idx_img, idx_pos]  # [M, C, P, P]
    keys = _all_patches(train.double(), P).reshape(-1, C * P * P)
    K, D = keys.shape
    # name each element by the matrix that reproduces it on a patch of distinct entries
    probe = torch.arange(C * P * P, dtype=F64).view(1, C, P, P)
    names = [g.name for g in get_group(group)]
    mats = {}
    for g in get_group(group):
        hit = [M for M in _MATS[group] if torch.equal(_transform_patch(probe, M, P), g.apply(probe))]
        assert len(hit) == 1
        mats[g.name] = hit[0]
    logps = torch.empty(len(sigmas), len(names), n_patches, dtype=F64)
    nn = torch.empty(len(names), dtype=F64)
    for j, name in enumerate(names):
        gq = _transform_patch(q, mats[name], P).reshape(n_patches, D)
        d2 = ((gq[:, None, :] - keys[None]) ** 2).sum(-1)  # [M, K]
        nn[j] = d2.min(1).values.sqrt().mean()
        for a, s in enumerate(sigmas):
            logp = (torch.logsumexp(-d2 / (2 * s * s), 1) - math.log(K)
                    - 0.5 * D * math.log(2 * math.pi * s * s))
            logps[a, j] = logp
    d = logps - logps[:, :1]
    se = torch.sqrt(((d - d.mean(2, keepdim=True)) ** 2).sum(2) / (n_patches - 1) / n_patches)
    return names, d.mean(2), se, nn / nn[0]


@pytest.mark.parametrize("group,C", [("d4", 1), ("flips", 3)])
def test_symmetry_score_matches_oracle(group, C):
    train = O.smooth_images(6, C, 7, 7, seed=3).float()
    train = train + 0.4 * torch.linspace(0, 1, 7).view(1, 1, 7, 1)  # not flip_v-invariant
    test = O.smooth_images(4, C, 7, 7, seed=4).float() + 0.4 * torch.linspace(0, 1, 7).view(1, 1, 7, 1)
    sigmas = [0.05, 0.2, 0.7]
    res = symmetry_score(train, test, group, 3, sigmas, n_patches=40, seed=5)
    names, score, se, nn = _oracle_symmetry_score(train, test, group, 3, sigmas, 40, 5)
    assert res["elements"] == names and res["sigma"] == sigmas
    assert res["score"].dtype == F64 and res["score"].shape == (3, len(names))
    assert torch.allclose(res["score"], score, rtol=1e-4, atol=2e-4)
    assert torch.allclose(res["nn_ratio"], nn, rtol=1e-5, atol=0)
    assert torch.allclose(res["score_se"], se, rtol=1e-3, atol=2e-4)
    assert (se[:, 1:] > 0).all()
    assert score[:, 1:].abs().max() > 0.05  # the data are asymmetric: the oracle can tell


def test_symmetry_score_errors():
    x = O.smooth_images(4, 1, 7, 7, seed=0).float()
    # the rule of lemmse._validate: a wrong type is a TypeError, a wrong value a ValueError
    for kwargs, kind, match in (({"train": x[0]}, ValueError, "train must have 4 dimensions"),
                                ({"train": x.long()}, TypeError, "train must have a real floating"),
                                ({"test": x[:1] * float("nan")}, ValueError, "test must hold real, finite"),
                                ({"test": x.repeat(1, 3, 1, 1)}, ValueError, "same channels"),
                                ({"patch_size": 4}, ValueError, "patch_size"),
                                ({"patch_size": 9}, ValueError, "patch_size must be at most the image size 7"),
                                ({"patch_size": 3.0}, TypeError, "patch_size"),
                                ({"sigma": [0.1, float("nan")]}, ValueError, "sigma"),
                                ({"sigma": []}, ValueError, "sigma"), ({"sigma": "0.1"}, TypeError, "sigma"),
                                ({"n_patches": 0}, ValueError, "n_patches")):
        args = {"train": x, "test": x, "group": "d4", "patch_size": 3, "sigma": 0.1}
        args.update(kwargs)
        with pytest.raises(kind, match=match):
            symmetry_score(**args)
