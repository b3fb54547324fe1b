"""The parallel half of the dispatch engine: one run's window of chunks in
flight, retries, notes on errors, and results put back in input order.
``_dispatch._Run.parallel`` drives it; see ``_dispatch`` for the whole picture.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from itertools import islice
from typing import TYPE_CHECKING, Any

from . import _planner
from .backends.base import Backend, Chunk, Outcome
from .errors import note_item, stop_iteration_error

if TYPE_CHECKING:
    from ._dispatch import _Run

__all__ = ["Flow"]


_HOLE = object()  # a result slot waiting for its item's retry


class Flow:
    """One parallel run's bookkeeping: the bounded window of chunks in
    flight, retries, notes on errors, and putting results back in order."""

    def __init__(self, run: _Run, backend: Backend, sizer: _planner.ChunkSizer) -> None:
        self.run = run
        self.backend = backend
        self.sizer = sizer
        self.ordered = run.options.ordered
        self.in_flight = 0
        self.exhausted = False
        self.input_error: BaseException | None = None
        self.raised: BaseException | None = None
        self.starts: list[int] = []  # ascending starts of chunks not fully answered
        self.chunks: dict[int, tuple[list[Any], list[int]]] = {}  # start -> (items, [unanswered])
        self.attempts: dict[int, int] = {}
        self.holes: dict[int, Outcome] = {}  # retried index -> the outcome it belongs in
        self.held: dict[int, Outcome] = {}  # ordered: outcomes waiting for earlier ones
        self.next_out = run.index
        self.failure: tuple[int, BaseException] | None = None  # ordered: raise on reaching it

    def fill(self) -> None:
        """Submit chunks until two per worker are in flight: one running, one
        queued behind it. A worker's queue is its own (that is how a crash
        names its item), so any deeper queue would leave one worker busy at
        the end while another idles; as chunks shrink toward the end, the
        queued one is small."""
        run = self.run
        window = 2 * run.workers
        while not self.exhausted and len(self.chunks) < window:
            remaining = None if run.total is None else run.total - run.index
            size = self.sizer.next(remaining)
            taken, run.first_item = run.first_item, []
            try:
                # extend() keeps what it read before an exception from the input
                taken.extend(islice(run.iterator, size - len(taken)))
            except Exception as exc:  # the input itself failed: finish what was read first
                self.input_error, self.exhausted = exc, True
            if len(taken) < size:
                self.exhausted = True
            if taken:
                self._submit(Chunk(run.job, run.index, taken))
                self.starts.append(run.index)  # inputs are read in order: stays sorted
                self.chunks[run.index] = (taken, [len(taken)])
                run.index += len(taken)

    def _submit(self, chunk: Chunk) -> None:
        self.backend.submit(chunk)
        self.in_flight += len(chunk.items)

    def receive(self, outcome: Outcome) -> Iterator[list[Any]]:
        """Account for ``outcome``; yield whatever results it makes ready."""
        run = self.run
        self.in_flight -= len(outcome.values)
        self.sizer.observe(len(outcome.values), outcome.busy)
        run._account(outcome)
        parent = self.holes.pop(outcome.start, None) if len(outcome.values) == 1 else None
        self._settle(outcome, parent)
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

    def _settle(self, outcome: Outcome, parent: Outcome | None) -> None:
        """Note each error; retry it, keep it (errors="return") or raise it.
        ``parent``: the outcome whose hole ``outcome`` (a retry) fills."""
        position = bisect.bisect_right(self.starts, outcome.start) - 1
        chunk_start = self.starts[position]
        items, unanswered = self.chunks[chunk_start]
        retried = 0
        for index, exc in sorted(outcome.errors.items()):
            item = items[index - chunk_start]
            if isinstance(exc, StopIteration):  # raised by the function in a worker
                exc = stop_iteration_error(self.run.job.fn, exc)
            slot = index - outcome.start
            if self.run._retryable(exc, self.attempts.get(index, 0)):
                self.attempts[index] = self.attempts.get(index, 0) + 1
                outcome.values[slot] = _HOLE
                if parent is not None:
                    self.holes[index] = parent  # still missing from the same parent
                else:
                    outcome.missing += 1
                    self.holes[index] = outcome
                self._submit(Chunk(self.run.job, index, [item]))
                retried += 1
                continue
            note_item(exc, index, item)
            outcome.values[slot] = exc
            if self.run.return_errors:
                continue
            if not self.ordered or self.run.eager_errors:
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
