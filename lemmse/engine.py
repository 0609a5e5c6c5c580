"""The former name of :mod:`lemmse.backends.attention`: the streaming attention (chapter 7).

``import lemmse.engine`` gives that very module object (not a copy), so the names chapters and
callers use keep working — ``KeyChunk``, ``StreamingAttention``, ``choose_backend``,
``DEFAULT_MEMORY_BUDGET``, ``DIRECT_SIGMA``, ``LOG2E``, ``load_kernel``, ``no_tf32`` — and
setting ``engine.DIRECT_SIGMA`` (as chapter 7 does) changes the threshold the attention reads.
"""

import sys

from lemmse.backends import attention as _attention

sys.modules[__name__] = _attention
