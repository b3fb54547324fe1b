"""Readings taken in another state than the one the rest of the call runs in:
an item's time spent waiting for a CPU (another program's, or BLAS threads
spinning beside it), and a thread trial whose items ran much faster than the
probe's had (a warm-up, a busy spell that ended)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from helpers import FakeClock, spin_for
from test_auto_threads import warm_pool

from parloop import _native, parallel_for
from parloop._native import CpuWait, run_delay
from parloop._planner import Probe
from parloop._threads import MOST, WAITING, Trial, thread_count

# -- the CPU share of items that waited for a CPU ---------------------------------------------


def fake_delays(monkeypatch: pytest.MonkeyPatch, *readings: float) -> None:
    """``run_delay`` returns ``readings`` in turn (then the last one)."""
    seen = iter(readings)
    last = [readings[-1]]

    def delay() -> float:
        last[0] = next(seen, last[0])
        return last[0]
    monkeypatch.setattr(_native, "run_delay", delay)


def timed(probe: Probe, clock: FakeClock, count: int, seconds: float, own_cpu: float) -> None:
    for _ in range(count):
        clock.now += seconds
        probe.add(seconds, own_cpu, own_cpu)


def test_time_spent_waiting_for_a_cpu_is_not_time_spent_waiting(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Pure Python items of 1 ms that took 5 ms each: 4 ms of each runnable
    # but off a CPU. Read as 0.2 of a CPU, they "mostly wait", and a thread
    # pool for waiting items would get 2 / 0.2 = 10 threads.
    fake_delays(monkeypatch, 10.0, 10.0 + 8 * 4e-3)
    clock = FakeClock()
    probe = Probe(400, warm_pool, clock, threads=True)
    timed(probe, clock, 8, 5e-3, 1e-3)
    assert probe.cpu_share() == pytest.approx(1.0)
    assert thread_count(2, probe.cpu_share(), 392) == 2


def test_items_that_sleep_still_read_as_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_delays(monkeypatch, 10.0, 10.0 + 1e-4)  # no CPU was short: the 4 ms are sleeps
    clock = FakeClock()
    probe = Probe(400, warm_pool, clock, threads=True)
    timed(probe, clock, 8, 5e-3, 1e-3)
    assert probe.cpu_share() == pytest.approx(0.2, rel=0.01)
    assert probe.cpu_share() < WAITING
    assert thread_count(2, probe.cpu_share(), 392) == 10


def test_without_schedstat_the_share_is_as_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_native, "run_delay", lambda: None)
    clock = FakeClock()
    probe = Probe(400, warm_pool, clock, threads=True)
    timed(probe, clock, 8, 5e-3, 1e-3)
    assert probe.cpu_share() == pytest.approx(0.2, rel=0.01)


@pytest.mark.timeout(60)
@pytest.mark.skipif(run_delay() is None, reason="no per-thread schedstat here")
def test_the_wait_is_read_from_the_kernel_under_real_cpu_hogs() -> None:
    # Real processes keep every CPU busy and one more: this thread's busy
    # loop waits for a CPU a good part of the time; its sleeps do not.
    import os

    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range((os.cpu_count() or 1) + 1)]
    try:
        time.sleep(0.3)
        busy = CpuWait()
        spin_for(0.2, 0)
        busy_share = busy.share(1)
        asleep = CpuWait()
        for _ in range(20):
            time.sleep(0.01)
        asleep_share = asleep.share(1)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    assert busy_share > 0.1, busy_share  # ~0.5 here: three busy programs for two CPUs
    assert asleep_share < 0.1, asleep_share
    assert busy.share(1) == busy_share  # read once per key


def test_the_delay_is_read_per_thread_and_after_a_fork() -> None:
    import os
    import threading

    if run_delay() is None:
        pytest.skip("no per-thread schedstat here")
    seen: list[float | None] = []
    threads = [threading.Thread(target=lambda: seen.append(run_delay())) for _ in range(20)]
    for thread in threads:
        thread.start()
        thread.join()
    assert all(delay is not None for delay in seen)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child's own thread, not its parent's (the file it inherited)
        os.write(write, b"ok" if run_delay() is not None else b"no")
        os._exit(0)
    os.waitpid(child, 0)
    assert os.read(read, 2) == b"ok"
    os.close(read)
    os.close(write)


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
