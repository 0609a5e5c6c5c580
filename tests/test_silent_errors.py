"""Nothing silent (issue 18): bad input and corrupt files give a clear error, never a wrong number.

Each test here returned a silently wrong result, or an error that did not say what was wrong,
before the fix it comes with.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import lemmse
from lemmse.train import load_checkpoint, predict

ROOT = Path(__file__).resolve().parents[1]
CKPTS = ROOT / "results" / "checkpoints"


def _fmnist_denoiser() -> Path:
    files = sorted(CKPTS.glob("fashion-mnist_denoising_agnostic_unet_P5_*.pt"))
    assert files, "no committed FashionMNIST denoising U-Net"
    return files[0]


@pytest.fixture(scope="module")
def net():
    return load_checkpoint(_fmnist_denoiser())[0]


# ------------------------------------------------------------------------------ predict
@pytest.mark.parametrize("sigma, kind, words", [
    (-0.1, ValueError, "positive"),
    (float("nan"), ValueError, "positive and finite"),
    (float("inf"), ValueError, "positive and finite"),
    (True, TypeError, "bool"),
    ([0.1, 0.2, 0.3], ValueError, "one value per image"),
    (1e-300, ValueError, "underflows"),
    ("0.1", TypeError, "sigma"),
])
def test_predict_rejects_bad_sigma(net, sigma, kind, words):
    y = torch.rand(2, 1, 28, 28)
    with pytest.raises(kind, match=words):
        predict(net, y, sigma)


@pytest.mark.parametrize("y, words", [
    (torch.randint(0, 255, (2, 1, 28, 28)), "floating-point"),
    (torch.rand(2, 1, 28, 28, dtype=torch.complex64), "floating-point"),
    (torch.full((2, 1, 28, 28), float("nan")), "NaN or Inf"),
    (torch.rand(2, 3, 28, 28), "channels"),
    (torch.rand(1, 28, 28), "4 dimensions"),
    (torch.rand(0, 1, 28, 28), "empty"),
])
def test_predict_rejects_bad_images(net, y, words):
    with pytest.raises((TypeError, ValueError), match=words):
        predict(net, y, 0.1)


def test_predict_accepts_per_image_sigma(net):
    y = torch.rand(2, 1, 28, 28)
    both = predict(net, y, [0.1, 0.3])
    assert torch.allclose(both[:1], predict(net, y[:1], 0.1))
    assert torch.allclose(both[1:], predict(net, y[1:], 0.3))


# ------------------------------------------------------------------------------ measure
@pytest.mark.parametrize("op", [lemmse.Denoising(), lemmse.Blur.gaussian((8, 8), 1.0)])
def test_measure_rejects_non_finite_images(op):
    x = torch.rand(2, 1, 8, 8)
    x[0, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        op.measure(x, 0.1)


def test_measure_names_a_bad_generator():
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        lemmse.Denoising().measure(torch.rand(1, 1, 8, 8), 0.1, generator="seed")


def test_estimator_sigma_underflow_is_named():
    train = torch.rand(3, 1, 8, 8)
    est = lemmse.LEMMSE(train, patch_size=3)
    with pytest.raises(ValueError, match="underflows to 0 in torch.float32"):
        est(torch.rand(1, 1, 8, 8), 1e-300)


# ------------------------------------------------------------------------------ checkpoints
def _copy(tmp_path: Path, with_manifest: bool) -> Path:
    src = _fmnist_denoiser()
    dst = tmp_path / src.name
    shutil.copy(src, dst)
    if with_manifest:
        shutil.copy(CKPTS / "MANIFEST.json", tmp_path / "MANIFEST.json")
    return dst


def test_committed_checkpoints_carry_a_weight_hash():
    for f in sorted(CKPTS.glob("*.pt")):
        ckpt = torch.load(f, map_location="cpu", weights_only=True)
        assert "ema_sha256" in ckpt, f.name


def test_flipped_exponent_bit_is_detected(tmp_path):
    path = _copy(tmp_path, with_manifest=False)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    name = next(k for k, v in ckpt["ema"].items() if v.is_floating_point() and v.numel() > 4)
    w = ckpt["ema"][name]
    bits = w.view(torch.int16) if w.dtype == torch.float16 else w.view(torch.int32)
    bits.view(-1)[3] ^= 1 << (13 if w.dtype == torch.float16 else 29)  # an exponent bit
    torch.save(ckpt, path)  # the stored hash is the old one
    with pytest.raises(ValueError, match="do not match the sha256 stored"):
        load_checkpoint(path)


def test_non_finite_weights_are_rejected(tmp_path):
    path = _copy(tmp_path, with_manifest=False)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    name = next(k for k, v in ckpt["ema"].items() if v.is_floating_point())
    ckpt["ema"][name] = torch.full_like(ckpt["ema"][name], float("nan"))
    ckpt.pop("ema_sha256")  # as a checkpoint written before hashes were stored
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match="non-finite weights"):
        load_checkpoint(path)


def test_manifest_sha256_is_checked(tmp_path):
    path = _copy(tmp_path, with_manifest=True)
    load_checkpoint(path)  # intact copy with its manifest: loads
    manifest = json.loads((tmp_path / "MANIFEST.json").read_text())
    manifest["files"][path.name]["sha256"] = "0" * 64
    (tmp_path / "MANIFEST.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="does not match the sha256 in"):
        load_checkpoint(path)


# ------------------------------------------------------------------------------ native kernel cache
_ESTIMATE = (
    "import torch, lemmse\n"
    "g = torch.Generator().manual_seed(0)\n"
    "train = torch.rand(4, 1, 8, 8, generator=g)\n"
    "y = torch.rand(2, 1, 8, 8, generator=g)\n"
    "a = lemmse.LEMMSE(train, patch_size=3)(y, 0.2)\n"
    "b = lemmse.LEMMSE(train, patch_size=3, backend='torch')(y, 0.2)\n"
    "assert (a - b).abs().max() < 1e-5, float((a - b).abs().max())\n"
    "print('ok')\n"
)


def _run_estimate(env_extra, tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "LEMMSE_CACHE": str(tmp_path / "cache"), **env_extra}
    return subprocess.run([sys.executable, "-W", "always", "-c", _ESTIMATE], env=env,
                          capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_truncated_cached_kernel_is_rebuilt(tmp_path):
    from lemmse import _native

    if _native.isa() is None:
        pytest.skip("no native kernels on this CPU")
    first = _run_estimate({}, tmp_path)
    assert first.returncode == 0, first.stderr
    libs = sorted((tmp_path / "cache" / "kernels").glob("slide_*.so"))
    assert libs and all(lib.with_name(lib.name + ".sha256").is_file() for lib in libs)
    size = libs[0].stat().st_size
    with open(libs[0], "r+b") as f:  # cut to 1 000 bytes: loading it would be a bus error
        f.truncate(1000)
    second = _run_estimate({}, tmp_path)
    assert second.returncode == 0, second.stderr  # no crash: rebuilt
    assert libs[0].stat().st_size == size


def test_missing_compiler_warns_and_falls_back(tmp_path):
    from lemmse import _native

    if _native.isa() is None:
        pytest.skip("no native kernels on this CPU")
    out = _run_estimate({"CC": "/bin/false"}, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "native kernel 'slide' is unavailable" in out.stderr
    assert "falling back to the pure-torch path" in out.stderr
