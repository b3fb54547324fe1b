"""Running children and collecting their times, with a time limit per run.

Each run is bounded on its own: a peer that needs minutes for a cell (the
executor's default chunksize of 1 over a million items) is stopped after the
limit and reported as "slower than the limit", and the suite moves on.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent  # children run from the repository root
SETUP_LIMIT = 120.0  # seconds for a child to start and build its items
EXIT_LIMIT = 20.0  # seconds for a child to exit after its last run


@dataclass
class Measurement:
    """The runs of one runner on one cell in one mode."""

    times: list[float] = field(default_factory=list)
    infos: list[dict[str, Any]] = field(default_factory=list)
    timeout: float | None = None  # set: a run took longer than this, and was stopped
    error: str | None = None
    lifetimes: list[float] = field(default_factory=list)  # each child's seconds, start to exit
    lingered: list[float] = field(default_factory=list)  # ... of which after its last run

    @property
    def median(self) -> float | None:
        if self.timeout is not None or self.error is not None or not self.times:
            return None
        return statistics.median(self.times)

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "median": self.median}


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    # The child leads its own session (start_new_session), so this reaches the
    # pool workers it started and nothing else.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


class _Lines:
    """Lines from a child's stdout, each waited for at most a given time."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        self._fd = process.stdout.fileno()
        self._buffer = b""

    def next(self, limit: float) -> bytes | None:
        """The next line; None on end of output; TimeoutError after ``limit``."""
        deadline = time.monotonic() + limit
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            ready, _, _ = select.select([self._fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._fd, 65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line


def run_child(spec: dict[str, Any], run_limit: float, into: Measurement) -> None:
    """Run one child on ``spec``; add its runs to ``into``."""
    # Bytecode caches as on a user's machine: without them (this sandbox sets
    # PYTHONDONTWRITEBYTECODE) parloop, installed from source, would compile
    # its modules on every import while the peers' caches came with them.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    # A first run of parloop knows nothing of earlier runs: each child gets an
    # empty cost cache of its own, unless the spec gives one (a rerun).
    fresh = tempfile.TemporaryDirectory(prefix="parloop-costs-")
    env["PARLOOP_COST_CACHE"] = fresh.name
    env.update(spec.get("env", {}))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    born = time.monotonic()
    finished = None
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.child", json.dumps(spec)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=errors, stdin=subprocess.DEVNULL,
            start_new_session=True)
        lines = _Lines(process)
        limit = SETUP_LIMIT
        try:
            while True:
                line = lines.next(limit)
                if line is None:
                    errors.seek(0)
                    tail = errors.read().decode(errors="replace").strip().splitlines()[-6:]
                    into.error = f"exit {process.wait()}: " + " | ".join(tail)
                    break
                event = json.loads(line)
                if event["event"] == "run":
                    into.times.append(event["seconds"])
                    into.infos.append(event["info"])
                elif event["event"] == "done":
                    finished = time.monotonic()
                    process.wait(timeout=EXIT_LIMIT)
                    break
                limit = run_limit
        except TimeoutError:
            into.timeout = run_limit
        except subprocess.TimeoutExpired:
            pass  # all runs reported; it only lingered on its way out
        finally:
            _kill_group(process)
            process.wait()
            if process.stdout is not None:
                process.stdout.close()
            into.lifetimes.append(time.monotonic() - born)
            if finished is not None:
                into.lingered.append(time.monotonic() - finished)
            fresh.cleanup()
