"""The training-budget study and the group study (results/training_budget.csv, results/groups.csv).

- the committed CSVs have their columns, cover what the book reads (every architecture at budgets
  spanning at least 64x in images seen; networks of two groups against LE-MMSEs of three) and
  ``images_seen = steps * batch_size``;
- a slice of each is recomputed from the committed checkpoints with the same code path
  (:func:`lemmse.experiments.evaluate_budget` / :func:`evaluate_groups`, same images and noise
  seeds) and must agree to 0.05 dB: the n_images = 2 rows at σ = 0.2 on test images;
- CSV round trips, row merging over the new key columns, and clear errors.
"""

from __future__ import annotations

import pytest

from conftest import REPO_ROOT
from lemmse.experiments import (
    BUDGET_CSV_COLUMNS,
    GROUP_CSV_COLUMNS,
    Experiment,
    evaluate_budget,
    evaluate_groups,
    merge_rows,
    read_agreement_csv,
    read_budget_csv,
    read_groups_csv,
    write_budget_csv,
    write_groups_csv,
)

CKPT_DIR = REPO_ROOT / "results" / "checkpoints"
BUDGET_PATH = REPO_ROOT / "results" / "training_budget.csv"
GROUPS_PATH = REPO_ROOT / "results" / "groups.csv"
TOLERANCE_DB = 0.05
PSNRS = ("psnr_net_lemmse", "psnr_net_truth", "psnr_lemmse_truth")


def _read(path, read):
    if not path.exists():
        pytest.skip(f"{path} missing")
    return read(path)


def test_budget_csv_content():
    rows = _read(BUDGET_PATH, read_budget_csv)
    assert BUDGET_PATH.read_text().splitlines()[0] == ",".join(BUDGET_CSV_COLUMNS)
    for r in rows:
        assert r["images_seen"] == r["steps"] * r["batch_size"]
    main = [r for r in rows if r["n_images"] == max(q["n_images"] for q in rows)]
    for arch in ("unet", "resnet", "patchmlp"):
        seen = {r["images_seen"] for r in main if r["arch"] == arch}
        assert max(seen) >= 64 * min(seen), (arch, sorted(seen))
        for split in ("train", "test"):
            sig = {r["sigma"] for r in main if r["arch"] == arch and r["split"] == split}
            assert sig == {0.05, 0.1, 0.2, 0.5, 0.8}, (arch, split, sig)
    # the LE-MMSE does not depend on the budget: one value per (split, sigma)
    le = {}
    for r in main:
        le.setdefault((r["split"], r["sigma"]), set()).add(r["psnr_lemmse_truth"])
    assert all(len(v) == 1 for v in le.values()), le


def test_budget_800_steps_is_the_agreement_table():
    """The 800-step budget networks are the networks of results/agreement.csv."""
    rows = [r for r in _read(BUDGET_PATH, read_budget_csv) if r["steps"] == 800]
    agree = {(r["arch"], r["split"], r["sigma"], r["n_images"]): r
             for r in read_agreement_csv(REPO_ROOT / "results" / "agreement.csv")
             if r["dataset"] == "fashion-mnist" and r["task"] == "denoising"
             and r["physics"] == "agnostic" and r["n_train"] == 10_000}
    common = [r for r in rows if (r["arch"], r["split"], r["sigma"], r["n_images"]) in agree]
    assert common
    for r in common:
        a = agree[(r["arch"], r["split"], r["sigma"], r["n_images"])]
        for k in PSNRS:
            assert abs(r[k] - a[k]) <= TOLERANCE_DB, (r, a)


def test_budget_slice_recomputed(real_data_root, tmp_path):
    rows = _read(BUDGET_PATH, read_budget_csv)
    steps = sorted({r["steps"] for r in rows})
    steps = [steps[0], steps[-1]]
    want = {r["steps"]: r for r in rows if r["arch"] == "unet" and r["split"] == "test"
            and r["sigma"] == 0.2 and r["n_images"] == 2 and r["steps"] in steps}
    assert set(want) == set(steps), sorted(want)
    got = evaluate_budget([Experiment("fashion-mnist", "denoising", "unet")], steps, "cpu", sigmas=[0.2],
                          splits=["test"], n_images=2, roots=[CKPT_DIR], data_root=real_data_root,
                          progress=False, cache=tmp_path)
    assert {r["steps"] for r in got} == set(steps)
    for r in got:
        for k in PSNRS:
            assert abs(r[k] - want[r["steps"]][k]) <= TOLERANCE_DB, (r["steps"], k, r[k], want[r["steps"]][k])
    assert {r["images_seen"] for r in got} == {t * 32 for t in steps}


