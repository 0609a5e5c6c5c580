"""Where the project's results live: :func:`results_root`.

The committed results of the book's Experiments part (the exported checkpoints in
``results/checkpoints`` with their ``MANIFEST.json``, and the CSV tables ``agreement.csv``,
``patch_size.csv``, ``training_budget.csv``, ``groups.csv``) are read by chapters 8 to 15 and
written by ``python -m lemmse experiment ...`` (:mod:`lemmse.experiments`, chapter 8
``book/08_training.md``). Both find the folder with :func:`results_root`, so a chapter and the
command line run from anywhere agree on it.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["results_root"]


def results_root() -> Path:
    """The project's ``results/`` folder.

    ``$LEMMSE_RESULTS`` if set and not empty; else ``results/`` of the checkout that holds the
    imported ``lemmse`` package (``Path(lemmse.__file__).resolve().parents[1] / "results"``)
    when that folder exists; else ``results/`` of the current folder (an installed package
    used outside a checkout). Read on every call, so setting the variable takes effect at once.
    """
    env = os.environ.get("LEMMSE_RESULTS")
    if env:
        return Path(env).expanduser()
    checkout = Path(__file__).resolve().parents[1] / "results"
    if checkout.is_dir():
        return checkout
    return Path.cwd() / "results"
