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
import pickle
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from . import _cpu, _state
from ._options import Options

__all__ = ["ChunkSizer", "Plan", "Probe", "format_seconds", "startup_estimate"]

PROBE_FLOOR = 0.002  # seconds the probe may always take
PROBE_SHARE = 0.02  # ... or this share of the projected serial time
CLEAR_WIN = 1.5  # stop probing early once one side wins by this factor
CHUNK_SECONDS = 0.02  # target duration of one chunk: amortises a ~0.1 ms round trip
LATENCY = 0.002  # fixed cost of a parallel run: wake-ups, first round trip, shutdown
MARGIN = 1.2  # a pool must be projected this much faster: estimates err toward the pool
HEAVY_ITEM = 0.001  # seconds: an item this slow is measured well enough alone
PIPE_BYTES_PER_SECOND = 1e9  # moving bytes caller -> worker -> caller, copies included

# Seconds to start a pool of n workers, by start method: (fixed, per worker).
# Updated with what this process actually measures.
_STARTUP: dict[str, tuple[float, float]] = {
    "fork": (0.004, 0.004),
    "forkserver": (0.08, 0.03),
    "spawn": (0.05, 0.06),
    "thread": (0.0, 0.0001),
}


def startup_estimate(method: str, workers: int) -> float:
    fixed, per_worker = _STARTUP.get(method, _STARTUP["spawn"])
    return fixed + per_worker * workers


def record_startup(method: str, workers: int, seconds: float) -> None:
    """Remember a measured start so the next estimate is this machine's."""
    fixed, _ = _STARTUP.get(method, _STARTUP["spawn"])
    _STARTUP[method] = (fixed, max(0.0, seconds - fixed) / max(1, workers))


def format_seconds(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} µs"


@dataclass
class Plan:
    """How a call ran, and why. ``str(plan)`` is one readable line."""

    backend: str
    workers: int
    chunksize: int | None
    reason: str
    items: int = 0
    wall_seconds: float = 0.0
    caller_seconds: float = 0.0
    worker_seconds: dict[str, float] = field(default_factory=dict)
    slowest: list[tuple[int, float]] = field(default_factory=list)

    def __str__(self) -> str:
        text = f"{self.backend}: {self.reason}"
        if self.wall_seconds:
            rate = self.items / self.wall_seconds if self.wall_seconds > 0 else 0.0
            text += (f" | ran {self.items} items in {format_seconds(self.wall_seconds)} "
                     f"({rate:,.0f}/s)")
            shares = self.busy_shares()
            if shares:
                text += ", workers busy " + "/".join(f"{s:.0%}" for s in shares.values())
        return text

    def busy_shares(self) -> dict[str, float]:
        """Each worker's share of the parallel part of the wall time spent computing."""
        parallel = self.wall_seconds - self.caller_seconds
        if parallel <= 0:
            return {}
        return {name: min(1.0, busy / parallel) for name, busy in self.worker_seconds.items()}


def _transfer_seconds(value: Any) -> tuple[float, int]:
    """Seconds to pickle and unpickle ``value`` plus to move its bytes through
    a pipe, and its size. Large buffers (NumPy arrays, bytes) are counted by
    size through protocol 5's buffer_callback instead of being copied."""
    buffers: list[pickle.PickleBuffer] = []
    started = time.perf_counter()
    data = pickle.dumps(value, 5, buffer_callback=buffers.append)
    pickle.loads(data, buffers=buffers)
    elapsed = time.perf_counter() - started
    size = len(data) + sum(buffer.raw().nbytes for buffer in buffers)
    return elapsed + size / PIPE_BYTES_PER_SECOND, size


@dataclass
class Verdict:
    """The probe's conclusion: go parallel after ``serial_more`` more items
    (None: stay serial to the end)."""

    serial_more: int | None
    reason: str
    per_item: float


