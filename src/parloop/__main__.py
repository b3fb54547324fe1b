"""``python -m parloop info`` / ``python -m parloop bench``: see :mod:`parloop._cli`."""

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
