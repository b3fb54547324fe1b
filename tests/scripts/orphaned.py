"""Start a long call and report the worker pids; the test then SIGKILLs us.

    python orphaned.py METHOD

The workers must notice that their caller is gone and exit on their own.
"""

from __future__ import annotations

import sys

import _common
from helpers import pid_after, sleep_then

from parloop import parallel_for


def main() -> None:
    options = {"backend": "process", "workers": 2, "start_method": sys.argv[1], "chunksize": 1}
    pids = parallel_for(pid_after, **options)([0.1, 0.1])
    _common.report(workers=sorted(set(pids)))
    parallel_for(sleep_then, **options)([60.0] * 8)


if __name__ == "__main__":
    main()
