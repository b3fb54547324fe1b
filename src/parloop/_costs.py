"""What things cost here: starting a pool, moving bytes to a worker and
back, reading the clock, and each function's measured seconds per item.
The planner reads these; the process backend writes what it measures.

The constants are this machine's measurements as first guesses (how they
were measured: ``benchmarks/README.md``); a process replaces the start-up
guesses with what it measures itself.
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import sys
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _memory
from ._cpu import planning_start_method

if TYPE_CHECKING:
    from ._options import Options

__all__ = ["ITEM_OVERHEAD", "SHARED_MEMORY", "SHARED_THRESHOLD", "PoolCost", "Transfer", "clock_cost",
           "least_transfer", "note_fork_server", "pool_cost", "recall", "record_startup",
           "remember", "startup_estimate", "startup_key", "transfer_seconds"]

# -- moving bytes ----------------------------------------------------------------------------

#: Big buffers (NumPy arrays, big pickles) travel through anonymous shared
#: memory where the platform allows it (Linux memfd), others through the pipe.
SHARED_MEMORY = sys.platform.startswith("linux") and hasattr(os, "memfd_create")
#: bytes: the pipe is faster below this, shared memory above (measured round trips)
SHARED_THRESHOLD = 256 << 10
PIPE_BYTES_PER_SECOND = 0.25e9  # caller -> worker -> caller, copies included
#: seconds of a pickle round trip long enough that one reading will do
ONE_READING = 50e-6
SHARED_BYTES_PER_SECOND = 1.3e9
SHARED_SECONDS_PER_BUFFER = 0.0004  # a memfd's fixed cost, both ways
#: What a pooled item costs beyond pickling its data: the worker's loop and
#: the caller's share of chunking and collecting.
ITEM_OVERHEAD = 0.5e-6

# -- starting a pool ---------------------------------------------------------------------------

# Seconds to start a pool of n workers, by start method: (fixed, per worker).
# "forkserver-cold": the fork server itself must start first (a new
# interpreter that imports parloop and the main module's libraries), once:
# parloop's own server, with NumPy imported by the main module, measured
# 40-45 ms fixed here (AMD EPYC; multiprocessing's, with its resource
# tracker, had cost ~0.25 s, the estimate until stop s26, which kept a
# 40 x 5 ms call serial for no more than NumPy's import).
_STARTUP: dict[str, tuple[float, float]] = {
    "fork": (0.004, 0.004),
    "forkserver": (0.005, 0.02),
    "forkserver-cold": (0.06, 0.02),
    "spawn": (0.05, 0.06),
    "thread": (0.0, 0.0001),
}
_fork_server_running = False


def note_fork_server(running: bool) -> None:
    """The process backend says whether parloop's fork server runs now."""
    global _fork_server_running
    _fork_server_running = running


def startup_key(method: str) -> str:
    """``method``, told apart by whether its fork server still has to start."""
    if method == "forkserver" and not _fork_server_running:
        return "forkserver-cold"
    return method


def startup_estimate(method: str, workers: int, server_coming: bool = False) -> float:
    """``server_coming``: a fork server not yet running is being started."""
    key = method if server_coming else startup_key(method)
    fixed, per_worker = _STARTUP.get(key, _STARTUP["spawn"])
    return fixed + per_worker * workers


def record_startup(key: str, workers: int, seconds: float) -> None:
    """Remember a measured start (``key`` from ``startup_key``, read before
    the start) so the next estimate is this machine's."""
    fixed, per_worker = _STARTUP.get(key, _STARTUP["spawn"])
    if key == "forkserver-cold":  # the server's start is the fixed part
        _STARTUP[key] = (max(0.0, seconds - per_worker * workers), per_worker)
    else:
        _STARTUP[key] = (fixed, max(0.0, seconds - fixed) / max(1, workers))


class PoolCost:
    """What a pool would cost this call. Finding out reads the CPU limits and
    the pool registry (~0.5 ms the first time), so the probe asks only once
    the work is big enough that a pool might win. (Not a dataclass: this
    module is imported by every worker and fork server, and dataclasses
    with inspect costs ~9 ms of a start.)"""

    __slots__ = ("overlap", "startup", "why_workers", "workers")

    def __init__(self, workers: int, startup: float, why_workers: str = "",
                 overlap: bool = False) -> None:
        self.workers = workers
        self.startup = startup  # seconds to start it; 0 when a warm pool waits
        self.why_workers = why_workers  # where the worker count came from, when it is 1
        #: the pool starts in the background (forkserver, spawn) while the
        #: caller goes on running items, so its start-up is not time lost
        self.overlap = overlap

    def __repr__(self) -> str:
        return (f"PoolCost(workers={self.workers}, startup={self.startup!r}, "
                f"why_workers={self.why_workers!r}, overlap={self.overlap})")


def pool_cost(options: Options, workers: int, warm: bool, server_coming: bool = False) -> PoolCost:
    """What a process pool would cost a call (``warm``: one waits already;
    ``server_coming``: a head start is starting the fork server)."""
    startup, overlap = 0.0, False
    if not warm:
        method = options.start_method or planning_start_method()
        startup = startup_estimate(method, workers, server_coming)
        overlap = method != "fork"  # only a pool that does not fork the caller
    return PoolCost(workers, startup, options.worker_source() if workers == 1 else "", overlap)


# -- pickling and the clock ---------------------------------------------------------------------

