"""The loop each worker process runs. See ``process.py`` for the whole picture.

Two threads share the worker's end of the pipe:

* the receiver thread reads every message as soon as it arrives. The caller
  can therefore always finish a send (no deadlock when both sides push
  hundreds of MB at once), a cancel takes effect between items, and the
  worker exits on its own when the caller dies (the pipe hits EOF).
* the main thread runs items and sends results, flushing partial results
  every ``flush`` seconds so a crash loses little.

Before each item the worker writes into a small shared array (``status``)
where it is: ``[phase, item index, job id]``. The phase is -1 while the worker
unpickles an item (or the chunk holding it) and 0 between chunks. While items
run it is a start time: the item's own for a job with a timeout (and 0 between
its items), the chunk's for any other job, which saves a write per item.
The caller reads it to enforce ``timeout=`` from the moment an item
*starts*, and to know which item a dead worker was at.
"""

from __future__ import annotations

import functools
import os
import pickle
import queue
import signal
import threading
import time
import traceback
from collections.abc import Callable, MutableSequence
from typing import Any

import cloudpickle

from ... import _state
from ..._options import block_var
from . import shm as _shm

IDLE_EXIT = 75  # exit code of a worker that left on its own after idling
PROTOCOL = 5
BLAS_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                  "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def dump_value(value: Any) -> bytes:
    """Items and results: the C pickler, falling back to cloudpickle for
    values plain pickle refuses (a lambda returned as a result)."""
    try:
        return pickle.dumps(value, PROTOCOL)
    except Exception:
        return cloudpickle.dumps(value, PROTOCOL)  # type: ignore[no-any-return]


_cloud_dumps = functools.partial(cloudpickle.dumps, protocol=PROTOCOL)


def send(conn: Any, message: tuple[Any, ...]) -> None:
    """Send ``message``; the values it holds made by ``_shm.pack`` follow it
    raw, through the pipe or, when big, through shared memory."""
    frames: list[pickle.PickleBuffer] = []
    body = pickle.dumps(message, PROTOCOL, buffer_callback=frames.append)
    kinds, fds = _shm.export(conn, frames) if frames else (b"", [])
    try:
        conn.send_bytes(len(frames).to_bytes(4, "little") + kinds + body)
        for kind, buffer in zip(kinds, frames, strict=True):
            if kind != _shm.MEMFD:
                conn.send_bytes(buffer.raw())
        if fds:
            _shm.send_fds(conn, fds)
    finally:
        for fd in fds:
            os.close(fd)


def receive(conn: Any) -> Any:
    """One message sent by ``send``, its frames back in place: bytes from
    the pipe, writable views of shared memory (or bytearrays) for buffers."""
    data = conn.recv_bytes()
    count = int.from_bytes(data[:4], "little")
    kinds = data[4:4 + count]
    frames: list[Any] = [None if kind == _shm.MEMFD else conn.recv_bytes() for kind in kinds]
    if _shm.MEMFD in kinds:
        shared = iter(_shm.receive_fds(conn, kinds.count(_shm.MEMFD)))
        frames = [next(shared) if frame is None else frame for frame in frames]
    for index, kind in enumerate(kinds):
        if kind == _shm.WRITABLE:
            frames[index] = bytearray(frames[index])  # an array from it must stay writable
    return pickle.loads(memoryview(data)[4 + count:], buffers=frames)


