"""``python -m parloop info`` and ``bench``, run the way a user runs them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from parloop import _cli, cpu_count


def _run(*args: str, cwd: Path | None = None, prefix: tuple[str, ...] = (),
         code: str | None = None) -> subprocess.CompletedProcess[str]:
    command = [*prefix, sys.executable]
    command += ["-c", code] if code is not None else ["-m", "parloop", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=cwd)


def _field(output: str, label: str) -> str:
    match = re.search(rf"^{re.escape(label)}:\s+(.*)$", output, re.MULTILINE)
    assert match, f"no {label!r} line in:\n{output}"
    return match.group(1)


@pytest.mark.timeout(60)
def test_info_reports_cpus_start_method_backends_and_python() -> None:
    done = _run("info")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert _field(out, "usable CPUs").startswith(f"{cpu_count()} usable (host {os.cpu_count()}")
    method = _field(out, "start method")
    expected = "fork" if sys.platform == "linux" else "spawn"  # `python -m` runs one thread
    assert method.startswith(f"{expected} (")
    assert "process, thread, serial: built in" in out
    for name, module in (("dask", "distributed"), ("ray", "ray")):
        installed = subprocess.run([sys.executable, "-c", f"import importlib.util as u; "
                                    f"print(u.find_spec({module!r}) is not None)"],
                                   capture_output=True, text=True, timeout=30).stdout.strip()
        state = "installed" if installed == "True" else "not installed"
        assert re.search(rf"^\s+{name}: {state}\b", out, re.MULTILINE), out
    python = _field(out, "python")
    assert sys.executable in python
    free_threaded = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
    assert ("free-threaded build" in python) is free_threaded


@pytest.mark.timeout(60)
def test_info_does_not_import_optional_backends() -> None:
    # Importing dask or ray takes seconds and may fail; info only looks them up.
    code = ("import sys; from parloop._cli import main; main(['info']); "
            "print('LOADED', [m for m in ('distributed', 'ray', 'tqdm') if m in sys.modules])")
    done = _run(code=code)
    assert done.returncode == 0, done.stderr
    assert "LOADED []" in done.stdout


@pytest.mark.timeout(60)
def test_info_under_taskset_reports_one_usable_cpu() -> None:
    taskset = shutil.which("taskset")
    if taskset is None:
        pytest.skip("taskset is not installed")
    done = _run("info", prefix=(taskset, "-c", "0"))
    assert done.returncode == 0, done.stderr
    cpus = _field(done.stdout, "usable CPUs")
    assert cpus.startswith("1 usable (")
    assert "affinity mask 1" in cpus


@pytest.mark.timeout(60)
def test_info_without_tqdm_says_how_to_get_the_bar() -> None:
    code = "import sys; sys.modules['tqdm'] = None; from parloop._cli import main; main(['info'])"
    done = _run(code=code)
    assert done.returncode == 0, done.stderr
    assert "pip install 'parloop[progress]'" in _field(done.stdout, "progress")


@pytest.mark.timeout(60)
def test_info_names_a_threaded_caller_s_start_method() -> None:
    # A program with a thread running gets forkserver, and info says why.
    code = ("import threading, time; from parloop._cli import main\n"
            "stop = threading.Event(); t = threading.Thread(target=stop.wait); t.start()\n"
            "try:\n    main(['info'])\nfinally:\n    stop.set(); t.join()")
    done = _run(code=code)
    assert done.returncode == 0, done.stderr
    method = _field(done.stdout, "start method")
    if sys.platform == "linux":
        assert method.startswith("forkserver (this process has 2 threads")


@pytest.mark.timeout(60)
def test_bench_forwards_arguments_and_exit_status(tmp_path: Path) -> None:
    suite = tmp_path / "benchmarks"
    suite.mkdir()
    (suite / "__init__.py").write_text("")
    (suite / "__main__.py").write_text(
        "import sys\nprint('SUITE', sys.argv[1:])\nsys.exit(3)\n")
    done = _run("bench", "--quick", "-h", "x", cwd=tmp_path)
    assert "SUITE ['--quick', '-h', 'x']" in done.stdout
    assert done.returncode == 3


@pytest.mark.timeout(30)
def test_bench_without_the_suite_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(_cli, "_find_benchmarks", lambda: None)
    assert _cli.main(["bench"]) == 2
    err = capsys.readouterr().err
    assert "pip install -e '.[bench]'" in err
    assert "python -m benchmarks" in err


@pytest.mark.timeout(60)
def test_no_command_or_a_wrong_one_exits_2() -> None:
    assert _run().returncode == 2
    wrong = _run("infoo")
    assert wrong.returncode == 2
    assert "invalid choice" in wrong.stderr


@pytest.mark.timeout(60)
def test_bench_finds_the_source_checkout_s_suite_from_anywhere(tmp_path: Path) -> None:
    suite = Path(_cli.__file__).resolve().parents[2] / "benchmarks" / "__main__.py"
    if not suite.is_file():
        pytest.skip("no benchmarks/ in this checkout")
    done = _run("bench", "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m benchmarks")


@pytest.mark.timeout(60)
def test_checkpoint_summarises_a_file_and_clears_it(tmp_path: Path) -> None:
    from helpers import square

    from parloop import parallel_for

    db = tmp_path / "sweep.db"
    parallel_for(square, checkpoint=db, backend="serial")(range(7))
    done = _run("checkpoint", str(db))
    assert done.returncode == 0, done.stderr
    assert f"{db}: 1 function versions, 7 results" in done.stdout
    assert re.search(r"^  helpers:square  code \w{8}  args \w{8}  7 done ", done.stdout,
                     re.MULTILINE), done.stdout
    cleared = _run("checkpoint", str(db), "--clear", "square")
    assert cleared.returncode == 0 and "cleared 7 results of square" in cleared.stdout
    assert "0 done" in cleared.stdout


@pytest.mark.timeout(60)
def test_checkpoint_of_a_missing_or_foreign_file_says_so(tmp_path: Path) -> None:
    missing = _run("checkpoint", str(tmp_path / "none.db"))
    assert missing.returncode == 1 and "there is no checkpoint file" in missing.stderr
    assert not (tmp_path / "none.db").exists()
    (tmp_path / "text.db").write_text("hello\n" * 50)
    foreign = _run("checkpoint", str(tmp_path / "text.db"))
    assert foreign.returncode == 1 and "is not a parloop checkpoint" in foreign.stderr
