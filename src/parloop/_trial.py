"""Two of a function's items at once, on the caller's thread and a helper,
measured: what ``_threads`` turns into a choice of threads.

The two threads take the trial's items one at a time from a shared list, so
they end together whatever the items cost, and each marks the clock (and its
own CPU clock) as it begins and after each item. From those marks a
``Trial`` reads two threads' items per second over one thread's (the
probe's): over the part where both threads were past their first item when
there is one (``steady``), and says when its reading holds for this call
only (other programs held the CPUs, or the helper started too late).
"""

from __future__ import annotations

import _thread
import contextlib
import itertools
import math
import time
from collections.abc import Callable
from typing import Any

from ._native import run_delay
from ._threadpool import SimpleQueue, take

__all__ = ["LOSING", "STARVED", "STEADY_ITEMS", "STOP_ITEMS", "TOGETHER", "TRIAL_SURE", "Trial",
           "run_trial"]

TRIAL_SURE = 0.005  # a trial this long is kept in the history; a shorter one decides one call
#: items that must finish while both threads of a trial are past their
#: first for that part alone to decide (each end of it may count one off)
STEADY_ITEMS = 8
WARM_UP = 3.0  # a thread's first item this many times slower than its others: a warm-up
#: a trial stops early once this many items, finished while both threads were
#: past their first, ran at under LOSING of one thread's speed (see _Shared.take)
STOP_ITEMS = 4
LOSING = 0.7
#: the trial's two threads waited for a CPU (not for the GIL) this share of
#: its wall time between them: other programs held the CPUs, and the reading
#: decides this call only (see ``Trial.starved``)
STARVED = 0.25
#: a trial too short for a steady part (see ``Trial.steady``) whose two
#: threads ran items at once for less than this share of it reads mostly one
#: thread's items: it is run again (see ``Trial.one_sided``)
TOGETHER = 0.6


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
        self.again = False  # it follows a one-sided trial of the same call (see one_sided)

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
        items of a millisecond on each thread are too few), and not a
        reading for this call only (see ``only``)."""
        return self.wall >= TRIAL_SURE and not self.only()

    def only(self) -> str:
        """Why its reading holds for this call only, in a plan's words ("":
        it does not): other programs held the CPUs meanwhile (``starved``),
        or its two threads ran items at once for too little of it
        (``one_sided``)."""
        if self.starved():
            return "other programs held the CPUs meanwhile"
        if self.one_sided():
            return "its two threads ran at once for part of it"
        return ""

    def one_sided(self) -> bool:
        """The two threads ran items at once for under TOGETHER of the trial
        (and no steady part or early stop says more): it shows little about
        two at once. The helper's start outlasted the whole trial (it ran
        none), or most of an item: a thread start held up ~8 ms on a loaded
        host read 10 ms sleeps at 0.82x, one thread's speed and the other's
        tail, and sent them to processes. Never a trial run ``again``: a
        helper late twice, on a thread that was up by then, waited for the
        GIL (a caller running Python holds it up to the switch interval, and
        code that holds it runs in turns: pure Python read "for this call
        only" twice, and every later call probed again): that is the reading
        (a wait for a CPU instead is caught by ``starved``)."""
        if self.again:
            return False
        if any(len(marks) < 2 for marks in self.marks):
            return True
        if len(self.marks) != 2 or self.cut is not None or self.steady() is not None:
            return False
        together = min(marks[-1][0] for marks in self.marks) - \
            max(marks[0][0] for marks in self.marks)
        return together < TOGETHER * self.wall

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
    marks = shared.marks
    # Up to the last item's end: the caller's wake-up after the helper's
    # signal is no part of the items' time (a loaded host added 5 ms to a
    # 10 ms trial, and a 2x gain read 1.3x).
    wall = max((thread[-1][0] for thread in marks), default=clock()) - began
    thread_cpu = sum(thread[-1][1] - thread[0][1] for thread in marks)
    # The helper's late start (thread start, ``ready``) ran the caller alone.
    lead = max(thread[0][0] for thread in marks) - began if len(marks) == 2 else 0.0
    return Trial(shared.results[:shared.taken], wall, cpu_clock() - cpu_began, thread_cpu,
                 marks, lead, shared.waited, shared.cut)
