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

import contextlib
import math
import pickle
import sys
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import _state
from ._options import Options

__all__ = ["ChunkSizer", "Plan", "PoolCost", "Probe", "Verdict", "format_seconds", "from_history",
           "startup_estimate"]

PROBE_FLOOR = 0.002  # seconds the probe may always take
PROBE_SHARE = 0.02  # ... or this share of the projected serial time
CLEAR_WIN = 1.5  # stop probing early once one side wins by this factor
CHUNK_SECONDS = 0.02  # target duration of one chunk: amortises a ~0.1 ms round trip
MIN_CHUNK_SECONDS = 0.002  # the shortest chunk worth a round trip, even at the tail
LATENCY = 0.002  # fixed cost of a parallel run: wake-ups, first round trip, shutdown
MARGIN = 1.2  # a pool must be projected this much faster: estimates err toward the pool
HEAVY_ITEM = 0.001  # seconds: an item this slow is measured well enough alone
# Moving bytes caller -> worker -> caller, copies included, as measured on the
# 2-core test machine: through the worker's pipe, or (big buffers and big
# pickles, on Linux) through shared memory, which also costs a fixed ~0.2 ms
# per buffer each way (see backends/_shm.py).
PIPE_BYTES_PER_SECOND = 0.25e9
SHARED_BYTES_PER_SECOND = 1.3e9
SHARED_SECONDS_PER_BUFFER = 0.0004
# What a pooled item costs beyond pickling its data: the worker's loop and
# the caller's share of chunking and collecting (~0.5 µs here, measured on
# 200k x*x items: 2 workers' busy time less the serial loop's).
ITEM_OVERHEAD = 0.5e-6

# Seconds to start a pool of n workers, by start method: (fixed, per worker).
# Updated with what this process actually measures.
# "forkserver-cold": the fork server itself must start first (a new interpreter
# that imports the main module and parloop: ~0.2-0.5 s), once per process.
_STARTUP: dict[str, tuple[float, float]] = {
    "fork": (0.004, 0.004),
    "forkserver": (0.005, 0.02),
    "forkserver-cold": (0.25, 0.02),
    "spawn": (0.05, 0.06),
    "thread": (0.0, 0.0001),
}


def startup_key(method: str) -> str:
    """``method``, told apart by whether its fork server still has to start."""
    if method != "forkserver":
        return method
    # Read without importing it, and safely while another thread still is
    # importing it (then its server is surely not running yet).
    server_pid = getattr(sys.modules.get("parloop.backends.process.launch"), "server_pid", None)
    running = server_pid is not None and server_pid() is not None
    return method if running else "forkserver-cold"


def startup_estimate(method: str, workers: int) -> float:
    fixed, per_worker = _STARTUP.get(startup_key(method), _STARTUP["spawn"])
    return fixed + per_worker * workers


def record_startup(key: str, workers: int, seconds: float) -> None:
    """Remember a measured start (``key`` from ``startup_key``, read before
    the start) so the next estimate is this machine's."""
    fixed, per_worker = _STARTUP.get(key, _STARTUP["spawn"])
    if key == "forkserver-cold":  # the server's start is the fixed part
        _STARTUP[key] = (max(0.0, seconds - per_worker * workers), per_worker)
    else:
        _STARTUP[key] = (fixed, max(0.0, seconds - fixed) / max(1, workers))


def format_seconds(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} µs"


Reason = Callable[[], str]  # a plan's reason is drawn only when someone reads it


