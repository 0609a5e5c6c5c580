"""``python -m lemmse COMMAND ...``: the entry point of the command line in :mod:`lemmse.cli`.

Every subcommand (``train``, ``export``, ``experiment ...``) is defined in :mod:`lemmse.cli`
(book chapter 8, ``book/08_training.md``); :func:`main` and :func:`build_parser` are re-exported
here, so ``from lemmse.__main__ import main`` and the ``lemmse`` script keep working.
"""

import sys

from lemmse.cli import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
