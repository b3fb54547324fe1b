"""The threads a thread trial starts are the ones that then run the call:
``_threadpool`` keeps them between tasks. Real threads, real GIL-releasing
work (sleeps), and a real fork."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from parloop import _scope, _threadpool, parallel_for, worker_id

RAN_ON: dict[int, int] = {}  # item -> the ident of the thread that ran it


def _nap_and_note(index: int) -> int:
    time.sleep(0.005)
    RAN_ON[index] = threading.get_ident()
    return index


@pytest.mark.timeout(60)
def test_the_trials_helper_thread_runs_the_rest_of_the_call() -> None:
    RAN_ON.clear()
    fn = parallel_for(_nap_and_note)
    assert fn(range(80)) == list(range(80))
    plan = fn.last_plan
    assert plan is not None and plan.backend == "thread", plan.reason
    probed = int(re.search(r"probed (\d+) item", plan.reason).group(1))  # type: ignore[union-attr]
    caller = threading.get_ident()
    helpers = {RAN_ON[i] for i in range(probed)} - {caller}
    assert len(helpers) == 1, "the trial runs on the caller and one helper"
    pool = {RAN_ON[i] for i in range(probed, 80)}
    assert caller not in pool
    assert helpers <= pool, "the pool took the trial's thread instead of starting a new one"


def _id_and_thread(_: int) -> tuple[int, int]:
    time.sleep(0.01)  # long enough that both threads take items
    return worker_id(), threading.get_ident()


@pytest.mark.timeout(30)
def test_a_thread_back_from_a_pool_carries_nothing_of_it() -> None:
    ran = parallel_for(_id_and_thread, backend="thread", workers=2)(range(16))
    assert {number for number, _ in ran} == {0, 1}
    pool_threads = {ident for _, ident in ran}
    _scope.warm_pools.close_all()  # the pool's threads go back to _threadpool
    deadline = time.monotonic() + 10
    while not pool_threads <= {t.ident for t in _threadpool.idle_threads()}:
        assert time.monotonic() < deadline, "the pool's threads never became idle"
        time.sleep(0.01)
    again = _threadpool.take(2)  # the most recently idle first: both of the pool's
    assert {worker.thread.ident for worker in again} == pool_threads
    seen: list[int] = []
    for worker in again:
        done = threading.Event()
        worker.run(lambda done=done: (seen.append(worker_id()), done.set()))  # type: ignore[misc]
        assert done.wait(10)
    assert seen == [0, 0], "outside a pool, worker_id() is the caller's 0"


@pytest.mark.timeout(30)
def test_idle_threads_are_not_handed_out_in_a_forked_child() -> None:
    warm = _threadpool.take(1)[0]  # make sure one is idle, then fork
    finished = threading.Event()
    warm.run(finished.set)
    assert finished.wait(10)
    time.sleep(0.05)  # back on the idle list
    pid = os.fork()
    if pid == 0:  # the child: the parent's idle threads do not exist here
        code = 1
        try:
            ran = threading.Event()
            _threadpool.take(1)[0].run(ran.set)
            code = 0 if ran.wait(5) else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.timeout(60)
def test_idle_threads_do_not_keep_a_pool_from_forking() -> None:
    # A trial's helper waits, idle, after a call that stayed serial; the
    # next process pool still forks (the helper ends first: CPython 3.12+
    # warns about forking a process with threads, here made an error).
    script = textwrap.dedent("""
        import threading, time
        from parloop import _threadpool, parallel_for
        from parloop._cpu import default_start_method
        helper = _threadpool.take(1)[0]
        ran = threading.Event()
        helper.run(ran.set)
        assert ran.wait(10)
        while not _threadpool.idle_threads():
            time.sleep(0.01)
        assert default_start_method() == "fork", default_start_method()
        print(parallel_for(abs, backend="process", workers=2)([-1, -2, -3]),
              len(_threadpool.idle_threads()))
    """)
    out = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-c", script],
                         capture_output=True, text=True, timeout=50)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[1, 2, 3] 0"  # forked, with the idle helper gone
