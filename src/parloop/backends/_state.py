"""What ``setup=`` made for a worker, and the worker's index.

A worker (a process of the process backend, a pool thread, a Dask or Ray
worker process, or the caller itself when it runs items) runs a function's
``setup`` once, on its first item that needs it, and keeps the result, its
*state*, for the items that follow, in this call and in later calls on the
same warm worker. Each setup callable has a token, made once per callable in
the caller, that names its state wherever it travels.

* Processes keep states per process (a Dask worker's task threads share
  them, under a lock); the thread backend keeps them per thread.
* A setup that raises is not run again for each item: its SetupError is
  kept, and raised for every item of that call that needed it. The next
  call runs it again.
* At most KEEP states per worker: a process serving many setups (a cluster
  worker, or a loop that makes a new lambda per call) drops the oldest.
"""

from __future__ import annotations

import functools
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from ..errors import SetupError

__all__ = ["KEEP", "Setup", "set_worker_id", "setup_for", "state_of", "worker_id"]

KEEP = 4

_lock = threading.Lock()
_shared: OrderedDict[str, Any] = OrderedDict()  # token -> state, or _Failed
_local = threading.local()  # .states (per-thread states), .worker_id
_process_worker_id: int | None = None


def _forget_all() -> None:
    """(In a forked child.) States made in the parent are the parent's: a
    connection or a file handle must not be shared by two processes."""
    global _local, _process_worker_id
    _shared.clear()
    _local = threading.local()
    _process_worker_id = None


os.register_at_fork(after_in_child=_forget_all)


class Setup:
    """A setup callable with its token, as a job carries it."""

    __slots__ = ("fn", "token")

    def __init__(self, fn: Callable[[], Any], token: str) -> None:
        self.fn, self.token = fn, token

    def __reduce__(self) -> tuple[Any, ...]:
        return (Setup, (self.fn, self.token))


_tokens: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def setup_for(fn: Callable[[], Any]) -> Setup:
    """(In the caller.) ``fn`` with its token: the same for every call that
    passes the same callable, so warm workers keep its state between calls."""
    import uuid

    try:
        token = _tokens.get(fn)
        if token is None:
            token = _tokens[fn] = uuid.uuid4().hex
    except TypeError:  # not weakly referable: a state per call
        token = uuid.uuid4().hex
    return Setup(fn, token)


class _Failed:
    """A setup that raised, kept for the rest of its call (``job``): the
    next call runs it again (the user may have fixed the cause)."""

    __slots__ = ("error", "job")

    def __init__(self, error: SetupError, job: object) -> None:
        self.error, self.job = error, job


def _run(setup: Setup, job: object) -> Any:
    try:
        return setup.fn()
    except Exception as exc:
        fn = setup.fn.func if isinstance(setup.fn, functools.partial) else setup.fn
        name = getattr(fn, "__qualname__", None) or repr(fn)
        from .. import _role

        where = f"pid {os.getpid()}, {threading.current_thread().name}"
        index = _known_id()
        if index is not None:
            where = f"worker {index} ({where})"
        elif _role.IN_WORKER:
            where = f"a worker ({where})"
        else:
            where = f"the caller ({where})"
        error = SetupError(f"setup function {name}() raised {type(exc).__name__}: {exc}, in "
                           f"{where}; no item ran there. Fix the setup function: it runs again "
                           "on the next call.")
        error.__cause__ = exc
        return _Failed(error, job)


def state_of(setup: Setup, per_thread: bool, job: object) -> Any:
    """The state ``setup`` made in this worker (made now, on first use);
    ``job``: the call asking."""
    if per_thread:
        states = getattr(_local, "states", None)
        if states is None:
            states = _local.states = OrderedDict()
        found = states.get(setup.token, _local)
        if found is _local or (type(found) is _Failed and found.job != job):
            found = states[setup.token] = _run(setup, job)
            if len(states) > KEEP:
                states.popitem(last=False)
    else:
        found = _shared.get(setup.token, _local)
        if found is _local or (type(found) is _Failed and found.job != job):
            with _lock:  # a Dask worker's threads: one of them runs it
                found = _shared.get(setup.token, _local)
                if found is _local or (type(found) is _Failed and found.job != job):
                    found = _shared[setup.token] = _run(setup, job)
                    if len(_shared) > KEEP:
                        _shared.popitem(last=False)
    if type(found) is _Failed:
        raise found.error
    return found


def set_worker_id(index: int | None, per_thread: bool = False) -> None:
    """This process's (or, ``per_thread``, this thread's) worker index."""
    global _process_worker_id
    if per_thread:
        _local.worker_id = index
    else:
        _process_worker_id = index


def _known_id() -> int | None:
    found = getattr(_local, "worker_id", None)
    return _process_worker_id if found is None else int(found)


def worker_id() -> int:
    """The index of the worker running this code: 0 .. workers - 1, the same
    for the life of its slot (a worker replaced after a crash keeps its
    index). 0 in the caller, which runs serial calls (and the items auto
    measures before it starts a pool). Raises RuntimeError where no index
    is known (on Ray)."""
    found = _known_id()
    if found is None:
        from .. import _role

        if _role.IN_WORKER:
            raise RuntimeError("worker_id() is not known on this worker (Ray runs tasks on "
                               "worker processes it starts as it likes, without an index)")
        return 0
    return int(found)
