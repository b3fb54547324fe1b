"""``pool.submit``: one call on a block's pool as a concurrent.futures.Future,
with real processes: results, errors, crashes, timeouts and cancellation."""

from __future__ import annotations

import os
import time
from concurrent.futures import FIRST_COMPLETED, CancelledError, as_completed, wait
from pathlib import Path
from typing import Any

import pytest
from helpers import add, die_on, fail_on, sleep_then, start_sleep_end

from parloop import TaskTimeoutError, WorkerCrashedError, parallel_for


def wait_for(path: Path, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


@pytest.mark.parametrize("backend", ["process", "thread"])
def test_results_come_back_through_as_completed_wait_and_callbacks(backend: str) -> None:
    seen: list[Any] = []
    with parallel_for(workers=2, backend=backend) as pool:
        futures = [pool.submit(sleep_then, delay) for delay in (0.3, 0.01, 0.02)]
        futures[0].add_done_callback(lambda f: seen.append(f.result()))
        first = next(as_completed(futures))
        assert first.result() in (0.01, 0.02)  # the long one was overtaken
        done, _ = wait(futures)
        assert sorted(f.result() for f in done) == [0.01, 0.02, 0.3]
        assert pool.submit(add, 2, y=5).result(timeout=30) == 7  # arguments as given
    assert seen == [0.3]


def test_an_error_is_the_futures_exception_with_its_type_and_a_note() -> None:
    with parallel_for(workers=2, backend="process") as pool:
        future = pool.submit(fail_on, 3)
        error = future.exception(timeout=30)
        assert isinstance(error, ValueError) and "item 3 is bad" in str(error)
        assert pool.submit(fail_on, 1).result(timeout=30) == 1  # the pool goes on


def test_a_crash_and_a_timeout_apply_as_in_the_block() -> None:
    with parallel_for(workers=2, backend="process", timeout=0.5) as pool:
        crashed = pool.submit(die_on, 2)
        slow = pool.submit(sleep_then, 10)
        assert isinstance(crashed.exception(timeout=30), WorkerCrashedError)
        assert isinstance(slow.exception(timeout=30), TaskTimeoutError)
        assert pool.submit(sleep_then, 0.01).result(timeout=30) == 0.01


def test_cancel_stops_a_running_call_and_the_pool_goes_on(tmp_path: Path) -> None:
    with parallel_for(workers=2, backend="process") as pool:
        running = pool.submit(start_sleep_end, str(tmp_path), "long", 30)
        wait_for(tmp_path / "long.started")
        assert running.running()
        assert running.cancel() and running.cancelled()
        with pytest.raises(CancelledError):
            running.result()
        began = time.monotonic()
        futures = [pool.submit(sleep_then, 0.2) for _ in range(2)]
        wait(futures, timeout=30)
        assert time.monotonic() - began < 5  # both workers free again
    assert not (tmp_path / "long.ended").exists()  # the item was stopped, not left running


def test_cancel_drops_a_pending_call_before_it_starts(tmp_path: Path) -> None:
    from parloop._futures import DRIVERS

    with parallel_for(workers=2, backend="thread") as pool:
        blockers = [pool.submit(sleep_then, 0.2) for _ in range(DRIVERS)]
        pending = pool.submit(start_sleep_end, str(tmp_path), "pending", 0)
        assert not pending.running() and pending.cancel()
        done, _ = wait([*blockers, pending], return_when=FIRST_COMPLETED)
        assert pending in done
    assert not (tmp_path / "pending.started").exists()


def test_the_block_waits_for_its_submits_and_an_error_cancels_them(tmp_path: Path) -> None:
    with parallel_for(workers=2, backend="process") as pool:
        future = pool.submit(sleep_then, 0.3)
    assert future.done() and future.result() == 0.3  # the block waited
    with pytest.raises(KeyError), parallel_for(workers=2, backend="process") as pool:
        doomed = pool.submit(start_sleep_end, str(tmp_path), "doomed", 30)
        wait_for(tmp_path / "doomed.started")
        raise KeyError("the block's own error")
    assert doomed.cancelled()
    assert not (tmp_path / "doomed.ended").exists()
    with pytest.raises(RuntimeError, match="after its with block ended"):
        pool.submit(sleep_then, 0.1)


def test_a_decorated_function_keeps_its_own_options(tmp_path: Path) -> None:
    nap = parallel_for(sleep_then, timeout=0.3)
    with parallel_for(workers=2, backend="process") as pool:
        assert isinstance(pool.submit(nap, 5).exception(timeout=30), TaskTimeoutError)
        assert pool.submit(nap, 0.01).result(timeout=30) == 0.01
    assert os.getpid() > 0
