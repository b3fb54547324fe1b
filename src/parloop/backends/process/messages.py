"""The messages of a process pool's pipes, besides the shared ``Done`` and
``Ended`` (``.._wire``). Only the process backend imports them: the thread
backend, which a first call may choose, is spared their definition.

caller -> worker::

    JobMessage(job_id, payload)          a job's JobSpec, pickled once per call
    RunChunk(job_id, start, size,        items start .. start + size - 1: one
             items, split)               pickle, or (split) one pickle per item
    Cancel(job_id) / Forget(job_id, teardown) / Stop()
                                         (teardown: run the setup's teardown
                                         here and answer with Ended)
    Revoke(job_id, start)                give back this chunk if it has not started

worker -> caller::

    Ready(pid)                           the worker is up
    Resend(job_id, start)                the chunk did not unpickle as a whole
    Revoked(job_id, start, given_back)   the answer to Revoke
    Done(...), Ended(...)                see ``.._wire``
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["Cancel", "Forget", "JobMessage", "Ready", "Resend", "Revoke", "Revoked", "RunChunk",
           "Stop"]


class JobMessage(NamedTuple):
    job_id: int
    payload: Any  # a packed JobSpec


class RunChunk(NamedTuple):
    job_id: int
    start: int
    size: int  # how many items
    items: Any  # the packed list, or (split) a list of pack_item pairs
    split: bool


class Cancel(NamedTuple):
    job_id: int


class Forget(NamedTuple):
    job_id: int
    teardown: bool = False  # end the job's setup state here, answering with Ended


class Stop(NamedTuple):
    pass


class Revoke(NamedTuple):
    job_id: int
    start: int


class Revoked(NamedTuple):
    job_id: int
    start: int
    given_back: bool  # False: it had started already, and runs there


class Ready(NamedTuple):
    pid: int


class Resend(NamedTuple):
    job_id: int
    start: int
