"""The committed networks and results/agreement.csv (book chapters "Training the three
architectures" and "Networks vs LE-MMSE").

- the manifest's sha256 of every committed checkpoint matches the file, and every checkpoint
  loads and has a measured receptive field of exactly P×P;
- rows of the CSV are recomputed from the committed checkpoints with the same code path
  (:func:`lemmse.experiments.evaluate_agreement`, same images and noise seeds) and must agree to
  0.05 dB: the n_images = 2 rows at σ = 0.2 on test images (one LE-MMSE over the 10 000
  training images for 2 images, shared by the three networks);
- the CSV's format, and the CSV writer/reader and row merging on a temporary file;
- the grid selection (named grids, patch-size and n_train filters; every experiment's printed
  command selects exactly that experiment) and the held-out "test" images of a data folder
  without a test split (FFHQ-32 here).
"""

from __future__ import annotations

import contextlib
import hashlib
import json

import pytest
import torch

from conftest import REPO_ROOT
from lemmse.experiments import (
    ANALYSIS,
    CSV_COLUMNS,
    GRID,
    PATCH_CSV_COLUMNS,
    Experiment,
    eval_images,
    SCALES,
    evaluate_agreement,
    evaluate_patch_size,
    merge_rows,
    read_agreement_csv,
    read_patch_size_csv,
    select,
    write_agreement_csv,
    write_patch_size_csv,
)
from lemmse.nets import receptive_field
from lemmse.train import load_checkpoint

CKPT_DIR = REPO_ROOT / "results" / "checkpoints"
CSV_PATH = REPO_ROOT / "results" / "agreement.csv"
TOLERANCE_DB = 0.05
SCALE_N = SCALES["cpu"].n_train


def _manifest():
    path = CKPT_DIR / "MANIFEST.json"
    if not path.exists():
        pytest.skip(f"no committed checkpoints ({path} missing)")
    return json.loads(path.read_text())["files"]


def test_manifest_sha256_and_size():
    files = _manifest()
    assert files, "MANIFEST.json lists no checkpoint"
    total = 0
    for name, entry in files.items():
        data = (CKPT_DIR / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], f"{name}: sha256 differs from MANIFEST.json"
        assert entry["steps"] == entry["config"]["steps"], f"{name}: unfinished run"
        total += len(data)
    on_disk = {p.name for p in CKPT_DIR.glob("*.pt")}
    assert on_disk == set(files), f"checkpoints not in the manifest: {sorted(on_disk ^ set(files))}"
    assert total <= 60e6, f"committed checkpoints hold {total / 1e6:.1f} MB (limit 60 MB)"


def test_checkpoints_receptive_field_is_P():
    for name, entry in _manifest().items():
        model, config, history = load_checkpoint(CKPT_DIR / name)
        assert config.identity() == entry["config"], f"{name}: config differs from the manifest"
        assert len(history["loss"]) == config.steps
        P = config.patch_size
        assert receptive_field(model, (model.channels, 4 * P, 4 * P)) == (P, P), name


def test_csv_format():
    if not CSV_PATH.exists():
        pytest.skip(f"{CSV_PATH} missing")
    header = CSV_PATH.read_text().splitlines()[0]
    assert header == ",".join(CSV_COLUMNS)
    rows = read_agreement_csv(CSV_PATH)
    assert rows
    for r in rows:
        assert r["split"] in ("train", "test") and r["n_images"] >= 1 and r["n_train"] >= 1
        for k in ("psnr_net_lemmse", "psnr_net_truth", "psnr_lemmse_truth"):
            if k == "psnr_lemmse_truth" and r["split"] == "train" and r[k] == float("inf"):
                # the LE-MMSE of a training image at low noise can return it exactly
                # (every patch's posterior collapses onto itself): MSE 0
                continue
            assert -60 < r[k] < 100, (k, r)  # negative: the failed physics-aware deconvolution nets


