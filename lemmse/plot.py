"""Plotting helpers shared by the book chapters.

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

__all__ = ["to_display", "show_images"]


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
        Width and height of one image in inches (default 1.8).
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


# ------------------------------------------------------------------------------------------------
# Helpers added for chapters 5-7 (scalar maps, line plots, PNG panels for widgets).
# ------------------------------------------------------------------------------------------------

__all__ += ["show_fields", "plot_curves", "to_png"]


def _per_field(value, n: int, name: str) -> list:
    """Repeat ``value`` ``n`` times unless it is already a list or tuple of length ``n``."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} must have one entry per field ({n}), got {len(value)}")
        return list(value)
    return [value] * n


def show_fields(
    fields,
    titles=None,
    *,
    cmap="viridis",
    log=False,
    colorbar=True,
    vmin=None,
    vmax=None,
    suptitle: str | None = None,
    size: float = 2.4,
):
    """Show scalar maps (per-pixel diagnostics, index maps) side by side, each with a colour bar.

    Parameters
    ----------
    fields : list of torch.Tensor or numpy.ndarray
        Maps of shape ``[H, W]`` (or ``[1, H, W]``, ``[1, 1, H, W]``).
    titles : list of str, optional
        One title per map.
    cmap : str or list of str, optional
        Colour map, one for all maps (default ``"viridis"``) or one per map.
    log : bool or list of bool, optional
        Logarithmic colour scale (for positive maps such as counts), for all maps or per map.
    colorbar : bool or list of bool, optional
        Draw a colour bar next to each map (default) or not.
    vmin, vmax : float or list of float, optional
        Limits of the colour scale, for all maps or per map (default: the map's range).
    suptitle : str, optional
        A title for the whole figure.
    size : float, optional
        Height of one map in inches; the width adds room for the colour bar (default 2.4).

    Returns
    -------
    matplotlib.figure.Figure
        The figure; display it with ``plt.show()``.

    Raises
    ------
    ValueError
        If a map is not two-dimensional or a per-map option has the wrong length.
    """
    from matplotlib.colors import LogNorm, Normalize

    if isinstance(fields, (torch.Tensor, np.ndarray)) or len(fields) == 0:
        raise ValueError("fields must be a non-empty list of [H, W] maps")
    n = len(fields)
    arrays = []
    for k, f in enumerate(fields):
        a = f.detach().to("cpu", torch.float64).numpy() if isinstance(f, torch.Tensor) else np.asarray(f, float)
        a = np.squeeze(a)
        if a.ndim != 2:
            raise ValueError(f"fields[{k}] must be a map [H, W], got shape {tuple(np.shape(f))}")
        arrays.append(a)
    titles = _per_field(titles, n, "titles") if titles is not None else [None] * n
    cmaps, logs = _per_field(cmap, n, "cmap"), _per_field(log, n, "log")
    bars = _per_field(colorbar, n, "colorbar")
    lo, hi = _per_field(vmin, n, "vmin"), _per_field(vmax, n, "vmax")
    widths = [1.0 + (0.28 if b else 0.0) for b in bars]
    fig, axes = plt.subplots(1, n, figsize=(size * sum(widths), size + (0.35 if suptitle else 0.0)),
                             squeeze=False, gridspec_kw={"width_ratios": widths})
    for ax, a, t, cm, lg, bar, v0, v1 in zip(axes[0], arrays, titles, cmaps, logs, bars, lo, hi):
        if lg:
            pos = a[a > 0]
            v0 = v0 if v0 is not None else (pos.min() if pos.size else 1.0)
            v1 = v1 if v1 is not None else (pos.max() if pos.size else 10.0)
            norm = LogNorm(vmin=v0, vmax=max(v1, v0 * 1.0001))
        else:
            norm = Normalize(vmin=v0, vmax=v1)
        im = ax.imshow(a, cmap=cm, norm=norm, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        if t is not None:
            ax.set_title(t, fontsize=9)
        if bar:
            cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
            cb.ax.tick_params(labelsize=7)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


def plot_curves(
    x,
    curves: dict,
    *,
    xlabel: str,
    ylabel: str,
    logx: bool = False,
    logy: bool = False,
    title: str | None = None,
    hlines: dict | None = None,
    vlines: dict | None = None,
    ax=None,
    size: tuple[float, float] = (4.6, 3.2),
):
    """Plot one or several curves against a common x axis and return the figure.

    Parameters
    ----------
    x : sequence of float
        The abscissae shared by all curves.
    curves : dict of str to sequence of float
        One curve per label, each with ``len(x)`` values (``nan`` leaves a gap).
    xlabel, ylabel : str
        Axis labels.
    logx, logy : bool, optional
        Logarithmic axes.
    title : str, optional
        The axes title.
    hlines, vlines : dict of str to float, optional
        Horizontal or vertical reference lines (label to position), drawn dashed.
    ax : matplotlib.axes.Axes, optional
        Draw into these axes (for example one panel of a larger figure) instead of a new figure.
    size : tuple of float, optional
        Figure size in inches when a new figure is made.

    Returns
    -------
    matplotlib.figure.Figure
        The figure holding the axes; display it with ``plt.show()``.

    Raises
    ------
    ValueError
        If a curve does not have one value per abscissa.
    """
    x = np.asarray(x, dtype=float)
    if ax is None:
        fig, ax = plt.subplots(figsize=size)
    else:
        fig = ax.figure
    markers = "os^vDP*Xh<>"
    for k, (label, yv) in enumerate(curves.items()):
        yv = np.asarray(yv, dtype=float)
        if yv.shape != x.shape:
            raise ValueError(f"curve {label!r} has {yv.size} values, expected one per x ({x.size})")
        ax.plot(x, yv, marker=markers[k % len(markers)], markersize=4, label=label)
    for label, v in (hlines or {}).items():
        ax.axhline(v, color="gray", linestyle="--", linewidth=1, label=label)
    for label, v in (vlines or {}).items():
        ax.axvline(v, color="gray", linestyle=":", linewidth=1, label=label)
    if logx:  # label the abscissae themselves, not the decades
        from matplotlib.ticker import FixedLocator, NullFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(x))
        ax.set_xticklabels([f"{v:g}" for v in x])
        ax.xaxis.set_minor_formatter(NullFormatter())
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
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
    Image.fromarray(panel).save(buf, format="PNG")  # uint8 [H, W] -> "L", [H, W, 3] -> "RGB"
    return buf.getvalue()


