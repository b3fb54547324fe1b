"""``pool.submit(fn, *args, **kwargs)``: one call on a block's pool, as a
``concurrent.futures.Future``.

Each submit is a call of one item through the engine, so the block's pool,
its crash handling and ``timeout=`` apply to it as to ``pool.map``. A small
thread pool of the block's (DRIVERS threads) drives those calls: a driver
takes a future, runs its call, and settles the future. Futures not yet
taken by a driver wait as PENDING, so ``cancel()`` drops them as
``concurrent.futures`` does; a future already RUNNING is cancelled too:
its call is aborted, which stops the item in its worker (see ``_flow``).

A block's backend of "auto" runs submits on processes: one item gives the
planner nothing to measure, and a submit is work meant for the pool.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, RUNNING
from typing import TYPE_CHECKING, Any, TypeVar

from . import _calls
from ._pickling import is_wrapper

if TYPE_CHECKING:
    from . import _scope
    from ._plan import Plan

__all__ = ["DRIVERS", "ItemFuture", "Submitter"]

R = TypeVar("R")

#: calls in flight at once per block; more wait as PENDING (cancellable) futures
DRIVERS = 32


class ItemFuture(Future[R]):
    """A Future whose ``cancel()`` also stops a call that is running: the
    item is interrupted in its worker (or its worker replaced), and the
    future ends CANCELLED, as a pending one would."""

    def __init__(self) -> None:
        super().__init__()
        self.abort = threading.Event()

    def cancel(self) -> bool:
        if super().cancel():
            return True
        self.abort.set()
        # Future.cancel refuses a RUNNING future; do what it does for a
        # pending one that a worker then finds cancelled.
        with self._condition:
            if self._state != RUNNING:
                return self._state in (CANCELLED, CANCELLED_AND_NOTIFIED)
            self._state = CANCELLED_AND_NOTIFIED
            for waiter in self._waiters:
                waiter.add_cancelled(self)
            self._condition.notify_all()
        self._invoke_callbacks()  # type: ignore[attr-defined]
        return True


class Submitter:
    """A block's submits: their drivers, and the futures not yet settled."""

    def __init__(self, block: _scope.Block, record: Callable[[Plan], None]) -> None:
        self._block = block
        self._record = record  # the block's pool.last_plan: the latest call that ended
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._open: set[ItemFuture[Any]] = set()
        self._closed = False

    def submit(self, fn: Callable[..., R], args: tuple[Any, ...],
               kwargs: dict[str, Any]) -> ItemFuture[R]:
        if not callable(fn):
            raise TypeError(f"pool.submit() takes a callable first, got {type(fn).__name__}")
        future: ItemFuture[R] = ItemFuture()
        with self._lock:
            if self._closed:
                raise RuntimeError("pool.submit() after its with block ended")
            if self._executor is None:
                self._executor = ThreadPoolExecutor(DRIVERS, thread_name_prefix="parloop-submit")
            self._open.add(future)
            future.add_done_callback(self._settled)
            self._executor.submit(self._drive, future, fn, args, kwargs)
        return future

    def _settled(self, future: Future[Any]) -> None:
        with self._lock:
            self._open.discard(future)

    def _drive(self, future: ItemFuture[Any], fn: Callable[..., Any], args: tuple[Any, ...],
               kwargs: dict[str, Any]) -> None:
        if not future.set_running_or_notify_cancel():
            return  # cancelled while it waited for a driver
        target, explicit = fn, {}
        if is_wrapper(fn):  # a decorated function: its own options, its undecorated self
            target, explicit = fn.__wrapped__, dict(fn._state.explicit)  # type: ignore[attr-defined]
        backend = explicit.get("backend", self._block.options.get("backend", "auto"))
        explicit.update(star=True, errors="raise", ordered=True, progress=False, checkpoint=None,
                        backend="process" if backend == "auto" else backend)
        try:
            result: Any = None
            for batch in _calls.start(target, [args], (), kwargs, explicit, self._record,
                                      self._block, abort=future.abort):
                result = batch[0]
        except BaseException as exc:
            if not future.abort.is_set():
                _settle(future.set_exception, exc)
            return
        _settle(future.set_result, result)

    def close(self, cancel: bool) -> None:
        """The block ends: wait for every submitted call (or, ``cancel``,
        cancel them), then stop the drivers."""
        with self._lock:
            self._closed = True
            executor, open_ = self._executor, list(self._open)
        if cancel:
            for future in open_:
                future.cancel()
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=cancel)


def _settle(how: Callable[[Any], None], value: Any) -> None:
    with contextlib.suppress(InvalidStateError):  # cancelled meanwhile: already settled
        how(value)
