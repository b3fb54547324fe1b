"""What the tests read of live processes, from /proc: who is alive, who
descends from whom, and which of them are parloop workers."""

from __future__ import annotations

import os
import time


def _table() -> dict[int, tuple[int, str, bool]]:
    """pid -> (parent pid, command name, is a zombie), for every process."""
    table: dict[int, tuple[int, str, bool]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                head, rest = stat.read().rsplit(b")", 1)
            fields = rest.split()
            table[int(entry)] = (int(fields[1]), head.split(b"(", 1)[1].decode(errors="replace"),
                                 fields[0] == b"Z")
        except (OSError, ValueError, IndexError):
            continue
    return table


def alive(pid: int) -> bool:
    """True while ``pid`` is a running process (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def children(pid: int) -> set[int]:
    """Live direct children of ``pid``."""
    return {child for child, (parent, _, zombie) in _table().items()
            if parent == pid and not zombie}


def descendants(pid: int, name: str | None = None) -> set[int]:
    """Live descendants of ``pid`` (only those whose command is ``name``, if given)."""
    table = _table()
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, (parent, _, zombie) in table.items()
                    if parent in frontier and not zombie} - found
        found |= frontier
    return found if name is None else {p for p in found if table[p][1] == name}


def wait_gone(pids: set[int], seconds: float) -> set[int]:
    """Wait up to ``seconds`` for ``pids`` to end; those still alive."""
    deadline = time.monotonic() + seconds
    while (left := {pid for pid in pids if alive(pid)}) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left
