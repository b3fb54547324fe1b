"""Control over running work, with real processes and real signals: a
cancel stops what runs, no item waits behind a busy worker while another
idles, parloop's helper processes may die at any moment, memmaps are shared
by reference, huge inputs work, and workers can be recycled."""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import square
from procs import alive, descendants

from parloop import ParloopError, parallel_for

METHODS = ["fork", "forkserver", "spawn"]


def spin(seconds: float) -> float:
    """Burn CPU in Python code for ``seconds`` (a signal can interrupt it)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return seconds


def spin_in_c(seconds: float) -> float:
    """Burn CPU inside one C call that never looks at signals."""
    if seconds >= 1:
        sum(range(10**11))  # minutes of C-level work
    return seconds


def raise_or_spin(seconds: float) -> float:
    if seconds < 0:
        raise ValueError("the failing item")
    return spin(seconds)


def cpu_seconds(pids: set[int]) -> float:
    """User + system CPU seconds used so far by ``pids`` (the live ones)."""
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def workers() -> set[int]:
    return descendants(os.getpid(), "parloop-worker")


def assert_cpu_stops(within: float = 1.0) -> None:
    """No worker of ours burns CPU ``within`` seconds from now on, although
    nobody makes another call: the caller just sleeps."""
    time.sleep(within)
    pids = workers()
    before = {pid: cpu_seconds({pid}) for pid in pids}
    time.sleep(1.0)
    used = {pid: cpu_seconds({pid}) - seconds for pid, seconds in before.items()}
    assert sum(used.values()) < 0.2, f"workers used CPU seconds after the cancel: {used}"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fn", [spin, spin_in_c], ids=["python", "c"])
@pytest.mark.parametrize("how", ["break", "close", "collected"])
def test_a_cancel_stops_the_running_items_with_no_further_call(fn: Any, how: str) -> None:
    g = parallel_for(fn, backend="process", workers=2, chunksize=1)
    if how == "break":
        for _ in g.iter([0.1, 60, 60]):
            break
    else:
        results = g.iter([0.1, 60, 60])
        next(results)
        if how == "close":
            results.close()
        else:
            del results
            gc.collect()
    assert_cpu_stops()


@pytest.mark.timeout(60)
def test_an_error_stops_the_other_running_items() -> None:
    with pytest.raises(ValueError, match="the failing item"):
        parallel_for(raise_or_spin, backend="process", workers=2, chunksize=1)([60, -1, 60])
    assert_cpu_stops()


@pytest.mark.timeout(60)
def test_a_cancelled_amap_stops_its_items() -> None:
    g = parallel_for(spin, backend="process", workers=2, chunksize=1)

    async def main() -> None:
        task = asyncio.create_task(g.amap([60, 60, 60]))
        await asyncio.sleep(1.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert_cpu_stops()


@pytest.mark.timeout(60)
def test_the_pool_works_at_full_strength_after_a_cancel() -> None:
    g = parallel_for(spin, backend="process", workers=2, chunksize=1)
    for _ in g.iter([0.1, 60, 60]):
        break
    time.sleep(1.0)
    began = time.monotonic()
    assert g([0.5, 0.5]) == [0.5, 0.5]
    assert time.monotonic() - began < 0.95  # both workers, at once


def sleep_then(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", METHODS)
def test_no_item_waits_behind_a_long_one_while_a_worker_idles(method: str) -> None:
    g = parallel_for(sleep_then, backend="process", workers=2, chunksize=1, ordered=False,
                     start_method=method)
    g([0.01, 0.01])  # the pool is up before the timing starts
    order = list(g.iter([2.0, 0.01, 0.01, 0.01, 0.01, 0.01]))
    assert order[-1] == 2.0, f"a quick item came out after the slow one: {order}"
    assert sorted(order) == [0.01] * 5 + [2.0]


@pytest.mark.timeout(60)
def test_the_whole_call_takes_as_long_as_its_longest_item() -> None:
    g = parallel_for(sleep_then, backend="process", workers=2, chunksize=1)
    g([0.01, 0.01])
    items = [1.0] + [0.05] * 16  # 0.8 s of short items beside a 1 s one
    began = time.monotonic()
    assert g(items) == items
    assert time.monotonic() - began < 1.6


def nap_uneven(i: int) -> int:
    time.sleep(0.1 if i % 16 == 0 else 0.002)
    return i


@pytest.mark.timeout(60)
def test_the_caller_waits_without_burning_cpu_while_work_is_uneven() -> None:
    g = parallel_for(nap_uneven, backend="process", workers=2, chunksize=1)
    g(range(4))
    began, cpu = time.monotonic(), time.process_time()
    assert g(range(128)) == list(range(128))
    wall, used = time.monotonic() - began, time.process_time() - cpu
    assert used < 0.5 * wall, f"the caller used {used:.2f} CPU seconds in {wall:.2f} s"


# -- helper processes die ------------------------------------------------------------------


def nap_square(x: int) -> int:
    time.sleep(0.005)
    return x * x


def _helpers() -> dict[str, set[int]]:
    """Every process parloop may own here, by kind: its workers, its fork
    server and multiprocessing's resource tracker."""
    from multiprocessing import resource_tracker

    from parloop.backends.process import launch

    found = {"worker": workers(), "server": set(), "tracker": set()}
    for kind, pid in (("server", launch.server_pid()),
                      ("tracker", getattr(resource_tracker._resource_tracker, "_pid", None))):
        if pid and alive(pid):
            found[kind].add(pid)
    return found


