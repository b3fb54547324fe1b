"""``teardown=``: each worker's state ends with its call, in the thread that
made it, and what every teardown returned reaches the caller; real processes,
real threads, real crashes."""

from __future__ import annotations

import functools
import os
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from helpers import close_failing, close_noted, counted, die_once, note_setup, run_script, square

from parloop import SetupError, parallel_for


def setups(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_every_state_ends_where_it_was_made_and_the_caller_gets_each_result(
        tmp_path: Path, backend: dict[str, Any]) -> None:
    log = tmp_path / "setup.log"
    fn = parallel_for(counted, setup=functools.partial(note_setup, str(log)),
                      teardown=close_noted, chunksize=1, **backend)
    assert fn(range(12), 0.01) == list(range(12))
    ended = fn.last_plan.teardown_results  # type: ignore[union-attr]
    assert len(ended) == setups(log) >= 1  # one per state made: none missed, none twice
    assert sum(result["n"] for result in ended) == 12  # every item's state was ended
    for result in ended:
        assert result["made"] == result["ended"]  # same process, same thread, same worker_id()
    ids = [result["ended"][2] for result in ended]
    assert ids == sorted(ids)  # in worker_id() order
    if backend["backend"] != "serial":
        assert {result["ended"][0] for result in ended} != {os.getpid()} \
            or backend["backend"] == "thread"


def test_a_state_lives_for_one_call(tmp_path: Path) -> None:
    log = tmp_path / "setup.log"
    fn = parallel_for(counted, setup=functools.partial(note_setup, str(log)),
                      teardown=close_noted, backend="process", workers=2, chunksize=1)
    fn(range(4), 0.01)
    first = setups(log)
    fn(range(4), 0.01)
    assert setups(log) == 2 * first  # made again: the first call's states were ended
    assert sum(r["n"] for r in fn.last_plan.teardown_results) == 4  # type: ignore[union-attr]


def test_auto_ends_the_callers_state_first_then_the_workers(tmp_path: Path) -> None:
    log = tmp_path / "setup.log"
    fn = parallel_for(counted, setup=functools.partial(note_setup, str(log)),
                      teardown=close_noted, workers=2)
    fn(range(10), 0.05)
    plan = fn.last_plan
    assert plan is not None
    ended = plan.teardown_results
    assert sum(r["n"] for r in ended) == 10
    if plan.backend == "process":
        assert ended[0]["ended"][0] == os.getpid()  # the probe's state, in the caller
        assert all(r["ended"][0] != os.getpid() for r in ended[1:])


def test_a_failing_teardown_raises_after_every_other_teardown_ran(tmp_path: Path) -> None:
    log = tmp_path / "setup.log"
    fn = parallel_for(counted, setup=functools.partial(note_setup, str(log)),
                      teardown=close_failing, backend="process", workers=2, chunksize=1)
    with pytest.raises(SetupError, match=r"teardown function close_failing\(\) raised "
                                         r"OSError: the disk is full, in worker 1") as caught:
        fn(range(8), 0.05)
    assert "OSError: the disk is full" in str(caught.value.__cause__)  # the worker's traceback
    ended = fn.last_plan.teardown_results  # type: ignore[union-attr]
    assert [type(r) for r in ended] == [dict, SetupError]  # worker 0's result is kept
    returning = parallel_for(counted, setup=functools.partial(note_setup, str(log)),
                             teardown=close_failing, backend="process", workers=2, chunksize=1,
                             errors="return")
    assert returning(range(8), 0.05) == list(range(8))  # errors="return": in the list
    assert [type(r) for r in returning.last_plan.teardown_results] == [dict, SetupError]  # type: ignore[union-attr]


def test_a_dead_worker_gives_nothing_back_and_its_replacement_ends_its_own(
        tmp_path: Path) -> None:
    log = tmp_path / "setup.log"

    def die_on_2(state: dict[str, Any], x: int) -> int:
        counted(state, x)
        return die_once(x, str(tmp_path))

    fn = parallel_for(die_on_2, setup=functools.partial(note_setup, str(log)),
                      teardown=close_noted, backend="process", workers=2, chunksize=1,
                      errors="return", start_method="fork")
    results = fn(range(8))
    assert [r for r in results if not isinstance(r, BaseException)] == [0, 1, 3, 4, 5, 6, 7]
    ended = fn.last_plan.teardown_results  # type: ignore[union-attr]
    assert len(ended) == setups(log) - 1  # every state but the dead worker's
    assert {r["ended"][2] for r in ended} <= {0, 1}


def test_break_cancel_and_an_items_error_still_end_every_state(tmp_path: Path) -> None:
    log = tmp_path / "setup.log"
    ended: list[Any] = []
    fn = parallel_for(counted, setup=functools.partial(note_setup, str(log)),
                      teardown=close_noted, backend="process", workers=2, chunksize=1)
    for result in fn.iter(range(100), 0.02):
        if result == 3:
            break
    ended = fn.last_plan.teardown_results  # type: ignore[union-attr]
    assert len(ended) == setups(log) >= 1

    def fails_at_5(state: dict[str, Any], x: int) -> int:
        if x == 5:
            raise ValueError("five")
        return counted(state, x, 0.01)

    failing = parallel_for(fails_at_5, setup=functools.partial(note_setup, str(log)),
                           teardown=close_noted, backend="thread", workers=2, chunksize=1)
    before = setups(log)
    with pytest.raises(ValueError, match="five"):
        failing(range(20))
    assert len(failing.last_plan.teardown_results) == setups(log) - before  # type: ignore[union-attr]


def test_a_blocks_own_setup_ends_with_each_pool_map(tmp_path: Path) -> None:
    log = tmp_path / "setup.log"
    with parallel_for(setup=functools.partial(note_setup, str(log)), teardown=close_noted,
                      backend="process", workers=2, chunksize=1) as pool:
        assert pool.map(counted, range(6), 0.01) == list(range(6))
        assert sum(r["n"] for r in pool.last_plan.teardown_results) == 6  # type: ignore[union-attr]
        assert parallel_for(square)(range(3)) == [0, 1, 4]  # decorated without: no state


def test_threads_sharing_a_block_each_end_their_own_states(tmp_path: Path) -> None:
    log = tmp_path / "setup.log"
    fn = parallel_for(counted, setup=functools.partial(note_setup, str(log)),
                      teardown=close_noted, chunksize=1)
    counts: list[int] = []

    def call() -> None:
        fn(range(6), 0.01)
        counts.append(6)

    with parallel_for(backend="thread", workers=2):
        threads = [threading.Thread(target=call) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert counts == [6] * 4  # no call was stuck behind another's teardown


def test_teardown_needs_setup_and_a_callable() -> None:
    with pytest.raises(TypeError, match="'teardown' ends the state that 'setup' makes"):
        parallel_for(square, teardown=print)
    with pytest.raises(TypeError, match="'teardown' must be a function of one argument"):
        parallel_for(square, setup=dict, teardown=3)


SCRIPT = textwrap.dedent("""
    import os, sys
    from parloop import parallel_for, worker_id

    def connect():
        return {"rows": []}

    def insert(db, x):
        db["rows"].append(x)
        return x

    def commit(db):
        return worker_id(), sorted(db["rows"])

    f = parallel_for(insert, setup=connect, teardown=commit, backend="process", workers=2,
                     chunksize=1, start_method=sys.argv[1])
    f(range(10))
    print(f.last_plan.teardown_results)
""")


@pytest.mark.no_census
@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_a_scripts_own_teardown_runs_under_every_start_method(tmp_path: Path,
                                                              method: str) -> None:
    ended = eval(run_script(tmp_path / "commit.py", SCRIPT, method))  # no __main__ guard
    assert sorted(x for _, rows in ended for x in rows) == list(range(10))
    assert [ident for ident, _ in ended] == sorted({ident for ident, _ in ended})
