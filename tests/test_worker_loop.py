"""The worker's hot loop, run in this process: what it writes into the shared
status while items run, how often it reads the clock, and what it reports.
The pipe is replaced by a list of the very bytes the worker would send, which
``pipe.receive`` reads back; everything else is the real code."""

from __future__ import annotations

import multiprocessing
import sys
import time
from collections import deque
from typing import Any

import pytest

from parloop.backends import _runner
from parloop.backends._wire import Done, JobSpec, Pickled, dump_value
from parloop.backends.process import pipe, worker
from parloop.backends.process import shm as _shm
from parloop.backends.process.messages import RunChunk

pytestmark = pytest.mark.timeout(60)


class Wire:
    """Both ends of a pipe in one object: ``send_bytes`` queues, ``recv_bytes`` pops."""

    def __init__(self) -> None:
        self.frames: deque[bytes] = deque()

    def send_bytes(self, data: bytes) -> None:
        self.frames.append(bytes(data))

    def recv_bytes(self) -> bytes:
        return self.frames.popleft()

    def messages(self) -> list[Any]:
        out = []
        while self.frames:
            out.append(pipe.receive(self))
        return out


class CountingTime:
    """Stands in for the ``time`` module inside ``_runner``: counts clock reads."""

    def __init__(self) -> None:
        self.reads = 0

    def monotonic(self) -> float:
        self.reads += 1
        return time.monotonic()

    def process_time(self) -> float:  # read per report, not per item: not counted
        return time.process_time()

    def thread_time(self) -> float:
        return time.thread_time()


def run_chunk(fn: Any, items: list[Any], timed: bool = False, flush_every: float = 60.0,
              wire: Wire | None = None) -> tuple[list[Any], Any]:
    """Run ``items`` as one chunk of a job; return the "done" messages and the runner."""
    wire = wire or Wire()
    status = multiprocessing.RawArray("d", 3)
    runner = worker.Runner(wire, status, set())
    runner.specs.add(1, dump_value(tuple(JobSpec(fn, (), {}, False, False,
                                                 0.0 if timed else flush_every, timed))))
    runner.run(RunChunk(1, 0, len(items), dump_value(items), False))
    done = [m for m in wire.messages() if type(m) is Done]
    return done, runner


def results_of(done: list[Any]) -> list[Any]:
    """The results, unwrapped as the caller would."""
    return [_shm.loads(value.data) if type(value) is Pickled else value
            for message in done for value in message.values]


def square(x: int) -> int:
    return x * x


def test_quick_items_read_the_clock_in_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = CountingTime()
    monkeypatch.setattr(_runner, "time", clock)
    items = list(range(20_000))
    done, _ = run_chunk(square, items)
    assert results_of(done) == [x * x for x in items]
    assert clock.reads < len(items) / 20  # a read per item would be 20,000
    assert done[-1].final is True and done[-1].wrapped is False  # plain values, not wrapped


def test_a_timed_job_reads_the_clock_for_every_item(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = CountingTime()
    monkeypatch.setattr(_runner, "time", clock)
    items = list(range(500))
    done, _ = run_chunk(square, items, timed=True)
    assert results_of(done) == [x * x for x in items]
    assert clock.reads >= 2 * len(items)  # its start (for the deadline) and its end


def test_busy_adds_up_to_the_chunk_and_the_slowest_item_is_named() -> None:
    delays = [0.0002] * 40
    delays[23] = 0.03

    began = time.monotonic()
    done, _ = run_chunk(time.sleep, delays)
    wall = time.monotonic() - began
    busy = sum(message.busy for message in done)
    assert sum(delays) * 0.9 <= busy <= wall
    seconds, index = max(message.slowest for message in done)
    assert index == 23 and seconds >= 0.03


def test_quick_items_are_timed_as_a_whole() -> None:
    began = time.monotonic()
    done, _ = run_chunk(square, list(range(50_000)))
    wall = time.monotonic() - began
    busy = sum(message.busy for message in done)
    # The whole chunk's time, not just the few items the clock was read around.
    assert wall * 0.5 <= busy <= wall


def nap_on(x: int, slow: int = 150) -> int:
    if x == slow:
        time.sleep(0.1)
    return x * x


def test_a_straggler_among_quick_items_counts_but_no_quick_item_is_named() -> None:
    done, _ = run_chunk(nap_on, list(range(300)))
    assert results_of(done) == [x * x for x in range(300)]
    assert sum(message.busy for message in done) >= 0.1
    # The straggler may go unnamed inside a group. Whatever is named was timed
    # on its own and took 20 µs or more (a quick item the OS paused can be).
    for seconds, index in (message.slowest for message in done):
        assert index == -1 or seconds >= _runner.SAMPLE_SECONDS
        assert index != 150 or seconds >= 0.1


class SlowWire(Wire):
    def send_bytes(self, data: bytes) -> None:
        time.sleep(0.05)  # a full pipe: the caller is slow to read
        super().send_bytes(data)


def test_time_spent_sending_is_no_items_time() -> None:
    done, _ = run_chunk(time.sleep, [0.001] * 30, flush_every=0.0005, wire=SlowWire())
    assert len(done) > 10  # it flushed often, each send taking 50 ms
    busy = sum(message.busy for message in done)
    # ~30 ms of items; counting the sends would make it over 0.5 s
    assert 0.03 <= busy < 0.4
    assert max(message.slowest for message in done)[0] < 0.04


def _where(x: int) -> tuple[float, float, float]:
    return tuple(_status[:])  # type: ignore[return-value]


_status: Any = None


@pytest.mark.parametrize("timed", [False, True])
def test_the_status_names_the_running_item(timed: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    wire = Wire()
    status = multiprocessing.RawArray("d", 3)
    monkeypatch.setattr(sys.modules[__name__], "_status", status)
    runner = worker.Runner(wire, status, set())
    runner.specs.add(7, dump_value(tuple(JobSpec(_where, (), {}, False, False,
                                                 0.0 if timed else 60.0, timed))))
    runner.run(RunChunk(7, 100, 5, dump_value([0, 1, 2, 3, 4]), False))
    seen = results_of([m for m in wire.messages() if type(m) is Done])
    assert [index for _, index, _ in seen] == [100, 101, 102, 103, 104]
    assert all(job == 7 for _, _, job in seen)
    phases = [phase for phase, _, _ in seen]
    assert all(phase > 0 for phase in phases)  # running, not preparing (-1) or idle (0)
    if timed:  # each item's own start, for its deadline
        assert phases == sorted(phases) and len(set(phases)) == len(phases)
    else:  # the chunk's start, written once
        assert len(set(phases)) == 1
    assert list(status) == [_runner.IDLE, -1.0, 0.0]  # idle once the chunk is reported


def test_a_report_says_the_cpu_time_beside_the_busy_time() -> None:
    def spin(x: int) -> int:
        end = time.thread_time() + 0.02
        while time.thread_time() < end:
            pass
        return x

    def sleep(x: int) -> int:
        time.sleep(0.02)
        return x

    for fn, busy_cpu in ((spin, True), (sleep, False)):
        reports: list[Done] = []
        spec = JobSpec(fn, (), {}, False, True, 10.0, False)
        _runner.run_items(1, spec, 0, [1, 2, 3], None, report=reports.append,
                          status=[0.0, 0.0, 0.0], cancelled=(), load=dump_value,
                          pack=dump_value, per_thread=True)
        done = reports[-1]
        assert done.busy >= 0.06
        if busy_cpu:
            assert done.cpu >= 0.055  # it kept a CPU busy
        else:
            assert done.cpu < 0.03  # it waited
