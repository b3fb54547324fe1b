"""Deciding how to run a call: serially in the caller, or on a pool, and in
what chunks. Every decision is a :class:`Plan` whose ``reason`` gives the
numbers it rests on.

``backend="auto"`` is a measured cost model, not a threshold on item counts:

1. Static facts first. One usable CPU, being inside a worker already, or a
   ``timeout=`` (only a process can be killed) decide at once.
2. Otherwise the loop starts in the caller, timing each item, until the
   numbers decide or the probe budget runs out (2 ms, or 2% of the projected
   serial time, whichever is larger). Nothing probed is ever redone.
3. Projections for the remaining ``m`` items, with per-item cost ``c``::

       serial   = m * c
       parallel = start + m * max((c + w) / workers, p) + latency

   ``start`` is the pool's start-up (0 when a warm pool waits), ``p`` the
   caller's per-item cost of pickling an item and unpickling its result, and
   ``w`` the same on the worker side. The faster projection wins.
4. For an input of unknown length (a generator) ``m`` is unknown. When a pool
   would pay per item, the caller keeps going serially until it has spent
   what the pool costs to start, then switches: never worse than twice the
   better choice, and a short generator never pays for a pool.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from . import _costs, _native, _threads, _trial
from ._costs import PoolCost
from ._plan import Verdict, format_seconds
from ._projections import LATENCY, MARGIN, projections, threads_projection, threads_win, trial_cannot_pay

__all__ = ["Probe", "Verdict"]

PROBE_FLOOR = 0.002  # seconds the probe may always take
PROBE_SHARE = 0.02  # ... or this share of the projected serial time
CLEAR_WIN = 1.5  # stop probing early once one side wins by this factor
HEAVY_ITEM = 0.001  # seconds: an item this slow is measured well enough alone
THREADS_GAIN = 1.2  # a trial speedup (2 threads over 1) below this: the GIL is held
#: seconds: items this long go to processes without a thread trial (two of them
#: would cost more than threads could save; see _headstart), on later calls too
NO_TRIAL_ITEM = 0.1
#: items keeping this share of the CPUs busy in the caller (BLAS) are not tried on threads
BUSY_CORES = 0.75
CAP_AFTER = 16  # items that must be left for some to run with BLAS capped (see wants_cap)
CAP_WORTH = 0.02  # ... and seconds of work


class Probe:
    """Times the first items run in the caller and decides when it has seen enough.

    ``pool`` is called at most once, and only when the numbers say a pool
    might pay; ``clock`` is replaceable so tests can feed synthetic costs."""

    def __init__(self, total: int | None, pool: Callable[[], PoolCost],
                 clock: Callable[[], float] = time.perf_counter, *, threads: bool = False,
                 history: dict[str, float] | None = None) -> None:
        self.total = total
        self._pool_cost = pool
        self._pool: PoolCost | None = None
        self.clock = clock
        self.times: list[float] = []
        self.cpu: list[float] = []  # CPU seconds per item, BLAS threads too (_native.item_clock)
        self.thread_cpu: list[float] = []  # the calling thread's own CPU seconds per item
        self.threads = threads  # threads may be tried and chosen (thread_safe=True)
        history = history or {}
        self.trial_speedup: float | None = history.get("trial")  # 2 threads over 1
        self.trial_only = ""  # why this call's trial holds for it only, if it does
        self.trial_busy = 0.0  # CPUs its two threads used or waited for, over its wall time
        self.watched: tuple[int, float, float] | None = None  # see reconsider
        self.stale: list[float] = []  # trials' rates over more than two threads can (MOST)
        self.no_trial = ""  # why a thread trial was left out, when native threads were why
        self.cap: _native.CapCheck | None = None  # items run with BLAS capped, once begun
        if (blas := history.get("blas")) is not None:  # an earlier call's check
            self.cap = _native.CapCheck.known(free=blas == 0.0)
        # How much slower an item ran in a worker than in the caller, as the
        # last call that measured both saw it (a ratio: items vary by call).
        self.worker_ratio: float | None = history.get("ratio")
        # The latest seconds per item on each side, from different calls (a
        # call with backend="process" measures only the workers' side).
        self._sides = (history.get("process"), history.get("serial"))
        self.moved = _costs.Transfer()  # of the first item and its result
        self.started = clock()

    @property
    def pool(self) -> PoolCost:
        if self._pool is None:
            self._pool = self._pool_cost()
        return self._pool

    @property
    def transfer(self) -> float:
        """Seconds to send one item and its result (both ways, both sides)."""
        return self.moved.seconds

    def per_item(self) -> float:
        """The median item's seconds (after the first, which often pays for
        warm-up), less what reading the clock around it costs."""
        if len(self.times) == 1:
            median = self.times[0]
        else:
            rest = sorted(self.times[1:])
            median = rest[len(rest) // 2]
        return max(median - _costs.clock_cost(self.clock), median / 2)

    def cores_used(self) -> float:
        """CPUs the items kept busy in the caller, over the whole probe (more
        than 1: BLAS or other native threads), never more than the pool's.
        Only with a library loaded that runs native thread pools: otherwise
        CPU time other threads spend meanwhile (idle BLAS threads spin for
        a while after work) would count against a pure Python function."""
        if not self.cpu or not _native.loaded() or (self.cap is not None and self.cap.free):
            return 1.0
        wall = sum(self.times)
        used = sum(self.cpu) / wall if wall > 0 else 1.0
        return min(max(1.0, used), float(max(1, self.pool.workers)))

    def add(self, seconds: float, cpu: float, thread_cpu: float, capped: bool = False) -> None:
        """An item's seconds and CPU seconds (all threads', its own); one run
        with BLAS capped counts only for the cap's check."""
        if not capped:
            self.times.append(seconds)
            self.cpu.append(cpu)
            self.thread_cpu.append(thread_cpu)
        if self.cap is not None:
            self.cap.note(seconds, capped)

    def wants_cap(self) -> _native.CapCheck | None:
        """The check, when the next item should run with BLAS capped at one
        thread (see ``_native.CapCheck``): the items so far kept more than one CPU
        busy, which BLAS threads spinning idle can fake, and enough work is
        left that items run up to twice as long (when BLAS does use its
        threads) are a small part of it, and that a pool could matter
        (finding the BLAS's calls costs ~3 ms the first time). Read after
        2, 4, 8... items, as the readings and the median take O(items)."""
        if self.cap is not None:
            return self.cap if self.cap.next_capped() else None
        if not self._cap_due():
            return None
        self.cap = _native.CapCheck(self.times[-1], self.cores_used())
        return self.cap

    def _cap_due(self, cost: float | None = None) -> bool:
        """Whether the items so far, ``cost`` seconds each (None: their
        median), call for the BLAS check (see ``wants_cap``); asked after 2,
        4, 8... items only, as the readings and the median take O(items):
        a probe of µs items stays O(n)."""
        seen = len(self.times)
        if seen < 2 or seen & (seen - 1) or not _native.loaded():
            return False
        if (cost := self.per_item() if cost is None else cost) < _threads.TRIAL_MIN_ITEM:
            return False
        if self.total is not None and (self.total - seen < CAP_AFTER
                                       or (self.total - seen) * cost < CAP_WORTH):
            return False
        return self.cores_used() >= _native.BUSY

    def cpu_share(self) -> float:
        """The calling thread's CPU seconds per wall second of the median item (under
        0.5: it mostly waits); not the process's, which idle BLAS threads inflate."""
        own = self.thread_cpu or self.cpu
        shares = sorted(c / t for c, t in zip(own, self.times, strict=False) if t > 0)
        return shares[len(shares) // 2] if shares else 1.0

    def pool_item_cost(self, cost: float) -> float:
        """One item's seconds in a worker: the caller's, times the CPUs it
        used here (a worker caps BLAS at its share of the CPUs), or times
        how much slower workers ran the function's items before, if more."""
        return cost * max(self.cores_used(), self.worker_ratio or self._side_ratio(cost))

    def _side_ratio(self, cost: float) -> float:
        """Workers over caller from the two sides' latest calls, when the caller's
        were items within 2x of ``cost`` (0.05 s items over a tiny call's read 60x)."""
        workers, caller = self._sides
        if workers and caller and 0.5 <= cost / caller <= 2.0:
            return workers / caller
        return 1.0

    def trial_size(self, seen: int) -> int:
        """How many items to run on two threads at once next (0: none): only
        when threads are allowed, not known yet, and the rest is big enough
        for any pool to matter."""
        if not self.threads or self.trial_speedup is not None or self.total is None:
            return 0
        remaining, cost = self.total - seen, self.per_item()
        if cost < _threads.TRIAL_MIN_ITEM or self._too_small(remaining, cost) \
                or self.pool.workers < 2:
            return 0
        cpus = self.cores_used()
        if cpus >= BUSY_CORES * self.pool.workers:  # BLAS: two at once would only compete
            self.no_trial = _native.describe(cpus)
            return 0
        if cpus >= _native.BUSY and remaining * cost / 2 < _native.STALL \
                and (blas := _native.blas_threads()) is not None:
            self.no_trial = _native.describe(cpus, blas)
            return 0
        # Long enough to be kept for later calls (TRIAL_KEPT per thread) when
        # the rest is big enough, else a short one that decides this call:
        # a trial's items are not lost time when threads win, as they run
        # two at once, and a kept one spares every later call its probe.
        for seconds in (_threads.TRIAL_KEPT, _threads.TRIAL_SECONDS):
            size = 2 * max(1, math.ceil(seconds / cost))
            if 2 * size <= remaining:
                return 0 if trial_cannot_pay(size, cost, self.cpu_share(), remaining,
                                             self.moved.sendable, self.pool) else size
        return 0

    def note_trial(self, trial: _trial.Trial) -> None:
        """A trial's outcome; one in which an item raised says nothing for threads."""
        cost = self.per_item()
        # CPU-bound if either reading says so, the trial's counting the time
        # its threads were runnable but off a CPU (Linux's run delay): items
        # that waited for a CPU (other programs, BLAS threads spinning beside
        # them) read as waiting; a pure Python item beside busy threads read
        # 0.18 of a CPU, and an unbounded trial chose 6 to 32 threads for it.
        wanted = (trial.thread_cpu or 0.0) + (trial.waited or 0.0)
        self.trial_busy = wanted / trial.wall if trial.wall > 0 else 0.0
        cpu_bound = self.cpu_share() >= _threads.WAITING or self.trial_busy >= _threads.ONE_CPU
        speedup = 1.0 if trial.failed else min(2.0, trial.speedup(cost, cpu_bound))
        self.trial_only = trial.only()
        # Items per second over the probe's: more than two threads can do
        # (before the CPU time's bound) means the probe's items were slower;
        # they are probed again (rebase), once. A second such reading, of
        # items timed just now, is of items that ran slower alone than two at
        # once: 10 ms sleeps beside two busy processes took 13-19 ms alone (a
        # wake-up waits for a CPU) and 10 ms in the trial, and read 2.6-3.1x
        # twice. Two threads' gain is then read as two threads' most.
        if not trial.failed and not self.stale \
                and (rate := trial.speedup(cost, False)) > _threads.MOST:
            self.stale.append(rate)
            self.no_trial = f"; the thread trial after it ran {rate:.1f}x: no reading of threads"
        else:
            self.trial_speedup = speedup

    def reconsider(self, seen: int, cost: float, watched: tuple[int, float, float]) -> Verdict:
        """The verdict after ``seen`` items, with the rest costing ``cost``
        each: ``watched`` says the last (count) run here took (seconds) each,
        up from (seconds) (see _serial.SerialLoop.watch)."""
        scale = cost / max(self.per_item(), 1e-12)
        for readings in (self.times, self.cpu, self.thread_cpu):
            readings[:] = [seconds * scale for seconds in readings]
        self.watched = watched
        return self.verdict(seen)

    def rebase(self) -> None:
        """Forget the items timed so far (a trial showed they ran slower than
        the items now do), to time the next ones afresh."""
        self.times, self.cpu, self.thread_cpu = [], [], []
        self.started = self.clock()

    @staticmethod
    def _too_small(remaining: int, cost: float) -> bool:
        """Even a warm pool's fixed cost is more than running the rest here."""
        return remaining * cost <= LATENCY * MARGIN

    def _throughput(self) -> float:
        """Seconds per item of a busy pool: the workers compute (and unpickle
        and pickle) in parallel; the caller's half of the transfer does not."""
        transfer = self.transfer
        return max((self.per_item() + transfer / 2) / self.pool.workers, transfer / 2)

    def done(self, seen: int) -> bool:
        """After ``seen`` items: is the decision clear, or the budget spent?"""
        elapsed = self.clock() - self.started
        if self.total is None:
            return elapsed >= PROBE_FLOOR
        remaining = self.total - seen
        if remaining <= 0:
            return True
        cost = self.per_item()
        if self._cap_due(cost) if self.cap is None else self.cap.free is None:
            # Items with BLAS capped, due or under way: a few more. Items
            # after a NumPy product read 2 CPUs each (OpenBLAS's threads
            # spin), and a probe done before the check kept pure Python serial.
            return False
        # One item may carry first-call costs: a clear win needs three, unless
        # items are heavy enough that waiting for more costs real time.
        if seen < 3 and cost < HEAVY_ITEM:
            return elapsed >= PROBE_FLOOR
        if self._too_small(remaining, cost) or self.pool.workers == 1:
            return True
        if self.trial_size(seen):
            # Threads are tried next, and the verdict measures the transfer
            # only if they do not win (a 1 MB item's two round trips took
            # ~3 ms of a 50 ms call that threads won).
            return True
        worker_cost = self.pool_item_cost(cost)
        serial, parallel = projections(remaining, cost, 0.0, self.pool, worker_cost)
        if parallel > CLEAR_WIN * serial:  # a pool loses clearly, even moving items for free
            return True
        serial, parallel = projections(remaining, cost, self.transfer, self.pool, worker_cost)
        if serial > CLEAR_WIN * parallel or parallel > CLEAR_WIN * serial:
            return True
        return elapsed >= max(PROBE_FLOOR, PROBE_SHARE * (serial + elapsed))

    def parallel(self, seen: int) -> bool:
        """Whether the verdict after ``seen`` items would be a pool."""
        return self.verdict(seen).serial_more is not None

    def verdict(self, seen: int) -> Verdict:
        cost, stale, watched = self.per_item(), self.stale[:1], self.watched  # as they are now

        def probed() -> str:
            capped = self.cap.describe() if self.cap is not None else ""
            again = "".join(f" (timed again after a thread trial ran {rate:.1f}x the first items "
                            f"per second, more than two threads can)" for rate in stale)
            if watched is not None:
                ran, was, now = watched
                return (f"ran {seen} items here, serially as planned; the last {ran} took "
                        f"~{format_seconds(now)} each, up from ~{format_seconds(was)}"
                        + (f", and rising: ~{format_seconds(cost)} each ahead" if cost > now else ""))
            return f"probed {seen} item{'s' * (seen != 1)} of ~{format_seconds(cost)}{again}{capped}"
        if self.total is not None:
            remaining = self.total - seen
            if remaining <= 0:
                return Verdict(None, lambda: f"all {seen} items ran while probing "
                                             f"(~{format_seconds(cost)} each)", cost)
            if self._too_small(remaining, cost):
                return Verdict(None, lambda: (
                    f"{probed()}; {remaining} left: serial ≈ "
                    f"{format_seconds(remaining * cost)}, less than any pool costs "
                    f"(≥ {format_seconds(LATENCY)} even warm, before pool start)"), cost)
            pool = self.pool
            if pool.workers == 1:
                return Verdict(None, lambda: f"1 worker ({pool.why_workers})", cost)
            worker_cost = self.pool_item_cost(cost)
            threads, threaded = self._threaded(remaining, cost)
            serial, free = projections(remaining, cost, 0.0, pool, worker_cost)

            def before_moving() -> str:
                return (f"{probed()}; {remaining} left: serial ≈ {format_seconds(serial)}, "
                        f"{pool.workers} workers ≥ {format_seconds(free)} (pool start "
                        f"~{format_seconds(pool.startup)}, before moving any item)"
                        f"{self._threads_text(threads, threaded)}")
            # Threads win even against a pool that moves items for free, or
            # such a pool loses to serial: the transfer need not be measured
            # (a 720 KB array's pickling took ~3 ms of a 45 ms call).
            if threaded is not None and threads_win(threaded, serial, free):
                return Verdict(0, before_moving, cost, "thread", threads)
            if free * MARGIN >= serial:
                return Verdict(None, before_moving, cost)
            transfer = self.transfer
            serial, parallel = projections(remaining, cost, transfer, pool, worker_cost)

            def numbers() -> str:
                slower = (f", ~{format_seconds(worker_cost)}/item in a worker"
                          if worker_cost > cost * 1.05 else "")
                return (f"{probed()}; {remaining} left: serial ≈ {format_seconds(serial)}, "
                        f"{pool.workers} workers ≈ {format_seconds(parallel)} "
                        f"(pool start ~{format_seconds(pool.startup)}"
                        f"{', in the background' if pool.overlap else ''}, "
                        f"transfer ~{format_seconds(transfer)}/item{slower})"
                        f"{self._threads_text(threads, threaded)}")
            if threaded is not None and threads_win(threaded, serial, parallel):
                return Verdict(0, numbers, cost, "thread", threads)
            return Verdict(0 if parallel * MARGIN < serial else None, numbers, cost)
        return self._unknown_length(probed, cost)

    def _threaded(self, remaining: int, cost: float) -> tuple[int, float | None]:
        """(threads, projected seconds) for the rest on a thread pool; None
        when threads are not allowed or the trial showed no gain."""
        speedup = self.trial_speedup
        if not self.threads or speedup is None or speedup < THREADS_GAIN:
            return 0, None
        share = max(self.cpu_share(), self.trial_busy / 2)  # the trial's: two threads'
        return threads_projection(remaining, cost, speedup, self.pool.workers, share)

    def _threads_text(self, threads: int, threaded: float | None) -> str:
        if not self.threads or self.trial_speedup is None:
            return self.no_trial if self.threads else ""
        return _threads.describe(self.trial_speedup, threads, threaded, self.trial_only)

    def _unknown_length(self, probed: Callable[[], str], cost: float) -> Verdict:
        """Compare throughputs, then rent before buying."""
        if self.transfer / 2 * MARGIN >= cost:  # the caller's share alone is slower
            return Verdict(None, lambda: f"{probed()} of unknown count: moving an item to a "
                                         f"worker costs more than running it here", cost)
        pool = self.pool
        if pool.workers == 1:
            return Verdict(None, lambda: f"1 worker ({pool.why_workers})", cost)
        per_item_parallel = self._throughput()
        if per_item_parallel * MARGIN >= cost:
            return Verdict(None, lambda: f"{probed()} of unknown count: a pool would not be "
                                         f"faster per item (~{format_seconds(per_item_parallel)})",
                           cost)
        if pool.overlap:  # the caller keeps running items while the pool starts
            return Verdict(0, lambda: (
                f"{probed()} of unknown count: a pool is faster per item "
                f"(~{format_seconds(per_item_parallel)}); started it in the background "
                f"(~{format_seconds(pool.startup)}) and kept running items here meanwhile"), cost)
        more = math.ceil(pool.startup / cost) if cost > 0 else 0
        return Verdict(more, lambda: (
            f"{probed()} of unknown count: a pool is faster per item "
            f"(~{format_seconds(per_item_parallel)}); switched after running "
            f"~{format_seconds(pool.startup)} of items serially (the pool's start-up cost)"), cost)
