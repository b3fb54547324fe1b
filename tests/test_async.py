"""``await f.amap(...)`` and ``async for ... in f.aiter(...)``: the sync
contract, without blocking the event loop, and cancellable."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from helpers import add, decorated_square, fail_on, identity, sleep_then, square

from parloop import parallel_for

T = TypeVar("T")


def _drivers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "parloop-async"]


def run(make: Callable[[], Awaitable[T]]) -> T:
    """Run one coroutine on a fresh event loop (no plugin needed).

    The loop stays open until parloop's driver threads are done: one that
    finishes after the loop has closed fails to post its last message (see
    ``test_the_loop_may_close_while_the_driver_thread_runs``)."""
    async def main() -> T:
        try:
            return await make()
        finally:
            deadline = time.monotonic() + 10
            while _drivers() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
    return asyncio.run(main())


async def collect(iterator: Any) -> list[Any]:
    return [value async for value in iterator]


def start_then_sleep(x: int, log: str, seconds: float) -> int:
    """Appends ``x`` to the file ``log`` as it starts, then sleeps."""
    with open(log, "a") as file:
        file.write(f"{x}\n")
    time.sleep(seconds)
    return x


def started(log: Path) -> int:
    return len(log.read_text().split()) if log.exists() else 0


@pytest.mark.timeout(60)
def test_amap_and_aiter_keep_input_order(backend: dict[str, Any]) -> None:
    fn = parallel_for(square, **backend)
    assert run(lambda: fn.amap(range(30))) == [x * x for x in range(30)]
    assert run(lambda: collect(fn.aiter(range(30)))) == [x * x for x in range(30)]
    assert run(lambda: fn.amap([])) == []


@pytest.mark.timeout(60)
def test_unordered_yields_every_result(backend: dict[str, Any]) -> None:
    fn = parallel_for(square, ordered=False, **backend)
    assert sorted(run(lambda: fn.amap(range(40)))) == [x * x for x in range(40)]
    assert sorted(run(lambda: collect(fn.aiter(range(40))))) == [x * x for x in range(40)]


@pytest.mark.timeout(60)
def test_extra_args_reach_every_item(backend: dict[str, Any]) -> None:
    fn = parallel_for(add, **backend)
    assert run(lambda: fn.amap(range(4), 10, z=100)) == [110, 111, 112, 113]
    assert run(lambda: collect(fn.aiter(range(2), y=1))) == [1, 2]


@pytest.mark.timeout(60)
def test_an_item_s_error_is_raised_with_a_note(backend: dict[str, Any]) -> None:
    fn = parallel_for(fail_on, **backend)
    with pytest.raises(ValueError, match="item 3 is bad") as caught:
        run(lambda: fn.amap(range(6)))
    assert any("item #3" in note for note in getattr(caught.value, "__notes__", []))

    seen: list[int] = []

    async def consume() -> None:
        async for value in fn.aiter(range(6)):
            seen.append(value)

    with pytest.raises(ValueError, match="item 3 is bad"):
        run(consume)
    # Whatever arrived before the failure is in order and complete up to it.
    assert seen == [0, 1, 2][:len(seen)]


@pytest.mark.timeout(60)
def test_errors_return_puts_the_exception_in_place(backend: dict[str, Any]) -> None:
    fn = parallel_for(fail_on, errors="return", **backend)
    results = run(lambda: fn.amap(range(5)))
    assert results[:3] == [0, 1, 2] and results[4] == 4
    assert isinstance(results[3], ValueError) and str(results[3]) == "item 3 is bad"
    streamed = run(lambda: collect(fn.aiter(range(5))))
    assert isinstance(streamed[3], ValueError) and streamed[4] == 4


@pytest.mark.timeout(60)
def test_pool_amap_and_aiter_in_a_block(backend: dict[str, Any]) -> None:
    async def main() -> tuple[list[Any], list[Any], list[Any]]:
        async with parallel_for(**backend) as pool:
            a = await pool.amap(len, ["a", "bb", "ccc"])
            b = await collect(pool.aiter(add, range(3), 1, z=10))
            c = await decorated_square.amap(range(5))  # decorated calls use the block too
            plan = decorated_square.last_plan
            assert plan is not None and plan.backend == backend["backend"]
        return a, b, c

    assert run(main) == ([1, 2, 3], [11, 12, 13], [0, 1, 4, 9, 16])


@pytest.mark.timeout(60)
def test_sync_block_is_seen_by_async_calls_inside_it(backend: dict[str, Any]) -> None:
    with parallel_for(**backend) as pool:
        assert run(lambda: pool.amap(identity, list("abc"))) == ["a", "b", "c"]
        assert pool.last_plan is not None and pool.last_plan.backend == backend["backend"]


@pytest.mark.timeout(60)
def test_the_event_loop_keeps_running_during_a_slow_map(backend: dict[str, Any]) -> None:
    fn = parallel_for(sleep_then, chunksize=1, **backend)

    async def main() -> tuple[list[float], list[float]]:
        ticks: list[float] = []

        async def ticker() -> None:
            while True:
                ticks.append(time.monotonic())
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        try:
            results = await fn.amap([0.25] * 12)
        finally:
            task.cancel()
        return results, ticks

    results, ticks = run(main)
    assert results == [0.25] * 12
    gaps = [later - earlier for earlier, later in itertools.pairwise(ticks)]
    # 12 x 0.25 s of sleeping: >= 1.5 s on 2 workers, 3 s serially. A loop
    # blocked by the map would not tick at all for that long; a gap under 1 s
    # allows a loaded machine's hiccups (0.64 s was seen while a pool spawned).
    assert len(ticks) > 30, f"only {len(ticks)} ticks"
    assert max(gaps) < 1.0, f"the loop stalled for {max(gaps):.2f} s"


@pytest.mark.timeout(60)
def test_two_maps_run_concurrently(backend: dict[str, Any]) -> None:
    fn = parallel_for(add, **backend)

    async def main() -> list[list[int]]:
        return await asyncio.gather(fn.amap(range(20)), fn.amap(range(20), 100))

    first, second = run(main)
    assert first == list(range(20))
    assert second == list(range(100, 120))


@pytest.mark.timeout(60)
def test_cancelling_the_task_cancels_pending_items(backend: dict[str, Any], tmp_path: Path) -> None:
    log = tmp_path / "started"
    fn = parallel_for(start_then_sleep, chunksize=1, **{**backend, "workers": 2})

    async def main() -> tuple[float, int]:
        task = asyncio.create_task(fn.amap(range(100), str(log), 0.2))
        while started(log) < 2:  # the pool is up and running items
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
        task.cancel()
        cancelled_at = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - cancelled_at, started(log)

    try:
        waited, at_cancel = run(main)
        assert waited < 1.0, f"the awaiting task took {waited:.2f} s to cancel"

        # The thread that drives the map ends, and no further item starts.
        deadline = time.monotonic() + 2.0
        while _drivers():
            assert time.monotonic() < deadline, "the map kept running after its task was cancelled"
            time.sleep(0.02)
        settled = started(log)
        time.sleep(0.6)
        assert started(log) == settled, "items kept starting after the cancel"
        assert settled <= at_cancel + 6, (at_cancel, settled)  # at most a few items in flight
    finally:
        _wait_for_drivers(30)  # a map that failed to stop must not run into the next test

    # The next call works, on the same options.
    assert run(lambda: fn.amap([1, 2, 3], str(log), 0.0)) == [1, 2, 3]


def _wait_for_drivers(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while _drivers() and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.mark.timeout(30)
def test_the_loop_may_close_while_the_driver_thread_runs() -> None:
    # asyncio.run() cancels what is left and closes its loop; a map still
    # running in the driver thread must then wind down quietly.
    failures: list[BaseException | None] = []
    previous = threading.excepthook
    threading.excepthook = lambda args: failures.append(args.exc_value)
    try:
        fn = parallel_for(sleep_then, backend="thread", workers=2, chunksize=1)

        async def main() -> None:
            task = asyncio.create_task(fn.amap([0.3] * 4))
            await asyncio.sleep(0.05)  # returns while the first items still sleep
            assert not task.done()

        asyncio.run(main())
        _wait_for_drivers(5)
    finally:
        threading.excepthook = previous
    assert failures == []
