"""Tests of lemmse.nets: exact P×P receptive field, exact circular equivariance, σ-conditioning.

These are the two properties that put the networks in the LE-MMSE's function class
(φ(v)[i] = f(Π_i v), one f for all pixels; book chapter on networks vs the LE-MMSE).
"""

import pytest
import torch
import torch.nn.functional as F

from lemmse.nets import (
    ARCHS,
    DEFAULT_WIDTHS,
    PatchMLP,
    ResNet,
    UNet,
    count_parameters,
    make_model,
    receptive_field,
    reference_width,
)

PATCH_SIZES = (3, 5, 7, 9, 11)


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(arch, P, channels=1, seed=0, **kw):
    torch.manual_seed(seed)
    return make_model(arch, channels, P, **kw)


def _window(H, W, P, ci, cj):
    """Boolean [H, W] mask of the circular P×P window centred at (ci, cj)."""
    r = P // 2
    mask = torch.zeros(H, W, dtype=torch.bool)
    rows = [(ci + a) % H for a in range(-r, r + 1)]
    cols = [(cj + b) % W for b in range(-r, r + 1)]
    mask[torch.tensor(rows)[:, None], torch.tensor(cols)[None, :]] = True
    return mask


@pytest.mark.parametrize("P", PATCH_SIZES)
@pytest.mark.parametrize("arch", ARCHS)
def test_receptive_field_is_exactly_P(arch, P):
    model = _model(arch, P)
    H = W = P + 6
    size, mask = receptive_field(model, (1, H, W), return_mask=True)
    assert size == (P, P)
    # the support is the full window (no hole inside) and nothing outside it
    assert torch.equal(mask, _window(H, W, P, H // 2, W // 2))


@pytest.mark.parametrize("P", PATCH_SIZES)
@pytest.mark.parametrize("arch", ARCHS)
def test_gradient_outside_window_is_exactly_zero_with_wraparound(arch, P):
    """Output pixel (1, H-2): its window wraps around both borders (circular padding)."""
    model = _model(arch, P, channels=2).double()
    H, W = 16, 15
    v = torch.rand(1, 2, H, W, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    v.requires_grad_(True)
    out = model(v, torch.tensor([0.3], dtype=torch.float64))
    ci, cj = 1, W - 2
    out[0, :, ci, cj].sum().backward()
    inside = _window(H, W, P, ci, cj)
    g = v.grad[0]
    assert torch.all(g[:, ~inside] == 0)
    assert torch.all((g != 0).any(dim=0)[inside])


@pytest.mark.parametrize("P", PATCH_SIZES)
@pytest.mark.parametrize("arch", ARCHS)
def test_exactly_equivariant_to_circular_shifts(arch, P):
    model = _model(arch, P, channels=3).eval()
    gen = torch.Generator().manual_seed(2)
    v = torch.rand(2, 3, 16, 16, generator=gen)
    sigma = torch.tensor([0.1, 0.7])
    with torch.no_grad():
        out = model(v, sigma)
        for shift in [(1, 0), (0, 5), (-3, 7), (8, 8)]:
            shifted = model(torch.roll(v, shift, dims=(2, 3)), sigma)
            torch.testing.assert_close(shifted, torch.roll(out, shift, dims=(2, 3)), atol=1e-5, rtol=0)


def test_equivariance_test_can_fail():
    """The shift check detects zero padding (a network that is not circular)."""
    model = _model("resnet", 5).eval()
    model.lift.padding_mode = "zeros"
    v = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        diff = (model(torch.roll(v, (0, 5), (2, 3)), 0.2) - torch.roll(model(v, 0.2), (0, 5), (2, 3))).abs().max()
    assert diff > 1e-3


def test_receptive_field_detects_a_larger_window():
    model = _model("resnet", 5)
    model.proj = torch.nn.Conv2d(model.width, 1, 3, padding=1, padding_mode="circular")
    assert receptive_field(model, (1, 15, 15)) == (7, 7)


@pytest.mark.parametrize("arch", ARCHS)
def test_output_depends_on_sigma(arch):
    model = _model(arch, 5).eval()
    v = torch.rand(1, 1, 12, 12, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert (model(v, 0.05) - model(v, 0.8)).abs().max() > 1e-4


@pytest.mark.parametrize("arch", ARCHS)
def test_sigma_forms_agree(arch):
    model = _model(arch, 3).eval()
    v = torch.rand(3, 1, 10, 10, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = model(v, 0.25)
        for sigma in (torch.tensor(0.25), torch.full((3,), 0.25), torch.full((3, 1, 1, 1), 0.25), [0.25] * 3):
            torch.testing.assert_close(model(v, sigma), ref, atol=0, rtol=0)
        per_image = model(v, torch.tensor([0.1, 0.25, 0.9]))
        torch.testing.assert_close(per_image[1], ref[1], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="sigma"):
        model(v, torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="v must be"):
        model(torch.rand(1, 2, 10, 10), 0.1)


def test_patchmlp_first_layer_is_a_linear_map_of_the_unfolded_patch():
    model = _model("patchmlp", 5, channels=3)
    v = torch.rand(2, 3, 9, 11, generator=torch.Generator().manual_seed(6), dtype=torch.float32)
    patches = model.patches(v)  # [B, C·P², H, W]
    assert patches.shape == (2, 3 * 25, 9, 11)
    # the patch of pixel (0, 0) wraps around: its top-left entry is v[..., -2, -2]
    assert torch.equal(patches[0, 0, 0, 0], v[0, 0, -2, -2])
    weight = model.first.weight.reshape(model.width, -1)
    linear = torch.einsum("od,bdhw->bohw", weight, patches) + model.first.bias[:, None, None]
    torch.testing.assert_close(model.first(v), linear, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("P", (3, 5, 7, 9, 11, 17))
def test_architecture_arithmetic(P):
    r = (P - 1) // 2
    assert _model("resnet", P).n_blocks == (P - 3) // 2
    unet = _model("unet", P)
    assert unet.levels == (r + 1) // 2
    # 3×3 convolutions on the path through the bottom level: one per encoder level + decoder 3×3s
    assert unet.levels + unet.decoder_kernels.count(3) == r


@pytest.mark.parametrize("arch", ARCHS)
def test_default_and_reference_sizes(arch):
    small = _model(arch, 5)
    assert small.width == DEFAULT_WIDTHS[arch]
    assert 10_000 <= count_parameters(small) <= 500_000
    big = make_model(arch, 3, 5, width="reference")
    assert big.width == reference_width(arch, 5)
    assert 2_000_000 <= count_parameters(big) <= 10_000_000
    assert make_model(arch, 1, 5, width=7).width == 7


def test_classes_and_hparams_rebuild():
    assert isinstance(_model("unet", 5), UNet)
    assert isinstance(_model("resnet", 5), ResNet)
    model = _model("patchmlp", 7, channels=3, depth=2)
    assert isinstance(model, PatchMLP) and model.depth == 2
    clone = make_model(**model.hparams)
    assert count_parameters(clone) == count_parameters(model)
    clone.load_state_dict(model.state_dict())


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(arch="vgg"), ValueError, "arch must be one of"),
        (dict(arch=None), ValueError, "arch"),
        (dict(patch_size=4), ValueError, "patch_size must be odd, got 4"),
        (dict(patch_size=1), ValueError, "patch_size must be >= 3"),
        (dict(patch_size=5.0), TypeError, "patch_size"),
        (dict(width=0), ValueError, "width must be >= 1"),
        (dict(width="big"), ValueError, "width"),
        (dict(width=2.5), TypeError, "width"),
        (dict(channels=0), ValueError, "channels"),
        (dict(arch="resnet", depth=2), ValueError, "depth"),
        (dict(depth=0), ValueError, "depth"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    args = dict(arch="patchmlp", channels=1, patch_size=5)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        make_model(**args)


def test_receptive_field_bad_shape():
    with pytest.raises(ValueError, match="image_shape"):
        receptive_field(_model("resnet", 3), (1, 2, 3, 4))


def test_no_image_wide_normalisation():
    """No module computes statistics over the image (they would break locality)."""
    for arch in ARCHS:
        for m in _model(arch, 5).modules():
            assert not isinstance(m, (torch.nn.GroupNorm, torch.nn.BatchNorm2d, torch.nn.LayerNorm, torch.nn.InstanceNorm2d))
        assert all(
            m.padding_mode == "circular" for m in _model(arch, 5).modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size[0] > 1
        )


def test_trains_on_a_batch():
    """Sanity: a few Adam steps reduce a denoising loss (gradients flow through every arch)."""
    gen = torch.Generator().manual_seed(7)
    x = F.avg_pool2d(F.pad(torch.rand(8, 1, 12, 12, generator=gen), (1, 1, 1, 1), mode="circular"), 3, 1)
    y = x + 0.2 * torch.randn(x.shape, generator=gen)
    for arch in ARCHS:
        model = _model(arch, 3)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        losses = []
        for _ in range(15):
            loss = F.mse_loss(model(y, 0.2), x)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[-1] < losses[0], arch


def test_count_parameters_of_a_frozen_model():
    model = make_model("unet", 1, 5, 8)
    n = count_parameters(model)
    model.requires_grad_(False)
    assert count_parameters(model) == n > 0
    assert count_parameters(model, trainable_only=True) == 0