def test_csv_rows_recomputed_from_checkpoints(real_data_root):
    """Chapter "Networks vs LE-MMSE": the σ = 0.2 test rows with n_images = 2, recomputed."""
    _manifest()
    if not CSV_PATH.exists():
        pytest.skip(f"{CSV_PATH} missing")
    want = [
        r
        for r in read_agreement_csv(CSV_PATH)
        if r["dataset"] == "fashion-mnist" and r["task"] == "denoising" and r["physics"] == "agnostic"
        and r["split"] == "test" and r["sigma"] == 0.2 and r["n_images"] == 2
    ]
    assert len(want) == 3, "the CSV should hold the n_images=2, σ=0.2 test rows of the three networks"
    exps = [Experiment("fashion-mnist", "denoising", r["arch"]) for r in want]
    got = evaluate_agreement(
        exps, "cpu", sigmas=[0.2], splits=["test"], n_images=2, roots=[CKPT_DIR],
        data_root=real_data_root, progress=False, n_train=want[0]["n_train"],
    )
    got = {r["arch"]: r for r in got}
    for r in want:
        for k in ("psnr_net_lemmse", "psnr_net_truth", "psnr_lemmse_truth"):
            assert abs(got[r["arch"]][k] - r[k]) <= TOLERANCE_DB, (r["arch"], k, got[r["arch"]][k], r[k])


RECOMPUTED = [  # (dataset, task, physics, split, σ, n_images): a slice of every part of the grid
    ("fashion-mnist", "inpainting", "aware", "test", 0.2, 8),
    ("fashion-mnist", "deblurring", "aware", "train", 0.1, 8),
    ("cifar10", "denoising", "agnostic", "test", 0.2, 4),
    ("ffhq32", "inpainting", "agnostic", "test", 0.5, 2),
]


@pytest.mark.parametrize("setting", RECOMPUTED, ids=lambda s: "-".join(map(str, s)))
def test_grid_rows_recomputed_from_checkpoints(real_data_root, setting):
    """Rows of the other datasets, tasks and physics, recomputed from the committed checkpoints."""
    dataset, task, physics, split, sigma, n_images = setting
    if not CSV_PATH.exists():
        pytest.skip(f"{CSV_PATH} missing")
    want = [r for r in read_agreement_csv(CSV_PATH)
            if (r["dataset"], r["task"], r["physics"], r["split"], r["sigma"], r["n_images"])
            == (dataset, task, physics, split, sigma, n_images) and r["n_train"] == SCALE_N[dataset]]
    assert want, f"the CSV should hold the rows of {setting}"
    exps = [Experiment(dataset, task, r["arch"], physics) for r in want]
    held_out = dataset == "ffhq32" and split == "test"  # no test split here: the held-out images, with a warning
    with pytest.warns(UserWarning, match="held-out") if held_out else contextlib.nullcontext():
        got = evaluate_agreement(exps, "cpu", sigmas=[sigma], splits=[split], n_images=n_images, roots=[CKPT_DIR],
                                 data_root=real_data_root, progress=False)
    got = {r["arch"]: r for r in got}
    for r in want:
        assert got[r["arch"]]["n_images"] == n_images
        for k in ("psnr_net_lemmse", "psnr_net_truth", "psnr_lemmse_truth"):
            assert abs(got[r["arch"]][k] - r[k]) <= TOLERANCE_DB, (r["arch"], k, got[r["arch"]][k], r[k])


def test_patch_size_cell_recomputed(real_data_root):
    """results/patch_size.csv: the P = 3 U-Net against the P = 3 and P = 7 LE-MMSEs at σ = 0.2."""
    path = REPO_ROOT / "results" / "patch_size.csv"
    if not path.exists():
        pytest.skip(f"{path} missing")
    want = {(r["patch_lemmse"]): r for r in read_patch_size_csv(path)
            if r["arch"] == "unet" and r["patch_net"] == 3 and r["sigma"] == 0.2 and r["patch_lemmse"] in (3, 7)}
    assert set(want) == {3, 7}
    got = evaluate_patch_size([Experiment("fashion-mnist", "denoising", "unet", patch_size=3)], "cpu",
                              lemmse_patch_sizes=(3, 7), sigmas=[0.2], split=want[3]["split"],
                              n_images=want[3]["n_images"], roots=[CKPT_DIR], data_root=real_data_root, progress=False)
    for r in got:
        assert abs(r["psnr_net_lemmse"] - want[r["patch_lemmse"]]["psnr_net_lemmse"]) <= TOLERANCE_DB, r


