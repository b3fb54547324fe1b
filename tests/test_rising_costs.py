"""Items whose cost rises as the loop goes (blocks of primes, growing
inputs): the probe's first items understate the rest, and workers running
later items look slower than the caller was on earlier ones. A serial
verdict is watched as the items run, and the retreat compares the workers'
items with the caller's run beside them."""

from __future__ import annotations

import pytest
from helpers import FakeClock, spin_for
from test_auto_threads import warm_pool

from parloop import _costs, parallel_for
from parloop._flow import RETREAT
from parloop._planner import Probe


def test_a_serial_verdict_is_reconsidered_at_the_cost_the_items_have_now() -> None:
    # Probed at 1 ms with 40 left: serial (40 ms) against a pool starting in
    # 100 ms. The last items ran 8 ms each, and at their rise the 36 left
    # average 10 ms: a pool pays.
    def cold_pool() -> object:
        from parloop._costs import PoolCost

        return PoolCost(2, 0.1, "")

    clock = FakeClock()
    probe = Probe(50, cold_pool, clock)  # type: ignore[arg-type]
    for _ in range(10):
        clock.now += 1e-3
        probe.add(1e-3, 1e-3, 1e-3)
    first = probe.verdict(10)
    assert first.serial_more is None, first.reason
    again = probe.reconsider(14, 10e-3, (4, 1e-3, 8e-3))
    assert again.serial_more == 0 and again.backend == "process", again.reason
    assert str(again.reason).startswith(
        "ran 14 items here, serially as planned; the last 4 took ~8 ms each, up from ~1 ms, "
        "and rising: ~10 ms each ahead; 36 left: serial ≈ 360 ms"), again.reason
    # The CPU share and the BLAS reading are as they were: only the cost moved.
    assert probe.cpu_share() == pytest.approx(1.0) and probe.cores_used() == 1.0


def test_a_reconsidered_verdict_can_stay_serial() -> None:
    clock = FakeClock()
    probe = Probe(50, warm_pool, clock)
    for _ in range(10):
        clock.now += 1e-6
        probe.add(1e-6, 1e-6, 1e-6)
    assert probe.reconsider(14, 2e-6, (4, 1e-6, 2e-6)).serial_more is None  # 72 µs left: no pool


def _rising(index: int) -> int:
    """Pure Python, 0.3 ms of CPU for the first item, 0.1 ms more for each next one."""
    return spin_for(0.3e-3 + index * 0.1e-3, index)


@pytest.mark.timeout(120)
def test_items_whose_cost_rises_run_on_processes_and_stay_there() -> None:
    # ~0.4 s of work on 2 CPUs, the first items 0.3-1 ms, the last 8.3 ms.
    # Before: either serial all along (the probe projected the rest at its
    # first items' ~0.6 ms), or processes until the workers' first reports
    # (items ~20 further on, ~2.5 ms) read slower than the probe's median:
    # "ran the last 60 here". Either way ~1.0x the plain loop.
    import os

    if (os.cpu_count() or 1) < 2:
        pytest.skip("one CPU: no pool pays")
    fn = parallel_for(_rising)
    items = list(range(80))
    for _ in range(2):  # the first call, then one that starts from what it measured
        assert fn(items) == items
        plan = fn.last_plan
        assert plan is not None
        assert plan.backend == "process", plan.reason
        assert "ran the last" not in plan.reason, plan.reason
    ratio = _costs.recall(_rising).get("ratio")
    assert ratio is None or ratio / 2 <= RETREAT, ratio


def _steady(index: int) -> int:
    return spin_for(50e-6, index)


def test_items_of_steady_cost_are_not_reconsidered() -> None:
    fn = parallel_for(_steady)
    assert fn(list(range(60))) == list(range(60))  # 3 ms: serial
    plan = fn.last_plan
    assert plan is not None and plan.backend == "serial", plan.reason
    assert "serially as planned" not in plan.reason, plan.reason
