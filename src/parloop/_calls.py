"""Every form's way into the engine: a list call, a lazy iterator, and the
asyncio forms, which drive the engine from a thread."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator
from typing import Any

from . import _dispatch, _role, _scope
from ._options import Options, resolve
from ._plan import Plan

__all__ = ["check_items", "run_async", "run_iter", "run_list", "start"]


def check_items(items: object, name: str) -> Iterable[Any]:
    """``items`` if it can be the items of a call; else a TypeError saying why."""
    if isinstance(items, (str, bytes)):
        kind = type(items).__name__
        raise TypeError(
            f"{name}() got a {kind} {items!r:.40} as its items, which would run it once per "
            f"{'character' if kind == 'str' else 'byte'}. For one item pass [{kind}_value]; "
            f"for its {'characters' if kind == 'str' else 'bytes'}, pass list({kind}_value).")
    try:
        iter(items)  # type: ignore[call-overload]
    except TypeError:
        raise TypeError(
            f"{name}() takes an iterable of items as its first argument, got "
            f"{type(items).__name__} {items!r:.60}. To run it on one item, pass [item], "
            f"or call {name}.__wrapped__(item).") from None
    return items  # type: ignore[return-value]


def _settings(explicit: dict[str, Any], block: _scope.Block | None
              ) -> tuple[Options, _scope.Block | None]:
    """The options of a call, and the block it runs in: ``block`` (a block's
    own ``pool.map`` passes its block, so it runs there from any thread),
    else this context's. A worker ignores a block it inherited by fork.
    A block's ``setup`` reaches only its own ``pool.map``/``iter``/``amap``."""
    own = block is not None
    if block is None and not _role.IN_WORKER:
        block = _scope.active_block()
    defaults = block.options if block else None
    if defaults and "setup" in defaults and not own:
        # A block's setup is for its own pool.map: a function decorated
        # without one does not take a state.
        defaults = {name: value for name, value in defaults.items()
                    if name not in ("setup", "teardown")}
    return resolve(explicit, defaults), block


def start(fn: Callable[..., Any], items: Iterable[Any], args: tuple[Any, ...],
          kwargs: dict[str, Any], explicit: dict[str, Any], record: Callable[[Plan], None],
          block: _scope.Block | None = None, sink: list[Any] | None = None,
          abort: threading.Event | None = None) -> Generator[list[Any], None, None]:
    """The engine's batches for one call (see ``_dispatch.run``); ``abort``,
    set from another thread, cancels it while it waits for results."""
    options, block = _settings(explicit, block)
    if options.checkpoint is not None and not _role.IN_WORKER:
        from . import _resume

        return _resume.run(fn, items, args, kwargs, options, block, record,
                               eager_errors=sink is not None, sink=sink, abort=abort)
    return _dispatch.run(fn, items, args, kwargs, options, block, record,
                         eager_errors=sink is not None, sink=sink, abort=abort)


def run_list(fn: Callable[..., Any], items: Iterable[Any], args: tuple[Any, ...],
             kwargs: dict[str, Any], explicit: dict[str, Any], record: Callable[[Plan], None],
             block: _scope.Block | None = None) -> list[Any]:
    results: list[Any] = []
    for _ in start(fn, items, args, kwargs, explicit, record, block, sink=results):
        pass  # with a sink, every result lands in ``results``
    return results


def run_iter(fn: Callable[..., Any], items: Iterable[Any], args: tuple[Any, ...],
             kwargs: dict[str, Any], explicit: dict[str, Any], record: Callable[[Plan], None],
             block: _scope.Block | None = None) -> Iterator[Any]:
    batches = start(fn, items, args, kwargs, explicit, record, block)
    try:
        for batch in batches:
            yield from batch
    finally:
        batches.close()  # break / close() / garbage collection cancel what is pending


async def run_async(batches: Generator[list[Any], None, None], stop: threading.Event
                    ) -> AsyncIterator[Any]:
    """Drive a batch generator from a thread, handing results to the event
    loop. Cancelling the awaiting task sets ``stop`` (the call's abort
    event), which cancels its items even while the thread waits for them."""
    import asyncio  # here: importing asyncio costs ~25 ms that sync users never need

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    context = contextvars.copy_context()

    def post(kind: str, value: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, value))
        except RuntimeError:  # the loop closed under us (asyncio.run ended): wind down
            stop.set()

    def produce() -> None:
        try:
            for batch in batches:
                post("batch", batch)
                if stop.is_set():
                    break
        except BaseException as exc:
            post("error", exc)
        finally:
            batches.close()
            post("end", None)

    thread = threading.Thread(target=context.run, args=(produce,), daemon=True,
                              name="parloop-async")
    thread.start()
    try:
        while True:
            kind, value = await queue.get()
            if kind == "batch":
                for result in value:
                    yield result
            elif kind == "error":
                raise value
            else:
                return
    finally:
        stop.set()
