"""The process backend: parloop's own process pool.

How a chunk travels::

    caller (dispatch engine)                     worker process i
    ------------------------                     ----------------
    submit(chunk) ---- "job" (once per worker) --> receiver thread --> inbox
                  ---- "chunk" (pickled items) --> receiver thread --> inbox
                                                   main thread: run items,
                                                   write phase, index, job
                                                   into status[i] per item
    _poll() <-------- "done" (partial / final) --- main thread (flush every 50 ms)
       |  also waits on every worker's sentinel: a death is seen at once
       |  and reads status[i] to name the item that was running
       v
    Outcome(job, start, values, errors) --> engine

Big buffers (NumPy arrays, big pickles) travel beside their message through
anonymous shared memory, not through the pipe (see ``_shm``).

One pipe per worker, so the caller always knows which worker holds which
items: a crash or a timeout fails only the item that was running. Items the
dead worker had finished but not yet reported (the last < 50 ms), and items it
had not started, go to another worker. A replacement worker starts at once.
No helper threads run in the caller, so forking stays safe and Ctrl-C lands
in the caller's wait.

A worker leaves when its pipe reaches EOF, that is when the caller is gone,
even by SIGKILL. Under fork every child inherits a copy of the caller's pipe
ends, so an at-fork hook closes those copies in each child; otherwise a
worker would keep its own pipe open and outlive a killed caller (see
``_children``, which starts and stops the worker processes).
"""

from __future__ import annotations

import os
import time
import weakref
from multiprocessing.connection import wait as wait_for
from typing import Any

from ... import _costs, _cpu, _pickling
from ..._cpu import default_start_method
from ...errors import TaskTimeoutError, WorkerCrashedError, short_repr
from .._wire import (
    Cancel,
    Done,
    Forget,
    JobMessage,
    JobSpec,
    Ready,
    Resend,
    RunChunk,
    Stop,
    decode,
    failed_outcome,
    pack_item,
    pack_items,
)
from ..base import Backend, Chunk, Job, Outcome, Settings
from . import children as _children
from . import launch as _launch
from . import pipe, shm
from .children import Sent, Worker
from .worker import IDLE_EXIT

__all__ = ["ProcessBackend", "default_start_method"]

