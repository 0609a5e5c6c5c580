"""Plotting helpers shared by the book chapters: images.

This module draws images (:func:`to_display`, :func:`show_images`, :func:`to_png` for the
widgets' PNG panels); the helpers for numbers (:func:`show_fields`, :func:`plot_curves`,
:func:`plot_matrix`) are in ``lemmse.charts`` and re-exported here.
Every helper builds a matplotlib figure and returns it; nothing is shown or saved here.
In a notebook, end the cell with ``plt.show()``: the inline backend then displays the figure
once and closes it (returning the figure as the cell's value as well would show it twice).

Images are tensors of shape ``[C, H, W]`` (C = 1 or 3) or ``[H, W]``, or batches
``[B, C, H, W]``, with pixel values in [0, 1]. Values outside [0, 1] (noisy measurements,
inverse filters) are clipped for display only.

See book chapter 1 (``book/01_inverse_problems.md``) for a first use.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

# the helpers for scalar maps, curves and matrices live in lemmse.charts
from lemmse.charts import (COLUMN_PX, LEGIBLE_PX, column_width, panels, plot_curves,
                           plot_matrix, show_fields)

__all__ = ["to_display", "show_images", "to_png", "show_fields", "plot_curves", "plot_matrix",
           "panels",
           "smallest_text_px", "figure_png", "png_text_size", "LEGIBLE_PX", "COLUMN_PX",
           "column_width"]
#: PNG text key under which :func:`figure_png` records the height of the figure's smallest text.
PNG_KEY = "lemmse:smallest-text-px"


def to_display(image, clip: bool = True) -> np.ndarray:
    """Convert one image to an array that ``matplotlib.pyplot.imshow`` shows as is.

    Parameters
    ----------
    image : torch.Tensor or numpy.ndarray
        One image of shape ``[C, H, W]`` with C in {1, 3}, or ``[H, W]``, or ``[1, C, H, W]``.
    clip : bool, optional
        Clip the values to [0, 1] (default), as for display.

    Returns
    -------
    numpy.ndarray
        ``[H, W]`` for one channel, ``[H, W, 3]`` for three, float64.

    Raises
    ------
    ValueError
        If the shape is not one of the above.
    """
    if isinstance(image, torch.Tensor):
        arr = image.detach().to("cpu", torch.float64).numpy()
    elif isinstance(image, np.ndarray):
        arr = image.astype(np.float64)
    else:
        raise TypeError(f"image must be a torch.Tensor or numpy.ndarray, got {type(image).__name__}")
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3:
        if arr.shape[0] == 1:
            arr = arr[0]
        elif arr.shape[0] == 3:
            arr = np.transpose(arr, (1, 2, 0))
        else:
            raise ValueError(f"image must have 1 or 3 channels in [C, H, W], got shape {tuple(image.shape)}")
    elif arr.ndim != 2:
        raise ValueError(f"image must have shape [C, H, W], [H, W] or [1, C, H, W], got {tuple(image.shape)}")
    if clip:
        arr = np.clip(arr, 0.0, 1.0)
    return arr


def _as_grid(images) -> list[list]:
    """Arrange ``images`` as rows of single images."""
    if isinstance(images, torch.Tensor) or isinstance(images, np.ndarray):
        if images.ndim == 4:
            return [[im for im in images]]
        return [[images]]
    if not isinstance(images, Sequence) or len(images) == 0:
        raise ValueError("images must be a [B, C, H, W] tensor, a non-empty list of images, or a list of rows")
    if all(isinstance(row, Sequence) and not isinstance(row, (str, torch.Tensor, np.ndarray)) for row in images):
        return [list(row) for row in images]
    return [list(images)]


def show_images(
    images,
    titles=None,
    *,
    ncols: int | None = None,
    row_labels: Sequence[str] | None = None,
    suptitle: str | None = None,
    size: float = 1.8,
    cmap: str = "gray",
):
    """Show images side by side (or in a grid) without axes and return the figure.

    Parameters
    ----------
    images : torch.Tensor or list
        A batch ``[B, C, H, W]`` (one row), a list of single images (one row, or
        ``ncols`` per row), or a list of rows (each a list of single images) for a grid.
        A ``None`` entry leaves its place blank.
    titles : list of str or list of list of str, optional
        One title per image, in the same layout as ``images``; ``None`` entries are left blank.
    ncols : int, optional
        Wrap a flat list into rows of ``ncols`` images. Ignored for a list of rows.
    row_labels : list of str, optional
        One label per row, written to the left of the row.
    suptitle : str, optional
        A title for the whole figure (for example the data, number of images, sigma and P).
    size : float, optional
        Width and height of one image in inches (default 1.8); lowered when a row would not
        fit the book's text column (:func:`column_width`), where it would be shrunk.
    cmap : str, optional
        Colour map for one-channel images (default ``"gray"``); values are shown on [0, 1].

    Returns
    -------
    matplotlib.figure.Figure
        The figure; display it with ``plt.show()``.

    Raises
    ------
    ValueError
        If ``titles`` or ``row_labels`` do not match the layout of ``images``.
    """
    rows = _as_grid(images)
    if titles is not None and not isinstance(titles, Sequence):
        raise ValueError("titles must be a list of str (one per image) or a list of rows")
    flat_titles = None
    if titles is not None:
        titles = list(titles)
        if len(rows) > 1 and len(titles) == len(rows) and all(
            isinstance(t, Sequence) and not isinstance(t, str) for t in titles
        ):
            flat_titles = [list(t) for t in titles]
        else:
            flat_titles = [titles]
    if ncols is not None and len(rows) == 1:
        if ncols < 1:
            raise ValueError(f"ncols must be a positive integer, got {ncols}")
        one = rows[0]
        rows = [one[k : k + ncols] for k in range(0, len(one), ncols)]
        if flat_titles is not None:
            t = flat_titles[0]
            if len(t) != len(one):
                raise ValueError(f"titles must have one entry per image ({len(one)}), got {len(t)}")
            flat_titles = [t[k : k + ncols] for k in range(0, len(t), ncols)]
    if flat_titles is not None:
        if len(flat_titles) != len(rows) or any(len(t) != len(r) for t, r in zip(flat_titles, rows)):
            raise ValueError("titles must have the same layout as images (one title per image)")
    if row_labels is not None and len(row_labels) != len(rows):
        raise ValueError(f"row_labels must have one entry per row ({len(rows)}), got {len(row_labels)}")

    nrows = len(rows)
    width = max(len(r) for r in rows)
    size = min(size, column_width() / width)  # within the book's text column
    fig, axes = plt.subplots(nrows, width, figsize=(size * width, size * nrows + (0.35 if suptitle else 0.0)),
                             squeeze=False)
    for r, row in enumerate(rows):
        for c in range(width):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(row) or row[c] is None:
                ax.axis("off")
                if c == 0 and row_labels is not None:
                    ax.text(-0.05, 0.5, row_labels[r], transform=ax.transAxes, rotation=90,
                            ha="right", va="center", fontsize=9)
                continue
            arr = to_display(row[c])
            ax.imshow(arr, cmap=cmap if arr.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest")
            for spine in ax.spines.values():
                spine.set_visible(False)
            if flat_titles is not None and flat_titles[r][c] is not None:
                ax.set_title(flat_titles[r][c], fontsize=9)
            if c == 0 and row_labels is not None:
                ax.set_ylabel(row_labels[r], fontsize=9)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


def to_png(images, *, scale: int = 4, gap: int = 2) -> bytes:
    """Encode images side by side as PNG bytes (for ``ipywidgets.Image`` in a static page).

    Parameters
    ----------
    images : list of torch.Tensor or numpy.ndarray
        Images as accepted by :func:`to_display`, all of the same height; values are clipped to
        [0, 1] and rounded to 8 bits.
    scale : int, optional
        Integer upscaling factor (nearest neighbour, default 4).
    gap : int, optional
        Width in (upscaled) pixels of the white gap between two images (default 2).

    Returns
    -------
    bytes
        A PNG file (8-bit greyscale if every image has one channel, else RGB).

    Raises
    ------
    ValueError
        If ``scale`` is not a positive integer or the heights differ.
    """
    import io

    from PIL import Image

    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    arrays = [to_display(im) for im in images]
    if not arrays:
        raise ValueError("images must be a non-empty list")
    if len({a.shape[0] for a in arrays}) != 1:
        raise ValueError(f"images must have the same height, got {[a.shape[0] for a in arrays]}")
    rgb = any(a.ndim == 3 for a in arrays)
    parts = []
    for k, a in enumerate(arrays):
        if rgb and a.ndim == 2:
            a = np.repeat(a[:, :, None], 3, axis=2)
        a = np.kron(a, np.ones((scale, scale, 1) if rgb else (scale, scale)))
        if k:
            parts.append(np.ones((a.shape[0], gap, 3) if rgb else (a.shape[0], gap)))
        parts.append(a)
    panel = np.rint(np.concatenate(parts, axis=1) * 255).astype(np.uint8)
    buf = io.BytesIO()
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(PNG_KEY, "inf")  # no text: nothing to read (see figure_png)
    # uint8 [H, W] -> "L", [H, W, 3] -> "RGB"
    Image.fromarray(panel).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def smallest_text_px(fig, dpi: float | None = None) -> float:
    """Height in pixels of the smallest text drawn in ``fig`` when saved at ``dpi``.

    ``font size (pt) × dpi / 72``, minimised over the texts the figure actually draws: titles,
    labels, tick labels (colour bars included), legends, annotations; hidden axes and tick
    labels outside the view are not drawn and do not count. ``dpi`` defaults to the figure's.
    Returns ``inf`` for a figure without text.
    """
    from matplotlib.backends.backend_agg import RendererAgg

    if dpi is None:
        dpi = fig.dpi
    if isinstance(dpi, bool) or not isinstance(dpi, (int, float)) or not dpi > 0:
        raise ValueError(f"dpi must be a positive number, got {dpi!r}")
    w, h = fig.get_size_inches() * fig.dpi
    renderer = RendererAgg(max(int(w), 1), max(int(h), 1), fig.dpi)
    sizes = []
    draw_text = renderer.draw_text

    def record(gc, x, y, text, prop, angle, ismath=False, mtext=None):
        if str(text).strip():
            sizes.append(prop.get_size_in_points())
        return draw_text(gc, x, y, text, prop, angle, ismath=ismath, mtext=mtext)

    renderer.draw_text = record
    fig.draw(renderer)
    return min(sizes) * float(dpi) / 72.0 if sizes else float("inf")


def figure_png(fig, dpi: float = 100, *, colors: int | None = None, close: bool = True) -> bytes:
    """Save ``fig`` as PNG bytes at ``dpi``, recording the height of its smallest text.

    The PNG's text chunk ``lemmse:smallest-text-px`` (:func:`smallest_text_px`) lets a reader
    of the file (the book's page check, ``tests/test_book.py``) tell how large the text is once
    the image is scaled to the page: ``smallest × displayed width / PNG width``.
    ``colors`` (2 to 256) stores the image with a palette of that many colours, about a third
    of the size for figures of grey images and a few coloured marks (the widget panels).
    The figure is closed afterwards unless ``close=False``.
    """
    import io

    if colors is not None and (isinstance(colors, bool) or not isinstance(colors, int)
                               or not 2 <= colors <= 256):
        raise ValueError(f"colors must be an integer in [2, 256] or None, got {colors!r}")
    small = smallest_text_px(fig, dpi)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={PNG_KEY: f"{small:.2f}"})
    if colors is not None:
        from PIL import Image
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        info.add_text(PNG_KEY, f"{small:.2f}")
        with Image.open(io.BytesIO(buf.getvalue())) as im:
            pal = im.convert("RGB").quantize(colors, method=Image.Quantize.MEDIANCUT)
        buf = io.BytesIO()
        pal.save(buf, format="PNG", optimize=True, pnginfo=info)
    if close:
        plt.close(fig)
    return buf.getvalue()


def png_text_size(png: bytes) -> tuple[float, int] | None:
    """``(smallest text px, width px)`` recorded by :func:`figure_png` in ``png``, else None."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        info = im.text if hasattr(im, "text") else {}
        if PNG_KEY not in info:
            return None
        return float(info[PNG_KEY]), im.size[0]


def _png_with_text(png: bytes, key: str, value: str) -> bytes:
    """``png`` with a tEXt chunk ``key: value`` inserted after its header chunk."""
    import struct
    import zlib

    body = b"tEXt" + key.encode("latin-1") + b"\0" + value.encode("latin-1")
    chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
    end = 8 + 8 + 13 + 4  # signature, IHDR length and type, IHDR data, CRC
    return png[:end] + chunk + png[end:]


def record_text_size_inline() -> bool:
    """Make IPython's PNGs of matplotlib figures record their smallest text (book pages).

    In an IPython kernel with the inline backend, wraps the ``image/png`` formatter of
    figures so that every PNG it makes carries ``lemmse:smallest-text-px``
    (:func:`smallest_text_px` at the figure's dpi, at which the inline backend saves it), as
    :func:`figure_png` does; the book's page check (``tests/test_book.py``) reads it from the
    executed chapters. Called when ``lemmse.plot`` is imported; returns whether the formatter
    is wrapped. Outside IPython, or with another backend than the inline one, it does nothing.
    """
    import base64
    import sys

    if "IPython" not in sys.modules:
        return False
    from IPython import get_ipython

    ip = get_ipython()
    if ip is None or not hasattr(ip, "display_formatter"):
        return False
    import matplotlib
    from matplotlib.figure import Figure

    try:
        backend = matplotlib.get_backend(auto_select=False)  # matplotlib >= 3.10
    except TypeError:
        backend = matplotlib.rcParams["backend"]
    if "inline" not in str(backend).lower():
        return False  # a GUI or file backend: no inline PNGs to annotate
    plt.close(plt.figure())  # load the backend: the inline one registers its formatter now
    formatter = ip.display_formatter.formatters["image/png"]
    try:
        current = formatter.lookup_by_type(Figure)
    except KeyError:
        return False
    if getattr(current, "records_text_size", False):
        return True

    def png_with_text_size(fig):
        data = current(fig)
        if data is None:
            return data
        value = f"{smallest_text_px(fig):.2f}"
        if isinstance(data, bytes):
            return _png_with_text(data, PNG_KEY, value)
        if isinstance(data, str):
            raw = _png_with_text(base64.b64decode(data), PNG_KEY, value)
            return base64.b64encode(raw).decode("ascii")
        return data  # (data, metadata) of a retina figure: left as it is

    png_with_text_size.records_text_size = True
    formatter.for_type(Figure, png_with_text_size)
    return True


record_text_size_inline()
