"""Big NumPy arrays and bytes between the caller and the process workers
travel through anonymous shared memory (memfd), with real processes.

The functions the workers run are defined here; workers import this module
by name under forkserver and spawn.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from parloop import WorkerCrashedError, parallel_for
from parloop.backends.process import pipe
from parloop.backends.process import shm as _shm

np = pytest.importorskip("numpy")

BIG = 1 << 18  # float64 elements: 2 MB, well over the threshold
SMALL = 1000
METHODS = ["fork", "forkserver"]


@pytest.fixture(params=METHODS)
def method(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(autouse=True)
def nothing_named_in_dev_shm() -> Iterator[None]:
    """No test here may leave a named segment behind. Other tools running on
    the machine (joblib's memmapping, semaphores) are not ours."""
    before = set(os.listdir("/dev/shm"))
    yield
    new = {name for name in set(os.listdir("/dev/shm")) - before
           if not name.startswith(("joblib_", "loky", "sem."))}
    assert not new, f"new entries in /dev/shm: {sorted(new)}"


def process_pool(method: str, workers: int = 2, **options: Any) -> Any:
    return parallel_for(backend="process", workers=workers, start_method=method, **options)


def our_mappings() -> list[str]:
    """This process's mappings of parloop's memfds (unnamed shared memory)."""
    with open("/proc/self/maps") as maps:
        return [line for line in maps if "memfd:parloop" in line]


# -- run in the workers ------------------------------------------------------------------


def backing(array: Any) -> str:
    """What holds an array's memory: 'mmap' for shared memory; 'ndarray' when
    it owns its data; 'bytes' or 'bytearray' when it views those."""
    base = array
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    return type(base).__name__


def inspect_then_scribble(array: Any, extra: Any = None) -> dict[str, Any]:
    """What the worker received; then it overwrites its copy of the item."""
    seen = {"backing": backing(array), "writeable": array.flags.writeable,
            "sum": float(array.sum()), "fortran": array.flags.f_contiguous and array.ndim > 1}
    if extra is not None:
        seen |= {"extra": backing(extra), "extra_sum": float(extra.sum())}
    if array.flags.writeable:
        array[...] = -1
    return seen


def scaled(array: Any, factor: float) -> Any:
    return array * factor


def echo(value: Any) -> Any:
    return value


def the_extra(_: object, extra: Any) -> Any:
    return extra


_reused: Any = None


def into_reused_buffer(index: int) -> Any:
    """Always the same array, overwritten by each item."""
    global _reused
    if _reused is None:
        _reused = np.empty(BIG)
    _reused[:] = index
    return _reused


def die_holding(array: Any, bad: int) -> Any:
    """Twice the array; the worker given the array full of ``bad`` dies."""
    if array[0] == bad:
        os.kill(os.getpid(), signal.SIGKILL)
    return array * 2


class DieOnPickle:
    def __reduce__(self) -> Any:
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable")


def big_result_or_die(index: int, bad: int) -> Any:
    """A big array; for item ``bad`` the worker dies while pickling it."""
    array = np.full(BIG, float(index))
    return (array, DieOnPickle()) if index == bad else array


# -- round trips ----------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("start_method", [*METHODS, "spawn"])
def test_big_arrays_cross_both_ways_through_shared_memory(start_method: str) -> None:
    items = [np.full(BIG, float(i)) for i in range(4)]
    extra = np.arange(BIG, dtype=np.float64)
    before = [array.copy() for array in items]
    with process_pool(start_method, chunksize=1) as pool:
        seen = pool.map(inspect_then_scribble, items, extra)
        results = pool.map(scaled, items, 3.0)
    # The worker saw views of shared memory; the extra argument too, unless
    # the worker was forked during the call and holds a copy of its own.
    assert [s["backing"] for s in seen] == ["mmap"] * 4
    inherited = "ndarray" if start_method == "fork" else "mmap"
    assert [s["extra"] for s in seen] == [inherited] * 4
    assert [s["sum"] for s in seen] == [float(i) * BIG for i in range(4)]
    assert {s["extra_sum"] for s in seen} == {float(extra.sum())}
    assert all(s["writeable"] for s in seen)
    # It scribbled over its copies; the caller's arrays are untouched.
    for array, copy in zip(items, before, strict=True):
        np.testing.assert_array_equal(array, copy)
    # Results are views of shared memory too, writable like any result.
    for i, result in enumerate(results):
        assert backing(result) == "mmap" and result.flags.writeable
        np.testing.assert_array_equal(result, np.full(BIG, 3.0 * i))
        result[0] = -1.0
    assert our_mappings()
    del results, result
    gc.collect()
    assert our_mappings() == []  # the mapping went with the last array on it


@pytest.mark.timeout(60)
def test_layouts_read_only_arrays_bytes_and_small_arrays(method: str) -> None:
    fortran = np.asfortranarray(np.arange(BIG, dtype=np.float64).reshape(512, -1))
    read_only = np.ones(BIG)
    read_only.flags.writeable = False
    strided = np.arange(4 * BIG, dtype=np.float64)[::2]  # not contiguous: pickled in band
    small = np.ones(SMALL)
    items = [fortran, read_only, strided, small]
    with process_pool(method, chunksize=1) as pool:
        seen = pool.map(inspect_then_scribble, items)
        back = pool.map(echo, items)
        data = pool.map(echo, [b"x" * (3 * BIG), bytearray(b"y" * (3 * BIG))])
        extras = pool.map(the_extra, range(3), fortran)
    assert [s["backing"] for s in seen[:2]] == ["mmap", "mmap"]
    assert seen[0]["fortran"] and seen[0]["writeable"]
    assert not seen[1]["writeable"]  # read-only stays read-only, as through the pipe
    assert [s["backing"] == "mmap" for s in seen[2:]] == [False, False]
    for sent, got in zip(items, back, strict=True):
        np.testing.assert_array_equal(sent, got)
    assert back[0].flags.f_contiguous and not back[1].flags.writeable
    assert backing(back[3]) != "mmap"  # small arrays keep to the pipe
    assert data == [b"x" * (3 * BIG), bytearray(b"y" * (3 * BIG))]
    assert [type(d) for d in data] == [bytes, bytearray]
    for extra in extras:
        np.testing.assert_array_equal(extra, fortran)
        assert extra.flags.f_contiguous and backing(extra) == "mmap"


@pytest.mark.timeout(60)
def test_each_result_is_the_array_as_it_was_returned(method: str) -> None:
    # A worker that reuses one output array: every result must still be its own.
    with process_pool(method, chunksize=8) as pool:
        results = pool.map(into_reused_buffer, range(8))
    assert [float(r[0]) for r in results] == [float(i) for i in range(8)]
    assert [float(r[-1]) for r in results] == [float(i) for i in range(8)]


@pytest.mark.timeout(60)
def test_more_big_buffers_in_one_message_than_one_batch_of_fds() -> None:
    count = _shm.BATCH + 6
    size = _shm.THRESHOLD // 8 + 1
    items = [np.full(size, float(i)) for i in range(count)]
    with process_pool("fork", chunksize=count) as pool:  # one chunk: one message each way
        results = pool.map(echo, items)
    assert [backing(r) for r in results] == ["mmap"] * count
    assert [float(r[-1]) for r in results] == [float(i) for i in range(count)]


# -- faults -------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_worker_killed_holding_a_big_item_fails_that_item_only(method: str) -> None:
    items = [np.full(BIG, float(i)) for i in range(6)]
    with process_pool(method, chunksize=1):
        results = parallel_for(die_holding, errors="return")(items, 2)
    assert isinstance(results[2], WorkerCrashedError) and results[2].indices == (2,)
    for i, result in enumerate(results):
        if i != 2:
            np.testing.assert_array_equal(result, np.full(BIG, 2.0 * i))
            assert backing(result) == "mmap"
    del results, result
    gc.collect()
    assert our_mappings() == []


@pytest.mark.timeout(60)
def test_a_worker_killed_holding_a_big_result_fails_that_item_only(method: str) -> None:
    with process_pool(method, chunksize=1):
        results = parallel_for(big_result_or_die, errors="return")(range(6), 3)
        # The pool is whole again and still passes big arrays.
        again = parallel_for(scaled)([np.ones(BIG)] * 2, 2.0)
    assert isinstance(results[3], WorkerCrashedError) and results[3].indices == (3,)
    for i, result in enumerate(results):
        if i != 3:
            np.testing.assert_array_equal(result, np.full(BIG, float(i)))
    assert [backing(a) for a in again] == ["mmap", "mmap"]
    del results, result, again
    gc.collect()
    assert our_mappings() == []


# -- where shared memory is not to be had ----------------------------------------------------


def _carry(sender: Any, receiver: Any, value: Any) -> Any:
    """``value`` sent through the transport from one end to the other (a
    thread receives, so that a message bigger than the pipe's buffer fits)."""
    received: list[Any] = []
    thread = threading.Thread(target=lambda: received.append(pipe.receive(receiver)))
    thread.start()
    try:
        pipe.send(sender, ("value", _shm.pack(value)))
    finally:
        thread.join(10)
    return _shm.loads(received[0][1])


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("duplex", "fd_budget", "expected"), [
    (True, None, "mmap"),  # a socketpair passes fds
    (False, None, "bytearray"),  # an os.pipe cannot: the bytes go through it
    (True, 0, "bytearray"),  # before 3.13 an mmap holds an fd: past the budget, a copy
])
def test_the_transport_falls_back_to_the_pipe(
        duplex: bool, fd_budget: int | None, expected: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if fd_budget is not None:
        monkeypatch.setattr(_shm, "_MMAP_KEEPS_FD", True)
        monkeypatch.setattr(_shm, "_FD_BUDGET", fd_budget)
    receiver, sender = multiprocessing.Pipe(duplex=duplex)
    try:
        array = np.arange(BIG, dtype=np.float64)
        value = _carry(sender, receiver, array)
    finally:
        receiver.close()
        sender.close()
    np.testing.assert_array_equal(value, array)
    assert backing(value) == expected and value.flags.writeable


@pytest.mark.timeout(60)
def test_without_memfd_the_pool_uses_the_pipe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_shm, "ENABLED", False)  # as on a system without memfd_create
    items = [np.full(BIG, float(i)) for i in range(3)]
    with process_pool("fork", chunksize=1) as pool:  # forked workers inherit the flag
        seen = pool.map(inspect_then_scribble, items)
        results = pool.map(scaled, items, 2.0)
    assert [s["backing"] == "mmap" for s in seen] == [False] * 3
    assert all(s["writeable"] for s in seen)
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result, np.full(BIG, 2.0 * i))
        assert backing(result) != "mmap"
