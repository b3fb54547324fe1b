"""The one dispatch engine every call goes through, whatever the backend.

    items --> [probe: first items run here, timed] --> planner decides
                 |                                          |
                 | serial                                   | pool
                 v                                          v
           plain loop here              cut into chunks --> backend.submit
                                        (bounded window: ~2 chunks per worker,
                                         so the input is read lazily)
                                        backend.wait --> outcomes --> reorder
                                        (input order, or completion order)

Results come out in batches (lists) so that ``f(items)`` can extend a list
without a generator step per item, while ``f.iter`` flattens them lazily.
An error either stands in its item's place (``errors="return"``) or stops the
call: pending work is cancelled and the exception is raised with a note
naming the item. ``break``, ``close()``, garbage collection and Ctrl-C all
run the same cancel path; Ctrl-C also kills the pool's workers.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import operator
import time
import warnings
from collections.abc import Callable, Generator, Iterable, Iterator
from itertools import islice
from typing import Any

from . import _planner, _scope
from ._options import Options
from ._pickling import explain_item, explain_unpicklable, is_wrapper
from ._progress import make_progress
from .backends.base import Chunk, Job, Outcome
from .errors import ParloopWarning, WorkerCrashedError, add_note, short_repr

__all__ = ["run"]

SERIAL_BATCH = 1024
SLOWEST = 5  # how many of the slowest items a plan reports


def _length(items: Iterable[Any]) -> int | None:
    try:
        return len(items)  # type: ignore[arg-type]
    except TypeError:
        hint = operator.length_hint(items, -1)
        return hint if hint > 0 else None


def _note(exc: BaseException, index: int, item: Any) -> BaseException:
    add_note(exc, f"parloop: raised by item #{index}: {short_repr(item)}")
    return exc


def _caller(job: Job) -> Callable[[Any], Any]:
    if not job.star and not job.args and not job.kwargs:
        return job.fn
    return job.call


class _Run:
    """The state of one call, from the first item to the plan's last number."""

    def __init__(self, fn: Callable[..., Any], items: Iterable[Any], args: tuple[Any, ...],
                 kwargs: dict[str, Any], options: Options, block: _scope.Block | None) -> None:
        self.options = options
        self.block = block
        self.total = _length(items)
        self.iterator = iter(items)
        self.index = 0  # of the next item to read from the input
        self.workers = options.worker_count()
        self.job = Job(fn, args, kwargs, options.star, options.errors == "raise", options.timeout)
        self.return_errors = options.errors == "return"
        self.started = time.perf_counter()
        self.plan = _planner.Plan("serial", 1, None, "")
        self.first_item: list[Any] = []  # read ahead to check picklability; not yet run
        self.verdict: _planner.Verdict | None = None
        self.unpicklable: BaseException | None = None
        self.slowest: list[tuple[float, int]] = []  # a min-heap: the 5 slowest (seconds, index)

    # -- serial -----------------------------------------------------------------------

    def _fail(self, exc: BaseException, item: Any) -> Any:
        _note(exc, self.index - 1, item)
        if self.return_errors:
            return exc
        raise exc

    def serial(self, limit: int | None = None) -> Iterator[list[Any]]:
        """Run up to ``limit`` items (all when None) in the caller."""
        call = _caller(self.job)
        source = self.iterator if limit is None else islice(self.iterator, limit)
        while True:
            batch: list[Any] = []
            append = batch.append
            for item in islice(source, SERIAL_BATCH):
                self.index += 1
                try:
                    append(call(item))
                except Exception as exc:
                    append(self._fail(exc, item))
            if batch:
                yield batch
            if len(batch) < SERIAL_BATCH:
                return

    def probe(self, startup: float, method: str) -> Iterator[list[Any]]:
        """Run items here, timed, until the planner has seen enough."""
        probe = _planner.Probe(self.total, self.workers, startup, method)
        call = _caller(self.job)
        clock = time.perf_counter
        for item in self.iterator:
            self.index += 1
            began = clock()
            try:
                result = call(item)
            except Exception as exc:
                result = self._fail(exc, item)
            probe.times.append(clock() - began)
            self._note_time(probe.times[-1], self.index - 1)
            if self.index == 1:
                probe.measure_transfer(item, result)
            yield [result]
            if probe.done(self.index):
                break
        self.verdict = probe.verdict(self.index)
        self.unpicklable = probe.picklable

    # -- parallel ---------------------------------------------------------------------

    def parallel(self, lease: _scope.Lease, sizer: _planner.ChunkSizer) -> Iterator[list[Any]]:
        backend = lease.backend
        job = self.job
        backend.start_job(job)
        starts: list[int] = []  # chunk starts, ascending, of chunks not fully answered
        chunks: dict[int, tuple[list[Any], list[int]]] = {}  # start -> (items, [unanswered])
        attempts: dict[int, int] = {}
        held: dict[int, Outcome] = {}  # input order: outcomes waiting for earlier ones
        next_out = self.index
        in_flight = 0
        input_error: BaseException | None = None
        exhausted = False
        ordered = self.options.ordered
        broken = False
        try:
            while True:
                window = 2 * self.workers * max(1, sizer.next(None))
                while not exhausted and in_flight < window:
                    remaining = None if self.total is None else self.total - self.index
                    size = sizer.next(remaining)
                    try:
                        taken = self.first_item + list(islice(self.iterator, size - len(self.first_item)))
                    except Exception as exc:  # the input itself failed: finish what was read
                        input_error, exhausted, taken = exc, True, []
                    self.first_item = []
                    if len(taken) < size:
                        exhausted = True
                    if taken:
                        backend.submit(Chunk(job, self.index, taken))
                        bisect.insort(starts, self.index)
                        chunks[self.index] = (taken, [len(taken)])
                        self.index += len(taken)
                        in_flight += len(taken)
                if in_flight == 0:
                    break
                for outcome in backend.wait(job, None):
                    in_flight -= len(outcome.values)
                    sizer.observe(len(outcome.values), outcome.busy)
                    self._account(outcome)
                    retry = self._settle(outcome, starts, chunks, attempts)
                    for index, item in retry:
                        backend.submit(Chunk(job, index, [item]))
                        in_flight += 1
                        outcome.values[index - outcome.start] = _RETRIED
                    if not ordered:
                        ready = [v for v in outcome.values if v is not _RETRIED]
                        if ready:
                            yield ready
                        continue
                    held[outcome.start] = outcome
                    while next_out in held:
                        piece = held.pop(next_out)
                        next_out += len(piece.values)
                        ready = [v for v in piece.values if v is not _RETRIED]
                        if ready:
                            yield ready
            if input_error is not None:
                raise input_error
        except BaseException as exc:
            backend.cancel(job)
            # Ctrl-C (not a task that raised KeyboardInterrupt): kill the workers now.
            broken = not isinstance(exc, (Exception, GeneratorExit)) \
                and not getattr(exc, "_parloop_task", False)
            raise
        finally:
            backend.end_job(job)
            lease.release(broken)

    def _settle(self, outcome: Outcome, starts: list[int],
                chunks: dict[int, tuple[list[Any], list[int]]],
                attempts: dict[int, int]) -> list[tuple[int, Any]]:
        """Note each error, decide retries, raise the first error if asked to."""
        position = bisect.bisect_right(starts, outcome.start) - 1
        chunk_start = starts[position]
        items, unanswered = chunks[chunk_start]
        retry: list[tuple[int, Any]] = []
        for index, exc in sorted(outcome.errors.items()):
            item = items[index - chunk_start] if 0 <= index - chunk_start < len(items) else None
            if self._retryable(exc, attempts.get(index, 0)):
                attempts[index] = attempts.get(index, 0) + 1
                retry.append((index, item))
                continue
            _note(exc, index, item)
            if not self.return_errors:
                exc._parloop_task = True  # type: ignore[attr-defined]
                raise exc
            outcome.values[index - outcome.start] = exc
        unanswered[0] -= len(outcome.values) - len(retry)
        if unanswered[0] <= 0:
            del chunks[chunk_start]
            starts.pop(position)
        return retry

    def _retryable(self, exc: BaseException, attempts: int) -> bool:
        if attempts >= self.options.retries:
            return False
        return isinstance(exc, (WorkerCrashedError, *self.options.retry_on))

    def _note_time(self, seconds: float, index: int) -> None:
        if len(self.slowest) < SLOWEST:
            heapq.heappush(self.slowest, (seconds, index))
        elif seconds > self.slowest[0][0]:
            heapq.heapreplace(self.slowest, (seconds, index))

    def _account(self, outcome: Outcome) -> None:
        self._note_time(*outcome.slowest)
        if outcome.worker:
            seconds = self.plan.worker_seconds
            seconds[outcome.worker] = seconds.get(outcome.worker, 0.0) + outcome.busy


