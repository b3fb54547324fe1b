"""Whether a function's items run faster in threads, measured on the items.

A process pool pays for pickling, a start-up and a copy of every item; a
thread pool pays for none of these, but Python threads run Python code one
at a time. They run in parallel only while the function has released the
GIL: in NumPy, hashlib, zlib, bz2/lzma, most I/O, and Cython or Numba code
built ``nogil``; and for everything thread-safe on a free-threaded build.

The probe finds out by a trial: after timing items one by one in the
caller, it runs the next few on two threads at once (the caller and one
helper) and compares the wall time with what one thread took for as many.
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

import _thread
import contextlib
import itertools
import math
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from ._native import run_delay
from ._plan import format_seconds
from ._threadpool import SimpleQueue, take

__all__ = ["ITEM_OVERHEAD", "LOSING", "MAX_THREADS", "MOST", "RUN_ON", "RUN_ON_BLOCK", "STARVED",
           "STOP_ITEMS", "TRIAL_KEPT", "TRIAL_MIN_ITEM", "TRIAL_SECONDS", "TRIAL_SURE", "Trial",
           "describe", "gil_enabled", "kept_as", "projected_speedup", "run_trial", "runs_on",
           "thread_count"]

TRIAL_SECONDS = 0.002  # each thread of the trial runs at least this much work
TRIAL_SURE = 0.005  # a trial this long is kept in the history; a shorter one decides one call
#: each thread of a trial meant to be kept runs at least this much work: its
#: wall time then passes TRIAL_SURE at any speedup up to 2.4 (two threads)
TRIAL_KEPT = 0.006
MAX_THREADS = 32  # as concurrent.futures.ThreadPoolExecutor caps its default
WAITING = 0.5  # an item using less than this share of a CPU mostly waits
THREAD_START = 100e-6  # seconds to start one pool thread (measured: ~60-90 µs here)
#: seconds a thread pool adds per item: its item loop (_runner: the item's
#: index, a cancel check, its result) over a bare loop, measured 0.22 µs
ITEM_OVERHEAD = 0.3e-6
#: items shorter than this are not tried on threads: whatever they call is
#: too short to release the GIL for long, and a thread pool's own cost per
#: item would eat what threads could gain
TRIAL_MIN_ITEM = 10e-6
#: items that must finish while both threads of a trial are past their
#: first for that part alone to decide (each end of it may count one off)
STEADY_ITEMS = 8
#: two threads run items at most twice as fast as one: a trial that reads
#: more was held against items that ran slower when probed than they do now
#: (BLAS warming up in a new process read 7.8x; other threads busy then, 27x)
MOST = 2.5
WARM_UP = 3.0  # a thread's first item this many times slower than its others: a warm-up
#: a trial stops early once this many items, finished while both threads were
#: past their first, ran at under LOSING of one thread's speed (see _Shared.take)
STOP_ITEMS = 4
LOSING = 0.7
#: seconds of serial work left after a trial, at most, that the trial's two
#: threads finish themselves when a pool of two threads was chosen (see
#: ``runs_on``)
RUN_ON = 0.1
#: seconds of items each of those threads takes at a time: the last block's
#: imbalance stays small, and the per-item cost of taking items is spread
RUN_ON_BLOCK = 0.5e-3
#: the trial's two threads waited for a CPU (not for the GIL) this share of
#: its wall time between them: other programs held the CPUs, and the reading
#: decides this call only (see ``Trial.starved``)
STARVED = 0.25


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


def describe(speedup: float, threads: int, threaded: float | None, starved: bool) -> str:
    """The plan's words on a trial: its ``speedup``, and the ``threaded``
    projection on ``threads`` threads (None: threads lose)."""
    busy = "other programs held the CPUs meanwhile: a reading for this call only"
    if threaded is None:
        why = busy if starved else "the GIL is held" if speedup > 0.9 else \
            "they compete for the CPUs, or for a lock"
        return f"; on 2 threads at once items ran {speedup:.2f}x as fast as on one ({why})"
    return (f"; releases the GIL (2 threads: {speedup:.2f}x{'; ' + busy if starved else ''}): "
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


class Trial:
    """What running ``len(mine) + len(theirs)`` items on two threads showed."""

    def __init__(self, results: list[tuple[Any, BaseException | None]], wall: float,
                 cpu: float, thread_cpu: float | None = None,
                 marks: list[list[tuple[float, float]]] | None = None,
                 lead: float = 0.0, waited: float | None = None,
                 cut: float | None = None) -> None:
        self.results = results  # (result, exception) per item run, in input order
        self.wall = wall
        self.cpu = cpu  # the process's CPU seconds meanwhile
        self.thread_cpu = thread_cpu  # the two threads' own CPU seconds on the items
        # Per thread: (clock, its CPU clock) as it began, then after each item.
        self.marks = marks or []
        self.lead = lead  # seconds the caller ran alone before the helper began
        self.waited = waited  # the two threads' seconds runnable but off CPU; None: unknown
        self.cut = cut  # the speedup that stopped it early (see _Shared.take); None: it ran all
        self.failed = any(exc is not None for _, exc in results)

    def speedup(self, per_item: float, cpu_bound: bool = True) -> float:
        """Throughput of two threads over one thread's: the items' count at
        ``per_item`` seconds each over the wall time; for CPU-bound items,
        no more than the two threads' own CPU time over the wall time (the
        items of the trial may be shorter than the probe's median: uneven
        work would otherwise look parallel). Measured while both threads
        were past their first item when they can be (``steady``), or at
        the moment it stopped early, losing or not winning (``cut``)."""
        if self.cut is not None:
            return self.cut
        steady = self.steady()
        if steady is not None:
            rate, share = steady
            return min(rate * per_item, share) if cpu_bound else rate * per_item
        # The caller ran alone for ``lead``: about that much of the work (and
        # of the CPU time) was one thread's, and the rest was both threads'.
        lead = min(self.lead, 0.5 * self.wall)
        wall = max(self.wall - lead, 1e-9)
        speedup = max(0.0, len(self.results) * per_item - lead) / wall
        if cpu_bound and self.thread_cpu is not None:
            speedup = min(speedup, max(0.0, self.thread_cpu - lead) / wall)
        return speedup

    def steady(self) -> tuple[float, float] | None:
        """(Items per second, CPUs busy) of both threads together, over the
        window from the moment both had finished their first item to the
        moment the first of them ran out; None when fewer than STEADY_ITEMS
        finished inside it. A thread's first item can pay for a warm-up that
        has nothing to do with threads: a NumPy product ran 2.8 ms instead of
        0.7 ms as OpenBLAS faulted in the new thread's buffers, and slowed
        the other thread's item to 7 ms meanwhile (page faults hold the
        process's memory map), which made a 1.9x gain read 0.89x. Both
        threads are counted over the same window: code that holds the GIL
        runs in turns, and each thread's own bursts would look parallel."""
        if len(self.marks) != 2 or min(len(m) for m in self.marks) < 2:
            return None
        begin = max(marks[1][0] for marks in self.marks)
        end = min(marks[-1][0] for marks in self.marks)
        done, cpu = 0, 0.0
        for marks in self.marks:
            before = [mark for mark in marks if mark[0] <= begin][-1]
            inside = [mark for mark in marks if begin < mark[0] <= end]
            done += len(inside)
            cpu += inside[-1][1] - before[1] if inside else 0.0
        if done < STEADY_ITEMS or end <= begin:
            return None
        return done / (end - begin), cpu / (end - begin)

    def sure(self) -> bool:
        """Whether later calls may rely on it: long enough (TRIAL_SURE; two
        items of a millisecond on each thread are too few), both threads ran
        items, and no other program held the CPUs meanwhile."""
        return self.wall >= TRIAL_SURE and not self.starved() and not self.one_sided()

    def one_sided(self) -> bool:
        """A thread ran none of the items (the helper's start outlasted the
        whole trial): it shows nothing about two at once."""
        return any(len(marks) < 2 for marks in self.marks)

    def starved(self) -> bool:
        """Other programs held the CPUs during the trial: its threads spent
        over STARVED of its time runnable but waiting for a CPU (Linux's
        per-thread run delay), beyond what this process's other threads ran
        meanwhile. Waiting for the GIL is not counted there (a thread waiting
        for a lock sleeps), so code that holds the GIL does not look starved;
        code that releases it, run while another program keeps a core busy,
        reads ~1x and would otherwise be kept as "the GIL is held" for the
        life of the process. The process's own threads (OpenBLAS's, which
        spin: ~8 ms of CPU in a 7 ms trial of NumPy products) are what the
        function meets in threads anyway, and their reading stands."""
        if self.waited is None or self.thread_cpu is None:
            return False
        ours = max(0.0, self.cpu - self.thread_cpu)  # this process's other threads
        return self.waited - ours > STARVED * self.wall

    def warmed_up(self) -> bool:
        """A thread's first item took over WARM_UP times the median of the
        items after each thread's first: a warm-up (a new thread's first
        NumPy product took ~8 ms instead of ~0.8 ms here) that may have left
        no steady part. The items are shared, so a thread held up by its
        first item may have run no other."""
        later = sorted(after[0] - before[0] for marks in self.marks
                       for before, after in itertools.pairwise(marks[1:]))
        if len(later) < 2:
            return False
        typical = later[len(later) // 2]
        return any(len(marks) >= 2 and marks[1][0] - marks[0][0] > WARM_UP * typical
                   for marks in self.marks)


class _Shared:
    """The trial's items, taken one at a time by whichever thread is free:
    the two end together whatever the items cost, and a helper that starts
    late (a new thread, or one running ``ready`` first) leaves its part to the caller
    instead of keeping the caller waiting at the end. Items are taken in
    order, so those run are always the first ``taken``."""

    def __init__(self, items: list[Any], per_item: float | None = None,
                 wins: float = math.inf, block: int = 1) -> None:
        self.items = items
        self.block = block  # items taken at a time (more than 1: untimed, see run_trial)
        self.results: list[tuple[Any, BaseException | None]] = [(None, None)] * len(items)
        self.marks: list[list[tuple[float, float]]] = []  # see Trial
        self.stopped = False  # the caller was interrupted: take nothing more
        self.waited: float | None = 0.0  # run delay, both threads (see Trial.starved)
        self.taken = 0
        self.cut: float | None = None  # see take
        self._per_item = per_item  # one thread's seconds per item (the probe's); None: no cut
        self._wins = wins  # a speedup threads need to be chosen (see take)
        self._warm = 0  # threads past their first item
        self._began = 0.0  # when the second of them got there
        self._after = 0  # items finished since
        self._lock = _thread.allocate_lock()

    def take(self, done: int) -> int | None:
        """The index of the next ``block`` items, for a thread that has finished
        ``done`` blocks; None when there is none left, or the trial has shown enough:
        the items finished since both threads were past their first (a
        warm-up, see ``Trial.steady``) number STOP_ITEMS and ran at under
        LOSING of one thread's speed, or STEADY_ITEMS (as many as a steady
        reading needs) and ran at under ``wins``. The trial then stops with
        that reading (``cut``) rather than run the rest at a loss: a NumPy
        product under a multi-threaded OpenBLAS read 0.2-1.0x on two threads,
        and a trial of 30 of them cost up to ~25 ms of a 23 ms loop."""
        with self._lock:
            if done == 1:
                self._warm += 1
                if self._warm == 2:
                    self._began = time.perf_counter()
            elif done > 1 and self._warm == 2:
                self._after += 1
            if self.stopped or self.taken >= len(self.items) or self.cut is not None:
                return None
            if self._per_item is not None and self._after >= STOP_ITEMS:
                speedup = self._after * self._per_item / (time.perf_counter() - self._began)
                if speedup < LOSING or (self._after >= STEADY_ITEMS and speedup < self._wins):
                    self.cut = speedup
                    return None
            start, self.taken = self.taken, min(self.taken + self.block, len(self.items))
            return start

    def run(self, call: Callable[[Any], Any], catch: type[BaseException]) -> None:
        """Run items here until none is left; this thread's marks go to ``marks``."""
        clock, cpu_clock, results, items = time.perf_counter, time.thread_time, \
            self.results, self.items
        block, count = self.block, len(items)
        delay = run_delay()
        mine = [(clock(), cpu_clock())]
        try:
            while (start := self.take(len(mine) - 1)) is not None:
                for index in (start,) if block == 1 else range(start, min(start + block, count)):
                    try:
                        results[index] = (call(items[index]), None)
                    except catch as exc:  # settled (or re-raised) by the caller, in order
                        results[index] = (None, exc)
                mine.append((clock(), cpu_clock()))
        except BaseException:
            self.stopped = True
            raise
        finally:
            self.marks.append(mine)
            after = run_delay()
            with self._lock:
                if delay is None or after is None or self.waited is None:
                    self.waited = None
                else:
                    self.waited += after - delay


def run_trial(call: Callable[[Any], Any], items: list[Any],
              ready: Callable[[], object] | None = None,
              per_item: float | None = None, wins: float = math.inf, block: int = 1) -> Trial:
    """Run ``items`` here and on a helper thread (from ``_threadpool``, which
    keeps it for the thread backend) at once. The helper first calls
    ``ready``, if given: whatever it must do before its first item (it
    loaded the thread backend, until the engine did: there, beside the
    caller's items, that held the helper's first item back by ~2-3 ms).
    An exception the helper met is returned in its item's place, like any
    other; KeyboardInterrupt in the caller stops both. With ``per_item``
    (one thread's seconds per item), a trial that is losing, or not
    reaching the speedup ``wins``, stops early (see ``_Shared.take``): its
    ``results`` are then those of the first items only. With ``block``, each
    thread takes that many items at a time (for a run that is not a trial:
    one at a time, the shared loop costs ~1.3 µs per item, and 3000 sha256
    of 32 KB ran 1.06x a thread pool's time)."""
    shared = _Shared(items, per_item, wins, block)
    finished: SimpleQueue[None] = SimpleQueue()
    helper = take(1)[0]
    clock, cpu_clock = time.perf_counter, time.process_time
    began, cpu_began = clock(), cpu_clock()

    def their_part() -> None:
        try:
            if ready is not None:
                with contextlib.suppress(Exception):  # the pool loads it again, and says why
                    ready()
            shared.run(call, BaseException)
        finally:
            finished.put(None)  # the caller waits for it, whatever happened

    helper.run(their_part)
    try:
        shared.run(call, Exception)
    finally:
        finished.get()
    wall = clock() - began
    marks = shared.marks
    thread_cpu = sum(thread[-1][1] - thread[0][1] for thread in marks)
    # The helper's late start (thread start, ``ready``) ran the caller alone.
    lead = max(thread[0][0] for thread in marks) - began if len(marks) == 2 else 0.0
    return Trial(shared.results[:shared.taken], wall, cpu_clock() - cpu_began, thread_cpu,
                 marks, lead, shared.waited, shared.cut)


def kept_as(cut: bool, history: Mapping[str, float]) -> str:
    """Under which name a trial long enough to keep (``Trial.sure``) goes
    into the function's history: "trial", which later calls follow without
    trying again, or "cut", which they do not. A trial that stopped early
    read a handful of items, which a stall of the host can spoil (warm, a
    NumPy product that gains ~2x on two threads read 1.06x, and the function
    stayed serial for good): it is kept once a second call's trial has
    stopped early too."""
    return "trial" if not cut or "cut" in history else "cut"
