"""Tests of lemmse.train and the ``train`` / ``export`` command line.

Tiny synthetic data (smooth random 12×12 or 16×16 images), a few dozen steps at most.
"""

import gzip
import struct
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import lemmse.train as train_mod
from lemmse.__main__ import main
from lemmse.train import (
    TASKS,
    TrainConfig,
    checkpoint_path,
    export_checkpoint,
    load_checkpoint,
    train_model,
    train_or_load,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def smooth_images(n=32, channels=1, size=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, channels, size, size, generator=gen)
    return F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="circular"), 3, 1)


def tiny_config(**kw):
    base = dict(
        dataset="synthetic",
        n_train=32,
        arch="resnet",
        patch_size=3,
        width=16,
        steps=12,
        batch_size=8,
        warmup_steps=3,
        checkpoint_every=0,
        device="cpu",
    )
    base.update(kw)
    return TrainConfig(**base)


def write_idx_images(root, n=10, size=12, seed=0):
    """A tiny FashionMNIST-format training file under ``root/fashion-mnist``."""
    folder = root / "fashion-mnist"
    folder.mkdir(parents=True, exist_ok=True)
    pixels = (smooth_images(n, 1, size, seed) * 255).round().to(torch.uint8).numpy().tobytes()
    with gzip.open(folder / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">iiii", 2051, n, size, size) + pixels)
    return root


