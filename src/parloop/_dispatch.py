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

import heapq
import itertools
import logging
import operator
import sys
import threading
import time
import warnings
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from itertools import islice
from typing import Any, cast

from . import _planner, _scope
from ._flow import Flow
from ._options import Options
from ._pickling import explain_item, explain_unpicklable
from ._planner import Plan
from ._progress import make_progress
from .backends.base import Job, Outcome
from .errors import ParloopWarning, WorkerCrashedError, note_item, stop_iteration_error

__all__ = ["run"]

# The library only emits records; configuring handlers is the application's call.
logger = logging.getLogger("parloop")

SERIAL_BATCH = 1024
RESPONSIVE_SECONDS = 0.02
SLOWEST = 5  # how many of the slowest items a plan reports
_SEQUENCES = (list, tuple, range)
_SEQUENCE_ITERATORS: tuple[type, ...] = (type(iter([])), type(iter(())), type(iter(range(0))))


def _length(items: Iterable[Any]) -> int | None:
    try:
        return len(items)  # type: ignore[arg-type]
    except TypeError:
        hint = operator.length_hint(items, -1)
        return hint if hint > 0 else None


class _Run:
    """The state of one call, from the first item to the plan's last number."""

    def __init__(self, fn: Callable[..., Any], items: Iterable[Any], args: tuple[Any, ...],
                 kwargs: dict[str, Any], options: Options, block: _scope.Block | None,
                 eager_errors: bool = True, sink: list[Any] | None = None) -> None:
        self.options = options
        # A list call raises the first error at once; an ordered iterator
        # first yields the results before the failing item, as a loop would.
        self.eager_errors = eager_errors
        # A list call runs serial work in big batches (fastest); an iterator, an
        # async call or a progress bar gets a batch at least every 20 ms.
        self.responsive = not eager_errors or bool(options.progress)
        self.block = block
        self.total = _length(items)
        self.iterator = iter(items)
        # A list, tuple or range cannot raise while it is read, and item k is
        # items[k]: the serial loop can then run in one C-level pass.
        self.sequence = cast(Sequence[Any], items) if type(items) in _SEQUENCES else None
        # A list call may have serial results added straight to its output.
        self.sink = sink if not self.responsive else None
        self.index = 0  # of the next item to read from the input
        self._workers: int | None = None
        # A chunk stops at its first error only when that error ends the call.
        stop_on_error = options.errors == "raise" and options.retries == 0
        self.job = Job(fn, args, kwargs, options.star, stop_on_error, options.timeout)
        self.return_errors = options.errors == "return"
        self.started = time.perf_counter()
        self.plan = Plan("serial", 1, None, "")
        self.first_item: list[Any] = []  # read ahead to check picklability; not yet run
        self.verdict: _planner.Verdict | None = None
        self.unpicklable: BaseException | None = None
        self.slowest: list[tuple[float, int]] = []  # a min-heap: the 5 slowest (seconds, index)
        self.sizer: _planner.ChunkSizer | None = None
        self.pool: _planner.PoolCost | None = None  # set once the planner asks

    @property
    def workers(self) -> int:
        # Read when first needed: the first read of the CPU limits costs ~0.5 ms,
        # more than a whole call of tiny work.
        if self._workers is None:
            self._workers = self.options.worker_count()
        return self._workers

    def pool_cost(self) -> _planner.PoolCost:
        """What a process pool would cost this call (for the planner)."""
        options = self.options
        workers = self.workers
        startup, overlap = 0.0, False
        if not _scope.is_warm("process", workers, options, self.block):
            method = _start_method(options)
            startup = _planner.startup_estimate(method, workers)
            # Only a pool that does not fork the caller may start from a thread.
            overlap = method != "fork"
        self.pool = _planner.PoolCost(workers, startup,
                                      options.worker_source() if workers == 1 else "", overlap)
        return self.pool

    # -- serial -----------------------------------------------------------------------

    def _recover(self, call: Callable[[Any], Any], item: Any,
                 exc: BaseException) -> tuple[bool, Any]:
        """Item ``self.index - 1`` raised ``exc`` here: retry it as allowed.
        ``(True, result)``, or ``(False, the last exception, noted)``."""
        attempts = 0
        while self._retryable(exc, attempts):
            attempts += 1
            try:
                return True, call(item)
            except Exception as again:
                exc = again
        note_item(exc, self.index - 1, item)
        return False, exc

    def serial(self, limit: int | None = None) -> Iterator[list[Any]]:
        """Run up to ``limit`` items (all when None) in the caller, in batches:
        1024 items for a list call, or ~20 ms of work when results must flow."""
        call = self.job.caller()
        if limit is None and self.sink is not None and self.sequence is not None \
                and type(self.iterator) in _SEQUENCE_ITERATORS:
            self._serial_into_sink(call, self.sink)
            return
        source = self.iterator if limit is None else islice(self.iterator, limit)
        clock = time.perf_counter
        size = 1 if self.responsive else SERIAL_BATCH
        while True:
            chunk: list[Any] = []
            input_error: BaseException | None = None
            asked = size
            try:
                chunk.extend(islice(source, asked))  # keeps what it read before an error
            except Exception as exc:
                input_error = exc
            if chunk:
                began = clock()
                batch, failure = self._serial_chunk(call, chunk)
                if batch:
                    yield batch  # the results before a failure still reach an iterator
                if failure is not None:
                    raise failure
                if self.responsive:
                    per_item = (clock() - began) / len(chunk)
                    size = max(1, min(SERIAL_BATCH, int(RESPONSIVE_SECONDS / max(per_item, 1e-9))))
            if input_error is not None:
                raise input_error
            if len(chunk) < asked:
                return

    def _serial_into_sink(self, call: Callable[[Any], Any], sink: list[Any]) -> None:
        """The rest of a list or tuple, straight into the caller's result list,
        at the speed of a plain loop. When an item raises, the results before
        it are already in ``sink``, the iterator stands just past it, and the
        item is ``sequence[index]``."""
        sequence = self.sequence
        assert sequence is not None
        while True:
            before = len(sink)
            try:
                _run_into(sink, call, self.iterator)
            except Exception as exc:
                self.index += len(sink) - before + 1
                if isinstance(exc, StopIteration):
                    exc = stop_iteration_error(self.job.fn, exc)
                ok, value = self._recover(call, sequence[self.index - 1], exc)
                if not ok and not self.return_errors:
                    raise value from value.__cause__
                sink.append(value)
                continue
            self.index += len(sink) - before
            if self.total is not None and self.index < self.total:
                # map stopped early without an exception: the function raised
                # StopIteration, which map takes for the end of its input.
                self.index += 1
                error = stop_iteration_error(self.job.fn, None)
                ok, value = self._recover(call, sequence[self.index - 1], error)
                if not ok and not self.return_errors:
                    raise value
                sink.append(value)
                continue
            return

    def _serial_chunk(self, call: Callable[[Any], Any],
                      chunk: list[Any]) -> tuple[list[Any], BaseException | None]:
        """``[call(x) for x in chunk]`` at C speed (list.extend over map keeps
        the results made before an exception), with errors handled per item."""
        start = self.index
        batch: list[Any] = []
        while len(batch) < len(chunk):
            done = len(batch)
            try:
                batch.extend(map(call, chunk[done:] if done else chunk))
                if len(batch) == len(chunk):
                    break
                # map stopped early without an exception: the function raised
                # StopIteration, which map mistakes for its own end (PEP 479).
                raise stop_iteration_error(self.job.fn, None)
            except Exception as exc:
                position = len(batch)
                self.index = start + position + 1  # for the note: item #position
                ok, value = self._recover(call, chunk[position], exc)
                if not ok and not self.return_errors:
                    return batch, value
                batch.append(value)
        self.index = start + len(chunk)
        return batch, None

    def probe(self) -> Iterator[list[Any]]:
        """Run items here, timed, until the planner has seen enough."""
        probe = _planner.Probe(self.total, self.pool_cost)
        call = self.job.caller()
        sink = self.sink
        clock = time.perf_counter
        for item in self.iterator:
            self.index += 1
            began = clock()
            try:
                result = call(item)
            except Exception as exc:
                if isinstance(exc, StopIteration):
                    exc = stop_iteration_error(self.job.fn, exc)
                ok, result = self._recover(call, item, exc)
                if not ok and not self.return_errors:
                    raise result from result.__cause__
            probe.times.append(clock() - began)
            self._note_time(probe.times[-1], self.index - 1)
            if self.index == 1:
                probe.keep_first(item, result)
            if sink is not None:
                sink.append(result)
            else:
                yield [result]
            if probe.done(self.index):
                break
        self.verdict = probe.verdict(self.index)
        self.unpicklable = probe.picklable
        self.plan.per_item = self.verdict.per_item

    # -- parallel ---------------------------------------------------------------------

    def parallel(self, lease: _scope.Lease, sizer: _planner.ChunkSizer) -> Iterator[list[Any]]:
        backend = lease.backend
        backend.start_job(self.job)
        flow = Flow(self, backend, sizer)
        broken = False
        try:
            while True:
                flow.fill()
                if flow.in_flight == 0:
                    break
                for outcome in backend.wait(self.job, None):
                    yield from flow.receive(outcome)
            if flow.input_error is not None:
                raise flow.input_error
        except BaseException as exc:
            backend.cancel(self.job)
            # Ctrl-C (not a task that raised KeyboardInterrupt): kill the workers now.
            broken = not isinstance(exc, (Exception, GeneratorExit)) and exc is not flow.raised
            raise
        finally:
            backend.end_job(self.job)
            lease.release(broken)

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


