"""The one interface every backend implements, and the records that cross it.

The dispatch engine (``parloop._flow``) cuts the input into :class:`Chunk`
objects, hands them to ``submit`` and collects :class:`Outcome` objects from
``wait``. It never knows which backend it drives. A backend is a small class::

    class EchoBackend(Backend):
        name = "echo"

        def submit(self, chunk):
            self._ready.append(run_somewhere(chunk))

        def _poll(self, timeout):
            ready, self._ready = self._ready, []
            return ready

        def cancel(self, job): ...
        def close(self, *, kill=False): ...

and a module that holds it, with one entry in the registry
(``parloop.backends.REGISTRY``)::

    def create(workers: int, options: Settings) -> Backend:
        ...   # a new backend of ``workers`` workers, made on a call's first use

    def prepare(options: Settings) -> None:
        ...   # optional: what must happen in the caller's own thread before
              # ``create`` runs in another (the process backend starts its
              # fork server here)

An Outcome may cover a whole chunk or any contiguous part of one: the engine
counts items, not chunks, so a backend may split work (after a crash, or to
stream results) as it likes.
"""

from __future__ import annotations

import itertools
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    from ._state import Setup

__all__ = ["LIVE_JOBS", "Backend", "Chunk", "Ended", "Job", "Outcome", "Settings", "per_item"]

_job_ids = itertools.count(1)
#: every Job of this process while it exists: a worker forked meanwhile holds
#: a copy of each, its arguments included (see ``process.inherit``)
LIVE_JOBS: weakref.WeakValueDictionary[int, Job] = weakref.WeakValueDictionary()
POLL_SLICE = 0.1  # seconds one poll may block, with one job on the backend
SHARED_POLL_SLICE = 0.005  # ... with several, whose threads must get to submit


class Settings(Protocol):
    """The options a backend's ``create`` reads (``parloop``'s resolved options)."""

    @property
    def start_method(self) -> str | None: ...

    @property
    def client(self) -> Any: ...

    @property
    def address(self) -> str | None: ...

    @property
    def max_items_per_worker(self) -> int | None: ...


class Job:
    """One call: the function, the arguments shared by every item, and how to
    treat failures. Backends ship it to each worker at most once."""

    # Plain classes with slots, not dataclasses: a worker process imports this
    # module, and dataclasses (with inspect) would double its import time.
    __slots__ = (
        "__weakref__",
        "args",
        "args_by",
        "fn",
        "id",
        "item_seconds",
        "kwargs",
        "setup",
        "star",
        "stop_on_error",
        "timeout",
    )

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...] = (),
                 kwargs: dict[str, Any] | None = None, star: bool = False,
                 stop_on_error: bool = True, timeout: float | None = None,
                 setup: Setup | None = None) -> None:
        self.fn = fn
        #: ``setup=``: each worker's state is passed to ``fn`` before the item
        self.setup = setup
        self.args = args
        self.kwargs = kwargs if kwargs is not None else {}
        self.star = star
        self.stop_on_error = stop_on_error
        self.timeout = timeout
        self.id = next(_job_ids)
        #: how the arguments reached process workers: "fork" (inherited), "pickle"
        self.args_by: set[str] = set()
        if args or kwargs:
            LIVE_JOBS[self.id] = self
        #: the engine's latest estimate of one item's seconds (None: not yet known)
        self.item_seconds: float | None = None

    @property
    def tears_down(self) -> bool:
        """Whether each worker's state ends with this job (``teardown=``)."""
        return self.setup is not None and self.setup.teardown is not None

    def call(self, item: Any) -> Any:
        if self.star:
            return self.fn(*item, *self.args, **self.kwargs)
        return self.fn(item, *self.args, **self.kwargs)

    def caller(self) -> Callable[[Any], Any]:
        """The per-item callable in the caller (see ``per_item``)."""
        return per_item(self.fn, self.args, self.kwargs, self.star, self.setup, False, self.id)


def per_item(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], star: bool,
             setup: Setup | None, per_thread: bool, job: object) -> Callable[[Any], Any]:
    """The call of one item, wherever it runs: ``fn`` itself when nothing is
    added to each call (a Python frame less per item); with ``setup``, the
    worker's state goes first (made on the first item, see ``_state``)."""
    if setup is not None:
        from ._state import state_of

        if star:
            return lambda item: fn(state_of(setup, per_thread, job), *item, *args, **kwargs)
        return lambda item: fn(state_of(setup, per_thread, job), item, *args, **kwargs)
    if star:
        return lambda item: fn(*item, *args, **kwargs)
    if args or kwargs:
        return lambda item: fn(item, *args, **kwargs)
    return fn