_RETRIED = object()




def _peek(state: _Run) -> bool:
    """Read one item ahead (kept in ``first_item``); False when the input is done."""
    if not state.first_item:
        try:
            state.first_item = [next(state.iterator)]
        except StopIteration:
            return False
    return True


def _unpicklable(state: _Run) -> BaseException | None:
    """Why the call cannot be sent to a process (function, arguments, first item)."""
    job = state.job
    error = explain_unpicklable(job.fn, job.args, job.kwargs, job.star)
    if error is None and state.first_item:
        error = explain_item(state.index, state.first_item[0])
    return error


def _auto(state: _Run, options: Options, block: _scope.Block | None) -> Iterator[list[Any]]:
    """Probe, then choose serial or process; sets ``state.plan``."""
    method = _start_method(options)
    warm = _scope.is_warm("process", state.workers, options, block)
    startup = 0.0 if warm else _planner.startup_estimate(method, state.workers)
    yield from state.probe(startup, method)
    verdict = state.verdict
    assert verdict is not None
    state.plan.backend, state.plan.reason = "serial", verdict.reason
    if verdict.serial_more is None:
        return
    if verdict.serial_more:
        yield from state.serial(verdict.serial_more)
    if not _peek(state):
        return  # the input ended before the pool would have paid off
    problem = state.unpicklable or _unpicklable(state)
    if problem is not None:
        state.plan.reason = f"cannot send the work to a process ({problem}); ran serially"
        warnings.warn(f"parloop: {state.plan.reason}. Use backend='thread' to run it in "
                      "threads, or make it picklable.", ParloopWarning, stacklevel=5)
        return
    state.plan.backend = "process"


