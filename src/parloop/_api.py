"""``parallel_for``: the decorator, the loop form and the ``with`` block.

One options object, :class:`ParallelFor`, serves as all three (the way
tenacity's ``Retrying`` does). The decorated function is a wrapt proxy, so
its name, docstring, signature and method binding are the original's.
"""

from __future__ import annotations

import contextvars
import functools
import threading
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator
from types import TracebackType
from typing import Any, Concatenate, Generic, TypeVar, cast, overload

import wrapt
from typing_extensions import ParamSpec

from . import _dispatch, _scope
from ._options import active_block, block_var, resolve, validate
from ._planner import Plan
from ._types import LoopDecorator, ParallelFunction

__all__ = ["ParallelFor", "Pool", "make_wrapper", "run_iter", "run_list"]


def _check_items(items: object, name: str) -> Iterable[Any]:
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


def run_list(fn: Callable[..., Any], items: Iterable[Any], args: tuple[Any, ...],
             kwargs: dict[str, Any], explicit: dict[str, Any],
             record: Callable[[Plan], None], block: _scope.Block | None = None) -> list[Any]:
    """``block``: the block to run in (a block's own ``pool.map`` passes its
    block, so that it runs there from any thread); None: this context's."""
    block = block or active_block()
    results: list[Any] = []
    for _ in _dispatch.run(fn, items, args, kwargs, resolve(explicit, block), block, record,
                           sink=results):
        pass  # with a sink, every result lands in ``results``
    return results


def run_iter(fn: Callable[..., Any], items: Iterable[Any], args: tuple[Any, ...],
             kwargs: dict[str, Any], explicit: dict[str, Any],
             record: Callable[[Plan], None], block: _scope.Block | None = None
             ) -> Iterator[Any]:
    block = block or active_block()
    batches = _dispatch.run(fn, items, args, kwargs, resolve(explicit, block), block, record,
                            eager_errors=False)
    try:
        for batch in batches:
            yield from batch
    finally:
        batches.close()  # break / close() / garbage collection cancel what is pending


async def run_async(batches: Generator[list[Any], None, None]) -> AsyncIterator[list[Any]]:
    """Drive a batch generator from a thread, handing batches to the event loop.
    Cancelling the awaiting task closes the generator, which cancels its items."""
    import asyncio  # here: importing asyncio costs ~25 ms that sync users never need

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    stop = threading.Event()
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
                yield value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        stop.set()


class _State:
    """What a decorated function remembers: its options and its last plan."""

    def __init__(self, explicit: dict[str, Any]) -> None:
        self.explicit = explicit
        self.last_plan: Plan | None = None

    def record(self, plan: Plan) -> None:
        self.last_plan = plan


def _call(state: _State, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
          kwargs: dict[str, Any]) -> list[Any]:
    # wrapt hands over ``wrapped`` already bound when accessed on an instance or class.
    name = getattr(wrapped, "__name__", "function")
    if not args:
        raise TypeError(f"{name}() missing its first argument: the iterable of items to run it on")
    items = _check_items(args[0], name)
    return run_list(wrapped, items, args[1:], kwargs, state.explicit, state.record)


