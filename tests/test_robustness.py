"""Robustness of ``predict``, ``measure`` and the checkpoints (issue 18, items 3, 5 and 6).

Bad input gives a clear error that names the argument; a corrupt checkpoint gives an error that
names the file; valid input gives the same numbers as the formula it computes.
``tests/test_silent_errors.py`` holds one reproduction of each item; this file covers each
class: every dtype and value kind of ``y`` and ``sigma``, every operator and non-finite value,
corruption in each part of a checkpoint that a load or a resume reads.
"""

from __future__ import annotations

import json
import shutil
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lemmse
from lemmse.train import (
    PHYSICS,
    TrainConfig,
    checkpoint_path,
    export_checkpoint,
    load_checkpoint,
    make_operator,
    predict,
    train_model,
    train_or_load,
)
from lemmse.operators import preinverse

ROOT = Path(__file__).resolve().parents[1]
CKPTS = ROOT / "results" / "checkpoints"
MANIFEST = json.loads((CKPTS / "MANIFEST.json").read_text())["files"]

#: One committed network per (data set, task, physics) that the chapters use, plus a
#: group-averaged one.
NETS = [
    "fashion-mnist_denoising_agnostic_unet_P5_w16_n10000_s800",
    "fashion-mnist_deblurring_aware_unet_P5_w16_n10000_s800",
    "fashion-mnist_inpainting_aware_resnet_P5_w32_n10000_s800",
    "fashion-mnist_deblurring_agnostic_patchmlp_P5_w64_n10000_s800",
    "fashion-mnist_denoising_agnostic_unet_P5_w16_gd4_n1000_s800",
    "cifar10_denoising_agnostic_unet_P5_w16_n4000_s800",
]


def _committed(prefix: str) -> Path:
    files = sorted(CKPTS.glob(f"{prefix}_????????????.pt"))
    assert len(files) == 1, f"expected one committed {prefix}_<hash>.pt, found {len(files)}"
    return files[0]


@pytest.fixture(scope="module")
def net():
    return load_checkpoint(_committed(NETS[0]))[0]


def _y(batch=2, channels=1, size=28, seed=0):
    return torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


# =============================================================== item 5: predict validates
BAD_SIGMA = [
    # bools: True would be sigma = 1.0
    (True, TypeError, "bool"),
    (np.bool_(True), TypeError, "bool"),
    ([True, True], TypeError, "bool"),
    ([0.1, True], TypeError, "bool"),
    (np.array([True, False]), TypeError, "bool"),
    (torch.tensor([True, True]), TypeError, "bool"),
    # complex: the imaginary part would be dropped
    (0.1 + 0j, TypeError, "complex"),
    (np.complex128(0.1 + 1j), TypeError, "complex"),
    (np.array([0.1 + 1j, 0.2]), TypeError, "complex"),
    (torch.tensor([0.1 + 0j, 0.2 + 0j]), TypeError, "complex"),
    ([0.1, 0.2 + 1j], TypeError, "complex"),
    # text and nothing
    ("0.1", TypeError, "sigma"),
    ([0.1, "0.2"], TypeError, "sigma"),
    (None, TypeError, "sigma"),
    # values
    (-0.1, ValueError, "positive"),
    (0.0, ValueError, "positive"),
    (0, ValueError, "positive"),
    (float("nan"), ValueError, "positive and finite"),
    (float("inf"), ValueError, "positive and finite"),
    (-float("inf"), ValueError, "positive and finite"),
    ([0.1, float("nan")], ValueError, "positive and finite"),
    ([0.1, -0.2], ValueError, "positive and finite"),
    (torch.tensor([0.1, float("inf")]), ValueError, "positive and finite"),
    (np.array([0.1, 0.0]), ValueError, "positive and finite"),
    (1e-300, ValueError, "underflows"),
    (1e300, ValueError, "sigma overflows float32"),
    # lengths and shapes
    ([0.1, 0.2, 0.3], ValueError, "one value per image"),
    ([0.1], ValueError, "one value per image"),
    ([], ValueError, "one value per image"),
    (torch.tensor([[0.1], [0.2]]), ValueError, "one value per image"),
    (torch.full((2, 1, 1, 1), 0.1), ValueError, "one value per image"),
]