def capture(exc: BaseException) -> tuple[bytes | None, str, str, str]:
    """An exception as (pickled or None, type name, message, formatted traceback)."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    exc.__traceback__ = None  # tracebacks do not pickle; the text carries them
    blob: bytes | None = None
    try:
        dumped = dump_value(exc)
        pickle.loads(dumped)  # some exceptions pickle but cannot be rebuilt
        blob = dumped
    except Exception:
        pass
    kind = type(exc)
    return blob, f"{kind.__module__}.{kind.__qualname__}", str(exc), text


def _limit_native_threads(threads: int) -> None:
    # Each worker gets its share of the CPUs, so BLAS/OpenMP pools inside the
    # workers do not multiply into CPUs x workers threads.
    for name in BLAS_VARIABLES:
        os.environ.setdefault(name, str(threads))
    try:
        from threadpoolctl import threadpool_limits  # optional
    except ImportError:
        return
    threadpool_limits(threads)


SAMPLE_SECONDS = 20e-6  # an item at least this long is timed on its own
MAX_STRIDE = 64  # the most items timed as one group
PREPARING = -1.0  # the phase while the worker unpickles an item or a chunk
IDLE = 0.0


def _receive(conn: Any, inbox: queue.SimpleQueue[Any], cancelled: set[int]) -> None:
    while True:
        try:
            message = receive(conn)
        except (EOFError, OSError):
            os._exit(0)  # the caller is gone: never outlive it
        if message[0] == "cancel":
            cancelled.add(message[1])
        else:
            inbox.put(message)


class _Runner:
    """Runs chunks and streams their results back."""

    def __init__(self, conn: Any, status: MutableSequence[float], cancelled: set[int]) -> None:
        self.conn = conn
        # The status as raw doubles: a write through a memoryview costs a
        # third of one through the ctypes array, and the hot loop makes one
        # per item. The view keeps the array alive.
        self.view = memoryview(status).cast("B").cast("d")  # type: ignore[arg-type]
        self.cancelled = cancelled
        self.jobs: dict[int, Any] = {}

    def send(self, message: tuple[Any, ...]) -> None:
        send(self.conn, message)

    def mark(self, phase: float, index: int, job_id: int) -> None:
        # The phase last: a reader that sees it sees the index and job too.
        self.view[2] = job_id
        self.view[1] = index
        self.view[0] = phase

    def job(self, job_id: int) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any],
                                        bool, bool, float, bool]:
        spec = self.jobs[job_id]
        if not isinstance(spec, (tuple, BaseException)):  # still as it arrived: load it once
            try:
                spec = _shm.loads(spec)
            except BaseException as exc:
                spec = exc
            self.jobs[job_id] = spec
        if isinstance(spec, BaseException):
            raise spec
        return spec  # type: ignore[no-any-return]

    def run(self, job_id: int, start: int, count: int, blob: Any,
            split: list[Any] | None) -> None:
        try:
            self._run(job_id, start, count, blob, split)
        finally:
            self.mark(IDLE, -1, 0)  # this chunk is fully reported

    def _run(self, job_id: int, start: int, count: int, blob: Any,
             split: list[Any] | None) -> None:
        flush_start = start
        values: list[Any] = []  # a result itself (small and plain), a Pickled one, or None
        errors: dict[int, tuple[bytes | None, str, str, str]] = {}
        self.mark(PREPARING, start, job_id)
        try:
            fn, args, kwargs, star, stop_on_error, flush_every, timed = self.job(job_id)
        except BaseException as exc:  # the function or its arguments did not unpickle
            info = capture(_unpickle_error("function or its extra arguments", None, exc))
            self.send(("done", job_id, start, [None] * count,
                       dict.fromkeys(range(count), info), 0.0, True, (0.0, -1), False))
            return
        try:
            items = _shm.loads(blob) if blob is not None else None
        except BaseException:
            self.send(("resend", job_id, start))  # the caller sends them one by one
            return
        # The hot loop. Per item it writes only the item's index into the
        # status (the job id went in with PREPARING above). A timed job also
        # writes the phase, the item's start time, which the caller's deadline
        # needs; an untimed one stays "running" for the whole chunk. The clock
        # (~0.1 µs a read) times each item of a timed job, and each item of an
        # untimed one that takes SAMPLE_SECONDS or more; quicker items are
        # timed in groups of up to MAX_STRIDE, so they never rank among the
        # slowest (nor does a straggler among them, which shows in busy
        # only), and busy still adds up to the chunk's whole time.
        view, cancelled, clock = self.view, self.cancelled, time.monotonic
        call = _caller(fn, args, kwargs, star)
        as_is, as_is_sized = _AS_IS, _AS_IS_SIZED
        busy = 0.0
        slowest, slowest_index = 0.0, -1  # of the items since the last flush
        last_flush = previous = clock()
        stride, countdown, clocked = 1, 0, -1  # clocked: the offset of the last clock read
        wrapped = False  # whether values holds a Pickled: the caller then unwraps each
        view[0] = IDLE if timed else previous
        for offset in range(count):
            if job_id in cancelled:
                break
            index = start + offset
            if items is None:
                kind, data = split[offset]  # type: ignore[index]
                if kind == "failed":  # the caller could not pickle this item
                    values.append(None)
                    errors[len(values) - 1] = (data, "", "", "")
                    continue
                self.mark(PREPARING, index, job_id)
                try:
                    item = _shm.loads(data)
                except BaseException as exc:
                    values.append(None)
                    errors[len(values) - 1] = capture(_unpickle_error("item", index, exc))
                    continue
                view[0] = IDLE if timed else clock()
            else:
                item = items[offset]
            view[1] = index
            if timed:
                previous = view[0] = clock()
            stop = big = False
            try:
                result = call(item)
            except BaseException as exc:
                values.append(None)
                errors[len(values) - 1] = capture(exc)
                stop = stop_on_error
            else:
                kind = type(result)
                if kind in as_is or (kind in as_is_sized and len(result) < AS_IS_BYTES):
                    values.append(result)
                else:
                    try:
                        packed = _shm.pack(result, fallback=_cloud_dumps)
                        values.append(Pickled(packed))
                        wrapped = True
                        # A result with big buffers leaves at once: they are the
                        # function's own arrays, which a later item may overwrite.
                        big = type(packed) is _shm.Packed
                    except BaseException as exc:
                        values.append(None)
                        errors[len(values) - 1] = capture(
                            _unpickle_error("result", index, exc, pickling=True))
            if countdown and not (big or stop):
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
                view[0] = IDLE
            if stop:
                break
            if (big or now - last_flush >= flush_every) and offset + 1 < count:
                self.send(("done", job_id, flush_start, values, errors, busy, False,
                           (slowest, slowest_index), wrapped))
                flush_start += len(values)
                values, errors, busy, wrapped = [], {}, 0.0, False
                slowest, slowest_index = 0.0, -1
                # The send (long, when the pipe is full) is no item's time.
                previous = last_flush = clock()
        busy += clock() - previous  # the items since the last clock read
        self.send(("done", job_id, flush_start, values, errors, busy, True,
                   (slowest, slowest_index), wrapped))


class Pickled:
    """A result pickled on its own, so that one that will not unpickle in
    the caller fails alone. Small ints, floats, strings and the like travel
    as they are, pickled with their whole batch: a pickle.dumps call per
    item costs ~0.8 µs, more than the item itself on a 1 µs function."""

    __slots__ = ("data",)

    def __init__(self, data: Any) -> None:
        self.data = data

    def __reduce__(self) -> tuple[Any, ...]:
        return Pickled, (self.data,)


_AS_IS = frozenset({int, float, bool, complex, type(None)})
_AS_IS_SIZED = frozenset({str, bytes})
AS_IS_BYTES = 1 << 12  # a longer string or bytes is pickled on its own (and framed if big)


def _caller(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
            star: bool) -> Callable[[Any], Any]:
    """The per-item call; the function itself when nothing is added to it."""
    if star:
        return lambda item: fn(*item, *args, **kwargs)
    if args or kwargs:
        return lambda item: fn(item, *args, **kwargs)
    return fn


def _unpickle_error(what: str, index: int | None, exc: BaseException,
                    pickling: bool = False) -> BaseException:
    """``what`` of item ``index`` (None: the job's function or arguments)
    failed to load (or, ``pickling``, to be pickled) in this worker."""
    from ...errors import RemoteUnpicklingError

    where = "pickled in the worker" if pickling else "unpickled in the worker"
    whose = f"the {what} of item #{index}" if index is not None else f"the {what}"
    error = RemoteUnpicklingError(f"{whose} could not be {where} (pid {os.getpid()}): "
                                  f"{type(exc).__name__}: {exc}", item=index)
    error.__cause__ = exc
    return error


def _name_process(name: str) -> None:
    # What ps -C, top and pgrep show (Linux): a worker is told from its caller.
    try:
        with open("/proc/self/comm", "w") as comm:
            comm.write(name)
    except OSError:
        pass


def main(conn: Any, status: MutableSequence[float], threads: int, idle_timeout: float) -> None:
    """Entry point of a worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked by the caller at start
    _state.IN_WORKER = True
    _name_process("parloop-worker")
    # A forked worker inherits the caller's active ``with`` block; a call made
    # here must not use it (its pool is the caller's, its lock maybe held).
    block_var().set(None)
    _limit_native_threads(threads)

    inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
    cancelled: set[int] = set()
    threading.Thread(target=_receive, args=(conn, inbox, cancelled), daemon=True,
                     name="parloop-receiver").start()
    runner = _Runner(conn, status, cancelled)
    runner.send(("ready", os.getpid()))
    while True:
        try:
            message = inbox.get(timeout=idle_timeout)
        except queue.Empty:
            os._exit(IDLE_EXIT)  # idle too long: give the memory back
        kind = message[0]
        if kind == "job":
            runner.jobs[message[1]] = message[2]
        elif kind == "chunk":
            runner.run(message[1], message[2], message[3], message[4], None)
        elif kind == "split":
            runner.run(message[1], message[2], message[3], None, message[4])
        elif kind == "forget":
            runner.jobs.pop(message[1], None)
            cancelled.discard(message[1])
        elif kind == "stop":
            return
