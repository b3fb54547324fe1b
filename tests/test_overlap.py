"""A pool that does not fork the caller (forkserver, spawn) starts in a thread
while the caller goes on running items: its start-up costs no time.
Real pools throughout; a test that needs a slow start wraps the real start
with a delay rather than replacing it."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from parloop import _scope, parallel_for


def pid_then_sleep(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def _slow_start(monkeypatch: pytest.MonkeyPatch, delay: float) -> None:
    real = _scope.lease

    def lease(*args: Any, **kwargs: Any) -> _scope.Lease:
        if threading.current_thread().name == "parloop-pool-start":
            time.sleep(delay)
        return real(*args, **kwargs)

    monkeypatch.setattr(_scope, "lease", lease)


@pytest.mark.timeout(60)
def test_the_caller_runs_items_while_the_pool_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    _slow_start(monkeypatch, 0.3)
    fn = parallel_for(pid_then_sleep, workers=2, start_method="forkserver", thread_safe=False)
    pids = fn([0.01] * 150)
    plan = fn.last_plan
    assert plan is not None and plan.backend == "process"
    assert "in the background" in plan.reason
    here = pids.count(os.getpid())
    assert here >= 10  # the probe, then ~0.3 s of items while the pool started
    assert len(set(pids) - {os.getpid()}) >= 1  # the rest went to workers
    assert plan.caller_seconds >= 0.3
    assert not any(t.name == "parloop-pool-start" for t in threading.enumerate())


@pytest.mark.timeout(60)
def test_input_that_ends_while_the_pool_starts_is_a_serial_run_and_the_pool_stays_warm(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _slow_start(monkeypatch, 1.0)

    def items() -> Iterator[float]:  # unknown length: a pool is started at once
        yield from [0.02] * 10

    fn = parallel_for(pid_then_sleep, workers=2, start_method="forkserver", thread_safe=False)
    assert fn(items()) == [os.getpid()] * 10
    plan = fn.last_plan
    assert plan is not None and plan.backend == "serial"
    assert "while the pool was starting" in plan.reason
    options = {"workers": 2, "start_method": "forkserver"}
    from parloop._options import resolve
    assert _scope.is_warm("process", 2, resolve(options, None), None)


@pytest.mark.timeout(60)
def test_an_error_while_the_pool_starts_raises_and_leaves_nothing_behind(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _slow_start(monkeypatch, 0.5)
    calls = {"n": 0}

    def fails_on_the_fourth(seconds: float) -> float:
        calls["n"] += 1
        if calls["n"] == 4:
            raise ValueError("fourth")
        time.sleep(seconds)
        return seconds

    fn = parallel_for(fails_on_the_fourth, workers=2, start_method="forkserver")
    with pytest.raises(ValueError, match="fourth") as caught:
        fn([0.01] * 100)  # too short for a head start: the caller runs items 0-3
    assert "item #3" in " ".join(getattr(caught.value, "__notes__", []))
    # The census fixture checks that no thread, process or fd outlives the test.


@pytest.mark.timeout(60)
def test_two_calls_starting_pools_at_once_leave_the_switch_interval_as_it_was(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    _slow_start(monkeypatch, 0.3)
    original = sys.getswitchinterval()
    results: list[list[int]] = []

    def one_call(workers: int) -> None:
        # Different worker counts: two pools, each started by its own call.
        fn = parallel_for(pid_then_sleep, workers=workers, start_method="forkserver",
                          thread_safe=False)
        results.append(fn([0.01] * 60))

    threads = [threading.Thread(target=one_call, args=(n,)) for n in (2, 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(50)
    assert [len(r) for r in results] == [60, 60]
    assert sys.getswitchinterval() == original


@pytest.mark.timeout(60)
def test_an_item_longer_than_the_start_waits_for_the_pool_instead_of_running_here() -> None:
    # 1 s items: the pool (well under 1 s to start) must get items 1 and 2 at
    # once, rather than the caller starting item 1 and the pool idling behind it.
    fn = parallel_for(pid_then_sleep, workers=2, start_method="forkserver", thread_safe=False)
    started = time.monotonic()
    pids = fn([1.0] * 3)
    took = time.monotonic() - started
    assert pids.count(os.getpid()) == 1  # the probe's item only
    assert len(set(pids)) == 3
    assert took < 2.9  # 1 s probe + 1 s in parallel (+ the start), not 3 s serial
