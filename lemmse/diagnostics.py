"""Exact weights behind chosen output pixels of a patch estimator (book chapter 5).

:func:`pixel_weights` and :class:`PixelWeights` live in ``lemmse.posterior``, with the other
readings of an estimator's weights; they are re-exported here, where they were first.
"""

from lemmse.posterior import PixelWeights, pixel_weights

__all__ = ["PixelWeights", "pixel_weights"]