class Probe:
    """Times the first items run in the caller and decides when it has seen enough."""

    def __init__(self, total: int | None, workers: int, startup: float, method: str) -> None:
        self.total = total
        self.workers = workers
        self.startup = startup
        self.method = method
        self.times: list[float] = []
        self.transfer = 0.0
        self.transfer_bytes = 0
        self.picklable: BaseException | None = None
        self.started = time.perf_counter()

    def measure_transfer(self, item: Any, result: Any) -> None:
        """Cost of sending one item and its result (both ways, both sides)."""
        if self.total is not None and \
                (self.total - len(self.times)) * self.per_item() < self.startup + LATENCY:
            return  # no pool can win: do not spend time measuring (a 10 MB item costs ms)
        try:
            for _ in range(2):  # the second measure is the warm one
                seconds_in, size_in = _transfer_seconds(item)
                seconds_out, size_out = _transfer_seconds(result)
        except Exception as exc:
            self.picklable = exc
            return
        self.transfer = seconds_in + seconds_out
        self.transfer_bytes = size_in + size_out

    def per_item(self) -> float:
        if len(self.times) == 1:
            return self.times[0]
        rest = sorted(self.times[1:])  # the first call often pays for warm-up
        return rest[len(rest) // 2]

    def _throughput(self) -> float:
        """Seconds per item of a busy pool: the workers compute (and unpickle
        and pickle) in parallel; the caller's half of the transfer does not."""
        return max((self.per_item() + self.transfer / 2) / self.workers, self.transfer / 2)

    def _projections(self, remaining: int) -> tuple[float, float]:
        cost = self.per_item()
        rounds = math.ceil(remaining / self.workers)  # 3 items on 2 workers take 2 rounds
        busy = max(rounds * (cost + self.transfer / 2), remaining * self.transfer / 2)
        return remaining * cost, self.startup + LATENCY + busy

    def done(self, seen: int) -> bool:
        """After ``seen`` items: is the decision clear, or the budget spent?"""
        elapsed = time.perf_counter() - self.started
        if self.total is None:
            return elapsed >= PROBE_FLOOR
        remaining = self.total - seen
        if remaining <= 0:
            return True
        serial, parallel = self._projections(remaining)
        # One item may carry first-call costs: a clear win needs three, unless
        # items are heavy enough that waiting for more costs real time.
        enough = seen >= 3 or self.per_item() >= HEAVY_ITEM
        if enough and (serial > CLEAR_WIN * parallel or parallel > CLEAR_WIN * serial):
            return True
        return elapsed >= max(PROBE_FLOOR, PROBE_SHARE * (serial + elapsed))

    def verdict(self, seen: int) -> Verdict:
        cost = self.per_item()
        probe_text = f"probed {seen} item{'s' * (seen != 1)} of ~{format_seconds(cost)}"
        if self.total is not None:
            remaining = self.total - seen
            if remaining <= 0:
                return Verdict(None, f"all {seen} items ran while probing "
                                     f"(~{format_seconds(cost)} each)", cost)
            serial, parallel = self._projections(remaining)
            numbers = (f"{probe_text}; {remaining} left: serial ≈ {format_seconds(serial)}, "
                       f"{self.workers} workers ≈ {format_seconds(parallel)} "
                       f"(pool start ~{format_seconds(self.startup)}, "
                       f"transfer ~{format_seconds(self.transfer)}/item)")
            if parallel * MARGIN < serial:
                return Verdict(0, numbers, cost)
            return Verdict(None, numbers, cost)
        # Unknown length: compare throughputs, then rent before buying.
        per_item_parallel = self._throughput()
        if per_item_parallel * MARGIN >= cost:
            return Verdict(None, f"{probe_text} of unknown count: a pool would not be faster "
                                 f"per item (~{format_seconds(per_item_parallel)})", cost)
        more = math.ceil(self.startup / cost) if cost > 0 else 0
        return Verdict(more, f"{probe_text} of unknown count: a pool is faster per item "
                             f"(~{format_seconds(per_item_parallel)}); switched after running "
                             f"~{format_seconds(self.startup)} of items serially "
                             f"(the pool's start-up cost)", cost)


def static_choice(options: Options, workers: int, total: int | None) -> tuple[str, str]:
    """Decisions that need no measurement: ``("auto", "")`` when there are none."""
    # multiprocessing not imported yet: this cannot be one of its children.
    mp = sys.modules.get("multiprocessing")
    if _state.IN_WORKER or (mp is not None and mp.current_process().daemon):
        return "serial", "already inside a worker process: a pool never starts a pool"
    if options.backend != "auto":
        return options.backend, f"backend={options.backend!r} was asked for"
    if workers == 1:
        return "serial", f"1 worker ({_cpu.cpu_report().reason})"
    if total is not None and total <= 1:
        return "serial", f"{total} item{'s' * (total != 1)}: nothing to share out"
    if options.timeout is not None:
        return "process", f"timeout={options.timeout:g} s: only a worker process can be stopped"
    return "auto", ""


class ChunkSizer:
    """Chunks long enough to amortise a round trip, short enough to balance:
    about CHUNK_SECONDS each, and never more than a quarter of what each
    worker has left, so chunks shrink toward the end and no worker idles
    while one finishes a big chunk (guided self-scheduling)."""

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
            size = min(size, max(1, math.ceil(remaining / (4 * self.workers))))
        return size
