"""Tests of lemmse.explorer, the patch explorer of book chapter 12, and of the legibility
helpers of lemmse.plot that its panels use (smallest text >= 9 px in the text column)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import lemmse  # noqa: E402
from lemmse.explorer import Explorer  # noqa: E402
from lemmse.plot import (COLUMN_PX, LEGIBLE_PX, figure_png, png_text_size,  # noqa: E402
                         smallest_text_px)

P = 3


@pytest.fixture(scope="module")
def explorer():
    g = torch.Generator().manual_seed(0)
    train = torch.rand(6, 1, 10, 10, generator=g)
    test = torch.rand(2, 1, 10, 10, generator=g)
    calls = []

    def network(y, sigma):
        calls.append(sigma)
        return y.clamp(0, 1)

    ex = Explorer(lemmse.LEMMSE(train, patch_size=P), test, network, network_name="identity")
    ex.calls = calls
    return ex


def test_outputs_are_cached_and_match_the_estimator(explorer):
    y, x_est, x_net = explorer.outputs(1, 0.3)
    assert y.shape == x_est.shape == x_net.shape == (1, 1, 10, 10)
    torch.testing.assert_close(x_est, explorer.estimator(y, 0.3))
    n = len(explorer.calls)
    assert explorer.outputs(1, 0.3)[0] is y and len(explorer.calls) == n


def test_patch_is_the_circular_window_of_the_training_image(explorer):
    p = explorer.patch(2, 0, 9)
    assert p.shape == (1, P, P)
    assert p[0, 1, 1] == explorer.train[2, 0, 0, 9]
    assert p[0, 0, 0] == explorer.train[2, 0, 9, 8]  # wraps around both edges
    assert p[0, 2, 2] == explorer.train[2, 0, 1, 0]


def test_panel_shows_the_heaviest_patches_with_their_weights(explorer):
    pw = explorer.weights(0, 0.8, [(4, 5)])
    w, img, _ = pw.topk(0, k=4)
    fig = explorer.panel(0, (4, 5), 0.8, k=4)
    titles = [ax.get_title() for ax in fig.axes]
    assert len(fig.axes) == 3 + 4
    assert titles[0].startswith("measurement:") and titles[2].startswith("identity:")
    # weights with significant digits, not "w = 0.000" (issue 15 item 6)
    assert titles[3:] == [f"w = {float(v):.2g}\nimage {int(n)}" for v, n in zip(w, img)]
    assert f"n50 = {int(pw.n50[0]):,}" in fig._suptitle.get_text()
    plt.close(fig)


def test_panel_fits_the_column_with_legible_text(explorer):
    png = figure_png(explorer.panel(0, (4, 5), 0.2), dpi=100)
    small, width = png_text_size(png)
    assert width <= COLUMN_PX
    assert small >= LEGIBLE_PX


def test_panel_rejects_bad_arguments(explorer):
    with pytest.raises(ValueError, match=r"image must be an integer in \[0, 2\)"):
        explorer.panel(2, (4, 5), 0.2)
    with pytest.raises(ValueError, match="sigma must be a positive number"):
        explorer.panel(0, (4, 5), 0.0)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        explorer.panel(0, (4, 5), 0.2, k=0)
    pw = explorer.weights(0, 0.2, [(1, 1)])
    with pytest.raises(ValueError, match=r"weights must include pixel \(4, 5\)"):
        explorer.panel(0, (4, 5), 0.2, weights=pw)
    with pytest.raises(TypeError, match="network must be a callable"):
        Explorer(explorer.estimator, explorer.test, network=None)


def test_widget_holds_one_panel_per_setting_and_links_its_controls(explorer):
    widgets = pytest.importorskip("ipywidgets")
    pixels = {(4, 5): "middle", (0, 0): "corner"}
    box = explorer.widget([0, 1], [0.1, 0.4], pixels, sigma=0.4, k=2)
    image_menu, pages = box.children
    assert image_menu.options == ("test image 0", "test image 1")
    assert len(pages.children) == 2
    slider, sigma_pages = pages.children[0].children
    assert slider.options == ("0.1", "0.4") and slider.value == "0.4"
    assert sigma_pages.selected_index == 1
    menu, panels = sigma_pages.children[0].children
    assert menu.options == ("middle (4, 5)", "corner (0, 0)")
    assert all(isinstance(p, widgets.Image) for p in panels.children)
    assert len(panels.children) == 2
    for p in panels.children:
        small, width = png_text_size(p.value)
        assert small >= LEGIBLE_PX and width <= COLUMN_PX
    with pytest.raises(ValueError, match="sigma must be one of sigmas"):
        explorer.widget([0], [0.1], pixels, sigma=0.2)


def test_smallest_text_px_sees_tick_labels_and_dpi():
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    ax.set_title("title", fontsize=14)
    ax.tick_params(labelsize=6)
    assert smallest_text_px(fig, dpi=72) == pytest.approx(6.0)
    assert smallest_text_px(fig, dpi=144) == pytest.approx(12.0)
    png = figure_png(fig, dpi=144)
    assert png_text_size(png) == (pytest.approx(12.0), int(fig.get_figwidth() * 144))
    with pytest.raises(ValueError, match="dpi must be a positive number"):
        smallest_text_px(fig, dpi=0)
    plt.close(fig)
    assert png_text_size(figure_png(plt.figure(), dpi=50)) == (float("inf"), 320)


def test_figure_png_palette_keeps_the_record_and_shrinks_the_file():
    fig = plt.figure(figsize=(4, 2))
    fig.add_subplot().imshow(torch.rand(20, 20).numpy(), cmap="gray")
    full = figure_png(fig, dpi=100, close=False)
    small = figure_png(fig, dpi=100, colors=64)
    assert png_text_size(small) == png_text_size(full)
    assert len(small) < len(full)
    with pytest.raises(ValueError, match="colors must be an integer in"):
        figure_png(plt.figure(), colors=1)
