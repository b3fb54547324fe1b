"""What a type checker sees of every form of ``parallel_for``.

Checked, never run: ``mypy --strict --warn-unused-ignores tests/typing`` (and
pyright) must pass. Each ``assert_type`` pins an inferred type; each line with
``# type: ignore[code]`` must be rejected with exactly that code, or the
ignore itself is reported as unused and the check fails.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from typing_extensions import assert_type

from parloop import Checkpoint, ParallelFunction, Plan, parallel_for


@parallel_for
def square(x: int) -> int:
    return x * x


@parallel_for(workers=2, ordered=False, backend="thread", chunksize=4, progress=True)
def shout(word: str) -> str:
    return word.upper()


@parallel_for
def scale(x: float, factor: float, *, offset: float = 0.0) -> float:
    return x * factor + offset


@parallel_for(errors="return")
def parse(text: str) -> int:
    return int(text)


def with_state(state: dict[str, int], x: int) -> int:
    return state["base"] + x


def times(x: float, factor: float, *, offset: float = 0.0) -> float:
    return x * factor + offset


def make_text() -> str:
    return "state"


def make_base() -> dict[str, int]:
    return {"base": 1}


def upper_text(text: str) -> str:
    return text.upper()


def report(done: int, total: int | None) -> None:
    print(done, total)


def forms() -> None:
    # The bare decorator: items in, a list of results out.
    assert_type(square, ParallelFunction[int, [], int])
    assert_type(square([1, 2]), list[int])
    assert_type(square(range(10)), list[int])
    assert_type(square(x for x in (1, 2)), list[int])
    assert_type(square.__wrapped__(3), int)

    # With options.
    assert_type(shout(["a", "b"]), list[str])
    assert_type(shout.iter(["a"]), Iterator[str])

    # Wrapping an existing callable.
    psqrt = parallel_for(math.sqrt)
    assert_type(psqrt([1.0, 4.0]), list[float])
    plen = parallel_for(len, workers=-1)
    assert_type(plen(["ab", [1, 2, 3]]), list[int])

    # The loop form binds the name to the list of results.
    @parallel_for(range(3))
    def squares(i: int) -> int:
        return i * i

    assert_type(squares, list[int])

    @parallel_for(["a", "bb"], backend="serial")
    def lengths(word: str) -> int:
        return len(word)

    assert_type(lengths, list[int])

    # The block: one pool for every call inside it.
    with parallel_for(workers=2) as pool:
        assert_type(square(range(4)), list[int])
        # pool.map takes any callable: its results are not typed.
        assert_type(pool.map(len, ["a", "bb"]), list[Any])
        assert_type(pool.iter(len, ["a"]), Iterator[Any])
        assert_type(pool.last_plan, Plan | None)

    # Lazy iteration, and the plan of the last call.
    assert_type(square.iter([1, 2]), Iterator[int])
    assert_type(square.last_plan, Plan | None)
    plan = square.last_plan
    if plan is not None:
        assert_type(plan.backend, str)
        assert_type(plan.workers, int)

    # errors="return": each failed item's exception takes its result's place.
    assert_type(parse(["1", "x"]), list[int | BaseException])
    assert_type(parallel_for(math.sqrt, errors="return")([4.0]), list[float | BaseException])

    # Extra positional and keyword arguments go to every item.
    assert_type(scale([1.0, 2.0], 3.0), list[float])
    assert_type(scale([1.0], 3.0, offset=1.0), list[float])
    assert_type(scale.iter([1.0], factor=2.0), Iterator[float])

    # star=True: each item is a tuple of arguments.
    assert_type(parallel_for(pow, star=True)([(2, 3)]), list[int])

    @parallel_for(star=True, workers=2)
    def add(x: int, y: int) -> int:
        return x + y

    assert_type(add([(1, 2), (3, 4)]), list[int])

    # A progress callback.
    assert_type(parallel_for(math.sqrt, progress=report)([1.0]), list[float])

    # setup=: the state goes first, and its type must match the setup's result.
    def load() -> dict[str, float]:
        return {"scale": 2.0}

    def scaled(state: dict[str, float], x: float, offset: float = 0.0) -> float:
        return state["scale"] * x + offset

    assert_type(parallel_for(scaled, setup=load)([1.0]), list[float])
    assert_type(parallel_for(scaled, setup=load)([1.0], 0.5), list[float])
    assert_type(parallel_for(setup=load)(scaled)([1.0]), list[float])
    assert_type(parallel_for(setup=load, errors="return")(scaled)([1.0]),
                list[float | BaseException])
    with parallel_for(setup=load) as pool:
        print(pool.map(scaled, [1.0]))

    # teardown=: it takes the state setup made.
    def close(state: dict[str, float]) -> int:
        return len(state)

    assert_type(parallel_for(scaled, setup=load, teardown=close)([1.0]), list[float])
    assert_type(parallel_for(setup=load, teardown=close)(scaled)([1.0]), list[float])

    # pool.submit: a typed concurrent.futures.Future.
    with parallel_for(workers=2) as pool:
        assert_type(pool.submit(times, 1.0, 2.0, offset=1.0), Future[float])
        pool.submit(times, 1.0, "2")  # type: ignore[arg-type]

    # A checkpoint: a file name, a path or a Checkpoint.
    assert_type(parallel_for(math.sqrt, checkpoint="sweep.db")([1.0]), list[float])
    assert_type(parallel_for(math.sqrt, checkpoint=Path("sweep.db"))([1.0]), list[float])
    keyed = Checkpoint("sweep.db", key=str, store_errors=True)
    assert_type(parallel_for(math.sqrt, checkpoint=keyed)([1.0]), list[float])
    assert_type(keyed.clear(square), int)


async def async_forms() -> None:
    assert_type(await square.amap([1, 2]), list[int])
    assert_type(square.aiter([1, 2]), AsyncIterator[int])
    async for value in square.aiter(range(3)):
        assert_type(value, int)
    assert_type(await scale.amap([1.0], 2.0, offset=0.5), list[float])
    async with parallel_for(workers=2) as pool:
        print(await pool.amap(len, ["a"]))


def rejected() -> None:
    # Items of the wrong type, or one item instead of an iterable of them.
    square(["a"])  # type: ignore[list-item]
    square(5)  # type: ignore[arg-type]
    square.iter(["a"])  # type: ignore[list-item]
    square()  # type: ignore[call-arg]
    # Extra arguments are checked against the function's own.
    scale([1.0])  # type: ignore[call-arg]
    scale([1.0], "3")  # type: ignore[arg-type]
    scale([1.0], 3.0, offest=1.0)  # type: ignore[call-arg]
    square([1], 2)  # type: ignore[call-arg]
    # The results are a list of the function's return type.
    text: list[str] = square([1])  # type: ignore[assignment]
    # Options are keyword-only and typed.
    parallel_for(workers="4")  # type: ignore[call-overload]
    parallel_for(backend="gpu")  # type: ignore[call-overload]
    parallel_for(math.sqrt, ordered="yes")  # type: ignore[call-overload]
    parallel_for(math.sqrt, start_method="vfork")  # type: ignore[call-overload]
    parallel_for(math.sqrt, errors="ignore")  # type: ignore[call-overload]
    parallel_for(math.sqrt, progress="yes")  # type: ignore[call-overload]
    parallel_for(math.sqrt, 4)  # type: ignore[call-overload]
    parallel_for(math.sqrt, wrokers=4)  # type: ignore[call-overload]
    parallel_for(math.sqrt, checkpoint=3)  # type: ignore[call-overload]
    # A setup whose result is not what the function takes first.
    parallel_for(with_state, setup=make_text)  # type: ignore[arg-type]
    parallel_for(setup=make_text)(with_state)  # type: ignore[arg-type]
    # A teardown that does not take what the setup made.
    parallel_for(with_state, setup=make_base, teardown=upper_text)  # type: ignore[arg-type]
    Checkpoint("sweep.db", reuse="no")  # type: ignore[arg-type]
    # The loop form checks the items against the loop body.

    @parallel_for(["a", "b"])  # type: ignore[arg-type]
    def doubled(i: int) -> int:
        return 2 * i

    # last_plan is read-only.
    square.last_plan = None  # type: ignore[misc]
    shout([1])  # type: ignore[list-item]
    print(text, doubled)
