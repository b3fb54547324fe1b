"""backend="auto" chooses among serial, threads and processes, from what it
measures on the side that pays: threads when the items run in parallel on
two threads at once (they release the GIL), a worker's cost from the
workers' own reports, and a retreat to the caller when the workers turn
out slower. Synthetic costs first (a fake clock), then real runs."""

from __future__ import annotations

import functools
import os
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import FakeClock, spin_for

from parloop import _costs, _native, _role, parallel_for
from parloop._costs import PoolCost
from parloop._flow import RETREAT
from parloop._input import Input
from parloop._known import from_history
from parloop._native import run_delay
from parloop._planner import THREADS_GAIN, Probe
from parloop._projections import MARGIN
from parloop._threads import (
    MAX_THREADS,
    RUN_ON,
    parallel_share,
    projected_speedup,
    runs_on,
    thread_count,
)
from parloop._trial import LOSING, Trial, run_trial

# -- synthetic -------------------------------------------------------------------------------


def warm_pool() -> PoolCost:
    return PoolCost(2, 0.0, "")


def probed(cost: float, total: int, *, cpu_share: float = 1.0, threads: bool = True,
           history: dict[str, float] | None = None, seen: int = 3) -> Probe:
    """A probe that has timed ``seen`` items of ``cost`` seconds, each using
    ``cpu_share`` CPUs (2: BLAS threads; 0.05: it mostly waits)."""
    clock = FakeClock()
    probe = Probe(total, warm_pool, clock, threads=threads, history=history)
    for _ in range(seen):
        clock.now += cost
        probe.times.append(cost)
        probe.cpu.append(cost * cpu_share)
    return probe


def trial(probe: Probe, speedup: float, items: int = 4) -> None:
    """Tell ``probe`` that ``items`` items on two threads ran ``speedup``x as fast."""
    wall = items * probe.per_item() / speedup
    probe.note_trial(Trial([(None, None)] * items, wall, wall))


def test_amdahl() -> None:
    assert parallel_share(1.0) == 0.0 and parallel_share(2.0) == 1.0
    assert projected_speedup(2.0, 8) == pytest.approx(8.0)
    assert projected_speedup(1.0, 8) == pytest.approx(1.0)
    assert projected_speedup(1.5, 2) == pytest.approx(1.5)
    assert projected_speedup(1.5, 4) == pytest.approx(2.0)  # e = 2/3: at most 3x, ever


def _marks(durations: list[float], cpu_share: float = 1.0) -> list[tuple[float, float]]:
    """A thread's (clock, CPU clock) marks for items of ``durations`` run back to back."""
    marks, now = [(0.0, 0.0)], 0.0
    for seconds in durations:
        now += seconds
        marks.append((now, now * cpu_share))
    return marks


def test_a_threads_warm_up_does_not_count_against_threads() -> None:
    # The NumPy case: 0.7 ms items, the helper's first three slow while
    # OpenBLAS faults in its buffers, the caller's first slowed to 7 ms.
    helper = _marks([2.8e-3, 1.8e-3, 1.5e-3] + [0.7e-3] * 7)
    caller = _marks([7.0e-3] + [0.7e-3] * 9)
    items = [(None, None)] * 20
    wall = max(helper[-1][0], caller[-1][0])
    warming = Trial(items, wall, 2 * wall, 2 * wall, [caller, helper])
    assert warming.speedup(0.7e-3) == pytest.approx(2.0, rel=0.1)
    # What the whole trial's wall time said (the GIL seemed held):
    assert Trial(items, wall, 2 * wall, 2 * wall).speedup(0.7e-3) < THREADS_GAIN
    # Items that hold the GIL take twice as long on each of two threads,
    # with half a CPU each: no gain, steady or not.
    held = Trial(items, 14e-3, 14e-3, 14e-3, [_marks([1.4e-3] * 10, 0.5)] * 2)
    assert held.speedup(0.7e-3) == pytest.approx(1.0, rel=0.15)
    # ... or in turns, a switch interval each: one thread's burst of items
    # at full speed while the other waits is not two threads at once.
    first = _marks([0.1e-3] * 50 + [5e-3] + [0.1e-3] * 50)  # 5 ms, a wait, 5 ms
    second = [(0.0, 0.0), *((5e-3 + 0.1e-3 * n, 0.1e-3 * n) for n in range(1, 51))]
    turns = Trial([(None, None)] * 150, 15e-3, 15e-3, 15e-3, [first, second])
    assert turns.speedup(0.1e-3) == pytest.approx(1.0, rel=0.15)
    # One item per thread leaves no steady part: the whole trial decides.
    short = Trial(items[:2], 0.7e-3, 1.4e-3, 1.4e-3, [_marks([0.7e-3])] * 2)
    assert short.steady() is None and short.speedup(0.7e-3) == pytest.approx(2.0)


def test_a_warm_up_that_spoils_the_whole_trial_is_seen() -> None:
    # A new thread's first NumPy product took ~8.7 ms of CPU where the rest
    # took ~0.8 ms: by then the caller had finished its half, so no part of
    # the trial had both threads warm, and the whole trial read 0.7x.
    helper = _marks([8.7e-3] + [0.8e-3] * 8)
    caller = _marks([1.1e-3, 1.5e-3, 2.0e-3] + [0.9e-3] * 6)
    spoilt = Trial([(None, None)] * 18, helper[-1][0], 0.0, 0.0, [caller, helper])
    assert spoilt.steady() is None and spoilt.speedup(0.8e-3) < THREADS_GAIN
    assert spoilt.warmed_up()  # so the probe runs a second round, on the warm thread
    even = Trial([(None, None)] * 18, 8e-3, 0.0, 0.0, [_marks([0.8e-3] * 9)] * 2)
    assert not even.warmed_up()


