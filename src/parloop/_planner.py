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
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import _costs, _cpu, _role
from ._options import Options
from ._plan import Reason, format_seconds

__all__ = ["ChunkSizer", "PoolCost", "Probe", "Verdict", "from_history", "pool_cost",
           "projections", "static_choice"]

PROBE_FLOOR = 0.002  # seconds the probe may always take
PROBE_SHARE = 0.02  # ... or this share of the projected serial time
CLEAR_WIN = 1.5  # stop probing early once one side wins by this factor
CHUNK_SECONDS = 0.02  # target duration of one chunk: amortises a ~0.1 ms round trip
MIN_CHUNK_SECONDS = 0.002  # the shortest chunk worth a round trip, even at the tail
LATENCY = 0.002  # fixed cost of a parallel run: wake-ups, first round trip, shutdown
MARGIN = 1.2  # a pool must be projected this much faster: estimates err toward the pool
HEAVY_ITEM = 0.001  # seconds: an item this slow is measured well enough alone


@dataclass
class PoolCost:
    """What a pool would cost this call. Finding out reads the CPU limits and
    the pool registry (~0.5 ms the first time), so the probe asks only once
    the work is big enough that a pool might win."""

    workers: int
    startup: float  # seconds to start it; 0 when a warm pool waits
    why_workers: str = ""  # where the worker count came from, when it is 1
    #: the pool starts in the background (forkserver, spawn) while the caller
    #: goes on running items, so its start-up is not time lost
    overlap: bool = False


def pool_cost(options: Options, workers: int, warm: bool, server_coming: bool = False) -> PoolCost:
    """What a process pool would cost a call (``warm``: one waits already;
    ``server_coming``: a head start is starting the fork server)."""
    startup, overlap = 0.0, False
    if not warm:
        method = options.start_method or _cpu.planning_start_method()
        startup = _costs.startup_estimate(method, workers, server_coming)
        overlap = method != "fork"  # only a pool that does not fork the caller
    return PoolCost(workers, startup, options.worker_source() if workers == 1 else "", overlap)


class Verdict:
    """The probe's conclusion: go parallel after ``serial_more`` more items
    (None: stay serial to the end), and why (formatted when first read)."""

    def __init__(self, serial_more: int | None, reason: str | Callable[[], str],
                 per_item: float) -> None:
        self.serial_more = serial_more
        self.reason = Reason(reason)
        self.per_item = per_item


