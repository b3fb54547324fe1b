"""Every exception and warning parloop raises, in one place.

The tree::

    Exception
     +-- ParloopError                    anything parloop itself reports
     |    +-- UnpicklableError           (also pickle.PicklingError) the function, an
     |    |                              argument or an item cannot be sent to a worker
     |    +-- WorkerCrashedError         a worker process died while it held items
     |    +-- TaskTimeoutError           (also TimeoutError) an item ran past ``timeout=``
     |    +-- RemoteUnpicklingError      an item or a result could not be unpickled on
     |    |                              the other side; only that item fails
     |    +-- CheckpointError            a ``checkpoint=`` file cannot be used: not a
     |    |                              checkpoint, unwritable, or in use by another call
     |    +-- SetupError                 the ``setup=`` function raised in a worker; the
     |                                   call ends (whatever ``errors=`` says)
     +-- ImportError
          +-- BackendUnavailableError    (also ParloopError) the backend's extra is missing

    Warning
     +-- ParloopWarning                  parloop changed plan (e.g. fell back to serial)

An exception raised by *your* function is never wrapped: it reaches you with
its own type, a note naming the item (``exc.__notes__``) and the worker's
formatted traceback as ``exc.__cause__`` (a :class:`RemoteTraceback`).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import reprlib
import sys
import warnings

__all__ = [
    "BackendUnavailableError",
    "CheckpointError",
    "ParloopError",
    "ParloopWarning",
    "RemoteTraceback",
    "RemoteUnpicklingError",
    "SetupError",
    "TaskTimeoutError",
    "UnpicklableError",
    "WorkerCrashedError",
]

_short = reprlib.Repr()
_short.maxstring = 60
_short.maxother = 60
_short.maxlist = 4
_short.maxtuple = 4
_short.maxdict = 3


def short_repr(obj: object) -> str:
    """A repr that fits in one line of an error message, whatever ``obj`` is."""
    try:
        return _short.repr(obj)
    except Exception:  # a broken __repr__ must not hide the real error
        return f"<{type(obj).__name__} object (repr failed)>"


class ParloopError(Exception):
    """Base class of every error that parloop itself raises."""


class UnpicklableError(ParloopError, pickle.PicklingError):
    """Something that must travel to a worker cannot be pickled.

    The message names the culprit and where it sits, for example
    ``argument 'conn': <socket.socket ...> cannot be pickled`` or
    ``function 'uses_lock' captures 'lock' (_thread.lock)``.
    """


class WorkerCrashedError(ParloopError):
    """A worker process died (``os._exit``, a signal, the OOM killer) while it
    held items. ``pid``, ``exitcode`` and ``indices`` say which and why."""

    def __init__(self, message: str, *, pid: int | None = None,
                 exitcode: int | None = None, indices: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.pid = pid
        self.exitcode = exitcode
        self.indices = indices

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_crash, (str(self), self.pid, self.exitcode, self.indices))


def _rebuild_crash(message: str, pid: int | None, exitcode: int | None,
                   indices: tuple[int, ...]) -> WorkerCrashedError:
    return WorkerCrashedError(message, pid=pid, exitcode=exitcode, indices=indices)


class TaskTimeoutError(ParloopError, TimeoutError):
    """An item ran longer than ``timeout=`` seconds; its worker was killed."""


class RemoteUnpicklingError(ParloopError):
    """An item could not be unpickled in the worker, or a result could not be
    pickled in the worker or unpickled in the caller: only that item fails.
    Or the function or its extra arguments could not be unpickled in the
    worker: then ``item`` is None, and no item is to blame."""

    def __init__(self, message: str, *, item: int | None = None) -> None:
        super().__init__(message)
        self.item = item

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_unpickling, (str(self), self.item))


def _rebuild_unpickling(message: str, item: int | None) -> RemoteUnpicklingError:
    return RemoteUnpicklingError(message, item=item)


class CheckpointError(ParloopError):
    """A ``checkpoint=`` file cannot be used: it is not a parloop checkpoint
    (or is damaged), cannot be written, or the same function is running on
    it in another call. The message names the file and what to do."""


class SetupError(ParloopError):
    """The ``setup=`` function raised in a worker (its exception is the
    ``__cause__``). No item can run there, so the call ends with this error
    whatever ``errors=`` says, and it is not retried."""


class BackendUnavailableError(ParloopError, ImportError):
    """The chosen backend needs an optional extra that is not installed.

    The message says what to install, e.g. ``pip install 'parloop[dask]'``.
    """


class ParloopWarning(UserWarning):
    """parloop changed its plan, for example ran serially because the function
    could not be pickled."""


class RemoteTraceback(Exception):
    """Carries a worker's formatted traceback; set as ``__cause__`` so Python
    prints it above the re-raised exception."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return "\n\n" + self.text.rstrip() + "\n"


def note_item(exc: BaseException, index: int, item: object) -> BaseException:
    """Name the item that raised ``exc`` in a note; return ``exc``."""
    if isinstance(exc, RemoteUnpicklingError) and exc.item is None:
        return exc  # the function itself did not load: no item is to blame
    add_note(exc, f"parloop: raised by item #{index}: {short_repr(item)}")
    with contextlib.suppress(AttributeError, TypeError):  # an exception without a __dict__
        exc._parloop_index = index  # type: ignore[attr-defined]
    return exc


def item_index(exc: BaseException) -> int | None:
    """The index of the item ``exc`` was raised by, when parloop named it."""
    index = getattr(exc, "_parloop_index", None)
    return index if isinstance(index, int) else None


def renumber_item(exc: BaseException, index: int) -> None:
    """Make ``exc``'s note name item ``index`` (a checkpointed call runs
    only the items not stored, numbered among themselves)."""
    old = item_index(exc)
    notes = getattr(exc, "__notes__", None)
    if old is None or old == index or not isinstance(notes, list):
        return
    prefix = f"parloop: raised by item #{old}: "
    for position, note in enumerate(notes):
        if isinstance(note, str) and note.startswith(prefix):
            notes[position] = f"parloop: raised by item #{index}: " + note[len(prefix):]
    exc._parloop_index = index  # type: ignore[attr-defined]


def stop_iteration_error(fn: object, cause: BaseException | None) -> RuntimeError:
    """``fn`` raised StopIteration: a RuntimeError, because a StopIteration
    would read as the end of the input to the loop around it (PEP 479)."""
    error = RuntimeError(f"{getattr(fn, '__name__', 'the function')} raised StopIteration")
    error.__cause__ = cause
    return error


def add_note(exc: BaseException, note: str) -> None:
    """``exc.add_note(note)`` on every supported Python (3.10 lacks it)."""
    adder = getattr(exc, "add_note", None)
    if adder is not None:
        adder(note)
        return
    notes = getattr(exc, "__notes__", None)
    if not isinstance(notes, list):
        notes = []
        try:
            exc.__notes__ = notes  # type: ignore[attr-defined]
        except AttributeError:
            return
    notes.append(note)


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn(message: str, category: type[Warning]) -> None:
    """Warn, pointing at the user's line that called into parloop, whatever
    form the call took (``f(items)``, ``f.iter``, a block's ``pool.map``)."""
    if sys.version_info >= (3, 12):
        warnings.warn(message, category, skip_file_prefixes=(_PACKAGE,))
        return
    frame, level = sys._getframe(1), 2  # level 2: the caller of this function
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1  # type: ignore[assignment]
    warnings.warn(message, category, stacklevel=level)
