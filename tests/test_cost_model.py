"""The planner's cost model on synthetic costs: a fake clock and made-up item
times, so each decision is checked exactly, without a real pool or timing noise.
(``test_planner.py`` checks the same decisions on real runs.)"""

from __future__ import annotations

import time

import pytest
from helpers import FakeClock

from parloop import parallel_for
from parloop._chunks import CHUNK_SECONDS, MIN_CHUNK_SECONDS, ChunkSizer
from parloop._costs import PIPE_BYTES_PER_SECOND, PoolCost, pickle_round_trip, transfer_seconds
from parloop._known import from_history
from parloop._planner import HEAVY_ITEM, PROBE_FLOOR, Probe
from parloop._projections import LATENCY, MARGIN, projections


def never_asked() -> PoolCost:
    raise AssertionError("the pool's cost was asked for, but the work is too small for any pool")


def pool(workers: int = 2, startup: float = 0.01) -> PoolCost:
    return PoolCost(workers, startup, "workers=1" if workers == 1 else "")


def feed(probe: Probe, clock: FakeClock, cost: float, up_to: int) -> int:
    """Run items of ``cost`` seconds until the probe is done (or ``up_to``); items seen."""
    for seen in range(1, up_to + 1):
        clock.now += cost
        probe.times.append(cost)
        if seen == 1:
            probe.moved.keep(seen, seen)
        if probe.done(seen):
            return seen
    return up_to


def test_tiny_items_stay_serial_after_three_without_asking_what_a_pool_costs() -> None:
    clock = FakeClock()
    probe = Probe(8, never_asked, clock)
    seen = feed(probe, clock, 1e-7, 8)
    assert seen == 3  # one item may carry warm-up costs: three decide
    verdict = probe.verdict(seen)
    assert verdict.serial_more is None
    assert "less than any pool costs" in str(verdict.reason)


def test_heavy_items_decide_after_one_and_go_parallel() -> None:
    clock = FakeClock()
    probe = Probe(100, lambda: pool(2, 0.02), clock)
    seen = feed(probe, clock, 0.01, 100)
    assert seen == 1  # 10 ms is heavy: waiting for more would cost real time
    verdict = probe.verdict(seen)
    assert verdict.serial_more == 0
    text = str(verdict.reason)
    # The numbers it decided on: 99 items of 10 ms serially, two workers with the start-up.
    serial, parallel = projections(99, 0.01, probe.transfer, pool(2, 0.02))
    assert serial == pytest.approx(0.99)
    assert parallel == pytest.approx(0.02 + LATENCY + 50 * (0.01 + probe.transfer / 2))
    assert "99 left" in text and "serial ≈ 990 ms" in text and "2 workers ≈" in text
    assert "pool start ~20 ms" in text


def test_a_slow_pool_start_keeps_a_short_loop_serial_but_a_warm_pool_takes_it() -> None:
    cold, warm = FakeClock(), FakeClock()
    cold_probe = Probe(30, lambda: pool(2, startup=0.1), cold)  # forkserver-like start
    warm_probe = Probe(30, lambda: pool(2, startup=0.0), warm)
    assert cold_probe.verdict(feed(cold_probe, cold, 1e-3, 30)).serial_more is None
    assert warm_probe.verdict(feed(warm_probe, warm, 1e-3, 30)).serial_more == 0


def test_one_worker_is_serial_and_names_where_the_count_came_from() -> None:
    clock = FakeClock()
    probe = Probe(50, lambda: pool(1), clock)
    seen = feed(probe, clock, 0.01, 50)
    assert seen == 1
    verdict = probe.verdict(seen)
    assert verdict.serial_more is None and str(verdict.reason) == "1 worker (workers=1)"


def test_a_close_call_keeps_probing_within_its_budget() -> None:
    # 3 items left of 1 ms on 2 workers, warm: 3 ms serial against 2 ms + 2 rounds.
    # Neither side wins by the clear-win factor, so the probe runs on, but never
    # past max(2 ms, 2% of the serial time).
    clock = FakeClock()
    probe = Probe(6, lambda: pool(2, 0.0), clock)
    seen = feed(probe, clock, HEAVY_ITEM, 6)
    assert clock.now - 100.0 <= max(PROBE_FLOOR, 0.02 * 6 * HEAVY_ITEM) + HEAVY_ITEM
    assert seen < 6


