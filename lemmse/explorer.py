"""The patch explorer of book chapter 12 (``book/12_explorer.md``): the patches behind a pixel.

An :class:`Explorer` holds a training set, a few test images, a patch estimator (the LE-MMSE)
and a network. For a test image, a noise level σ and an output pixel it draws one panel
(:meth:`Explorer.panel`): the measurement, the LE-MMSE and the network's output with the
pixel's ``P × P`` window framed, then the ``k`` training patches with the largest exact weights
behind the pixel (``lemmse.diagnostics.pixel_weights``, float64, book chapter 5), with their
weights. :meth:`Explorer.widget` precomputes panels for a grid of images, σ and pixels and
switches between them with ipywidgets linked in the browser, so that the widget works on a
static web page. :func:`fashion_mnist_explorer` builds the explorer of the chapter.

Panels are sized for the book's text column (``lemmse.plot.COLUMN_PX``) with text of at
least ``lemmse.plot.LEGIBLE_PX`` pixels, and their PNG files record their smallest text
(:func:`lemmse.plot.figure_png`).
"""

from __future__ import annotations

import numbers
from typing import Callable

import matplotlib.pyplot as plt
import torch

from lemmse.plot import COLUMN_PX, figure_png, to_display

__all__ = ["Explorer", "fashion_mnist_explorer"]

FONT_PT = 9  # text size of the panels, in points: 12.5 px at the widget's 100 dpi
DPI = 100


def _noise_seed(image: int, sigma: float) -> int:
    from lemmse.experiments import noise_seed

    return noise_seed("test", sigma, image)