@pytest.mark.parametrize("sigma, kind, words", BAD_SIGMA,
                         ids=[f"{i}-{type(s).__name__}" for i, (s, _, _) in enumerate(BAD_SIGMA)])
def test_predict_rejects_bad_sigma(net, sigma, kind, words):
    with pytest.raises(kind, match=words) as info:
        predict(net, _y(), sigma)
    assert "sigma" in str(info.value)


def _one_pixel(value):
    y = torch.rand(2, 1, 28, 28)
    y[1, 0, 13, 7] = value
    return y


BAD_Y = [
    (torch.randint(0, 255, (2, 1, 28, 28)), "floating-point"),
    (torch.randint(0, 255, (2, 1, 28, 28), dtype=torch.int32), "floating-point"),
    (torch.randint(0, 255, (2, 1, 28, 28), dtype=torch.uint8), "floating-point"),
    (torch.rand(2, 1, 28, 28) > 0.5, "floating-point"),
    (torch.rand(2, 1, 28, 28, dtype=torch.complex64), "floating-point"),
    (torch.rand(2, 1, 28, 28, dtype=torch.complex128), "floating-point"),
    (torch.full((2, 1, 28, 28), float("nan")), "NaN or Inf"),
    (_one_pixel(float("inf")), "NaN or Inf"),
    (_one_pixel(-float("inf")), "NaN or Inf"),
    (_one_pixel(float("nan")), "NaN or Inf"),
    (torch.rand(0, 1, 28, 28), "empty"),
    (torch.rand(2, 1, 0, 28), "empty"),
    (torch.rand(1, 28, 28), "4 dimensions"),
    (torch.rand(2, 1, 1, 28, 28), "4 dimensions"),
    (torch.rand(2, 3, 28, 28), "channels"),
    (np.random.default_rng(0).random((2, 1, 28, 28)), "torch.Tensor"),
    ([[0.5]], "torch.Tensor"),
]


@pytest.mark.parametrize("y, words", BAD_Y, ids=[str(i) for i in range(len(BAD_Y))])
def test_predict_rejects_bad_y(net, y, words):
    with pytest.raises((TypeError, ValueError), match=words) as info:
        predict(net, y, 0.1)
    assert "y" in str(info.value)


def test_predict_never_returns_a_non_finite_estimate(net):
    """Finite but absurd inputs make the network overflow: an error, not NaN."""
    with pytest.raises(ValueError, match="network's estimate is not finite.*sigma"):
        predict(net, _y(), 1e30)
    with pytest.raises(ValueError, match="network's estimate is not finite.*\\|y\\| up to 3e\\+38"):
        predict(net, _y() * 3e38, 0.1)
    with pytest.raises(ValueError, match="overflows torch.float16"):  # fine in float32, not in y's dtype
        predict(net, (_y() * 6e4).half(), 1e3)


def test_predict_rejects_a_model_that_is_not_a_network():
    with pytest.raises(TypeError, match="model must be a trained network"):
        predict("checkpoint.pt", _y(), 0.1)


def _reference(model, y, sigma):
    """The formula predict computes, x_hat = φ(B y, σ), written out (float32, no checks)."""
    config = model.train_config
    pre = preinverse(make_operator(config.task, tuple(y.shape[1:])), PHYSICS[config.physics])
    s = torch.as_tensor(np.broadcast_to(np.asarray(sigma, dtype=np.float64), (y.shape[0],)).copy())
    with torch.no_grad():
        return model(pre(y.float()), s.float()).to(y.dtype)


