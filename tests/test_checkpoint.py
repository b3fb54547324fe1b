"""``checkpoint=``: finished results survive an interrupted run, and a rerun
runs only what is left. Interruptions are real: SIGKILL, SIGINT, an item's
exception, in a script run as a separate process (tests/scripts/checkpointed.py)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import identity, sleep_then, square

from parloop import Checkpoint, CheckpointError, ParloopWarning, parallel_for

SCRIPT = Path(__file__).parent / "scripts" / "checkpointed.py"


# -- helpers ------------------------------------------------------------------

_runs: list[Run] = []


@pytest.fixture(autouse=True)
def _no_run_left() -> Iterator[None]:
    """A script a failed test left running is killed, and its pipes closed."""
    yield
    while _runs:
        run = _runs.pop()
        if run.proc.poll() is None:
            run.proc.kill()
        run.proc.communicate(timeout=30)


class Run:
    """One run of the checkpointed script."""

    def __init__(self, db: Path, log: Path, backend: str, count: int, *extra: str) -> None:
        _runs.append(self)
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), str(db), str(log), backend, str(count), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.started = json.loads(self.proc.stdout.readline())["started"]

    def ran(self) -> list[int]:
        """The items this run finished (its log)."""
        if not self.log.exists():
            return []
        return [int(line) for line in self.log.read_text().split()]

    def wait_until(self, test: Any, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while not test():
            assert self.proc.poll() is None, self.finish()
            assert time.monotonic() < deadline, "timed out waiting"
            time.sleep(0.02)

    def finish(self, seconds: float = 120) -> tuple[int, dict[str, Any], str]:
        out, err = self.proc.communicate(timeout=seconds)
        facts: dict[str, Any] = {}
        for line in out.splitlines():
            facts.update(json.loads(line))
        return self.proc.returncode, facts, err


def stored(db: Path) -> int:
    """How many results the file holds (as another process would read it)."""
    return sum(row.done for row in Checkpoint(db).summary())


def ran_to_the_end(db: Path, log: Path, backend: str, count: int, *extra: str
                   ) -> tuple[dict[str, Any], list[int]]:
    run = Run(db, log, backend, count, *extra)
    code, facts, err = run.finish()
    assert code == 0, err
    return facts, run.ran()


# -- interrupted runs, resumed ------------------------------------------------

@pytest.mark.no_census
@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["serial", "process"])
def test_a_run_killed_part_way_reruns_only_the_items_not_stored(
        tmp_path: Path, backend: str) -> None:
    db, count = tmp_path / "sweep.db", 60
    first = Run(db, tmp_path / "first.log", backend, count, "--sleep", "0.05")
    first.wait_until(lambda: db.exists() and stored(db) > 0)  # a batch is committed
    os.kill(first.proc.pid, signal.SIGKILL)
    first.finish()
    kept = stored(db)
    assert 0 < kept < count
    assert kept <= len(first.ran())  # nothing is stored that did not finish
    facts, ran = ran_to_the_end(db, tmp_path / "second.log", backend, count, "--sleep", "0.05")
    assert facts["results"] == [x * x for x in range(count)]
    assert len(ran) == count - kept  # only what was not stored ran again
    assert facts["restored"] == kept
    assert stored(db) == count


@pytest.mark.no_census
@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["serial", "process"])
def test_ctrl_c_stores_every_finished_result_then_the_rerun_does_the_rest(
        tmp_path: Path, backend: str) -> None:
    db, count = tmp_path / "sweep.db", 40
    first = Run(db, tmp_path / "first.log", backend, count, "--sleep", "0.1")
    first.wait_until(lambda: len(first.ran()) >= 6)
    first.proc.send_signal(signal.SIGINT)
    code, _, err = first.finish()
    assert code != 0 and "KeyboardInterrupt" in err, err
    kept, finished = stored(db), len(first.ran())
    if backend == "serial":  # the caller ran every finished item, and stored each
        assert kept == finished
    else:
        # Every result that reached the caller is stored. A worker's last one
        # may have been on its way (the item logs itself before it returns,
        # and its report may be read but not yet handed on): at most two per
        # worker are lost with the workers, and run again.
        assert finished - 4 <= kept <= finished
    facts, ran = ran_to_the_end(db, tmp_path / "second.log", backend, count, "--sleep", "0.1")
    assert facts["results"] == [x * x for x in range(count)]
    assert len(ran) == count - kept
    assert sorted(ran + first.ran()) == sorted(set(ran + first.ran())) or backend == "process"


@pytest.mark.no_census
@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["serial", "thread", "process"])
def test_after_an_items_exception_the_rerun_runs_it_and_what_was_not_reached(
        tmp_path: Path, backend: str) -> None:
    db, count = tmp_path / "sweep.db", 30
    first = Run(db, tmp_path / "first.log", backend, count, "--sleep", "0.01", "--fail", "12")
    code, _, err = first.finish()
    assert code != 0 and "ValueError: item 12 failed" in err, err
    if sys.version_info >= (3, 11):  # tracebacks print notes from 3.11 on
        assert "raised by item #12" in err
    kept = stored(db)
    assert 12 <= kept < count  # everything before the failure, and what finished beside it
    second = tmp_path / "second.log"
    Path(str(second) + ".fixed").touch()  # the bug is fixed (the code stays the same)
    facts, ran = ran_to_the_end(db, second, backend, count,
                                "--sleep", "0.01", "--fail", "12")
    assert facts["results"] == [x * x for x in range(count)]
    assert 12 in ran and len(ran) == count - kept


@pytest.mark.no_census
@pytest.mark.timeout(120)
def test_editing_the_function_invalidates_its_results_and_a_comment_does_not(
        tmp_path: Path) -> None:
    db, count = tmp_path / "sweep.db", 10
    ran_to_the_end(db, tmp_path / "v1.log", "serial", count, "--version", "1")
    facts, ran = ran_to_the_end(db, tmp_path / "v3.log", "serial", count, "--version", "3")
    assert ran == [] and facts["restored"] == count  # same code: every result reused
    facts, ran = ran_to_the_end(db, tmp_path / "v2.log", "serial", count, "--version", "2")
    assert facts["results"] == [x * x + 1 for x in range(count)] and len(ran) == count
    facts, ran = ran_to_the_end(db, tmp_path / "v1b.log", "serial", count, "--version", "1")
    assert ran == [] and facts["results"] == [x * x for x in range(count)]  # v1's still there


@pytest.mark.no_census
@pytest.mark.timeout(120)
def test_two_processes_on_one_file_the_second_gets_a_clear_error(tmp_path: Path) -> None:
    db, count = tmp_path / "sweep.db", 200
    first = Run(db, tmp_path / "first.log", "serial", count, "--sleep", "0.05")
    try:
        first.wait_until(lambda: len(first.ran()) >= 1)
        second = Run(db, tmp_path / "second.log", "serial", count, "--sleep", "0.05")
        code, _, err = second.finish()
        assert code != 0 and "CheckpointError" in err, err
        assert f"in process {first.proc.pid}" in err and str(db) in err
        assert second.ran() == []
        # Another function on the same file runs beside it.
        facts, ran = ran_to_the_end(db, tmp_path / "other.log", "serial", 5, "--other")
        assert facts["results"] == [0, -1, -2, -3, -4] and len(ran) == 5
    finally:
        os.kill(first.proc.pid, signal.SIGKILL)  # the kernel drops its claim with it
        first.finish()
    kept = stored(db) - 5
    facts, ran = ran_to_the_end(db, tmp_path / "third.log", "serial", count)
    assert len(ran) == count - kept and facts["results"] == [x * x for x in range(count)]


# -- bad files ----------------------------------------------------------------

def test_a_file_that_is_not_sqlite_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("my notes, not a database\n" * 100)
    with pytest.raises(CheckpointError, match=r"notes\.txt.*is not a parloop checkpoint"):
        parallel_for(square, checkpoint=str(path))(range(3))
    assert path.read_text().startswith("my notes")  # untouched


def test_a_foreign_sqlite_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE users (name TEXT)")
        db.commit()
    with pytest.raises(CheckpointError, match=r"app\.db.*SQLite file but not a parloop checkpoint"):
        parallel_for(square, checkpoint=path)(range(3))
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert [r[0] for r in db.execute("SELECT name FROM sqlite_master")] == ["users"]


def test_a_damaged_checkpoint_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "sweep.db"
    parallel_for(square, checkpoint=path)(range(50))
    data = bytearray(path.read_bytes())
    data[:100] = b"\x07" * 100  # the header
    path.write_bytes(bytes(data))
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    with pytest.raises(CheckpointError, match=r"sweep\.db"):
        parallel_for(square, checkpoint=path)(range(50))


def test_a_folder_that_does_not_exist_is_an_error_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"nowhere/sweep\.db"):
        parallel_for(square, checkpoint=tmp_path / "nowhere" / "sweep.db")(range(3))


def test_a_wrong_option_names_itself() -> None:
    with pytest.raises(TypeError, match="'checkpoint' must be a file name"):
        parallel_for(square, checkpoint=3)
    with pytest.raises(TypeError, match="Checkpoint key must be a function"):
        Checkpoint("x.db", key="name")


# -- what a call sees ---------------------------------------------------------

def test_every_backend_reuses_what_is_stored(tmp_path: Path, backend: dict[str, Any]) -> None:
    db = tmp_path / "sweep.db"
    fn = parallel_for(square, checkpoint=db, **backend)
    assert fn(range(20)) == [x * x for x in range(20)]
    assert fn.last_plan is not None and fn.last_plan.stored == 20
    assert fn(range(30)) == [x * x for x in range(30)]
    plan = fn.last_plan
    assert plan.restored == 20 and plan.stored == 10 and plan.items == 10
    assert "20 results read from the checkpoint" in plan.reason
    assert fn(range(30)) == [x * x for x in range(30)]
    assert fn.last_plan.restored == 30 and fn.last_plan.items == 0


@pytest.mark.parametrize("ordered", [True, False])
def test_iter_yields_stored_results_in_order_or_as_completed(tmp_path: Path,
                                                              ordered: bool) -> None:
    db = tmp_path / "sweep.db"
    parallel_for(sleep_then, checkpoint=db)([0.0] * 3 + [0.01] * 3)  # keys: the items
    delays = [0.0, 0.3, 0.01, 0.02, 0.0, 0.05]  # 0.0 and 0.01 are stored
    fn = parallel_for(sleep_then, checkpoint=db, ordered=ordered, backend="thread", workers=2,
                      chunksize=1)
    got = list(fn.iter(delays))
    if ordered:
        assert got == delays
    else:
        assert sorted(got) == sorted(delays)
        assert got == [0.0, 0.01, 0.0, 0.02, 0.05, 0.3]  # the stored ones first, at once
    assert fn.last_plan is not None and fn.last_plan.restored == 3


def test_a_lazy_input_is_read_lazily_and_resumed(tmp_path: Path) -> None:
    db = tmp_path / "sweep.db"
    fn = parallel_for(square, checkpoint=db)
    seen = []

    def numbers() -> Iterator[int]:
        for x in range(100_000):
            seen.append(x)
            yield x

    for result in fn.iter(numbers()):
        if result == 49 * 49:
            break
    # It stopped reading when the consumer left. (With 100 items, a batch of
    # tiny work, which grows to ~20 ms, once took them all: CI, stop 20.)
    assert len(seen) < 100_000
    assert fn(x for x in range(200)) == [x * x for x in range(200)]
    assert fn.last_plan is not None and fn.last_plan.restored >= 50


def test_the_progress_bar_counts_stored_results(tmp_path: Path) -> None:
    db = tmp_path / "sweep.db"
    parallel_for(square, checkpoint=db)(range(10))
    seen: list[tuple[int, int | None]] = []
    parallel_for(square, checkpoint=db, progress=lambda d, t: seen.append((d, t)))(range(25))
    assert seen[-1] == (25, 25)


def test_errors_are_not_stored_by_default_and_stored_when_asked(tmp_path: Path) -> None:
    db = tmp_path / "sweep.db"
    calls: list[int] = []

    def shaky(x: int) -> float:
        calls.append(x)
        return 1 / x

    fn = parallel_for(shaky, checkpoint=db, errors="return", backend="serial")
    first = fn([0, 1, 2])
    assert isinstance(first[0], ZeroDivisionError) and first[1:] == [1.0, 0.5]
    calls.clear()
    fn([0, 1, 2])
    assert calls == [0]  # the error ran again; the results did not
    keeping = parallel_for(shaky, errors="return", backend="serial",
                           checkpoint=Checkpoint(db, store_errors=True))
    keeping([0, 1, 2])
    calls.clear()
    again = keeping([5, 0, 1])
    assert calls == [5]
    assert isinstance(again[1], ZeroDivisionError)
    assert any("raised by item #1" in n for n in again[1].__notes__)  # its place in this call
    assert any("stored in the checkpoint" in n for n in again[1].__notes__)
    raising = parallel_for(shaky, backend="serial", checkpoint=Checkpoint(db, store_errors=True))
    with pytest.raises(ZeroDivisionError):
        raising([1, 0])
    assert calls == [5]  # raised from the file, without running


def test_an_unpicklable_result_warns_once_and_runs_again_next_time(tmp_path: Path) -> None:
    db = tmp_path / "sweep.db"
    calls: list[int] = []

    def lock_or_int(x: int) -> Any:
        calls.append(x)
        return threading.Lock() if x % 2 else x

    fn = parallel_for(lock_or_int, checkpoint=db, backend="serial")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn(range(6))
    mine = [w for w in caught if issubclass(w.category, ParloopWarning)]
    assert len(mine) == 1 and "cannot be pickled" in str(mine[0].message)
    calls.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ParloopWarning)
        fn(range(6))
    assert calls == [1, 3, 5]


def test_key_recognises_items_whose_pickle_changes(tmp_path: Path) -> None:
    db = tmp_path / "sweep.db"

    class Job:
        def __init__(self, name: str) -> None:
            self.name, self.made = name, time.perf_counter()  # differs per run

    calls: list[str] = []

    def name_of(job: Job) -> str:
        calls.append(job.name)
        return job.name.upper()

    fn = parallel_for(name_of, backend="serial",
                      checkpoint=Checkpoint(db, key=lambda job: job.name))
    assert fn([Job("a"), Job("b")]) == ["A", "B"]
    assert fn([Job("b"), Job("c"), Job("a")]) == ["B", "C", "A"]
    assert calls == ["a", "b", "c"]


def test_an_unpicklable_item_names_the_item_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"item #1 .*key="):
        parallel_for(identity, checkpoint=tmp_path / "x.db", backend="serial")(
            [1, threading.Lock()])


def test_extra_arguments_are_part_of_the_match(tmp_path: Path) -> None:
    db = tmp_path / "sweep.db"

    def scaled(x: int, factor: int) -> int:
        return x * factor

    fn = parallel_for(scaled, checkpoint=db, backend="serial")
    assert fn([1, 2], 10) == [10, 20]
    assert fn([1, 2], 100) == [100, 200]
    assert fn.last_plan is not None and fn.last_plan.restored == 0


def test_reuse_false_runs_everything_and_clear_forgets(tmp_path: Path) -> None:
    db = tmp_path / "sweep.db"
    calls: list[int] = []

    def tracked(x: int) -> int:
        calls.append(x)
        return x

    parallel_for(tracked, checkpoint=db, backend="serial")(range(5))
    parallel_for(tracked, checkpoint=Checkpoint(db, reuse=False), backend="serial")(range(5))
    assert calls == list(range(5)) * 2
    assert Checkpoint(db).clear(tracked) == 5
    calls.clear()
    parallel_for(tracked, checkpoint=db, backend="serial")(range(5))
    assert calls == list(range(5))


def test_a_block_passes_its_checkpoint_to_every_call(tmp_path: Path) -> None:
    db = tmp_path / "sweep.db"
    with parallel_for(checkpoint=db, workers=2) as pool:
        assert pool.map(square, range(10)) == [x * x for x in range(10)]
        assert pool.map(square, range(12)) == [x * x for x in range(12)]
    assert sum(row.done for row in Checkpoint(db).summary()) == 12


def test_a_second_call_on_the_same_function_while_one_runs_is_refused(tmp_path: Path) -> None:
    fn = parallel_for(square, checkpoint=tmp_path / "sweep.db", backend="serial")
    running = fn.iter(range(10))
    next(running)
    with pytest.raises(CheckpointError, match="already running"):
        fn(range(3))
    running.close()
    assert fn(range(3)) == [0, 1, 4]  # the claim went with the first call


def test_amap_and_aiter_read_back_and_store(tmp_path: Path) -> None:
    import asyncio

    db = tmp_path / "sweep.db"
    fn = parallel_for(square, checkpoint=db, backend="thread", workers=2)

    async def main() -> tuple[list[int], list[int]]:
        first = await fn.amap(range(10))
        second = [x async for x in fn.aiter(range(15))]
        return first, second

    first, second = asyncio.run(main())
    assert first == [x * x for x in range(10)] and second == [x * x for x in range(15)]
    assert fn.last_plan is not None and fn.last_plan.restored == 10
    assert stored(db) == 15


def test_a_checkpoint_written_by_one_process_is_read_by_another(tmp_path: Path) -> None:
    # The file is self-contained: a fresh interpreter (another PYTHONHASHSEED)
    # finds the same keys for the same items and code.
    db = tmp_path / "sweep.db"
    code = ("import sys; sys.path.insert(0, 'tests'); from helpers import identity; "
            "from parloop import parallel_for; f = parallel_for(identity, checkpoint=sys.argv[1]); "
            "f([0, 'x', (2, 3.5), None, b'z', {'k': [1]}]); print(f.last_plan.restored)")
    outputs = []
    for seed in ("1", "2"):
        done = subprocess.run([sys.executable, "-c", code, str(db)], capture_output=True,
                              text=True, timeout=60, env={**os.environ, "PYTHONHASHSEED": seed},
                              cwd=Path(__file__).parents[1])
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout.split())
    assert outputs == [["0"], ["6"]]


def test_the_progress_line_says_how_many_came_from_the_checkpoint(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "sweep.db"
    parallel_for(square, checkpoint=db)(range(10))
    parallel_for(square, checkpoint=db, progress=True)(range(25))
    err = capsys.readouterr().err  # not a terminal: one summary line at the end
    assert "square: 25/25 items (100%), 10 from checkpoint in" in err, err


def test_a_failing_setup_is_never_stored_as_an_items_error(tmp_path: Path) -> None:
    import functools

    from helpers import failing_setup, note_setup, with_state

    from parloop import SetupError

    db, log = tmp_path / "sweep.db", tmp_path / "setup.log"
    keep_errors = Checkpoint(db, store_errors=True)
    failing = parallel_for(with_state, backend="serial", checkpoint=keep_errors,
                           setup=functools.partial(failing_setup, str(log)))
    with pytest.raises(SetupError):
        failing(range(3))
    assert stored(db) == 0
    working = parallel_for(with_state, backend="serial", checkpoint=keep_errors,
                           setup=functools.partial(note_setup, str(log)))
    assert [r[-1] for r in working(range(3))] == [0, 1, 2]
