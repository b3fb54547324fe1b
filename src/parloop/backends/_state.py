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
* With a ``teardown``, a state lives for one call: its token is new for
  each call, it is never dropped to make room, and at the call's end each
  worker that made it runs ``teardown(state)`` (``end_here``), in the
  thread that made it, and gives back what it returned.
"""

from __future__ import annotations

import functools
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import SetupError, add_note

__all__ = ["KEEP", "Setup", "end_here", "forget_thread", "known_id", "set_worker_id", "setup_for",
           "state_of", "teardown_results", "worker_id"]

KEEP = 4

_lock = threading.Lock()
_shared: OrderedDict[str, Any] = OrderedDict()  # token -> state, or _Failed
_scoped: dict[str, Any] = {}  # the same for setups with a teardown (never dropped)
_local = threading.local()  # .states, .scoped (per-thread states), .worker_id
_process_worker_id: int | None = None


def _forget_all() -> None:
    """(In a forked child.) States made in the parent are the parent's: a
    connection or a file handle must not be shared by two processes."""
    global _local, _process_worker_id
    _shared.clear()
    _scoped.clear()
    _local = threading.local()
    _process_worker_id = None


os.register_at_fork(after_in_child=_forget_all)


class Setup:
    """A setup callable with its token (and teardown), as a job carries it."""

    __slots__ = ("fn", "teardown", "token")

    def __init__(self, fn: Callable[[], Any], token: str,
                 teardown: Callable[[Any], Any] | None = None) -> None:
        self.fn, self.token, self.teardown = fn, token, teardown

    def __reduce__(self) -> tuple[Any, ...]:
        return (Setup, (self.fn, self.token, self.teardown))


_tokens: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def setup_for(fn: Callable[[], Any], teardown: Callable[[Any], Any] | None = None) -> Setup:
    """(In the caller.) ``fn`` with its token: the same for every call that
    passes the same callable, so warm workers keep its state between calls;
    with a ``teardown``, a new one (the state ends with the call)."""
    import uuid

    if teardown is not None:
        return Setup(fn, uuid.uuid4().hex, teardown)
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


def _name(fn: Callable[..., Any]) -> str:
    fn = fn.func if isinstance(fn, functools.partial) else fn
    return getattr(fn, "__qualname__", None) or repr(fn)


def _where() -> str:
    """This worker, for an error message."""
    from .. import _role

    where = f"pid {os.getpid()}, {threading.current_thread().name}"
    index = known_id()
    if index is not None:
        return f"worker {index} ({where})"
    return f"a worker ({where})" if _role.IN_WORKER else f"the caller ({where})"


def _run(setup: Setup, job: object) -> Any:
    try:
        return setup.fn()
    except Exception as exc:
        name = _name(setup.fn)

        error = SetupError(f"setup function {name}() raised {type(exc).__name__}: {exc}, in "
                           f"{_where()}; no item ran there. Fix the setup function: it runs again "
                           "on the next call.")
        error.__cause__ = exc
        return _Failed(error, job)


def state_of(setup: Setup, per_thread: bool, job: object) -> Any:
    """The state ``setup`` made in this worker (made now, on first use);
    ``job``: the call asking."""
    keep = setup.teardown is None  # a state with a teardown waits for it
    if per_thread:
        states = _thread_states(keep)
        found = states.get(setup.token, _local)
        if found is _local or (type(found) is _Failed and found.job != job):
            found = states[setup.token] = _run(setup, job)
            if keep and len(states) > KEEP:
                states.popitem(last=False)  # type: ignore[call-arg]
    else:
        states = _shared if keep else _scoped
        found = states.get(setup.token, _local)
        if found is _local or (type(found) is _Failed and found.job != job):
            with _lock:  # a Dask worker's threads: one of them runs it
                found = states.get(setup.token, _local)
                if found is _local or (type(found) is _Failed and found.job != job):
                    found = states[setup.token] = _run(setup, job)
                    if keep and len(states) > KEEP:
                        _shared.popitem(last=False)
    if type(found) is _Failed:
        raise found.error
    return found


def _thread_states(keep: bool) -> dict[str, Any]:
    name = "states" if keep else "scoped"
    states: dict[str, Any] | None = getattr(_local, name, None)
    if states is None:
        states = OrderedDict() if keep else {}
        setattr(_local, name, states)
    return states


#: what ``end_here`` says: whether a state was made here, and what its
#: teardown returned or raised
Ending = tuple[bool, Any, "BaseException | None"]


def end_here(setup: Setup, per_thread: bool) -> Ending:
    """End this worker's (``per_thread``: this thread's) state of ``setup``:
    run ``setup.teardown`` on it and drop it. A setup that failed, or that
    never ran here, made no state to end."""
    if per_thread:
        found = _thread_states(False).pop(setup.token, _local)
    else:
        with _lock:
            found = _scoped.pop(setup.token, _local)
    if found is _local or type(found) is _Failed or setup.teardown is None:
        return False, None, None
    try:
        return True, setup.teardown(found), None
    except Exception as exc:
        error = SetupError(f"teardown function {_name(setup.teardown)}() raised "
                           f"{type(exc).__name__}: {exc}, in {_where()}")
        error.__cause__ = exc
        return True, None, error


def teardown_results(setup: Setup, ended: Iterable[tuple[int | None, Any, BaseException | None]],
                     returned: bool) -> tuple[list[Any], BaseException | None]:
    """A call's teardown results: the caller ends its own state first, if it
    ran items (``end_here``), then come the workers' (``ended``: worker_id(),
    value, error), by worker_id().
    With them, the first error (None when there is none, or when
    ``returned``: errors="return" puts each in the list)."""
    made, value, error = end_here(setup, False)
    answers = [(-1, value, error)] if made else []
    answers += sorted([(1 << 30 if worker is None else worker, value, error)
                       for worker, value, error in ended], key=lambda answer: answer[0])
    results = [value if error is None else error for _, value, error in answers]
    errors = [error for _, _, error in answers if error is not None]
    if not errors or returned:
        return results, None
    for other in errors[1:]:
        add_note(errors[0], f"another worker's teardown raised too: {other}")
    return results, errors[0]


def set_worker_id(index: int | None, per_thread: bool = False) -> None:
    """This process's (or, ``per_thread``, this thread's) worker index."""
    global _process_worker_id
    if per_thread:
        _local.worker_id = index
    else:
        _process_worker_id = index


def forget_thread() -> None:
    """Drop this thread's states and worker index, as its end would: a pool
    thread going back to ``_threadpool`` for another backend, or a trial."""
    _local.__dict__.clear()


def known_id() -> int | None:
    found = getattr(_local, "worker_id", None)
    return _process_worker_id if found is None else int(found)


def worker_id() -> int:
    """The index of the worker running this code: 0 .. workers - 1, the same
    for the life of its slot (a worker replaced after a crash keeps its
    index). 0 in the caller, which runs serial calls (and the items auto
    measures before it starts a pool). A Dask worker's is its name when that
    is a number, else an index the caller gave it; a Ray call's is its
    actor's, when it has ``setup=`` (it runs on actors). Raises RuntimeError
    where no index is known: a Ray task of a call without ``setup=``."""
    found = known_id()
    if found is None:
        from .. import _role

        if _role.IN_WORKER:
            raise RuntimeError("worker_id() is not known on this worker: Ray runs tasks on "
                               "worker processes it starts as it likes, without an index. "
                               "Give the call a setup= (it then runs on numbered Ray actors)")
        return 0
    return int(found)
