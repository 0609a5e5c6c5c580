"""Super-resolution networks (``make_model(..., factor=s)``) and their training (book chapter 15).

A factor-s network maps the LR image ``v`` [B, C, h, w] to ``x_hat = U v + S(f(v, σ))``
[B, C, s h, s w] (U: nearest-neighbour upsampling, S: pixel shuffle, f on the LR grid). The
properties that put it in the SR LE-MMSE's function class:

- **locality on the LR grid**: the s×s HR block of LR pixel i depends only on the P×P LR window
  around i (checked bitwise, in float64, with a window that wraps around the borders);
- **equivariance**: a circular shift of v by 1 LR pixel shifts x_hat by s HR pixels.

Also: factor 1 is the plain network, unchanged; the trainer's task "superresolution" trains,
saves and reloads a factor-2 network; the SR experiment grid; bad arguments.
"""

import shlex

import pytest
import torch

from lemmse.experiments import SR_GRID, SR_SIGMA_MAX, SR_STEPS, find_checkpoint, select
from lemmse.nets import ARCHS, GroupAveraged, make_model, receptive_field
from lemmse.operators import SuperResolution
from lemmse.train import (TASK_FACTORS, TrainConfig, checkpoint_path, export_checkpoint,
                          load_checkpoint, make_operator, predict, train_model, train_or_load)

S = 2  # the factor of the task "superresolution"


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(arch, P=5, channels=1, factor=S, seed=0, **kw):
    torch.manual_seed(seed)
    return make_model(arch, channels, P, width=8, factor=factor, **kw)


def _window(h, w, P, ci, cj):
    """Boolean [h, w] mask of the circular P×P window centred at (ci, cj)."""
    r = P // 2
    mask = torch.zeros(h, w, dtype=torch.bool)
    rows = torch.tensor([(ci + a) % h for a in range(-r, r + 1)])
    cols = torch.tensor([(cj + b) % w for b in range(-r, r + 1)])
    mask[rows[:, None], cols[None, :]] = True
    return mask


def _block(out, ci, cj, s=S):
    """The s×s HR block of LR pixel (ci, cj): [B, C, s, s]."""
    return out[:, :, s * ci:s * ci + s, s * cj:s * cj + s]


@pytest.mark.parametrize("arch", ARCHS)
def test_output_is_on_the_hr_grid(arch):
    for factor, (h, w) in ((2, (7, 9)), (3, (5, 4))):
        model = _model(arch, channels=3, factor=factor)
        with torch.no_grad():
            out = model(torch.rand(2, 3, h, w), torch.tensor([0.1, 0.3]))
        assert out.shape == (2, 3, factor * h, factor * w)
        assert model.factor == factor and model.hparams["factor"] == factor


@pytest.mark.parametrize("arch", ARCHS)
def test_hr_block_depends_only_on_the_lr_window(arch):
    """Bitwise: LR pixels outside the P×P window of i do not change the HR block of i; each one
    inside does. LR pixel (1, w - 2): its window wraps around both borders."""
    P, h, w = 5, 10, 9
    model = _model(arch, P, channels=2).double().eval()
    gen = torch.Generator().manual_seed(1)
    v = torch.rand(1, 2, h, w, dtype=torch.float64, generator=gen)
    sigma = torch.tensor([0.3], dtype=torch.float64)
    ci, cj = 1, w - 2
    inside = _window(h, w, P, ci, cj)
    with torch.no_grad():
        ref = _block(model(v, sigma), ci, cj)
        far = v.clone()
        far[:, :, ~inside] = torch.rand(1, 2, int((~inside).sum()), dtype=torch.float64,
                                        generator=gen)
        assert torch.equal(_block(model(far, sigma), ci, cj), ref)
        for a, b in torch.nonzero(inside).tolist():
            near = v.clone()
            near[0, 1, a, b] += 0.5
            assert not torch.equal(_block(model(near, sigma), ci, cj), ref), (a, b)