def test_unknown_length_heavy_items_switch_after_paying_for_the_start() -> None:
    clock = FakeClock()
    probe = Probe(None, lambda: pool(2, startup=0.05), clock)
    seen = feed(probe, clock, 0.01, 1000)
    assert clock.now - 100.0 >= PROBE_FLOOR
    verdict = probe.verdict(seen)
    assert verdict.serial_more == 5  # 50 ms of start-up = 5 items of 10 ms run here first
    assert "unknown count" in str(verdict.reason) and "start-up cost" in str(verdict.reason)


def test_unknown_length_tiny_items_stay_serial() -> None:
    clock = FakeClock()
    probe = Probe(None, lambda: pool(2, 0.0), clock)
    seen = feed(probe, clock, 1e-7, 10**6)
    verdict = probe.verdict(seen)
    assert verdict.serial_more is None and "unknown count" in str(verdict.reason)


def test_the_caller_side_of_a_big_transfer_keeps_cheap_work_serial() -> None:
    # 10 µs of work on a 10 MB item: moving it costs far more than running it.
    big = bytes(10**7)
    clock = FakeClock()
    probe = Probe(1000, lambda: pool(2, 0.0), clock)
    for seen in range(1, 1001):
        clock.now += 1e-5
        probe.times.append(1e-5)
        if seen == 1:
            probe.moved.keep(big, 0)
        if probe.done(seen):
            break
    verdict = probe.verdict(seen)
    assert verdict.serial_more is None
    assert probe.moved.size >= 10**7
    assert "transfer ~" in str(verdict.reason)


def test_the_margin_favours_the_loop_when_the_pool_only_just_wins() -> None:
    cost, workers = 1e-3, 2
    remaining = 40
    serial, parallel = projections(remaining, cost, 0.0, pool(workers, 0.0))
    assert parallel < serial < parallel * MARGIN * 2  # a real but modest win
    # The verdict goes parallel only when parallel * MARGIN < serial.
    clock = FakeClock()
    probe = Probe(remaining + 1, lambda: pool(workers, 0.0), clock)
    feed(probe, clock, cost, 1)
    assert (probe.verdict(1).serial_more == 0) == (parallel * MARGIN < serial)


def test_history_skips_the_probe_only_for_heavy_items_and_a_known_count() -> None:
    heavy = {"process": 0.01}  # as a pool's workers measured it
    assert from_history(None, heavy, lambda: pool()) is None  # a generator: probe
    assert from_history(100, {"process": 1e-6}, never_asked) is None  # light: probe
    assert from_history(100, {}, never_asked) is None  # no history
    assert from_history(100, {"serial": 0.01}, never_asked) is None  # no worker measured it
    assert from_history(2, heavy, lambda: pool(2, startup=1.0)) is None  # start dominates
    verdict = from_history(100, heavy, lambda: pool(2, 0.0))
    assert verdict is not None and verdict.serial_more == 0
    assert str(verdict.reason).startswith(
        "no probe: the workers of an earlier call measured ~10 ms per item")


def _nap(seconds: float) -> float:  # only this test calls it: its history starts empty
    time.sleep(seconds)
    return seconds


@pytest.mark.timeout(60)
def test_a_second_call_of_heavy_work_starts_every_worker_at_once() -> None:
    fn = parallel_for(_nap, workers=2, thread_safe=False)  # sleeps would go to threads
    assert fn([0.02] * 40) == [0.02] * 40
    first = fn.last_plan
    assert first is not None and first.backend == "process"
    assert "probed" in first.reason or "head start" in first.reason, first.reason
    assert first.per_item is not None and first.per_item >= 0.015
    assert fn([0.02] * 6) == [0.02] * 6
    second = fn.last_plan
    assert second is not None and second.backend == "process"
    assert second.reason.startswith("no probe")
    # Nothing ran in the caller: the workers did all six items.
    assert sum(second.worker_seconds.values()) >= 6 * 0.015


def _chunks(sizer: ChunkSizer, total: int) -> list[int]:
    sizes, remaining = [], total
    while remaining:
        size = min(sizer.next(remaining), remaining)
        sizes.append(size)
        remaining -= size
    return sizes


def test_chunks_shrink_toward_the_end_but_stay_worth_a_round_trip() -> None:
    quick = _chunks(ChunkSizer(2, per_item=1e-6), 100_000)
    assert sum(quick) == 100_000
    assert quick[0] == 100_000 // 8  # a quarter of each worker's share
    assert quick == sorted(quick, reverse=True)
    floor = int(MIN_CHUNK_SECONDS / 1e-6)
    assert min(quick[:-1]) == floor  # the tail: never below MIN_CHUNK_SECONDS of work
    assert len(quick) < 40  # halving down to single items would take ~100

    heavy = _chunks(ChunkSizer(2, per_item=0.05), 40)
    assert heavy[-4:] == [1, 1, 1, 1]  # heavy items: the tail goes down to one item
    assert max(_chunks(ChunkSizer(2, per_item=1e-6), 100_000_000)) == int(CHUNK_SECONDS / 1e-6)


