"""The options every form of ``parallel_for`` takes, their validation, and how
a decorator's options combine with those of the enclosing ``with`` block.

Precedence, strongest first: options given to the decorator, options of the
innermost active block (see ``_scope``), the defaults below.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from ._cpu import START_METHODS, cpu_count, cpu_report
from .backends import CHOICES as BACKENDS

__all__ = ["BACKENDS", "Options", "resolve", "validate"]

ProgressCallback = Callable[[int, "int | None"], None]


# Each option and its default. (A plain class, not a dataclass: importing
# dataclasses costs more than all of parloop's own import is allowed to.)
DEFAULTS: dict[str, Any] = {
    "workers": None, "backend": "auto", "ordered": True, "chunksize": None, "timeout": None,
    "errors": "raise", "star": False, "progress": False, "start_method": None, "retries": 0,
    "retry_on": (), "client": None, "address": None, "max_items_per_worker": None,
    "thread_safe": True, "checkpoint": None, "setup": None,
    "teardown": None,
}
NAMES = tuple(DEFAULTS)


class Options:
    """One fully resolved set of options for one call."""

    __slots__ = NAMES
    workers: int | None
    backend: str
    ordered: bool
    chunksize: int | None
    timeout: float | None
    errors: str
    star: bool
    progress: bool | ProgressCallback
    start_method: str | None
    retries: int
    retry_on: tuple[type[BaseException], ...]
    client: Any
    address: str | None
    max_items_per_worker: int | None
    thread_safe: bool
    checkpoint: Any  # a _checkpoint.Checkpoint, or None
    setup: Callable[[], Any] | None
    teardown: Callable[[Any], Any] | None

    def __init__(self, **given: Any) -> None:
        for name, default in DEFAULTS.items():
            setattr(self, name, given.pop(name, default))
        if given:
            raise TypeError(f"unknown options {sorted(given)}")

    def __repr__(self) -> str:
        return f"Options({', '.join(f'{n}={getattr(self, n)!r}' for n in NAMES)})"

    def replace(self, **changes: Any) -> Options:
        """A copy with ``changes``."""
        return Options(**{**{name: getattr(self, name) for name in NAMES}, **changes})

    def worker_count(self) -> int:
        """``workers`` as a positive count of processes or threads."""
        return resolve_workers(self.workers)

    def worker_source(self) -> str:
        """Where the worker count comes from, for a plan's reason."""
        if self.workers is not None:
            return f"workers={self.workers}"
        env = os.environ.get("PARLOOP_WORKERS")
        if env:
            return f"PARLOOP_WORKERS={env}"
        return cpu_report().reason


