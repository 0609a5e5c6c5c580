"""Tests of lemmse.plot: image conversion and figure layout (book chapter 1 uses them)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from lemmse.plot import show_images, to_display, to_png  # noqa: E402


def test_to_display_shapes_and_clipping():
    gray = torch.linspace(-1, 2, 12).reshape(1, 3, 4)
    out = to_display(gray)
    assert out.shape == (3, 4)
    assert out.min() == 0.0 and out.max() == 1.0
    rgb = torch.rand(1, 3, 5, 6)
    assert to_display(rgb).shape == (5, 6, 3)
    np.testing.assert_allclose(to_display(rgb)[..., 1], rgb[0, 1].double().numpy())
    assert to_display(torch.rand(5, 6), clip=False).shape == (5, 6)


def test_to_display_rejects_bad_shapes():
    with pytest.raises(ValueError, match="1 or 3 channels"):
        to_display(torch.rand(2, 5, 5))
    with pytest.raises(TypeError, match="torch.Tensor or numpy.ndarray"):
        to_display([[0.0]])


def test_show_images_layouts():
    batch = torch.rand(5, 1, 8, 8)
    fig = show_images(batch, [f"image {k}" for k in range(5)], ncols=2)
    shown = [ax for ax in fig.axes if ax.images]
    assert len(fig.axes) == 6 and len(shown) == 5
    assert [ax.get_title() for ax in shown] == [f"image {k}" for k in range(5)]
    plt.close(fig)

    rows = [[batch[0], None, batch[1]], [batch[2], batch[3], batch[4]]]
    fig = show_images(rows, [["a", None, "c"], ["d", "e", "f"]], row_labels=["top", "bottom"], suptitle="t")
    assert len(fig.axes) == 6 and sum(bool(ax.images) for ax in fig.axes) == 5
    assert fig.axes[0].get_ylabel() == "top"
    plt.close(fig)


def test_show_images_checks_titles():
    with pytest.raises(ValueError, match="titles"):
        show_images(torch.rand(3, 1, 4, 4), ["only one"])
    with pytest.raises(ValueError, match="row_labels"):
        show_images(torch.rand(3, 1, 4, 4), row_labels=["a", "b"])


def test_plot_matrix_marks_row_maxima_and_checks_labels():
    from matplotlib.patches import Rectangle

    from lemmse.plot import plot_matrix

    v = np.array([[1.0, 3.0, 2.0], [5.0, np.nan, 4.0]])
    fig = plot_matrix(v, row_labels=["a", "b"], col_labels=["x", "y", "z"], xlabel="col", ylabel="row")
    ax = fig.axes[0]
    frames = [p.get_xy() for p in ax.patches if isinstance(p, Rectangle)]
    assert frames == [(0.5, -0.5), (-0.5, 0.5)]  # column 1 in row 0, column 0 in row 1
    assert sorted(t.get_text() for t in ax.texts) == ["1.0", "2.0", "3.0", "4.0", "5.0"]
    plt.close(fig)
    with pytest.raises(ValueError, match="row labels"):
        plot_matrix(v, row_labels=["a"], col_labels=["x", "y", "z"], xlabel="", ylabel="")
    with pytest.raises(ValueError, match="2-D"):
        plot_matrix(np.zeros(3), row_labels=[], col_labels=[], xlabel="", ylabel="")


def test_inline_figures_record_their_smallest_text(tmp_path, monkeypatch):
    """In a kernel, importing lemmse.plot makes the inline PNGs carry their smallest text,
    which the book's page check reads (tests/test_book.py, issue 15 item 3)."""
    import base64
    import os

    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("matplotlib_inline")
    from lemmse.plot import png_text_size

    code = ("import matplotlib.pyplot as plt\n"
            "import lemmse.plot\n"
            "fig, ax = plt.subplots(dpi=100)\n"
            "ax.plot([0, 1])\n"
            "ax.tick_params(labelsize=7.2)\n"
            "plt.show()")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    # the kernel imports this checkout's lemmse
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]))
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    pngs = [o["data"]["image/png"] for o in nb.cells[0].outputs
            if "image/png" in o.get("data", {})]
    assert len(pngs) == 1
    small, width = png_text_size(base64.b64decode(pngs[0]))
    assert small == pytest.approx(10.0)  # 7.2 pt at 100 dpi
    assert 300 < width < 700


def test_to_png_panels_record_that_they_have_no_text():
    from lemmse.plot import png_text_size

    png = to_png([torch.rand(1, 4, 4), torch.rand(1, 4, 6)], scale=2, gap=1)
    assert png_text_size(png) == (float("inf"), 2 * 4 + 1 + 2 * 6)


@pytest.mark.parametrize("draw", ["fields", "images", "grid"])
def test_helpers_fit_the_column_with_legible_text(draw):
    """Figures of many panels are sized for the book's text column, so that the page does not
    shrink them and their smallest text (colour-bar ticks, titles) stays >= 9 px (issue 15)."""
    from lemmse.plot import COLUMN_PX, LEGIBLE_PX, figure_png, png_text_size, show_fields

    maps = [torch.rand(12, 12) for _ in range(5)]
    if draw == "fields":
        fig = show_fields(maps, [f"map {k}" for k in range(5)], suptitle="five maps")
    elif draw == "images":
        fig = show_images(torch.rand(8, 1, 12, 12), [f"image {k}" for k in range(8)],
                          suptitle="eight images")
    else:
        fig = show_images([[m] * 6 for m in maps[:2]], row_labels=["a", "b"])
    with plt.rc_context({"figure.dpi": 100}):
        small, width = png_text_size(figure_png(fig, dpi=100))
    assert width <= COLUMN_PX
    assert small >= LEGIBLE_PX


def test_panels_of_curves_fit_the_column_with_legible_text():
    from lemmse.plot import COLUMN_PX, LEGIBLE_PX, figure_png, panels, plot_curves, png_text_size

    fig, axes = panels(2, 1, height=2.8)
    assert axes.shape == (2, 1)
    for ax in axes[:, 0]:
        plot_curves([0.05, 0.1, 0.2, 0.4], {"a": [1, 2, 3, 4], "b": [2, 3, 4, 5]},
                    xlabel="σ", ylabel="PSNR (dB)", logx=True, ax=ax, hlines={"25 dB": 2})
    small, width = png_text_size(figure_png(fig, dpi=100))
    assert width <= COLUMN_PX and small >= LEGIBLE_PX
    with pytest.raises(ValueError, match="ncols must be a positive integer"):
        panels(1, 0)
