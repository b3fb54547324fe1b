"""The parallel half of the engine: a bounded window of chunks in flight on
a backend, retries, and results put back in input order."""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ._chunks import ChunkSizer
from ._input import Input
from ._policy import ErrorPolicy
from ._stats import RunStats
from .backends.base import Backend, Chunk, Job, Outcome
from .errors import stop_iteration_error

if TYPE_CHECKING:
    from .backends.base import Ended

__all__ = ["Flow"]


_HOLE = object()  # a result slot waiting for its item's retry
ABORT_CHECK_SECONDS = 0.05
RETREAT = 1.25  # the pool's seconds per item over the caller's that send the rest back
RETREAT_AFTER = 3  # items the workers must have reported first
PROVE_SECONDS = 0.002  # a first chunk's work (the caller's measure) while the pool is unproven
PROVE_POLL = 0.0002  # seconds to look for the workers' reports between items run here
HERE = "caller"  # the worker name of items the caller ran itself


class Flow:
    """One call's items on one backend. ``run`` submits chunks until two
    per worker are in flight (one running, one queued), collects outcomes,
    retries what the policy allows, and yields results in input order (or
    as they come, ``ordered=False``)."""

    def __init__(self, job: Job, source: Input, policy: ErrorPolicy, stats: RunStats,
                 backend: Backend, sizer: ChunkSizer, workers: int, ordered: bool,
                 abort: threading.Event | None = None) -> None:
        self.job = job
        self.source = source
        self.policy = policy
        self.stats = stats
        self.backend = backend
        self.sizer = sizer
        self.window = 2 * workers
        self.ordered = ordered
        self.abort = abort  # set by another thread: cancel the call
        self.ledger: Callable[[int, list[Any]], None] | None = None  # told each result made
        self.in_flight = 0
        self.exhausted = False
        self.input_error: BaseException | None = None
        self.raised: BaseException | None = None  # the error this flow raised itself
        self.ended: list[Ended] = []  # teardown=: what each worker's teardown gave back
        self.starts: list[int] = []  # ascending starts of chunks not fully answered
        self.chunks: dict[int, tuple[list[Any], list[int]]] = {}  # start -> (items, [unanswered])
        self.attempts: dict[int, int] = {}
        self.holes: dict[int, Outcome] = {}  # retried index -> the outcome it belongs in
        self.held: dict[int, Outcome] = {}  # ordered: outcomes waiting for earlier ones
        self.next_out = source.index
        self.failure: tuple[int, BaseException] | None = None  # ordered: raise on reaching it
        #: auto only: the caller's seconds per item. If the workers' own reports
        #: say the pool runs items slower than the caller alone would (BLAS
        #: capped in workers, a cold cache, another OMP_NUM_THREADS), no more
        #: chunks are sent, and ``retreated`` tells the caller to run the rest.
        self.serial_cost: float | None = None
        self.retreated = False
        self.weighed = False  # the workers' first reports were held against it
        #: the caller's own items while proving: its cost now, on items next
        #: to the workers' (the probe's median is of the first items, and
        #: items whose cost rises with their index made workers look slow)
        self.here: list[float] = []
        #: (workers' seconds per item, the caller's) when the proving ended
        self.proven: tuple[float, float] | None = None
        self._workers = workers
        #: set by prove(): until the workers have reported, the caller runs
        #: items itself while it waits, through this
        self._run_here: Callable[[Any], tuple[Any, Exception | None]] | None = None

    def prove(self, run_here: Callable[[Any], tuple[Any, Exception | None]]) -> None:
        """The pool has not shown its speed on this function yet: send each
        worker one small chunk (PROVE_SECONDS of the caller's work), and
        until they have reported, run items here (``run_here(item)`` gives
        ``(result, exception)``) instead of waiting. Then either go on as
        usual or, if the workers are slower (see ``_weigh``), retreat: at
        most a chunk per worker was lost to them."""
        self._run_here = run_here
        self.window = self._workers

    def adopt(self, chunks: list[Chunk]) -> None:
        """Chunks of this call already sent to the backend (a head start),
        which come first in input order."""
        for chunk in chunks:
            self.starts.append(chunk.start)
            self.chunks[chunk.start] = (chunk.items, [len(chunk.items)])
            self.in_flight += len(chunk.items)
        if chunks:
            self.next_out = min(self.next_out, chunks[0].start)

    def run(self) -> Iterator[list[Any]]:
        """The whole parallel run; cancels what is pending if it ends early."""
        backend = self.backend
        backend.start_job(self.job)
        interrupted = False
        try:
            # With an abort event, wait in slices and look at it between them.
            timeout = None if self.abort is None else ABORT_CHECK_SECONDS
            while True:
                self.fill()
                if self.in_flight == 0:
                    break
                if self._run_here is not None and not self.exhausted:
                    # The workers' first reports are in but the caller has run
                    # none of its own beside them: one now, to weigh them by.
                    outcomes = [] if self.sizer.observed >= RETREAT_AFTER and not self.here \
                        else backend.wait(self.job, PROVE_POLL)
                    if not outcomes:
                        yield from self._one_here()
                        continue
                else:
                    outcomes = backend.wait(self.job, timeout)
                for outcome in outcomes:
                    yield from self.receive(outcome)
                if self.abort is not None and self.abort.is_set():
                    raise GeneratorExit  # as a closed iterator would: cancel, quietly
            if self.input_error is not None:
                raise self.input_error
        except BaseException as exc:
            backend.cancel(self.job)
            # Ctrl-C (not an item's KeyboardInterrupt): no teardowns, the
            # workers are about to be killed.
            interrupted = not isinstance(exc, (Exception, GeneratorExit)) \
                and exc is not self.raised
            raise
        finally:
            try:
                if self.job.tears_down and not interrupted:
                    self.ended = backend.end_states(self.job)
            finally:
                backend.end_job(self.job)
                self.stats.per_item = self.sizer.per_item

    def fill(self) -> None:
        """Submit chunks until the window is full. A worker's queue is its
        own (that is how a crash names its item), so any deeper queue would
        leave one worker busy at the end while another idles; as chunks
        shrink toward the end, the queued one is small."""
        source = self.source
        while not self.exhausted and len(self.chunks) < self.window:
            size = self.sizer.next(source.remaining)
            if self._run_here is not None and self.serial_cost:
                size = min(size, max(1, math.ceil(PROVE_SECONDS / self.serial_cost)))
            start = source.index
            taken, error = source.take(size)
            if error is not None:  # the input itself failed: finish what was read first
                self.input_error, self.exhausted = error, True
            if len(taken) < size:
                self.exhausted = True
            if taken:
                self._submit(Chunk(self.job, start, taken))
                self.starts.append(start)  # inputs are read in order: stays sorted
                self.chunks[start] = (taken, [len(taken)])

    def _one_here(self) -> Iterator[list[Any]]:
        """(Proving.) One item run in the caller, accounted as an outcome."""
        assert self._run_here is not None
        start = self.source.index
        taken, error = self.source.take(1)
        if error is not None:
            self.input_error, self.exhausted = error, True
        if not taken:
            self.exhausted = True
            return
        self.starts.append(start)
        self.chunks[start] = (taken, [1])
        self.in_flight += 1
        began = time.perf_counter()
        value, exc = self._run_here(taken[0])
        busy = time.perf_counter() - began
        yield from self.receive(Outcome(self.job.id, start, [value], {start: exc} if exc else {},
                                        busy, HERE, (busy, start)))

    def _weigh(self) -> None:
        """Once the workers have reported RETREAT_AFTER items: stop sending if,
        by their own measure, they are slower together than the caller alone
        (by RETREAT). Only then: the caller's cost is of items next to their
        first ones, and later items may cost more (or less) than either."""
        seen, per_item, caller = self.sizer.observed, self.sizer.per_item, self.caller_cost()
        if seen < RETREAT_AFTER or per_item is None or caller is None \
                or (self._run_here is not None and not self.here):
            return
        self.weighed = True
        if per_item / self._workers > RETREAT * caller:
            self.exhausted = self.retreated = True

    def caller_cost(self) -> float | None:
        """The caller's seconds per item: of its items beside the workers' when
        it ran some (both then shared the CPUs alike), else the probe's."""
        if not self.here:
            return self.serial_cost
        return sorted(self.here)[len(self.here) // 2]

    def _submit(self, chunk: Chunk) -> None:
        self.backend.submit(chunk)
        self.in_flight += len(chunk.items)

    def receive(self, outcome: Outcome) -> Iterator[list[Any]]:
        """Account for ``outcome``; yield whatever results it makes ready."""
        self.in_flight -= len(outcome.values)
        if outcome.worker == HERE:  # the caller's own items say nothing of the workers
            self.here.append(outcome.busy)
        else:
            self.sizer.observe(len(outcome.values), outcome.busy)
            if self.serial_cost is not None and not self.exhausted and not self.weighed:
                self._weigh()
            if self._run_here is not None and self.sizer.observed >= RETREAT_AFTER and self.here:
                self._run_here, self.window = None, 2 * self._workers  # proven
                caller = self.caller_cost()
                if self.sizer.per_item is not None and caller:
                    self.proven = (self.sizer.per_item, caller)
        self.job.item_seconds = self.sizer.per_item
        self.stats.account(outcome)
        parent = self.holes.pop(outcome.start, None) if len(outcome.values) == 1 else None
        if self.ledger is not None:
            self._tell(outcome, errors=False)  # before _settle, which may raise
        self._settle(outcome, parent)
        if self.ledger is not None and outcome.errors:
            self._tell(outcome, errors=True)  # errors="return": each exception in its place
        if parent is not None:  # a retried item: fill its hole
            value = outcome.values[0]
            if value is _HOLE:  # retried again; _settle put the hole back
                return
            parent.values[outcome.start - parent.start] = value
            parent.missing -= 1
            outcome = parent
            if not self.ordered:
                yield [value]
                return
        elif not self.ordered:
            ready = [v for v in outcome.values if v is not _HOLE]
            if ready:
                yield ready
            return
        else:
            self.held[outcome.start] = outcome
        while self.next_out in self.held and self.held[self.next_out].missing == 0:
            piece = self.held.pop(self.next_out)
            self.next_out += len(piece.values)
            if self.failure is not None and self.failure[0] < self.next_out:
                index, exc = self.failure
                before = piece.values[:index - piece.start]
                if before:
                    yield before
                self.raised = exc
                raise exc
            yield piece.values

    def _tell(self, outcome: Outcome, errors: bool) -> None:
        """The ledger learns ``outcome``'s results (or its settled errors)."""
        assert self.ledger is not None
        start, values, failed = outcome.start, outcome.values, outcome.errors
        if not failed:
            if not errors:
                self.ledger(start, values)
            return
        for offset, value in enumerate(values):
            if ((start + offset) in failed) == errors and value is not _HOLE:
                self.ledger(start + offset, [value])

    def _settle(self, outcome: Outcome, parent: Outcome | None) -> None:
        """Each error: retry it, keep it (errors="return") or raise it.
        ``parent``: the outcome whose hole ``outcome`` (a retry) fills."""
        position = bisect.bisect_right(self.starts, outcome.start) - 1
        chunk_start = self.starts[position]
        items, unanswered = self.chunks[chunk_start]
        retried = 0
        for index, exc in sorted(outcome.errors.items()):
            item = items[index - chunk_start]
            if isinstance(exc, StopIteration):  # the function raised it, in a worker
                exc = stop_iteration_error(self.policy.fn, exc)
            slot = index - outcome.start
            attempts = self.attempts.get(index, 0)
            if self.policy.retryable(exc, attempts):
                self.attempts[index] = attempts + 1
                outcome.values[slot] = _HOLE
                if parent is not None:
                    self.holes[index] = parent  # still missing from the same parent
                else:
                    outcome.missing += 1
                    self.holes[index] = outcome
                self._submit(Chunk(self.job, index, [item]))
                retried += 1
                continue
            exc = outcome.values[slot] = self.policy.named(exc, index, item)
            if self.policy.returns(exc):
                continue
            if not self.ordered or self.policy.eager:
                self.raised = exc
                raise exc
            # In input order, the results before this item come out first.
            if self.failure is None or index < self.failure[0]:
                self.failure = (index, exc)
            self.exhausted = True
        unanswered[0] -= len(outcome.values) - retried
        if unanswered[0] <= 0:
            del self.chunks[chunk_start]
            self.starts.pop(position)
