"""Turning what a worker sent back into an :class:`Outcome`."""

from __future__ import annotations

import copy
import pickle
from typing import Any

from ..errors import ParloopError, RemoteTraceback, RemoteUnpicklingError
from .base import Chunk, Outcome
from .process import shm as _shm
from .process.worker import Pickled

__all__ = ["crash_outcome", "decode_done", "rebuild_exception"]


def rebuild_exception(blob: bytes | None, type_name: str, message: str,
                      text: str) -> BaseException:
    """The worker's exception with its own type, the worker traceback as cause."""
    exc: BaseException | None = None
    if blob is not None:
        try:
            exc = pickle.loads(blob)
        except Exception:
            exc = None
    if not isinstance(exc, BaseException):
        exc = ParloopError(f"{type_name}: {message} (raised in a worker; the exception "
                           "itself could not be sent back)")
    if text:
        exc.__cause__ = RemoteTraceback(text)
    return exc


def decode_done(chunk: Chunk, start: int, blobs: list[Any],
                errors: dict[int, tuple[bytes | None, str, str, str]], busy: float,
                worker: str, wrapped: bool = True) -> Outcome:
    """``wrapped``: some of ``blobs`` are Pickled (the worker says so; a scan
    here would cost ~50 ns an item); else they are the results as they are."""
    failed: dict[int, BaseException] = {}
    for offset, info in errors.items():
        failed[start + offset] = rebuild_exception(*info)
    if not wrapped:  # all small plain results: the list as it came
        return Outcome(chunk.job.id, start, blobs, failed, busy, worker)
    values: list[Any] = []
    for offset, blob in enumerate(blobs):
        if type(blob) is not Pickled:  # None (failed) or a small plain result as it is
            values.append(blob)
            continue
        try:
            values.append(_shm.loads(blob.data))  # big arrays: views of shared memory
        except Exception as exc:
            values.append(None)
            error = RemoteUnpicklingError(
                f"the result of item #{start + offset} could not be unpickled in the caller: "
                f"{type(exc).__name__}: {exc}", item=start + offset)
            error.__cause__ = exc
            failed[start + offset] = error
    return Outcome(chunk.job.id, start, values, failed, busy, worker)


def crash_outcome(chunk: Chunk, start: int, error: BaseException,
                  end: int | None = None) -> Outcome:
    """Items ``start .. end - 1`` of ``chunk`` all failed with ``error``."""
    stop = chunk.start + len(chunk.items) if end is None else end
    errors = {index: error if index == stop - 1 else copy.copy(error)
              for index in range(start, stop)}
    return Outcome(chunk.job.id, start, [None] * (stop - start), errors)
