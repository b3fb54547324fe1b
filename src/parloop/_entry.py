"""The public ``parallel_for`` with its typed overloads."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Concatenate, Literal, ParamSpec, TypedDict, TypeVar, overload

from ._api import _MISSING, ParallelFor, parallel_for_impl

if TYPE_CHECKING:
    import os

    from ._checkpoint import Checkpoint

if TYPE_CHECKING:  # annotations only: not imported when the package is
    from typing_extensions import Never, Unpack

    from ._types import LoopDecorator, ParallelFunction, SetupOptions, StarOptions

T = TypeVar("T")
R = TypeVar("R")
S = TypeVar("S")
P = ParamSpec("P")

Backend = Literal["auto", "process", "thread", "serial", "dask", "ray"]
StartMethod = Literal["fork", "spawn", "forkserver"]


class CommonOptions(TypedDict, total=False):
    """The options every form takes; ``errors`` and ``star`` change the
    result type, so each overload below spells out those two itself."""

    workers: int | None
    backend: Backend
    ordered: bool
    chunksize: int | None
    timeout: float | None
    progress: bool | Callable[[int, int | None], None]
    start_method: StartMethod | None
    retries: int
    retry_on: type[BaseException] | tuple[type[BaseException], ...]
    client: Any
    address: str | None
    max_items_per_worker: int | None
    thread_safe: bool
    checkpoint: str | os.PathLike[str] | Checkpoint | None


# setup=: each worker's state goes first, so the function is (state, item, ...).
@overload
def parallel_for(fn: Callable[Concatenate[S, T, P], R], /, *, setup: Callable[[], S],
                 teardown: Callable[[S], Any] | None = ..., errors: Literal["raise"] = ...,
                 star: Literal[False] = ...,
                 **options: Unpack[CommonOptions]) -> ParallelFunction[T, P, R]: ...


@overload
def parallel_for(fn: Callable[Concatenate[S, T, P], R], /, *, setup: Callable[[], S],
                 teardown: Callable[[S], Any] | None = ..., errors: Literal["return"],
                 star: Literal[False] = ...,
                 **options: Unpack[CommonOptions]) -> ParallelFunction[T, P, R | BaseException]: ...


@overload
def parallel_for(*, setup: Callable[[], S], teardown: Callable[[S], Any] | None = ...,
                 errors: Literal["raise"] = ..., star: Literal[False] = ...,
                 **options: Unpack[CommonOptions]
                 ) -> SetupOptions[S, Never]: ...


@overload
def parallel_for(*, setup: Callable[[], S], teardown: Callable[[S], Any] | None = ...,
                 errors: Literal["return"], star: Literal[False] = ...,
                 **options: Unpack[CommonOptions]
                 ) -> SetupOptions[S, BaseException]: ...


@overload
def parallel_for(fn: Callable[Concatenate[T, P], R], /, *, errors: Literal["raise"] = ...,
                 star: Literal[False] = ..., **options: Unpack[CommonOptions]
                 ) -> ParallelFunction[T, P, R]: ...


@overload
def parallel_for(fn: Callable[Concatenate[T, P], R], /, *, errors: Literal["return"],
                 star: Literal[False] = ..., **options: Unpack[CommonOptions]
                 ) -> ParallelFunction[T, P, R | BaseException]: ...


@overload
def parallel_for(fn: Callable[..., R], /, *, errors: Literal["raise", "return"] = ...,
                 star: Literal[True], setup: Callable[[], Any] | None = ...,
                 teardown: Callable[[Any], Any] | None = ...,
                 **options: Unpack[CommonOptions]) -> ParallelFunction[Iterable[Any], [], R]: ...


@overload
def parallel_for(items: Iterable[T], /, *, errors: Literal["raise", "return"] = ...,
                 star: bool = ..., **options: Unpack[CommonOptions]) -> LoopDecorator[T]: ...


@overload
def parallel_for(*, errors: Literal["raise"] = ..., star: Literal[False] = ...,
                 **options: Unpack[CommonOptions]) -> ParallelFor[Never]: ...


@overload
def parallel_for(*, errors: Literal["return"], star: Literal[False] = ...,
                 **options: Unpack[CommonOptions]) -> ParallelFor[BaseException]: ...


@overload
def parallel_for(*, errors: Literal["raise", "return"] = ..., star: Literal[True],
                 setup: Callable[[], Any] | None = ...,
                 teardown: Callable[[Any], Any] | None = ...,
                 **options: Unpack[CommonOptions]) -> StarOptions: ...


@overload
def parallel_for(*, errors: Literal["raise", "return"] = ..., star: Literal[False] = ...,
                 **options: Unpack[CommonOptions]) -> ParallelFor[Any]: ...


def parallel_for(target: Any = _MISSING, /, **options: Any) -> Any:
    """Run a per-item function over many items on every CPU.

    Five forms::

        @parallel_for                        # decorate: square(items) -> list
        def square(x): return x * x

        @parallel_for(workers=4, ordered=False)   # decorate, with options

        psqrt = parallel_for(math.sqrt)      # wrap an existing callable

        @parallel_for(range(10))             # loop form: runs now, the name
        def squares(i): return i * i         # is bound to the list of results

        with parallel_for(workers=4) as pool:    # block: one pool for every
            a = square(range(100))               # call inside it
            b = pool.map(len, ["a", "bb"])

    A decorated ``f`` is called as ``f(items, *args, **kwargs)`` and returns
    ``[f(item, *args, **kwargs) for item in items]``; ``f.iter(...)`` yields
    lazily; ``f.last_plan`` says how the last call ran and why.

    Options (keyword-only): ``workers`` (None: all usable CPUs or
    ``$PARLOOP_WORKERS``; -1 all, -2 all but one), ``backend`` ("auto",
    "process", "thread", "serial", "dask", "ray"), ``ordered``, ``chunksize``
    (None: measured), ``timeout`` (seconds per item), ``errors`` ("raise" or
    "return": an item's exception takes its result's place), ``star`` (each
    item is a tuple of arguments), ``progress`` (True, or a callable
    ``(done, total)``), ``start_method``, ``retries`` and ``retry_on``,
    ``client`` and ``address`` (Dask / Ray), ``thread_safe``, and
    ``checkpoint`` (a file, or a :class:`~parloop.Checkpoint`: finished
    results are stored there, and a later call runs only the rest), and
    ``setup`` (a function of no arguments, run once per worker: its result,
    the worker's state, is passed to every item's call before the item:
    ``fn(state, item, ...)``), with ``teardown`` (a function of the state:
    each worker's state then lives for one call, at whose end the worker
    runs ``teardown(state)``; what each returned is in
    ``f.last_plan.teardown_results``).

    Raises TypeError for a wrong option type or an unknown option, ValueError
    for a bad value, :class:`~parloop.UnpicklableError` when work must go to
    a process and cannot be pickled, and whatever your function raised, with
    a note naming the item.
    """
    return parallel_for_impl(target, options)