class Chunk:
    """Consecutive items ``start, start + 1, ...`` of one job."""

    __slots__ = ("items", "job", "start")

    def __init__(self, job: Job, start: int, items: list[Any]) -> None:
        self.job = job
        self.start = start
        self.items = items

    @property
    def end(self) -> int:
        return self.start + len(self.items)

    def split(self, count: int) -> tuple[Chunk, Chunk]:
        """The first ``count`` items, and the rest."""
        return (Chunk(self.job, self.start, self.items[:count]),
                Chunk(self.job, self.start + count, self.items[count:]))


class Outcome:
    """Results for items ``start .. start + len(values) - 1`` of job ``job_id``.

    ``errors`` maps an absolute item index to the exception that stands in for
    its result (the slot in ``values`` is then None). ``busy`` is the seconds a
    worker spent computing these items, used to size later chunks.
    """

    __slots__ = ("busy", "cpu", "errors", "job_id", "missing", "slowest", "start", "values",
                 "worker")

    def __init__(self, job_id: int, start: int, values: list[Any],
                 errors: dict[int, BaseException] | None = None, busy: float = 0.0,
                 worker: str = "", slowest: tuple[float, int] = (0.0, -1)) -> None:
        self.job_id = job_id
        self.start = start
        self.values = values
        self.errors = errors if errors is not None else {}
        self.busy = busy
        self.worker = worker
        self.slowest = slowest  # (seconds, index) of the slowest item here
        self.cpu = 0.0  # CPU seconds the worker spent meanwhile (0: not known)
        self.missing = 0  # the engine's count of slots still waiting for a retry


class Ended(NamedTuple):
    """A worker's state of a job's ``setup`` has ended (``teardown=``):
    ``made`` says whether it had one; ``value`` is what the teardown
    returned, ``error`` what it raised. (Across a process: a pickle and a
    ``_wire.Captured``, until ``_wire.rebuilt``.)"""

    job_id: int
    worker: int | None  # its worker_id()
    made: bool
    value: Any = None
    error: Any = None


def drain(source: Any, timeout: float | None) -> list[Any]:
    """What a ``queue`` holds: waiting up to ``timeout`` seconds for the first
    thing (0: not at all), then everything else that is there at once."""
    import queue

    try:
        got = [source.get(timeout=timeout)] if timeout is None or timeout > 0 \
            else [source.get_nowait()]
    except queue.Empty:
        return []
    while True:
        try:
            got.append(source.get_nowait())
        except queue.Empty:
            return got


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
        """Outcomes of any job that finished, waiting up to ``timeout`` seconds.
        Called by one thread at a time, without the lock held."""

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
        that job, and the others are woken to look. ``_poll`` takes the lock
        only as it needs it; one that holds it while it waits polls in short
        slices while other jobs are active, so their threads can submit."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
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
                slice_ = POLL_SLICE if len(self._active) <= 1 else SHARED_POLL_SLICE
            outcomes: list[Outcome] = []
            try:
                outcomes = self._poll(min(remaining, slice_))  # it takes the lock as it needs
            finally:
                with self._lock:
                    self._polling = False
                    for outcome in outcomes:
                        if outcome.job_id in self._active:  # results of ended jobs are dropped
                            self._held[outcome.job_id].append(outcome)
                    self._turns.notify_all()

    def end_states(self, job: Job) -> list[Ended]:
        """(``setup=`` with a ``teardown``.) Run the teardown on each worker
        that made a state of ``job``'s setup, and return what each one gave
        back, with the results in the caller's process. Called once the job's
        last chunk is done (or cancelled), before ``end_job``; it waits for
        workers busy with other jobs' items. A worker that dies meanwhile
        gives nothing back."""
        raise NotImplementedError(f"the {self.name} backend cannot run teardown=")

    def end_job(self, job: Job) -> None:
        """Forget ``job``: called when its call returns or is abandoned."""
        with self._lock:
            self._held.pop(job.id, None)
            self._active.discard(job.id)
