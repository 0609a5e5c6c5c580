"""nbval over the chapters: build the native kernels before the first notebook runs.

The first use of a kernel on a machine compiles it and prints a one-line note to stderr
(``lemmse._native``); inside a notebook that note is an unexpected output and fails nbval
for whichever chapter happens to run first on a fresh machine.  Building them here, in the
pytest process, fills the same on-disk cache the notebook kernels read.
"""

from lemmse import _native


def pytest_collection_finish(session):
    if any(item.nodeid.endswith(".ipynb") or ".ipynb::" in item.nodeid for item in session.items):
        _native.load_kernel()
        _native.load_slide_kernel()