__all__ += ["plot_matrix"]


def plot_matrix(
    values,
    *,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    xlabel: str,
    ylabel: str,
    title: str | None = None,
    fmt: str = "{:.1f}",
    mark_row_max: bool = True,
    ax=None,
    size: tuple[float, float] = (3.8, 3.2),
    cmap: str = "viridis",
):
    """Show a table of numbers as a heat map with the values written in the cells.

    Parameters
    ----------
    values : array-like ``[rows, cols]``
        The numbers (``nan`` cells stay blank).
    row_labels, col_labels : sequence of str
        One label per row and per column.
    xlabel, ylabel : str
        Axis labels (columns, rows).
    title : str, optional
    fmt : str, optional
        Format of the written values (default one decimal).
    mark_row_max : bool, optional
        Frame the largest value of each row (default True): "which column explains this row best".
    ax : matplotlib.axes.Axes, optional
        Draw into these axes instead of a new figure.
    size : tuple of float, optional
        Figure size in inches when a new figure is made.
    cmap : str, optional

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        If ``values`` is not 2-D or the labels do not match its shape.
    """
    from matplotlib.patches import Rectangle

    v = np.asarray(values, dtype=float)
    if v.ndim != 2:
        raise ValueError(f"values must be a 2-D table, got shape {v.shape}")
    if len(row_labels) != v.shape[0] or len(col_labels) != v.shape[1]:
        raise ValueError(f"expected {v.shape[0]} row labels and {v.shape[1]} column labels, got "
                         f"{len(row_labels)} and {len(col_labels)}")
    if ax is None:
        fig, ax = plt.subplots(figsize=size)
    else:
        fig = ax.figure
    im = ax.imshow(np.ma.masked_invalid(v), cmap=cmap, aspect="auto")
    finite = v[np.isfinite(v)]
    mid = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for r in range(v.shape[0]):
        for c in range(v.shape[1]):
            if np.isfinite(v[r, c]):
                ax.text(c, r, fmt.format(v[r, c]), ha="center", va="center", fontsize=8,
                        color="black" if v[r, c] > mid else "white")
        if mark_row_max and np.isfinite(v[r]).any():
            c = int(np.nanargmax(v[r]))
            ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    ax.set_xticks(range(v.shape[1]), list(col_labels))
    ax.set_yticks(range(v.shape[0]), list(row_labels))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return fig