@dataclass
class Plan:
    """How a call ran, and why. ``str(plan)`` is one readable line."""

    backend: str
    workers: int
    chunksize: int | None
    why: str | Reason  # see ``reason``
    items: int = 0
    wall_seconds: float = 0.0
    caller_seconds: float = 0.0
    worker_seconds: dict[str, float] = field(default_factory=dict)
    slowest: list[tuple[int, float]] = field(default_factory=list)
    #: seconds per item as this call measured them (the next call's first guess)
    per_item: float | None = None

    @property
    def reason(self) -> str:
        """Why the call ran this way, with the numbers the decision rests on."""
        if not isinstance(self.why, str):
            self.why = self.why()  # formatted on first read: most reasons are never read
        return self.why

    @reason.setter
    def reason(self, value: str | Reason) -> None:
        self.why = value

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
    """Seconds to move ``value`` to or from a worker process, and its size:
    to pickle and unpickle it, less what pickling costs per call (items travel
    in chunks, one pickle call for many), plus its bytes through the pipe.
    Large buffers (NumPy arrays, bytes) are counted by size through protocol
    5's buffer_callback, not copied."""
    from .backends.process import shm as _shm

    global _call_overhead
    if _call_overhead is None:
        _call_overhead = min(_pickle_round_trip(None)[0] for _ in range(3))
    seconds, sizes = _pickle_round_trip(value)
    elapsed = max(0.0, seconds - _call_overhead)
    shared = [n for n in sizes if n >= _shm.THRESHOLD] if _shm.ENABLED else []
    piped = sum(sizes) - sum(shared)
    elapsed += piped / PIPE_BYTES_PER_SECOND
    elapsed += sum(shared) / SHARED_BYTES_PER_SECOND + SHARED_SECONDS_PER_BUFFER * len(shared)
    return elapsed, sum(sizes)


_call_overhead: float | None = None  # seconds of a pickle round trip of None
_perf_counter_cost: float | None = None  # kept: tests pass clocks of their own


def _clock_cost(clock: Callable[[], float]) -> float:
    """Seconds a timing with ``clock`` adds to what it times (~0.2 µs here)."""
    global _perf_counter_cost
    if clock is time.perf_counter and _perf_counter_cost is not None:
        return _perf_counter_cost
    readings = []
    for _ in range(5):
        began = clock()
        readings.append(clock() - began)
    if clock is time.perf_counter:
        _perf_counter_cost = min(readings)
    return min(readings)


def _pickle_round_trip(value: Any) -> tuple[float, list[int]]:
    """Seconds to pickle and unpickle ``value``; the sizes of its pickle and buffers."""
    buffers: list[pickle.PickleBuffer] = []
    started = time.perf_counter()
    data = pickle.dumps(value, 5, buffer_callback=buffers.append)
    pickle.loads(data, buffers=buffers)
    elapsed = time.perf_counter() - started
    return elapsed, [len(data), *(buffer.raw().nbytes for buffer in buffers)]


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


@dataclass
class Verdict:
    """The probe's conclusion: go parallel after ``serial_more`` more items
    (None: stay serial to the end)."""

    serial_more: int | None
    reason: Reason
    per_item: float


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
        self.picklable: BaseException | None = None
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
                    seconds_in, size_in = min(_transfer_seconds(item) for _ in range(3))
                    seconds_out, size_out = min(_transfer_seconds(result) for _ in range(3))
                    self._transfer = (seconds_in + seconds_out + ITEM_OVERHEAD,
                                      size_in + size_out)
                except Exception as exc:
                    self.picklable = exc
        return self._transfer

    def per_item(self) -> float:
        """The median item's seconds (after the first, which often pays for
        warm-up), less what reading the clock around it costs."""
        if len(self.times) == 1:
            median = self.times[0]
        else:
            rest = sorted(self.times[1:])
            median = rest[len(rest) // 2]
        return max(median - _clock_cost(self.clock), median / 2)

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

    def _unknown_length(self, probed: Reason, cost: float) -> Verdict:
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


_history: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()


def _history_key(fn: Any) -> Any:
    return getattr(fn, "__func__", fn)  # a bound method is a new object on every access


def remember(fn: Any, per_item: float) -> None:
    """Keep the seconds per item a call of ``fn`` measured, while ``fn`` lives."""
    with contextlib.suppress(TypeError):  # not weakly referenceable (a builtin): no history
        _history[_history_key(fn)] = per_item


def recall(fn: Any) -> float | None:
    try:
        return _history.get(_history_key(fn))
    except TypeError:
        return None


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
    if _state.IN_WORKER or _in_daemon_process():
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