class Probe:
    """Times the first items run in the caller and decides when it has seen enough.

    ``pool`` is called at most once, and only when the numbers say a pool
    might pay; ``clock`` is replaceable so tests can feed synthetic costs."""

    def __init__(self, total: int | None, pool: Callable[[], PoolCost],
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.total = total
        self._pool_cost = pool
        self._pool: PoolCost | None = None
        self.clock = clock
        self.times: list[float] = []
        self._first: tuple[Any, Any] | None = None  # (item, result), kept to measure transfer
        self._transfer: tuple[float, int] | None = None
        self.unsendable: BaseException | None = None
        self.started = clock()

    @property
    def pool(self) -> PoolCost:
        if self._pool is None:
            self._pool = self._pool_cost()
        return self._pool

    def keep_first(self, item: Any, result: Any) -> None:
        """The first item and its result: their transfer cost is measured if it matters."""
        self._first = (item, result)

    @property
    def transfer(self) -> float:
        """Seconds to send one item and its result (both ways, both sides)."""
        return self._measure()[0]

    @property
    def transfer_bytes(self) -> int:
        return self._measure()[1]

    def _measure(self) -> tuple[float, int]:
        if self._transfer is None:
            self._transfer = (0.0, 0)
            if self._first is not None:
                item, result = self._first
                self._first = None
                try:
                    # The least of three: one round trip of a small value is
                    # a few hundred ns, and a single reading is often double.
                    seconds_in, size_in = min(_costs.transfer_seconds(item) for _ in range(3))
                    seconds_out, size_out = min(_costs.transfer_seconds(result) for _ in range(3))
                    self._transfer = (seconds_in + seconds_out + _costs.ITEM_OVERHEAD,
                                      size_in + size_out)
                except Exception as exc:
                    self.unsendable = exc
        return self._transfer

    def per_item(self) -> float:
        """The median item's seconds (after the first, which often pays for
        warm-up), less what reading the clock around it costs."""
        if len(self.times) == 1:
            median = self.times[0]
        else:
            rest = sorted(self.times[1:])
            median = rest[len(rest) // 2]
        return max(median - _costs.clock_cost(self.clock), median / 2)

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
        # One item may carry first-call costs: a clear win needs three, unless
        # items are heavy enough that waiting for more costs real time.
        cost = self.per_item()
        if seen < 3 and cost < HEAVY_ITEM:
            return elapsed >= PROBE_FLOOR
        if self._too_small(remaining, cost) or self.pool.workers == 1:
            return True
        serial, parallel = projections(remaining, cost, self.transfer, self.pool)
        if serial > CLEAR_WIN * parallel or parallel > CLEAR_WIN * serial:
            return True
        return elapsed >= max(PROBE_FLOOR, PROBE_SHARE * (serial + elapsed))

    def parallel(self, seen: int) -> bool:
        """Whether the verdict after ``seen`` items would be a pool."""
        return self.verdict(seen).serial_more is not None

    def verdict(self, seen: int) -> Verdict:
        cost = self.per_item()

        def probed() -> str:
            return f"probed {seen} item{'s' * (seen != 1)} of ~{format_seconds(cost)}"
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
            transfer = self.transfer
            serial, parallel = projections(remaining, cost, transfer, pool)

            def numbers() -> str:
                return (f"{probed()}; {remaining} left: serial ≈ {format_seconds(serial)}, "
                        f"{pool.workers} workers ≈ {format_seconds(parallel)} "
                        f"(pool start ~{format_seconds(pool.startup)}"
                        f"{', in the background' if pool.overlap else ''}, "
                        f"transfer ~{format_seconds(transfer)}/item)")
            return Verdict(0 if parallel * MARGIN < serial else None, numbers, cost)
        return self._unknown_length(probed, cost)

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


def projections(remaining: int, cost: float, transfer: float, pool: PoolCost) -> tuple[float, float]:
    """(serial, parallel) seconds for ``remaining`` items of ``cost`` each.
    With ``pool.overlap`` the caller runs ~startup/cost items while the pool starts."""
    serial = remaining * cost
    if pool.overlap and cost > 0:
        remaining -= min(remaining, int(pool.startup / cost))
        if remaining == 0:
            return serial, pool.startup + LATENCY  # all done before the pool is up
    rounds = math.ceil(remaining / pool.workers)  # 3 items on 2 workers take 2 rounds
    busy = max(rounds * (cost + transfer / 2), remaining * transfer / 2)
    return serial, pool.startup + LATENCY + busy


def from_history(total: int | None, per_item: float | None, pool: Callable[[], PoolCost]
                 ) -> Verdict | None:
    """Skip the probe when the function's previous call measured items heavy
    enough that a pool clearly wins for this many: every core works from the
    first item. None: probe as usual. A wrong guess (the items got lighter)
    costs a few round trips, then the chunk sizer adapts."""
    if total is None or per_item is None or per_item < HEAVY_ITEM or total < 2:
        return None
    cost = pool()
    if cost.workers == 1:
        return None
    serial, parallel = projections(total, per_item, 0.0, cost)
    if serial <= CLEAR_WIN * parallel:
        return None
    return Verdict(0, lambda: (
        f"no probe: the previous call measured ~{format_seconds(per_item)} per item; "
        f"{total} items: serial ≈ {format_seconds(serial)}, {cost.workers} workers ≈ "
        f"{format_seconds(parallel)} (pool start ~{format_seconds(cost.startup)})"), per_item)


def _in_daemon_process() -> bool:
    """Inside a daemonic multiprocessing child (which may not start children).
    Read without importing multiprocessing, and safe while another thread is
    still importing it: then this is the main process, not a child."""
    module = sys.modules.get("multiprocessing.process")
    current = getattr(module, "_current_process", None)
    config = getattr(current, "_config", None)
    return isinstance(config, dict) and bool(config.get("daemon"))


def static_choice(options: Options, total: int | None) -> tuple[str, str]:
    """Decisions that need no measurement: ``("auto", "")`` when there are none."""
    if _role.IN_WORKER or _in_daemon_process():
        return "serial", "already inside a worker process: a pool never starts a pool"
    if options.backend != "auto":
        return options.backend, f"backend={options.backend!r} was asked for"
    if options.timeout is not None:
        return "process", f"timeout={options.timeout:g} s: only a worker process can be stopped"
    if total is not None and total <= 1:
        return "serial", f"{total} item{'s' * (total != 1)}: nothing to share out"
    if options.workers == 1:
        return "serial", "1 worker (workers=1 was asked for)"
    return "auto", ""


class ChunkSizer:
    """Chunks long enough to amortise a round trip, short enough to balance:
    about CHUNK_SECONDS each, and never more than a quarter of what each
    worker has left, so chunks shrink toward the end and no worker idles
    while one finishes a big chunk (guided self-scheduling), down to
    MIN_CHUNK_SECONDS of work."""

    def __init__(self, workers: int, fixed: int | None = None,
                 per_item: float | None = None) -> None:
        self.workers = workers
        self.fixed = fixed
        self.per_item = per_item
        self._observed_items = 0
        self._observed_seconds = 0.0

    def observe(self, count: int, busy: float) -> None:
        if count and busy > 0:
            self._observed_items += count
            self._observed_seconds += busy
            self.per_item = self._observed_seconds / self._observed_items

    def next(self, remaining: int | None) -> int:
        if self.fixed is not None:
            return self.fixed
        if self.per_item is None:
            size = 1  # nothing measured yet: learn from small chunks first
        else:
            size = max(1, min(100_000, int(CHUNK_SECONDS / max(self.per_item, 1e-7))))
        if remaining is not None:
            # Guided self-scheduling shrinks chunks toward the end, but never
            # below MIN_CHUNK_SECONDS of work: smaller ones would cost more
            # in round trips than any imbalance they save.
            floor = 1 if self.per_item is None else int(MIN_CHUNK_SECONDS / max(self.per_item, 1e-7))
            size = min(size, max(1, floor, math.ceil(remaining / (4 * self.workers))))
        return size
