"""The interactive interpreter, driven through a real pseudo-terminal: what
a user types, and a real Ctrl-C from the terminal (the line discipline
sends SIGINT to the whole foreground process group, workers included)."""

from __future__ import annotations

import contextlib
import os
import pty
import re
import select
import signal
import sys
import time
from pathlib import Path

import pytest
from procs import descendants, wait_gone

ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]|\r")


class Terminal:
    """A Python REPL on the child side of a pty: the new one of 3.13+, or
    the ``basic`` one (the only one before 3.13)."""

    def __init__(self, basic: bool = False) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PARLOOP_")}
        env["TERM"] = "dumb" if basic else "xterm"
        if basic:
            env["PYTHON_BASIC_REPL"] = "1"
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: a session leader whose terminal is the pty
            os.execve(sys.executable, [sys.executable, "-q"], env)
        self.seen = b""

    def read_until(self, pattern: bytes, timeout: float = 30) -> bytes:
        """Everything up to and including ``pattern`` (escape codes removed)."""
        deadline = time.monotonic() + timeout
        while pattern not in ANSI.sub(b"", self.seen):
            left = deadline - time.monotonic()
            assert left > 0, f"no {pattern!r} after {timeout} s; saw:\n{self.text()}"
            ready, _, _ = select.select([self.fd], [], [], min(left, 0.2))
            if ready:
                try:
                    self.seen += os.read(self.fd, 65536)
                except OSError:  # the child closed the terminal
                    break
        clean = ANSI.sub(b"", self.seen)
        head, _, tail = clean.partition(pattern)
        self.seen = tail
        return head + pattern

    def type(self, *lines: str) -> None:
        for line in lines:
            os.write(self.fd, line.encode() + b"\n")
            time.sleep(0.05)  # as a person types: one line at a time

    def text(self) -> str:
        return ANSI.sub(b"", self.seen).decode(errors="replace")

    def close(self) -> int:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        os.close(self.fd)
        return os.waitpid(self.pid, 0)[1]


REPLS = ["default"] + (["basic"] if sys.version_info >= (3, 13) else [])


@pytest.mark.no_census  # the REPL is a grandchild of ours: the test checks it itself
@pytest.mark.timeout(120)
@pytest.mark.parametrize("repl", REPLS)
def test_two_decorated_functions_and_a_ctrl_c_at_the_prompt(repl: str) -> None:
    term = Terminal(basic=repl == "basic")
    try:
        term.read_until(b">>> ")
        term.type("from parloop import parallel_for", "import time")
        term.read_until(b">>> ")
        term.type('@parallel_for(backend="process", workers=2)', "def a(x): return x * 2", "")
        term.read_until(b">>> ")
        term.type('print("A:", a(range(6)))')
        assert b"A: [0, 2, 4, 6, 8, 10]" in term.read_until(b"]")
        # A second function, defined after the first call started the pool.
        term.type('@parallel_for(backend="process", workers=2)', "def b(x): return x + 100", "")
        term.read_until(b">>> ")
        term.type('print("B:", b(range(3)))')
        assert b"B: [100, 101, 102]" in term.read_until(b"]")

        term.type("slow = parallel_for(time.sleep, backend='process', workers=2)",
                  "slow([30] * 8)")
        time.sleep(1.5)  # the call is under way
        os.write(term.fd, b"\x03")  # Ctrl-C, as a keyboard sends it
        began = time.monotonic()
        after = term.read_until(b"KeyboardInterrupt", timeout=20)
        term.read_until(b">>> ", timeout=20)
        took = time.monotonic() - began
        assert took < 10, f"took {took:.1f} s to come back to the prompt"
        assert after.count(b"Traceback") <= 1, after.decode(errors="replace")

        time.sleep(0.5)
        term.type('print("again:", a(range(3)))')  # the function still works afterwards
        assert b"again: [0, 2, 4]" in term.read_until(b"]")
        term.read_until(b">>> ")
        workers = descendants(term.pid)
        term.type("exit()")
        assert not wait_gone(workers | {term.pid}, 20), "workers outlived the REPL"
    finally:
        term.close()


@pytest.mark.no_census
@pytest.mark.timeout(180)
@pytest.mark.parametrize("delay", [0.05, 0.3, 0.8])
def test_ctrl_c_while_the_fork_server_starts_prints_one_traceback(delay: float) -> None:
    # With NumPy imported the caller has threads, so the pool starts from
    # parloop's fork server, which imports NumPy itself as it starts: a
    # Ctrl-C then can land in the server as well as in the caller.
    pytest.importorskip("numpy")
    term = Terminal(basic=True)
    try:
        term.read_until(b">>> ")
        term.type("import numpy, time", "from parloop import parallel_for")
        term.read_until(b">>> ")
        term.type("parallel_for(time.sleep, backend='process', workers=2)([30] * 8)")
        time.sleep(delay)
        os.write(term.fd, b"\x03")
        after = term.read_until(b"KeyboardInterrupt", timeout=30)
        after += term.read_until(b">>> ", timeout=30)
        time.sleep(1.0)  # a traceback from another process would show by now
        after += ANSI.sub(b"", term.seen)
        assert after.count(b"Traceback") == 1, after.decode(errors="replace")
        assert after.count(b"KeyboardInterrupt") == 1, after.decode(errors="replace")
    finally:
        term.close()


@pytest.mark.no_census
@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_setup_and_a_checkpoint_with_functions_typed_at_the_prompt(
        method: str, tmp_path: Path) -> None:
    term = Terminal(basic=sys.version_info >= (3, 13))
    try:
        term.read_until(b">>> ")
        term.type("import os", "from parloop import parallel_for, worker_id")
        term.read_until(b">>> ")
        term.type("def load(): return os.getpid()", "")
        term.read_until(b">>> ")
        term.type("def tag(pid, x): return (pid == os.getpid(), worker_id() in (0, 1), x)", "")
        term.read_until(b">>> ")
        term.type(f"f = parallel_for(tag, setup=load, backend='process', workers=2, "
                  f"start_method={method!r}, checkpoint={str(tmp_path / 'p.db')!r})")
        term.read_until(b">>> ")
        term.type('print("R:", all(a and b for a, b, _ in f(range(6))), f.last_plan.stored)')
        assert b"R: True 6" in term.read_until(b"R: True 6", timeout=60)
        term.read_until(b">>> ")
        term.type('print("S:", f(range(7)) == [(True, True, x) for x in range(7)], '
                  'f.last_plan.restored)')
        assert b"S: True 6" in term.read_until(b"S: True 6", timeout=60)
        term.read_until(b">>> ")
        term.type("exit()")
    finally:
        term.close()
