"""The one engine every call goes through, whatever the backend.

    items --> static choice (facts: one item, a worker, timeout=, backend=)
                 |
                 | auto: the probe runs the first items here, timed
                 v          (_serial.SerialLoop.probe, _planner.Probe)
              planner's verdict -------------------------------.
                 | serial                                       | pool
                 v                                              v
           plain loop here                       lease a backend (_scope), maybe
           (_serial.SerialLoop.run)              starting it in a thread while the
                                                 caller runs items (_overlap)
                                                        |
                                                        v
                                          _flow.Flow: chunks (sized by the
                                          planner's ChunkSizer) --> backend.submit
                                          backend.wait --> outcomes --> retries,
                                          input order or completion order
                 \\___________________________  _________________/
                                             \\/
                                   batches of results; the Plan
                                   (_stats.RunStats.finish)

One call's state lives in its parts: the items (``_input.Input``), what an
error does (``_policy.ErrorPolicy``), what was measured (``_stats.RunStats``),
the loop in the caller (``_serial.SerialLoop``) and the parallel window
(``_flow.Flow``). This module only decides which of them runs.

Results come out in batches (lists), so that ``f(items)`` extends a list
without a generator step per item while ``f.iter`` flattens them lazily.
``break``, ``close()``, garbage collection and Ctrl-C all run the same
cancel path; Ctrl-C also kills the pool's workers.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import TYPE_CHECKING, Any, cast

from . import _costs, _known, _scope, _threads
from ._chunks import ChunkSizer
from ._flow import Flow
from ._headstart import HeadStart, arrange
from ._input import Input
from ._options import Options
from ._overlap import start_while_working
from ._pickling import explain_item, explain_unpicklable
from ._plan import Plan, format_seconds
from ._policy import ErrorPolicy
from ._progress import make_progress
from ._serial import SerialLoop
from ._stats import RunStats
from .backends.base import Job

if TYPE_CHECKING:
    from .backends.base import Ended
from .errors import ParloopWarning, warn

__all__ = ["Ledger", "run"]

#: told the results of items start, start + 1, ... as they are made (``checkpoint=``)
Ledger = Callable[[int, "list[Any]"], None]

# The library only emits records; configuring handlers is the application's call.


def _log(level: str, message: str, *args: Any) -> None:
    """A record on the "parloop" logger (``level``: "DEBUG", "INFO"). Without
    logging imported nobody can have asked for one, and importing it is
    ~5 ms of a first call."""
    logging = sys.modules.get("logging")
    if logging is not None:
        logging.getLogger("parloop").log(getattr(logging, level), message, *args)


def run(fn: Callable[..., Any], items: Iterable[Any], args: tuple[Any, ...],
        kwargs: dict[str, Any], options: Options, block: _scope.Block | None,
        record: Callable[[Plan], None], eager_errors: bool = True, sink: list[Any] | None = None,
        abort: threading.Event | None = None, ledger: Ledger | None = None
        ) -> Generator[list[Any], None, None]:
    """Run ``fn`` over ``items``; yield lists of results, or with ``sink``
    (a list call), add them to it. ``record`` receives the plan at the end.
    ``abort`` (set by another thread) cancels the call as it waits.
    ``ledger(start, values)`` is told every result as it is made, before
    any reordering: ``values`` are those of items ``start``, ``start + 1``..."""
    call = _Call(fn, items, args, kwargs, options, block, eager_errors, sink)
    call.loop.ledger = ledger
    call.abort = abort
    progress = make_progress(options.progress, call.source.total,
                             getattr(fn, "__name__", "parloop"))
    failed: BaseException | None = None  # a teardown's error, raised once all have run
    try:
        for batch in call.execute():
            if progress is not None:
                progress.update(len(batch))
            if sink is not None:
                sink.extend(batch)
            else:
                yield batch
    except BaseException:
        if call.job.tears_down and _end_states(call, options) is not None:
            warn(f"parloop: a teardown= function raised too: {call.plan.teardown_results}",
                 ParloopWarning)
        raise
    else:
        if call.job.tears_down:
            failed = _end_states(call, options)
    finally:
        if progress is not None:
            progress.close()
        call.stats.finish(call.plan, call.source.index, fn)
        _log("DEBUG", "%s: %s", _name(fn), call.plan)
        record(call.plan)
    if failed is not None:
        raise failed


def _end_states(call: _Call, options: Options) -> BaseException | None:
    """(``teardown=``, at the call's end.) The teardowns' results go in the
    plan; the error to raise, if one raised (see ``_state.teardown_results``)."""
    from .backends._state import teardown_results

    setup = call.job.setup
    assert setup is not None  # only a job with a teardown ends states
    ended = [(answer.worker, answer.value, answer.error) for answer in call.ended]
    call.plan.teardown_results, error = teardown_results(setup, ended, options.errors == "return")
    return error


class _Call:
    """One call: its parts, and the decisions that pick which of them runs."""

    def __init__(self, fn: Callable[..., Any], items: Iterable[Any], args: tuple[Any, ...],
                 kwargs: dict[str, Any], options: Options, block: _scope.Block | None,
                 eager_errors: bool, sink: list[Any] | None) -> None:
        self.options, self.block = options, block
        self.source = Input(items)
        self.policy = ErrorPolicy(fn, options, eager_errors)
        self.stats = RunStats()
        setup = None
        if options.setup is not None:
            from .backends._state import setup_for

            setup = setup_for(options.setup, options.teardown)
        self.job = Job(fn, args, kwargs, options.star, self.policy.stop_on_error, options.timeout,
                       setup)
        # An iterator, an async call or a progress bar gets a batch at least
        # every 20 ms; a list call runs serial work in big batches (fastest).
        responsive = not eager_errors or bool(options.progress)
        self.loop = SerialLoop(self.job.caller(), self.source, self.policy, self.stats,
                               responsive, sink)
        self.plan = Plan("serial", 1, None)
        self.pool: _costs.PoolCost | None = None  # once the planner has asked
        self.abort: threading.Event | None = None
        self.head: HeadStart | None = None
        self.history: dict[str, float] = {}  # what earlier calls measured (_costs.recall)
        self._workers: int | None = None
        self.ended: list[Ended] = []  # teardown=: what the workers' teardowns gave back

    @property
    def workers(self) -> int:
        # Read when first needed: the first read of the CPU limits costs ~0.5 ms,
        # more than a whole call of tiny work.
        if self._workers is None:
            self._workers = self.options.worker_count()
        return self._workers

    def execute(self) -> Iterator[list[Any]]:
        plan = self.plan
        plan.backend, plan.reason = _known.static_choice(self.options, self.source.total)
        if plan.backend == "auto":
            try:
                yield from self._auto()
            except BaseException:
                self._drop_head()
                raise
        elif plan.backend == "process" and self.source.peek():
            problem = self._unpicklable()
            if problem is not None:
                raise problem
        plan.caller_seconds = time.perf_counter() - self.stats.started
        if self.loop.ran_on:
            return
        if plan.backend == "serial":
            self.source.put_back()
            yield from self.loop.run()
            return
        plan.workers = self.workers
        recycle = self.options.max_items_per_worker
        if recycle is not None and plan.backend == "process":
            why = plan.why
            plan.reason = lambda: f"{why}; a worker is replaced after max_items_per_worker={recycle}"
        lease = yield from self._lease()
        if lease is None:
            return  # the input ran out while the pool was starting
        self.job.item_seconds = plan.per_item
        sizer = ChunkSizer(self.workers, self.options.chunksize, plan.per_item)
        plan.chunksize = sizer.next(self.source.remaining)
        flow = Flow(self.job, self.source, self.policy, self.stats, lease.backend, sizer,
                    self.workers, self.options.ordered, self.abort)
        flow.ledger = self.loop.ledger
        if self.head is not None and self.loop.head_started:
            flow.adopt(self.head.sent)
        if self.options.backend == "auto" and self.stats.caller_per_item:
            # Proven once per function (again: 8 x 57 ms took 318 ms, not 244);
            # then the plan has the workers' slowdown ("ratio"), and their first
            # items against the probe's earlier ones would show how the cost
            # moves with the index, not the workers' speed.
            proving = plan.backend == "process" and not self.loop.head_started \
                and self.job.setup is None and "process" not in self.history
            if proving or "ratio" not in self.history:
                flow.serial_cost = self.stats.caller_per_item
            if proving:
                flow.prove(_run_here(self.job.caller()))
                self.stats.beside = True
        broken = False
        try:
            yield from flow.run()
        except BaseException as exc:
            # Ctrl-C (not a task that raised KeyboardInterrupt): kill the workers now.
            broken = not isinstance(exc, (Exception, GeneratorExit)) and exc is not flow.raised
            raise
        finally:
            self.ended, self.stats.proven = flow.ended, flow.proven
            lease.release(broken)
            self._shipped()
        if flow.retreated and self.source.peek():
            self._retreat(sizer.per_item or 0.0, flow.caller_cost() or 0.0)
            yield from self.loop.run()

    def _shipped(self) -> None:
        """Say how the extra arguments reached process workers."""
        ways, plan = self.job.args_by, self.plan
        if not ways:
            return
        why = plan.why
        how = {frozenset({"fork"}): "inherited by fork (not pickled)",
               frozenset({"pickle"}): "pickled once, sent to each worker",
               }.get(frozenset(ways), "inherited by the workers forked during this call, "
                                      "pickled for the others")
        plan.reason = lambda: f"{why}; extra arguments {how}"

    def _auto(self) -> Iterator[list[Any]]:
        """Probe (unless what earlier calls measured already decides), then
        choose serial, threads or processes."""
        plan = self.plan
        history = self.history = _costs.recall(self.job.fn)
        verdict = _known.from_history(self.source.total, history, self._pool_cost,
                                        self.options.thread_safe)
        self.stats.caller_per_item = history.get("serial")
        if verdict is None:
            # With setup=, the caller runs items only while it measures, and
            # alone: no thread trial (a state is per thread), no head start.
            alone = self.job.setup is not None
            self.loop.threads, self.loop.history = self.options.thread_safe and not alone, history
            if not history and not alone:  # nothing known about the function: its first call
                self.head = arrange(self.job, self.source, self.options, self.block,
                                    lambda: self.workers)
            yield from self.loop.probe(self._pool_cost, self.head)
            if self.loop.head_started:
                self._headed()
                return
            verdict = self.loop.verdict
            assert verdict is not None
            self.stats.caller_per_item, self.stats.probed = verdict.per_item, True
            _costs.remember(self.job.fn, self.loop.cpu_share, "share")
            if self.loop.blas_free is not None:  # 0: its items do not use BLAS's threads
                _costs.remember(self.job.fn, 0.0 if self.loop.blas_free else 1.0, "blas")
            if self.loop.transfer is not None:
                _costs.remember(self.job.fn, self.loop.transfer, "transfer")
            if self.loop.trial_speedup is not None and self.loop.trial_sure:
                _costs.remember(self.job.fn, self.loop.trial_speedup,
                                _threads.kept_as(self.loop.trial_cut, history))
        plan.backend, plan.why, plan.per_item = "serial", verdict.reason, verdict.per_item
        if verdict.serial_more is None and self.loop.prober is not None:
            # Serial, watching the items' cost as they run (SerialLoop.watch).
            verdict = yield from self.loop.watch(verdict)
            if verdict is None:
                return
            plan.why = verdict.reason
            self.stats.caller_per_item = plan.per_item = verdict.per_item
        if verdict.serial_more is None:
            return
        if verdict.backend == "thread":
            plan.backend, self._workers = "thread", verdict.workers
            left = self.source.remaining
            if self.job.setup is None and _threads.runs_on(verdict.workers, left, verdict.per_item):
                why, plan.workers = plan.why, 2
                plan.reason = lambda: (f"{why}; the rest ran on the caller and one helper "
                                       f"thread, as the trial did: {left} items, too few for "
                                       f"a thread pool's hand-over")
                yield from self.loop.run_on(verdict.per_item)
            return
        if verdict.serial_more:
            yield from self.loop.run(verdict.serial_more)
        if not self.source.peek():
            return  # the input ended before the pool would have paid off
        problem = self.loop.unpicklable or self._unpicklable()
        if problem is not None:
            plan.reason = f"cannot send the work to a process ({problem}); ran serially"
            _log("INFO", "%s: fell back to serial: %s", _name(self.job.fn), problem)
            warn(f"parloop: {plan.reason}. Use backend='thread' to run it in threads, or "
                 "make it picklable.", ParloopWarning)
            return
        plan.backend = "process"

    def _retreat(self, worker_cost: float, here: float) -> None:
        """The workers ran items slower than the caller: it runs the rest."""
        plan, why = self.plan, self.plan.why
        left, workers = self.source.remaining, self.workers
        plan.reason = lambda: (
            f"{why}; but the workers measured ~{format_seconds(worker_cost)} per item, slower "
            f"on {workers} than ~{format_seconds(here)} here: ran the last "
            f"{left if left is not None else 'items'} here")

    def _headed(self) -> None:
        """The first item ran long enough that a pool was started beside it,
        and the pool has taken the next items."""
        head, plan, loop = self.head, self.plan, self.loop
        assert head is not None and head.fired_at is not None
        self.stats.beside = True
        first, after, sent, here = loop.first_seconds, head.fired_at, len(head.sent), \
            self.source.index - len(head.sent)
        plan.backend, plan.per_item = "process", loop.per_item
        plan.reason = lambda: (
            f"the first item ran {format_seconds(first)}; {format_seconds(after)} into it a "
            f"pool started in the background (a head start), and took {sent} items once up, "
            f"while the caller ran {here}")

    def _drop_head(self) -> None:
        """The call ended in the probe (an item raised, or the consumer
        left): what a head start sent is cancelled, and its pool given back
        (one still starting is given back once up)."""
        if self.head is None:
            return
        lease = self.head.close()
        if lease is not None:
            lease.backend.cancel(self.job)
            lease.backend.end_job(self.job)
            lease.release()

    def _lease(self) -> Generator[list[Any], None, _scope.Lease | None]:
        """The backend to run on: leased here, or started in a thread while
        the caller runs items (a pool that does not fork the caller)."""
        name, workers, options = self.plan.backend, self.workers, self.options
        if self.head is not None and self.loop.head_started:
            return cast(_scope.Lease, self.head.lease)
        if self.pool is None or not self.pool.overlap or name != "process" \
                or self.job.setup is not None:
            return _scope.lease(name, workers, options, self.block)
        _scope.prepare(name, options)  # what must happen in this thread first
        lease = yield from start_while_working(
            lambda: _scope.lease(name, workers, options, self.block), self.loop,
            self.plan.per_item or 0.0, self.pool.startup)
        self.plan.caller_seconds = time.perf_counter() - self.stats.started
        if lease is None:
            why = self.plan.why
            self.plan.backend = "serial"
            self.plan.reason = lambda: (f"{why}; the caller ran every item while the pool was "
                                        "starting (it stays warm for the next call)")
        return lease

    def _pool_cost(self) -> _costs.PoolCost:
        warm = _scope.is_warm("process", self.workers, self.options, self.block)
        self.pool = _costs.pool_cost(self.options, self.workers, warm,
                                       self.head is not None and self.head.busy)
        return self.pool

    def _unpicklable(self) -> BaseException | None:
        """Why the call cannot go to a process (function, arguments, first item).
        Arguments that a pool forked now will inherit are not pickled, so
        they are not tried (a 2-million-item list takes ~35 ms to try)."""
        job, first = self.job, self.source.peek()
        args, kwargs = (job.args, job.kwargs) if not self._forks_now() else ((), {})
        return explain_unpicklable(job.fn, args, kwargs, job.star) or \
            (explain_item(self.source.index, self.source.ahead) if first else None)

    def _forks_now(self) -> bool:
        """Whether this call's process pool will be forked from here, now."""
        from ._cpu import default_start_method

        method = self.options.start_method or default_start_method()
        return method == "fork" and not _scope.is_warm("process", self.workers, self.options,
                                                       self.block)


def _run_here(call: Callable[[Any], Any]) -> Callable[[Any], tuple[Any, Exception | None]]:
    def run(item: Any) -> tuple[Any, Exception | None]:
        try:
            return call(item), None
        except Exception as exc:  # settled by the flow, as a worker's would be
            return None, exc
    return run


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)
