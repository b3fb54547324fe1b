"""Where users write code: a script's ``__main__``, ``python -c``, a script
read from stdin, functions defined after the first call, many threads at
once, a threaded server. Each script runs in a real interpreter of its own,
so its functions live in a real ``__main__``, as a user's do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from helpers import pid_of, square
from procs import descendants

from parloop import cpu_count, parallel_for

METHODS = ["fork", "forkserver", "spawn"]


@pytest.fixture(params=METHODS)
def method(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def python(*args: str, method: str | None = None, stdin: str | None = None,
           timeout: float = 90, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a fresh interpreter; ``method`` sets PARLOOP_START_METHOD for it."""
    env = dict(os.environ)
    env.pop("PARLOOP_START_METHOD", None)
    if method is not None:
        env["PARLOOP_START_METHOD"] = method
    done = subprocess.run([sys.executable, *args], input=stdin, capture_output=True, text=True,
                          timeout=timeout, env=env)
    if check:
        assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
        assert "Traceback" not in done.stderr, done.stderr
    return done


def script(tmp_path: Path, body: str, name: str = "user_script.py") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


# A second function decorated after the first call found the warm pool's
# workers without it ("module '__main__' has no attribute 'b'").
TWO_FUNCTIONS = """
import time
from parloop import parallel_for

@parallel_for(backend="process", workers=2)
def a(x):
    time.sleep(0.01)
    return x

print(a(range(20)) == list(range(20)), a.last_plan.backend)

@parallel_for(backend="process", workers=2)
def b(x):
    time.sleep(0.01)
    return x * 2

print(b(range(20)) == [2 * x for x in range(20)], b.last_plan.backend)
print(a(range(5)) == list(range(5)))  # the first one still works beside it
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("guarded", [True, False], ids=["guarded", "unguarded"])
def test_a_script_decorates_a_second_function_after_the_first_call(
        tmp_path: Path, method: str, guarded: bool) -> None:
    if method == "spawn" and not guarded:
        pytest.skip("spawn re-imports the main script in each worker: it must be guarded")
    body = TWO_FUNCTIONS
    if guarded:
        body = 'if __name__ == "__main__":\n' + textwrap.indent(body, "    ")
    out = python(script(tmp_path, body), method=method).stdout
    assert out.split() == ["True", "process", "True", "process", "True"]


@pytest.mark.timeout(120)
def test_the_plain_decorator_in_a_script_with_two_functions(tmp_path: Path) -> None:
    body = """
        import time
        from parloop import parallel_for

        @parallel_for
        def a(x): time.sleep(0.05); return x
        print(a(range(40))[:5])

        @parallel_for
        def b(x): time.sleep(0.05); return x * 2
        print(b(range(40))[:5])
    """
    out = python(script(tmp_path, body)).stdout
    assert out.splitlines() == ["[0, 1, 2, 3, 4]", "[0, 2, 4, 6, 8]"]


COMMAND = """
import time
from parloop import parallel_for

@parallel_for(backend="process", workers=2)
def f(x):
    return x * x