def load_raw(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_tree(a, b, where="checkpoint"):
    """Bitwise equality of nested dicts / lists / tensors."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            assert_same_tree(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (u, v) in enumerate(zip(a, b)):
            assert_same_tree(u, v, f"{where}[{i}]")
    else:
        assert a == b, where


# ----------------------------------------------------------------------------- training


def test_short_run_lowers_the_loss():
    data = smooth_images(32)
    config = tiny_config(steps=60, warmup_steps=5, lr=3e-3)
    result = train_model(config, data=data, progress=False)
    loss = result.history["loss"]
    assert loss.shape == (60,) and result.history["lr"].shape == (60,)
    assert loss[-10:].mean() < 0.5 * loss[:10].mean()
    # the EMA network denoises a fixed noisy batch better than the initial weights
    x = data[:8]
    sigma = torch.full((8,), 0.3)
    y = x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(9))
    init = train_mod._build_model(config, 1).eval()
    with torch.no_grad():
        assert F.mse_loss(result.model(y, sigma), x) < 0.5 * F.mse_loss(init(y, sigma), x)
    assert not result.model.training
    assert result.step == 60 and result.checkpoint is None


def test_learning_rate_schedule():
    lr = torch.tensor([train_mod._lr_factor(s, 100, 10) for s in range(100)])
    assert lr[0] == pytest.approx(0.1) and lr[9] == pytest.approx(1.0)
    assert torch.all(lr[10:].diff() <= 0) and lr[-1] < 0.01
    assert train_mod._lr_factor(0, 5, 10) == pytest.approx(0.2)  # warm-up longer than the run


def test_same_seed_same_weights_other_seed_other_weights():
    data = smooth_images(16)
    a = train_model(tiny_config(n_train=16, steps=4), data=data, progress=False)
    b = train_model(tiny_config(n_train=16, steps=4), data=data, progress=False)
    c = train_model(tiny_config(n_train=16, steps=4, seed=1), data=data, progress=False)
    assert_same_tree(a.model.state_dict(), b.model.state_dict())
    assert not torch.equal(a.model.lift.weight, c.model.lift.weight)


def test_global_rng_is_left_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_model(tiny_config(n_train=16, steps=2), data=smooth_images(16), progress=False)
    assert torch.equal(torch.rand(3), expected)


def test_resume_after_until_step_matches_uninterrupted(tmp_path):
    data = smooth_images(20)  # 20 images, batch 8: batches straddle epochs
    config = tiny_config(n_train=20, steps=12)
    full = train_model(config, data=data, checkpoint=tmp_path / "full.pt", progress=False)
    part = train_model(config, data=data, checkpoint=tmp_path / "part.pt", progress=False, until_step=5)
    assert part.step == 5 and load_raw(tmp_path / "part.pt")["complete"] is False
    resumed = train_model(config, data=data, checkpoint=tmp_path / "part.pt", progress=False)
    assert resumed.step == 12
    a, b = load_raw(tmp_path / "full.pt"), load_raw(tmp_path / "part.pt")
    for key in ("model", "ema", "optimizer", "scheduler", "rng", "history", "step", "config"):
        assert_same_tree(a[key], b[key], key)
    assert_same_tree(full.model.state_dict(), resumed.model.state_dict())


def test_resume_after_a_crash_matches_uninterrupted(tmp_path, monkeypatch):
    """A run killed after step 7 resumes from its periodic checkpoint (step 6) and ends identical."""
    data = smooth_images(32)
    config = tiny_config(steps=10, checkpoint_every=3, physics="aware", task="inpainting-random")
    train_model(config, data=data, checkpoint=tmp_path / "full.pt", progress=False)

    calls = {"n": 0}
    original = train_mod._IndexStream.next

    def crashing_next(self, batch):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(train_mod._IndexStream, "next", crashing_next)
    with pytest.raises(KeyboardInterrupt):
        train_model(config, data=data, checkpoint=tmp_path / "crash.pt", progress=False)
    assert load_raw(tmp_path / "crash.pt")["step"] == 6
    monkeypatch.setattr(train_mod._IndexStream, "next", original)
    train_model(config, data=data, checkpoint=tmp_path / "crash.pt", progress=False)
    a, b = load_raw(tmp_path / "full.pt"), load_raw(tmp_path / "crash.pt")
    for key in ("model", "ema", "optimizer", "rng", "history"):
        assert_same_tree(a[key], b[key], key)


@pytest.mark.parametrize(
    "task, physics",
    [
        ("denoising", "aware"),
        ("inpainting", "agnostic"),
        ("inpainting", "aware"),
        ("deblurring", "agnostic"),
        ("deblurring", "aware"),
        ("deblurring-disk", "agnostic"),
    ],
)
def test_every_task_and_physics_trains(task, physics):
    config = tiny_config(n_train=8, task=task, physics=physics, steps=3, batch_size=4, sigma_max=0.1)
    result = train_model(config, data=smooth_images(8, channels=3, size=16), progress=False)
    assert torch.isfinite(result.history["loss"]).all()
    assert result.model.channels == 3


def test_physics_aware_network_sees_the_preinverse(monkeypatch):
    """Inpainting + aware: the network input is zero in the hole (B = mask); agnostic: it is not."""
    seen = {}
    from lemmse.nets import ResNet

    original = ResNet.forward

    def spy(self, v, sigma):
        seen.setdefault("v", v.detach().clone())
        return original(self, v, sigma)

    monkeypatch.setattr(ResNet, "forward", spy)
    data = smooth_images(8, size=16)
    train_model(tiny_config(n_train=8, task="inpainting", physics="aware", steps=1), data=data, progress=False)
    hole = seen.pop("v")[:, :, 1:16, 1:16]  # centre 15×15 of a 16×16 image: rows/cols 1..15
    assert torch.all(hole == 0)
    train_model(tiny_config(n_train=8, task="inpainting", physics="agnostic", steps=1), data=data, progress=False)
    assert seen["v"][:, :, 1:16, 1:16].abs().max() > 0


def test_predict_applies_the_preinverse(tmp_path):
    from lemmse.operators import Inpainting

    data = smooth_images(8, size=16)
    y = data[:2] + 0.1 * torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    mask = Inpainting.center_box((1, 16, 16), 15).mask
    for physics, v in (("aware", mask * y), ("agnostic", y)):
        config = tiny_config(n_train=8, task="inpainting", physics=physics, steps=2)
        model = train_or_load(config, tmp_path, data=data, progress=False)
        with torch.no_grad():
            expected = model(v, 0.1)
        torch.testing.assert_close(train_mod.predict(model, y, 0.1), expected, atol=0, rtol=0)
        out64 = train_mod.predict(model, y.double(), torch.tensor([0.1, 0.1]))
        assert out64.dtype == torch.float64
    with pytest.raises(ValueError, match="config"):
        train_mod.predict(train_mod._build_model(config, 1), y, 0.1)


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(arch="vgg"), ValueError, "arch must be one of"),
        (dict(patch_size=4), ValueError, "patch_size must be odd, got 4"),
        (dict(patch_size=1), ValueError, "patch_size"),
        (dict(steps=-1), ValueError, "steps must be >= 1"),
        (dict(steps=0), ValueError, "steps"),
        (dict(steps=True), TypeError, "steps"),
        (dict(steps=2.5), TypeError, "steps"),
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(n_train=0), ValueError, "n_train"),
        (dict(lr=0), ValueError, "lr"),
        (dict(lr=-1e-3), ValueError, "lr"),
        (dict(lr=float("nan")), ValueError, "lr"),
        (dict(lr="fast"), TypeError, "lr"),
        (dict(weight_decay=-1), ValueError, "weight_decay"),
        (dict(grad_clip=-1), ValueError, "grad_clip"),
        (dict(ema_decay=1.0), ValueError, "ema_decay"),
        (dict(ema_decay=-0.1), ValueError, "ema_decay"),
        (dict(sigma_max=-0.5), ValueError, "sigma_max"),
        (dict(warmup_steps=-1), ValueError, "warmup_steps"),
        (dict(checkpoint_every=-1), ValueError, "checkpoint_every"),
        (dict(seed=-1), ValueError, "seed"),
        (dict(task="colourisation"), ValueError, "task must be one of"),
        (dict(physics="blind"), ValueError, "physics must be one of"),
        (dict(split="val"), ValueError, "split must be one of"),
        (dict(dataset=""), ValueError, "dataset"),
        (dict(width=0), ValueError, "width"),
        (dict(width="huge"), ValueError, "width"),
        (dict(device="gpu-please"), ValueError, "device"),
        (dict(device=0), TypeError, "device"),
    ],
)
def test_bad_config(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        tiny_config(**kwargs)


def test_config_normalisation_and_identity():
    a = tiny_config(lr=1, width=None)
    assert a.lr == 1.0 and isinstance(a.lr, float)
    assert a.width == 48  # resolved default for resnet
    b = tiny_config(lr=1.0, width=48, device="auto", checkpoint_every=5)
    assert a.key() == b.key() and a.filename() == b.filename()  # run-only fields left out
    assert tiny_config(lr=2e-3).key() != tiny_config().key()
    name = tiny_config().filename()
    assert name.startswith("synthetic_denoising_agnostic_resnet_P3_w16_n32_s12_") and name.endswith(".pt")
    assert TrainConfig.from_dict(a.to_dict()) == a
    with pytest.raises(ValueError, match="unknown TrainConfig field"):
        TrainConfig.from_dict({**a.to_dict(), "momentum": 0.9})
    assert set(TASKS) >= {"denoising", "inpainting", "deblurring"}


def test_config_key_is_stable():
    """The file name must not change between Python sessions or versions (sha256 of sorted JSON)."""
    import hashlib
    import json

    config = tiny_config()
    text = json.dumps(config.identity(), sort_keys=True, separators=(",", ":"))
    assert config.key() == hashlib.sha256(text.encode()).hexdigest()[:12]
    assert "device" not in config.identity() and "checkpoint_every" not in config.identity()


def test_n_train_larger_than_data():
    with pytest.raises(ValueError, match="n_train=40 is larger than data, which holds 32 images"):
        train_model(tiny_config(n_train=40), data=smooth_images(32), progress=False)


def test_n_train_larger_than_dataset_on_disk(tmp_path):
    root = write_idx_images(tmp_path, n=10)
    config = tiny_config(dataset="fashion-mnist", n_train=11)
    with pytest.raises(ValueError, match="n_train=11"):
        train_model(config, data_root=root, progress=False)


def test_unknown_dataset_without_data():
    with pytest.raises(ValueError, match="dataset must be one of"):
        train_model(tiny_config(dataset="mnist-digits"), progress=False)


def test_bad_data_and_until_step():
    with pytest.raises(ValueError, match="data must be a float tensor"):
        train_model(tiny_config(), data=torch.zeros(32, 12, 12), progress=False)
    with pytest.raises(ValueError, match="until_step"):
        train_model(tiny_config(), data=smooth_images(), progress=False, until_step=13)
    with pytest.raises(TypeError, match="config"):
        train_model({"arch": "unet"}, data=smooth_images(), progress=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_but_missing():
    with pytest.raises(ValueError, match="CUDA is not available"):
        train_model(tiny_config(device="cuda"), data=smooth_images(), progress=False)


def test_loads_the_real_dataset_format(tmp_path):
    root = write_idx_images(tmp_path, n=10)
    result = train_model(tiny_config(dataset="fashion-mnist", n_train=10, steps=2), data_root=root, progress=False)
    assert result.history["loss"].shape == (2,)


# ----------------------------------------------------------------------------- checkpoints


def test_train_or_load_trains_once_then_loads(tmp_path, monkeypatch):
    data = smooth_images(16)
    config = tiny_config(n_train=16, steps=5, checkpoint_every=2)
    model = train_or_load(config, tmp_path, data=data, progress=False)
    path = checkpoint_path(config, tmp_path)
    assert path.is_file() and path.parent == tmp_path
    assert not list(tmp_path.glob("*.partial.pt")) and not list(tmp_path.glob("*.tmp"))
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert model.train_config == config

    def no_training(*args, **kwargs):
        raise AssertionError("should have loaded the checkpoint")

    monkeypatch.setattr(train_mod, "train_model", no_training)
    again = train_or_load(tiny_config(n_train=16, steps=5, device="auto"), tmp_path, progress=False)
    assert_same_tree(model.state_dict(), again.state_dict())

    loaded, cfg, history = load_checkpoint(path)
    assert cfg == config and history["loss"].shape == (5,)
    assert_same_tree(loaded.state_dict(), model.state_dict())


def test_train_or_load_resumes_a_partial_run(tmp_path):
    data = smooth_images(16)
    config = tiny_config(n_train=16, steps=6)
    final = checkpoint_path(config, tmp_path)
    partial = final.with_name(final.name.replace(".pt", ".partial.pt"))
    train_model(config, data=data, checkpoint=partial, progress=False, until_step=3)
    model = train_or_load(config, tmp_path, data=data, progress=False)
    reference = train_model(config, data=data, progress=False)
    assert_same_tree(model.state_dict(), reference.model.state_dict())
    assert final.exists() and not partial.exists()


def test_corrupt_checkpoint_names_the_file(tmp_path):
    data = smooth_images(16)
    config = tiny_config(n_train=16, steps=2)
    path = checkpoint_path(config, tmp_path)
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match="corrupt") as info:
        train_or_load(config, tmp_path, data=data, progress=False)
    assert str(path) in str(info.value)
    # a truncated real checkpoint
    path.unlink()
    train_or_load(config, tmp_path, data=data, progress=False)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="corrupt"):
        load_checkpoint(path)
    # a torch file that is not a lemmse checkpoint
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="not a lemmse training checkpoint"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_mismatched_checkpoint_names_the_file_and_field(tmp_path):
    data = smooth_images(16)
    a = tiny_config(n_train=16, steps=2)
    b = tiny_config(n_train=16, steps=2, lr=5e-4)
    train_or_load(a, tmp_path, data=data, progress=False)
    checkpoint_path(a, tmp_path).rename(checkpoint_path(b, tmp_path))
    with pytest.raises(ValueError, match=r"another config \(lr: requested 0.0005, checkpoint 0.001\)") as info:
        train_or_load(b, tmp_path, data=data, progress=False)
    assert str(checkpoint_path(b, tmp_path)) in str(info.value)
    with pytest.raises(ValueError, match="another config"):
        train_model(b, data=data, checkpoint=checkpoint_path(b, tmp_path), progress=False)


def test_export_half_precision(tmp_path):
    data = smooth_images(16)
    config = tiny_config(n_train=16, steps=3, arch="unet", width=24)
    model = train_or_load(config, tmp_path / "full", data=data, progress=False)
    src = checkpoint_path(config, tmp_path / "full")
    dst = export_checkpoint(src, tmp_path / "small.pt")
    assert dst.stat().st_size < 0.5 * src.stat().st_size
    assert all(v.dtype == torch.float16 for v in load_raw(dst)["ema"].values() if v.is_floating_point())
    small, cfg, history = load_checkpoint(dst)
    assert cfg == config and history["loss"].shape == (3,)
    assert all(p.dtype == torch.float32 for p in small.parameters())
    v = data[:4]
    with torch.no_grad():
        torch.testing.assert_close(small(v, 0.2), model(v, 0.2), atol=2e-2, rtol=0)
    full_precision = export_checkpoint(src, tmp_path / "fp32.pt", half=False)
    assert_same_tree(load_checkpoint(full_precision)[0].state_dict(), model.state_dict())
    with pytest.raises(ValueError, match="cannot be resumed"):
        train_model(config, data=data, checkpoint=dst, progress=False)


def test_export_refuses_unfinished(tmp_path):
    config = tiny_config(n_train=16, steps=4)
    train_model(config, data=smooth_images(16), checkpoint=tmp_path / "p.pt", progress=False, until_step=2)
    with pytest.raises(ValueError, match="unfinished"):
        export_checkpoint(tmp_path / "p.pt", tmp_path / "e.pt")


# ----------------------------------------------------------------------------- command line


def test_cli_train_and_export(tmp_path, capsys):
    data_root = write_idx_images(tmp_path / "data", n=10)
    argv = [
        "train", "--dataset", "fashion-mnist", "--task", "denoising", "--arch", "unet", "--patch-size", "3",
        "--width", "8", "--n-train", "10", "--steps", "3", "--batch-size", "4", "--device", "auto",
        "--root", str(tmp_path / "ckpt"), "--data-root", str(data_root), "--no-progress",
    ]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    config = TrainConfig(dataset="fashion-mnist", arch="unet", patch_size=3, width=8, n_train=10, steps=3, batch_size=4)
    path = checkpoint_path(config, tmp_path / "ckpt")
    assert f"checkpoint: {path}" in out and "trained" in out and path.is_file()
    assert main(argv) == 0
    assert "loaded existing" in capsys.readouterr().out
    assert main(["export", str(path), str(tmp_path / "small.pt")]) == 0
    assert "exported" in capsys.readouterr().out
    load_checkpoint(tmp_path / "small.pt")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--arch", "vgg"], "invalid choice"),
        (["--patch-size", "4"], "patch_size must be odd, got 4"),
        (["--steps", "-3"], "steps must be >= 1"),
        (["--width", "wide"], "width must be an integer"),
    ],
)
def test_cli_bad_options(extra, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["train", "--root", str(tmp_path), *extra])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    code = main(["train", "--n-train", "5", "--steps", "1", "--data-root", str(tmp_path), "--root", str(tmp_path)])
    assert code == 1
    assert "error:" in capsys.readouterr().err


def test_cli_help_in_a_subprocess():
    done = subprocess.run([sys.executable, "-m", "lemmse", "train", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    for flag in ("--patch-size", "--sigma-max", "--ema-decay", "--checkpoint-every", "--root", "--device"):
        assert flag in done.stdout


def test_compile_is_a_run_only_field():
    """``compile`` changes how a step runs, not what is trained: same key, same file name."""
    assert tiny_config(compile=True).key() == tiny_config().key()
    assert "compile" not in tiny_config(compile=True).identity()
    assert TrainConfig.from_dict(tiny_config(compile=True).to_dict()).compile is True
    with pytest.raises(TypeError, match="compile must be True or False, got 'yes'"):
        tiny_config(compile="yes")


def test_compiled_training_matches_eager():
    """torch.compile (inductor on the CPU) trains the same network up to float rounding."""
    data = smooth_images(16)
    eager = train_model(tiny_config(n_train=16, steps=4), data=data, progress=False)
    compiled = train_model(tiny_config(n_train=16, steps=4, compile=True), data=data, progress=False)
    assert torch.allclose(compiled.history["loss"], eager.history["loss"], rtol=1e-4, atol=1e-6)
    for (name, a), b in zip(eager.model.state_dict().items(), compiled.model.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), name


def test_compile_failure_falls_back_to_eager(monkeypatch):
    """A failing compilation warns once and the same step runs eagerly: the eager result, bitwise."""
    def broken(model):
        def fn(*args):
            raise RuntimeError("no C++ compiler")
        return fn

    monkeypatch.setattr(torch, "compile", broken)
    data = smooth_images(16)
    eager = train_model(tiny_config(n_train=16, steps=3), data=data, progress=False)
    with pytest.warns(RuntimeWarning, match="torch.compile failed .RuntimeError: no C.. compiler.; training eagerly"):
        fallback = train_model(tiny_config(n_train=16, steps=3, compile=True), data=data, progress=False)
    assert torch.equal(fallback.history["loss"], eager.history["loss"])
    assert_same_tree(fallback.model.state_dict(), eager.model.state_dict())


def test_train_or_load_never_returns_a_network_trained_on_other_data(tmp_path):
    """Issue 18 class 4: the images are not in the config; the checkpoint's fingerprint is checked."""
    config = tiny_config(n_train=16, steps=2)
    data = smooth_images(16)
    first = train_or_load(config, tmp_path, data=data, progress=False)
    again = train_or_load(config, tmp_path, data=data.clone(), progress=False)  # same images: loads
    assert_same_tree(first.state_dict(), again.state_dict())
    other = smooth_images(16, seed=1)
    with pytest.raises(ValueError, match="was trained on other images than the data given"):
        train_or_load(config, tmp_path, data=other, progress=False)
    # the export keeps the fingerprint
    path = checkpoint_path(config, tmp_path)
    export_checkpoint(path, tmp_path / "export" / path.name)
    with pytest.raises(ValueError, match="other images"):
        train_or_load(config, tmp_path / "export", data=other, progress=False)
    # resuming a partial run with other images fails too
    part = train_model(tiny_config(n_train=16, steps=4), data=data, checkpoint=tmp_path / "p.pt",
                       progress=False, until_step=2)
    assert part.step == 2
    with pytest.raises(ValueError, match="other images"):
        train_model(tiny_config(n_train=16, steps=4), data=other, checkpoint=tmp_path / "p.pt", progress=False)


def test_non_finite_training_data_is_named_before_training():
    data = smooth_images(16)
    data[5, 0, 3, 3] = float("nan")
    data[9, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"non-finite values \(NaN or Inf\) in 2 of its first 16 images \(the first: image 5\)"):
        train_model(tiny_config(n_train=16, steps=2), data=data, progress=False)
    # images past n_train are not used, so not checked
    train_model(tiny_config(n_train=5, steps=1), data=data, progress=False)


def test_train_or_load_checks_root_and_device_before_training(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(train_mod, "train_model", lambda *a, **k: calls.append(1))
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ValueError, match="root must be a folder for the checkpoints, got the file"):
        train_or_load(tiny_config(), afile, data=smooth_images(32), progress=False)
    with pytest.raises(TypeError, match="root must be a folder path .str or os.PathLike., got int 123"):
        train_or_load(tiny_config(), 123, data=smooth_images(32), progress=False)
    with pytest.raises(ValueError, match="device must be 'auto' or a torch device string, got 'foo'"):
        train_or_load(tiny_config(), tmp_path, data=smooth_images(32), progress=False, device="foo")
    assert calls == []


def test_patch_size_larger_than_the_images_is_an_error():
    with pytest.raises(ValueError, match="patch_size=13 is larger than the data images .12×12."):
        train_model(tiny_config(patch_size=13), data=smooth_images(32), progress=False)


def test_cli_says_resumed_warmup_and_what_the_final_loss_is(tmp_path, capsys):
    data_root = write_idx_images(tmp_path / "data", n=10)
    argv = [
        "train", "--dataset", "fashion-mnist", "--arch", "resnet", "--patch-size", "3", "--width", "8",
        "--n-train", "8", "--steps", "3", "--warmup-steps", "5", "--batch-size", "4",
        "--root", str(tmp_path / "ckpt"), "--data-root", str(data_root), "--no-progress",
    ]  # fmt: skip
    config = TrainConfig(dataset="fashion-mnist", arch="resnet", patch_size=3, width=8, n_train=8,
                         steps=3, warmup_steps=5, batch_size=4)
    final = checkpoint_path(config, tmp_path / "ckpt")
    partial = final.with_name(final.name[: -len(".pt")] + ".partial.pt")
    train_model(config, checkpoint=partial, data_root=data_root, progress=False, until_step=1)
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert f"resuming from step 1 of 3 ({partial})" in captured.out
    assert "warmup_steps=5 >= steps=3" in captured.err
    assert "(mean of the last 3 steps)" in captured.out
