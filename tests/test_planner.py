"""backend="auto": what the planner decides, and that its reasons carry numbers."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import nested_outer, sleep_then, square

from parloop import ParloopWarning, parallel_for


def test_tiny_work_runs_serially_and_says_why() -> None:
    fn = parallel_for(square)
    assert fn(range(8)) == [x * x for x in range(8)]
    plan = fn.last_plan
    assert plan is not None and plan.backend == "serial" and plan.workers == 1
    assert "serial ≈" in plan.reason and "less than any pool costs" in plan.reason


@pytest.mark.timeout(60)
def test_heavy_work_goes_to_processes() -> None:
    fn = parallel_for(sleep_then, workers=2, thread_safe=False)  # sleeps would go to threads
    # Enough items that a pool wins even when this process has measured a slow
    # fork server start (~0.4 s under load, after the suite's earlier tests).
    assert fn([0.05] * 24) == [0.05] * 24
    plan = fn.last_plan
    assert plan is not None and plan.backend == "process" and plan.workers == 2, plan.reason
    # A pool started beside the first item (a head start), or after the probe's numbers.
    assert "head start" in plan.reason or "2 workers ≈" in plan.reason


@pytest.mark.timeout(60)
def test_generator_of_heavy_items_switches_after_paying_for_the_start() -> None:
    fn = parallel_for(sleep_then, workers=2)
    assert fn(0.03 for _ in range(20)) == [0.03] * 20
    plan = fn.last_plan
    assert plan is not None and plan.backend == "process"
    assert "unknown count" in plan.reason


def test_generator_of_tiny_items_stays_serial() -> None:
    fn = parallel_for(square)
    assert fn(x for x in range(5000)) == [x * x for x in range(5000)]
    plan = fn.last_plan
    assert plan is not None and plan.backend == "serial" and "unknown count" in plan.reason


def test_one_worker_means_serial() -> None:
    fn = parallel_for(sleep_then, workers=1)
    fn([0.01, 0.01])
    assert fn.last_plan is not None and fn.last_plan.backend == "serial"
    assert "1 worker" in fn.last_plan.reason


def test_timeout_needs_a_process() -> None:
    fn = parallel_for(square, timeout=5)
    assert fn(range(4)) == [0, 1, 4, 9]
    assert fn.last_plan is not None and fn.last_plan.backend == "process"


@pytest.mark.timeout(60)
def test_nested_call_inside_a_worker_runs_serially() -> None:
    results = nested_outer.__wrapped__  # the inner call must plan serial in the worker
    outer = parallel_for(results, backend="process", workers=2)
    for x, inner, backend in outer(range(3)):
        assert inner == [i * i for i in range(x + 2)]
        assert backend == "serial"


def _holding_a_lock() -> Any:
    """A closure over a lock: it cannot be pickled, so it cannot go to a process."""
    import threading
    lock = threading.Lock()

    def guarded(x: float) -> float:
        with lock:
            time.sleep(x)
        return x

    return guarded


@pytest.mark.timeout(60)
def test_unpicklable_closure_falls_back_to_serial_with_a_warning() -> None:
    fn = parallel_for(_holding_a_lock(), workers=2)
    with pytest.warns(ParloopWarning, match="'lock'.*backend='thread'"):
        assert fn([0.1] * 8) == [0.1] * 8
    assert fn.last_plan is not None and fn.last_plan.backend == "serial"


@pytest.mark.timeout(60)
def test_the_fallback_warning_points_at_the_users_line_in_every_form() -> None:
    guarded = _holding_a_lock()
    fn = parallel_for(guarded, workers=2)
    items = [0.05] * 40  # enough that a pool would clearly pay, were it possible
    with pytest.warns(ParloopWarning) as seen:
        fn(items)
        list(fn.iter(items))
        with parallel_for(workers=2) as pool:
            pool.map(guarded, items)
    assert [w.filename for w in seen] == [__file__] * 3


@pytest.mark.timeout(60)
def test_every_item_runs_exactly_once_across_probe_and_pool(tmp_path: Path) -> None:
    fn = parallel_for(_mark, workers=2, thread_safe=False)
    n = 40
    assert fn([(tmp_path, i) for i in range(n)]) == list(range(n))
    assert fn.last_plan is not None and fn.last_plan.backend == "process"
    assert sorted(int(p.name) for p in tmp_path.iterdir()) == list(range(n))


def _mark(arg: tuple[Path, int]) -> int:
    folder, index = arg
    # O_EXCL: a second run of the same item would fail loudly.
    os.close(os.open(folder / str(index), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    time.sleep(0.01)
    return index


@pytest.mark.timeout(60)
def test_one_usable_cpu_under_taskset_means_serial() -> None:
    if not Path("/usr/bin/taskset").exists():
        pytest.skip("taskset is not installed")
    script = textwrap.dedent("""
        from parloop import cpu_count, parallel_for
        import time
        def slow(x):
            time.sleep(0.02)
            return x
        if __name__ == "__main__":
            fn = parallel_for(slow)
            fn(range(10))
            print(cpu_count(), fn.last_plan.backend, fn.last_plan.reason)
    """)
    out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", script],
                         capture_output=True, text=True, timeout=50, check=True).stdout
    assert out.startswith("1 serial 1 worker")


def test_chunks_are_sized_from_measured_cost() -> None:
    fn = parallel_for(sleep_then, backend="process", workers=2)
    fn([0.0005] * 400)
    plan = fn.last_plan
    assert plan is not None and plan.backend == "process"
    busy = sum(plan.worker_seconds.values())
    assert busy > 0.1  # the workers, not the caller, did the work


def test_each_decision_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    import logging
    with caplog.at_level(logging.DEBUG, logger="parloop"):
        parallel_for(square)(range(8))
    records = [r for r in caplog.records if r.name == "parloop"]
    assert records and records[-1].levelno == logging.DEBUG
    assert "square: serial:" in records[-1].getMessage()
    assert not logging.getLogger().handlers or all(
        h.__class__.__name__ == "LogCaptureHandler" or "pytest" in type(h).__module__
        for h in logging.getLogger().handlers)  # parloop never configures the root logger