@pytest.mark.no_census  # killed helpers are replaced by new ones, which stay for later tests
@pytest.mark.timeout(240)
@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_helper_processes_killed_at_random_cost_at_most_a_call(method: str) -> None:
    g = parallel_for(nap_square, backend="process", workers=2, start_method=method, chunksize=4)
    stop = threading.Event()
    killed: list[str] = []
    rng = random.Random(7)
    # The first victims are one of each kind there is; then any, at random.
    # (parloop's fork server starts no resource tracker: one started by an
    # earlier spawn test may still be there, and is fair game.)
    firsts = ["server", "worker"] if method == "forkserver" else ["worker"]

    def chaos() -> None:
        while not stop.wait(0.2):
            helpers = _helpers()
            kind = firsts[0] if firsts else rng.choice([k for k in helpers if helpers[k]] or ["-"])
            if not helpers.get(kind):
                continue
            try:
                os.kill(rng.choice(sorted(helpers[kind])), signal.SIGKILL)
            except ProcessLookupError:
                continue
            killed.append(kind)
            if firsts:
                firsts.pop(0)

    thread = threading.Thread(target=chaos)
    thread.start()
    outcomes = []
    try:
        for call in range(50):  # ~0.2 s each: ~50 deaths in all
            items = list(range(call * 100, call * 100 + 80))
            try:
                assert g(items) == [x * x for x in items]
                outcomes.append("ok")
            except ParloopError as exc:
                outcomes.append(type(exc).__name__)
    finally:
        stop.set()
        thread.join()
    assert not firsts, f"only these were killed: {killed}"
    assert set(outcomes) <= {"ok", "WorkerCrashedError"}, outcomes
    items = list(range(1000))
    assert g(items) == [x * x for x in items]  # the next call works, with fresh helpers


# -- memmaps ---------------------------------------------------------------------------


def write_square(i: int, array: Any) -> int:
    array[i] = i * i
    return i


def fill(part: Any) -> None:
    part[:] = 7


def open_result(path: str) -> Any:
    import numpy as np

    out = np.memmap(path, dtype=np.int64, mode="r+", shape=(4,))
    out[:] = [1, 2, 3, 4]
    return out


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", METHODS)
def test_workers_write_into_a_memmap_the_caller_sees(tmp_path: Path, method: str) -> None:
    np = pytest.importorskip("numpy")
    array = np.memmap(tmp_path / "out.bin", dtype=np.int64, mode="w+", shape=(64,))
    g = parallel_for(write_square, backend="process", workers=2, start_method=method)
    assert g(range(64), array) == list(range(64))
    assert list(array) == [i * i for i in range(64)]  # the writes landed, in the file too
    assert list(np.fromfile(tmp_path / "out.bin", dtype=np.int64)) == [i * i for i in range(64)]
    # Slices of a memmap as items, and a memmap as a result.
    parts = [array[i:i + 8] for i in range(0, 64, 8)]
    parallel_for(fill, backend="process", workers=2, start_method=method)(parts)
    assert set(np.asarray(array).tolist()) == {7}
    (tmp_path / "r.bin").write_bytes(bytes(32))
    got = parallel_for(open_result, backend="process", workers=2, start_method=method)(
        [str(tmp_path / "r.bin")])
    assert list(got[0]) == [1, 2, 3, 4] and isinstance(got[0], np.memmap)


# -- huge and odd inputs ---------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_an_input_too_long_for_len_is_one_of_unknown_length() -> None:
    g = parallel_for(square, backend="process", workers=2)
    assert list(itertools.islice(g.iter(range(10**30)), 5)) == [0, 1, 4, 9, 16]
    assert list(itertools.islice(parallel_for(square).iter(range(10**30)), 3)) == [0, 1, 4]


# -- recycling ---------------------------------------------------------------------------------

_leak: list[bytes] = []


def leak_and_report(i: int, directory: str) -> tuple[int, int]:
    """Keep 20 MB more with each item (a leak); report the worker's pid and RSS."""
    with open(os.path.join(directory, f"ran-{i}-{os.getpid()}"), "w"):
        pass
    _leak.append(bytes(20 << 20))
    with open("/proc/self/statm") as statm:
        resident = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return os.getpid(), resident


@pytest.mark.timeout(120)
def test_workers_are_recycled_after_so_many_items(tmp_path: Path) -> None:
    g = parallel_for(leak_and_report, backend="process", workers=2, chunksize=2,
                     max_items_per_worker=4)
    results = g(range(40), str(tmp_path))
    pids = {pid for pid, _ in results}
    assert len(pids) >= 10  # 40 items, at most 4 each
    for pid in pids:
        assert sum(1 for p, _ in results if p == pid) <= 4
    assert max(rss for _, rss in results) < 4 * (20 << 20) + (200 << 20)  # bounded
    ran = sorted(int(name.split("-")[1]) for name in os.listdir(tmp_path))
    assert ran == list(range(40))  # every item once: none lost, none run twice
    plan = g.last_plan
    assert plan is not None and "max_items_per_worker=4" in plan.reason


def test_recycling_is_checked_as_an_option() -> None:
    with pytest.raises(ValueError, match="max_items_per_worker"):
        parallel_for(square, max_items_per_worker=0)
    with pytest.raises(TypeError, match="max_items_per_worker"):
        parallel_for(square, max_items_per_worker="10")  # type: ignore[call-overload]



