"""Items read as keeping more than one CPU busy while a multi-threaded BLAS
is loaded: the probe runs one with BLAS capped at one thread, and believes
the reading only if that item ran slower (see ``parloop._native``)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from helpers import FakeClock
from test_auto_threads import probed, warm_pool

from parloop import _native
from parloop._planner import CAP_AFTER, Probe


def test_a_reading_of_two_cpus_asks_for_a_capped_item(monkeypatch: pytest.MonkeyPatch) -> None:
    # pytest stands in for a library with native thread pools (CPU time of
    # other threads counts only when one is loaded).
    monkeypatch.setattr(_native, "MODULES", ("pytest",))
    assert probed(1e-3, 1000, cpu_share=2.0).wants_cap()
    assert not probed(1e-3, 1000, cpu_share=1.0).wants_cap()
    # One short item is not a median to compare with (it carries warm-up) ...
    assert not probed(1e-4, 1000, cpu_share=2.0, seen=1).wants_cap()
    # ... one of 1 ms or more is.
    assert probed(2e-3, 1000, cpu_share=2.0, seen=1).wants_cap()
    # Few items left: one of them twice as long (BLAS does use its threads)
    # would be a big part of the call.
    assert probed(0.1, 3 + CAP_AFTER, cpu_share=2.0).wants_cap()
    assert not probed(0.1, 2 + CAP_AFTER, cpu_share=2.0).wants_cap()
    # Without such a library loaded, there is nothing to cap.
    monkeypatch.setattr(_native, "MODULES", ("no such module",))
    assert not probed(1e-3, 1000, cpu_share=2.0).wants_cap()


def test_an_item_as_fast_capped_means_the_readings_were_idle_spin(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_native, "MODULES", ("pytest",))
    probe = probed(1e-3, 1000, cpu_share=2.0)
    assert probe.cores_used() == 2.0 and probe.verdict(3).serial_more is None  # as it was
    assert probe.note_capped(1.1e-3)  # as fast, within the items' spread: counted
    assert not probe.wants_cap()  # asked once per call
    assert probe.cores_used() == 1.0
    verdict = probe.verdict(3)
    assert verdict.serial_more == 0 and verdict.backend == "process"
    assert "with BLAS capped at one thread" in str(verdict.reason)
    assert "idle spin read as 2.0 CPUs busy" in str(verdict.reason)


def test_an_item_slower_capped_means_the_items_use_blas_threads(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_native, "MODULES", ("pytest",))
    probe = probed(1e-3, 1000, cpu_share=2.0)
    assert not probe.note_capped(1.8e-3)  # not counted: it would skew the median
    assert not probe.wants_cap()
    assert probe.cores_used() == 2.0
    verdict = probe.verdict(3)
    assert verdict.serial_more is None  # a worker capped at one BLAS thread gains nothing
    assert "the items use its threads (2.0 CPUs)" in str(verdict.reason)


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
from parloop import parallel_for, _native

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
    print(spin.last_plan.backend)
    print(spin.last_plan.reason)
"""


@pytest.mark.timeout(120)
def test_pure_python_items_right_after_a_numpy_product_go_to_processes() -> None:
    # Real NumPy in a fresh interpreter, the function defined in __main__:
    # BLAS's threads spin after the product, so the first items read as
    # keeping ~2 CPUs busy. Without the capped item that kept the call
    # serial ("each item kept 2.0 CPUs busy") at ~2x a process pool's time.
    pytest.importorskip("numpy")
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PARLOOP_COST_CACHE"] = "off"
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one CPU: no pool pays")
    shown = subprocess.run([sys.executable, "-c", textwrap.dedent(_AFTER_A_PRODUCT)], env=env,
                           capture_output=True, text=True, timeout=100)
    assert shown.returncode == 0, shown.stderr
    if shown.stdout.strip() == "SKIP":
        pytest.skip("NumPy's BLAS runs one thread here (or cannot be asked)")
    backend, reason = shown.stdout.strip().split("\n", 1)
    assert backend == "process", reason
    assert "with BLAS capped at one thread" in reason and "idle spin" in reason, reason
