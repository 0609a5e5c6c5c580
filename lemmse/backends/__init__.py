"""Backends: what solves a patch-attention problem (book chapter 7).

An estimator of :mod:`lemmse.estimators` describes its problem (a
``lemmse.patches.PatchProblem``: query and key images, values, admissibility groups, metric);
the modules here solve it:

- :mod:`lemmse.backends.planner`: :func:`plan` picks the path and the back-end and says why
  (a :class:`Plan`); the one place where that choice is made;
- :mod:`lemmse.backends.attention`: the streaming softmax attention
  (:class:`StreamingAttention`, native or torch) and the packing of keys into the native
  kernel's blocks of 16;
- :mod:`lemmse.backends.sliding`: the sliding-window driver (:class:`SlidingWindow`, the same
  ``update`` / ``result`` interface);
- ``lemmse._native``: the C kernels' build and their typed wrappers (the one place that knows
  their signatures).

``lemmse.engine`` is the former name of :mod:`lemmse.backends.attention` (the same module).
"""

from lemmse.backends.attention import KeyChunk, StreamingAttention
from lemmse.backends.planner import Plan, plan
from lemmse.backends.sliding import SlidingWindow

__all__ = ["plan", "Plan", "StreamingAttention", "KeyChunk", "SlidingWindow"]
