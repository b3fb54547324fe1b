"""parloop's own fork server: the main script never runs in it nor in its
workers, the libraries the script imported are loaded there once, and it
is not multiprocessing's shared server (see ``parloop.backends.process.launch``)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent("""
    import json, os, sys
    import email.mime.text  # a library the fork server should load once
    with open(sys.argv[1], "a") as log:  # every run of this module body leaves a line
        log.write(f"{os.getpid()} {__name__}\\n")
    from multiprocessing import forkserver
    from parloop import parallel_for
    from parloop.backends.process import launch as _launch

    def facts(_):
        return os.getpid(), "email.mime.text" in sys.modules

    if __name__ == "__main__":
        fn = parallel_for(facts, backend="process", workers=2, start_method="forkserver",
                          chunksize=1)
        seen = fn([0] * 8) + fn([0] * 8)
        print(json.dumps({
            "workers": sorted({pid for pid, _ in seen}),
            "preloaded": all(loaded for _, loaded in seen),
            "server": _launch.server_pid(),
            "shared_server": forkserver._forkserver._forkserver_pid,
        }))
""")


@pytest.mark.timeout(60)
def test_the_main_script_runs_only_in_the_caller_and_its_libraries_are_preloaded(
        tmp_path: Path) -> None:
    script, log = tmp_path / "main_script.py", tmp_path / "runs.log"
    script.write_text(SCRIPT)
    out = subprocess.run([sys.executable, str(script), str(log)], capture_output=True,
                         text=True, timeout=50, check=True).stdout
    facts = json.loads(out)
    runs = [line.split() for line in log.read_text().splitlines()]
    assert [name for _, name in runs] == ["__main__"]  # the caller, and nobody else
    assert len(facts["workers"]) >= 1
    assert facts["preloaded"]  # each worker found the script's library loaded
    assert facts["server"] is not None
    assert facts["shared_server"] is None  # multiprocessing's own server was never started


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=50, check=True).stdout.strip()


@pytest.mark.timeout(60)
def test_cloudpickle_is_loaded_where_functions_travel_by_value_only() -> None:
    # A worker's modules do not import cloudpickle (~17 ms of every fork
    # server's and spawned worker's start); a by-value payload imports it.
    assert _run("""
        import sys
        import parloop.backends.process.worker, parloop.backends.process.server
        print("cloudpickle" in sys.modules)
    """) == "False"
    # The fork server preloads it when the main module defines functions
    # (they go by value), and not otherwise.
    check = """
        from parloop.backends.process import launch
        print("cloudpickle" in launch.libraries_of_main())
    """
    assert _run("def work(x):\n    return x\n" + textwrap.dedent(check)) == "True"
    assert _run("import json\n" + textwrap.dedent(check)) == "False"


SHARED_MEMORY = textwrap.dedent("""
    import json
    from multiprocessing import shared_memory
    from parloop import parallel_for

    def make(i):
        block = shared_memory.SharedMemory(create=True, size=16)
        block.buf[0] = i
        name = block.name
        block.close()
        return name

    def read(name):
        block = shared_memory.SharedMemory(name=name)
        value = block.buf[0]
        block.close()
        return value

    if __name__ == "__main__":
        options = {"backend": "process", "workers": 2, "start_method": "forkserver"}
        names = parallel_for(make, **options)(range(6))
        values = parallel_for(read, **options)(names)
        for name in names:  # the caller owns them now: it unlinks them
            block = shared_memory.SharedMemory(name=name)
            block.close()
            block.unlink()
        print(json.dumps(values))
""")


@pytest.mark.timeout(60)
def test_workers_share_the_callers_resource_tracker(tmp_path: Path) -> None:
    # Shared memory that workers create and others attach to, which the
    # caller then unlinks: with one tracker for all of them (the server
    # forks it and the caller adopts it), nothing is unlinked early and
    # nothing is reported leaked at exit. With a tracker for the workers
    # alone, it reported all six as leaked.
    script = tmp_path / "shared.py"
    script.write_text(SHARED_MEMORY)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=50)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == list(range(6))
    assert "leaked" not in done.stderr and "Traceback" not in done.stderr, done.stderr


KILLED_BEFORE_IT_ANSWERS = textwrap.dedent("""
    import os, signal, threading, time
    from parloop.backends.process import server

    server.ensure_running()
    with server._server.lock:
        server._server._tracker()  # answered: the server is up and serving
    pid = server.server_pid()
    os.kill(pid, signal.SIGSTOP)
    outcome = []

    def request():
        try:
            server.fork([])
            outcome.append("forked")
        except BaseException as exc:
            outcome.append(type(exc).__name__)

    thread = threading.Thread(target=request, daemon=True)
    thread.start()
    time.sleep(0.2)  # the request waits in the stopped server's socket
    os.kill(pid, signal.SIGKILL)
    thread.join(10)
    print("hung" if thread.is_alive() else outcome[0])
""")


@pytest.mark.timeout(60)
def test_a_server_killed_before_it_answers_fails_the_request_instead_of_hanging() -> None:
    # The caller must not hold the write end of the pipe the answer comes
    # on, or the read waits forever (the random-kill test once hung there).
    assert _run(KILLED_BEFORE_IT_ANSWERS) in ("EOFError", "ConnectionRefusedError",
                                             "BrokenPipeError")