def _run_by_loop(sink: list[Any], call: Callable[[Any], Any], items: Iterator[Any]) -> None:
    append = sink.append
    for item in items:
        append(call(item))


def _run_by_map(sink: list[Any], call: Callable[[Any], Any], items: Iterator[Any]) -> None:
    sink.extend(map(call, items))


# Both keep the results made before an exception. From 3.11 a Python loop calls
# a Python function without re-entering the C stack, and beats map by ~20%;
# on 3.10 map is faster by a third (measured on 1000 calls of x*x).
_run_into = _run_by_loop if sys.version_info >= (3, 11) else _run_by_map


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


def _auto(state: _Run) -> Iterator[list[Any]]:
    """Probe (unless the function's previous call already decides), then
    choose serial or process; sets ``state.plan``."""
    state.verdict = _planner.from_history(state.total, _planner.recall(state.job.fn),
                                          state.pool_cost)
    if state.verdict is None:
        yield from state.probe()
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
        logger.info("%s: fell back to serial: %s", _name(state.job.fn), problem)
        warnings.warn(f"parloop: {state.plan.reason}. Use backend='thread' to run it in "
                      "threads, or make it picklable.", ParloopWarning, stacklevel=5)
        return
    state.plan.backend = "process"


def run(fn: Callable[..., Any], items: Iterable[Any], args: tuple[Any, ...],
        kwargs: dict[str, Any], options: Options, block: _scope.Block | None,
        record: Callable[[Plan], None], eager_errors: bool = True, sink: list[Any] | None = None
        ) -> Generator[list[Any], None, None]:
    """Run ``fn`` over ``items``; yield lists of results, or with ``sink``
    (a list call), add them to it. See the module docstring."""
    state = _Run(fn, items, args, kwargs, options, block, eager_errors, sink)
    progress = make_progress(options.progress, state.total, getattr(fn, "__name__", "parloop"))
    try:
        for batch in _execute(state, options, block):
            if progress is not None:
                progress.update(len(batch))
            if sink is not None:
                sink.extend(batch)
            else:
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
            if plan.items:
                plan.per_item = plan.wall_seconds / plan.items
        elif state.sizer is not None and state.sizer.per_item is not None:
            plan.per_item = state.sizer.per_item
        if plan.per_item is not None:
            _planner.remember(fn, plan.per_item)
        plan.slowest = sorted(((i, t) for t, i in state.slowest if i >= 0),
                              key=lambda pair: -pair[1])
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s: %s", _name(fn), plan)
        record(plan)


