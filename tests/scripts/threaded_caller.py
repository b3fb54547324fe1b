"""Which start method a caller gets, single-threaded and then with a thread.

    python -W error::DeprecationWarning threaded_caller.py

Reports the default start method, and whether workers are our own children
(forked by us) or the fork server's: for a pool started while we are alone,
for one started while a thread runs, and for the replacement of a worker of
the first pool that dies while the thread runs.
"""

from __future__ import annotations

import contextlib
import os
import threading

import _common
from helpers import die_on, parent_after

from parloop import WorkerCrashedError, parallel_for
from parloop.backends.process import default_start_method


def parents(workers: int) -> set[int]:
    """Who started the workers of the block's pool of this size."""
    call = parallel_for(parent_after, backend="process", workers=workers, chunksize=1)
    return set(call([0.05] * 2 * workers))


def main() -> None:
    me = os.getpid()
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, name="caller-thread")
    with parallel_for(backend="process"):  # keeps both pools below
        alone = default_start_method(), parents(2) == {me}
        thread.start()
        try:
            threaded = default_start_method(), me in parents(3)  # a pool started now
            # A worker of the pool forked while we were alone dies now.
            with contextlib.suppress(WorkerCrashedError):
                parallel_for(die_on, backend="process", workers=2)(range(4), 1, "exit")
            mixed = parents(2)
        finally:
            stop.set()
            thread.join()
    _common.report(alone=alone, threaded=threaded,
                   after_crash={"ours": me in mixed, "others": len(mixed - {me})})


if __name__ == "__main__":
    main()
