"""``setup=``: a state made once per worker and passed to every item before
it, and ``worker_id()``, on every backend, with real processes."""

from __future__ import annotations

import functools
import os
import textwrap
from pathlib import Path
from typing import Any

import pytest
from helpers import die_once, failing_setup, note_setup, run_script, square, with_state

from parloop import SetupError, parallel_for, worker_id


def setups(log: Path) -> list[tuple[int, int, int]]:
    """(pid, thread, worker id) of each run of the setup."""
    if not log.exists():
        return []
    return [tuple(map(int, line.split())) for line in log.read_text().splitlines()]  # type: ignore[misc]


def test_each_worker_runs_setup_once_and_its_items_get_the_state(
        tmp_path: Path, backend: dict[str, Any]) -> None:
    log = tmp_path / "setup.log"
    fn = parallel_for(with_state, setup=functools.partial(note_setup, str(log)), chunksize=1,
                      **backend)
    results = fn(range(12), 0.01)
    assert [r[-1] for r in results] == list(range(12))
    made = setups(log)
    where = {(pid, thread) for pid, thread, _ in made}
    assert len(made) == len(where)  # once per worker (process, or thread)
    for state_pid, state_thread, state_id, pid, thread, seen_id, _ in results:
        assert (state_pid, state_thread) == (pid, thread)  # the state made where it runs
        assert state_id == seen_id  # worker_id() is the same in setup and in the item
    ids = {r[5] for r in results}
    expected = {0} if backend["backend"] == "serial" else {0, 1}
    assert ids <= expected and len(made) <= len(expected)
    fn(range(12), 0.01)
    if backend["backend"] == "process":  # a warm worker keeps its state for the next call
        assert setups(log) == made


def test_serial_runs_setup_exactly_once_in_the_caller(tmp_path: Path) -> None:
    log = tmp_path / "setup.log"
    fn = parallel_for(with_state, setup=functools.partial(note_setup, str(log)), backend="serial")
    fn(range(50))
    fn(range(50))
    assert [(pid, ident) for pid, _, ident in setups(log)] == [(os.getpid(), 0)]


def test_auto_keeps_the_caller_to_one_setup_and_the_workers_to_their_own(tmp_path: Path) -> None:
    log = tmp_path / "setup.log"
    fn = parallel_for(with_state, setup=functools.partial(note_setup, str(log)), workers=2)
    results = fn(range(40), 0.02)  # ~0.8 s of work: a pool pays
    assert [r[-1] for r in results] == list(range(40))
    made = setups(log)
    assert sum(1 for pid, _, _ in made if pid == os.getpid()) <= 1
    assert len({pid for pid, _, _ in made}) == len(made)  # once per process
    assert fn.last_plan is not None


@pytest.mark.parametrize("errors", ["raise", "return"])
def test_a_failing_setup_is_one_error_naming_it(tmp_path: Path, backend: dict[str, Any],
                                                errors: str) -> None:
    log = tmp_path / "setup.log"
    fn = parallel_for(with_state, setup=functools.partial(failing_setup, str(log)),
                      errors=errors, **backend)
    with pytest.raises(SetupError, match=r"setup function failing_setup\(\) raised ValueError: "
                                         r"the model file is missing") as info:
        fn(range(20))
    assert "no item ran there" in str(info.value)
    workers = 1 if backend["backend"] == "serial" else 2
    assert len(setups(log)) <= workers  # not once per item
    before = len(setups(log))
    with pytest.raises(SetupError):
        fn(range(20))
    assert len(setups(log)) > before  # the next call tries again (the cause may be fixed)


def test_a_replaced_worker_keeps_its_worker_id(tmp_path: Path) -> None:
    log = tmp_path / "setup.log"
    fn = parallel_for(with_state, setup=functools.partial(note_setup, str(log)),
                      backend="process", workers=2, chunksize=1, errors="return")
    first = {r[5] for r in fn(range(6), 0.01) if isinstance(r, tuple)}
    crash = parallel_for(die_once, backend="process", workers=2, chunksize=1, errors="return")
    crash(range(4), str(tmp_path), 1)  # one worker dies; the pool replaces it
    again = {r[5] for r in fn(range(6), 0.01) if isinstance(r, tuple)}
    assert first <= {0, 1} and again <= {0, 1}
    assert len({pid for pid, _, _ in setups(log)}) >= len(first)


def test_worker_id_in_the_caller_is_0() -> None:
    assert worker_id() == 0


def test_a_blocks_setup_reaches_its_own_map_only(tmp_path: Path) -> None:
    log = tmp_path / "setup.log"
    squared = parallel_for(square)
    with parallel_for(setup=functools.partial(note_setup, str(log)), workers=2,
                      backend="process") as pool:
        results = pool.map(with_state, range(8))
        assert [r[-1] for r in results] == list(range(8))
        assert squared(range(4)) == [0, 1, 4, 9]  # decorated without setup: no state
    assert 1 <= len(setups(log)) <= 2


def test_a_wrong_setup_option_names_itself() -> None:
    with pytest.raises(TypeError, match="'setup' must be a function of no arguments"):
        parallel_for(square, setup=3)


SCRIPT = textwrap.dedent("""
    import os, sys
    from parloop import parallel_for, worker_id

    def load():
        return {"pid": os.getpid(), "model": [1, 2, 3]}

    def predict(state, x):
        assert state["pid"] == os.getpid()
        return sum(state["model"]) * x, worker_id()

    print(parallel_for(predict, setup=load, backend="process", workers=2,
                       start_method=sys.argv[1])(range(10)))
""")


@pytest.mark.no_census
@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_a_scripts_own_setup_and_function_run_under_every_start_method(
        tmp_path: Path, method: str) -> None:
    results = eval(run_script(tmp_path / "predict.py", SCRIPT, method))  # no __main__ guard
    assert [value for value, _ in results] == [6 * x for x in range(10)]
    assert {ident for _, ident in results} <= {0, 1}
