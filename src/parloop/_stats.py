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
                _costs.remember(fn, self.per_item, plan.backend)
            if self.caller_per_item is not None:
                _costs.remember(fn, self.caller_per_item, "serial")
                if self.per_item is not None and plan.backend == "process" and self.probed:
                    # Both sides measured this call's items: how much slower a worker is.
                    _costs.remember(fn, self.per_item / self.caller_per_item, "ratio")
        plan.slowest = sorted(((i, t) for t, i in self._slowest if i >= 0),
                              key=lambda pair: -pair[1])