def resolve_workers(workers: int | None) -> int:
    if workers is None:
        env = os.environ.get("PARLOOP_WORKERS")
        if env:
            try:
                workers = int(env)
            except ValueError:
                raise ValueError(f"PARLOOP_WORKERS={env!r} is not an integer") from None
            if workers == 0:
                raise ValueError("PARLOOP_WORKERS=0: use a positive count, or -1 for all CPUs")
        else:
            return cpu_count()
    if workers > 0:
        return workers
    return max(1, cpu_count() + 1 + workers)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(name: str, value: Any) -> None:
    """Raise TypeError for a wrong type and ValueError for a bad value."""
    def wrong(expected: str) -> TypeError:
        return TypeError(f"parallel_for option {name!r} must be {expected}, "
                         f"got {type(value).__name__} {value!r}")

    if name == "workers":
        if value is not None and not _is_int(value):
            raise wrong("an int or None")
        if value == 0:
            raise ValueError("parallel_for option 'workers' cannot be 0: use a positive "
                             "count, None for all usable CPUs, -1 for all, -2 for all but one")
    elif name == "backend":
        if not isinstance(value, str):
            raise wrong("a string")
        if value not in BACKENDS:
            raise ValueError(f"parallel_for option 'backend' must be one of {BACKENDS}, "
                             f"got {value!r}")
    elif name in ("ordered", "star", "thread_safe"):
        if not isinstance(value, bool):
            raise wrong("True or False")
    elif name == "chunksize":
        if value is not None and not _is_int(value):
            raise wrong("a positive int or None")
        if value is not None and value < 1:
            raise ValueError(f"parallel_for option 'chunksize' must be >= 1, got {value}")
    elif name == "timeout":
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            raise wrong("a number of seconds or None")
        if value is not None and not value > 0:
            raise ValueError(f"parallel_for option 'timeout' must be > 0 seconds, got {value}")
    elif name == "errors":
        if not isinstance(value, str):
            raise wrong("'raise' or 'return'")
        if value not in ("raise", "return"):
            raise ValueError(f"parallel_for option 'errors' must be 'raise' or 'return', "
                             f"got {value!r}")
    elif name == "progress":
        if not isinstance(value, bool) and not callable(value):
            raise wrong("True, False or a callable (done, total)")
    elif name == "start_method":
        if value is not None and not isinstance(value, str):
            raise wrong("a string or None")
        if value is not None and value not in START_METHODS:
            raise ValueError(f"parallel_for option 'start_method' must be one of "
                             f"{START_METHODS} or None, got {value!r}")
    elif name == "retries":
        if not _is_int(value):
            raise wrong("an int")
        if value < 0:
            raise ValueError(f"parallel_for option 'retries' must be >= 0, got {value}")
    elif name == "retry_on":
        if isinstance(value, type):
            value = (value,)
        if not isinstance(value, tuple) or not all(
                isinstance(t, type) and issubclass(t, BaseException) for t in value):
            raise wrong("an exception class or a tuple of them")
    elif name == "max_items_per_worker":
        if value is not None and not _is_int(value):
            raise wrong("a positive int or None")
        if value is not None and value < 1:
            raise ValueError(f"parallel_for option 'max_items_per_worker' must be >= 1, "
                             f"got {value}")
    elif name == "address" and value is not None and not isinstance(value, str):
        raise wrong("a string such as 'tcp://host:8786' or None")
    elif name == "setup" and value is not None and not callable(value):
        raise wrong("a function of no arguments (its result goes to each item) or None")
    elif name == "teardown" and value is not None and not callable(value):
        raise wrong("a function of one argument (a worker's state, at the call's end) or None")
    elif name == "checkpoint" and value is not None:
        from ._checkpoint import Checkpoint

        if not isinstance(value, (str, os.PathLike, Checkpoint)):
            raise wrong("a file name, a path, a parloop.Checkpoint or None")


def validate(options: Mapping[str, Any]) -> dict[str, Any]:
    """Check each given option; return them normalised. Unknown names are a TypeError."""
    out: dict[str, Any] = {}
    for name, value in options.items():
        if name not in NAMES:
            import difflib  # only on this error path

            close = difflib.get_close_matches(name, NAMES, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known options: {', '.join(NAMES)}"
            raise TypeError(f"parallel_for got an unknown option {name!r}{hint}")
        _check(name, value)
        if name == "retry_on" and isinstance(value, type):
            value = (value,)
        if name == "checkpoint" and isinstance(value, (str, os.PathLike)):
            from ._checkpoint import Checkpoint

            value = Checkpoint(value)
        out[name] = value
    if out.get("teardown") is not None and out.get("setup") is None:
        raise TypeError("parallel_for option 'teardown' ends the state that 'setup' makes, so "
                        "it needs setup= too: parallel_for(setup=open_db, teardown=close_db)")
    return out


def resolve(explicit: Mapping[str, Any], defaults: Mapping[str, Any] | None) -> Options:
    """The defaults below, overridden by ``defaults`` (a block's options),
    overridden by ``explicit`` (a decorator's)."""
    if not defaults:
        return Options(**explicit) if explicit else _DEFAULTS
    return Options(**{**defaults, **explicit})


_DEFAULTS = Options()
