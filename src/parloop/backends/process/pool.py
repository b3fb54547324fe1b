"""The process backend: parloop's own process pool.

How a chunk travels::

    caller (dispatch engine)                       worker process i
    ------------------------                       ----------------
    submit(chunk) -- JobMessage (once per worker) --> receiver thread --> inbox
                  -- RunChunk (pickled items) ------> receiver thread --> inbox
                                                      main thread: run items
                                                      (_runner), writing the
                                                      item's index into status[i]
    _poll() <------- Done (partial / final) --------- main thread (every 50 ms)
       |  also waits on every worker's sentinel: a death is seen at once
       |  and reads status[i] to name the item that was running
       v
    Outcome(job, start, values, errors) --> engine

Big buffers (NumPy arrays, big pickles) travel beside their message through
anonymous shared memory, not through the pipe (see ``shm``).

One pipe per worker, so the caller always knows which worker holds which
items: a crash or a timeout fails only the item that was running. Items the
dead worker had finished but not yet reported (the last < 50 ms), and items it
had not started, go to another worker. A replacement worker starts at once.

Each worker holds at most two chunks: one running, one queued behind it, so
that it never waits for the caller between chunks. A queued chunk does not
stay behind a long item while another worker idles: the idle one's turn
comes, the busy one is asked to give the chunk back (Revoke), and if it has
not started it, it goes to the idle one. A cancel reaches the workers at
once and they stop the call's running items themselves (see ``worker``);
one still on such an item CANCEL_GRACE later (a C call that never returns to
Python) is killed by a timer thread here, which only kills: the worker is
replaced on the pool's next use, so no fork ever happens from that thread.

No helper threads run in the caller, so forking stays safe and Ctrl-C lands
in the caller's wait. A worker leaves when its pipe reaches EOF, that is when
the caller is gone, even by SIGKILL. Under fork every child inherits a copy of
the caller's pipe ends, so an at-fork hook closes those copies in each child;
otherwise a worker would keep its own pipe open and outlive a killed caller
(see ``children``, which starts and stops the worker processes).
"""

from __future__ import annotations

import os
import time
from multiprocessing.connection import wait as wait_for
from typing import Any

from ... import _cpu
from ...errors import WorkerCrashedError
from .._wire import Done, decode, failed_outcome, pack_item, pack_items, rebuilt
from ..base import Backend, Chunk, Ended, Job, Outcome
from . import children as _children
from . import deadlines, pipe, shm
from .children import Sent, Worker
from .inherit import Payloads
from .messages import Cancel, Forget, JobMessage, Ready, Resend, Revoke, Revoked, RunChunk, Stop
from .roster import Roster
from .worker import CANCEL_GRACE, IDLE_EXIT

__all__ = ["ProcessBackend"]

IDLE_TIMEOUT = float(os.environ.get("PARLOOP_IDLE_TIMEOUT", "300"))
FLUSH_SECONDS = 0.05
STOP_CHECK = 0.005  # seconds a cancel waits to see running items stop


