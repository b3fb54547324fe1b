"""Running items in the caller: the plain loop, and the probe that times the
first items while the planner decides."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any

from . import _native
from ._costs import PoolCost
from ._headstart import HeadStart
from ._input import Input
from ._plan import Verdict
from ._planner import THREADS_GAIN, Probe
from ._policy import ErrorPolicy
from ._stats import RunStats
from ._threads import RUN_ON_BLOCK
from ._trial import run_trial

# Loaded with the engine (~1 ms), not by a trial's helper thread: imported
# there, beside the caller's items, it held the helper's first item back by
# ~2-3 ms (0.4 ms when loaded), while the caller ran alone.
from .backends import thread as _thread_backend  # noqa: F401
from .errors import stop_iteration_error

__all__ = ["SerialLoop"]

SERIAL_BATCH = 1024
#: a serial verdict's items are watched while they run (see SerialLoop.watch)
#: when at least this many are left, of at least WATCH_ITEM seconds each
WATCH_ITEMS = 8
WATCH_ITEM = 20e-6
#: each stretch timed is this many seconds of items, or this share of the time so far
STRETCH_SECONDS, STRETCH_SHARE = 0.005, 0.25
#: two stretches in a row whose items cost this much more than the verdict's:
#: the planner is asked again (one alone may be a pause, or another program)
DRIFT = 1.3
RESPONSIVE_SECONDS = 0.02


class SerialLoop:
    """Items run here, in batches: 1024 for a list call (fastest), or ~20 ms
    of work when results must flow (an iterator, an async call, a progress
    bar). ``sink``: a list call's result list, which results may go straight
    into."""

    def __init__(self, call: Callable[[Any], Any], source: Input, policy: ErrorPolicy,
                 stats: RunStats, responsive: bool, sink: list[Any] | None) -> None:
        self.call = call
        self.source = source
        self.policy = policy
        self.stats = stats
        self.responsive = responsive
        self.sink = sink if not responsive else None
        self.unpicklable: BaseException | None = None  # what the probe found
        self.verdict: Verdict | None = None
        self.head_started = False  # a head start took the items after the first
        self.first_seconds = 0.0
        self.per_item = 0.0  # the probe's median, when a head start ended it
        self.threads = False  # the probe may try threads (thread_safe=True, backend="auto")
        self.history: dict[str, float] = {}  # what earlier calls measured (_costs.recall)
        self.trial_speedup: float | None = None  # what a thread trial showed
        self.trial_sure = False  # ... over long enough to keep for later calls
        self.trial_cut = False  # ... and it stopped early (see _trial._Shared.take)
        self.ran_on = False  # the rest ran on two threads here (run_on)
        self.cpu_share = 1.0  # the CPU share of the probe's median item
        self.blas_free: bool | None = None  # what the probe's BLAS check found, if it ran
        self.transfer: float | None = None  # an item's transfer, if the probe measured it
        self.ledger: Callable[[int, list[Any]], None] | None = None  # told each result made
        self.prober: Probe | None = None  # the probe, once it has decided (see watch)

    def run(self, limit: int | None = None) -> Iterator[list[Any]]:
        """Run up to ``limit`` items (all when None)."""
        if limit is None and self.sink is not None and self.ledger is None \
                and self.source.in_sequence():
            self._into_sink(self.sink)
            return
        size = 1 if self.responsive else SERIAL_BATCH
        left = limit
        while left is None or left > 0:
            asked = size if left is None else min(size, left)
            start = self.source.index
            chunk, input_error = self.source.take(asked)
            if chunk:
                began = time.perf_counter()
                self.source.index = start  # _chunk advances it item by item, for notes
                batch, failure = self._chunk(chunk)
                if self.ledger is not None and batch:
                    self.ledger(start, batch)
                if batch:
                    yield batch  # the results before a failure still reach an iterator
                if failure is not None:
                    raise failure
                if self.responsive:
                    per_item = (time.perf_counter() - began) / len(chunk)
                    size = max(1, min(SERIAL_BATCH, int(RESPONSIVE_SECONDS / max(per_item, 1e-9))))
            if input_error is not None:
                raise input_error
            if len(chunk) < asked:
                return
            if left is not None:
                left -= len(chunk)

    def watch(self, verdict: Verdict) -> Generator[list[Any], None, Verdict | None]:
        """Run the rest here, as ``verdict`` (serial) said, in timed stretches
        (STRETCH_SECONDS, growing with the time so far): when two in a row
        cost DRIFT times what the verdict rested on, the planner decides
        again at the latest cost, and a pool it now chooses gets the rest
        (returned: the new verdict). The probe's median is of the first
        items, and blocks of primes cost ~1 ms at the start of
        examples/numeric.py and ~7 ms at its end. None: all ran here."""
        probe, left, cost = self.prober, self.source.remaining, verdict.per_item
        if probe is None or left is None or left < WATCH_ITEMS or cost < WATCH_ITEM:
            yield from self.run()
            return None
        watching, rising = time.perf_counter(), 0
        before: tuple[float, float] = (cost, self.source.index)  # (seconds per item, where)
        while left := self.source.remaining:
            seconds = max(STRETCH_SECONDS, STRETCH_SHARE * (time.perf_counter() - watching))
            stretch = max(2, math.ceil(seconds / before[0]))
            start, began = self.source.index, time.perf_counter()
            yield from self.run(stretch)
            count = self.source.index - start
            if count < stretch:
                return None  # the input ended (an iterator shorter than it said)
            took, middle = (time.perf_counter() - began) / count, start + count / 2
            rising = rising + count if took > DRIFT * cost else 0
            if rising > count and (left := left - count) > 0:
                # Rising from the last stretch to this one: the rest, at that
                # rate, averages more than this one's (never less).
                slope = max(0.0, (took - before[0]) / max(1.0, middle - before[1]))
                ahead = took + slope * (count / 2 + (left + 1) / 2)
                again = probe.reconsider(self.source.index, ahead, (rising, cost, took))
                if again.serial_more is not None:
                    return again
                cost, rising = took, 0
            before = (took, middle)
        return None

    def _into_sink(self, sink: list[Any]) -> None:
        """The rest of a list, tuple or range, straight into the caller's
        result list at the speed of a plain loop. When an item raises, the
        results before it are already in ``sink``, the iterator stands just
        past it, and the item is ``sequence[index]``."""
        source, sequence = self.source, self.source.sequence
        assert sequence is not None
        while True:
            before = len(sink)
            try:
                _run_into(sink, self.call, source.iterator)
            except Exception as exc:
                source.index += len(sink) - before + 1
                sink.append(self.policy.settle(self.call, sequence[source.index - 1], exc,
                                               source.index - 1))
                continue
            source.index += len(sink) - before
            if source.total is not None and source.index < source.total:
                # The loop stopped early without an exception: the function
                # raised StopIteration, which map takes for its input's end.
                source.index += 1
                error = stop_iteration_error(self.policy.fn, None)
                sink.append(self.policy.settle(self.call, sequence[source.index - 1], error,
                                               source.index - 1))
                continue
            return

    def _chunk(self, chunk: list[Any]) -> tuple[list[Any], BaseException | None]:
        """``[call(x) for x in chunk]`` at C speed (list.extend over map keeps
        the results made before an exception), errors settled per item."""
        start = self.source.index
        batch: list[Any] = []
        while len(batch) < len(chunk):
            done = len(batch)
            try:
                batch.extend(map(self.call, chunk[done:] if done else chunk))
                if len(batch) == len(chunk):
                    break
                # map stopped early without an exception: the function raised
                # StopIteration, which map mistakes for its own end (PEP 479).
                raise stop_iteration_error(self.policy.fn, None)
            except Exception as exc:
                position = len(batch)
                try:
                    batch.append(self.policy.settle(self.call, chunk[position], exc,
                                                    start + position))
                except Exception as failure:
                    self.source.index = start + position + 1
                    return batch, failure
        self.source.index = start + len(chunk)
        return batch, None

    def _trial(self, probe: Probe, size: int, again: bool = False
               ) -> Generator[list[Any], None, bool]:
        """Run the next ``size`` items on two threads at once (see
        ``_trial``), tell ``probe`` what that showed, and settle them in
        order, as the serial loop would have. False: a thread's warm-up
        spoilt it (see ``Trial.warmed_up``), or the two threads ran items at
        once for too little of it (the helper started late: the reading is
        mostly one thread's, see ``Trial.one_sided``)."""
        start = self.source.index
        items, error = self.source.take(size)
        if not items:
            if error is not None:
                raise error
            return True
        # A trial may stop early (see _trial._Shared.take), unless the input
        # raised after these items: that error must stay after them.
        trial = run_trial(self.call, items,
                          per_item=probe.per_item() if error is None else None,
                          wins=THREADS_GAIN)
        if len(trial.results) < len(items):  # it stopped early: the rest goes back
            self.source.give_back(items[len(trial.results):])
            items = items[:len(trial.results)]
        trial.again = again
        probe.note_trial(trial)
        self.trial_speedup = probe.trial_speedup
        self.trial_sure = trial.sure() and probe.trial_speedup is not None  # else this call's
        self.trial_cut = trial.cut is not None
        yield from self._settled(trial.results, items, start)
        if error is not None:
            raise error
        if probe.trial_speedup is None:
            return True  # a reading of more than two threads can: probed again, not tried
        if trial.one_sided() and not trial.failed:
            return False
        return trial.failed or trial.cut is not None or trial.steady() is not None \
            or not trial.warmed_up()

    def run_on(self, per_item: float) -> Iterator[list[Any]]:
        """Run the rest on two threads at once, as a trial does, untimed,
        each taking ~RUN_ON_BLOCK seconds of items at a time (see
        ``_threads.runs_on``)."""
        self.ran_on = True
        start = self.source.index
        items, error = self.source.take(self.source.remaining or 0)
        if items:
            block = max(1, int(RUN_ON_BLOCK / max(per_item, 1e-9)))
            yield from self._settled(run_trial(self.call, items, block=block).results, items,
                                     start)
        if error is not None:
            raise error

    def _settled(self, results: list[tuple[Any, BaseException | None]], items: list[Any],
                 start: int) -> Iterator[list[Any]]:
        """Items run on two threads (``items[k]`` gave ``results[k]``, a value
        or an exception), out in order with their errors settled, as the
        serial loop would have."""
        batch: list[Any] = []
        for offset, (result, exc) in enumerate(results):
            if exc is not None:
                if not isinstance(exc, Exception):
                    raise exc  # SystemExit and the like, raised in the helper thread
                try:
                    result = self.policy.settle(self.call, items[offset], exc, start + offset)
                except Exception:
                    if batch:
                        yield from self._emit(batch, start)
                    raise
            batch.append(result)
        yield from self._emit(batch, start)

    def _emit(self, batch: list[Any], start: int) -> Iterator[list[Any]]:
        """``batch``, the results of items ``start``, ``start + 1``..., out."""
        if self.ledger is not None:
            self.ledger(start, batch)
        if self.sink is not None:
            self.sink.extend(batch)
        else:
            yield batch

    def probe(self, pool: Callable[[], PoolCost], head: HeadStart | None = None
              ) -> Iterator[list[Any]]:
        """Run items here, timed, until the planner has seen enough; its
        verdict is then ``self.verdict``. With ``head``, a head start armed
        around the first item: when it fires, the items after the first are
        taken through it, and once its pool has taken the next ones the
        probe ends with ``head_started`` set and no verdict."""
        probe = Probe(self.source.total, pool, threads=self.threads, history=self.history)
        call, source, clock = self.call, self.source, time.perf_counter
        cpu_clock, thread_clock = _native.item_clock(), time.thread_time
        self.verdict = None
        while True:
            index = source.index
            taken = head.take(source) if head is not None and index > 0 else source.take(1)
            if taken is None:  # the head start's pool has the next items
                self.head_started = True
                break
            batch, error = taken
            if error is not None:
                raise error
            if not batch:
                break
            item = batch[0]
            if head is not None and index == 0:
                head.arm()
            # BLAS capped at one thread for this item, when the items so far
            # read as keeping more CPUs busy than one (see _native).
            check = probe.wants_cap()
            uncap = check.cap() if check is not None else None
            # The CPU clock outside the wall clock: reading it costs ~0.5 µs,
            # as much as a whole item of x*x.
            cpu_began, thread_began = cpu_clock(), thread_clock()
            began = clock()
            try:
                result = call(item)
            except Exception as exc:
                result = self.policy.settle(call, item, exc, index)
            finally:
                if uncap is not None:
                    uncap()
            took = clock() - began
            probe.add(took, cpu_clock() - cpu_began, thread_clock() - thread_began,
                      capped=uncap is not None)
            self.stats.note_item(took, index)
            if index == 0:
                probe.moved.keep(item, result)
                if head is not None and not head.settle():
                    head = None  # it did not fire: the item was quick
            yield from self._emit([result], index)
            if probe.done(source.index) and not (
                    head is not None and not head.closed and probe.parallel(source.index)):
                # With a head start's pool to come, the caller runs items until it is up.
                size = probe.trial_size(source.index) if head is None or head.closed else 0
                if size and not (yield from self._trial(probe, size)) \
                        and source.remaining is not None and source.remaining >= 2 * size:
                    # The helper's warm-up left no part of the trial with both
                    # threads warm: once more, on the same thread, warm now.
                    yield from self._trial(probe, size, again=True)
                if size and len(probe.stale) == 1 and probe.trial_speedup is None:
                    probe.rebase()  # the items ran slower when probed than they do now
                    continue
                break
        if head is not None and not self.head_started and head.close() is not None:
            self.head_started = True  # it took items just now
        self.first_seconds = probe.times[0] if probe.times else 0.0
        self.cpu_share = probe.cpu_share()
        self.blas_free = probe.cap.found if probe.cap is not None else None
        self.transfer = probe.moved.measured
        if self.head_started:
            self.unpicklable = None
            self.per_item = sorted(probe.times)[len(probe.times) // 2]
            return
        self.verdict = probe.verdict(source.index)
        self.unpicklable = probe.moved.unsendable
        self.prober = probe


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