@pytest.mark.parametrize("name", NETS)
def test_predict_valid_calls_give_the_formula(name):
    """Floats, ints, numpy scalars, Fractions and per-image lists, arrays and tensors (also
    with requires_grad) give bit-for-bit the written-out formula, in y's dtype, with no warning."""
    model = load_checkpoint(_committed(name))[0]
    c = model.train_config
    channels = 3 if c.dataset == "cifar10" else 1
    size = 32 if c.dataset == "cifar10" else 28
    y = _y(3, channels, size, seed=1)
    sigmas = [0.2, 1, np.float32(0.2), np.float64(0.05), Fraction(1, 5), [0.1, 0.2, 0.4],
              (0.1, 0.2, 0.4), np.array([0.1, 0.2, 0.4]), torch.tensor([0.1, 0.2, 0.4]),
              torch.tensor([0.1, 0.2, 0.4], dtype=torch.float64, requires_grad=True),
              torch.tensor(0.3)]
    for sigma in sigmas:
        plain = sigma.detach().tolist() if isinstance(sigma, torch.Tensor) else (
            float(sigma) if isinstance(sigma, Fraction) else sigma)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            got = predict(model, y, sigma)
        assert torch.equal(got, _reference(model, y, plain)), (name, sigma)
    for dtype in (torch.float64, torch.float16):
        got = predict(model, y.to(dtype), 0.2)
        assert got.dtype == dtype and torch.equal(got, _reference(model, y.to(dtype), 0.2))


