"""Ctrl-C while a forkserver pool is still starting and the caller is busy
running an item of its own meanwhile.

    python interrupted_while_starting.py

Reports {"caller_busy": pid} from inside the caller's second item, which then
sleeps; the test sends SIGINT and expects one KeyboardInterrupt traceback, a
prompt exit, and no process left behind.
"""

from __future__ import annotations

import os
import time

import _common

from parloop import parallel_for


def work(seconds: float) -> float:
    # The caller's pid travels in the environment: a forkserver worker re-runs
    # this module, so a module-level os.getpid() would be its own.
    if os.getpid() == int(os.environ["CALLER_PID"]):
        work.calls = getattr(work, "calls", 0) + 1  # type: ignore[attr-defined]
        if work.calls == 2:  # type: ignore[attr-defined]
            _common.report(caller_busy=os.getpid())
            time.sleep(60)
    time.sleep(seconds)
    return seconds


def main() -> None:
    os.environ["CALLER_PID"] = str(os.getpid())
    fn = parallel_for(work, workers=2, start_method="forkserver")
    fn([0.2] * 40)
    _common.report(finished=True)  # never: the test interrupts the call


if __name__ == "__main__":
    main()
