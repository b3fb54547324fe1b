"""Every script in ``examples/`` runs, as a user would run it, under every
start method, and prints what its docstring promises."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
START_METHODS = ["fork", "forkserver", "spawn"]
# Examples that need more than parloop (a cluster) are tested where they live.
ELSEWHERE = {"cluster.py"}


def _run(script: str, method: str, *args: str) -> str:
    environment = {**os.environ, "PARLOOP_START_METHOD": method, "PYTHONIOENCODING": "utf-8"}
    done = subprocess.run([sys.executable, "-W", "error", str(EXAMPLES / script), *args],
                          capture_output=True, text=True, timeout=100, env=environment)
    assert done.returncode == 0, f"{script} under {method} failed:\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    return done.stdout


def _line(output: str, prefix: str) -> str:
    found = [line for line in output.splitlines() if line.startswith(prefix)]
    assert found, f"no line starting {prefix!r} in:\n{output}"
    return found[0]


@pytest.mark.timeout(10)
def test_every_example_is_tested_here() -> None:
    scripts = {path.name for path in EXAMPLES.glob("*.py")} - ELSEWHERE
    assert scripts == {"seed.py", "hash_files.py", "numeric.py", "sweep.py", "shards.py"}


@pytest.mark.timeout(100)
@pytest.mark.parametrize("method", START_METHODS)
def test_seed(method: str) -> None:
    out = _run("seed.py", method)
    assert re.search(r"^cpu_count\(\) = \d+ usable CPUs", out, re.MULTILINE), out
    squares = [x * x for x in range(10)]
    assert _line(out, "ordered ").endswith(str(squares))
    unordered = _line(out, "unordered ").split(":", 1)[1].strip()
    assert sorted(int(x) for x in unordered.strip("[]").split(",")) == squares
    assert _line(out, "plan: ").startswith("plan: process: ")
    assert "same results" in out


@pytest.mark.timeout(100)
@pytest.mark.parametrize("method", START_METHODS)
def test_hash_files(method: str) -> None:
    out = _run("hash_files.py", method, "--files", "12", "--backend", "process")
    assert re.search(r"^hashed 12 files, [\d.]+ MiB in ", out, re.MULTILINE), out
    assert "verified: every digest matches" in out
    assert _line(out, "plan: ").startswith("plan: process: ")
    # The demo tree is temporary: its directory is gone afterwards.
    root = _line(out, "wrote 12 demo files under ").rsplit(" ", 1)[1]
    assert not Path(root).exists()


@pytest.mark.timeout(60)
def test_hash_files_on_a_given_directory(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"abc")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "empty").write_bytes(b"")
    out = _run("hash_files.py", "fork", str(tmp_path), "--backend", "thread")
    assert "hashed 2 files, 3.0 B" in out
    # The SHA-256 of b"abc" and of nothing: well-known digests.
    assert re.search(r"^  ba7816bf8f01cfea\.\.\.\s+3\.0 B  a\.txt$", out, re.MULTILINE), out
    assert re.search(r"^  e3b0c44298fc1c14\.\.\.\s+0\.0 B  sub/empty$", out, re.MULTILINE), out
    assert tmp_path.joinpath("a.txt").exists()


@pytest.mark.timeout(100)
@pytest.mark.parametrize("method", START_METHODS)
def test_numeric(method: str) -> None:
    out = _run("numeric.py", method, "--limit", "150000", "--block", "5000")
    primes_below_150000 = "13,848"
    assert _line(out, "plain loop: ").startswith(f"plain loop: {primes_below_150000} primes")
    assert _line(out, "parloop: ").startswith(f"parloop:    {primes_below_150000} primes")
    assert "same answer" in out
    assert re.match(r"plan: (serial|process): ", _line(out, "plan: "))


@pytest.mark.timeout(100)
@pytest.mark.parametrize("method", START_METHODS)
def test_sweep_resumes_from_its_checkpoint(method: str, tmp_path: Path) -> None:
    db = str(tmp_path / "sweep.db")
    first = _run("sweep.py", method, db)
    assert _line(first, "sweep: ") == f"sweep: 64 points, 64 computed, 0 read back from {db}"
    second = _run("sweep.py", method, db)
    assert _line(second, "sweep: ") == f"sweep: 64 points, 0 computed, 64 read back from {db}"
    assert _line(first, "best: ") == _line(second, "best: ") == \
        "best: step=1 offset=0 score=2.763614"
    assert "sweep: 64 points, 64 computed" in _run("sweep.py", method)  # its own temporary file


@pytest.mark.timeout(100)
@pytest.mark.parametrize("method", START_METHODS)
def test_shards_commit_one_file_per_worker(method: str, tmp_path: Path) -> None:
    output = _run("shards.py", method, str(tmp_path))
    assert _line(output, "shards: ") == "shards: 44005 rows in 2 files"
    assert _line(output, "commonest: ") == \
        "commonest: the 11886, and 4000, cat 4000, dog 4000, fox 3544"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-0.db", "shard-1.db"]
