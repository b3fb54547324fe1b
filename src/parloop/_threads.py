"""Whether a function's items run faster in threads, measured on the items.

A process pool pays for pickling, a start-up and a copy of every item; a
thread pool pays for none of these, but Python threads run Python code one
at a time. They run in parallel only while the function has released the
GIL: in NumPy, hashlib, zlib, bz2/lzma, most I/O, and Cython or Numba code
built ``nogil``; and for everything thread-safe on a free-threaded build.

The probe finds out by a trial (``_trial``): after timing items one by one
in the caller, it runs the next few on two threads at once (the caller and
one helper) and compares the wall time with what one thread took for as many.
That ratio, the trial's speedup, is 1 for code that holds the GIL and 2 for
code that does not. Amdahl's law turns it into the share ``e`` of an item
that runs in parallel, and so into a projection for ``n`` threads::

    speedup(n) = 1 / ((1 - e) + e / n)

Items that mostly wait (their CPU time is under half their wall time: I/O,
sleeps) get more threads than CPUs, enough to keep the CPUs busy, at most
MAX_THREADS.

The trial runs two of the user's items at once in threads, so it only
happens when threads are allowed (``thread_safe=True``, the default), and
once per function per process (the history keeps its speedup).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping

from ._plan import format_seconds

__all__ = ["ITEM_OVERHEAD", "MAX_THREADS", "MOST", "ONE_CPU", "RUN_ON", "RUN_ON_BLOCK",
           "TRIAL_KEPT", "TRIAL_MIN_ITEM", "TRIAL_SECONDS", "WAITING", "describe", "gil_enabled",
           "kept_as", "parallel_share", "projected_speedup", "runs_on", "thread_count"]

TRIAL_SECONDS = 0.002  # each thread of the trial runs at least this much work
#: each thread of a trial meant to be kept runs at least this much work: its
#: wall time then passes TRIAL_SURE at any speedup up to 2.4 (two threads)
TRIAL_KEPT = 0.006
MAX_THREADS = 32  # as concurrent.futures.ThreadPoolExecutor caps its default
WAITING = 0.5  # an item using less than this share of a CPU mostly waits
#: CPUs a trial's two threads used or waited for, between them, over its
#: wall time, at and above which its items are CPU-bound whatever the probe
#: read: code that holds the GIL keeps one of the two wanting a CPU at all
#: times (less the GIL's hand-offs: 1.07-1.25 beside a busy process, pure
#: Python that the probe read at 0.18 of a CPU); items that mostly wait keep
#: less than one (10 ms sleeps beside two busy processes read 0.43-0.67, their
#: wake-ups waiting for a CPU, and at 0.5 they read as CPU-bound: "0.00x")
ONE_CPU = 0.9
THREAD_START = 100e-6  # seconds to start one pool thread (measured: ~60-90 µs here)
#: seconds a thread pool adds per item: its item loop (_runner: the item's
#: index, a cancel check, its result) over a bare loop, measured 0.22 µs
ITEM_OVERHEAD = 0.3e-6
#: items shorter than this are not tried on threads: whatever they call is
#: too short to release the GIL for long, and a thread pool's own cost per
#: item would eat what threads could gain
TRIAL_MIN_ITEM = 10e-6
#: two threads run items at most twice as fast as one: a trial that reads
#: more was held against items that ran slower when probed than they do now
#: (BLAS warming up in a new process read 7.8x; other threads busy then, 27x)
MOST = 2.5
#: seconds of serial work left after a trial, at most, that the trial's two
#: threads finish themselves when a pool of two threads was chosen (see
#: ``runs_on``)
RUN_ON = 0.1
#: seconds of items each of those threads takes at a time: the last block's
#: imbalance stays small, and the per-item cost of taking items is spread
RUN_ON_BLOCK = 0.5e-3


def gil_enabled() -> bool:
    """False on a free-threaded build running without the GIL (3.13t+)."""
    check = getattr(sys, "_is_gil_enabled", None)
    return True if check is None else bool(check())


def parallel_share(speedup: float, threads: int = 2) -> float:
    """Amdahl's ``e`` from a trial's speedup on ``threads`` threads, in [0, 1]."""
    if speedup <= 1.0:
        return 0.0
    return min(1.0, (1 - 1 / speedup) / (1 - 1 / threads))


def projected_speedup(trial_speedup: float, threads: int) -> float:
    share = parallel_share(trial_speedup)
    return 1.0 / ((1.0 - share) + share / threads)


def describe(speedup: float, threads: int, threaded: float | None, only: str) -> str:
    """The plan's words on a trial: its ``speedup``, and the ``threaded``
    projection on ``threads`` threads (None: threads lose); ``only``: why it
    is a reading for this call only, if it is (see ``Trial.only``)."""
    caveat = f"{only}: a reading for this call only" if only else ""
    if threaded is None:
        why = caveat or ("the GIL is held" if speedup > 0.9 else
                         "they compete for the CPUs, or for a lock")
        return f"; on 2 threads at once items ran {speedup:.2f}x as fast as on one ({why})"
    return (f"; releases the GIL (2 threads: {speedup:.2f}x{'; ' + caveat if caveat else ''}): "
            f"{threads} threads ≈ {format_seconds(threaded)}")


def runs_on(threads: int | None, remaining: int | None, per_item: float) -> bool:
    """Whether a rest of ``remaining`` items, bound for a pool of ``threads``
    threads, runs on the caller and one helper thread instead, as a trial
    does: when the pool would have two threads too, and the rest is short.
    Handing it to a pool (a new thread to start, chunks to queue and
    collect) took 1-4 ms between the trial's last item and the pool's
    second thread's first, with both CPUs idle part of it: 64 sha256 of
    1 MB ran 1.16x a ThreadPoolExecutor that way, and 0.99x with the trial
    going on (fresh interpreters, median of 30). Past RUN_ON of work, the
    pool's streaming of results in batches matters more."""
    return threads == 2 and remaining is not None and 0 < remaining * per_item <= RUN_ON


def thread_count(cpus: int, cpu_share: float, remaining: int) -> int:
    """Threads for items that keep ``cpu_share`` of a CPU busy while they
    run: one per CPU for CPU-bound work; enough to keep the CPUs busy for
    work that mostly waits, at most MAX_THREADS and one per item."""
    if cpu_share >= WAITING:
        threads = cpus
    else:
        threads = min(MAX_THREADS, max(cpus, math.ceil(cpus / max(cpu_share, 1 / MAX_THREADS))))
    return max(1, min(threads, remaining))


def kept_as(cut: bool, history: Mapping[str, float]) -> str:
    """Under which name a trial long enough to keep (``Trial.sure``) goes
    into the function's history: "trial", which later calls follow without
    trying again, or "cut", which they do not. A trial that stopped early
    read a handful of items, which a stall of the host can spoil (warm, a
    NumPy product that gains ~2x on two threads read 1.06x, and the function
    stayed serial for good): it is kept once a second call's trial has
    stopped early too."""
    return "trial" if not cut or "cut" in history else "cut"
