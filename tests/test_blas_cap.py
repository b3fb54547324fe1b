"""Items read as keeping more than one CPU busy while a multi-threaded BLAS
is loaded: the probe runs some with BLAS capped at one thread, between items
run as usual, and believes the reading only if the capped ones ran slower
(see ``parloop._native``)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import pytest
from helpers import FakeClock
from test_auto_threads import probed as probed_any
from test_auto_threads import warm_pool

from parloop import _native
from parloop._native import CAP_MOST, CapCheck
from parloop._planner import CAP_AFTER, CAP_WORTH, Probe


def probed(cost: float, total: int, *, cpu_share: float = 1.0, seen: int = 4,
           history: dict[str, float] | None = None) -> Probe:
    """A probe that has timed ``seen`` items (4: the check is asked after 2, 4, 8... items)."""
    return probed_any(cost, total, cpu_share=cpu_share, seen=seen, history=history)


def run_check(probe: Probe, beside: float, capped: float) -> int:
    """Items in turn as the probe runs them: capped, as usual, capped, as
    usual... until the check knows; how many ran capped."""
    count = 0
    while probe.wants_cap():
        probe.add(capped, capped, capped, capped=True)
        count += 1
        assert not probe.wants_cap()
        probe.add(beside, 2 * beside, beside)
    return count


def test_a_reading_of_two_cpus_asks_for_capped_items(monkeypatch: pytest.MonkeyPatch) -> None:
    # pytest stands in for a library with native thread pools (CPU time of
    # other threads counts only when one is loaded).
    monkeypatch.setattr(_native, "MODULES", ("pytest",))
    assert probed(1e-3, 1000, cpu_share=2.0).wants_cap()
    assert not probed(1e-3, 1000, cpu_share=1.0).wants_cap()
    # One item is not enough to compare with (it carries warm-up).
    assert not probed(1e-2, 1000, cpu_share=2.0, seen=1).wants_cap()
    # Few items left: some of them twice as long (BLAS does use its threads)
    # would be a big part of the call.
    assert probed(0.1, 4 + CAP_AFTER, cpu_share=2.0).wants_cap()
    assert not probed(0.1, 3 + CAP_AFTER, cpu_share=2.0).wants_cap()
    # Too little work left for a pool to matter (20 items of 2 µs: finding
    # the BLAS's calls the first time would cost more than the whole call).
    assert not probed(2e-6, 20, cpu_share=2.0).wants_cap()
    assert CAP_WORTH == 0.02
    assert not probed(1e-4, 150, cpu_share=2.0).wants_cap()  # 14.6 ms left
    assert probed(1e-4, 300, cpu_share=2.0).wants_cap()  # 29.6 ms left
    # Asked after 2, 4, 8... items only: the readings take O(items) to sum.
    assert probed(1e-3, 1000, cpu_share=2.0, seen=2).wants_cap()
    assert not probed(1e-3, 1000, cpu_share=2.0, seen=3).wants_cap()
    assert not probed(1e-3, 1000, cpu_share=2.0, seen=7).wants_cap()
    assert probed(1e-3, 1000, cpu_share=2.0, seen=8).wants_cap()
    # Without such a library loaded, there is nothing to cap.
    monkeypatch.setattr(_native, "MODULES", ("no such module",))
    assert not probed(1e-3, 1000, cpu_share=2.0).wants_cap()


def test_items_as_fast_capped_mean_the_readings_were_idle_spin(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_native, "MODULES", ("pytest",))
    probe = probed(1e-3, 1000, cpu_share=2.0)
    assert probe.cores_used() == 2.0 and probe.verdict(4).serial_more is None  # as it was
    assert run_check(probe, 1e-3, 1.1e-3) == 1  # within the items' spread: one settles it
    assert probe.cap is not None and probe.cap.free
    assert not probe.wants_cap()  # asked once per call
    assert probe.cores_used() == 1.0
    verdict = probe.verdict(4 + 2)
    assert verdict.serial_more == 0 and verdict.backend == "process"
    assert "; 1 item ran with BLAS capped at one thread, 1.10x the time of the items beside it: " \
        "its threads' idle spin read as 2.0 CPUs busy" in str(verdict.reason)
    # Capped items do not count as the probe's: the median is the usual items'.
    assert len(probe.times) == 4 + 1 and probe.per_item() == pytest.approx(1e-3)


def test_items_slower_capped_mean_the_items_use_blas_threads(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_native, "MODULES", ("pytest",))
    probe = probed(1e-3, 1000, cpu_share=2.0)
    assert run_check(probe, 1e-3, 1.4e-3) == CAP_MOST  # each slower: all of them ran
    assert probe.cap is not None and probe.cap.free is False
    assert not probe.wants_cap()
    assert probe.cores_used() == 2.0
    verdict = probe.verdict(4 + 2 * CAP_MOST)
    assert verdict.serial_more is None  # a worker capped at one BLAS thread gains nothing
    assert "; 4 items ran with BLAS capped at one thread, 1.40x and 1.40x and 1.40x and 1.40x " \
        "the time of the items beside them: the items use its threads (2.0 CPUs)" \
        in str(verdict.reason)


def test_each_capped_item_is_held_against_the_quicker_item_beside_it() -> None:
    # 300x300 products on this machine: ~500 µs as usual, ~700 µs capped;
    # after a slow warm-up item a capped one can look as fast as its
    # neighbour on the left, not as the one on its right.
    check = CapCheck(1.0e-3, 2.0)
    for _ in range(CAP_MOST):
        for seconds, capped in ((0.7e-3, True), (0.5e-3, False)):
            assert check.next_capped() == capped
            check.note(seconds, capped)
    assert check.free is False and check.ratios == pytest.approx([1.4] * CAP_MOST)
    assert not check.next_capped()


def test_one_capped_item_as_fast_as_its_neighbours_settles_it() -> None:
    # The two CI runs that failed: pure Python items after a product, with
    # OpenBLAS's threads spinning beside them. One capped item took 3.50x
    # its neighbours, the next 1.03x; in the other run, 1.69x and then 1.43x.
    # A delay only adds time: one capped item no slower shows the items do
    # not need BLAS's threads, however many ran slower before it.
    check = CapCheck(1e-3, 2.0)
    for seconds, capped in ((3.5e-3, True), (1e-3, False), (1.03e-3, True), (1e-3, False)):
        assert check.next_capped() == capped
        check.note(seconds, capped)
    assert check.free is True and check.found is True and not check.next_capped()
    assert check.describe().startswith("; 2 items ran with BLAS capped at one thread, 3.50x "
                                       "and 1.03x the time of the items beside them: its threads'")
    check = CapCheck(1e-3, 2.0)
    for seconds in (1.69e-3, 1e-3, 1.43e-3, 1e-3):
        check.note(seconds, check.next_capped())
    assert check.free is None and check.found is None and check.describe() == ""
    assert check.next_capped()  # not known yet: another capped item


def test_the_probe_waits_for_a_check_under_way(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_native, "MODULES", ("pytest",))
    probe = probed(1e-3, 1000, cpu_share=2.0)
    probe.clock.now += 1.0  # type: ignore[attr-defined]  # its budget is long spent
    assert not probe.done(4)  # the check is due (see the next test)
    assert probe.wants_cap()
    assert not probe.done(4)
    run_check(probe, 1e-3, 1e-3)
    assert probe.done(4 + 2)


def test_a_refused_cap_leaves_the_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_native, "MODULES", ("pytest",))
    probe = probed(1e-3, 1000, cpu_share=2.0)
    check = probe.wants_cap()
    assert check is not None
    # Another thread of the program's own is alive: it might be calling BLAS,
    # and the cap is the whole process's, so nothing is capped.
    release = threading.Event()
    other = threading.Thread(target=release.wait, args=(10,), name="the program's own")
    other.start()
    try:
        assert check.cap() is None
    finally:
        release.set()
        other.join()
    assert not probe.wants_cap() and probe.cores_used() == 2.0
    assert "BLAS capped" not in str(probe.verdict(4).reason)


def test_a_later_call_takes_the_check_from_the_history(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_native, "MODULES", ("pytest",))
    free = probed(1e-3, 1000, cpu_share=2.0, history={"blas": 0.0})
    assert not free.wants_cap() and free.cores_used() == 1.0
    assert free.verdict(4).serial_more == 0
    uses = probed(1e-3, 1000, cpu_share=2.0, history={"blas": 1.0})
    assert not uses.wants_cap() and uses.cores_used() == 2.0
    assert "BLAS capped" not in str(uses.verdict(4).reason)


def test_an_unread_probe_is_never_capped() -> None:
    assert not Probe(100, warm_pool, FakeClock()).wants_cap()


def test_one_thread_caps_the_real_blas_and_undoes_it() -> None:
    pytest.importorskip("numpy")
    import numpy  # noqa: F401
    before = _native.blas_threads()
    if before is None:
        pytest.skip("NumPy's BLAS runs one thread here (or cannot be asked)")
    undo = _native.one_thread()
    assert undo is not None
    try:
        assert _native.blas_threads() is None  # one thread per call
    finally:
        undo()
    assert _native.blas_threads() == before


_AFTER_A_PRODUCT = """
import numpy
from parloop import parallel_for, _costs, _native