def test_moving_a_small_item_is_not_charged_a_whole_pickle_call() -> None:
    # Items travel in chunks: one pickle call for thousands of ints. Charging
    # each item a call of its own (~1-3 µs here) once sent 10^6 × 1 µs items
    # to the serial loop where a pool wins.
    moved = min(transfer_seconds(12345)[0] for _ in range(5))
    one_call = min(pickle_round_trip(12345)[0] for _ in range(5))
    assert moved < one_call
    big = min(transfer_seconds(bytes(10**5))[0] for _ in range(3))
    assert big >= 10**5 / PIPE_BYTES_PER_SECOND  # bytes are still charged in full


def test_a_pool_measured_beside_a_busy_caller_is_remembered_at_its_own_speed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from parloop import _cpu
    from parloop._stats import RunStats
    from parloop.backends.base import Outcome

    monkeypatch.setattr(_cpu, "cpu_count", lambda: 2)

    def measured(busy: float, cpu: float, beside: bool) -> float:
        stats = RunStats()
        stats.beside = beside
        outcome = Outcome(1, 0, [None] * 10, busy=busy, worker="pid 1")
        outcome.cpu = cpu
        stats.account(outcome)
        return stats.uncontended(busy / 10, workers=2)

    # 2 workers and the caller on 2 CPUs: items waited a third of the time for one.
    assert measured(0.9, 0.6, beside=True) == pytest.approx(0.06)
    # Never credited more than the caller's share could have cost them.
    assert measured(0.9, 0.45, beside=True) == pytest.approx(0.09 * 2 / 3)
    # A worker that mostly waited (sleeps, I/O) was not slowed by waiting for
    # a CPU: as measured (10 ms sleeps used to be remembered as 6.7 ms).
    assert measured(0.9, 0.09, beside=True) == pytest.approx(0.09)
    # Alone, what the workers measured stands: the wait was not the caller's doing.
    assert measured(0.9, 0.6, beside=False) == pytest.approx(0.09)
    # A worker that did not say its CPU time (0): as measured.
    assert measured(0.9, 0.0, beside=True) == pytest.approx(0.09)


def test_the_workers_slowdown_is_remembered_without_their_waits_beside_the_caller(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A first call whose pool started while the caller ran items: the
    # workers' items waited a third of their time for a CPU. The next call
    # projects workers at their own speed over the caller's (1.0 here), not
    # 1.5: a call of 1 ms items read 1.44-1.75 ms in a worker that way, and
    # one later call in a run of five went serial at 1.9x Pool.
    from parloop import _costs, _cpu
    from parloop._plan import Plan
    from parloop._stats import RunStats
    from parloop.backends.base import Outcome

    monkeypatch.setattr(_cpu, "cpu_count", lambda: 2)
    monkeypatch.setenv("PARLOOP_COST_CACHE", "off")

    def work(x: int) -> int:
        return x

    stats = RunStats()
    stats.beside, stats.probed, stats.caller_per_item = True, True, 1e-3
    outcome = Outcome(1, 0, [None] * 10, busy=0.015, worker="pid 1")
    outcome.cpu = 0.010
    stats.account(outcome)
    stats.per_item = 1.5e-3
    stats.finish(Plan("process", 2, 5), 10, work)
    history = _costs.recall(work)
    assert history["process"] == pytest.approx(1e-3)
    # No ratio of its own: the two sides' latest, 1.0, stand for it.
    assert "ratio" not in history
    assert Probe(100, never_asked, history=history).pool_item_cost(1e-3) == pytest.approx(1e-3)


def test_the_workers_slowdown_is_kept_from_items_run_side_by_side(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A proving flow: the workers' first items and the caller's, next to
    # them, at the same time. The probe's first items against all of the
    # workers' read 4-7x for blocks of primes (cost rising with the index),
    # and every later call of examples/numeric.py stayed serial.
    from parloop import _costs
    from parloop._plan import Plan
    from parloop._stats import RunStats

    monkeypatch.setenv("PARLOOP_COST_CACHE", "off")

    def work(x: int) -> int:
        return x

    stats = RunStats()
    stats.probed, stats.caller_per_item, stats.per_item = True, 1e-3, 6e-3
    stats.proven = (2.2e-3, 2e-3)
    stats.finish(Plan("process", 2, 5), 80, work)
    assert _costs.recall(work)["ratio"] == pytest.approx(1.1)
