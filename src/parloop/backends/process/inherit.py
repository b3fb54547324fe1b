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

from typing import Any

from ..base import LIVE_JOBS

__all__ = ["Inherited", "holding"]


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