def test_locality_check_can_fail():
    """A 3×3 output projection grows the LR window to 7×7: the pixels just outside 5×5 count."""
    model = _model("resnet", 5).double().eval()
    model.proj = torch.nn.Conv2d(model.width, S * S, 3, padding=1,
                                 padding_mode="circular").double()
    v = torch.rand(1, 1, 9, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = _block(model(v, 0.2), 4, 4)
        v[0, 0, 4, 7] += 0.5  # 3 LR pixels right of the centre: outside the 5×5 window
        assert not torch.equal(_block(model(v, 0.2), 4, 4), ref)
    assert receptive_field(model, (1, 13, 13)) == (7, 7)


@pytest.mark.parametrize("arch", ARCHS)
def test_receptive_field_is_P_on_the_lr_grid(arch):
    for P in (3, 5):
        model = _model(arch, P)
        size, mask = receptive_field(model, (1, 11, 12), return_mask=True)
        assert size == (P, P)
        assert torch.equal(mask, _window(11, 12, P, 5, 6))


@pytest.mark.parametrize("arch", ARCHS)
def test_lr_shift_by_one_shifts_hr_output_by_factor(arch):
    model = _model(arch, 5, channels=3).eval()
    v = torch.rand(2, 3, 8, 7, generator=torch.Generator().manual_seed(3))
    sigma = torch.tensor([0.05, 0.4])
    with torch.no_grad():
        out = model(v, sigma)
        for shift in [(1, 0), (0, 1), (1, 1), (-3, 2)]:
            got = model(torch.roll(v, shift, dims=(2, 3)), sigma)
            want = torch.roll(out, (S * shift[0], S * shift[1]), dims=(2, 3))
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        # the check can fail: an HR shift by 1 (not s) does not match
        got = model(torch.roll(v, (1, 0), dims=(2, 3)), sigma)
        assert (got - torch.roll(out, (1, 0), dims=(2, 3))).abs().max() > 1e-3


@pytest.mark.parametrize("arch", ARCHS)
def test_residual_is_the_nearest_neighbour_upsampling(arch):
    """With the last layer zeroed, x_hat = U v: each LR value copied onto its s×s block."""
    model = _model(arch, 3).eval()
    torch.nn.init.zeros_(model.proj.weight)
    torch.nn.init.zeros_(model.proj.bias)
    v = torch.rand(2, 1, 5, 6, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        out = model(v, 0.1)
    assert torch.equal(out, v.repeat_interleave(S, dim=2).repeat_interleave(S, dim=3))
    # A x_hat = v: the head only adds what the block mean does not see
    assert torch.allclose(SuperResolution(S).A(out), v, atol=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
def test_factor_one_is_the_plain_network(arch):
    kw = dict(depth=2) if arch == "patchmlp" else {}
    torch.manual_seed(5)
    plain = make_model(arch, 3, 5, width=8, **kw)
    one = _model(arch, 5, channels=3, factor=1, seed=5, **kw)
    assert plain.hparams == one.hparams and "factor" not in plain.hparams
    a, b = plain.state_dict(), one.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    v = torch.rand(2, 3, 9, 8, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        out = one(v, 0.2)
        assert torch.equal(out, plain(v, 0.2)) and out.shape == v.shape
        emb = one.embed(torch.full((2,), 0.2))
        assert torch.equal(out, v + one.residual(v, emb))
    # the hparams rebuild the same model; factor-2 ones record the factor
    assert make_model(**one.hparams).factor == 1
    two = _model(arch, 5, channels=3, **kw)
    assert make_model(**two.hparams).factor == S
    make_model(**two.hparams).load_state_dict(two.state_dict())
    assert two.proj.out_channels == 3 * S * S and one.proj.out_channels == 3


def _sr_config(**kw):
    base = dict(dataset="synthetic", n_train=16, task="superresolution", arch="resnet",
                patch_size=3, width=8, steps=4, batch_size=4, warmup_steps=1,
                checkpoint_every=0, device="cpu", sigma_max=0.5)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("arch", ARCHS)
def test_trainer_superresolution_saves_and_reloads(arch, tmp_path):
    data = torch.rand(16, 1, 12, 12, generator=torch.Generator().manual_seed(7))
    config = _sr_config(arch=arch)
    assert TASK_FACTORS["superresolution"] == S
    assert isinstance(make_operator("superresolution", (1, 12, 12)), SuperResolution)
    model = train_or_load(config, tmp_path, data=data, progress=False)
    assert model.factor == S
    loaded, saved, history = load_checkpoint(checkpoint_path(config, tmp_path))
    assert saved == config and loaded.factor == S and loaded.hparams["factor"] == S
    assert len(history["loss"]) == 4 and torch.isfinite(history["loss"]).all()
    y = SuperResolution(S).measure(data[:3], 0.1, generator=torch.Generator().manual_seed(8))
    assert y.shape == (3, 1, 6, 6)
    x_hat = predict(loaded, y, 0.1)
    assert x_hat.shape == (3, 1, 12, 12)
    assert torch.equal(x_hat, predict(model, y, 0.1))
    # the fp16 export rebuilds a factor-2 network too
    out = export_checkpoint(checkpoint_path(config, tmp_path), tmp_path / "export" / "net.pt")
    small, _, _ = load_checkpoint(out)
    assert small.factor == S
    torch.testing.assert_close(predict(small, y, 0.1), x_hat, atol=5e-3, rtol=0)


def test_predict_needs_the_task_factor(tmp_path):
    data = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(9))
    config = _sr_config(steps=1)
    model = train_model(config, data, progress=False).model
    plain = make_model("resnet", 1, 3, 8)
    with pytest.raises(ValueError, match="factor=1, but task 'superresolution'"):
        predict(plain, torch.rand(1, 1, 4, 4), 0.1, config)
    with pytest.raises(ValueError, match="factor=2, but task 'denoising'"):
        predict(model, torch.rand(1, 1, 4, 4), 0.1, _sr_config(task="denoising"))


@pytest.mark.parametrize(
    "factor, exc, match",
    [
        (0, ValueError, "factor must be >= 1, got 0"),
        (-2, ValueError, "factor must be >= 1"),
        (1.5, TypeError, "factor must be an integer, got 1.5"),
        (True, TypeError, "factor must be an integer, got True"),
        ("2", TypeError, "factor must be an integer"),
    ],
)
def test_bad_factor(factor, exc, match):
    with pytest.raises(exc, match=match):
        make_model("unet", 1, 5, factor=factor)


def test_bad_superresolution_settings():
    with pytest.raises(ValueError, match="physics='aware' is not defined for task='superresolution'"):
        _sr_config(physics="aware")
    data = torch.rand(8, 1, 13, 12)
    with pytest.raises(ValueError, match=r"data: .* multiples of 2, got 13×12"):
        train_model(_sr_config(n_train=8), data, progress=False)
    with pytest.raises(ValueError, match="group='d4' needs factor=1"):
        make_model("unet", 1, 5, factor=2, group="d4")
    with pytest.raises(ValueError, match="factor=1 networks"):
        GroupAveraged(make_model("unet", 1, 5, factor=2), "flips")
    assert make_model("unet", 1, 5, 8, factor=2, group="translations").factor == 2


def test_sr_grid_configs_and_commands(tmp_path):
    from lemmse.__main__ import build_parser

    assert len(SR_GRID) == 6 and select(grid="sr") == list(SR_GRID)
    assert {(e.dataset, e.arch) for e in SR_GRID} == {(d, a) for d in SR_STEPS for a in ARCHS}
    parser = build_parser()
    for exp in SR_GRID:
        c = exp.config("cpu")
        assert (c.task, c.physics, c.patch_size, c.batch_size) == ("superresolution", "agnostic", 5, 32)
        assert c.steps == SR_STEPS[exp.dataset] and c.sigma_max == SR_SIGMA_MAX
        assert c.n_train == {"fashion-mnist": 10_000, "cifar10": 4_000}[exp.dataset]
        assert exp.config("reference").steps == 24_000  # cpu_steps is the cpu scale's only
        args = parser.parse_args(shlex.split(exp.command())[3:])
        sel = {k: getattr(args, k) for k in ("dataset", "task", "arch", "physics", "grid",
                                             "patch_size", "n_train")}
        assert select(**sel, scale=args.scale) == [exp], exp.command()
    # find_checkpoint looks the SR networks up by their config like any other
    config = SR_GRID[0].config("cpu")
    with pytest.raises(FileNotFoundError, match="superresolution"):
        find_checkpoint(config, roots=[tmp_path])
    (tmp_path / config.filename()).touch()
    assert find_checkpoint(config, roots=[tmp_path]) == tmp_path / config.filename()