g = parallel_for(lambda x: -x, backend="process", workers=2)
print(f(range(10)), g(range(3)), f.last_plan.backend)
"""


@pytest.mark.timeout(120)
def test_python_dash_c(method: str) -> None:
    out = python("-c", COMMAND, method=method).stdout
    assert out.split("]")[0] == "[0, 1, 4, 9, 16, 25, 36, 49, 64, 81"
    assert out.strip().endswith("[0, -1, -2] process")


@pytest.mark.timeout(120)
def test_a_script_read_from_stdin(method: str) -> None:
    out = python("-", stdin=COMMAND, method=method).stdout
    assert out.strip().endswith("[0, -1, -2] process")


@pytest.mark.timeout(120)
def test_a_function_decorated_inside_the_main_guard(tmp_path: Path, method: str) -> None:
    body = """
        from parloop import parallel_for

        if __name__ == "__main__":
            @parallel_for(backend="process", workers=2)
            def inside(x):
                return x + 1

            print(inside(range(6)))
    """
    assert python(script(tmp_path, body), method=method).stdout.strip() == "[1, 2, 3, 4, 5, 6]"


@pytest.mark.timeout(120)
def test_classes_of_the_main_script_travel_as_items_and_results(
        tmp_path: Path, method: str) -> None:
    body = """
        from dataclasses import dataclass
        from parloop import parallel_for

        def main():
            warm = parallel_for(abs, backend="process", workers=2)
            warm(range(-4, 4))  # a warm pool, started before the class exists

            @dataclass
            class Point:
                x: int

            @parallel_for(backend="process", workers=2)
            def double(p):
                return Point(2 * p.x)

            out = double([Point(i) for i in range(6)])
            print([p.x for p in out], all(type(p) is Point for p in out))

        if __name__ == "__main__":
            main()
    """
    out = python(script(tmp_path, body), method=method).stdout
    assert out.strip() == "[0, 2, 4, 6, 8, 10] True"


@pytest.mark.timeout(120)
def test_a_script_without_a_main_guard_runs_its_body_once(tmp_path: Path) -> None:
    # NumPy starts threads, so the pool is not forked from the caller. The
    # script's body must still run once, here, and nowhere else.
    pytest.importorskip("numpy")
    log = tmp_path / "runs.log"
    body = f"""
        import os
        import numpy
        with open({str(log)!r}, "a") as log:
            log.write(f"{{os.getpid()}}\\n")
        from parloop import parallel_for

        @parallel_for(backend="process", workers=2)
        def twice(x):
            return 2 * x

        print(twice(range(8)))
    """
    out = python(script(tmp_path, body)).stdout
    assert out.strip() == "[0, 2, 4, 6, 8, 10, 12, 14]"
    assert len(log.read_text().splitlines()) == 1


# -- threads -------------------------------------------------------------------------------

RACE = """
import json, sys, threading, time
from parloop import parallel_for

def work(x):
    time.sleep(0.02)  # enough that the first calls ask what a pool costs, and start one
    return x * x

barrier = threading.Barrier(20)
results, errors = [], []

def call():
    barrier.wait()
    try:
        results.append(parallel_for(work)(range(8)))
    except BaseException as exc:
        errors.append(f"{type(exc).__name__}: {exc}")

threads = [threading.Thread(target=call) for _ in range(20)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps({"ok": sum(r == [x * x for x in range(8)] for r in results),
                  "errors": errors}))
"""


@pytest.mark.timeout(240)
def test_twenty_threads_make_their_first_call_at_once() -> None:
    for _ in range(5):  # the race showed in 1 of 5 fresh interpreters, or more
        facts = json.loads(python("-c", RACE).stdout)
        assert facts == {"ok": 20, "errors": []}


SERVER = """
import json, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from parloop import parallel_for