def run(fn: Callable[..., Any], items: Iterable[Any], args: tuple[Any, ...],
        kwargs: dict[str, Any], options: Options, block: _scope.Block | None,
        record: Callable[[_planner.Plan], None]) -> Generator[list[Any], None, None]:
    """Run ``fn`` over ``items``; yield lists of results. See the module docstring."""
    state = _Run(fn, items, args, kwargs, options, block)
    progress = make_progress(options.progress, state.total, getattr(fn, "__name__", "parloop"))
    try:
        for batch in _execute(state, options, block):
            if progress is not None:
                progress.update(len(batch))
            yield batch
    finally:
        if progress is not None:
            progress.close()
        plan = state.plan
        plan.items = state.index
        plan.wall_seconds = time.perf_counter() - state.started
        if plan.backend == "serial":
            plan.workers = 1
            plan.caller_seconds = plan.wall_seconds
        plan.slowest = sorted(((i, t) for t, i in state.slowest if i >= 0),
                              key=lambda pair: -pair[1])
        record(plan)


def _execute(state: _Run, options: Options, block: _scope.Block | None) -> Iterator[list[Any]]:
    plan = state.plan
    plan.backend, plan.reason = _planner.static_choice(options, state.workers, state.total)
    if plan.backend == "auto":
        yield from _auto(state, options, block)
    elif plan.backend == "process" and _peek(state):
        problem = _unpicklable(state)
        if problem is not None:
            raise problem
    plan.caller_seconds = time.perf_counter() - state.started
    if plan.backend == "serial":
        if state.first_item:
            state.iterator = itertools.chain(state.first_item, state.iterator)
            state.first_item = []
        yield from state.serial()
        return
    plan.workers = state.workers
    lease = _scope.lease(plan.backend, state.workers, options, block)
    sizer = _planner.ChunkSizer(state.workers, options.chunksize,
                                state.verdict.per_item if state.verdict else None)
    plan.chunksize = sizer.next(None if state.total is None else state.total - state.index)
    yield from state.parallel(lease, sizer)


def _start_method(options: Options) -> str:
    if options.start_method is not None:
        return options.start_method
    from .backends.process import default_start_method
    return default_start_method()


def unwrap_callable(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A parloop-decorated function passed to ``pool.map`` runs undecorated."""
    return fn.__wrapped__ if is_wrapper(fn) else fn  # type: ignore[attr-defined]
