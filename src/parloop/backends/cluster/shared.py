"""The parts every cluster backend (Dask, Ray) shares: one remote task per
chunk, the job's data shipped once, errors captured per item, and the
handling of lost workers.

How a chunk travels::

    caller (dispatch engine)                         Dask / Ray worker
    ------------------------                         -----------------
    first submit of a job:
      (fn, args, kwargs) pickled once ---------------> held by the cluster
    submit(chunk) --> one remote task:
      run_chunk_remote(job key, spec, start, items) -> unpickle the spec once per
                                                       worker (cached by key), run
                                                       the items (_runner, as a
                                                       process worker does)
    _poll() <-- (worker, [Done, ...]) ---------------- task result
       |
       v
    Outcome(job, start, values, errors) --> engine

A result that is not a small plain value travels as its own pickle, so one
unpicklable result fails only its item.

A lost worker fails the items it ran, and only those. A chunk whose worker
died is split into one task per item. A one-item task whose worker died
gets a strike; Ray runs one task per worker process, so one strike condemns
the item (WorkerCrashedError). Dask blames every task queued on the dead
worker (KilledWorker), so there the first strike sends the item to
quarantine, where suspects run one at a time, and only a second strike
condemns it.

Neither engine says when a task starts, so ``timeout=`` is best effort. For
a job with a timeout the cluster holds no more tasks than it has threads (the
rest wait here), so a task sent is taken to be running; one past ``timeout``
per item (plus COLD_START seconds while workers may still be starting) is
cancelled and its worker ended (Ray kills it; on Dask it exits and its nanny
starts another). Without that limit Dask queues a second task on a busy
worker, and that task would be blamed for the time it waited.

parloop must be importable on the cluster's workers: the task function is
sent by reference. ``import parloop`` never imports dask or ray; this module
imports them only inside the backends.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ... import _pickling
from ...errors import TaskTimeoutError, WorkerCrashedError, short_repr
from .._wire import JobSpec, decode, failed_outcome, pack_item, pack_items, rebuilt
from ..base import Backend, Chunk, Ended, Job, Outcome
from .task import Reply

__all__ = ["ClusterBackend"]

TIMEOUT_GRACE = 0.25  # seconds a chunk may overrun timeout * items: scheduling noise
LONG_ITEM = 0.05  # seconds: items this long are not queued behind one another on a worker
COLD_START = 5.0  # more seconds while a worker may still be starting, or loading the job
LOST_RETRIES = 3  # times a chunk is resent after the cluster lost the job's data

# -- caller side, shared by Dask and Ray -----------------------------------------------


@dataclass(eq=False)
class _Task:
    chunk: Chunk
    split: bool = False  # items pickled one by one
    lost: int = 0  # times resent after the cluster lost the job's data
    strikes: int = 0  # times its worker died under it (one-item tasks)
    started: float | None = None  # when it was taken to be running
    allowance: float = 0.0  # extra seconds: it may have waited for a worker to start
    spec: Any = None  # the handle on the job's data it was sent with

    def budget(self) -> float:
        timeout = self.chunk.job.timeout or 0.0
        return timeout * len(self.chunk.items) + TIMEOUT_GRACE + self.allowance


@dataclass(eq=False)
class _ShippedJob:
    key: str
    blob: bytes
    spec: Any = None  # the engine's handle on the shipped blob
    replied: bool = False  # a task of this job has come back: its data reached a worker
    cold_until: float = field(default_factory=lambda: time.monotonic() + COLD_START)


class _Lost(Exception):
    """The cluster dropped a task because data it needed was lost."""


class ClusterBackend(Backend):
    """One remote task per chunk on an engine that runs tasks; subclasses
    supply the engine calls (the methods that raise NotImplementedError)."""

    #: worker losses a one-item task survives before it is blamed (see above)
    strikes_allowed = 0

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        self._jobs: dict[int, _ShippedJob] = {}
        self._tasks: dict[Any, _Task] = {}  # engine handle -> task, in submission order
        self._quarantine: deque[_Task] = deque()
        self._waiting: deque[_Task] = deque()  # tasks held here until a thread is free
        self._suspect: Any = None  # handle of the quarantined task running now
        self._ready: list[Outcome] = []
        self._slot_count: int | None = None
        self._cold_until = 0.0  # a worker was lost or killed: its successor may be starting

    # -- engine calls -------------------------------------------------------------------

    def _ship(self, blob: bytes) -> Any:
        raise NotImplementedError

    def _launch(self, state: _ShippedJob, chunk: Chunk, packed: Any) -> Any:
        raise NotImplementedError

    def _finished(self, timeout: float | None) -> list[Any]:
        """Handles of tasks that finished, waiting up to ``timeout`` for one."""
        raise NotImplementedError

    def _results(self, handles: list[Any]) -> list[tuple[Reply, BaseException | None]]:
        raise NotImplementedError

    def _stop(self, handles: list[Any], hard: bool = False) -> None:
        """Cancel tasks; ``hard``: one overran its timeout, stop it even if running."""
        raise NotImplementedError

    def _is_crash(self, error: BaseException) -> bool:
        raise NotImplementedError

    def _slots(self) -> int:
        """How many tasks the cluster runs at once."""
        raise NotImplementedError

    def _run_everywhere(self, job: Job) -> list[Ended]:
        """``task.end_state_remote(job.setup)`` on every worker process that
        may hold a state of it, with their answers."""
        raise NotImplementedError

    def _held_back(self, job: Job) -> bool:
        """Whether the cluster gets no more of ``job``'s tasks than it has
        free threads: with a timeout (a task sent is then taken to be
        running), and with long items, so that no task of them waits behind
        another on a busy worker while another worker idles."""
        return job.timeout is not None or (job.item_seconds or 0.0) >= LONG_ITEM

    # -- sending ------------------------------------------------------------------------

    def submit(self, chunk: Chunk) -> None:
        with self._lock:
            task = _Task(chunk)
            if self._held_back(chunk.job):
                self._job_state(chunk.job)  # learns how many threads the cluster has
                if self._waiting or len(self._tasks) >= (self._slot_count or 1):
                    self._waiting.append(task)
                    return
            self._launch_task(task)

    def _launch_waiting(self) -> None:
        while self._waiting and len(self._tasks) < (self._slot_count or 1):
            self._resend(self._waiting.popleft())

    def _launch_task(self, task: _Task) -> Any:
        chunk = task.chunk
        state = self._job_state(chunk.job)
        packed: Any = None
        if not task.split:
            try:
                packed = pack_items(chunk.items, by_value=True)
            except Exception:
                task.split = True
        if task.split:
            packed = [pack_item(chunk.start + i, item, by_value=True)
                      for i, item in enumerate(chunk.items)]
        handle = self._launch(state, chunk, packed)
        task.spec = state.spec
        self._tasks[handle] = task
        return handle

    def _resend(self, task: _Task) -> None:
        if self._held_back(task.chunk.job) and len(self._tasks) >= (self._slot_count or 1):
            self._waiting.append(task)  # see submit
            return
        try:
            self._launch_task(task)
        except Exception as exc:  # e.g. no worker came back to hold the job's data
            self._ready.append(failed_outcome(task.chunk, task.chunk.start,
                                             self._crash(task.chunk, exc)))

    def _job_state(self, job: Job) -> _ShippedJob:
        state = self._jobs.get(job.id)
        if state is None:
            spec = tuple(JobSpec.of(job, math.inf, False))
            try:
                blob = _pickling.dumps(spec)
            except Exception as exc:
                raise _pickling.explain_unpicklable(job.fn, job.args, job.kwargs, job.star) \
                    or exc from None
            state = self._jobs[job.id] = _ShippedJob(f"parloop-{uuid.uuid4().hex}-{job.id}", blob)
            if self._held_back(job) and self._slot_count is None:
                self._slot_count = max(1, self._slots())
        if state.spec is None:
            state.spec = self._ship(state.blob)
        return state

    # -- the rest of the Backend interface ------------------------------------------------

    def cancel(self, job: Job) -> None:
        with self._lock:
            mine = [h for h, task in self._tasks.items() if task.chunk.job is job]
            for handle in mine:
                del self._tasks[handle]
            if mine:
                self._stop(mine)
            self._quarantine = deque(t for t in self._quarantine if t.chunk.job is not job)
            self._waiting = deque(t for t in self._waiting if t.chunk.job is not job)
            self._ready = [o for o in self._ready if o.job_id != job.id]

    def end_states(self, job: Job) -> list[Ended]:
        import pickle

        return [rebuilt(answer, pickle.loads) for answer in self._run_everywhere(job)
                if answer.made]

    def end_job(self, job: Job) -> None:
        with self._lock:
            super().end_job(job)
            self._jobs.pop(job.id, None)  # dropping the handle frees the shipped spec

    def _drop_all(self) -> None:
        handles, self._tasks = list(self._tasks), {}
        self._jobs.clear()
        self._quarantine.clear()
        self._waiting.clear()
        self._suspect = None
        self._ready = []
        if handles:
            try:
                self._stop(handles)
            except Exception:  # the engine may be gone already; nothing left to cancel
                logging.getLogger(__name__).debug("cancel at close failed", exc_info=True)

    # -- collecting -----------------------------------------------------------------------

    def _poll(self, timeout: float | None) -> list[Outcome]:
        with self._lock:  # held while waiting: wait() polls in short slices when shared
            self._launch_waiting()
            if not self._ready:
                if self._tasks:
                    now = time.monotonic()
                    self._mark_running(now)
                    done = self._finished(self._until_deadline(now, timeout))
                    if done:
                        self._collect(done)
                    self._enforce_deadlines()
                    self._release_suspect()
                    self._launch_waiting()
                elif timeout:
                    time.sleep(timeout)
            ready, self._ready = self._ready, []
            return ready

    def _collect(self, done: list[Any]) -> None:
        tasks = [self._tasks.pop(handle) for handle in done]
        for task, (reply, error) in zip(tasks, self._results(done), strict=True):
            chunk = task.chunk
            state = self._jobs.get(chunk.job.id)
            if state is None:
                continue  # its call ended
            state.replied = True
            if error is not None:
                self._failed(task, error)
            elif reply is None:
                self._resend(_Task(chunk, split=True))
            else:
                worker, reports = reply
                for report in reports:
                    self._ready.append(decode(chunk, report, worker))
                ran = sum(len(report.values) for report in reports)
                if ran < len(chunk.items):
                    # The task stopped early (an error under stop_on_error, or an
                    # interrupt). Send the rest: the engine cancels it if it stops the
                    # call, and needs it when it retries the failed item instead.
                    rest = Chunk(chunk.job, chunk.start + ran, chunk.items[ran:])
                    self._resend(_Task(rest, task.split))

    def _failed(self, task: _Task, error: BaseException) -> None:
        chunk = task.chunk
        lost = isinstance(error, _Lost)
        if not lost and not self._is_crash(error):
            self._ready.append(failed_outcome(chunk, chunk.start, error))
            return
        self._cold_until = time.monotonic() + COLD_START  # workers are being replaced
        if lost and task.lost < LOST_RETRIES:
            state = self._jobs[chunk.job.id]
            if state.spec is task.spec:
                state.spec = None  # ship it again (once for all the tasks that lost it)
            self._resend(_Task(chunk, task.split, task.lost + 1, task.strikes))
        elif len(chunk.items) > 1:
            # Which item killed the worker? Run each alone to find out.
            for offset, item in enumerate(chunk.items):
                self._resend(_Task(Chunk(chunk.job, chunk.start + offset, [item]), task.split))
        elif task.strikes < self.strikes_allowed:
            self._quarantine.append(_Task(chunk, task.split, task.lost, task.strikes + 1))
        else:
            self._ready.append(failed_outcome(chunk, chunk.start, self._crash(chunk, error)))

    def _release_suspect(self) -> None:
        """Run the next quarantined task once the one before it has finished."""
        if self._quarantine and self._suspect not in self._tasks:
            self._suspect = None
            task = self._quarantine.popleft()
            try:
                self._suspect = self._launch_task(task)
            except Exception as exc:
                self._ready.append(failed_outcome(task.chunk, task.chunk.start,
                                                 self._crash(task.chunk, exc)))

    def _crash(self, chunk: Chunk, error: BaseException) -> WorkerCrashedError:
        end = chunk.start + len(chunk.items) - 1
        what = (f"item #{chunk.start} ({short_repr(chunk.items[0])})" if end == chunk.start
                else f"items #{chunk.start}..#{end}")
        crash = WorkerCrashedError(
            f"a {self.name} worker was lost while it ran {what}: {type(error).__name__}: {error}",
            indices=tuple(range(chunk.start, end + 1)))
        crash.__cause__ = error
        return crash

    # -- timeouts -------------------------------------------------------------------------

    def _mark_running(self, now: float) -> None:
        if self._slot_count is None:
            return
        for task in itertools.islice(self._tasks.values(), self._slot_count):
            if task.started is None:
                task.started = now
                state = self._jobs.get(task.chunk.job.id)
                if (state is not None and (not state.replied or now < state.cold_until)) \
                        or now < self._cold_until:
                    task.allowance = COLD_START

    def _until_deadline(self, now: float, timeout: float | None) -> float | None:
        for task in self._tasks.values():
            if task.started is not None and task.chunk.job.timeout is not None:
                left = max(0.0, task.started + task.budget() - now)
                timeout = left if timeout is None else min(timeout, left)
        return timeout

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        late = [(handle, task) for handle, task in self._tasks.items()
                if task.started is not None and task.chunk.job.timeout is not None
                and now - task.started > task.budget()]
        if not late:
            return
        for handle, _ in late:
            del self._tasks[handle]
        self._stop([handle for handle, _ in late], hard=True)
        self._cold_until = now + COLD_START  # their workers are being replaced
        for _, task in late:
            chunk = task.chunk
            what = (f"item #{chunk.start} ({short_repr(chunk.items[0])})" if len(chunk.items) == 1
                    else f"the task running items #{chunk.start}..#{chunk.start + len(chunk.items) - 1}")
            self._ready.append(failed_outcome(chunk, chunk.start, TaskTimeoutError(
                f"{what} ran longer than timeout={chunk.job.timeout:g} s per item; "
                f"its {self.name} task was cancelled")))
