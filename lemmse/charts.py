"""Plotting helpers for numbers rather than pictures: scalar maps, curves and matrices.

:func:`show_fields` draws two-dimensional scalar maps (weights, errors, spectra) side by side
with colour bars, :func:`plot_curves` line plots (PSNR against σ or P, …) and
:func:`plot_matrix` an annotated heat map of a table. Each builds a matplotlib figure and
returns it; nothing is shown or saved here (end the cell with ``plt.show()``).
The image helpers are in :mod:`lemmse.plot`, which re-exports these three.
First used in book chapter 2 (``book/02_mmse.md``); chapters 2-11 use them.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

__all__ = ["show_fields", "plot_curves", "plot_matrix", "panels", "LEGIBLE_PX", "COLUMN_PX",
           "column_width"]

#: Smallest legible text height on the page, in CSS pixels (book STYLE: text >= 9 px as displayed).
LEGIBLE_PX = 9.0
#: Width of the website's text column at a 1280 px window, in CSS pixels: wider images are shrunk.
COLUMN_PX = 688


def column_width(dpi: float | None = None) -> float:
    """Widest figure, in inches, that the book's text column shows unshrunk at ``dpi``.

    ``dpi`` defaults to ``rcParams["figure.dpi"]`` (100 in a notebook), at which the inline
    backend saves figures. A few pixels are left for the margin that ``bbox_inches="tight"``
    adds.
    """
    dpi = plt.rcParams["figure.dpi"] if dpi is None else dpi
    return (COLUMN_PX - 12) / float(dpi)


def panels(nrows: int = 1, ncols: int = 1, *, height: float = 3.0, **kwargs):
    """A figure of ``nrows × ncols`` axes as wide as the book's text column.

    Use it for several panels in one figure (``plot_curves(..., ax=axes[k])``): a figure wider
    than the column is shrunk on the page and its labels become illegible.

    Parameters
    ----------
    nrows, ncols : int
    height : float, optional
        Height of one row of panels in inches (default 3).
    **kwargs
        Passed to ``matplotlib.pyplot.subplots`` (``sharex``, ``sharey``, …).

    Returns
    -------
    (matplotlib.figure.Figure, numpy.ndarray of Axes)
        The axes always as a 2-D array ``[nrows, ncols]``.
    """
    for name, v in (("nrows", nrows), ("ncols", ncols)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if not height > 0:
        raise ValueError(f"height must be positive, got {height!r}")
    kwargs.setdefault("squeeze", False)
    return plt.subplots(nrows, ncols, figsize=(column_width(), height * nrows), **kwargs)


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
        Lowered when the maps would not fit the book's text column (:func:`column_width`),
        where a wider figure would be shrunk and its colour-bar labels become illegible.

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
    size = min(size, column_width() / sum(widths))  # within the column: text shown at its size
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
            cb.ax.tick_params(labelsize=7)  # 9.7 px at 100 dpi
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
