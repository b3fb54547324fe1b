"""What earlier runs measured: a script's second run starts every core at
once. Real interpreters, one after another, sharing a cost file."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from parloop import _costs, _memory

SCRIPT = textwrap.dedent("""
    import sys, time
    from parloop import parallel_for

    def heavy(x):
        end = time.thread_time() + 0.3
        while time.thread_time() < end:
            pass
        return x

    f = parallel_for(heavy)
    assert f(range(int(sys.argv[1]))) == list(range(int(sys.argv[1])))
    print(f.last_plan.backend, "|", f.last_plan.reason)
""")


def run(script: Path, cache: str, items: int = 2) -> tuple[str, str]:
    env = {**os.environ, "PARLOOP_COST_CACHE": cache}
    done = subprocess.run([sys.executable, str(script), str(items)], capture_output=True,
                          text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    backend, _, reason = done.stdout.strip().partition(" | ")
    return backend, reason


@pytest.mark.no_census
@pytest.mark.timeout(120)
def test_a_second_run_of_a_script_sends_its_heavy_items_to_a_pool_at_once(
        tmp_path: Path) -> None:
    script = tmp_path / "heavy.py"
    script.write_text(SCRIPT)
    cache = str(tmp_path / "cache")
    backend, reason = run(script, cache)
    assert backend == "process" and "head start" in reason  # the first run measures
    assert (tmp_path / "cache" / _memory.FILE).exists()
    backend, reason = run(script, cache)
    assert backend == "process"
    assert reason.startswith("no probe: the workers of an earlier run (remembered in the cost "
                             "cache) measured"), reason
    # An edit to the function is a new function: measured again.
    script.write_text(SCRIPT.replace("return x", "return x + 0"))
    assert "head start" in run(script, cache)[1]
    # Switched off: nothing read, nothing written.
    assert "head start" in run(script, "off")[1]


@pytest.mark.no_census
@pytest.mark.timeout(120)
def test_a_folder_that_cannot_be_written_is_not_an_error(tmp_path: Path) -> None:
    script = tmp_path / "heavy.py"
    script.write_text(SCRIPT)
    blocked = tmp_path / "a-file"  # a file where the folder should be: even root cannot
    blocked.write_text("")
    backend, reason = run(script, str(blocked / "cache"))
    assert backend == "process" and "head start" in reason
    assert blocked.read_text() == ""


def test_what_a_run_measured_is_merged_with_what_others_wrote(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    monkeypatch.setenv("PARLOOP_COST_CACHE", str(tmp_path))
    _memory.forget()

    def first(x: int) -> int:
        return x

    def second(x: int) -> int:
        return -x

    try:
        _memory.remember(first, {"process": 0.5, "serial": 0.4, "run": 1.0})
        _memory._write()  # another process's run ends
        _memory.forget()
        _memory.remember(second, {"thread": 0.1})
        _memory._write()
        _memory.forget()
        assert _memory.recall(first) == {"process": 0.5, "serial": 0.4}  # "run" is not kept
        assert _memory.recall(second) == {"thread": 0.1}
        path = tmp_path / _memory.FILE
        # A damaged line is skipped; the others still read.
        path.write_text(path.read_text() + "garbage\tline\n\x00\n")
        _memory.forget()
        assert _memory.recall(first) == {"process": 0.5, "serial": 0.4}
        assert not list(tmp_path.glob("*.tmp"))  # no temporary file left behind
    finally:
        _memory.forget()


def test_writers_at_once_leave_one_whole_file(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLOOP_COST_CACHE", str(tmp_path))
    script = textwrap.dedent(f"""
        import os
        os.environ["PARLOOP_COST_CACHE"] = {str(tmp_path)!r}
        from parloop import _memory
        def f{{n}}(x):
            return x * {{n}}
        _memory.remember(f{{n}}, {{{{"process": 0.{{n}}}}}})
    """)
    processes = [subprocess.Popen([sys.executable, "-c", script.format(n=n)])
                 for n in range(1, 7)]
    assert [p.wait(60) for p in processes] == [0] * 6
    lines = (tmp_path / _memory.FILE).read_text().splitlines()
    assert 1 <= len(lines) <= 6 and all(len(line.split("\t")) == 5 for line in lines)


def test_functions_that_cannot_be_named_across_runs_are_not_kept() -> None:
    class Holder:
        def __call__(self, x: int) -> int:
            return x

    import functools
    assert _memory.key(functools.partial(print, Holder())) is None  # an address in its name
    assert _memory.key(functools.partial(print, 3)) is not None
    assert _memory.key(functools.partial(print, 3)) != _memory.key(functools.partial(print, 4))


def test_history_in_memory_comes_first() -> None:
    def fn(x: int) -> int:
        return x

    _costs.remember(fn, 0.25, "process")
    assert _costs.recall(fn) == {"process": 0.25}
    assert _memory.recall(fn) == {}  # off in tests: nothing read from disk