def _row(arch="unet", sigma=0.2, value=30.0):
    return dict(dataset="fashion-mnist", task="denoising", arch=arch, physics="agnostic", split="test",
                sigma=sigma, n_train=10, n_images=2, psnr_net_lemmse=value, psnr_net_truth=20.0,
                psnr_lemmse_truth=21.0)


def test_csv_roundtrip_and_merge(tmp_path):
    path = tmp_path / "a.csv"
    write_agreement_csv([_row(sigma=0.5), _row(sigma=0.05)], path)
    rows = read_agreement_csv(path)
    assert [r["sigma"] for r in rows] == [0.05, 0.5]  # sorted
    merged = merge_rows(rows, [_row(sigma=0.5, value=12.5), _row(arch="resnet")])
    assert len(merged) == 3
    write_agreement_csv(merged, path)
    back = {(r["arch"], r["sigma"]): r["psnr_net_lemmse"] for r in read_agreement_csv(path)}
    assert back[("unet", 0.5)] == 12.5 and back[("unet", 0.05)] == 30.0
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(ValueError, match="psnr_net_truth"):
        write_agreement_csv([{k: v for k, v in _row().items() if k != "psnr_net_truth"}], path)


def test_noise_does_not_depend_on_n_images():
    from lemmse.experiments.evaluation import _measure
    from lemmse.operators import Denoising

    x = torch.rand(4, 1, 8, 8)
    y4 = _measure(Denoising(), x, "test", 0.2, 0)
    y2 = _measure(Denoising(), x[:2], "test", 0.2, 0)
    assert torch.equal(y4[:2], y2)
    assert not torch.equal(_measure(Denoising(), x[:2], "train", 0.2, 0), y2)


def test_patch_size_csv_roundtrip(tmp_path):
    path = tmp_path / "p.csv"
    base = {k: v for k, v in _row().items() if k in PATCH_CSV_COLUMNS}
    rows = [dict(base, patch_net=5, patch_lemmse=P, psnr_net_lemmse=20.0 + P) for P in (9, 3)]
    write_patch_size_csv(rows, path)
    back = read_patch_size_csv(path)
    assert [r["patch_lemmse"] for r in back] == [3, 9] and back[0]["psnr_net_lemmse"] == 23.0
    merged = merge_rows(back, [dict(base, patch_net=5, patch_lemmse=3, psnr_net_lemmse=1.0)])
    assert sorted(r["psnr_net_lemmse"] for r in merged) == [1.0, 29.0]
    with pytest.raises(ValueError, match="columns"):
        read_agreement_csv(path)


def test_grid_selection_and_commands():
    import shlex

    from lemmse.__main__ import build_parser

    assert len(GRID) == 25 and len(set(GRID)) == 25 and not set(GRID) & set(ANALYSIS)
    assert {e.patch_size for e in select(grid="analysis")} == {3, 5, 7, 9}
    assert select(grid="all", patch_size=5, n_train=[100, 1000], scale="cpu") == [
        e for e in ANALYSIS if e.n_train in (100, 1000)]
    assert [e.n_train for e in select(grid="analysis", n_train=60_000)] == [60_000]
    # the main grid's networks use the scale's n_train
    assert len(select(grid="main", dataset="fashion-mnist", task="denoising", n_train=10_000)) == 3
    with pytest.raises(ValueError, match="grid"):
        select(grid="nope")
    parser = build_parser()
    for exp in GRID + ANALYSIS:
        args = parser.parse_args(shlex.split(exp.command())[3:])
        sel = {k: getattr(args, k) for k in ("dataset", "task", "arch", "physics", "grid", "patch_size", "n_train")}
        assert select(**sel, scale=args.scale) == [exp], exp.command()


