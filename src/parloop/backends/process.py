"""The process backend: parloop's own process pool.

How a chunk travels::

    caller (dispatch engine)                     worker process i
    ------------------------                     ----------------
    submit(chunk) ---- "job" (once per worker) --> receiver thread --> inbox
                  ---- "chunk" (pickled items) --> receiver thread --> inbox
                                                   main thread: run items,
                                                   write index + start time
                                                   into status[i] per item
    _poll() <-------- "done" (partial / final) --- main thread (flush every 50 ms)
       |  also waits on every worker's sentinel: a death is seen at once
       |  and reads status[i] to name the item that was running
       v
    Outcome(job, start, values, errors) --> engine

One pipe per worker, so the caller always knows which worker holds which
items: a crash or a timeout costs only the item that was running (plus the
results of the last < 50 ms, which died with it); unstarted items go to
another worker. A replacement worker starts at once. No helper threads run in
the caller, so forking stays safe and Ctrl-C lands in the caller's wait.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait as wait_for
from typing import Any

from .. import _cpu, _pickling
from .._options import Options
from ..errors import TaskTimeoutError, WorkerCrashedError, short_repr
from . import _worker
from ._results import crash_outcome, decode_done
from .base import Backend, Chunk, Job, Outcome

__all__ = ["ProcessBackend", "default_start_method"]

IDLE_TIMEOUT = float(os.environ.get("PARLOOP_IDLE_TIMEOUT", "300"))
FLUSH_SECONDS = 0.05
CANCEL_GRACE = 0.5  # a cancelled item may finish this long before its worker is replaced
STARTUP_FAILURES = 3  # workers dying before "ready" in a row: the pool is broken


def _thread_count() -> int:
    try:
        with open("/proc/self/stat", "rb") as stat:
            return int(stat.read().rsplit(b")", 1)[1].split()[17])
    except (OSError, ValueError, IndexError):
        import threading
        return threading.active_count()


def default_start_method() -> str:
    """fork when it is safe (Linux, a single-threaded caller), else forkserver
    (Linux) or spawn. A fork copies locks held by other threads (BLAS, gRPC,
    logging) in their held state, and the child can freeze on them."""
    if sys.platform != "linux":
        return "spawn"
    return "fork" if _thread_count() == 1 else "forkserver"


@dataclass(eq=False)
class _Sent:
    chunk: Chunk
    next_index: int  # items before this one have been reported
    cancelled_at: float | None = None

    @property
    def end(self) -> int:
        return self.chunk.start + len(self.chunk.items)


@dataclass(eq=False)
class _Worker:
    process: Any
    pid: int
    conn: Any
    status: Any  # RawArray('d', 2): [start time of the running item or 0, its index]
    ready: bool = False
    jobs: set[int] = field(default_factory=set)
    inflight: deque[_Sent] = field(default_factory=deque)

    @property
    def name(self) -> str:
        return f"pid {self.pid}"


class ProcessBackend(Backend):
    name = "process"

    def __init__(self, workers: int, start_method: str | None = None) -> None:
        super().__init__(workers)
        self._explicit_method = start_method
        self.start_method = start_method or default_start_method()
        self._threads = max(1, _cpu.cpu_count() // workers)
        self._startup_failures = 0
        self._broken: str | None = None
        self._outcomes: list[Outcome] = []
        self._pool: list[_Worker] = [self._spawn() for _ in range(workers)]

    # -- workers ---------------------------------------------------------------

    def _spawn(self) -> _Worker:
        # Re-decided per worker: a replacement forked into a caller that has
        # started threads since would risk a deadlock.
        context = multiprocessing.get_context(self._explicit_method or default_start_method())
        ours, theirs = context.Pipe(duplex=True)
        status = context.RawArray("d", 2)
        process = context.Process(target=_worker.main, name="parloop-worker",
                                  args=(theirs, status, self._threads, IDLE_TIMEOUT))
        process.start()
        theirs.close()
        return _Worker(process, process.pid, ours, status)

    def _send(self, worker: _Worker, message: tuple[Any, ...]) -> bool:
        try:
            worker.conn.send_bytes(pickle.dumps(message, _worker.PROTOCOL))
            return True
        except OSError:  # it died; its sentinel tells the rest
            return False

    def _kill(self, worker: _Worker, grace: float = 0.5) -> None:
        if worker.process.is_alive():
            worker.process.terminate()
            worker.process.join(grace)
            if worker.process.is_alive():
                worker.process.kill()
        worker.process.join(5)

    # -- the Backend interface -------------------------------------------------

    def submit(self, chunk: Chunk) -> None:
        with self._lock:
            if self._broken:
                self._outcomes.append(crash_outcome(chunk, chunk.start, WorkerCrashedError(
                    self._broken, indices=tuple(range(chunk.start, chunk.start + len(chunk.items))))))
                return
            worker = min(self._pool, key=lambda w: (len(w.inflight), not w.ready))
            self._assign(worker, chunk)

    def _assign(self, worker: _Worker, chunk: Chunk, split: bool = False) -> None:
        job = chunk.job
        if job.payload is None:
            job.payload = _pickling.dumps((job.fn, job.args, job.kwargs, job.star,
                                           job.stop_on_error, 0.0 if job.timeout else FLUSH_SECONDS))
        if job.id not in worker.jobs:
            self._send(worker, ("job", job.id, job.payload))
            worker.jobs.add(job.id)
        worker.inflight.append(_Sent(chunk, chunk.start))
        count = len(chunk.items)
        if not split:
            try:
                message: tuple[Any, ...] = ("chunk", job.id, chunk.start, count,
                                            pickle.dumps(chunk.items, _worker.PROTOCOL))
            except Exception:
                split = True
        if split:
            message = ("split", job.id, chunk.start, count,
                       [_pickled_item(chunk.start + i, x) for i, x in enumerate(chunk.items)])
        self._send(worker, message)

    def cancel(self, job: Job) -> None:
        with self._lock:
            now = time.monotonic()
            for worker in self._pool:
                held = [s for s in worker.inflight if s.chunk.job is job]
                for sent in held:
                    sent.cancelled_at = now
                if held:
                    self._send(worker, ("cancel", job.id))
            self._outcomes = [o for o in self._outcomes if o.job_id != job.id]

    def end_job(self, job: Job) -> None:
        with self._lock:
            super().end_job(job)
            for worker in self._pool:
                if job.id in worker.jobs:
                    worker.jobs.discard(job.id)
                    self._send(worker, ("forget", job.id))

    def close(self, *, kill: bool = False) -> None:
        with self._lock:
            pool, self._pool = self._pool, []
            if not kill:
                for worker in pool:
                    self._send(worker, ("stop",))
                deadline = time.monotonic() + 2.0
                for worker in pool:
                    worker.process.join(max(0.0, deadline - time.monotonic()))
            for worker in pool:
                self._kill(worker, grace=0.5)
                worker.conn.close()
                worker.process.close()

    # -- collecting ----------------------------------------------------------------

    def _poll(self, timeout: float | None) -> list[Outcome]:
        if not self._outcomes:
            timeout = self._deadline_wait(timeout)
            handles = {w.conn: w for w in self._pool} | {w.process.sentinel: w for w in self._pool}
            for handle in wait_for(list(handles), timeout):
                worker = handles[handle]
                if handle is worker.conn:
                    self._drain(worker)
            for worker in list(self._pool):
                if worker.process.exitcode is not None or not worker.process.is_alive():
                    self._drain(worker)
                    self._replace(worker)
            self._enforce_deadlines()
        ready, self._outcomes = self._outcomes, []
        return ready

    def _drain(self, worker: _Worker) -> None:
        try:
            while worker.conn.poll():
                self._handle(worker, pickle.loads(worker.conn.recv_bytes()))
        except (EOFError, OSError):
            pass

    def _handle(self, worker: _Worker, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "ready":
            worker.ready = True
            self._startup_failures = 0
        elif kind == "resend":
            sent = worker.inflight.popleft()
            # The worker runs the resent chunk after those already queued, so
            # it goes to the back of inflight too.
            self._assign(worker, sent.chunk, split=True)
        elif kind == "done":
            _, job_id, start, blobs, errors, busy, final, slowest = message
            sent = worker.inflight[0]
            sent.next_index = start + len(blobs)
            if final:
                worker.inflight.popleft()
            if sent.cancelled_at is None:
                outcome = decode_done(sent.chunk, start, blobs, errors, busy, worker.name)
                outcome.slowest = slowest
                self._outcomes.append(outcome)

    # -- faults ----------------------------------------------------------------------

    def _replace(self, worker: _Worker, cause: BaseException | None = None) -> None:
        """``worker`` is dead or must die: account for what it held, start another."""
        self._kill(worker)
        code = worker.process.exitcode
        worker.process.close()
        worker.conn.close()
        self._pool[self._pool.index(worker)] = self._spawn()
        if not worker.ready:
            self._startup_failures += 1
            if self._startup_failures >= STARTUP_FAILURES:
                self._broken = (f"workers die before they start (exit code {code}); under the "
                                "spawn and forkserver start methods the main module must be "
                                "importable and guard its work with if __name__ == '__main__'")
        running = worker.inflight[0] if worker.inflight else None
        index = int(worker.status[1])
        for sent in worker.inflight:
            if sent.cancelled_at is not None:
                continue
            chunk = sent.chunk
            if sent is running and code != _worker.IDLE_EXIT and sent.next_index <= index < sent.end:
                # Items next_index..index were inside the dead worker: the one
                # running and those whose results had not been flushed yet.
                lost = tuple(range(sent.next_index, index + 1))
                error = cause or WorkerCrashedError(
                    _crash_message(worker, code, index, chunk, lost),
                    pid=worker.pid, exitcode=code, indices=lost)
                self._outcomes.append(crash_outcome(chunk, sent.next_index, error, index + 1))
                first_unstarted = index + 1
            else:
                first_unstarted = sent.next_index
            rest = chunk.items[first_unstarted - chunk.start:]
            if rest:
                self._requeue(Chunk(chunk.job, first_unstarted, rest))

    def _requeue(self, chunk: Chunk) -> None:
        if self._broken:
            self.submit(chunk)
            return
        worker = min(self._pool, key=lambda w: len(w.inflight))
        self._assign(worker, chunk)

    def _deadline_wait(self, timeout: float | None) -> float | None:
        now = time.monotonic()
        for worker in self._pool:
            if worker.inflight:
                job = worker.inflight[0].chunk.job
                started = worker.status[0]
                if started > 0 and job.timeout is not None:
                    left = max(0.0, started + job.timeout - now)
                    timeout = left if timeout is None else min(timeout, left)
                if worker.inflight[0].cancelled_at is not None:
                    left = max(0.0, worker.inflight[0].cancelled_at + CANCEL_GRACE - now)
                    timeout = left if timeout is None else min(timeout, left)
        return timeout

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        for worker in list(self._pool):
            if not worker.inflight:
                continue
            sent = worker.inflight[0]
            job, started, index = sent.chunk.job, worker.status[0], int(worker.status[1])
            if sent.cancelled_at is not None and now - sent.cancelled_at > CANCEL_GRACE:
                self._replace(worker)  # busy with a cancelled item: free it for new work
            elif job.timeout is not None and started > 0 and now - started > job.timeout:
                item = sent.chunk.items[index - sent.chunk.start]
                self._replace(worker, TaskTimeoutError(
                    f"item #{index} ({short_repr(item)}) ran longer than timeout={job.timeout:g} s; "
                    f"its worker (pid {worker.pid}) was killed and replaced"))


def _pickled_item(index: int, item: Any) -> tuple[str, bytes]:
    try:
        return ("item", pickle.dumps(item, _worker.PROTOCOL))
    except Exception:
        error = _pickling.explain_item(index, item)
        return ("failed", _worker.dump_value(error))


def _crash_message(worker: _Worker, code: int | None, index: int, chunk: Chunk,
                   lost: tuple[int, ...]) -> str:
    how = f"exit code {code}"
    if code is not None and code < 0:
        try:
            how = f"signal {signal.Signals(-code).name}"
        except ValueError:
            how = f"signal {-code}"
    item = chunk.items[index - chunk.start]
    held = f"item #{index} ({short_repr(item)})"
    if len(lost) > 1:
        held += f"; the unsent results of items #{lost[0]}..#{lost[-2]} were lost with it"
    return (f"worker pid {worker.pid} died ({how}) while it held {held}. "
            "A new worker has replaced it")


def create(workers: int, options: Options) -> ProcessBackend:
    return ProcessBackend(workers, options.start_method)
