"""A long loop with a checkpoint, for the resume tests.

    python checkpointed.py DB LOG BACKEND COUNT [--sleep S] [--fail K]
                           [--version 1|2|3] [--other]

Item ``x`` sleeps S seconds, appends ``x`` to LOG once it is done (one
O_APPEND write, so lines from several processes land whole) and returns a
result. The script reports {"results": [...], "plan": ...} when the call
ends; the tests interrupt it part-way (SIGKILL, SIGINT) or let item K raise
(``--fail K``, until a file LOG.fixed exists).

``--version``: 1 and 3 are the same code (3 sits elsewhere, under a
comment); 2 computes something else. ``--other``: another function, on the
same file.
"""

from __future__ import annotations

import argparse
import os
import time

import _common

from parloop import Checkpoint, parallel_for

parser = argparse.ArgumentParser()
parser.add_argument("db")
parser.add_argument("log")
parser.add_argument("backend")
parser.add_argument("count", type=int)
parser.add_argument("--sleep", type=float, default=0.0)
parser.add_argument("--fail", type=int, default=-1)
parser.add_argument("--version", type=int, default=1)
parser.add_argument("--other", action="store_true")
parser.add_argument("--errors", default="raise")
options = parser.parse_args()


def done(x: int) -> None:
    fd = os.open(options.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{x}\n".encode())
    finally:
        os.close(fd)


if options.version == 2:
    def work(x: int, pause: float, fail: int) -> int:
        time.sleep(pause)
        if x == fail and not os.path.exists(options.log + ".fixed"):
            raise ValueError(f"item {x} failed")
        done(x)
        return x * x + 1


def other_work(x: int, pause: float, fail: int) -> int:
    time.sleep(pause)
    done(x)
    return -x


if options.version == 1:
    def work(x: int, pause: float, fail: int) -> int:
        time.sleep(pause)
        if x == fail and not os.path.exists(options.log + ".fixed"):
            raise ValueError(f"item {x} failed")
        done(x)
        return x * x
elif options.version == 3:
    # The same code as version 1, elsewhere in the file, under a comment.
    def work(x: int, pause: float, fail: int) -> int:
        time.sleep(pause)
        if x == fail and not os.path.exists(options.log + ".fixed"):
            raise ValueError(f"item {x} failed")
        done(x)  # a comment changes nothing
        return x * x


def main() -> None:
    fn = parallel_for(other_work if options.other else work, backend=options.backend, workers=2,
                      errors=options.errors, checkpoint=Checkpoint(options.db))
    _common.report(started=os.getpid())
    results = fn(range(options.count), options.sleep, options.fail)
    plan = fn.last_plan
    assert plan is not None
    _common.report(results=[repr(r) if isinstance(r, BaseException) else r for r in results],
                   restored=plan.restored, stored=plan.stored)


if __name__ == "__main__":
    main()