class ProcessBackend(Backend):
    name = "process"

    def __init__(self, workers: int, start_method: str | None = None,
                 max_items: int | None = None) -> None:
        super().__init__(workers)
        self._outcomes: list[Outcome] = []
        self._unassigned: list[Chunk] = []  # waiting for a worker that may take them
        self._payloads = Payloads(FLUSH_SECONDS)  # each job's spec, as each worker gets it
        self._main_by_value: set[int] = set()  # jobs whose items go by value to every worker
        self._roster = Roster(workers, start_method, max(1, _cpu.cpu_count() // workers),
                              IDLE_TIMEOUT, max_items)
        self._inherited = False
        self._ended: dict[int, list[Ended]] = {}  # job id -> its teardowns' answers
        _children.track(self)
        self._roster.refill()
        if not self._roster.workers:
            raise WorkerCrashedError(self._roster.last_failure)

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
            self._look_after()
            self._place(chunk)

    def _place(self, chunk: Chunk, split: bool = False) -> None:
        """Give ``chunk`` to a worker that may take it, in parts if a worker
        may take only so many more items; what none may take now waits."""
        while chunk.items:
            hopeless = self._roster.hopeless()
            if hopeless is not None:
                self._outcomes.append(failed_outcome(chunk, chunk.start, WorkerCrashedError(
                    hopeless, indices=tuple(range(chunk.start, chunk.end)))))
                return
            worker = self._roster.pick()
            if worker is None:
                self._unassigned.append(chunk)
                return
            room = self._roster.capacity(worker)
            if room is not None and room < len(chunk.items):
                part, chunk = chunk.split(room)
                self._assign(worker, part, split)
                continue
            self._assign(worker, chunk, split)
            return

    def _assign(self, worker: Worker, chunk: Chunk, split: bool = False) -> None:
        job = chunk.job
        if job.id not in worker.jobs:
            self._send(worker, JobMessage(job.id, self._payloads.get(job, job.id in worker.holds)))
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
        worker.assigned += len(chunk.items)
        self._send(worker, RunChunk(job.id, chunk.start, len(chunk.items), items, split))

    def started(self) -> bool:
        """A worker has said it is ready, or one has exited (a failed start:
        waiting on the pool then reports it)."""
        with self._lock:
            for worker in self._roster.workers:
                if not worker.ready and worker.conn.poll():
                    self._drain(worker)
            return self._roster.broken is not None or any(
                w.ready or w.process.exitcode is not None for w in self._roster.workers)

    def cancel(self, job: Job) -> None:
        with self._lock:
            now = time.monotonic()
            for worker in self._roster.workers:
                held = [s for s in worker.inflight if s.chunk.job is job]
                for sent in held:
                    sent.cancelled_at = now
                if held:
                    self._send(worker, Cancel(job.id))  # it stops the running item itself
            self._outcomes = [o for o in self._outcomes if o.job_id != job.id]
            self._unassigned = [c for c in self._unassigned if c.job is not job]
            stuck = self._stopping(job, now + STOP_CHECK)
        if stuck:
            deadlines.kill_later(self._lock, self._roster, job, CANCEL_GRACE - STOP_CHECK)

    def _stopping(self, job: Job, deadline: float) -> bool:
        """Wait until ``deadline`` for every worker to report the end of its
        chunks of ``job`` (an item in Python code stops within microseconds
        of the cancel); whether some did not. A worker may have started one
        just before the cancel reached it, in a C call that holds the GIL:
        a timer then kills its worker at CANCEL_GRACE, whether or not anyone
        polls meanwhile."""
        while True:
            holders = [w for w in self._roster.workers
                       if any(sent.chunk.job is job for sent in w.inflight)]
            left = deadline - time.monotonic()
            if not holders or left <= 0:
                return bool(holders)
            try:
                ready = wait_for([w.conn for w in holders], left)
            except (OSError, ValueError):
                return True
            for worker in holders:
                if worker.conn in ready:
                    self._drain(worker)

    def end_states(self, job: Job) -> list[Ended]:
        """Forget(teardown) to each worker that had ``job``; each answers with
        Ended once through what it holds of other jobs, or dies (and is gone
        from the roster, its state with it)."""
        with self._lock:
            self._ended[job.id] = []
            for worker in self._roster.workers:
                if job.id in worker.jobs:
                    worker.jobs.discard(job.id)
                    if self._send(worker, Forget(job.id, teardown=True)):
                        worker.ending.add(job.id)
        while True:
            with self._lock:
                if not any(job.id in worker.ending for worker in self._roster.workers):
                    return self._ended.pop(job.id)
            self.wait(job, STOP_CHECK)  # the poller hands answers to _handle

    def end_job(self, job: Job) -> None:
        with self._lock:
            super().end_job(job)
            self._main_by_value.discard(job.id)
            for worker in self._roster.workers:
                if job.id in worker.jobs:
                    worker.jobs.discard(job.id)
                    self._send(worker, Forget(job.id))

    def close(self, *, kill: bool = False) -> None:
        with self._lock:
            _children.live_pools.discard(self)
            self._roster.close(None if kill else lambda worker: self._send(worker, Stop()))

    def disown(self) -> None:
        """In a forked child: these workers are the parent's. Drop them
        without a word to them; a call made here starts a pool of its own."""
        self._roster.workers, self._outcomes, self._inherited = [], [], True
        self._reset_lock()  # another thread may have held it at the fork

    # -- collecting ----------------------------------------------------------------

    def _poll(self, timeout: float | None) -> list[Outcome]:
        # The lock is not held while waiting: other threads' calls submit
        # meanwhile. Only the poller replaces workers, so the handles stay
        # valid, unless the pool closes (then the wait fails, or wakes).
        with self._lock:
            self._look_after()
            if self._outcomes:
                ready, self._outcomes = self._outcomes, []
                return ready
            self._steal()
            timeout = deadlines.seconds_to_next(self._roster.workers, time.monotonic(), timeout)
            handles = self._roster.handles()
        try:
            woken = wait_for(list(handles), timeout)
        except (OSError, ValueError):  # closed under us
            woken = []
        with self._lock:
            for handle in woken:
                worker = handles[handle]
                if handle is worker.conn and worker in self._roster.workers:
                    self._drain(worker)
            self._look_after()
            self._enforce_deadlines()
            ready, self._outcomes = self._outcomes, []
            return ready

    def _look_after(self) -> None:
        """Replace dead workers and workers that have run their share, start
        missing ones, and place what waited for a worker."""
        for worker in self._roster.dead():
            self._drain(worker)
            self._replace(worker)
        self._roster.spent()
        self._roster.refill()
        waiting, self._unassigned = self._unassigned, []
        for chunk in waiting:
            self._place(chunk)

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
        elif kind is Revoked:
            self._given_back(worker, message)
        elif kind is Ended:
            worker.ending.discard(message.job_id)
            if message.made and message.job_id in self._ended:
                self._ended[message.job_id].append(rebuilt(message, shm.loads))
        elif kind is Ready:
            self._roster.started(worker)
        elif kind is Resend:
            sent = worker.inflight.popleft()
            # The worker runs the resent chunk after those already queued, so
            # it goes to the back of inflight too. Sent by value first (it may
            # name a class of __main__ the worker lacks), then item by item.
            if sent.cancelled_at is None:
                by_value_first = not sent.by_value and not sent.split
                if by_value_first:
                    self._main_by_value.add(sent.chunk.job.id)
                worker.assigned -= len(sent.chunk.items)
                self._assign(worker, sent.chunk, split=not by_value_first)

    # -- balance ---------------------------------------------------------------------

    def _steal(self) -> None:
        """A worker with nothing to do asks a busy one for its queued chunk."""
        idle = [w for w in self._roster.workers if w.ready and not w.load()
                and self._roster.capacity(w) != 0]
        if not idle:
            return
        busy = sorted((w for w in self._roster.workers if w.load() > 1 or not w.ready),
                      key=lambda w: -w.load())
        for worker in busy[:len(idle)]:
            # The last chunk anyone waits for, unless it is the one running.
            queued = next((s for s in reversed(worker.inflight) if s.cancelled_at is None), None)
            if queued is None or (queued is worker.inflight[0] and worker.ready):
                continue
            if not queued.revoking and not queued.started:
                queued.revoking = True
                self._send(worker, Revoke(queued.chunk.job.id, queued.chunk.start))

    def _given_back(self, worker: Worker, message: Revoked) -> None:
        sent = next((s for s in worker.inflight if s.revoking and s.chunk.start == message.start
                     and s.chunk.job.id == message.job_id), None)
        if sent is None:
            return
        sent.revoking = False
        sent.started = not message.given_back
        if message.given_back:
            worker.inflight.remove(sent)
            worker.assigned -= len(sent.chunk.items)
            if sent.cancelled_at is None:
                self._place(sent.chunk, sent.split)

    # -- faults ----------------------------------------------------------------------

    def _replace(self, worker: Worker, cause: BaseException | None = None) -> None:
        """``worker`` is dead or must die: fail the item it was at, send the
        rest of what it held to the others, start another worker."""
        at = worker.holding()
        code = self._roster.remove(worker)
        code = code if cause is None else None
        self._roster.refill()
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
                error = cause or WorkerCrashedError(
                    _children.crash_message(worker, code, index, chunk),
                    pid=worker.pid, exitcode=code, indices=(index,))
                self._outcomes.append(failed_outcome(chunk, index, error, index + 1))
                # Results it had finished but not sent died with it: run those again.
                self._requeue(chunk, sent.next_index, index, split)
                self._requeue(chunk, index + 1, sent.end, split)
            else:
                self._requeue(chunk, sent.next_index, sent.end, split)

    def _requeue(self, chunk: Chunk, start: int, end: int, split: bool) -> None:
        if start < end:
            self._place(Chunk(chunk.job, start, chunk.items[start - chunk.start:end - chunk.start]),
                        split)

    def _enforce_deadlines(self) -> None:
        for worker, error in deadlines.overdue(self._roster.workers, time.monotonic()):
            self._replace(worker, error)
