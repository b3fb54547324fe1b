"""What ``with parallel_for(...) as pool`` gives: the block's own handle."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import Any, ParamSpec, TypeVar

from . import _calls, _scope
from ._futures import Submitter
from ._pickling import is_wrapper
from ._plan import Plan

P = ParamSpec("P")
R = TypeVar("R")

__all__ = ["Pool"]


class Pool:
    """Run any callable on the block's pool, from any thread (a server's
    handlers may share it). Decorated functions called inside the block, in
    its own thread or task, use it too."""

    def __init__(self, block: _scope.Block) -> None:
        self._block = block
        self.last_plan: Plan | None = None
        self._submitter: Submitter | None = None  # pool.submit's drivers, once used
        self._lock = threading.Lock()

    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        """``fn(*args, **kwargs)`` on the block's pool, at once; its
        ``concurrent.futures.Future`` works with ``as_completed``, ``wait``
        and ``add_done_callback``, and its ``cancel()`` also stops the call
        while it runs. The block's end waits for every submitted call, or
        cancels them when the block raised."""
        with self._lock:
            if self._submitter is None:
                self._submitter = Submitter(self._block, self._record)
        return self._submitter.submit(fn, args, kwargs)

    def close(self, cancel: bool = False, kill: bool = False) -> None:
        """(The block ends.) Submitted calls finish, or (``cancel``: the
        block raised) are cancelled; then the block's pools close (``kill``:
        at once, for a Ctrl-C)."""
        if self._submitter is not None:
            self._submitter.close(cancel=cancel or kill)
        self._block.close(kill=kill)

    def _target(self, fn: Callable[..., Any]) -> tuple[Callable[..., Any], dict[str, Any]]:
        if not callable(fn):
            raise TypeError(f"pool.map() takes a callable first, got {type(fn).__name__}")
        if is_wrapper(fn):  # a decorated function: its own options, its undecorated self
            return fn.__wrapped__, fn._state.explicit  # type: ignore[attr-defined]
        return fn, {}

    def _record(self, plan: Plan) -> None:
        self.last_plan = plan

    def map(self, fn: Callable[..., Any], items: Iterable[Any], /, *args: Any,
            **kwargs: Any) -> list[Any]:
        """``[fn(item, *args, **kwargs) for item in items]`` on the block's pool."""
        target, explicit = self._target(fn)
        return _calls.run_list(target, _calls.check_items(items, "pool.map"), args, kwargs,
                               explicit, self._record, self._block)

    def iter(self, fn: Callable[..., Any], items: Iterable[Any], /, *args: Any,
             **kwargs: Any) -> Iterator[Any]:
        """Like :meth:`map`, lazily: results are yielded as they arrive."""
        target, explicit = self._target(fn)
        return _calls.run_iter(target, _calls.check_items(items, "pool.iter"), args, kwargs,
                               explicit, self._record, self._block)

    async def amap(self, fn: Callable[..., Any], items: Iterable[Any], /, *args: Any,
                   **kwargs: Any) -> list[Any]:
        """Awaitable :meth:`map`: the event loop is never blocked."""
        return [x async for x in self.aiter(fn, items, *args, **kwargs)]

    async def aiter(self, fn: Callable[..., Any], items: Iterable[Any], /, *args: Any,
                    **kwargs: Any) -> AsyncIterator[Any]:
        """``async for`` over results as they arrive."""
        target, explicit = self._target(fn)
        abort = threading.Event()
        batches = _calls.start(target, _calls.check_items(items, "pool.aiter"), args, kwargs,
                               explicit, self._record, self._block, abort=abort)
        async for result in _calls.run_async(batches, abort):
            yield result
