"""Readings taken in another state than the one the rest of the call runs in:
an item's time spent waiting for a CPU (another program's, or BLAS threads
spinning beside it), and a thread trial whose items ran much faster than the
probe's had (a warm-up, a busy spell that ended)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from helpers import FakeClock, spin_for
from test_auto_threads import warm_pool

from parloop import parallel_for
from parloop._planner import THREADS_GAIN, Probe
from parloop._threads import MOST, ONE_CPU, WAITING
from parloop._trial import Trial

# -- items that waited for a CPU, not for I/O -------------------------------------------------


def timed(probe: Probe, clock: FakeClock, count: int, seconds: float, own_cpu: float) -> None:
    for _ in range(count):
        clock.now += seconds
        probe.add(seconds, own_cpu, own_cpu)


def starved_probe(share: float = 0.2) -> tuple[Probe, FakeClock]:
    """A probe of 8 items of 5 ms that used ``share`` of a CPU each: read
    alone, they mostly wait (sleeps, I/O) or waited for a CPU."""
    clock = FakeClock()
    probe = Probe(400, warm_pool, clock, threads=True)
    timed(probe, clock, 8, 5e-3, 5e-3 * share)
    return probe, clock


def test_a_trial_that_kept_a_cpu_busy_is_of_cpu_bound_items() -> None:
    # Pure Python items beside busy threads: 0.2 of a CPU each in the probe.
    # On two threads they ran 1.6x the probe's rate, but kept one CPU busy
    # between them: the GIL's turns, not a gain (the CPU time bounds it).
    probe, _ = starved_probe()
    assert probe.cpu_share() < WAITING
    items, wall = 16, 16 * 5e-3 / 1.6
    probe.note_trial(Trial([(None, None)] * items, wall, wall, thread_cpu=wall))
    assert probe.trial_busy == pytest.approx(1.0)
    assert probe.trial_speedup == pytest.approx(1.0)
    verdict = probe.verdict(8 + items)
    assert verdict.backend == "process", verdict.reason


def test_a_trial_of_items_that_wait_still_reads_their_gain() -> None:
    # 10 ms sleeps: a tenth of a CPU in the probe and in the trial alike.
    probe, _ = starved_probe(0.1)
    items, wall = 16, 16 * 5e-3 / 1.9
    probe.note_trial(Trial([(None, None)] * items, wall, wall * 0.1, thread_cpu=wall * 0.1))
    assert probe.trial_speedup == pytest.approx(1.9)
    verdict = probe.verdict(8 + items)
    assert verdict.backend == "thread" and verdict.workers is not None
    assert verdict.workers > 2, verdict.reason  # more threads than CPUs for waiting items
    # The same on two threads that also waited for a CPU most of the time:
    # starved, they wanted one between them (as the GIL's turns do, 1.07-1.25
    # measured), and the items are CPU-bound after all.
    starved, _ = starved_probe()
    starved.note_trial(Trial([(None, None)] * items, wall, wall * 0.2, thread_cpu=wall * 0.2,
                             waited=wall * 0.9))
    assert starved.trial_busy == pytest.approx(1.1)
    assert starved.trial_speedup is not None and starved.trial_speedup < THREADS_GAIN
    assert starved.verdict(8 + items).backend == "process"
    # Sleeps beside two busy processes: each wake-up waited for a CPU, 0.6
    # of one between the two threads; they still mostly wait.
    slept, _ = starved_probe(0.01)
    slept.note_trial(Trial([(None, None)] * items, wall, wall * 0.01, thread_cpu=wall * 0.01,
                           waited=wall * 0.6))
    assert slept.trial_busy < ONE_CPU and slept.trial_speedup == pytest.approx(1.9)
    assert slept.verdict(8 + items).backend == "thread"


# -- a trial that ran faster than two threads can ------------------------------------------


def test_a_trial_faster_than_two_threads_can_is_no_reading() -> None:
    # The probe timed 3 items of 20 ms (a warm-up); the trial then ran 16 in
    # 20 ms: 16x the probe's rate, which only stale numbers can show.
    clock = FakeClock()
    probe = Probe(200, warm_pool, clock, threads=True)
    timed(probe, clock, 3, 20e-3, 20e-3)
    probe.note_trial(Trial([(None, None)] * 16, 20e-3, 20e-3, 20e-3))
    assert probe.trial_speedup is None and probe.stale == [pytest.approx(16.0)]
    probe.rebase()
    assert probe.times == [] and probe.cpu == []
    timed(probe, clock, 3, 1e-3, 1e-3)
    assert probe.per_item() == pytest.approx(1e-3, rel=0.01)
    # A reading within what two threads can do is a reading.
    probe.note_trial(Trial([(None, None)] * 16, 9e-3, 9e-3, 9e-3))
    assert probe.trial_speedup is not None and probe.trial_speedup <= MOST
    reason = str(probe.verdict(38).reason)
    assert reason.startswith("probed 38 items of ~1 ms (timed again after a thread trial ran "
                             "16.0x the first items per second, more than two threads can)"), reason


def test_a_second_reading_over_two_threads_is_read_as_two_threads() -> None:
    # 10 ms sleeps beside two busy processes: the probe's item took 17 ms (its
    # wake-up waited for a CPU), the trial's two ran in 10.2 ms: 3.3x. Timed
    # again, 14 ms, and the next trial 2.7x. Not stale numbers this time:
    # two at once ran as fast as two threads can, and threads are chosen.
    clock = FakeClock()
    probe = Probe(40, warm_pool, clock, threads=True)
    timed(probe, clock, 1, 17e-3, 0.02e-3)
    probe.note_trial(Trial([(None, None)] * 2, 10.2e-3, 0.05e-3, 0.05e-3))
    assert probe.trial_speedup is None and len(probe.stale) == 1
    probe.rebase()
    timed(probe, clock, 1, 14e-3, 0.02e-3)
    probe.note_trial(Trial([(None, None)] * 2, 10.3e-3, 0.05e-3, 0.05e-3))
    assert probe.trial_speedup == 2.0 and len(probe.stale) == 1
    verdict = probe.verdict(6)
    assert verdict.backend == "thread" and verdict.workers is not None and verdict.workers > 2
    assert "timed again after a thread trial ran 3.3x" in str(verdict.reason), verdict.reason


_calls: list[int] = []


def _warms_up(item: int) -> int:
    """Pure Python: its first call in a process takes 15 ms (a warm-up:
    imports, caches), later ones 0.5 ms."""
    _calls.append(item)
    spin_for(15e-3 if len(_calls) == 1 else 0.5e-3, 0)
    return item


@pytest.fixture
def fresh_calls() -> Iterator[None]:
    _calls.clear()
    yield
    _calls.clear()


@pytest.mark.timeout(60)
def test_a_warm_up_in_the_probe_is_probed_again_not_projected(fresh_calls: None) -> None:
    # Real threads and items: the probe sees one item of 15 ms (heavy
    # enough to go by), the trial's items run at 0.5 ms. Projected at 15
    # ms, the rest looked like ~1 s of work and went to processes; probed
    # again, it is ~30 ms.
    fn = parallel_for(_warms_up)
    assert fn(list(range(64))) == list(range(64))
    plan = fn.last_plan
    assert plan is not None
    assert "timed again after a thread trial ran" in plan.reason, plan.reason
    found = re.search(r"probed \d+ items of ~([\d.]+) (µs|ms|s)\b", plan.reason)
    assert found is not None, plan.reason
    number, unit = found.groups()
    assert float(number) * {"µs": 1e-6, "ms": 1e-3, "s": 1.0}[unit] < 5e-3, plan.reason  # ~0.5 ms
