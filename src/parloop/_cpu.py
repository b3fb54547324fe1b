"""How many CPUs this process may really use.

``os.cpu_count()`` reports the host. A container limited by a cgroup quota, or a
process pinned with ``taskset``, may use far fewer; a pool sized to the host
then oversubscribes and runs slower than a plain loop.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import NamedTuple

__all__ = ["CpuReport", "affinity", "cpu_count", "cpu_report", "default_start_method",
           "thread_count"]


class CpuReport(NamedTuple):
    """``usable`` CPUs and the limits it was derived from (None: no such limit)."""

    usable: int
    host: int
    affinity: int | None
    cgroup_quota: float | None

    @property
    def reason(self) -> str:
        limits = [f"host {self.host}"]
        if self.affinity is not None:
            limits.append(f"affinity mask {self.affinity}")
        if self.cgroup_quota is not None:
            limits.append(f"cgroup quota {self.cgroup_quota:g}")
        return f"{self.usable} usable ({', '.join(limits)})"


def affinity() -> int | None:
    """The CPUs this process may run on (its affinity mask); None where unknown."""
    getter = getattr(os, "sched_getaffinity", None)
    if getter is None:
        return None
    try:
        return len(getter(0))
    except OSError:
        return None


def _read(path: str) -> str:
    with open(path) as file:
        return file.read()


def _cgroup_v2_quota(root: str) -> float | None:
    # Walk from this process's cgroup up to the root: a parent's limit binds too.
    try:
        lines = _read("/proc/self/cgroup").splitlines()
    except OSError:
        return None
    relative = next((line.split(":", 2)[2] for line in lines if line.startswith("0::")), None)
    if relative is None:
        return None
    best: float | None = None
    root = os.path.normpath(root)
    directory = os.path.normpath(os.path.join(root, relative.lstrip("/")))
    while True:
        try:
            quota, period = _read(os.path.join(directory, "cpu.max")).split()
            if quota != "max":
                value = int(quota) / int(period)
                best = value if best is None else min(best, value)
        except (OSError, ValueError):
            pass
        parent = os.path.dirname(directory)
        if directory == root or parent == directory:
            return best
        directory = parent


def _cgroup_v1_quota(root: str) -> float | None:
    try:
        quota = int(_read(os.path.join(root, "cpu", "cpu.cfs_quota_us")))
        period = int(_read(os.path.join(root, "cpu", "cpu.cfs_period_us")))
    except (OSError, ValueError):
        return None
    if quota <= 0 or period <= 0:
        return None
    return quota / period


_static_cache: dict[tuple[int, str], tuple[int, float | None]] = {}


def _static_limits(root: str) -> tuple[int, float | None]:
    # The host's CPU count and the cgroup quota cost ~10 µs each to read: once
    # per process (the pid keys it, so a forked child reads its own). The
    # affinity mask, which a program may change, is read on every call.
    key = (os.getpid(), root)
    limits = _static_cache.get(key)
    if limits is None:
        quota = _cgroup_v2_quota(root)
        if quota is None:
            quota = _cgroup_v1_quota(root)
        limits = _static_cache[key] = (os.cpu_count() or 1, quota)
    return limits


def cpu_report(cgroup_root: str | os.PathLike[str] = "/sys/fs/cgroup") -> CpuReport:
    """The usable CPU count with each limit that went into it."""
    host, quota = _static_limits(os.fspath(cgroup_root))
    allowed = affinity()
    usable = host
    if allowed is not None:
        usable = min(usable, allowed)
    if quota is not None:
        usable = min(usable, math.ceil(quota))
    return CpuReport(usable=max(1, usable), host=host, affinity=allowed, cgroup_quota=quota)


def cpu_count() -> int:
    """The number of CPUs this process can actually use, never below 1.

    It is the smallest of ``os.cpu_count()``, the scheduler affinity mask
    (``taskset``) and the cgroup v2 ``cpu.max`` (or v1 CFS) quota, rounded up.

    >>> cpu_count() >= 1
    True
    """
    return cpu_report().usable


def thread_count() -> int:
    """OS threads in this process, native ones (BLAS, gRPC) included."""
    try:
        with open("/proc/self/stat", "rb") as stat:
            return int(stat.read().rsplit(b")", 1)[1].split()[17])
    except (OSError, ValueError, IndexError):
        import threading
        return threading.active_count()


START_METHODS = ("fork", "spawn", "forkserver")


def default_start_method() -> str:
    """``$PARLOOP_START_METHOD`` when set; else fork when it is safe (Linux,
    a single-threaded caller), else forkserver (Linux) or spawn. A fork
    copies locks held by other threads (BLAS, gRPC, logging) in their held
    state, and the child can freeze on them; CPython 3.12+ warns about
    exactly this case, counting native threads too."""
    chosen = os.environ.get("PARLOOP_START_METHOD")
    if chosen:
        if chosen not in START_METHODS:
            raise ValueError(f"PARLOOP_START_METHOD={chosen!r} is not a start method: "
                             f"use one of {', '.join(START_METHODS)}, or unset it")
        return chosen
    if sys.platform != "linux":
        return "spawn"
    # parloop's own idle threads do not count: they end before a fork
    # (_threadpool.stop_idle), as a thread trial's helper waits there.
    from ._threadpool import idle_count

    return "fork" if thread_count() - idle_count() <= 1 else "forkserver"


_planned_at = -1.0
_planned = ""


def planning_start_method() -> str:
    """default_start_method(), re-read at most once a second: for cost
    estimates only (a pool decides again when it starts each worker)."""
    global _planned_at, _planned
    now = time.monotonic()
    if now - _planned_at > 1.0:
        _planned, _planned_at = default_start_method(), now
    return _planned
