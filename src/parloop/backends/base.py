"""The one interface every backend implements, and the records that cross it.

The dispatch engine (``parloop._dispatch``) cuts the input into :class:`Chunk`
objects, hands them to ``submit`` and collects :class:`Outcome` objects from
``wait``. It never knows which backend it drives. A backend is a small class::

    class EchoBackend(Backend):
        name = "echo"

        def submit(self, chunk):
            self._ready.append(run_chunk(chunk))     # run it somewhere

        def _poll(self, timeout):
            ready, self._ready = self._ready, []
            return ready

        def cancel(self, job): ...
        def close(self, *, kill=False): ...

An Outcome may cover a whole chunk or any contiguous part of one: the engine
counts items, not chunks, so a backend may split work (after a crash, or to
stream results) as it likes.
"""

from __future__ import annotations

import itertools
import threading
import time
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Backend", "Chunk", "Job", "Outcome"]

_job_ids = itertools.count(1)
POLL_SLICE = 0.1  # seconds one poll may block, with one job on the backend
SHARED_POLL_SLICE = 0.005  # ... with several, whose threads must get to submit


@dataclass(eq=False)
class Job:
    """One call: the function, the arguments shared by every item, and how to
    treat failures. Backends ship it to each worker at most once."""

    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    star: bool = False
    stop_on_error: bool = True
    timeout: float | None = None
    id: int = field(default_factory=lambda: next(_job_ids))

    def call(self, item: Any) -> Any:
        if self.star:
            return self.fn(*item, *self.args, **self.kwargs)
        return self.fn(item, *self.args, **self.kwargs)

    def caller(self) -> Callable[[Any], Any]:
        """The per-item callable: the function itself when nothing is added
        to each call, which spares a Python frame per item."""
        if not self.star and not self.args and not self.kwargs:
            return self.fn
        return self.call


@dataclass(eq=False)
class Chunk:
    """Consecutive items ``start, start + 1, ...`` of one job."""

    job: Job
    start: int
    items: list[Any]


@dataclass(eq=False)
class Outcome:
    """Results for items ``start .. start + len(values) - 1`` of job ``job_id``.

    ``errors`` maps an absolute item index to the exception that stands in for
    its result (the slot in ``values`` is then None). ``busy`` is the seconds a
    worker spent computing these items, used to size later chunks.
    """

    job_id: int
    start: int
    values: list[Any]
    errors: dict[int, BaseException] = field(default_factory=dict)
    busy: float = 0.0
    worker: str = ""
    slowest: tuple[float, int] = (0.0, -1)  # (seconds, index) of the slowest item here
    missing: int = 0  # the engine's count of slots still waiting for a retry


def run_chunk(chunk: Chunk, catch: type[BaseException] = Exception) -> Outcome:
    """Run a chunk in this process; the in-process backends share this.

    The serial backend lets KeyboardInterrupt through (Ctrl-C must stop the
    loop); a pool thread catches everything, since nobody else would see it.
    """
    job = chunk.job
    values: list[Any] = []
    errors: dict[int, BaseException] = {}
    call = job.caller()
    clock = time.perf_counter
    started = clock()
    slowest = (0.0, -1)
    for offset, item in enumerate(chunk.items):
        began = clock()
        try:
            values.append(call(item))
        except catch as exc:
            values.append(None)
            errors[chunk.start + offset] = exc
            if job.stop_on_error:
                break
        finally:
            took = clock() - began
            if took > slowest[0]:
                slowest = (took, chunk.start + offset)
    return Outcome(job.id, chunk.start, values, errors, clock() - started,
                   threading.current_thread().name, slowest)


class Backend(ABC):
    """Runs chunks somewhere and reports their outcomes.

    Several jobs may share one backend (two ``f.iter`` loops interleaved in a
    ``with`` block); ``wait`` hands each job only its own outcomes.
    """

    name: str = "?"

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._reset_lock()
        self._held: defaultdict[int, list[Outcome]] = defaultdict(list)
        self._active: set[int] = set()

    def _reset_lock(self) -> None:
        # One lock guards the backend's state; the condition on it lets the
        # calls of several threads take turns at polling (see ``wait``).
        self._lock = threading.RLock()
        self._turns = threading.Condition(self._lock)
        self._polling = False

    @abstractmethod
    def submit(self, chunk: Chunk) -> None:
        """Start running ``chunk``. Must not block for long."""

    @abstractmethod
    def _poll(self, timeout: float | None) -> list[Outcome]:
        """Outcomes of any job that finished, waiting up to ``timeout`` seconds."""

    @abstractmethod
    def cancel(self, job: Job) -> None:
        """Drop ``job``'s pending chunks; results still in flight are discarded."""

    @abstractmethod
    def close(self, *, kill: bool = False) -> None:
        """Release every resource. ``kill``: do not wait for running items."""

    def started(self) -> bool:
        """Whether work submitted now would start soon: a pool whose workers
        are still starting says False, so the caller can keep working."""
        return True

    def start_job(self, job: Job) -> None:
        """Called once before the first chunk of ``job`` is submitted;
        subclasses that override it call ``super().start_job(job)``."""
        with self._lock:
            self._active.add(job.id)

    def wait(self, job: Job, timeout: float | None) -> list[Outcome]:
        """``job``'s outcomes, waiting up to ``timeout`` seconds for at least one.

        Calls from several threads may share a backend. One of them at a time
        polls, for everyone: what it collects for another job is held for
        that job, and the others are woken to look. Polling holds the lock,
        so while other jobs are active it polls in short slices, and their
        threads can submit between them."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while True:
                mine = self._held.pop(job.id, None)
                if mine:
                    return mine
                remaining = POLL_SLICE if deadline is None else deadline - time.monotonic()
                if remaining <= 0:
                    return []
                if self._polling:  # another thread polls; it wakes us when it has news
                    self._turns.wait(min(remaining, POLL_SLICE))
                    continue
                self._polling = True
                try:
                    slice_ = POLL_SLICE if len(self._active) <= 1 else SHARED_POLL_SLICE
                    for outcome in self._poll(min(remaining, slice_)):
                        if outcome.job_id in self._active:  # results of ended jobs are dropped
                            self._held[outcome.job_id].append(outcome)
                finally:
                    self._polling = False
                    self._turns.notify_all()

    def end_job(self, job: Job) -> None:
        """Forget ``job``: called when its call returns or is abandoned."""
        with self._lock:
            self._held.pop(job.id, None)
            self._active.discard(job.id)
