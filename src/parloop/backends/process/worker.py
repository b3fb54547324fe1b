"""The worker process's side. See ``pool`` for the whole picture.

Two threads share the worker's end of the pipe:

* the receiver thread reads every message as soon as it arrives. The caller
  can therefore always finish a send (no deadlock when both sides push
  hundreds of MB at once), and the worker exits on its own when the caller
  dies (the pipe hits EOF). A cancel stops the call's running item at once:
  the receiver signals the main thread, whose handler raises
  ``ItemCancelled`` in the item's code, and the worker goes on with other
  work. (An item stuck in a C call that holds the GIL runs no Python code
  at all, here or in the receiver: the caller kills that worker after
  CANCEL_GRACE.) The receiver also gives back a chunk still queued here
  when the caller asks (Revoke), so that an idle worker can run it.
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
from collections import deque
from collections.abc import MutableSequence
from typing import Any

from ... import _role
from .._runner import IDLE, PREPARING, report_failure, run_items
from .._state import set_worker_id
from .._wire import SpecCache, cloud_dumps, end_state, unpickle_error
from ..base import Ended
from . import pipe, shm
from .messages import Cancel, Forget, JobMessage, Ready, Resend, Revoke, Revoked, RunChunk, Stop

__all__ = ["CANCEL_GRACE", "IDLE_EXIT", "ItemCancelled", "Runner", "main"]

IDLE_EXIT = 75  # exit code of a worker that left on its own after idling
CANCEL_GRACE = 0.5  # seconds a cancelled item has to stop before its worker is killed
_PACKAGE = os.path.dirname(os.path.abspath(_role.__file__)) + os.sep  # parloop's own code


class ItemCancelled(BaseException):
    """Raised in a running item whose call was cancelled (a BaseException,
    as KeyboardInterrupt is, so that ``except Exception`` does not swallow it)."""
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
        self._sending = threading.Lock()  # both threads send; a message must stay whole

    def send(self, message: Any) -> None:
        with self._sending:
            pipe.send(self.conn, message)

    def running(self, job_id: int) -> bool:
        """Whether an item of job ``job_id`` runs (or a chunk of it loads) now."""
        return self.view[2] == job_id and self.view[0] != IDLE

    def cancel(self, job_id: int) -> None:
        """(Receiver thread.) Stop the running item of ``job_id``, if any, by
        an exception raised in its code; no other item of it starts."""
        self.cancelled.add(job_id)
        if self.running(job_id):
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)

    def on_cancel_signal(self, signum: int, frame: Any) -> None:
        """SIGUSR1 in the main thread: raise only in code that the item loop
        called as the item (the user's function and what it calls), never in
        parloop's own nor in what parloop called (raising in a pipe write
        would tear a message in half). Elsewhere the chunk stops at the next
        item, or the caller kills the worker after CANCEL_GRACE."""
        if int(self.view[2]) not in self.cancelled:
            return
        caller = frame
        while caller is not None and not caller.f_code.co_filename.startswith(_PACKAGE):
            caller = caller.f_back
        if caller is not frame and caller is not None and caller.f_code is run_items.__code__:
            raise ItemCancelled("the call was cancelled")

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


class Inbox:
    """Messages waiting for the main thread, in order; a chunk that has not
    started yet can be taken back out (Revoke)."""

    def __init__(self) -> None:
        self._messages: deque[Any] = deque()
        self._ready = threading.Condition()

    def put(self, message: Any) -> None:
        with self._ready:
            self._messages.append(message)
            self._ready.notify()

    def get(self, timeout: float) -> Any:
        """The next message; queue.Empty after ``timeout`` seconds without one."""
        with self._ready:
            if not self._ready.wait_for(lambda: self._messages, timeout):
                raise queue.Empty
            return self._messages.popleft()

    def take_back(self, job_id: int, start: int) -> bool:
        with self._ready:
            for message in self._messages:
                if type(message) is RunChunk and message.job_id == job_id \
                        and message.start == start:
                    self._messages.remove(message)
                    return True
            return False


def _receive(conn: Any, inbox: Inbox, runner: Runner) -> None:
    while True:
        try:
            message = pipe.receive(conn)
        except (EOFError, OSError):
            os._exit(0)  # the caller is gone: never outlive it
        kind = type(message)
        if kind is Cancel:
            runner.cancel(message.job_id)
        elif kind is Revoke:
            given_back = inbox.take_back(message.job_id, message.start)
            runner.send(Revoked(message.job_id, message.start, given_back))
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


def main(conn: Any, status: MutableSequence[float], threads: int, idle_timeout: float,
         slot: int = 0) -> None:
    """Entry point of a worker process; ``slot`` is its index in the pool."""
    set_worker_id(slot)
    try:
        _serve(conn, status, threads, idle_timeout)
    except (BrokenPipeError, ConnectionResetError):
        os._exit(0)  # the caller closed its end (it shut the pool, or exited): nothing to tell


def _serve(conn: Any, status: MutableSequence[float], threads: int, idle_timeout: float) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked by the caller at start
    # A call made here runs serially, and ignores a block this process
    # inherited from its caller by fork (its pool is the caller's).
    _role.IN_WORKER = True
    _name_process("parloop-worker")
    _limit_native_threads(threads)

    inbox = Inbox()
    cancelled: set[int] = set()
    runner = Runner(conn, status, cancelled)
    signal.signal(signal.SIGUSR1, runner.on_cancel_signal)
    threading.Thread(target=_receive, args=(conn, inbox, runner), daemon=True,
                     name="parloop-receiver").start()
    runner.send(Ready(os.getpid()))
    while True:
        try:
            message = inbox.get(idle_timeout)
        except queue.Empty:
            os._exit(IDLE_EXIT)  # idle too long: give the memory back
        kind = type(message)
        if kind is RunChunk:
            runner.run(message)
        elif kind is JobMessage:
            runner.specs.add(message.job_id, message.payload)
        elif kind is Forget:
            spec = runner.specs.forget(message.job_id)
            cancelled.discard(message.job_id)
            if message.teardown:  # the caller waits for this answer
                runner.send(end_state(message.job_id, spec.setup, pack=_pack_result) if spec is not None
                            else Ended(message.job_id, None, False))
        elif kind is Stop:
            return