def test_groups_csv_content():
    rows = _read(GROUPS_PATH, read_groups_csv)
    assert GROUPS_PATH.read_text().splitlines()[0] == ",".join(GROUP_CSV_COLUMNS)
    main = [r for r in rows if r["n_images"] == max(q["n_images"] for q in rows)]
    cells = {(r["arch"], r["group_net"], r["group_lemmse"], r["sigma"]) for r in main}
    for arch in ("unet", "resnet"):
        for gn in ("translations", "d4"):
            for gl in ("translations", "flips", "d4"):
                for s in (0.1, 0.2, 0.5):
                    assert (arch, gn, gl, s) in cells
    # a network's distance to the truth does not depend on the LE-MMSE it is compared with
    truth = {}
    for r in main:
        truth.setdefault((r["arch"], r["group_net"], r["sigma"]), set()).add(r["psnr_net_truth"])
    assert all(len(v) == 1 for v in truth.values())


def test_groups_slice_recomputed(real_data_root, tmp_path):
    rows = _read(GROUPS_PATH, read_groups_csv)
    want = {(r["group_net"], r["group_lemmse"]): r for r in rows
            if r["arch"] == "unet" and r["sigma"] == 0.2 and r["n_images"] == 2
            and r["group_lemmse"] in ("translations", "d4")}
    assert len(want) == 4, sorted(want)
    got = evaluate_groups([Experiment("fashion-mnist", "denoising", "unet", n_train=1000)], "cpu",
                          net_groups=("translations", "d4"), lemmse_groups=("translations", "d4"),
                          sigmas=[0.2], n_images=2, roots=[CKPT_DIR], data_root=real_data_root,
                          progress=False, cache=tmp_path)
    assert len(got) == 4
    for r in got:
        w = want[(r["group_net"], r["group_lemmse"])]
        for k in PSNRS:
            assert abs(r[k] - w[k]) <= TOLERANCE_DB, (r["group_net"], r["group_lemmse"], k, r[k], w[k])


def _budget_row(steps, value=30.0):
    return dict(dataset="fashion-mnist", task="denoising", arch="unet", physics="agnostic", split="test",
                sigma=0.2, n_train=10, steps=steps, batch_size=32, images_seen=32 * steps, n_images=2,
                psnr_net_lemmse=value, psnr_net_truth=20.0, psnr_lemmse_truth=21.0)


def test_budget_csv_roundtrip_and_merge(tmp_path):
    path = tmp_path / "b.csv"
    write_budget_csv([_budget_row(1600), _budget_row(100)], path)
    rows = read_budget_csv(path)
    assert [r["steps"] for r in rows] == [100, 1600] and rows[0]["images_seen"] == 3200
    merged = merge_rows(rows, [_budget_row(100, value=1.5)])  # same key: replaced, not added
    assert sorted(r["psnr_net_lemmse"] for r in merged) == [1.5, 30.0]
    with pytest.raises(ValueError, match="images_seen"):
        write_budget_csv([{k: v for k, v in _budget_row(100).items() if k != "images_seen"}], path)


def test_groups_csv_roundtrip_and_merge(tmp_path):
    path = tmp_path / "g.csv"
    base = {k: v for k, v in _budget_row(100).items() if k in GROUP_CSV_COLUMNS}
    rows = [dict(base, group_net=gn, group_lemmse=gl, psnr_net_lemmse=float(i))
            for i, (gn, gl) in enumerate([("d4", "translations"), ("translations", "d4"), ("d4", "d4")])]
    write_groups_csv(rows, path)
    back = read_groups_csv(path)
    assert [(r["group_net"], r["group_lemmse"]) for r in back] == [
        ("d4", "d4"), ("d4", "translations"), ("translations", "d4")]
    merged = merge_rows(back, [dict(base, group_net="d4", group_lemmse="d4", psnr_net_lemmse=9.0)])
    assert len(merged) == 3 and sorted(r["psnr_net_lemmse"] for r in merged) == [0.0, 1.0, 9.0]
    with pytest.raises(ValueError, match="columns"):
        read_budget_csv(path)


def test_study_errors():
    exp = [Experiment("fashion-mnist", "denoising", "unet", n_train=1000)]
    with pytest.raises(ValueError, match="net_groups"):
        evaluate_groups(exp, net_groups=("d5",), progress=False)
    with pytest.raises(ValueError, match="lemmse_groups"):
        evaluate_groups(exp, lemmse_groups="d4", progress=False)
    with pytest.raises(ValueError, match="split"):
        evaluate_groups(exp, split="val", progress=False)
    with pytest.raises(ValueError, match="steps"):
        evaluate_budget(exp, [100, 0])
    with pytest.raises(ValueError, match="steps"):
        evaluate_budget(exp, [])
    with pytest.raises(ValueError, match="does not return images"):
        evaluate_budget(exp, [100], return_images=True)


def test_cli_budget_and_groups_reject_wrong_flags(capsys):
    from lemmse.__main__ import main

    assert main(["experiment", "budget", "--dataset", "fashion-mnist", "--task", "denoising",
                 "--physics", "agnostic", "--steps", "100"]) == 1
    assert "--budget-steps" in capsys.readouterr().err
    assert main(["experiment", "groups", "--dataset", "fashion-mnist", "--n-train", "1000",
                 "--group", "d4"]) == 1
    assert "--net-group" in capsys.readouterr().err