# =============================================================== item 6: measure rejects NaN/Inf
OPERATORS = [
    lemmse.Denoising(),
    lemmse.Inpainting.center_box((8, 8), 4),
    lemmse.Inpainting.random((8, 8), 0.5, seed=0),
    lemmse.Blur.gaussian((8, 8), 1.0),
    lemmse.Blur.disk((8, 8), 2.0),
]
NON_FINITE = [float("nan"), float("inf"), -float("inf")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("bad", NON_FINITE, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("op", OPERATORS, ids=repr)
def test_measure_rejects_non_finite_x(op, bad, dtype):
    x = torch.rand(2, 1, 8, 8).to(dtype)
    x[1, 0, 2, 5] = bad  # also inside the inpainting hole, where A would hide it
    x[1, 0, 4, 4] = bad
    with pytest.raises(ValueError, match=r"x must hold real, finite values.*\(2 of 128 entries\)"):
        op.measure(x, 0.1, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("op", OPERATORS, ids=repr)
def test_measure_never_returns_a_non_finite_y(op):
    """Finite x and σ whose measurement overflows the dtype: an error naming x and sigma."""
    with pytest.raises(ValueError, match="measurement y is not finite.*sigma"):
        op.measure(torch.rand(2, 1, 8, 8), 1e300)
    big = torch.full((2, 1, 8, 8), torch.finfo(torch.float32).max)
    big[:, :, ::2] *= -1
    if isinstance(op, lemmse.Blur):  # the FFT of x overflows
        with pytest.raises(ValueError, match=r"measurement y is not finite.*\|x\| up to 3.4e\+38"):
            op.measure(big, 0.1)


@pytest.mark.parametrize("op", OPERATORS, ids=repr)
def test_measure_valid_calls_give_the_formula(op):
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    for sigma in (0.1, [0.1, 0.2, 0.3], torch.tensor([0.1, 0.2, 0.3])):
        y = op.measure(x, sigma, generator=torch.Generator().manual_seed(7))
        e = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
        s = torch.as_tensor(sigma, dtype=torch.float32).reshape(-1, 1, 1, 1)
        assert torch.equal(y, op.A(x) + s * e)


# =============================================================== item 3: corrupt checkpoints
def test_every_manifest_checkpoint_loads_and_predicts():
    """The committed (exported, fp16) networks carry a weight hash and load unchanged."""
    for name, entry in MANIFEST.items():
        path = CKPTS / name
        raw = torch.load(path, map_location="cpu", weights_only=True)
        assert "ema_sha256" in raw, name
        model, config, _ = load_checkpoint(path)
        assert path.name == config.filename(), name  # names (identities) unchanged
        colour = config.dataset in ("cifar10", "ffhq32")
        y = _y(1, 3 if colour else 1, 32 if colour else 28)
        assert torch.isfinite(predict(model, y, 0.2)).all(), name


def _copy_committed(tmp_path: Path, with_manifest: bool = False) -> Path:
    src = _committed(NETS[0])
    dst = tmp_path / src.name
    shutil.copy(src, dst)
    if with_manifest:
        shutil.copy(CKPTS / "MANIFEST.json", tmp_path / "MANIFEST.json")
    return dst


def _flip(t: torch.Tensor, index: int, bit: int):
    ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    t.view(ints).view(-1)[index] ^= 1 << bit


@pytest.mark.parametrize("bit", [0, 9, 13, 14, 15], ids=lambda b: f"bit{b}")
@pytest.mark.parametrize("which", ["first", "last"])
def test_any_flipped_weight_bit_is_detected(tmp_path, bit, which):
    """Mantissa, exponent and sign bits of the first and last weight tensor (fp16 export)."""
    path = _copy_committed(tmp_path)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    names = sorted(k for k, v in ckpt["ema"].items() if v.is_floating_point())
    w = ckpt["ema"][names[0] if which == "first" else names[-1]]
    assert w.dtype == torch.float16
    _flip(w, 0, bit)
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match="is corrupt: its weights do not match") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("bad", NON_FINITE, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("rehash", [False, True], ids=["no-hash", "hash-of-bad-weights"])
def test_non_finite_weights_are_rejected(tmp_path, bad, rehash):
    path = _copy_committed(tmp_path)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    name = sorted(ckpt["ema"])[-1]
    ckpt["ema"][name].view(-1)[0] = bad
    if rehash:  # a hash written over bad weights does not make them good
        from lemmse.train import _weights_sha256
        ckpt["ema_sha256"] = _weights_sha256(ckpt["ema"])
    else:
        ckpt.pop("ema_sha256")
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match=f"{path}.*non-finite weights"):
        load_checkpoint(path)


def test_a_wrong_stored_hash_or_malformed_weights_are_corrupt(tmp_path):
    path = _copy_committed(tmp_path)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    torch.save({**ckpt, "ema_sha256": "0" * 64}, path)
    with pytest.raises(ValueError, match="is corrupt"):
        load_checkpoint(path)
    torch.save({**ckpt, "ema": list(ckpt["ema"].values())}, path)
    with pytest.raises(ValueError, match="is corrupt: its 'ema' entry is not a dict of tensors"):
        load_checkpoint(path)


def test_a_flipped_byte_in_the_file_is_caught_by_the_manifest(tmp_path):
    """Any byte of a committed file (not only the weights) is covered by MANIFEST.json."""
    path = _copy_committed(tmp_path, with_manifest=True)
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    path.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match=f"checkpoint {path}.*(corrupt|does not match)"):
        load_checkpoint(path)


# ------------------------------------------------ full checkpoints: export and resume
def _smooth(n=16, size=12):
    x = torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(0))
    return F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="circular"), 3, 1)


def _tiny(**kw):
    base = dict(dataset="synthetic", n_train=16, arch="resnet", patch_size=3, width=16, steps=6,
                batch_size=8, warmup_steps=2, checkpoint_every=0, device="cpu")
    return TrainConfig(**{**base, **kw})