IDLE_TIMEOUT = float(os.environ.get("PARLOOP_IDLE_TIMEOUT", "300"))
FLUSH_SECONDS = 0.05
CANCEL_GRACE = 0.5  # a cancelled item may finish this long before its worker is replaced
STOP_GRACE = 2.0  # an idle worker asked to stop may take this long before it is killed
STARTUP_FAILURES = 3  # workers dying before "ready" in a row: the pool is broken


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
        # each job pickled once, big buffers out of band (see _assign)
        self._payloads: weakref.WeakKeyDictionary[Job, Any] = weakref.WeakKeyDictionary()
        self._main_by_value: set[int] = set()  # jobs whose items go by value to every worker
        self._pool: list[Worker] = []
        self._inherited = False
        _children.track(self)
        self._pool = [self._spawn() for _ in range(workers)]

    # -- workers ---------------------------------------------------------------

    def _spawn(self) -> Worker:
        # Re-decided per worker: a replacement forked into a caller that has
        # started threads since would risk a deadlock.
        method = self._explicit_method or default_start_method()
        return _children.start(method, self._threads, IDLE_TIMEOUT)

    def _send(self, worker: Worker, message: Any) -> bool:
        try:
            pipe.send(worker.conn, message)
            return True
        except OSError:  # it died; its sentinel tells the rest
            return False

    # -- the Backend interface -------------------------------------------------

    def submit(self, chunk: Chunk) -> None:
        with self._lock:
            if self._inherited:  # this pool belongs to the process we were forked from
                self._inherited = False
                _children.track(self)
                self._pool = [self._spawn() for _ in range(self.workers)]
            if self._broken:
                self._outcomes.append(failed_outcome(chunk, chunk.start, WorkerCrashedError(
                    self._broken, indices=tuple(range(chunk.start, chunk.start + len(chunk.items))))))
                return
            worker = min(self._pool, key=lambda w: (len(w.inflight), not w.ready))
            self._assign(worker, chunk)

    def _assign(self, worker: Worker, chunk: Chunk, split: bool = False) -> None:
        job = chunk.job
        if job not in self._payloads:  # pickled once, sent to each worker that runs the job
            timed = job.timeout is not None  # every item's result leaves at once
            spec = JobSpec(job.fn, job.args, job.kwargs, job.star, job.stop_on_error,
                           0.0 if timed else FLUSH_SECONDS, timed)
            payload = shm.pack(tuple(spec), _pickling.dumps)
            # A worker may get it later (a replacement): it must see the arguments as they were.
            self._payloads[job] = payload.snapshot() if isinstance(payload, shm.Packed) else payload
        if job.id not in worker.jobs:
            self._send(worker, JobMessage(job.id, self._payloads[job]))
            worker.jobs.add(job.id)
        # Items naming classes of __main__ go by value to a worker that may
        # lack them: one not forked from this process, or one that failed to
        # load them by reference already (the class is newer than the worker).
        by_value = not worker.forked or job.id in self._main_by_value
        items: Any = None
        if not split:
            try:
                items = pack_items(chunk.items, by_value, shm.pack)
            except Exception:
                split = True
        if split:
            items = [pack_item(chunk.start + i, x, by_value, shm.pack)
                     for i, x in enumerate(chunk.items)]
        worker.inflight.append(Sent(chunk, chunk.start, split, by_value))
        self._send(worker, RunChunk(job.id, chunk.start, len(chunk.items), items, split))

    def started(self) -> bool:
        """A worker has said it is ready, or one has exited (a failed start:
        waiting on the pool then reports it)."""
        with self._lock:
            for worker in self._pool:
                if not worker.ready and worker.conn.poll():
                    self._drain(worker)
            return self._broken is not None or any(
                worker.ready or worker.process.exitcode is not None for worker in self._pool)

    def cancel(self, job: Job) -> None:
        with self._lock:
            now = time.monotonic()
            for worker in self._pool:
                held = [s for s in worker.inflight if s.chunk.job is job]
                for sent in held:
                    sent.cancelled_at = now
                if held:
                    self._send(worker, Cancel(job.id))
            self._outcomes = [o for o in self._outcomes if o.job_id != job.id]

    def end_job(self, job: Job) -> None:
        with self._lock:
            super().end_job(job)
            self._main_by_value.discard(job.id)
            for worker in self._pool:
                if job.id in worker.jobs:
                    worker.jobs.discard(job.id)
                    self._send(worker, Forget(job.id))

    def close(self, *, kill: bool = False) -> None:
        """Idle workers are asked to stop; busy ones (their work was cancelled
        or abandoned, since nobody waits for it any more) are killed."""
        with self._lock:
            pool, self._pool = self._pool, []
            _children.live_pools.discard(self)
            idle = [] if kill else [w for w in pool if not w.inflight]
            for worker in idle:
                self._send(worker, Stop())
            deadline = time.monotonic() + STOP_GRACE
            for worker in idle:
                worker.process.join(max(0.0, deadline - time.monotonic()))
            _children.stop(pool)

    # -- collecting ----------------------------------------------------------------

    def _poll(self, timeout: float | None) -> list[Outcome]:
        # The lock is not held while waiting: other threads' calls submit
        # meanwhile. Only the poller replaces workers, so the handles stay
        # valid, unless the pool closes (then the wait fails, or wakes).
        with self._lock:
            if self._outcomes:
                ready, self._outcomes = self._outcomes, []
                return ready
            timeout = self._until_deadline(timeout)
            handles = {w.conn: w for w in self._pool} | {w.process.sentinel: w for w in self._pool}
        try:
            woken = wait_for(list(handles), timeout)
        except (OSError, ValueError):  # closed under us
            woken = []
        with self._lock:
            for handle in woken:
                worker = handles[handle]
                if handle is worker.conn and worker in self._pool:
                    self._drain(worker)
            for worker in list(self._pool):
                if worker.process.exitcode is not None:
                    self._drain(worker)
                    self._replace(worker)
            self._enforce_deadlines()
            ready, self._outcomes = self._outcomes, []
            return ready

    def _drain(self, worker: Worker) -> None:
        try:
            while worker.conn.poll():
                self._handle(worker, pipe.receive(worker.conn))
        except EOFError:
            pass
        except OSError:
            # Dead (its pipe reset), or alive with a message lost half read (no fd
            # or memory left here for its shared buffers): replace it either way,
            # so that what it held runs again rather than being waited for.
            if worker.process.exitcode is None:
                worker.process.kill()

    def _handle(self, worker: Worker, message: Any) -> None:
        kind = type(message)
        if kind is Done:
            sent = worker.inflight[0]
            sent.next_index = message.start + len(message.values)
            if message.final:
                worker.inflight.popleft()
            if sent.cancelled_at is None:
                self._outcomes.append(decode(sent.chunk, message, worker.name, shm.loads))
        elif kind is Ready:
            worker.ready = True
            self._startup_failures = 0
        elif kind is Resend:
            sent = worker.inflight.popleft()
            # The worker runs the resent chunk after those already queued, so
            # it goes to the back of inflight too. Sent by value first (it may
            # name a class of __main__ the worker lacks), then item by item.
            if sent.cancelled_at is None:
                by_value_first = not sent.by_value and not sent.split
                if by_value_first:
                    self._main_by_value.add(sent.chunk.job.id)
                self._assign(worker, sent.chunk, split=not by_value_first)

    # -- faults ----------------------------------------------------------------------

    def _replace(self, worker: Worker, cause: BaseException | None = None) -> None:
        """``worker`` is dead or must die: fail the item it was at, send the
        rest of what it held to the others, start another worker."""
        code = worker.process.exitcode if cause is None else None
        _children.stop([worker])
        self._pool[self._pool.index(worker)] = self._spawn()
        if not worker.ready:
            self._startup_failures += 1
            if self._startup_failures >= STARTUP_FAILURES:
                self._broken = (f"workers die before they start (exit code {code}); under the "
                                "spawn and forkserver start methods the main module must be "
                                "importable and guard its work with if __name__ == '__main__'")
        at = worker.holding()
        if at is not None and code == IDLE_EXIT:
            at = None  # it left on its own, between items
        if at is not None and at.unpickling and not at.sent.split:
            at = None  # it died unpickling a whole chunk: resend it item by item to learn which
        for sent in worker.inflight:
            if sent.cancelled_at is not None:
                continue
            chunk, split = sent.chunk, sent.split or at is None
            if at is not None and at.sent is sent:
                index = at.item_index
                error = cause or WorkerCrashedError(_children.crash_message(worker, code, index, chunk),
                                                    pid=worker.pid, exitcode=code, indices=(index,))
                self._outcomes.append(failed_outcome(chunk, index, error, index + 1))
                # Results it had finished but not sent died with it: run those again.
                self._requeue(chunk, sent.next_index, index, split)
                self._requeue(chunk, index + 1, sent.end, split)
            else:
                self._requeue(chunk, sent.next_index, sent.end, split)

    def _requeue(self, chunk: Chunk, start: int, end: int, split: bool) -> None:
        if start >= end:
            return
        part = Chunk(chunk.job, start, chunk.items[start - chunk.start:end - chunk.start])
        if self._broken:
            self.submit(part)
            return
        worker = min(self._pool, key=lambda w: len(w.inflight))
        self._assign(worker, part, split)

    def _until_deadline(self, timeout: float | None) -> float | None:
        now = time.monotonic()
        for worker in self._pool:
            if not worker.inflight:
                continue
            ends = []
            if worker.inflight[0].cancelled_at is not None:
                ends.append(worker.inflight[0].cancelled_at + CANCEL_GRACE)
            at = worker.holding()
            if at is not None and at.running_since and at.sent.chunk.job.timeout is not None:
                ends.append(at.running_since + at.sent.chunk.job.timeout)
            for end in ends:
                left = max(0.0, end - now)
                timeout = left if timeout is None else min(timeout, left)
        return timeout

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        for worker in list(self._pool):
            if not worker.inflight:
                continue
            cancelled_at = worker.inflight[0].cancelled_at
            if cancelled_at is not None and now - cancelled_at > CANCEL_GRACE:
                self._replace(worker)  # busy with a cancelled item: free it for new work
                continue
            at = worker.holding()
            if at is None or at.running_since is None:
                continue
            sent, index, started = at.sent, at.item_index, at.running_since
            timeout = sent.chunk.job.timeout
            if timeout is not None and now - started > timeout:
                item = sent.chunk.items[index - sent.chunk.start]
                self._replace(worker, TaskTimeoutError(
                    f"item #{index} ({short_repr(item)}) ran longer than timeout={timeout:g} s; "
                    f"its worker (pid {worker.pid}) was killed and replaced"))

    def disown(self) -> None:
        """In a forked child: these workers are the parent's. Drop them
        without a word to them; a call made here starts a pool of its own."""
        self._pool, self._outcomes, self._inherited = [], [], True
        self._reset_lock()  # another thread may have held it at the fork


def prepare(options: Settings) -> None:
    """Before a pool starts in a background thread: a fork server must be
    started from the caller's own thread (see ``launch.ensure_running``)."""
    if (options.start_method or default_start_method()) == "forkserver":
        _launch.ensure_running()


def create(workers: int, options: Settings) -> ProcessBackend:
    """A pool of ``workers`` processes; the time it took to start is this
    machine's next estimate (see ``parloop._costs``)."""
    key = _costs.startup_key(options.start_method or default_start_method())
    started = time.perf_counter()
    backend = ProcessBackend(workers, options.start_method)
    _costs.record_startup(key, workers, time.perf_counter() - started)
    return backend
