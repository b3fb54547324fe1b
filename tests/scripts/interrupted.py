"""Start a long call, report the worker pids, wait for Ctrl-C.

    python interrupted.py METHOD map|iter

The test sends SIGINT while the call runs and expects one KeyboardInterrupt
traceback on stderr, an exit within seconds, and no worker left.
"""

from __future__ import annotations

import sys

import _common
from helpers import pid_after, sleep_then

from parloop import parallel_for


def main() -> None:
    method, form = sys.argv[1], sys.argv[2]
    options = {"backend": "process", "workers": 2, "start_method": method, "chunksize": 1}
    # Two items go to two different workers; the warm pool then runs the long call.
    pids = parallel_for(pid_after, **options)([0.1, 0.1])
    slow = parallel_for(sleep_then, **options)
    _common.report(workers=sorted(set(pids)))
    if form == "map":
        slow([60.0] * 8)
    else:
        for _ in slow.iter([60.0] * 8):
            pass
    _common.report(finished=True)  # never: the test interrupts the call


if __name__ == "__main__":
    main()
