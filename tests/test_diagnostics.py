"""lemmse.diagnostics.pixel_weights against the float64 brute-force oracle (tests/oracles.py).

For every posterior case of tests/test_estimators.py (agnostic denoising, box inpainting,
asymmetric blur; physics-aware blur (whitened) and masks) and σ ∈ {0.01, 0.1, 1}, at a few
pixels: the weight maps, the estimate, the participation ratio, n50 (where the oracle's margin
makes it well defined) and the log-density; LocalMMSE's weights live on the pixel's own
position only; bad arguments.
"""

from __future__ import annotations

import math

import pytest
import torch

import oracles as O
from lemmse.diagnostics import pixel_weights
from test_estimators import DATASETS, POSTERIOR_CASES, case_id, dataset, make, measurement, oracle_op

F64 = torch.float64
PIXELS = [(0, 0), (3, 2), (4, 6)]


@pytest.mark.parametrize("sigma", [0.01, 0.1, 1.0])
@pytest.mark.parametrize("case", POSTERIOR_CASES, ids=case_id)
def test_pixel_weights_match_oracle(case, sigma):
    _, ds, opname, pre = case
    d = DATASETS[ds]
    train, _, _ = dataset(ds)
    y = measurement(ds, opname, sigma)
    logits = O.lemmse_logits(train, y, sigma, oracle_op(ds, opname), d["P"], pre)
    w, part, n50, margin = O.posterior_stats(logits)
    x_or = O.lemmse_from_logits(train, logits)
    logp = O.log_density(logits, sigma, d["C"] * d["P"] ** 2)
    est = make("LEMMSE", train, oracle_op(ds, opname), d["P"], pre, dtype=F64)
    for b in range(2):
        pw = pixel_weights(est, y[b : b + 1], sigma, PIXELS)
        for q, (r, c) in enumerate(PIXELS):
            assert (pw.weights[q] - w[b, r, c]).abs().max() <= 1e-10, (b, r, c)
            assert (pw.values[q] - x_or[b, :, r, c]).abs().max() <= 1e-10, (b, r, c)
            assert abs(float(pw.participation[q]) / float(part[b, r, c]) - 1) <= 1e-9
            if margin[b, r, c] > 1e-9:
                assert int(pw.n50[q]) == int(n50[b, r, c]), (b, r, c)
            if math.isfinite(float(logp[b, r, c])) and pre == "identity":
                # the oracle's K counts every key; for masks only the admissible ones count here
                assert abs(float(pw.log_density[q]) - float(logp[b, r, c])) <= 1e-8
        weights, image, position = pw.topk(1, k=3)
        r, c = PIXELS[1]
        assert torch.allclose(weights, torch.sort(w[b, r, c].flatten(), descending=True).values[:3], atol=1e-12)
        assert torch.allclose(w[b, r, c][image, position[:, 0], position[:, 1]], weights, atol=1e-12)


def test_local_mmse_weights_sit_on_the_pixel_position():
    ds = "g9"
    d = DATASETS[ds]
    train, _, _ = dataset(ds)
    y = measurement(ds, "denoising", 0.3)
    est = make("LocalMMSE", train, oracle_op(ds, "denoising"), d["P"], "identity", dtype=F64)
    pw = pixel_weights(est, y[:1], 0.3, [(2, 5)])
    mass = pw.weights[0].sum(0)
    assert abs(float(mass[2, 5]) - 1) <= 1e-12 and float(mass.sum()) == pytest.approx(1, abs=1e-12)
    want = O.local_mmse(train, y[:1], 0.3, oracle_op(ds, "denoising"), d["P"])
    assert (pw.values[0] - want[0, :, 2, 5]).abs().max() <= 1e-10


@pytest.mark.parametrize(
    "kwargs,err,match",
    [
        (dict(pixels=(9, 0)), ValueError, "outside"),
        (dict(pixels=[]), ValueError, "empty"),
        (dict(pixels="a"), TypeError, "pixels"),
        (dict(sigma=-1.0), ValueError, "sigma"),
        (dict(y=torch.zeros(2, 1, 9, 9)), ValueError, "one image"),
        (dict(est="nope"), TypeError, "LEMMSE"),
    ],
)
def test_bad_arguments(kwargs, err, match):
    train, _, _ = dataset("g9")
    est = make("LEMMSE", train, oracle_op("g9", "denoising"), 5, "identity")
    args = dict(est=est, y=torch.zeros(1, 1, 9, 9), sigma=0.2, pixels=(1, 1))
    args.update(kwargs)
    with pytest.raises(err, match=match):
        pixel_weights(**args)


@pytest.mark.parametrize("backend", ["auto", "torch"])
@pytest.mark.parametrize("sigma", [0.05, 0.3])
@pytest.mark.parametrize("case", POSTERIOR_CASES, ids=case_id)
def test_log_density_matches_oracle_and_posterior(case, sigma, backend):
    """LEMMSE.log_density (one pass, sliding kernel or attention) = the oracle's and posterior's."""
    _, ds, opname, pre = case
    d = DATASETS[ds]
    train, _, _ = dataset(ds)
    y = measurement(ds, opname, sigma)
    est = make("LEMMSE", train, oracle_op(ds, opname), d["P"], pre, backend=backend)
    got = est.log_density(y.float(), sigma).double()
    assert got.shape == (2, d["H"], d["W"])
    assert (got - est.posterior(y.float(), sigma).log_density.double()).abs().max() <= 1e-3
    if pre == "identity":  # the oracle counts every key (K = N·H·W)
        logits = O.lemmse_logits(train, y, sigma, oracle_op(ds, opname), d["P"], pre)
        want = O.log_density(logits, sigma, d["C"] * d["P"] ** 2)
        assert (got - want).abs().max() <= 1e-3
    # per-image sigma: the same numbers image by image
    both = est.log_density(y.float(), torch.tensor([sigma, 2 * sigma]))
    assert (both[1] - est.log_density(y[1:].float(), 2 * sigma)[0]).abs().max() <= 1e-4


def test_log_density_counts_admissible_keys_for_masks():
    """Aware inpainting: K is N times the number of positions with the query's observed pattern."""
    ds = "c7"
    d = DATASETS[ds]
    train, _, _ = dataset(ds)
    est = make("LEMMSE", train, oracle_op(ds, "random"), d["P"], "inverse", dtype=F64)
    geometry = est.problem().geometry
    gid = geometry.gid
    K = geometry.n_keys(d["N"])
    for i in (0, 5, 17):
        assert int(K[i]) == d["N"] * int((gid == gid[i]).sum())
    y = measurement(ds, "random", 0.2)
    pw = pixel_weights(est, y[:1], 0.2, [(1, 2)])
    assert int(pw.n_admissible[0]) == int(K[1 * d["W"] + 2])
    assert abs(float(pw.log_density[0]) - float(est.log_density(y[:1], 0.2)[0, 1, 2])) <= 1e-9
