"""``parallel_for``: the decorator, the loop form and the ``with`` block.

One options object, :class:`ParallelFor`, serves as all three (the way
tenacity's ``Retrying`` does). The decorated function is a wrapt proxy, so
its name, docstring, signature and method binding are the original's.
"""

from __future__ import annotations

import contextvars
import functools
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar, cast, overload

import wrapt

from ._options import validate

if TYPE_CHECKING:
    from ._plan import Plan
    from ._pool import Pool
    from ._types import LoopDecorator, ParallelFunction


def _engine() -> ModuleType:
    """``_calls``, the way into the engine, imported on the first call: a
    script that only decorates (or imports a module that does) never pays
    for the engine's import."""
    global _calls
    if _calls is None:
        from . import _calls as engine

        _calls = engine
    return _calls


_calls: ModuleType | None = None

__all__ = ["ParallelFor", "make_wrapper", "parallel_for_impl"]


class _Remembered:
    """What a decorated function remembers: its options and its last plan."""

    def __init__(self, explicit: dict[str, Any]) -> None:
        self.explicit = explicit
        self.last_plan: Plan | None = None

    def record(self, plan: Plan) -> None:
        self.last_plan = plan


def _call(state: _Remembered, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
          kwargs: dict[str, Any]) -> list[Any]:
    # wrapt hands over ``wrapped`` already bound when accessed on an instance or class.
    name = getattr(wrapped, "__name__", "function")
    if not args:
        raise TypeError(f"{name}() missing its first argument: the iterable of items to run it on")
    engine = _engine()
    items = engine.check_items(args[0], name)
    return cast("list[Any]", engine.run_list(wrapped, items, args[1:], kwargs, state.explicit,
                                             state.record))


class _Calls:
    """The methods a decorated function and its bound form share."""

    __wrapped__: Callable[..., Any]

    @property
    def _state(self) -> _Remembered:
        parent = getattr(self, "_self_parent", None)
        owner: Any = parent if parent is not None else self
        return cast(_Remembered, owner._self_state)

    @property
    def last_plan(self) -> Plan | None:
        """How the last call ran and why: a :class:`~parloop.Plan`, or None."""
        return self._state.last_plan

    def iter(self, items: Iterable[Any], /, *args: Any, **kwargs: Any) -> Iterator[Any]:
        """Like calling it, but lazy: yields results as they arrive, reads the
        input a bounded window ahead; ``break`` or ``close()`` cancels the rest."""
        engine = _engine()
        items = engine.check_items(items, self.__wrapped__.__name__)
        return cast("Iterator[Any]", engine.run_iter(self.__wrapped__, items, args, kwargs,
                                                     self._state.explicit, self._state.record))

    async def amap(self, items: Iterable[Any], /, *args: Any, **kwargs: Any) -> list[Any]:
        """``await f.amap(items)``: the same call without blocking the event loop."""
        return [x async for x in self.aiter(items, *args, **kwargs)]

    async def aiter(self, items: Iterable[Any], /, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        """``async for r in f.aiter(items)``: results as they arrive."""
        items = _engine().check_items(items, self.__wrapped__.__name__)
        batches = _engine().start(self.__wrapped__, items, args, kwargs, self._state.explicit,
                               self._state.record, abort=(abort := threading.Event()))
        async for result in _engine().run_async(batches, abort):
            yield result


if TYPE_CHECKING:  # wrapt's stubs are generic; its classes are not before wrapt 2
    _BoundWrapper = wrapt.BoundFunctionWrapper[Any, Any]
    _Wrapper = wrapt.FunctionWrapper[Any, Any]
else:
    _BoundWrapper, _Wrapper = wrapt.BoundFunctionWrapper, wrapt.FunctionWrapper


class _BoundParallelFunction(_Calls, _BoundWrapper):
    _parloop_wrapper = True


class _ParallelFunction(_Calls, _Wrapper):
    _parloop_wrapper = True
    __bound_function_wrapper__ = _BoundParallelFunction

    def __init__(self, wrapped: Callable[..., Any], explicit: dict[str, Any]) -> None:
        state = _Remembered(explicit)
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
        self._tokens: list[tuple[contextvars.Token[Any], Pool]] = []

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
        from . import _scope
        from ._pool import Pool

        outer = _scope.active_block()
        options = {**(outer.options if outer else {}), **self._explicit}
        block = _scope.Block(options)
        pool = Pool(block)
        self._tokens.append((_scope.enter(block), pool))
        return pool

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        from . import _scope

        token, pool = self._tokens.pop()
        _scope.leave(token)
        pool.close(cancel=kind is not None,
                   kill=kind is not None and not issubclass(kind, Exception))

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
