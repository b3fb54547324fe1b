"""Many calls in one process: warm, cold, in blocks, failing, stopped early.

    python many_calls.py METHOD CALLS

Reports what the process holds (fds, threads, descendant processes, shared
memory mapped) after the first call and again after the last one; the test
expects no growth, and nothing on stderr at exit (no resource_tracker
warnings about leaked semaphores or shared memory).

Semaphores and shared memory are counted in /proc/self/maps rather than as
/dev/shm entries: /dev/shm is shared with every other process on the machine,
so its entries cannot be told apart. A named semaphore that outlived its
process would be reported by the resource tracker, on our stderr.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from typing import Any

import _common
from helpers import fail_on, square

from parloop import parallel_for


def descendants() -> int:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as stat:
                    parents[int(entry)] = int(stat.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, ValueError):
                continue
    found: set[int] = set()
    frontier = {os.getpid()}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return len(found)


def holdings() -> dict[str, Any]:
    with open("/proc/self/status") as status:
        threads = next(int(line.split()[1]) for line in status if line.startswith("Threads:"))
    with open("/proc/self/maps") as maps:
        shared = sum(1 for line in maps if "/dev/shm/" in line or "SYSV" in line)
    return {"fds": len(os.listdir("/proc/self/fd")), "threads": threads,
            "processes": descendants(), "shared_memory_maps": shared}


def main() -> None:
    method, calls = sys.argv[1], int(sys.argv[2])
    options = {"backend": "process", "workers": 2, "start_method": method}
    warm = parallel_for(square, **options)
    other_shape = parallel_for(square, **{**options, "workers": 3})
    failing = parallel_for(fail_on, **options)
    warm(range(10))
    before = holdings()
    for call in range(calls):
        step = call % 100
        if step == 0:  # a block starts and closes a pool of its own
            with parallel_for(**options):
                warm(range(20))
        elif step == 50:  # retires the warm pool: the call after it starts a cold one
            other_shape(range(10))
        elif step % 10 == 3:
            with contextlib.suppress(ValueError):
                failing(range(10))
        elif step % 10 == 7:
            for _ in warm.iter(range(100)):
                break
        else:
            assert warm(range(10)) == [x * x for x in range(10)]
    warm(range(10))
    # A cancel may leave a short timer (it kills a worker stuck in a cancelled
    # item 0.5 s later); it ends by itself and is no leak.
    for thread in threading.enumerate():
        if thread.name == "parloop-cancel":
            thread.join(5)
    _common.report(before=before, after=holdings())


if __name__ == "__main__":
    main()
