"""What one call does when an item raises: run it again, keep the exception
in the item's place, or end the call with it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._options import Options
from .errors import SetupError, WorkerCrashedError, note_item, stop_iteration_error

__all__ = ["ErrorPolicy"]


class ErrorPolicy:
    """``retries`` and ``retry_on`` (a worker's crash always counts), and
    ``errors="return"`` (the exception stands in the item's place) or
    ``"raise"`` (it ends the call)."""

    def __init__(self, fn: Callable[..., Any], options: Options, eager: bool) -> None:
        self.fn = fn
        self.retries = options.retries
        self.retry_on: tuple[type[BaseException], ...] = (WorkerCrashedError, *options.retry_on)
        self.return_errors = options.errors == "return"
        # A list call raises the first error at once; an ordered iterator
        # first yields the results before the failing item, as a loop would.
        self.eager = eager
        # A chunk stops at its first error only when that error ends the call.
        self.stop_on_error = not self.return_errors and options.retries == 0

    def retryable(self, exc: BaseException, attempts: int) -> bool:
        return attempts < self.retries and isinstance(exc, self.retry_on) \
            and not isinstance(exc, SetupError)

    def returns(self, exc: BaseException) -> bool:
        """Whether ``exc`` takes its item's place (errors="return"); a
        SetupError ends the call: no item can run where it was raised."""
        return self.return_errors and not isinstance(exc, SetupError)

    def named(self, exc: BaseException, index: int, item: Any) -> BaseException:
        """``exc`` as the user sees it: a note names the item, and the
        function's own StopIteration becomes a RuntimeError (PEP 479)."""
        if isinstance(exc, StopIteration):
            exc = stop_iteration_error(self.fn, exc)
        return note_item(exc, index, item)

    def settle(self, call: Callable[[Any], Any], item: Any, exc: BaseException,
               index: int) -> Any:
        """Item ``index`` raised ``exc`` in this process: what stands in its
        place (its result once retried, or its exception with
        ``errors="return"``), or raise the exception."""
        if isinstance(exc, StopIteration):
            exc = stop_iteration_error(self.fn, exc)
        attempts = 0
        while self.retryable(exc, attempts):
            attempts += 1
            try:
                return call(item)
            except Exception as again:
                exc = again
        exc = self.named(exc, index, item)
        if not self.returns(exc):
            raise exc from exc.__cause__
        return exc
