"""Ctrl-C while a pool is still starting in a thread and the caller is busy
running an item of its own meanwhile.

    python interrupted_while_starting.py overlap|head

``overlap``: the probe has chosen a forkserver pool, which starts in a
thread while the caller goes on running items. ``head``: the first item of
the call runs long, and a head start brings a pool up beside it. Either way
the script reports {"caller_busy": pid} from inside the caller's item while
that thread runs, then sleeps; the test sends SIGINT and expects one
KeyboardInterrupt traceback, a prompt exit, and no process left behind.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import _common

from parloop import _scope, parallel_for

STARTER = {"overlap": "parloop-pool-start", "head": "parloop-head-start"}[sys.argv[1]]


def work(seconds: float) -> float:
    # The caller's pid travels in the environment: a forkserver worker re-runs
    # this module, so a module-level os.getpid() would be its own.
    if os.getpid() == int(os.environ["CALLER_PID"]):
        time.sleep(seconds / 2)
        if any(thread.name == STARTER for thread in threading.enumerate()):
            _common.report(caller_busy=os.getpid())
            time.sleep(60)
        return seconds
    time.sleep(seconds)
    return seconds


def _slow_start() -> None:
    """The pool's start, delayed in the starter thread (the real start
    follows), so that the Ctrl-C finds it under way."""
    real = _scope.lease

    def lease(*args: object, **kwargs: object) -> _scope.Lease:
        if threading.current_thread().name == STARTER:
            time.sleep(1.0)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    _scope.lease = lease  # type: ignore[assignment]


def main() -> None:
    os.environ["CALLER_PID"] = str(os.getpid())
    _slow_start()
    # thread_safe=False: sleeps would run on threads, and no pool would start
    fn = parallel_for(work, workers=2, start_method="forkserver", thread_safe=False)
    if sys.argv[1] == "overlap":
        fn([0.012] * 80)  # items too short for a head start: the probe decides
    else:
        fn([0.4] * 40)  # the head start fires 0.1 s into the first item
    _common.report(finished=True, plan=str(fn.last_plan))  # never: the test interrupts the call


if __name__ == "__main__":
    main()