class Explorer:
    """Panels of the training patches behind an output pixel (book chapter 12).

    Parameters
    ----------
    estimator : LEMMSE or LocalMMSE
        The patch estimator; its training set and patch size give the patches shown.
    test : Tensor ``[B, C, H, W]``
        The test images, in [0, 1].
    network : callable ``(y, sigma) -> x_hat``
        The network compared with the estimator (e.g. ``lambda y, s: predict(unet, y, s)``).
    network_name : str, optional
        Its title in the panels (default ``"network"``).
    operator : Operator, optional
        The forward model; default ``lemmse.Denoising()``. The noise of test image ``i`` at σ
        is that of the agreement tables (``lemmse.experiments.noise_seed("test", σ, i)``).
    """

    def __init__(self, estimator, test: torch.Tensor, network: Callable, *,
                 network_name: str = "network", operator=None):
        from lemmse.operators import Denoising

        if not isinstance(test, torch.Tensor) or test.ndim != 4:
            got = tuple(test.shape) if isinstance(test, torch.Tensor) else type(test).__name__
            raise ValueError(f"test must be a tensor [B, C, H, W], got {got}")
        if not callable(network):
            raise TypeError(f"network must be a callable (y, sigma) -> x_hat, "
                            f"got {type(network).__name__}")
        self.estimator = estimator
        self.train = estimator.train
        self.patch_size = int(estimator.patch_size)
        self.test = test
        self.network = network
        self.network_name = str(network_name)
        self.operator = Denoising() if operator is None else operator
        self._outputs: dict = {}

    # -- data ------------------------------------------------------------------------------

    def _check(self, image, sigma) -> tuple[int, float]:
        n = self.test.shape[0]
        if isinstance(image, bool) or not isinstance(image, numbers.Integral) \
                or not 0 <= image < n:
            raise ValueError(f"image must be an integer in [0, {n}), got {image!r}")
        if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or not sigma > 0:
            raise ValueError(f"sigma must be a positive number, got {sigma!r}")
        return int(image), float(sigma)

    def outputs(self, image: int, sigma: float):
        """``(y, x_estimator, x_network)`` for test image ``image`` at ``sigma`` (cached)."""
        image, sigma = self._check(image, sigma)
        if (image, sigma) not in self._outputs:
            g = torch.Generator().manual_seed(_noise_seed(image, sigma))
            y = self.operator.measure(self.test[image : image + 1], sigma, generator=g)
            with torch.no_grad():
                self._outputs[(image, sigma)] = (
                    y, self.estimator(y, sigma), self.network(y, sigma))
        return self._outputs[(image, sigma)]

    def weights(self, image: int, sigma: float, pixels):
        """Exact weights behind ``pixels`` of the estimate (``lemmse.pixel_weights``)."""
        from lemmse.diagnostics import pixel_weights

        y = self.outputs(image, sigma)[0]
        return pixel_weights(self.estimator, y, float(sigma), pixels)

    def patch(self, n: int, r: int, c: int) -> torch.Tensor:
        """The clean ``P × P`` training patch of image ``n`` centred at ``(r, c)`` (circular)."""
        P, (H, W) = self.patch_size, self.train.shape[-2:]
        rows = torch.arange(r - P // 2, r + P // 2 + 1) % H
        cols = torch.arange(c - P // 2, c + P // 2 + 1) % W
        return self.train[n][:, rows][:, :, cols]

    # -- drawing ---------------------------------------------------------------------------

    def panel(self, image: int, pixel, sigma: float, k: int = 6, weights=None,
              width_px: int = COLUMN_PX - 8):
        """One panel: y, estimator and network (pixel framed), then the ``k`` top patches.

        Parameters
        ----------
        image : int
            Index of the test image.
        pixel : (row, column)
        sigma : float
        k : int, optional
            Number of training patches shown (default 6).
        weights : PixelWeights, optional
            Precomputed weights of this image and σ that include ``pixel``.
        width_px : int, optional
            Width of the figure at 100 dpi (default: the book's text column).

        Returns
        -------
        matplotlib.figure.Figure
        """
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        image, sigma = self._check(image, sigma)
        pixel = tuple(int(v) for v in pixel)
        y, x_est, x_net = self.outputs(image, sigma)
        pw = weights if weights is not None else self.weights(image, sigma, [pixel])
        if pixel not in pw.pixels:
            raise ValueError(f"weights must include pixel {pixel}, got pixels {pw.pixels}")
        q = pw.pixels.index(pixel)
        w, img, pos = pw.topk(q, k=k)
        P, (r, c) = self.patch_size, pixel

        width = width_px / DPI
        fig = plt.figure(figsize=(width, width * 0.62), dpi=DPI)
        grid = fig.add_gridspec(2, 3 * k, height_ratios=(2.2, 1), hspace=0.55, wspace=0.25,
                                left=0.01, right=0.99, bottom=0.02, top=0.84)
        names = ("measurement", type(self.estimator).__name__.replace("LEMMSE", "LE-MMSE"),
                 self.network_name)
        for j, (im, name) in enumerate(zip((y, x_est, x_net), names)):
            ax = fig.add_subplot(grid[0, j * k : (j + 1) * k])
            ax.imshow(to_display(im[0]), cmap="gray", vmin=0, vmax=1)
            ax.add_patch(plt.Rectangle((c - P / 2, r - P / 2), P, P, fill=False,
                                       edgecolor="red", linewidth=1.2))
            ax.set_title(f"{name}: {float(im[0, 0, r, c]):.2f}", fontsize=FONT_PT)
            ax.axis("off")
        for j, (v, n, p) in enumerate(zip(w, img, pos)):
            ax = fig.add_subplot(grid[1, 3 * j : 3 * (j + 1)])
            ax.imshow(to_display(self.patch(int(n), int(p[0]), int(p[1]))),
                      cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"w = {float(v):.2g}\nimage {int(n)}", fontsize=FONT_PT)
            ax.axis("off")
        fig.suptitle(f"test image {image}, σ = {sigma:g}, pixel {pixel}: "
                     f"n50 = {int(pw.n50[q]):,} patches hold half the weight\n"
                     f"below: the {len(w)} heaviest training patches "
                     f"(clean, {P} × {P}) behind the pixel", fontsize=FONT_PT)
        return fig

    def widget(self, images, sigmas, pixels: dict, *, sigma=None, k: int = 6):
        """Precomputed panels, switched in the browser by an image menu, σ slider, pixel menu.

        Parameters
        ----------
        images : sequence of int
        sigmas : sequence of float
        pixels : dict ``{(row, column): name}``
            The pixels offered, by name; the first is selected.
        sigma : float, optional
            The σ selected first (default: the middle of ``sigmas``).
        k : int, optional
            Number of training patches per panel.

        Returns
        -------
        ipywidgets.VBox
            Every control has one copy per page, kept in step by ``jslink``, so the widget
            works without a kernel.
        """
        import ipywidgets as widgets

        images, sigmas = list(images), [float(s) for s in sigmas]
        if not images or not sigmas or not pixels:
            raise ValueError("images, sigmas and pixels must not be empty")
        sigma = sigmas[len(sigmas) // 2] if sigma is None else float(sigma)
        if sigma not in sigmas:
            raise ValueError(f"sigma must be one of sigmas {sigmas}, got {sigma}")
        points = [tuple(int(v) for v in p) for p in pixels]
        labels = [f"{name} {p}" for p, name in zip(points, pixels.values())]

        pages, sliders, menus = [], [], []
        for image in images:
            sigma_pages = []
            for s in sigmas:
                pw = self.weights(image, s, points)
                panels = [widgets.Image(value=figure_png(self.panel(image, p, s, k, pw), DPI,
                                                         colors=128), format="png")
                          for p in points]
                del pw
                menu = widgets.Dropdown(options=labels, description="pixel")
                stack = widgets.Stack(panels, selected_index=0)
                widgets.jslink((menu, "index"), (stack, "selected_index"))
                menus.append(menu)
                sigma_pages.append(widgets.VBox([menu, stack]))
            slider = widgets.SelectionSlider(options=[f"{s:g}" for s in sigmas],
                                             value=f"{sigma:g}", description="σ")
            stack = widgets.Stack(sigma_pages, selected_index=sigmas.index(sigma))
            widgets.jslink((slider, "index"), (stack, "selected_index"))
            sliders.append(slider)
            pages.append(widgets.VBox([slider, stack]))
        image_menu = widgets.Dropdown(options=[f"test image {i}" for i in images],
                                      description="image")
        stack = widgets.Stack(pages, selected_index=0)
        widgets.jslink((image_menu, "index"), (stack, "selected_index"))
        for group in (sliders, menus):  # one copy of each control per page: keep them in step
            for a, b in zip(group, group[1:]):
                widgets.jslink((a, "index"), (b, "index"))
        return widgets.VBox([image_menu, stack])


def fashion_mnist_explorer(n_train: int = 10_000, n_test: int = 8,
                           patch_size: int = 5, roots=None) -> Explorer:
    """The explorer of book chapter 12: FashionMNIST denoising, LE-MMSE and U-Net.

    The LE-MMSE uses the first ``n_train`` training images and ``patch_size``; the network is
    the U-Net of book chapter 8 (experiment fashion-mnist / denoising / unet), loaded from its
    checkpoint (``lemmse.experiments.find_checkpoint``, ``roots`` as there).
    """
    import lemmse
    from lemmse.experiments import Experiment, find_checkpoint
    from lemmse.train import load_checkpoint, predict

    train = lemmse.load_dataset("fashion-mnist", "train", n=n_train)
    test = lemmse.load_dataset("fashion-mnist", "test", n=n_test)
    est = lemmse.LEMMSE(train, patch_size=patch_size)
    config = Experiment("fashion-mnist", "denoising", "unet").config("cpu")
    unet = load_checkpoint(find_checkpoint(config, roots))[0]
    return Explorer(est, test, lambda y, s: predict(unet, y, s), network_name="U-Net")
