"""Shared pytest fixtures (keep this file small and generic)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def find_real_data_root() -> Path | None:
    """Folder holding the real data sets: $LEMMSE_DATA if set, else ``<repo>/../shared/data``.

    Returns None when neither exists.
    """
    env = os.environ.get("LEMMSE_DATA")
    candidates = [Path(env).expanduser()] if env else []
    candidates.append(REPO_ROOT.parent / "shared" / "data")
    for path in candidates:
        if path.is_dir():
            return path
    return None


# The chapters (run by nbval in kernels that inherit this environment) read LEMMSE_DATA: point it
# at the shared data beside the checkout when the user has not set it.
if "LEMMSE_DATA" not in os.environ and find_real_data_root() is not None:
    os.environ["LEMMSE_DATA"] = str(find_real_data_root())


@pytest.fixture(scope="session")
def real_data_root() -> Path:
    """Path of the real data folder (see :func:`find_real_data_root`); skips the test if absent."""
    root = find_real_data_root()
    if root is None:
        pytest.skip("real data not found: set LEMMSE_DATA or place it at ../shared/data")
    return root


def _native_isas() -> list[str | None]:
    """The instruction sets the native kernels can be tested in here: on an AVX-512 CPU both its
    own and the AVX2 variant (built there with ``LEMMSE_ISA=avx2``), else the one it has."""
    from lemmse import _native

    own = _native.isa()
    return ["avx512", "avx2"] if own == "avx512" else [own]


@pytest.fixture(params=_native_isas(), ids=lambda isa: f"isa={isa}")
def native_isa(request, monkeypatch):
    """Run the test once per instruction set of the native kernels (``pytestmark =
    pytest.mark.usefixtures("native_isa")`` in a module)."""
    if request.param is not None:
        monkeypatch.setenv("LEMMSE_ISA", request.param)
    return request.param


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread is faster, and the CPU is shared with other test runs
    (modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def pytest_collection_finish(session):
    """Build the native kernels before the first notebook runs (nbval of the chapters).

    The first use of a kernel on a machine compiles it and prints a one-line note to stderr
    (``lemmse._native``); inside a notebook that note is an unexpected output that fails nbval
    for whichever chapter runs first on a fresh machine. Building them here, in the pytest
    process, fills the on-disk cache the notebook kernels read. (A hook here, not in a
    book/conftest.py: a second module named ``conftest`` would shadow this one for the tests'
    ``from conftest import ...``.)
    """
    if any(".ipynb" in item.nodeid for item in session.items):
        from lemmse import _native

        _native.load_kernel()
        _native.load_slide_kernel()
