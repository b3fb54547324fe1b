"""The one loop that runs a chunk's items one by one, wherever they run: in
a process worker, in a cluster task, in a pool thread.

Per item it writes the item's index into ``status`` (the process backend's
caller reads it to know which item a dead worker was at), calls the
function, and keeps the result as it is (small plain values) or packed on
its own (``Pickled``), or the captured exception in its place. Results are
reported in ``Done`` parts: every ``flush_every`` seconds, at once after a
result with big buffers, and at the end.

``status`` is three doubles: ``[phase, item index, job id]``. The phase is
PREPARING (-1) while an item or the chunk is unpickled, IDLE (0) between
the items of a timed job, and otherwise a start time: the item's own for a
job with a timeout, the chunk's for any other job (one write less per item).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Container
from typing import Any

from ._wire import Done, JobSpec, Pickled, capture, unpickle_error
from .base import per_item

__all__ = ["AS_IS", "EVERYTHING", "IDLE", "MAX_STRIDE", "PREPARING", "SAMPLE_SECONDS",
           "run_items"]

SAMPLE_SECONDS = 20e-6  # an item at least this long is timed on its own
MAX_STRIDE = 64  # the most items timed as one group
PREPARING = -1.0
IDLE = 0.0
AS_IS: frozenset[type] = frozenset({int, float, bool, complex, type(None)})  # results that travel as they are
_AS_IS_SIZED: frozenset[type] = frozenset({str, bytes})
AS_IS_BYTES = 1 << 12  # a longer string or bytes is packed on its own (and framed if big)


class _Everything:
    """``as_is`` for a runner whose results stay in this process."""

    def __contains__(self, kind: object) -> bool:
        return True


EVERYTHING: Container[type] = _Everything()


def run_items(job_id: int, spec: JobSpec, start: int, items: list[Any] | None,
              split: list[tuple[str, Any]] | None, *, report: Callable[[Done], None],
              status: Any, cancelled: Container[int], load: Callable[[Any], Any],
              pack: Callable[[Any], Any], big: type | None = None,
              as_is: Container[type] = AS_IS, keep: Callable[[BaseException], Any] = capture,
              stop_on_interrupt: bool = False, per_thread: bool = False,
              call: Any = None) -> None:
    """Run ``items`` (or, ``split``, the pairs of ``pack_item``, each loaded
    by ``load`` just before it runs) as items ``start, start + 1, ...`` of
    job ``job_id``. ``pack`` packs a result that is not ``as_is``; one of
    type ``big`` is reported at once. ``keep`` makes an exception ready to
    report. ``stop_on_interrupt``: a KeyboardInterrupt ends the chunk (how
    Ray cancels a task). ``per_thread``: a ``setup`` state per thread.
    ``call`` names the call, when ``job_id`` does not (a cluster task's)."""
    count = len(split) if items is None else len(items)  # type: ignore[arg-type]
    fn_call = per_item(spec.fn, spec.args, spec.kwargs, spec.star, spec.setup, per_thread,
                       job_id if call is None else call)
    stop_on_error, flush_every, timed = spec.stop_on_error, spec.flush_every, spec.timed
    flush_start = start
    values: list[Any] = []
    errors: dict[int, Any] = {}
    # The hot loop. Per item it writes only the item's index into the status
    # (the job id went in before). A timed job also writes the phase, the
    # item's start time, which the caller's deadline needs; an untimed one
    # stays "running" for the whole chunk. The clock (~0.1 µs a read) times
    # each item of a timed job, and each item of an untimed one that takes
    # SAMPLE_SECONDS or more; quicker items are timed in groups of up to
    # MAX_STRIDE, so they never rank among the slowest (nor does a straggler
    # among them, which shows in busy only), and busy still adds up to the
    # chunk's whole time.
    clock = time.monotonic
    # CPU seconds beside busy (read per report, not per item): a worker's
    # items that wait for a CPU (more processes than cores) show less CPU
    # than wall time, and the caller does not take the wait for their cost.
    cpu_clock = time.thread_time if per_thread else time.process_time
    cpu_mark = cpu_clock()
    as_is_sized = _AS_IS_SIZED
    busy = 0.0
    slowest, slowest_index = 0.0, -1  # of the items since the last flush
    last_flush = previous = clock()
    stride, countdown, clocked = 1, 0, -1  # clocked: the offset of the last clock read
    wrapped = False  # whether values holds a Pickled: the caller then unwraps each
    status[2] = job_id
    status[0] = IDLE if timed else previous
    for offset in range(count):
        if job_id in cancelled:
            break
        index = start + offset
        if items is None:
            kind, data = split[offset]  # type: ignore[index]
            if kind == "failed":  # the caller could not pickle this item: data says why
                values.append(None)
                errors[len(values) - 1] = data
                continue
            status[1], status[0] = index, PREPARING
            try:
                item = load(data)
            except BaseException as exc:
                values.append(None)
                errors[len(values) - 1] = keep(unpickle_error("item", index, exc))
                continue
            status[0] = IDLE if timed else clock()
        else:
            item = items[offset]
        status[1] = index
        if timed:
            previous = status[0] = clock()
        stop = urgent = False
        try:
            result = fn_call(item)
        except BaseException as exc:
            values.append(None)
            errors[len(values) - 1] = keep(exc)
            stop = stop_on_error or (stop_on_interrupt and isinstance(exc, KeyboardInterrupt))
        else:
            kind = type(result)
            if kind in as_is or (kind in as_is_sized and len(result) < AS_IS_BYTES):
                values.append(result)
            else:
                try:
                    packed = pack(result)
                    values.append(Pickled(packed))
                    wrapped = True
                    # A result with big buffers leaves at once: they are the
                    # function's own arrays, which a later item may overwrite.
                    urgent = type(packed) is big
                except BaseException as exc:
                    values.append(None)
                    errors[len(values) - 1] = keep(
                        unpickle_error("result", index, exc, pickling=True))
        if countdown and not (urgent or stop):
            countdown -= 1
            continue
        now = clock()
        took, previous = now - previous, now
        busy += took
        group, clocked = offset - clocked, offset
        # Only an item timed on its own can be named, and only one slow
        # enough to be timed on its own: a 10 µs item is never "slowest".
        if took > slowest and took >= SAMPLE_SECONDS and (timed or group == 1):
            slowest, slowest_index = took, index
        if not timed:
            stride = 1 if took >= SAMPLE_SECONDS * group else min(2 * stride, MAX_STRIDE)
            countdown = stride - 1
        else:
            status[0] = IDLE
        if stop:
            break
        if (urgent or now - last_flush >= flush_every) and offset + 1 < count:
            report(Done(job_id, flush_start, values, errors, busy, False,
                        (slowest, slowest_index), wrapped, cpu_clock() - cpu_mark))
            flush_start += len(values)
            values, errors, busy, wrapped = [], {}, 0.0, False
            slowest, slowest_index = 0.0, -1
            # The report (long, when the pipe is full) is no item's time.
            previous = last_flush = clock()
            cpu_mark = cpu_clock()
    busy += clock() - previous  # the items since the last clock read
    report(Done(job_id, flush_start, values, errors, busy, True, (slowest, slowest_index),
                wrapped, cpu_clock() - cpu_mark))


def report_failure(job_id: int, start: int, count: int, error: BaseException,
                   report: Callable[[Done], None], keep: Callable[[BaseException], Any] = capture
                   ) -> None:
    """Every item of a chunk failed with ``error`` (its job did not load)."""
    info = keep(error)
    report(Done(job_id, start, [None] * count, dict.fromkeys(range(count), info), 0.0, True,
                (0.0, -1), False))