@parallel_for
def work(x):
    end = time.perf_counter() + 0.01
    while time.perf_counter() < end:
        pass
    return x * x

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        n = int(self.path.strip("/"))
        body = json.dumps({"result": work(range(n)), "plan": work.last_plan.backend}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


@pytest.mark.timeout(180)
def test_a_threaded_server_shares_one_pool_of_at_most_cpu_count_workers() -> None:
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        most, seen_any = 0, False
        stop = threading.Event()

        def watch() -> None:
            nonlocal most, seen_any
            while not stop.is_set():
                count = len(descendants(server.pid, "parloop-worker"))
                most = max(most, count)
                seen_any = seen_any or count > 0
                time.sleep(0.01)

        replies: list[Any] = []

        failures: list[str] = []

        def ask(n: int) -> None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/{n}", timeout=60) as reply:
                    replies.append((n, json.loads(reply.read())))
            except Exception as exc:
                failures.append(f"{n}: {exc!r}")

        watcher = threading.Thread(target=watch)
        watcher.start()
        askers = [threading.Thread(target=ask, args=(30 + i,)) for i in range(20)]
        for asker in askers:
            asker.start()
        for asker in askers:
            asker.join()
        stop.set()
        watcher.join()
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
    assert not failures, f"{failures}\n{err}"
    assert len(replies) == 20
    for n, reply in replies:
        assert reply["result"] == [x * x for x in range(n)]
    assert seen_any, "no request ran on a pool"
    assert most <= cpu_count(), f"{most} workers alive on {cpu_count()} CPUs"
    assert "Traceback" not in err, err


@pytest.mark.timeout(60)
def test_a_blocks_pool_serves_calls_from_other_threads() -> None:
    with parallel_for(backend="process", workers=2) as pool:
        here = set(pool.map(pid_of, range(8), ))
        seen: list[Any] = []

        def elsewhere() -> None:
            seen.append((set(pool.map(pid_of, range(8))), pool.last_plan))

        thread = threading.Thread(target=elsewhere)
        thread.start()
        thread.join()
    pids, plan = seen[0]
    assert plan is not None and plan.backend == "process" and plan.workers == 2
    assert pids <= here | pids and os.getpid() not in pids
    assert pids & here, "the other thread's call did not run on the block's pool"


@pytest.mark.timeout(60)
def test_block_pool_used_by_many_threads_at_once() -> None:
    with parallel_for(backend="process", workers=2) as pool:
        results: list[Any] = []

        def call(offset: int) -> None:
            results.append(pool.map(square, range(offset, offset + 50)))

        threads = [threading.Thread(target=call, args=(i * 100,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert sorted(r[0] for r in results) == [(i * 100) ** 2 for i in range(8)]
    for r in results:
        base = int(r[0] ** 0.5)
        assert r == [x * x for x in range(base, base + 50)]


# -- small things --------------------------------------------------------------------------


def test_a_string_of_items_is_refused_with_a_hint() -> None:
    with pytest.raises(TypeError, match=r"str.*\[.*\]"):
        parallel_for(len)("abc")
    with pytest.raises(TypeError, match="bytes"):
        parallel_for(len).iter(b"abc")


@pytest.mark.timeout(60)
def test_the_start_method_comes_from_the_environment(tmp_path: Path, method: str) -> None:
    body = """
        import os
        from parloop import parallel_for

        def parent(_):
            return os.getppid()

        if __name__ == "__main__":
            parents = set(parallel_for(parent, backend="process", workers=2)(range(4)))
            print("forked-by-caller" if parents == {os.getpid()} else "other")
    """
    out = python(script(tmp_path, body), method=method).stdout.strip()
    assert out == ("forked-by-caller" if method in ("fork", "spawn") else "other")


def test_a_bad_start_method_in_the_environment_is_named() -> None:
    done = python("-c", "from parloop import parallel_for; parallel_for(abs, backend='process')([1, 2])",
                  method="frok", check=False)
    assert done.returncode != 0
    assert "PARLOOP_START_METHOD" in done.stderr and "frok" in done.stderr


@pytest.mark.timeout(60)
def test_a_function_that_will_not_unpickle_is_no_items_fault() -> None:
    from helpers import LoadsNowhere

    from parloop import RemoteUnpicklingError

    with pytest.raises(RemoteUnpicklingError, match="function") as info:
        parallel_for(LoadsNowhere(), backend="process", workers=2)(range(4))
    assert "item" not in str(info.value)
    assert not any("item #" in note for note in getattr(info.value, "__notes__", []))


MEMORY_SCRIPT = textwrap.dedent("""
    import inspect, json, os, sys
    import joblib
    from parloop import parallel_for

    memory = joblib.Memory(sys.argv[2], verbose=0)

    @memory.cache
    def expensive(x):
        with open(sys.argv[3], "a") as log:
            log.write(f"{x}\\n")
        return x * 2

    @parallel_for(backend="process", workers=2, start_method=sys.argv[1])
    def run(x):
        return expensive(x), expensive.func.__module__, __name__, \
            inspect.getsourcefile(expensive.func)

    here = [expensive(x) for x in range(3)]  # cached by the caller: the workers must hit
    first, second = run(range(6)), run(range(6))
    print(json.dumps({"first": first, "second": second}))
""")


@pytest.mark.no_census
@pytest.mark.timeout(180)
@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_a_main_function_keeps_its_module_name_in_workers_so_joblib_memory_hits(
        tmp_path: Path, method: str) -> None:
    pytest.importorskip("joblib")
    script, log = tmp_path / "cached.py", tmp_path / "ran.log"
    script.write_text(MEMORY_SCRIPT)
    done = subprocess.run([sys.executable, str(script), method, str(tmp_path / "cache"),
                           str(log)], capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stderr
    facts = json.loads(done.stdout)
    for _, module, name, source in facts["first"] + facts["second"]:
        assert (module, name, source) == ("__main__", "__main__", str(script))
    assert [row[0] for row in facts["second"]] == [2 * x for x in range(6)]
    # Each ran once, wherever: the caller's entries and the workers' have one key.
    assert sorted(map(int, log.read_text().split())) == list(range(6))