def test_held_out_test_images_without_a_test_split(tmp_path):
    import numpy as np
    from PIL import Image

    folder = tmp_path / "ffhq-32"
    folder.mkdir()
    imgs = np.random.default_rng(0).integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    for i, img in enumerate(imgs):
        Image.fromarray(img, mode="RGB").save(folder / f"{i:05d}.png")
    with pytest.warns(UserWarning, match="held-out"):
        x = eval_images("ffhq32", "test", n_images=8, n_train=3, data_root=tmp_path)
    assert x.shape == (2, 3, 32, 32)
    want = torch.from_numpy(imgs[3:5]).permute(0, 3, 1, 2).float() / 255
    assert torch.equal(x, want)
    assert eval_images("ffhq32", "train", n_images=2, n_train=3, data_root=tmp_path).shape[0] == 2
    with pytest.raises(ValueError, match="n_images=4"):
        eval_images("ffhq32", "train", n_images=4, n_train=3, data_root=tmp_path)
    with pytest.raises(ValueError, match="test"):  # nothing held out
        eval_images("ffhq32", "test", n_images=2, n_train=5, data_root=tmp_path)


def test_cpu_long_scale_is_the_cpu_grid_trained_16_times_longer():
    """Same networks, data and batches as "cpu", 12 800 steps: the FashionMNIST denoising
    networks of the training-budget study (committed) are its networks."""
    from lemmse.experiments import BUDGET_STEPS

    assert SCALES["cpu-long"].steps == 16 * SCALES["cpu"].steps
    assert SCALES["cpu-long"].steps in BUDGET_STEPS
    for exp in GRID + ANALYSIS:
        long, short = exp.config("cpu-long"), exp.config("cpu")
        assert long.steps == 12_800
        assert long.identity() == {**short.identity(), "steps": 12_800}, exp
    for arch in ("unet", "resnet", "patchmlp"):
        config = Experiment("fashion-mnist", "denoising", arch).config("cpu-long")
        assert (CKPT_DIR / config.filename()).exists(), config.filename()
    assert "--scale cpu-long" in GRID[0].command("cpu-long")


LONG_CSV = REPO_ROOT / "results" / "agreement_cpu_long.csv"


def test_cpu_long_csv_format_and_slice_recomputed(real_data_root):
    """results/agreement_cpu_long.csv: the grid at 12 800 steps, filled as its networks finish
    (issue 11 part 2); its one-image σ = 0.2 CIFAR-10 rows recomputed from the checkpoints."""
    if not LONG_CSV.exists():
        pytest.skip(f"{LONG_CSV} missing")
    assert LONG_CSV.read_text().splitlines()[0] == ",".join(CSV_COLUMNS)
    rows = read_agreement_csv(LONG_CSV)
    for r in rows:
        default = r["n_train"] == SCALE_N[r["dataset"]]
        exp = Experiment(r["dataset"], r["task"], r["arch"], r["physics"],
                         n_train=None if default else r["n_train"])
        assert exp in (GRID if default else ANALYSIS), r  # the dataset-size networks are ANALYSIS
        assert (CKPT_DIR / exp.config("cpu-long").filename()).exists(), r  # committed network
    assert {r["n_train"] for r in rows if r["dataset"] == "fashion-mnist"} == {100, 1_000, 10_000, 60_000}
    want = [r for r in rows if r["dataset"] == "cifar10" and r["split"] == "test" and r["sigma"] == 0.2
            and r["n_images"] == 1]
    assert len(want) == 3, "the CSV should hold the one-image σ = 0.2 rows of the three CIFAR-10 networks"
    got = evaluate_agreement([Experiment("cifar10", "denoising", r["arch"]) for r in want], "cpu-long",
                             sigmas=[0.2], splits=["test"], n_images=1, roots=[CKPT_DIR],
                             data_root=real_data_root, progress=False)
    got = {r["arch"]: r for r in got}
    for r in want:
        for k in ("psnr_net_lemmse", "psnr_net_truth", "psnr_lemmse_truth"):
            assert abs(got[r["arch"]][k] - r[k]) <= TOLERANCE_DB, (r["arch"], k, got[r["arch"]][k], r[k])
