"""``python -m benchmarks [--quick]``: run the suite and write benchmarks/results/."""

from __future__ import annotations

import sys

from .run import main

if __name__ == "__main__":
    sys.exit(main())