class _Calls:
    """The methods a decorated function and its bound form share."""

    __wrapped__: Callable[..., Any]

    @property
    def _state(self) -> _State:
        parent = getattr(self, "_self_parent", None)
        owner: Any = parent if parent is not None else self
        return cast(_State, owner._self_state)

    @property
    def last_plan(self) -> Plan | None:
        """How the last call ran and why: a :class:`~parloop.Plan`, or None."""
        return self._state.last_plan

    def iter(self, items: Iterable[Any], /, *args: Any, **kwargs: Any) -> Iterator[Any]:
        """Like calling it, but lazy: yields results as they arrive, reads the
        input a bounded window ahead; ``break`` or ``close()`` cancels the rest."""
        items = _check_items(items, self.__wrapped__.__name__)
        return run_iter(self.__wrapped__, items, args, kwargs, self._state.explicit,
                        self._state.record)

    async def amap(self, items: Iterable[Any], /, *args: Any, **kwargs: Any) -> list[Any]:
        """``await f.amap(items)``: the same call without blocking the event loop."""
        return [x async for x in self.aiter(items, *args, **kwargs)]

    async def aiter(self, items: Iterable[Any], /, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        """``async for r in f.aiter(items)``: results as they arrive."""
        items = _check_items(items, self.__wrapped__.__name__)
        block = active_block()
        batches = _dispatch.run(self.__wrapped__, items, args, kwargs,
                                resolve(self._state.explicit, block), block, self._state.record,
                                eager_errors=False)
        async for batch in run_async(batches):
            for value in batch:
                yield value


class _BoundParallelFunction(_Calls, wrapt.BoundFunctionWrapper[Any, Any]):
    _parloop_wrapper = True


class _ParallelFunction(_Calls, wrapt.FunctionWrapper[Any, Any]):
    _parloop_wrapper = True
    __bound_function_wrapper__ = _BoundParallelFunction

    def __init__(self, wrapped: Callable[..., Any], explicit: dict[str, Any]) -> None:
        state = _State(explicit)
        super().__init__(wrapped, functools.partial(_call, state))
        self._self_state = state

    def __reduce_ex__(self, protocol: Any) -> Any:
        # Sent to a worker as data: by name when importable, else the
        # undecorated function by value, wrapped again over there.
        from ._pickling import load_wrapper, portable_options

        module = getattr(self.__wrapped__, "__module__", None)
        if module not in ("__main__", "__mp_main__", None):
            return load_wrapper, (module, self.__wrapped__.__qualname__)
        return make_wrapper, (self.__wrapped__, portable_options(self._self_state.explicit))


def make_wrapper(fn: Callable[..., Any], explicit: dict[str, Any]) -> ParallelFunction[Any, Any, Any]:
    if isinstance(fn, _ParallelFunction):  # decorating twice: one layer, outer options win
        explicit = {**fn._self_state.explicit, **explicit}
        fn = fn.__wrapped__
    return cast("ParallelFunction[Any, Any, Any]", _ParallelFunction(fn, explicit))


class Pool:
    """What ``with parallel_for(...) as pool`` gives: run any callable on the
    block's pool, from any thread (a server's handlers may share it).
    Decorated functions called inside the block, in its own thread or task,
    use it too."""

    def __init__(self, block: _scope.Block) -> None:
        self._block = block
        self.last_plan: Plan | None = None

    def _target(self, fn: Callable[..., Any]) -> tuple[Callable[..., Any], dict[str, Any]]:
        if not callable(fn):
            raise TypeError(f"pool.map() takes a callable first, got {type(fn).__name__}")
        if isinstance(fn, (_ParallelFunction, _BoundParallelFunction)):
            return fn.__wrapped__, fn._state.explicit
        return fn, {}

    def _record(self, plan: Plan) -> None:
        self.last_plan = plan

    def map(self, fn: Callable[..., Any], items: Iterable[Any], /, *args: Any,
            **kwargs: Any) -> list[Any]:
        """``[fn(item, *args, **kwargs) for item in items]`` on the block's pool."""
        target, explicit = self._target(fn)
        return run_list(target, _check_items(items, "pool.map"), args, kwargs, explicit,
                        self._record, self._block)

    def iter(self, fn: Callable[..., Any], items: Iterable[Any], /, *args: Any,
             **kwargs: Any) -> Iterator[Any]:
        """Like :meth:`map`, lazily: results are yielded as they arrive."""
        target, explicit = self._target(fn)
        return run_iter(target, _check_items(items, "pool.iter"), args, kwargs, explicit,
                        self._record, self._block)

    async def amap(self, fn: Callable[..., Any], items: Iterable[Any], /, *args: Any,
                   **kwargs: Any) -> list[Any]:
        """Awaitable :meth:`map`: the event loop is never blocked."""
        return [x async for x in self.aiter(fn, items, *args, **kwargs)]

    async def aiter(self, fn: Callable[..., Any], items: Iterable[Any], /, *args: Any,
                    **kwargs: Any) -> AsyncIterator[Any]:
        """``async for`` over results as they arrive."""
        target, explicit = self._target(fn)
        block = self._block
        batches = _dispatch.run(target, _check_items(items, "pool.aiter"), args, kwargs,
                                resolve(explicit, block), block, self._record, eager_errors=False)
        async for batch in run_async(batches):
            for value in batch:
                yield value


E = TypeVar("E")
T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")


class ParallelFor(Generic[E]):
    """A set of options: use it as a decorator, or as a ``with`` block.

    ``E`` exists for type checkers only: what a failed item leaves among the
    results (``Never`` for ``errors="raise"``, ``BaseException`` for "return").
    """

    def __init__(self, explicit: dict[str, Any]) -> None:
        self._explicit = explicit
        self._tokens: list[tuple[contextvars.Token[Any], _scope.Block]] = []

    def __repr__(self) -> str:
        given = ", ".join(f"{k}={v!r}" for k, v in self._explicit.items())
        return f"parallel_for({given})"

    @overload
    def __call__(self, target: Callable[Concatenate[T, P], R], /) -> ParallelFunction[T, P, R | E]: ...

    @overload
    def __call__(self, target: Iterable[T], /) -> LoopDecorator[T]: ...

    def __call__(self, target: Any, /) -> Any:
        return dispatch_target(target, self._explicit)

    def __enter__(self) -> Pool:
        outer = active_block()
        options = {**(outer.options if outer else {}), **self._explicit}
        block = _scope.Block(options)
        self._tokens.append((block_var().set(block), block))
        return Pool(block)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        token, block = self._tokens.pop()
        block_var().reset(token)
        block.close(kill=kind is not None and not issubclass(kind, Exception))

    async def __aenter__(self) -> Pool:
        return self.__enter__()

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.__exit__(kind, exc, tb)


def dispatch_target(target: Any, explicit: dict[str, Any]) -> Any:
    """A callable is decorated; any other iterable starts the loop form."""
    if callable(target) or isinstance(target, (classmethod, staticmethod)):
        return make_wrapper(target, explicit)
    try:
        iter(target)
    except TypeError:
        raise TypeError(
            "parallel_for takes a function to decorate (@parallel_for), or an iterable "
            "of items for the loop form (@parallel_for(range(10))), got "
            f"{type(target).__name__} {target!r:.60}") from None

    def loop(fn: Callable[..., Any]) -> list[Any]:
        wrapper = make_wrapper(fn, explicit)
        return wrapper(target)

    return loop


def parallel_for_impl(target: Any, options: dict[str, Any]) -> Any:
    explicit = validate(options)
    if target is _MISSING:
        return ParallelFor(explicit)
    return dispatch_target(target, explicit)


_MISSING: Any = object()
