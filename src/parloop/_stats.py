"""What one call measured, for its :class:`~parloop.Plan`: its slowest
items, each worker's busy time, and the seconds per item the next call of
the same function starts from."""

from __future__ import annotations

import heapq
import time
from typing import Any

from . import _costs
from ._plan import Plan
from .backends.base import Outcome

__all__ = ["RunStats"]

SLOWEST = 5  # how many of the slowest items a plan reports


class RunStats:
    def __init__(self) -> None:
        self.started = time.perf_counter()
        self._slowest: list[tuple[float, int]] = []  # a min-heap of (seconds, index)
        self.worker_seconds: dict[str, float] = {}
        self.per_item: float | None = None  # as the pool's workers measured it
        self.caller_per_item: float | None = None  # as the caller's probe measured it
        self.probed = False  # caller_per_item was measured in this call (not recalled)
        #: (workers' seconds per item, the caller's) over the same stretch of
        #: items, both sharing the CPUs (_flow.Flow.proven), when measured
        self.proven: tuple[float, float] | None = None
        #: the caller ran items while the pool's workers did (a head start, a
        #: proving flow): with as many workers as CPUs, they waited for a CPU
        self.beside = False
        self.worker_busy = 0.0  # of outcomes that say their CPU time:
        self.worker_cpu = 0.0  # ... their seconds, and their CPU seconds

    def note_item(self, seconds: float, index: int) -> None:
        if len(self._slowest) < SLOWEST:
            heapq.heappush(self._slowest, (seconds, index))
        elif seconds > self._slowest[0][0]:
            heapq.heapreplace(self._slowest, (seconds, index))

    def account(self, outcome: Outcome) -> None:
        """What a worker reported with ``outcome``."""
        self.note_item(*outcome.slowest)
        if outcome.worker:
            seconds = self.worker_seconds
            seconds[outcome.worker] = seconds.get(outcome.worker, 0.0) + outcome.busy
        if outcome.cpu > 0:
            self.worker_busy += outcome.busy
            self.worker_cpu += outcome.cpu

    def uncontended(self, per_item: float, workers: int) -> float:
        """The workers' seconds per item, less the time they waited for a CPU
        while the caller ran items beside them: their CPU time, when that is
        less, but never less than the caller's share could have cost them.
        Remembered that way, a measurement made beside the caller does not
        make the pool look slower to the next call (or run) than it is.
        Items that mostly wait (under WAITING of a CPU: sleeps, I/O) are
        taken as measured: their CPU share says how little they compute,
        not how long they waited for a CPU (10 ms sleeps read 6.7 ms)."""
        if not self.beside or self.worker_busy <= 0 or self.worker_cpu <= 0:
            return per_item
        from ._cpu import cpu_count
        from ._threads import WAITING

        share = min(1.0, self.worker_cpu / self.worker_busy)
        if share < WAITING:
            return per_item
        return per_item * max(min(1.0, cpu_count() / (workers + 1)), share)

    def finish(self, plan: Plan, items: int, fn: Any) -> None:
        """Fill in what happened, and remember ``fn``'s cost per item."""
        plan.items = items
        plan.wall_seconds = time.perf_counter() - self.started
        plan.worker_seconds = self.worker_seconds
        if plan.backend == "serial":
            plan.workers = 1
            plan.caller_seconds = plan.wall_seconds
            if items:
                plan.per_item = plan.wall_seconds / items
            if plan.per_item is not None:
                _costs.remember(fn, plan.per_item, "serial")
        else:
            if self.per_item is not None:
                plan.per_item = self.per_item
                _costs.remember(fn, self.uncontended(self.per_item, plan.workers), plan.backend)
            if self.caller_per_item is not None:
                _costs.remember(fn, self.caller_per_item, "serial")
            if self.proven is not None and plan.backend == "process":
                # How much slower a worker is, from items next to each other
                # run at the same time; the probe's first items against all
                # of the workers' read 4-7x for items whose cost rises.
                workers, caller = self.proven
                _costs.remember(fn, workers / caller, "ratio")
        plan.slowest = sorted(((i, t) for t, i in self._slowest if i >= 0),
                              key=lambda pair: -pair[1])
