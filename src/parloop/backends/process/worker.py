"""The worker process's side. See ``pool`` for the whole picture.

Two threads share the worker's end of the pipe:

* the receiver thread reads every message as soon as it arrives. The caller
  can therefore always finish a send (no deadlock when both sides push
  hundreds of MB at once), a cancel takes effect between items, and the
  worker exits on its own when the caller dies (the pipe hits EOF).
* the main thread runs chunks with the one item loop (``_runner``), which
  reports results every 50 ms so a crash loses little, and writes where it
  is into ``status``, a small array shared with the caller: ``[phase, item
  index, job id]``. The caller reads it to enforce ``timeout=`` from the
  moment an item *starts*, and to know which item a dead worker was at.
"""

from __future__ import annotations

import functools
import os
import queue
import signal
import threading
from collections.abc import MutableSequence
from typing import Any

from ... import _role
from .._runner import IDLE, PREPARING, report_failure, run_items
from .._wire import (
    Cancel,
    Forget,
    JobMessage,
    Ready,
    Resend,
    RunChunk,
    SpecCache,
    Stop,
    cloud_dumps,
    unpickle_error,
)
from . import pipe, shm

__all__ = ["IDLE_EXIT", "Runner", "main"]

IDLE_EXIT = 75  # exit code of a worker that left on its own after idling
BLAS_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                  "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
_pack_result = functools.partial(shm.pack, fallback=cloud_dumps)


class Runner:
    """Runs the chunks the caller sends, reporting over ``conn``."""

    def __init__(self, conn: Any, status: MutableSequence[float], cancelled: set[int]) -> None:
        self.conn = conn
        # The status as raw doubles: a write through a memoryview costs a
        # third of one through the ctypes array, and the hot loop makes one
        # per item. The view keeps the array alive.
        self.view = memoryview(status).cast("B").cast("d")  # type: ignore[arg-type]
        self.cancelled = cancelled
        self.specs = SpecCache(shm.loads)

    def send(self, message: Any) -> None:
        pipe.send(self.conn, message)

    def mark(self, phase: float, index: int, job_id: int) -> None:
        # The phase last: a reader that sees it sees the index and job too.
        self.view[2] = job_id
        self.view[1] = index
        self.view[0] = phase

    def run(self, chunk: RunChunk) -> None:
        try:
            self._run(chunk)
        finally:
            self.mark(IDLE, -1, 0)  # this chunk is fully reported

    def _run(self, chunk: RunChunk) -> None:
        job_id, start = chunk.job_id, chunk.start
        self.mark(PREPARING, start, job_id)
        try:
            spec = self.specs.get(job_id)
        except BaseException as exc:  # the function or its arguments did not unpickle
            report_failure(job_id, start, chunk.size,
                           unpickle_error("function or its extra arguments", None, exc),
                           self.send)
            return
        items = None
        if not chunk.split:
            try:
                items = shm.loads(chunk.items)
            except BaseException:
                self.send(Resend(job_id, start))  # the caller sends them otherwise
                return
        run_items(job_id, spec, start, items, chunk.items if chunk.split else None,
                  report=self.send, status=self.view, cancelled=self.cancelled,
                  load=shm.loads, pack=_pack_result, big=shm.Packed)


def _receive(conn: Any, inbox: queue.SimpleQueue[Any], cancelled: set[int]) -> None:
    while True:
        try:
            message = pipe.receive(conn)
        except (EOFError, OSError):
            os._exit(0)  # the caller is gone: never outlive it
        if type(message) is Cancel:
            cancelled.add(message.job_id)
        else:
            inbox.put(message)


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
    # A call made here runs serially, and ignores a block this process
    # inherited from its caller by fork (its pool is the caller's).
    _role.IN_WORKER = True
    _name_process("parloop-worker")
    _limit_native_threads(threads)

    inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
    cancelled: set[int] = set()
    threading.Thread(target=_receive, args=(conn, inbox, cancelled), daemon=True,
                     name="parloop-receiver").start()
    runner = Runner(conn, status, cancelled)
    runner.send(Ready(os.getpid()))
    while True:
        try:
            message = inbox.get(timeout=idle_timeout)
        except queue.Empty:
            os._exit(IDLE_EXIT)  # idle too long: give the memory back
        kind = type(message)
        if kind is RunChunk:
            runner.run(message)
        elif kind is JobMessage:
            runner.specs.add(message.job_id, message.payload)
        elif kind is Forget:
            runner.specs.forget(message.job_id)
            cancelled.discard(message.job_id)
        elif kind is Stop:
            return

