"""Which start method a caller gets, single-threaded and then with a thread.

    python -W error::DeprecationWarning threaded_caller.py

Reports the default start method and whether the workers are our own
children (fork) or the fork server's, before and after a thread starts.
"""

from __future__ import annotations

import os
import threading

import _common
from helpers import parent_pid

from parloop import parallel_for
from parloop.backends.process import default_start_method


def forked_by_us() -> bool:
    parents = parallel_for(parent_pid, backend="process", workers=2)(range(4))
    return set(parents) == {os.getpid()}


def main() -> None:
    alone = default_start_method(), forked_by_us()
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, name="caller-thread")
    thread.start()
    try:
        threaded = default_start_method(), forked_by_us()
    finally:
        stop.set()
        thread.join()
    _common.report(alone=alone, threaded=threaded)


if __name__ == "__main__":
    main()