_call_overhead: float | None = None  # seconds of a pickle round trip of None
_perf_counter_cost: float | None = None  # kept: tests pass clocks of their own


def transfer_seconds(value: Any) -> tuple[float, int]:
    """Seconds to move ``value`` to or from a worker process, and its size:
    to pickle and unpickle it, less what pickling costs per call (items travel
    in chunks, one pickle call for many), plus its bytes through the pipe or
    shared memory. Large buffers (NumPy arrays, bytes) are counted by size
    through protocol 5's buffer_callback, not copied."""
    global _call_overhead
    if _call_overhead is None:
        _call_overhead = min(pickle_round_trip(None)[0] for _ in range(3))
    seconds, sizes = pickle_round_trip(value)
    elapsed = max(0.0, seconds - _call_overhead)
    shared = [n for n in sizes if n >= SHARED_THRESHOLD] if SHARED_MEMORY else []
    elapsed += (sum(sizes) - sum(shared)) / PIPE_BYTES_PER_SECOND
    elapsed += sum(shared) / SHARED_BYTES_PER_SECOND + SHARED_SECONDS_PER_BUFFER * len(shared)
    return elapsed, sum(sizes)


def least_transfer(value: Any) -> tuple[float, int]:
    """``transfer_seconds`` of ``value``: the least of three readings for a
    value quick to pickle (a round trip of a small value is a few hundred ns,
    and a single reading is often double), of two for a slow one (the first
    pays for fresh memory, ~1.5x; three round trips of a 1 MB bytes item
    took ~3 ms of a first call's probe)."""
    readings = [transfer_seconds(value), transfer_seconds(value)]
    if readings[1][0] < ONE_READING:
        readings.append(transfer_seconds(value))
    return min(readings)


class Transfer:
    """Seconds (and bytes) to send one item to a worker and its result back,
    both sides' pickling and unpickling, from the first item and result
    (``keep``), measured only when first asked: pickling a 1 MB item
    costs ~3 ms, worth paying only when a pool is weighed."""

    def __init__(self) -> None:
        self._first: tuple[Any, Any] | None = None
        self._measured: tuple[float, int] | None = None
        self.unsendable: BaseException | None = None  # what pickling them raised

    def keep(self, item: Any, result: Any) -> None:
        self._first = (item, result)

    @property
    def seconds(self) -> float:
        return self._measure()[0]

    @property
    def size(self) -> int:
        return self._measure()[1]

    @property
    def measured(self) -> float | None:
        """The seconds, if they were measured (for the history)."""
        return self._measured[0] if self._measured is not None and self._measured[1] else None

    def sendable(self) -> float:
        """The seconds; infinite for items that cannot be sent."""
        seconds = self.seconds
        return math.inf if self.unsendable is not None else seconds

    def _measure(self) -> tuple[float, int]:
        if self._measured is None:
            self._measured = (0.0, 0)
            if self._first is not None:
                item, result = self._first
                self._first = None
                try:
                    seconds_in, size_in = least_transfer(item)
                    seconds_out, size_out = least_transfer(result)
                    self._measured = (seconds_in + seconds_out + ITEM_OVERHEAD, size_in + size_out)
                except Exception as exc:
                    self.unsendable = exc
        return self._measured


def pickle_round_trip(value: Any) -> tuple[float, list[int]]:
    """Seconds to pickle and unpickle ``value``; the sizes of its pickle and buffers."""
    buffers: list[pickle.PickleBuffer] = []
    started = time.perf_counter()
    data = pickle.dumps(value, 5, buffer_callback=buffers.append)
    pickle.loads(data, buffers=buffers)
    elapsed = time.perf_counter() - started
    return elapsed, [len(data), *(buffer.raw().nbytes for buffer in buffers)]


def clock_cost(clock: Callable[[], float]) -> float:
    """Seconds a timing with ``clock`` adds to what it times."""
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


# -- each function's history ---------------------------------------------------------------

# Per function, seconds per item as measured on each side that ran it: the
# caller ("serial") and a pool's workers ("process", "thread", ...). Kept
# apart: a NumPy item that takes 1 ms in the caller, where BLAS has every
# core, takes 7 ms in a worker capped at one BLAS thread, and either number
# would mislead the other side's projection.
_history: weakref.WeakKeyDictionary[Any, dict[str, float]] = weakref.WeakKeyDictionary()


def _history_key(fn: Any) -> Any:
    return getattr(fn, "__func__", fn)  # a bound method is a new object on every access


def remember(fn: Any, per_item: float, side: str = "serial") -> None:
    """Keep the seconds per item a call of ``fn`` measured on ``side`` (the
    caller: "serial"; else the backend whose workers measured it), for the
    next call, and (``_memory``) the next run."""
    with contextlib.suppress(TypeError):  # not weakly referenceable (a builtin): no history
        history = _history.setdefault(_history_key(fn), {})
        history.pop("run", None)  # measured by this run now
        history[side] = per_item
        _memory.remember(fn, history)


def recall(fn: Any) -> dict[str, float]:
    """What earlier calls of ``fn`` measured, by side (empty: nothing yet):
    this process's, else an earlier run's (then with ``"run": 1.0``)."""
    try:
        found = _history.get(_history_key(fn))
        if found is None:
            found = _memory.recall(fn)
            if found:
                found["run"] = 1.0
                _history[_history_key(fn)] = found
        return dict(found)
    except TypeError:
        return {}
