"""Group-averaged networks (lemmse.nets.GroupAveraged) and the ``group`` field of TrainConfig.

The oracle of the averaging writes each grid symmetry as a permutation of the pixel indices
(built from coordinates, not from torch.rot90 / torch.flip), and averages the base network
over the group by hand in float64.
"""

import json
from pathlib import Path

import pytest
import torch

from lemmse.groups import GROUPS
from lemmse.nets import ARCHS, GroupAveraged, make_model, receptive_field
from lemmse.train import TrainConfig, load_checkpoint, predict, train_model, train_or_load

REPO_ROOT = Path(__file__).resolve().parents[1]
NON_TRIVIAL = [g for g in GROUPS if g != "translations"]


def _coordinate_map(name, n):
    """Pixel (i, j) of g·x comes from pixel src(i, j) of x (square n x n), from coordinates."""
    m = n - 1
    return {
        "e": lambda i, j: (i, j),
        "r90": lambda i, j: (j, m - i),  # counter-clockwise quarter turn
        "r180": lambda i, j: (m - i, m - j),
        "r270": lambda i, j: (m - j, i),
        "flip_h": lambda i, j: (i, m - j),
        "flip_v": lambda i, j: (m - i, j),
        "transpose": lambda i, j: (j, i),
        "antitranspose": lambda i, j: (m - j, m - i),
    }[name]


def _perm(name, n):
    src = _coordinate_map(name, n)
    return torch.tensor([src(i, j)[0] * n + src(i, j)[1] for i in range(n) for j in range(n)])


def _act(name, x):
    n = x.shape[-1]
    flat = x.reshape(*x.shape[:-2], n * n)
    return flat[..., _perm(name, n)].reshape(x.shape)


def _inverse_name(name, n=5):
    p = _perm(name, n)
    for other in GROUPS["d4"]:
        q = _perm(other, n)
        if torch.equal(p[q], torch.arange(n * n)):  # act(name, act(other, x)) == x
            return other
    raise AssertionError(name)


def _oracle(base, group, v, sigma):
    outs = [_act(_inverse_name(g), base(_act(g, v), sigma)) for g in GROUPS[group]]
    return sum(outs) / len(outs)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("group", NON_TRIVIAL)
def test_group_average_matches_oracle_and_is_equivariant(arch, group):
    torch.manual_seed(0)
    net = make_model(arch, 2, 5, 8, group=group).double()
    assert isinstance(net, GroupAveraged) and net.hparams["group"] == group
    v = torch.rand(3, 2, 9, 9, dtype=torch.float64)
    sigma = torch.tensor([0.1, 0.3, 0.7], dtype=torch.float64)
    out = net(v, sigma)
    want = _oracle(net.base, group, v, sigma)
    assert torch.allclose(out, want, atol=1e-12, rtol=0)
    for g in GROUPS[group]:
        assert torch.allclose(net(_act(g, v), sigma), _act(g, out), atol=1e-12, rtol=0), g
    # circular shifts too (the base network's equivariance survives the averaging)
    shifted = torch.roll(v, (2, -3), (-2, -1))
    assert torch.allclose(net(shifted, sigma), torch.roll(out, (2, -3), (-2, -1)), atol=1e-12, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_plain_network_is_not_equivariant(arch):
    """The property above can fail: a random plain network is not D4-equivariant."""
    torch.manual_seed(0)
    net = make_model(arch, 1, 5, 8).double()
    v = torch.rand(2, 1, 9, 9, dtype=torch.float64)
    err = (net(_act("r90", v), 0.3) - _act("r90", net(v, 0.3))).abs().max()
    assert err > 1e-6


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("P", [3, 5, 7])
def test_group_average_keeps_receptive_field(arch, P):
    torch.manual_seed(1)
    net = make_model(arch, 1, P, 8, group="d4")
    assert receptive_field(net, (1, 4 * P + 1, 4 * P + 1)) == (P, P)


def test_group_average_errors():
    with pytest.raises(ValueError, match="group must be one of"):
        make_model("unet", 1, 5, 8, group="d8")
    with pytest.raises(TypeError, match="base must be a SigmaNet"):
        GroupAveraged(torch.nn.Conv2d(1, 1, 3), "d4")
    with pytest.raises(ValueError, match="needs no averaging"):
        GroupAveraged(make_model("unet", 1, 5, 8), "translations")
    net = make_model("unet", 1, 5, 8, group="d4")
    with pytest.raises(ValueError, match="needs square images"):
        net(torch.rand(1, 1, 8, 10), 0.1)
    with pytest.raises(ValueError, match=r"v must be a tensor \[B, 1, H, W\]"):
        net(torch.rand(1, 3, 8, 8), 0.1)
    # the reflections of "flips" keep rectangles rectangular
    flips = make_model("resnet", 1, 5, 8, group="flips")
    assert flips(torch.rand(2, 1, 8, 10), 0.1).shape == (2, 1, 8, 10)
    assert make_model("unet", 1, 5, 8, group="translations").__class__.__name__ == "UNet"


def test_config_group_field_keeps_old_names():
    """The committed networks were named before ``group`` existed: their names must not move."""
    manifest = json.loads((REPO_ROOT / "results" / "checkpoints" / "MANIFEST.json").read_text())["files"]
    for name, entry in manifest.items():
        config = TrainConfig(**entry["config"])
        assert config.filename() == name, name
    plain = TrainConfig(arch="unet", steps=10)
    d4 = TrainConfig(arch="unet", steps=10, group="d4")
    assert "group" not in plain.identity() and d4.identity()["group"] == "d4"
    assert plain.key() != d4.key() and "_gd4_" in d4.filename()
    with pytest.raises(ValueError, match="group must be one of"):
        TrainConfig(group="rotations")


def test_group_network_trains_saves_and_loads(tmp_path):
    data = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    config = TrainConfig(dataset="synthetic", n_train=16, arch="resnet", patch_size=3, width=4, steps=3,
                         batch_size=4, warmup_steps=1, group="flips", checkpoint_every=0)
    model = train_or_load(config, tmp_path, data=data, progress=False)
    assert isinstance(model, GroupAveraged)
    loaded, saved, history = load_checkpoint(next(tmp_path.glob("*_gflips_*.pt")))
    assert isinstance(loaded, GroupAveraged) and saved == config and len(history["loss"]) == 3
    y = torch.rand(2, 1, 8, 8)
    assert torch.equal(predict(model, y, 0.2), predict(loaded, y, 0.2))
    # a plain config does not load the group network's checkpoint, and says why
    plain = TrainConfig(**{**config.to_dict(), "group": "translations"})
    partial = tmp_path / "other.pt"
    result = train_model(config, data=data, checkpoint=partial, progress=False, until_step=1)
    assert result.step == 1
    with pytest.raises(ValueError, match="group: requested 'translations', checkpoint 'flips'"):
        train_model(plain, data=data, checkpoint=partial, progress=False)