def test_a_trial_shares_its_items_so_a_late_helper_costs_no_wait() -> None:
    # Real threads. The helper first loads what the pool would need (here it
    # waits until the caller has run 8 items); the caller meanwhile runs the
    # items the helper would have had, instead of waiting for it at the end.
    # Results stay in input order.
    caller_ran = threading.Semaphore(0)
    loaded: list[str] = []

    def ready() -> None:
        loaded.append(threading.current_thread().name)
        for _ in range(8):
            assert caller_ran.acquire(timeout=10)

    def item(x: int) -> tuple[int, str]:
        time.sleep(0.001)
        if threading.current_thread() is threading.main_thread():
            caller_ran.release()
        return x * x, threading.current_thread().name

    result = run_trial(item, list(range(10)), ready=ready)
    assert [value for (value, _), _exc in result.results] == [x * x for x in range(10)]
    runners = [name for (_, name), _exc in result.results]
    assert loaded and loaded[0] != threading.current_thread().name
    assert runners.count(threading.current_thread().name) >= 8
    assert result.lead > 0  # the caller's lone start, left out of the trial's reading


@pytest.mark.timeout(60)
@pytest.mark.parametrize("late", ["after every item", "most of an item"])
def test_a_trial_whose_helper_started_late_is_run_again(monkeypatch: pytest.MonkeyPatch,
                                                        late: str) -> None:
    # Real threads and sleeps. The first trial's helper is held back until
    # the caller has run every item of it, or for 7 ms of its 10 ms item (as
    # a thread start on a loaded host can be): that trial reads one thread's
    # speed, ~1x, or one thread's and then the other's tail (0.82x in a CI
    # run), which sent a call of 10 ms sleeps to processes ("the GIL is held",
    # "they compete"). It shows little about two threads: a second trial
    # runs, and the call goes to threads.
    from parloop import _serial

    trials: list[int] = []
    real = _serial.run_trial

    def first_one_sided(call: Any, items: list[Any], **kwargs: Any) -> Any:
        trials.append(len(items))
        if len(trials) > 1:
            return real(call, items, **kwargs)
        kwargs.pop("per_item", None)  # no early stop: the caller runs every item
        done = threading.Event()

        def counted(item: Any) -> Any:
            result = call(item)
            if threading.current_thread() is threading.main_thread() and item is items[-1]:
                done.set()
            return result
        if late == "most of an item":
            return real(call, items, ready=lambda: time.sleep(0.007), **kwargs)
        return real(counted, items, ready=lambda: done.wait(10), **kwargs)

    monkeypatch.setattr(_serial, "run_trial", first_one_sided)
    monkeypatch.setenv("PARLOOP_COST_CACHE", "off")

    def nap(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    fn = parallel_for(nap)
    assert fn([0.01] * 60) == [0.01] * 60
    plan = fn.last_plan
    assert plan is not None
    assert len(trials) == 2, (trials, plan.reason)
    assert plan.backend == "thread", plan.reason


def test_a_run_in_blocks_runs_every_item_once_in_order_with_its_error_in_place() -> None:
    def item(x: int) -> int:
        if x == 37:
            raise ValueError("37")
        time.sleep(0.0001)
        return x * x

    result = run_trial(item, list(range(100)), block=16)
    assert len(result.results) == 100
    assert isinstance(result.results[37][1], ValueError)
    assert [value for k, (value, _exc) in enumerate(result.results) if k != 37] == \
        [x * x for x in range(100) if x != 37]


def test_an_interrupted_trial_stops_the_helper_too() -> None:
    # KeyboardInterrupt in the caller's item: the helper takes no further
    # item (it used to run its whole half), and the interrupt reaches the caller.
    ran: list[int] = []
    mine = [0]

    def item(x: int) -> int:
        if threading.current_thread() is threading.main_thread():
            mine[0] += 1
            if mine[0] == 2:
                raise KeyboardInterrupt
        time.sleep(0.003)
        ran.append(x)
        return x

    with pytest.raises(KeyboardInterrupt):
        run_trial(item, list(range(40)))
    assert len(ran) < 10


class _Contended:
    """Items that slow each other down: ``seconds`` times the cube of how
    many run at once, up to 2 (two at once: each 8x slower, so 0.25x the throughput),
    as a native library serialising its callers behind a spinning lock does;
    well below LOSING even where a loaded machine's late wake-ups blur it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.active = 0
        self.lock = threading.Lock()
        self.ran: list[tuple[int, str]] = []

    def __call__(self, x: int) -> int:
        with self.lock:
            self.active += 1
            running = self.active
        time.sleep(self.seconds * min(running, 2) ** 3)
        with self.lock:
            self.active -= 1
        self.ran.append((os.getpid(), threading.current_thread().name))
        return x * 2


def test_a_losing_trial_stops_early_and_keeps_the_items_it_ran() -> None:
    # Real threads. 40 items at ~0.25x on two threads would cost 160 ms where
    # one thread takes 40 ms; the trial stops after its first few instead.
    item = _Contended(0.001)
    result = run_trial(item, list(range(40)), per_item=0.001)
    ran = len(result.results)
    assert 4 <= ran <= 20, ran  # 6 on a quiet machine
    assert [value for value, _exc in result.results] == [2 * x for x in range(ran)]
    assert result.cut is not None and result.cut < LOSING
    assert result.speedup(0.001) == result.cut


def test_a_trial_without_a_cost_per_item_runs_every_item() -> None:
    item = _Contended(0.0005)
    assert len(run_trial(item, list(range(16))).results) == 16


_CONTENDED = _Contended(0.0005)


def _contended_nap(x: int) -> int:
    """``_Contended`` at module level (pickled by reference)."""
    return _CONTENDED(x)


@pytest.mark.timeout(60)
def test_a_function_slower_on_two_threads_costs_a_few_items_not_a_whole_trial() -> None:
    # End to end: the trial for 0.5 ms items is 24 items (12 on the helper);
    # stopped early, the helper runs a few, the rest go back to the input,
    # and every result is in order.
    _CONTENDED.ran.clear()
    fn = parallel_for(_contended_nap)
    assert fn(list(range(120))) == [2 * x for x in range(120)]
    plan = fn.last_plan
    assert plan is not None
    if not re.search(r"items ran 0\.\d\dx as fast as on one", plan.reason):
        # Late wake-ups on a loaded machine (~4 ms each) hide the 4 ms of contention.
        pytest.skip(f"the machine's load blurred the contention: {plan.reason}")
    assert plan.backend != "thread", plan.reason
    here = os.getpid()
    helper = [name for pid, name in _CONTENDED.ran if pid == here and name != "MainThread"]
    assert 1 <= len(helper) <= 6, plan.reason


class _BreaksAt:
    """A sized input whose iterator raises after ``good`` items."""

    def __init__(self, size: int, good: int) -> None:
        self.size, self.good = size, good

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        yield from range(self.good)
        raise OSError("the input broke here")


@pytest.mark.timeout(60)
def test_an_input_that_raises_inside_a_losing_trial_still_raises_after_its_items() -> None:
    # The trial's items are read at once; the input raises right after them.
    # A trial that stops early gives its unrun items back, but the error must
    # not be lost with them: every item before it runs, then it is raised.
    _CONTENDED.ran.clear()
    fn = parallel_for(_contended_nap)
    with pytest.raises(OSError, match="the input broke here"):
        fn(_BreaksAt(120, 20))
    assert len(_CONTENDED.ran) == 20


def test_items_given_back_to_a_list_are_read_on_in_one_pass() -> None:
    # A trial stopped early gives its untaken items back; a list's rest is
    # then still read as a slice (in_sequence), not item by item.
    source = Input(list(range(10)))
    taken, _ = source.take(6)
    source.give_back(taken[2:])
    assert source.index == 2 and source.in_sequence()
    assert source.take(3)[0] == [2, 3, 4]
    lazy = Input(iter(range(10)))
    taken, _ = lazy.take(6)
    lazy.give_back(taken[2:])
    assert lazy.index == 2 and lazy.take(10)[0] == list(range(2, 10))


@pytest.mark.timeout(60)
def test_a_second_trial_round_runs_after_a_spoilt_one() -> None:
    # Real threads: each new thread's first item sleeps 30 ms, later ones
    # 2 ms; the helper thread of the first round is warm for the second.
    warmed: set[int] = set()

    def item(_: int) -> int:
        ident = threading.get_ident()
        time.sleep(0.002 if ident in warmed or ident == threading.main_thread().ident
                   else 0.03)
        warmed.add(ident)
        return ident

    fn = parallel_for(item)
    fn(range(200))
    plan = fn.last_plan
    assert plan is not None and plan.backend == "thread", plan.reason


def test_a_sleeping_item_is_not_cpu_bound_because_blas_threads_spin_meanwhile() -> None:
    # 5 ms sleeps, while idle OpenBLAS threads spin after earlier NumPy work:
    # the process used a CPU, the calling thread almost none.
    probe = probed(5e-3, 64, cpu_share=1.0)
    probe.thread_cpu = [1e-5] * len(probe.times)
    assert probe.cpu_share() < 0.01


def test_thread_counts() -> None:
    assert thread_count(2, 1.0, 1000) == 2  # CPU-bound: one per CPU
    assert thread_count(2, 0.0, 1000) == MAX_THREADS  # it only waits
    assert thread_count(2, 0.25, 1000) == 8  # keeps a quarter of a CPU busy: 4 per CPU
    assert thread_count(4, 0.01, 10) == 10  # never more threads than items


def test_a_short_rest_runs_on_the_trials_two_threads_only_when_a_pool_would_have_two() -> None:
    assert runs_on(2, 40, 0.5e-3)  # 20 ms of work: no thread pool's hand-over
    assert runs_on(2, 1, RUN_ON)
    assert not runs_on(2, 1000, 0.5e-3)  # 0.5 s: the pool, which streams its results
    assert not runs_on(4, 40, 0.5e-3)  # a pool of four threads does more than the trial's two
    assert not runs_on(32, 40, 0.5e-3)  # items that mostly wait get many threads
    assert not runs_on(2, None, 0.5e-3)  # a rest of unknown length
    assert not runs_on(2, 0, 0.5e-3)


def _digest_where(blob: bytes) -> tuple[str, str]:
    import hashlib

    return hashlib.sha256(blob).hexdigest(), threading.current_thread().name


def _digest_or_fail(blob: bytes) -> tuple[str, str]:
    if blob[0] == 7:
        raise ValueError("item 7")
    return _digest_where(blob)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("first_call", [True, False])
def test_a_short_rest_bound_for_two_threads_runs_on_the_caller_and_one_helper(
        first_call: bool) -> None:
    # A function that releases the GIL, 1 MB sha256s (~0.5 ms each): the
    # rest of the call goes to two threads (workers=2), and is short, so the
    # caller and one helper thread run it, as in the trial, with no pool.
    # The history makes threads the choice whatever the machine's load;
    # with first_call, a trial measured it (and on a busy machine may not
    # choose threads: then nothing is asserted of where items ran).
    import hashlib

    blobs = [bytes([i]) * 2**20 for i in range(40)]
    if not first_call:
        for value, side in ((0.5e-3, "serial"), (1.9, "trial"), (1.0, "share")):
            _costs.remember(_digest_where, value, side)
    fn = parallel_for(_digest_where, workers=2)
    results = fn(blobs)
    assert [digest for digest, _ in results] == [hashlib.sha256(b).hexdigest() for b in blobs]
    plan = fn.last_plan
    assert plan is not None
    if first_call and plan.backend != "thread":
        return
    assert plan.backend == "thread" and plan.workers == 2, plan.reason
    assert "ran on the caller and one helper thread" in plan.reason, plan.reason
    threads = {name for _, name in results}
    assert threading.current_thread().name in threads and len(threads) <= 2, threads
    if not first_call:
        assert "no probe" in plan.reason, plan.reason


@pytest.mark.timeout(60)
def test_an_item_that_raises_on_the_run_on_keeps_every_other_result() -> None:
    for value, side in ((0.5e-3, "serial"), (1.9, "trial"), (1.0, "share")):
        _costs.remember(_digest_or_fail, value, side)
    fn = parallel_for(_digest_or_fail, workers=2, errors="return")
    results = fn([bytes([i]) * 2**20 for i in range(40)])
    plan = fn.last_plan
    assert plan is not None and "ran on the caller and one helper" in plan.reason, plan.reason
    assert isinstance(results[7], ValueError)
    assert all(isinstance(r, tuple) for k, r in enumerate(results) if k != 7)
    fn = parallel_for(_digest_or_fail, workers=2)  # errors="raise": the error, in order
    with pytest.raises(ValueError, match="item 7"):
        fn([bytes([i]) * 2**20 for i in range(40)])


def test_a_function_that_releases_the_gil_goes_to_threads() -> None:
    probe = probed(1e-3, 200)
    assert probe.trial_size(3) > 0  # worth a trial: threads are allowed and unknown
    trial(probe, 1.9)
    verdict = probe.verdict(3 + 4)
    assert verdict.backend == "thread" and verdict.workers == 2
    assert "releases the GIL (2 threads: 1.90x)" in str(verdict.reason)


def test_a_function_that_holds_the_gil_does_not() -> None:
    probe = probed(1e-3, 200)
    trial(probe, 1.02)
    verdict = probe.verdict(7)
    assert verdict.backend == "process" and verdict.serial_more == 0
    assert "the GIL is held" in str(verdict.reason)


def test_items_that_wait_get_more_threads_than_cpus() -> None:
    probe = probed(10e-3, 64, cpu_share=0.02)
    trial(probe, 1.95)
    verdict = probe.verdict(7)
    assert verdict.backend == "thread" and verdict.workers == min(MAX_THREADS, 64 - 7)


def test_long_cpu_bound_items_are_tried_on_threads_only_when_it_can_pay() -> None:
    # 8 items of 50 ms that keep a CPU busy: a trial that found the GIL held
    # would cost a whole item, where threads could save only the pool's start.
    assert probed(0.05, 8, seen=1).trial_size(1) == 0
    # Items that mostly wait are tried: threads may beat two workers many times.
    assert probed(0.05, 8, cpu_share=0.05, seen=1).trial_size(1) > 0
    # Shorter items are tried as before...
    assert probed(5e-3, 64, seen=1).trial_size(1) > 0
    # ... unless they are few: a trial of 2 of 5 items of 16 ms left would
    # run at one thread's pace for the GIL-holding Python that most code is,
    # where a pool runs the rest in 3 rounds: the pool, at once.
    few = probed(0.016, 6, seen=1)
    assert few.trial_size(1) == 0
    assert few.verdict(1).serial_more == 0 and few.verdict(1).backend == "process"
    assert probed(0.016, 6, cpu_share=0.05, seen=1).trial_size(1) > 0  # waiting items: tried
    # The next call knows the items are long and CPU-bound and cheap to move: no probe.
    history = {"serial": 0.05, "process": 0.05, "share": 1.0, "transfer": 1e-6}
    verdict = from_history(8, history, warm_pool, threads=True)
    assert verdict is not None and verdict.backend == "process"
    assert from_history(8, {**history, "share": 0.05}, warm_pool, threads=True) is None
    # ... but a call with many items that are costly to move may still gain
    # from threads (64 x zlib of 1 MB, after a warm-up of 8): probe.
    costly = {**history, "transfer": 2e-3}
    assert from_history(8, costly, warm_pool, threads=True) is not None
    assert from_history(64, costly, warm_pool, threads=True) is None


def test_thread_safe_false_never_tries_threads() -> None:
    probe = probed(1e-3, 200, threads=False)
    assert probe.trial_size(3) == 0
    assert probe.verdict(3).backend == "process"


def test_no_trial_when_the_history_knows_the_answer() -> None:
    assert probed(1e-3, 200, history={"trial": 1.0}).trial_size(3) == 0


def test_items_that_already_use_every_core_are_not_split_further(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # 64 items of 1 ms, each keeping both CPUs busy (BLAS): in a worker capped
    # at one BLAS thread each takes ~2 ms, so 2 workers gain nothing. (CPU
    # time counts only when a library with native thread pools is loaded:
    # pytest stands in for one here.)
    monkeypatch.setattr(_native, "MODULES", ("pytest",))
    busy = probed(1e-3, 64, cpu_share=2.0, threads=False)
    assert busy.cores_used() == 2.0 and busy.pool_item_cost(1e-3) == pytest.approx(2e-3)
    assert busy.verdict(3).serial_more is None
    # Nor are they tried on two threads at once: they would only compete.
    both = probed(1e-3, 64, cpu_share=2.0)
    assert both.trial_size(3) == 0
    assert "not tried on threads: each item kept 2.0 CPUs busy" in str(both.verdict(3).reason)
    assert probed(1e-3, 64, cpu_share=1.0).trial_size(3) > 0
    # The same items on one CPU each: the pool wins.
    assert probed(1e-3, 64, threads=False).verdict(3).serial_more == 0
    # Without such a library, CPU time of other threads is not the item's.
    monkeypatch.setattr(_native, "MODULES", ("no such module",))
    assert probed(1e-3, 64, cpu_share=2.0, threads=False).cores_used() == 1.0


def test_what_workers_measured_is_the_pools_cost() -> None:
    # The caller measured 1 ms, the workers 7 ms (the warm-pool NumPy case):
    # neither from_history nor the probe sends the next call to the pool.
    history = {"serial": 1e-3, "process": 7e-3, "ratio": 7.0}
    assert from_history(64, history, warm_pool) is None
    probe = probed(1e-3, 64, threads=False, history=history)
    assert probe.pool_item_cost(1e-3) == pytest.approx(7e-3)
    # Only as a ratio: items of another size take another time.
    assert probe.pool_item_cost(2e-3) == pytest.approx(14e-3)
    assert probe.verdict(3).serial_more is None
    # Heavy work the workers ran as fast as the caller skips the probe.
    verdict = from_history(40, {"serial": 0.05, "process": 0.05}, warm_pool)
    assert verdict is not None and verdict.serial_more == 0
    # A function whose trial showed threads win, but whose cost in the caller
    # is not known, is probed again, and so is one never tried on threads.
    assert from_history(40, {"process": 0.05, "trial": 1.9}, warm_pool, threads=True) is None
    assert from_history(40, {"process": 0.05}, warm_pool, threads=True) is None
    verdict = from_history(40, {"process": 0.05, "trial": 1.0}, warm_pool, threads=True)
    assert verdict is not None and verdict.serial_more == 0
    # Items long enough that the first call sent them to a pool without a
    # thread trial (a head start) go to the pool at once on the next call:
    # probing one again alone would cost up to its whole time (2 x 1 s ran 2.1 s).
    verdict = from_history(2, {"serial": 1.0, "process": 1.0}, warm_pool, threads=True)
    assert verdict is not None and verdict.serial_more == 0
    # Unless threads were seen to win: then they run at once (below).
    verdict = from_history(2, {"serial": 1.0, "process": 1.0, "trial": 1.9, "share": 1.0},
                           warm_pool, threads=True)
    assert verdict is not None and verdict.backend == "thread"


def test_workers_measured_by_an_explicit_process_call_count_too() -> None:
    # backend="process" measures only the workers (1.5 ms an item, BLAS
    # capped at one thread); the caller's 0.7 ms came from another call.
    # With no ratio measured within one call, the two sides' latest give it:
    # a pool moving items for free would still lose to serial.
    history = {"serial": 0.7e-3, "process": 1.5e-3}
    probe = probed(0.7e-3, 64, threads=False, history=history)
    assert probe.pool_item_cost(0.7e-3) == pytest.approx(1.5e-3)
    assert probe.verdict(3).serial_more is None
    # Without that history the same numbers go to the warm pool.
    assert probed(0.7e-3, 64, threads=False).verdict(3).serial_more == 0
    # Not when the caller's latest items were of another size: 50 ms items
    # now, after a call of 0.7 ms ones, say nothing of a worker's speed.
    assert probed(0.05, 64, threads=False, history=history).pool_item_cost(0.05) == 0.05
    # A ratio measured within one call is the better number, and is kept.
    history["ratio"] = 1.1
    probe = probed(0.7e-3, 64, threads=False, history=history)
    assert probe.pool_item_cost(0.7e-3) == pytest.approx(0.77e-3)


class _CountsPickling:
    pickled = 0

    def __reduce__(self) -> tuple[Any, ...]:
        _CountsPickling.pickled += 1
        return _CountsPickling, ()


def test_the_transfer_is_not_measured_when_a_pool_loses_even_moving_items_free() -> None:
    # 50 ms of work left, and a pool that takes ~0.3 s to start (a fork
    # server, with BLAS threads in the caller): serial, without pickling.
    _CountsPickling.pickled = 0
    clock = FakeClock()
    probe = Probe(64, lambda: PoolCost(2, 0.29, "", overlap=True), clock)
    probe.moved.keep(_CountsPickling(), _CountsPickling())
    for _ in range(14):
        clock.now += 1e-3
        probe.times.append(1e-3)
        probe.cpu.append(1e-3)
    assert probe.done(14)
    verdict = probe.verdict(14)
    assert verdict.serial_more is None
    assert "before moving any item" in str(verdict.reason)
    assert _CountsPickling.pickled == 0
    # With a warm pool the same call may pay: the transfer is measured.
    probe = Probe(640, warm_pool, clock)
    probe.moved.keep(_CountsPickling(), _CountsPickling())
    for _ in range(14):
        probe.times.append(1e-3)
        probe.cpu.append(1e-3)
    probe.verdict(14)
    assert _CountsPickling.pickled > 0


def test_a_kept_trial_sends_the_next_call_to_threads_without_a_probe() -> None:
    # sha256 of 1 MB: 1.3 ms in the caller, 1.8x on two threads.
    history = {"serial": 1.3e-3, "trial": 1.8, "share": 1.0}
    verdict = from_history(64, history, warm_pool, threads=True)
    assert verdict is not None and verdict.serial_more == 0
    assert verdict.backend == "thread" and verdict.workers == 2
    assert "no probe" in str(verdict.reason) and "2 threads" in str(verdict.reason)
    # Items that mostly wait get a thread each, up to MAX_THREADS.
    verdict = from_history(64, {**history, "share": 0.01}, warm_pool, threads=True)
    assert verdict is not None and verdict.workers == MAX_THREADS
    # Not when threads are not allowed (thread_safe=False), nor for a gain
    # too small to be clear, nor for a call too small for any pool: probe.
    assert from_history(64, history, warm_pool) is None
    assert from_history(64, {**history, "trial": 1.2}, warm_pool, threads=True) is None
    # Nor without the items' CPU share (how many threads): probe.
    assert from_history(64, {"serial": 1.3e-3, "trial": 1.8}, warm_pool, threads=True) is None
    assert from_history(4, {**history, "serial": 20e-6}, warm_pool, threads=True) is None
    # Nor when the workers measured a process pool well ahead of threads.
    slow_threads = {"serial": 10e-3, "trial": 1.9, "process": 3e-3}
    assert from_history(64, slow_threads, warm_pool, threads=True) is None


@pytest.mark.timeout(60)
def test_a_second_call_of_a_function_that_releases_the_gil_skips_the_probe() -> None:
    fn = parallel_for(_nap)
    fn([0.01] * 40)
    first = fn.last_plan
    assert first is not None and first.backend == "thread", first.reason
    kept = "trial" in _costs.recall(fn)
    assert fn([0.01] * 40) == [0.01] * 40
    plan = fn.last_plan
    assert plan is not None and plan.backend == "thread", plan.reason
    assert plan.workers > (os.cpu_count() or 1), plan.reason
    if kept:
        assert "no probe" in plan.reason, plan.reason
    else:  # a busy host: the plan said why the first trial was not kept, and it ran again
        assert "a reading for this call only" in first.reason, first.reason
        assert "no probe" not in plan.reason, plan.reason


def test_a_second_call_of_a_few_heavy_items_uses_every_core_at_once() -> None:
    fn = parallel_for(functools.partial(spin_for, 0.3))
    assert fn(range(2)) == [0, 1]  # the first call: a head start
    assert fn(range(2)) == [0, 1]
    plan = fn.last_plan
    assert plan is not None and plan.backend == "process", plan
    assert plan.reason.startswith("no probe: the workers of an earlier call measured"), plan


def test_a_trial_in_which_an_item_raised_says_nothing_for_threads() -> None:
    probe = probed(1e-3, 200)
    probe.note_trial(Trial([(None, None), (None, ValueError())], 1e-3, 1e-3))
    assert probe.trial_speedup == 1.0
    assert probe.verdict(5).backend == "process"


def test_threads_must_beat_serial_by_the_margin() -> None:
    # 20 items of 0.1 ms: 2 ms serially; threads cannot win by 20% after the latency.
    probe = probed(1e-4, 23)
    trial(probe, 1.3)
    verdict = probe.verdict(3)
    assert verdict.backend != "thread" or verdict.serial_more is None
    assert MARGIN > 1


# -- real runs -------------------------------------------------------------------------------


def _nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def _spin(seconds: float) -> float:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return seconds


def _slower_in_a_worker(seconds: float) -> float:
    """Ten times slower in a worker process than in the caller."""
    _spin(seconds * (10 if _role.IN_WORKER else 1))
    return seconds


@pytest.mark.timeout(60)
def test_waiting_items_run_on_many_threads() -> None:
    fn = parallel_for(_nap)
    assert fn([0.02] * 64) == [0.02] * 64
    plan = fn.last_plan
    assert plan is not None and plan.backend == "thread", plan.reason
    assert plan.workers > (os.cpu_count() or 1)
    assert "releases the GIL" in plan.reason


@pytest.mark.timeout(60)
def test_python_code_that_holds_the_gil_never_goes_to_threads() -> None:
    fn = parallel_for(_spin)
    for _ in range(2):
        assert fn([0.002] * 100) == [0.002] * 100
        plan = fn.last_plan
        assert plan is not None and plan.backend != "thread", plan.reason


def test_a_trial_that_stopped_early_is_kept_only_once_a_second_one_agrees() -> None:
    from parloop._threads import kept_as

    assert kept_as(False, {}) == "trial"  # a whole trial, long enough: kept
    assert kept_as(True, {"serial": 1e-3}) == "cut"  # stopped early: this call only...
    assert kept_as(True, {"serial": 1e-3, "cut": 1.06}) == "trial"  # ...until a second agrees


@pytest.mark.timeout(60)
def test_thread_safe_false_keeps_waiting_items_off_threads() -> None:
    fn = parallel_for(_nap, thread_safe=False)
    fn([0.01] * 40)
    plan = fn.last_plan
    assert plan is not None and plan.backend in ("serial", "process"), plan.reason
    assert "threads" not in plan.reason


@pytest.mark.timeout(60)
def test_a_real_gil_releasing_function_is_measured_on_threads() -> None:
    import hashlib

    blobs = [bytes([i]) * 2**20 for i in range(48)]

    def digest(blob: bytes) -> str:
        return hashlib.sha256(blob).hexdigest()

    fn = parallel_for(digest)  # a closure: it could not even go to a process
    assert fn(blobs) == [hashlib.sha256(b).hexdigest() for b in blobs]
    plan = fn.last_plan
    assert plan is not None
    # Whether threads win depends on how many CPUs are free right now; that
    # the two-thread trial ran and was weighed does not.
    assert "on 2 threads at once" in plan.reason or "releases the GIL" in plan.reason, plan.reason


def test_a_trial_run_while_other_programs_hold_the_cpus_decides_its_call_only() -> None:
    # Synthetic: the two threads waited for a CPU (run delay, not the GIL)
    # for over STARVED of the trial between them.
    items = [(None, None)] * 10
    assert Trial(items, 10e-3, 14e-3, 14e-3, waited=6e-3).starved()
    assert not Trial(items, 10e-3, 14e-3, 14e-3, waited=1e-3).starved()
    assert not Trial(items, 10e-3, 14e-3, 14e-3).starved()  # not known (no schedstat): as before
    # Measured, NumPy with OpenBLAS's threads on: the trial's threads waited
    # 6.6 ms of 8 ms while the process's other threads (BLAS) ran 8.4 ms.
    # That is the function's own doing, and its reading (~0.6x) stands.
    assert not Trial(items, 8.1e-3, 16.1e-3, 7.7e-3, waited=6.6e-3).starved()
    # A helper whose start outlasted the trial ran nothing: nothing to keep either.
    assert Trial(items, 10e-3, 0.0, marks=[[(0.0, 0.0)] * 11, [(0.01, 0.0)]]).one_sided()
    # One 10 ms item each: together for 2 ms of 18 (a helper 8 ms late), or
    # for 10 ms of 10.3 (on time).
    two = [(None, None)] * 2
    assert Trial(two, 18e-3, 0.0, marks=[[(0.0, 0.0), (0.01, 0.0)],
                                         [(0.008, 0.0), (0.018, 0.0)]]).one_sided()
    assert not Trial(two, 10.3e-3, 0.0, marks=[[(0.0, 0.0), (0.0101, 0.0)],
                                               [(0.0002, 0.0), (0.0103, 0.0)]]).one_sided()
    # The same late helper in a trial run again, on a thread that was up:
    # it waited for the GIL (pure Python runs in turns), and that is the
    # reading, kept for later calls, or every later call would probe again.
    late = Trial(two, 18e-3, 0.0, marks=[[(0.0, 0.0), (0.01, 0.0)],
                                         [(0.008, 0.0), (0.018, 0.0)]])
    late.again = True
    assert not late.one_sided() and late.only() == "" and late.sure()
    probe = probed(1.3e-3, 200)
    probe.note_trial(Trial(items, 13e-3, 13e-3, 13e-3, waited=9e-3))  # others: 0
    reason = str(probe.verdict(13).reason)
    assert "other programs held the CPUs" in reason and "this call only" in reason, reason


@pytest.mark.timeout(60)
@pytest.mark.skipif(run_delay() is None, reason="no per-thread schedstat here")
def test_a_trial_under_real_cpu_hogs_is_not_kept_for_later_calls() -> None:
    # Real: one busy process more than there are CPUs, then a function that
    # releases the GIL. Its trial reads low only because the CPUs were taken;
    # kept, that reading would keep threads off for the life of the process.
    import hashlib
    import subprocess
    import sys

    blobs = [bytes([i]) * 2**20 for i in range(96)]

    def digest(blob: bytes) -> str:
        return hashlib.sha256(blob).hexdigest()

    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range((os.cpu_count() or 1) + 1)]
    try:
        time.sleep(0.3)
        fn = parallel_for(digest)
        assert fn(blobs) == [hashlib.sha256(b).hexdigest() for b in blobs]
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    plan = fn.last_plan
    assert plan is not None and "this call only" in plan.reason, plan.reason
    assert "trial" not in _costs.recall(digest)


@pytest.mark.timeout(120)
def test_workers_slower_than_the_caller_send_the_rest_back_and_the_history_keeps_both() -> None:
    fn = parallel_for(_slower_in_a_worker, workers=2, thread_safe=False)
    items = [0.002] * 300
    assert fn(items) == items  # ~0.6 s serially
    first = fn.last_plan
    assert first is not None
    if first.backend == "process":
        # The probe saw 2 ms items in the caller and chose the pool; the
        # workers reported 20 ms: the caller ran the rest itself.
        assert "ran the last" in first.reason, first.reason
    history = _costs.recall(_slower_in_a_worker)
    # The caller's own measure: 2 ms (4.3 ms beside two busy processes), not the workers' 20 ms.
    assert 0.001 <= history["serial"] < 0.01, history
    if "process" in history:
        assert history["process"] > 0.01  # the workers' own, kept apart
        assert history["ratio"] > 5  # as this one call measured both sides
    # The next call knows the pool is slower and does not go there.
    assert fn(items) == items
    second = fn.last_plan
    assert second is not None and second.backend == "serial", second.reason


@pytest.mark.timeout(120)
def test_the_warm_pool_numpy_case_never_goes_to_slow_workers() -> None:
    numpy = pytest.importorskip("numpy")
    rng = numpy.random.default_rng(0)
    matrices = [rng.random((300, 300)) for _ in range(64)]

    def gram(a: Any) -> float:
        return float((a @ a.T)[0, 0])

    parallel_for(_spin, backend="process", workers=2)([0.001] * 4)  # leaves a warm pool
    fn = parallel_for(gram)
    expected = [gram(a) for a in matrices]
    for _ in range(3):
        assert fn(matrices) == pytest.approx(expected)
        plan = fn.last_plan
        assert plan is not None
        ratio = _costs.recall(gram).get("ratio")  # from the first call's proving
        if plan.backend == "process" and "ran the last" not in plan.reason and ratio is not None:
            # Kept on the pool only if its workers' first items, by their own
            # measure, were not slower together than the caller's beside them.
            assert ratio / 2 <= RETREAT, plan.reason


_BLAS_CHILD = """
import numpy
from parloop import _native
print(_native.blas_threads())
"""


@pytest.mark.timeout(60)
def test_the_blas_thread_count_is_the_librarys_own() -> None:
    # Real NumPy, asked in fresh interpreters: its BLAS runs one thread per
    # CPU by default, and one when the environment says so.
    import subprocess
    import sys
    pytest.importorskip("numpy")
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    shown = subprocess.run([sys.executable, "-c", _BLAS_CHILD], env=env, capture_output=True,
                           text=True, timeout=50, check=True).stdout.strip()
    if shown == "None" and (os.cpu_count() or 1) > 1:
        pytest.skip("this NumPy's BLAS has no thread count to read (not OpenBLAS, MKL or BLIS)")
    if (os.cpu_count() or 1) > 1:
        assert shown.startswith("('") and shown.endswith(")") and int(shown[:-1].split()[-1]) > 1
    one = subprocess.run([sys.executable, "-c", _BLAS_CHILD],
                         env={**env, "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                              "OMP_NUM_THREADS": "1"},
                         capture_output=True, text=True, timeout=50, check=True).stdout.strip()
    assert one == "None"


def test_a_multi_threaded_blas_keeps_a_short_call_off_a_thread_trial() -> None:
    # Real NumPy and its BLAS; synthetic costs. 64 items of 0.4 ms, each
    # keeping 1.4 CPUs busy, could save at most ~13 ms on threads, less than
    # two callers of a multi-threaded BLAS at once can stall: no trial, and
    # the plan says why.
    pytest.importorskip("numpy")
    import numpy  # noqa: F401
    blas = _native.blas_threads()
    if blas is None:
        pytest.skip("NumPy's BLAS runs one thread here (or cannot be asked)")
    short = probed(4e-4, 64, cpu_share=1.4)
    assert short.trial_size(3) == 0
    reason = short.verdict(3).reason
    assert f"{blas[0]} runs {blas[1]} threads per call" in str(reason)
    # Enough work that threads could save more than that: tried.
    assert probed(4e-4, 1000, cpu_share=1.4).trial_size(3) > 0
    # Items that keep one CPU busy do not call into BLAS's threads (sha256
    # in a program that imported NumPy): BLAS does not keep them off.
    one_cpu = probed(4e-4, 64)
    one_cpu.trial_size(3)
    assert not one_cpu.no_trial and "not tried on threads" not in str(one_cpu.verdict(3).reason)


@pytest.mark.timeout(60)
def test_the_cpus_a_numpy_product_keeps_busy_are_read_from_each_thread() -> None:
    # Real NumPy, real threads: a 300x300 product under a multi-threaded
    # OpenBLAS keeps about as many CPUs busy as BLAS runs threads, and a
    # sha256 keeps one, measured item by item as the probe measures them.
    numpy = pytest.importorskip("numpy")
    import hashlib
    blas = _native.blas_threads()
    if blas is None:
        pytest.skip("NumPy's BLAS runs one thread here (or cannot be asked)")
    matrix = numpy.random.default_rng(0).random((300, 300))
    data = bytes(1 << 20)

    def cpus(call: Any) -> float:
        clock = _native.item_clock()
        call()  # warm
        readings = []
        delay, began = run_delay(), time.perf_counter()
        for _ in range(9):
            cpu, wall = clock(), time.perf_counter()
            call()
            readings.append((clock() - cpu) / (time.perf_counter() - wall))
        waited = run_delay()
        if delay is not None and waited is not None \
                and waited - delay > 0.1 * (time.perf_counter() - began):
            pytest.skip("other programs held the CPUs: BLAS's threads got less of them")
        return sorted(readings)[4]

    assert cpus(lambda: matrix @ matrix.T) >= _native.BUSY
    time.sleep(0.5)  # OpenBLAS's threads spin for a while after a product, then sleep
    assert cpus(lambda: hashlib.sha256(data).digest()) < _native.BUSY


def _pure(n: int) -> int:
    return sum(i * i for i in range(n))


@pytest.mark.timeout(60)
def test_a_trial_of_pure_python_is_kept_for_later_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    # Real threads, pure Python: the helper waits for the GIL the caller
    # holds, so its items start late in every trial. That is the GIL at
    # work, not a late thread: the reading is kept, and a later call needs no
    # trial ("trial" in the history, not "for this call only").
    monkeypatch.setenv("PARLOOP_COST_CACHE", "off")
    fn = parallel_for(_pure)
    assert fn([20_000] * 400) == [_pure(20_000)] * 400
    plan = fn.last_plan
    assert plan is not None and plan.backend != "thread", plan.reason
    history = _costs.recall(_pure)
    if "the CPUs meanwhile" not in plan.reason:  # not starved by other programs
        assert "trial" in history or "cut" in history, (history, plan.reason)
        assert "ran at once for part of it" not in plan.reason, plan.reason