@parallel_for
def spin(n):
    total = 0
    for i in range(n):
        total += i * i
    return total

if _native.blas_threads() is None:
    print("SKIP")
else:
    matrix = numpy.ones((400, 400))
    matrix @ matrix  # OpenBLAS's threads now spin for ~0.1 s
    items = [30_000] * 400  # ~1-2 ms each, pure Python
    assert spin(items) == [sum(i * i for i in range(30_000))] * 400
    print(_costs.recall(spin).get("blas"))
    print(spin.last_plan.backend)
    print(spin.last_plan.reason)
"""


@pytest.mark.timeout(120)
def test_pure_python_items_right_after_a_numpy_product_go_to_processes() -> None:
    # Real NumPy in a fresh interpreter, the function defined in __main__:
    # BLAS's threads spin after the product, so the first items read as
    # keeping ~2 CPUs busy. Without the capped items that kept the call
    # serial ("each item kept 2.0 CPUs busy") at ~1.4x the time it takes now.
    pytest.importorskip("numpy")
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one CPU: no pool pays")
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PARLOOP_COST_CACHE"] = "off"
    shown = subprocess.run([sys.executable, "-c", textwrap.dedent(_AFTER_A_PRODUCT)], env=env,
                           capture_output=True, text=True, timeout=100)
    assert shown.returncode == 0, shown.stderr
    if shown.stdout.strip() == "SKIP":
        pytest.skip("NumPy's BLAS runs one thread here (or cannot be asked)")
    kept, backend, reason = shown.stdout.strip().split("\n", 2)
    assert backend == "process", reason  # before the check: serial, in 6 runs of 6
    # The check runs when the reading shows the spin (10 runs of 10 here with
    # the machine idle; beside a busy benchmark the spinning thread got too
    # little CPU to read 1.25 CPUs at times, and then nothing needs checking).
    if "BLAS capped" in reason:
        assert "idle spin" in reason, reason
        assert kept == "0.0", reason  # kept for later calls: its items do not use BLAS's threads
    else:
        assert kept == "None" and "not tried on threads" not in reason, reason


def test_a_probe_is_not_done_before_its_blas_check(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pure Python items of 1.24 ms right after a NumPy product, read as
    # keeping 2 CPUs busy (OpenBLAS's threads spin). The probe's own time
    # (10 ms, as a first call's setup took) was spent after two items, before
    # the check's first capped item: the workers were projected at 2 CPUs an
    # item, no faster than the caller, and the call stayed serial (5 of 30
    # runs beside a busy process). Not done until the check has spoken.
    monkeypatch.setattr(_native, "MODULES", ("pytest",))
    probe = probed(1.24e-3, 400, cpu_share=2.0, seen=2)
    probe.clock.now += 10e-3  # type: ignore[attr-defined]
    assert not probe.done(2)
    assert run_check(probe, 1.24e-3, 1.25e-3) == 1  # as fast capped: free
    assert probe.cap is not None and probe.cap.free
    assert probe.done(len(probe.times) + 1)
    assert probe.verdict(len(probe.times) + 1).backend == "process"
    # Without a BLAS loaded, the same readings are the process's other
    # threads' doing: no check, and the probe goes by its time.
    monkeypatch.setattr(_native, "MODULES", ())
    probe = probed(1.24e-3, 400, cpu_share=2.0, seen=2)
    probe.clock.now += 10e-3  # type: ignore[attr-defined]
    assert probe.done(2) and probe.cap is None
