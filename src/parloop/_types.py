"""The static types of what ``parallel_for`` returns.

A decorated ``def f(x: T, *args: P.args, **kwargs: P.kwargs) -> R`` becomes a
:class:`ParallelFunction` ``[T, P, R]``: ``f(items: Iterable[T], ...) ->
list[R]``. The runtime object is a wrapt proxy; these Protocols are what
mypy and pyright see, through a ``cast``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Concatenate, Generic, Protocol, TypeVar

from typing_extensions import ParamSpec

from ._plan import Plan
from ._pool import Pool

T_contra = TypeVar("T_contra", contravariant=True)
R_co = TypeVar("R_co")  # invariant: it appears inside list[...]
P = ParamSpec("P")

__all__ = ["BlockOptions", "BoundParallelFunction", "LoopDecorator", "ParallelFunction",
           "SetupOptions", "StarOptions"]


class ParallelFunction(Protocol[T_contra, P, R_co]):
    """A function decorated with ``@parallel_for``: called with an iterable of
    items instead of one item, and with the same extra arguments."""

    @property
    def __wrapped__(self) -> Callable[..., R_co]: ...

    @property
    def last_plan(self) -> Plan | None:
        """How the last call ran and why (None before the first call)."""
        ...

    def __call__(self, items: Iterable[T_contra], /, *args: P.args,
                 **kwargs: P.kwargs) -> list[R_co]: ...

    def iter(self, items: Iterable[T_contra], /, *args: P.args,
             **kwargs: P.kwargs) -> Iterator[R_co]: ...

    def amap(self, items: Iterable[T_contra], /, *args: P.args,
             **kwargs: P.kwargs) -> Awaitable[list[R_co]]: ...

    def aiter(self, items: Iterable[T_contra], /, *args: P.args,
              **kwargs: P.kwargs) -> AsyncIterator[R_co]: ...

    # Accessed on an instance, a decorated method binds ``self``. The types
    # cannot drop the first parameter from P, so a bound one is checked loosely.
    def __get__(self, instance: object, owner: type | None = None) -> BoundParallelFunction[R_co]: ...


class BoundParallelFunction(Protocol[R_co]):
    """A decorated method, bound to its instance or class."""

    @property
    def last_plan(self) -> Plan | None: ...

    def __call__(self, items: Iterable[Any], /, *args: Any, **kwargs: Any) -> list[R_co]: ...

    def iter(self, items: Iterable[Any], /, *args: Any, **kwargs: Any) -> Iterator[R_co]: ...

    def amap(self, items: Iterable[Any], /, *args: Any, **kwargs: Any) -> Awaitable[list[R_co]]: ...

    def aiter(self, items: Iterable[Any], /, *args: Any, **kwargs: Any) -> AsyncIterator[R_co]: ...


T = TypeVar("T")
R = TypeVar("R")


class LoopDecorator(Generic[T]):
    """What ``parallel_for(items, ...)`` returns: decorating a function with it
    runs the loop at once and binds the name to the list of results."""

    def __init__(self, run: Callable[[Callable[[T], Any]], list[Any]]) -> None:
        self._run = run

    def __call__(self, fn: Callable[[T], R]) -> list[R]:
        return self._run(fn)


class BlockOptions(Protocol):
    """Options that also open a ``with`` block (whose handle is a Pool)."""

    def __enter__(self) -> Pool: ...

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...

    async def __aenter__(self) -> Pool: ...

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None: ...


S_co = TypeVar("S_co", covariant=True)  # (covariant: it is a parameter of a parameter)
E_co = TypeVar("E_co", covariant=True)


class SetupOptions(BlockOptions, Protocol[S_co, E_co]):
    """What ``parallel_for(setup=make_state, ...)`` is to a type checker: it
    decorates a function that takes the state first, ``fn(state, item, ...)``,
    and the decorated function is called with the items alone."""

    def __call__(self, fn: Callable[Concatenate[S_co, T, P], R], /
                 ) -> ParallelFunction[T, P, R | E_co]: ...


class StarOptions(BlockOptions, Protocol):
    """What ``parallel_for(star=True, ...)`` is to a type checker: each item is
    a tuple of arguments, so items are checked loosely."""

    def __call__(self, fn: Callable[..., R], /) -> ParallelFunction[Iterable[Any], [], R]: ...
