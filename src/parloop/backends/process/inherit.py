"""Extra arguments that a forked worker already holds, so they need no pickling.

A worker forked while a call runs has a copy of the caller's memory, the
call's ``Job`` and its extra arguments included (``f(items, big_table)``):
every Job is listed in ``base.LIVE_JOBS`` while it exists, and a fork notes
which were listed (``holding``). To such a worker the job's spec goes with
its arguments replaced by ``Inherited`` references, which unpickle to the
worker's own copy: nothing is pickled, sent or unpickled, however big the
arguments are.

Any other worker (spawned, from the fork server, or forked before the call
began, as a warm pool's are) gets the arguments pickled, once per call.
"""

from __future__ import annotations

import weakref
from typing import Any

from ... import _pickling
from .._wire import JobSpec
from ..base import LIVE_JOBS, Job
from . import shm

__all__ = ["Inherited", "Payloads", "holding"]


def holding() -> frozenset[int]:
    """(Caller, just before a fork.) The jobs the child will hold."""
    return frozenset(LIVE_JOBS.keys())


class Inherited:
    """Stands for a job's arguments (``part`` 0) or keyword arguments (1) in
    a spec sent to a worker that holds them."""

    __slots__ = ("job_id", "part")

    def __init__(self, job_id: int, part: int) -> None:
        self.job_id, self.part = job_id, part

    def __reduce__(self) -> tuple[Any, ...]:
        return (_take, (self.job_id, self.part))


def _take(job_id: int, part: int) -> Any:
    """(Worker.) Its own copy of the job's arguments."""
    job = LIVE_JOBS.get(job_id)
    if job is None:
        raise RuntimeError(f"parloop: job {job_id}'s arguments were not inherited by this "
                           "worker (please report this)")
    return job.args if part == 0 else job.kwargs


class Payloads:
    """Each job's spec as a worker gets it: pickled once per call, arguments
    and all, big buffers out of band; or, for a worker forked while the call
    ran (``held``), with its arguments as ``Inherited`` references. Each
    job notes which way its arguments went (``job.args_by``, for its plan)."""

    def __init__(self, flush_every: float) -> None:
        self._flush_every = flush_every
        self._pickled: weakref.WeakKeyDictionary[Job, Any] = weakref.WeakKeyDictionary()

    def get(self, job: Job, held: bool) -> Any:
        timed = job.timeout is not None  # every item's result leaves at once
        spec = JobSpec.of(job, 0.0 if timed else self._flush_every, timed)
        if held:
            job.args_by.add("fork")
            # (They unpickle, in the worker, as the tuple and dict they stand for.)
            spec = spec._replace(args=Inherited(job.id, 0),  # type: ignore[arg-type]
                                 kwargs=Inherited(job.id, 1))  # type: ignore[arg-type]
            return shm.pack(tuple(spec), _pickling.dumps)
        if job not in self._pickled:
            try:
                payload = shm.pack(tuple(spec), _pickling.dumps)
            except Exception as exc:  # arguments the caller did not try (see _dispatch)
                raise _pickling.explain_unpicklable(job.fn, job.args, job.kwargs, job.star) \
                    or exc from None
            # A worker may get it later (a replacement): it must see the arguments as they were.
            self._pickled[job] = payload.snapshot() if isinstance(payload, shm.Packed) else payload
        job.args_by.add("pickle")
        return self._pickled[job]