@pytest.fixture(autouse=False)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_export_refuses_corrupt_weights(tmp_path, one_thread):
    """Exporting would write a fresh hash over the corrupt weights: refused."""
    config = _tiny()
    train_or_load(config, tmp_path, data=_smooth(), progress=False)
    src = checkpoint_path(config, tmp_path)
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    _flip(ckpt["ema"][sorted(ckpt["ema"])[0]], 0, 29)
    torch.save(ckpt, src)
    with pytest.raises(ValueError, match=f"{src} is corrupt"):
        export_checkpoint(src, tmp_path / "small.pt")
    assert not (tmp_path / "small.pt").exists()


def _corrupt_model(ckpt):
    _flip(ckpt["model"][sorted(ckpt["model"])[0]], 0, 29)


def _corrupt_ema(ckpt):
    _flip(ckpt["ema"][sorted(ckpt["ema"])[0]], 0, 29)


def _corrupt_optimizer(ckpt):
    state = next(iter(ckpt["optimizer"]["state"].values()))
    _flip(state["exp_avg_sq"], 0, 29)


def _corrupt_rng(ckpt):
    ckpt["rng"]["data"]["perm"][0] = (ckpt["rng"]["data"]["perm"][0] + 1) % 16


def _corrupt_history(ckpt):
    ckpt["history"]["loss"][0] = float("nan")


def _corrupt_step(ckpt):
    ckpt["step"] = ckpt["step"] + 1


def _nan_model_no_hash(ckpt):
    ckpt.pop("resume_sha256")
    ckpt["model"][sorted(ckpt["model"])[0]].view(-1)[0] = float("nan")


CORRUPTIONS = [_corrupt_model, _corrupt_ema, _corrupt_optimizer, _corrupt_rng, _corrupt_history,
               _corrupt_step, _nan_model_no_hash]


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__.strip("_"))
def test_resume_from_a_corrupt_partial_checkpoint_is_refused(tmp_path, one_thread, corrupt):
    """A run resumed from a corrupt state would continue silently from wrong numbers."""
    config, path = _tiny(), tmp_path / "part.pt"
    train_model(config, data=_smooth(), checkpoint=path, progress=False, until_step=3)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert "resume_sha256" in ckpt and "ema_sha256" in ckpt
    corrupt(ckpt)
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match=f"checkpoint {path} (is corrupt|holds non-finite)"):
        train_model(config, data=_smooth(), checkpoint=path, progress=False)


def test_resume_from_an_intact_partial_checkpoint_still_matches(tmp_path, one_thread):
    config = _tiny()
    full = train_model(config, data=_smooth(), checkpoint=tmp_path / "full.pt", progress=False)
    train_model(config, data=_smooth(), checkpoint=tmp_path / "part.pt", progress=False, until_step=3)
    resumed = train_model(config, data=_smooth(), checkpoint=tmp_path / "part.pt", progress=False)
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    a = torch.load(tmp_path / "full.pt", weights_only=True)
    b = torch.load(tmp_path / "part.pt", weights_only=True)
    assert a["resume_sha256"] == b["resume_sha256"] and a["ema_sha256"] == b["ema_sha256"]


@pytest.mark.parametrize("bad", [[True, True], np.array([True, False]), torch.tensor([True, True]),
                                 [0.1, 1j], np.array([0.1, 0.2], dtype=complex), ["0.1", "0.2"]])
def test_estimators_screen_sigma_values(bad):
    """The estimators share predict's sigma screen: no bool / complex / text taken as a number."""
    from lemmse import LEMMSE

    est = LEMMSE(torch.rand(3, 1, 8, 8), patch_size=3)
    with pytest.raises(TypeError, match="sigma"):
        est(torch.rand(2, 1, 8, 8), bad)


@pytest.mark.parametrize("bad", [[True, True], np.array([True, False]), torch.tensor([True, True]),
                                 [0.1, 1j], ["0.1", "0.2"]])
def test_measure_screens_sigma_values(bad):
    """measure takes no bool / complex / text sigma value as a number either."""
    from lemmse import Denoising

    with pytest.raises(TypeError, match="sigma"):
        Denoising().measure(torch.rand(2, 1, 8, 8), bad)