def _execute(state: _Run, options: Options, block: _scope.Block | None) -> Iterator[list[Any]]:
    plan = state.plan
    plan.backend, plan.reason = _planner.static_choice(options, state.total)
    if plan.backend == "auto":
        yield from _auto(state)
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
    if state.pool is not None and state.pool.overlap:
        started = yield from _start_while_working(state, block)
        if started is None:  # the input ran out before the pool was up
            why = plan.reason
            plan.backend = "serial"
            plan.reason = lambda: (f"{why}; the caller ran every item while the pool was "
                                   "starting (it stays warm for the next call)")
            return
        lease = started
        plan.caller_seconds = time.perf_counter() - state.started
    else:
        lease = _scope.lease(plan.backend, state.workers, options, block)
    sizer = state.sizer = _planner.ChunkSizer(state.workers, options.chunksize,
                                              state.verdict.per_item if state.verdict else None)
    plan.chunksize = sizer.next(None if state.total is None else state.total - state.index)
    yield from state.parallel(lease, sizer)


def _start_while_working(state: _Run, block: _scope.Block | None
                         ) -> Generator[list[Any], None, _scope.Lease | None]:
    """Start the pool in a thread and run items here until it is up, so its
    start-up (a fork server and fresh workers: ~0.2-0.5 s) costs no time.
    Only for pools that do not fork the caller: forking from a thread while
    this one runs user code could copy a lock it holds into the workers.
    An item expected to outlast the rest of the start is not begun here: the
    caller waits for the pool instead, which would otherwise idle.
    The lease, or None when the input ran out first (the pool stays warm)."""
    box: dict[str, Any] = {}

    def start() -> None:
        try:
            box["lease"] = _scope.lease("process", state.workers, state.options, block)
        except BaseException as exc:  # handed to the caller below
            box["error"] = exc

    _scope.prepare("process", state.options)  # what must happen in this thread first
    starter = threading.Thread(target=start, name="parloop-pool-start", daemon=True)
    if state.first_item:
        state.iterator = itertools.chain(state.first_item, state.iterator)
        state.first_item = []
    per_item = state.verdict.per_item if state.verdict else 0.0
    batch = max(1, int(RESPONSIVE_SECONDS / 4 / max(per_item, 1e-7)))  # check every ~5 ms
    expected = state.pool.startup if state.pool is not None else 0.0
    more = True
    _switch_often(True)
    try:
        began = time.perf_counter()
        starter.start()
        while more:
            if not starter.is_alive() and "lease" in box and box["lease"].backend.started():
                break  # up: a worker has said it is ready (a forkserver or spawn
                # worker still imports the main module after it has a pid)
            if "error" in box:
                break
            elapsed = time.perf_counter() - began
            # Left of the start: the estimate, or (past it) half again what it took so far.
            if per_item > max(expected - elapsed, elapsed / 2):
                time.sleep(0.002)
                continue
            before = state.index
            yield from state.serial(batch)
            more = state.index - before == batch
        starter.join()
        if "error" in box:
            raise box["error"]
        lease: _scope.Lease = box["lease"]
        if not more and not _peek(state):
            lease.release()
            return None
        return lease
    except BaseException as exc:
        if starter.is_alive() or starter.ident is not None:
            starter.join()
        if "lease" in box:  # killed (Ctrl-C) or merely unused (an item raised)
            box["lease"].release(not isinstance(exc, (Exception, GeneratorExit)))
        raise
    finally:
        _switch_often(False)


_switching_lock = threading.Lock()
_switching = [0, 0.0]  # callers with a pool starting now; the interval to restore after them


def _switch_often(on: bool) -> None:
    """A pool's starter thread needs the GIL for a moment at each of its many
    steps, and a CPU-bound caller hands it over only every switch interval
    (5 ms): 0.5 ms while any pool starts, or the start takes many times longer.
    Counted, so that calls starting pools at once restore the user's value."""
    with _switching_lock:
        if on:
            if _switching[0] == 0:
                _switching[1] = sys.getswitchinterval()
                sys.setswitchinterval(min(_switching[1], 0.0005))
            _switching[0] += 1
        else:
            _switching[0] -= 1
            if _switching[0] == 0:
                sys.setswitchinterval(_switching[1])


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def _start_method(options: Options) -> str:
    if options.start_method is not None:
        return options.start_method
    from ._cpu import planning_start_method
    return planning_start_method()
