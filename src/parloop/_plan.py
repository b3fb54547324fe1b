"""What a call says about itself: a :class:`Plan` (how it ran and why), the
probe's :class:`Verdict` it is made from, and the units its numbers print in."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Plan", "Reason", "Verdict", "format_seconds"]


def format_seconds(seconds: float) -> str:
    """``1.23 s``, ``12.3 ms`` or ``123 µs``."""
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} µs"


class Reason:
    """A plan's reason, formatted when first read. Most reasons are never
    read, and formatting their numbers costs more than a tiny call's work."""

    __slots__ = ("_make", "_text")

    def __init__(self, text: str | Callable[[], str]) -> None:
        self._text = text if isinstance(text, str) else None
        self._make = None if isinstance(text, str) else text

    def __str__(self) -> str:
        if self._text is None:
            assert self._make is not None
            self._text, self._make = self._make(), None
        return self._text

    def __repr__(self) -> str:
        return repr(str(self))


_FIELDS = ("backend", "workers", "chunksize", "items", "wall_seconds", "caller_seconds",
           "worker_seconds", "slowest", "per_item", "restored", "stored", "checkpoint",
           "teardown_results")


class Plan:
    """How a call ran, and why. ``str(plan)`` is one readable line. (A plain
    class, not a dataclass: dataclasses with inspect is ~8 ms of a first
    call's import, more than a tiny call may cost.)"""

    __slots__ = (*_FIELDS, "why")

    def __init__(self, backend: str, workers: int, chunksize: int | None,
                 why: Reason | None = None, items: int = 0, wall_seconds: float = 0.0,
                 caller_seconds: float = 0.0, worker_seconds: dict[str, float] | None = None,
                 slowest: list[tuple[int, float]] | None = None, per_item: float | None = None,
                 restored: int = 0, stored: int = 0, checkpoint: str | None = None,
                 teardown_results: list[Any] | None = None) -> None:
        self.backend = backend
        self.workers = workers
        self.chunksize = chunksize
        self.why = Reason("") if why is None else why
        self.items = items
        self.wall_seconds = wall_seconds
        self.caller_seconds = caller_seconds
        self.worker_seconds: dict[str, float] = {} if worker_seconds is None else worker_seconds
        self.slowest: list[tuple[int, float]] = [] if slowest is None else slowest
        #: seconds per item as this call measured them (the next call's first guess)
        self.per_item = per_item
        #: with ``checkpoint=``: results read back from it, results stored in it, its file
        self.restored = restored
        self.stored = stored
        self.checkpoint = checkpoint
        #: with ``teardown=``: what each state's teardown returned (or raised,
        #: with ``errors="return"``): the caller's first, when it ran items, then
        #: the workers' in ``worker_id()`` order
        self.teardown_results: list[Any] = [] if teardown_results is None else teardown_results

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Plan):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in _FIELDS)

    __hash__ = None  # type: ignore[assignment]  # mutable, as a dataclass would be

    @property
    def reason(self) -> str:
        """Why the call ran this way, with the numbers the decision rests on."""
        return str(self.why)

    @reason.setter
    def reason(self, value: str | Callable[[], str] | Reason) -> None:
        self.why = value if isinstance(value, Reason) else Reason(value)

    def __repr__(self) -> str:
        shown = [f"{name}={getattr(self, name)!r}" for name in _FIELDS]
        return f"Plan({', '.join(shown[:3])}, reason={self.reason!r}, {', '.join(shown[3:])})"

    def __str__(self) -> str:
        text = f"{self.backend}: {self.reason}"
        if self.wall_seconds:
            rate = self.items / self.wall_seconds if self.wall_seconds > 0 else 0.0
            text += (f" | ran {self.items} items in {format_seconds(self.wall_seconds)} "
                     f"({rate:,.0f}/s)")
            shares = self.busy_shares()
            if shares:
                text += ", workers busy " + "/".join(f"{s:.0%}" for s in shares.values())
        return text

    def busy_shares(self) -> dict[str, float]:
        """Each worker's share of the parallel part of the wall time spent computing."""
        parallel = self.wall_seconds - self.caller_seconds
        if parallel <= 0:
            return {}
        return {name: min(1.0, busy / parallel) for name, busy in self.worker_seconds.items()}


class Verdict:
    """The probe's conclusion: go parallel after ``serial_more`` more items
    (None: stay serial to the end), and why (formatted when first read)."""

    def __init__(self, serial_more: int | None, reason: str | Callable[[], str],
                 per_item: float, backend: str = "process", workers: int | None = None) -> None:
        self.serial_more = serial_more
        self.reason = Reason(reason)
        self.per_item = per_item
        self.backend = backend  # the pool to go to: "process" or "thread"
        self.workers = workers  # its size, when not the usual (threads for waiting items)
