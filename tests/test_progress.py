"""``progress=``: a callback sees every item counted, and ``progress=True``
behaves in a log file and on a terminal, with and without tqdm."""

from __future__ import annotations

import importlib.util
import os
import re
import select
import struct
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest
from helpers import fail_on, sleep_then, square

from parloop import parallel_for

HAS_TQDM = importlib.util.find_spec("tqdm") is not None


class Recorder:
    """A ``progress=`` callback that keeps every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int | None]] = []

    def __call__(self, done: int, total: int | None) -> None:
        self.calls.append((done, total))

    def check(self, items: int, total: int | None) -> None:
        assert self.calls, "the callback was never called"
        done = [d for d, _ in self.calls]
        assert done == sorted(done), f"not monotonic: {done}"
        assert len(set(done)) == len(done), f"the same count reported twice: {done}"
        assert done[0] > 0 and done[-1] == items
        assert {t for _, t in self.calls} == {total}


@pytest.mark.timeout(60)
def test_callback_counts_every_item(backend: dict[str, Any]) -> None:
    progress = Recorder()
    assert parallel_for(square, progress=progress, **backend)(range(300)) == [
        x * x for x in range(300)]
    progress.check(300, 300)


@pytest.mark.timeout(60)
def test_callback_with_unknown_total_unordered_and_returned_errors(
        backend: dict[str, Any]) -> None:
    progress = Recorder()
    fn = parallel_for(fail_on, progress=progress, ordered=False, errors="return", **backend)
    results = fn(x for x in range(50))
    assert len(results) == 50
    progress.check(50, None)  # a generator has no length


@pytest.mark.timeout(60)
def test_callback_through_iter_and_in_a_block(backend: dict[str, Any]) -> None:
    progress = Recorder()
    with parallel_for(progress=progress, **backend) as pool:
        assert list(pool.iter(square, range(40))) == [x * x for x in range(40)]
    progress.check(40, 40)


@pytest.mark.timeout(60)
def test_callback_advances_while_a_slow_map_runs(backend: dict[str, Any]) -> None:
    # Item-accurate: the count moves during the run, not only at the end.
    progress = Recorder()
    parallel_for(sleep_then, progress=progress, chunksize=1, **backend)([0.05] * 12)
    progress.check(12, 12)
    assert len(progress.calls) >= 3, progress.calls


@pytest.mark.timeout(60)
def test_callback_errors_raised_with_the_item_s_error() -> None:
    progress = Recorder()
    with pytest.raises(ValueError, match="item 3 is bad"):
        parallel_for(fail_on, progress=progress, backend="thread", workers=2)(range(10))
    assert all(done < 10 for done, _ in progress.calls)


# -- progress=True in a child process whose stderr is a pipe or a terminal ------------

SCRIPT = textwrap.dedent("""
    import sys, time
    if {block_tqdm}:
        sys.modules["tqdm"] = None  # as if tqdm were not installed
    from parloop import parallel_for

    def work(x):
        time.sleep(0.005)
        return x

    if __name__ == "__main__":
        fn = parallel_for(work, progress=True, backend={backend!r}, workers=2)
        assert fn(range({items})) == list(range({items}))
        print("tqdm loaded:", "tqdm.std" in sys.modules)
""")


def _script(backend: str, items: int, block_tqdm: bool) -> str:
    return SCRIPT.format(backend=backend, items=items, block_tqdm=block_tqdm)


def _run_piped(backend: str, items: int, block_tqdm: bool) -> tuple[str, str]:
    # Bytes, not text=True: universal newlines would turn each "\r" into "\n".
    done = subprocess.run([sys.executable, "-c", _script(backend, items, block_tqdm)],
                          capture_output=True, timeout=60,
                          env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    stdout, stderr = done.stdout.decode("utf-8"), done.stderr.decode("utf-8")
    assert done.returncode == 0, stderr
    return stdout, stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize("block_tqdm", [True, False], ids=["no-tqdm", "tqdm"])
@pytest.mark.parametrize("backend", ["serial", "thread", "process"])
def test_in_a_log_progress_is_one_summary_line(backend: str, block_tqdm: bool) -> None:
    if not block_tqdm and not HAS_TQDM:
        pytest.skip("tqdm is not installed")
    stdout, stderr = _run_piped(backend, 300, block_tqdm)
    if block_tqdm:
        assert "tqdm loaded: False" in stdout
    assert "\r" not in stderr, repr(stderr)
    assert re.fullmatch(r"work: 300/300 items \(100%\) in [\d.]+ s, [\d.]+ items/s\n", stderr), stderr


@pytest.mark.timeout(60)
def test_a_long_run_in_a_log_still_writes_one_line() -> None:
    # 600 x 5 ms on 2 threads: about 1.5 s, fifteen redraws on a terminal.
    started = time.monotonic()
    _, stderr = _run_piped("thread", 600, block_tqdm=False)
    assert time.monotonic() - started > 1.0
    assert "\r" not in stderr and stderr.count("\n") == 1, repr(stderr)
    assert "600/600 items" in stderr


def _run_on_a_terminal(backend: str, items: int, block_tqdm: bool) -> str:
    """Run the script with its stderr on a pseudo-terminal; return what it drew."""
    pty = pytest.importorskip("pty")
    fcntl = pytest.importorskip("fcntl")
    termios = pytest.importorskip("termios")
    leader, follower = pty.openpty()
    # A terminal 100 columns wide (a fresh pty says 0, and tqdm then draws nothing).
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    try:
        child = subprocess.Popen([sys.executable, "-c", _script(backend, items, block_tqdm)],
                                 stdout=subprocess.DEVNULL, stderr=follower,
                                 env={**os.environ, "PYTHONIOENCODING": "utf-8"})
        os.close(follower)
        follower = -1
        drawn = bytearray()
        while True:
            ready, _, _ = select.select([leader], [], [], 30)
            if not ready:
                child.kill()
                break
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the child closed its end
                break
            if not chunk:
                break
            drawn += chunk
        assert child.wait(timeout=30) == 0
    finally:
        os.close(leader)
        if follower != -1:
            os.close(follower)
    return drawn.decode("utf-8", "replace")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("block_tqdm", [True, False], ids=["no-tqdm", "tqdm"])
def test_on_a_terminal_the_line_is_redrawn_up_to_every_item(block_tqdm: bool) -> None:
    if not block_tqdm and not HAS_TQDM:
        pytest.skip("tqdm is not installed")
    drawn = _run_on_a_terminal("thread", 400, block_tqdm)
    frames = [frame for frame in re.split(r"[\r\n]+", drawn) if frame.strip()]
    assert len(frames) >= 3, drawn  # redrawn while it ran
    counts = [int(m.group(1)) for frame in frames if (m := re.search(r"(\d+)/400", frame))]
    assert counts == sorted(counts) and counts[-1] == 400, frames
    # tqdm's bar when it is there, parloop's own counter when it is not.
    bar = re.compile(r"work: +\d+%\|.*\| \d+/400 \[")
    assert all(bool(bar.match(frame)) is not block_tqdm for frame in frames), frames
