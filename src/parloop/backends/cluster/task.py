"""The remote task of the cluster backends, as it runs on a Dask or Ray
worker: the job's spec loaded once per worker process (cached by key), and
the chunk's items run with the same loop as in a process worker."""

from __future__ import annotations

import array
import os
import pickle
import socket
import threading
from collections.abc import Container
from typing import Any

from ... import _role
from .._runner import report_failure, run_items
from .._state import set_worker_id
from .._wire import Done, SpecCache, dump_value, end_state, unpickle_error
from ..base import Ended

__all__ = ["Reply", "end_state_remote", "run_chunk_remote", "take_worker_id"]

#: what a remote task returns: the worker's name and its reports; None when
#: the items did not unpickle as one list
Reply = tuple[str, list[Done]] | None

_specs = SpecCache(pickle.loads, limit=8)  # a cluster worker serves many calls
_specs_lock = threading.Lock()  # a Dask worker may run several tasks in threads


def _number_worker() -> None:
    """A Dask worker's worker_id() is its name, when that is a number
    (LocalCluster numbers its workers 0 .. n-1; ``dask worker --name 3``);
    other names get an index from the caller (``take_worker_id``). Ray's
    task processes have none (a call with setup= runs on numbered actors)."""
    try:
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):  # not a Dask worker
        return
    if isinstance(name, int) and not isinstance(name, bool):
        set_worker_id(name)


def take_worker_id(ids: dict[str, int], dask_worker: Any = None) -> None:
    """(On each Dask worker, by client.run, which passes ``dask_worker``.)
    Its index in ``ids``, by address."""
    index = ids.get(dask_worker.address) if dask_worker is not None else None
    if index is not None:
        set_worker_id(index)


def run_chunk_remote(key: str, spec: bytes, start: int, count: int, packed: Any,
                     cancelled: Container[int] = ()) -> Reply:
    """The remote task: run items ``start .. start + count - 1`` of job ``key``;
    ``cancelled`` says (between items) whether the task was cancelled."""
    _role.IN_WORKER = True
    _number_worker()
    worker = f"{socket.gethostname()} pid {os.getpid()}"
    reports: list[Done] = []
    try:
        with _specs_lock:
            job = _specs.get(key, spec)
    except BaseException as exc:
        report_failure(0, start, count, unpickle_error("function or its extra arguments",
                                                       None, exc), reports.append)
        return worker, reports
    split = not isinstance(packed, bytes)  # bytes: the whole list; else pack_item pairs
    items = None
    if not split:
        try:
            items = pickle.loads(packed)
        except BaseException:
            return None  # the caller resends them one by one
    status = memoryview(array.array("d", [0.0, 0.0, 0.0]))  # nobody watches it here
    # KeyboardInterrupt is also how Ray cancels a running task: it ends the chunk.
    run_items(0, job, start, items, packed if split else None, report=reports.append,
              status=status, cancelled=cancelled, load=pickle.loads, pack=dump_value,
              stop_on_interrupt=True, call=key)
    return worker, reports


def end_state_remote(setup: Any) -> Ended:
    """Run on every worker of the cluster at a job's end (``teardown=``):
    end this worker process's state of ``setup``, if it made one."""
    return end_state(0, setup, pack=dump_value)
