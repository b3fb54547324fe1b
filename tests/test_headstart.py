"""The head start: a first item that runs long brings a pool up beside it.

The first tests drive ``HeadStart`` with stand-in steps (a lease that is
only a record), to pin down its decisions: when it fires, who may take
items, and who gives a pool back. The rest run real calls, in this process
and in scripts whose functions live in ``__main__``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from parloop import _headstart, parallel_for
from parloop._headstart import HeadStart
from parloop._input import Input
from parloop.backends.base import Chunk, Job

# -- HeadStart's decisions, with stand-in steps ------------------------------------------------


class _Lease:
    def __init__(self) -> None:
        self.released = threading.Event()

    def release(self, broken: bool = False) -> None:
        self.released.set()


class _Steps:
    """launch, prepare, start and send, recording what ran."""

    def __init__(self, source: Input, start_delay: float = 0.0, per_send: int = 2,
                 fail: bool = False) -> None:
        self.source, self.start_delay, self.per_send, self.fail = source, start_delay, per_send, fail
        self.ran: list[str] = []
        self.lease = _Lease()
        self.job = Job(abs, (), {}, False, True, None)
        self.head: HeadStart | None = None

    def launch(self, wanted: bool) -> None:
        self.ran.append("launch" if wanted else "withdraw")

    def prepare(self) -> None:
        self.ran.append("prepare")

    def start(self) -> Any:
        self.ran.append("start")
        time.sleep(self.start_delay)
        if self.fail:
            raise OSError("no pool today")
        return self.lease

    def send(self, lease: Any) -> list[Chunk]:
        assert self.head is not None and self.head.lock.locked()  # under the caller's lock
        self.ran.append("send")
        chunks = []
        while len(chunks) < self.per_send and self.source.remaining:
            start = self.source.index
            items, _ = self.source.take(1)
            chunks.append(Chunk(self.job, start, items))
        return chunks

    def make(self, after: float) -> HeadStart:
        self.head = HeadStart(self.launch, self.prepare, self.start, self.send, after)  # type: ignore[arg-type]
        return self.head

    def armed(self, after: float) -> HeadStart:
        """A head start armed as the caller takes its first item."""
        head = self.make(after)
        self.source.take(1)
        head.arm()
        return head


def _wait_for(condition: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


@pytest.mark.timeout(30)
def test_a_quick_first_item_closes_it_before_anything_starts() -> None:
    source = Input(list(range(10)))
    steps = _Steps(source)
    head = steps.armed(after=0.02)
    assert head.settle() is False  # the first item took no time at all
    time.sleep(0.1)  # past when it would have started the fork server
    assert steps.ran == []
    assert not any(t.name == "parloop-head-start" for t in threading.enumerate())
    assert head.take(source) == ([1], None)  # the caller reads on, alone


@pytest.mark.timeout(30)
def test_once_fired_the_pool_takes_the_next_items_and_the_caller_stops_reading() -> None:
    source = Input(list(range(10)))
    steps = _Steps(source)
    head = steps.armed(after=0.02)
    _wait_for(lambda: head.sent)
    assert head.settle() is True
    assert steps.ran == ["launch", "prepare", "start", "send"]
    assert [(c.start, c.items) for c in head.sent] == [(1, [1]), (2, [2])]
    assert head.take(source) is None  # the pool has taken over
    assert source.index == 3
    assert head.close() is steps.lease  # the caller waits for the sent items there
    assert not steps.lease.released.is_set()


@pytest.mark.timeout(30)
def test_the_caller_keeps_running_items_while_the_pool_starts() -> None:
    source = Input(list(range(5)))
    steps = _Steps(source, start_delay=0.3)
    head = steps.armed(after=0.01)
    _wait_for(lambda: head.fired_at is not None)
    assert head.settle() is True
    ran_here = []
    while (taken := head.take(source)) is not None:
        items, _ = taken
        if not items:
            break
        ran_here.extend(items)
    assert ran_here == [1, 2, 3, 4]  # none waited for the pool
    began = time.monotonic()
    assert head.close() is None  # nothing was sent; the call does not wait
    assert time.monotonic() - began < 0.2
    assert steps.lease.released.wait(10)  # the starter gives the pool back once up
    assert head.sent == [] and steps.ran == ["launch", "prepare", "start"]


@pytest.mark.timeout(30)
def test_an_item_that_ends_after_the_launch_withdraws_the_server_and_leaves_no_thread() -> None:
    source = Input(list(range(10)))
    steps = _Steps(source)
    head = steps.armed(after=30.0)  # it would fire only after 30 s
    _wait_for(lambda: "launch" in steps.ran)
    assert head.settle() is False
    assert steps.ran[0] == "launch" and steps.ran[-1] == "withdraw"
    assert "start" not in steps.ran
    # The caller waited for the head start's threads: it may fork now.
    assert not any(t.name == "parloop-head-start" for t in threading.enumerate())
    assert head.take(source) == ([1], None)


@pytest.mark.timeout(30)
def test_a_pool_that_cannot_start_leaves_the_caller_alone() -> None:
    source = Input(list(range(4)))
    steps = _Steps(source, fail=True)
    head = steps.armed(after=0.01)
    _wait_for(lambda: head.error is not None)
    assert isinstance(head.error, OSError)
    assert head.take(source) == ([1], None)
    assert head.close() is None


@pytest.mark.timeout(30)
def test_nothing_to_send_gives_the_pool_back() -> None:
    source = Input(list(range(4)))
    steps = _Steps(source, per_send=0)
    head = steps.armed(after=0.01)
    assert steps.lease.released.wait(10)
    assert head.closed and head.sent == []
    assert head.take(source) == ([1], None)


# -- real calls ----------------------------------------------------------------------------------


def _pid_after(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def _raise_first(seconds: float) -> float:
    time.sleep(abs(seconds))
    if seconds < 0:
        raise ValueError("the first item is bad")
    return seconds


@pytest.mark.timeout(60)
def test_two_heavy_items_run_at_once_on_the_first_call() -> None:
    fn = parallel_for(_pid_after)
    pids = fn([0.5, 0.5])
    plan = fn.last_plan
    assert plan is not None and plan.backend == "process"
    assert "head start" in plan.reason, plan.reason
    assert pids[0] == os.getpid() and pids[1] != os.getpid()  # the second went to a worker


@pytest.mark.timeout(60)
def test_a_first_item_that_raises_cancels_what_the_head_start_sent() -> None:
    fn = parallel_for(_raise_first, workers=2)
    with pytest.raises(ValueError, match="the first item is bad"):
        fn([-0.3, 0.3, 0.3, 0.3])
    assert fn([0.01] * 4) == [0.01] * 4  # the pool is usable, nothing left over


@pytest.mark.timeout(60)
def test_quick_items_make_no_head_start() -> None:
    fn = parallel_for(_pid_after)
    fn([0.0005] * 40)
    plan = fn.last_plan
    assert plan is not None and "head start" not in plan.reason


def _script(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(body))
    return subprocess.run([sys.executable, str(path)], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)


@pytest.mark.timeout(90)
def test_every_item_runs_once_whether_the_caller_or_the_pool_gets_it(tmp_path: Path) -> None:
    # Items long enough to fire the head start, few enough that the caller
    # may finish some of them before the pool is up: each item appends its
    # index to a file, and every index must appear exactly once.
    for seconds, count in ((0.15, 3), (0.12, 6), (0.3, 4)):
        log = tmp_path / f"ran-{count}.txt"
        result = _script(tmp_path, f"""
            import json, os, time
            from parloop import parallel_for

            def work(index):
                time.sleep({seconds})
                with open({str(log)!r}, "a") as out:
                    out.write(f"{{index}}\\n")
                return index * 10

            fn = parallel_for(work)
            print(json.dumps({{"results": fn(list(range({count}))), "plan": str(fn.last_plan)}}))
        """)
        assert result.returncode == 0, result.stderr
        assert result.stderr == "", result.stderr  # nothing printed at exit either
        assert json.loads(result.stdout)["results"] == [i * 10 for i in range(count)]
        assert sorted(int(line) for line in log.read_text().split()) == list(range(count))


@pytest.mark.timeout(60)
def test_a_fork_server_launched_for_nothing_is_stopped_and_the_caller_forks(
        tmp_path: Path) -> None:
    # First items of 40 ms: past the launch of the fork server (20 ms in),
    # short of the head start (75 ms). The probe then wants a pool; the
    # caller has no other thread, so it forks one, and the server, which
    # has forked nothing, is stopped (its boot would slow the workers).
    result = _script(tmp_path, """
        import json, os, time
        from parloop import parallel_for
        from parloop.backends.process import server

        def work(x):
            end = time.perf_counter() + 0.04
            while time.perf_counter() < end:
                pass
            return os.getpid()

        fn = parallel_for(work)
        pids = fn(list(range(8)))
        print(json.dumps({"server": server.server_pid(), "launched": server._server.pid,
                          "reason": fn.last_plan.reason, "pids": len(set(pids))}))
    """)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    facts = json.loads(result.stdout)
    assert "head start" not in facts["reason"], facts
    assert facts["pids"] >= 2, facts  # a pool ran items
    assert facts["server"] is None and facts["launched"] is None, facts


@pytest.mark.timeout(60)
def test_a_script_ends_promptly_when_the_pool_was_not_needed(tmp_path: Path) -> None:
    result = _script(tmp_path, """
        import time
        from parloop import parallel_for

        @parallel_for
        def work(x):
            time.sleep(0.03)
            return x

        assert work([1, 2]) == [1, 2]
        print(work.last_plan)
    """)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_it_arms_only_for_a_sequence_with_nothing_known() -> None:
    job = Job(abs, (), {}, False, True, None)
    from parloop._options import resolve

    options = resolve({}, None)
    assert _headstart.arrange(job, Input([1, 2]), options, None, lambda: 2) is not None
    assert _headstart.arrange(job, Input(iter([1, 2])), options, None, lambda: 2) is None
    assert _headstart.arrange(job, Input([1]), options, None, lambda: 2) is None
    forced = resolve({"backend": "process"}, None)
    assert _headstart.arrange(job, Input([1, 2]), forced, None, lambda: 2) is None
    fork = resolve({"start_method": "fork"}, None)
    assert _headstart.arrange(job, Input([1, 2]), fork, None, lambda: 2) is None
