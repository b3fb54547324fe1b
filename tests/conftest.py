"""Shared fixtures: the backend matrix every contract test runs on, and a
census that fails any test leaking processes, threads or file descriptors."""

from __future__ import annotations

import faulthandler
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import procs
import pytest

from parloop import _costs, _scope, _threadpool

faulthandler.enable()

# What earlier runs measured (parloop._memory) would make the planner's
# decisions depend on the runs before: off for every test and every
# interpreter a test starts, unless the test turns it on in a folder of its own.
os.environ["PARLOOP_COST_CACHE"] = "off"

# backend, start method: the process backend runs under every start method.
BACKENDS = [
    pytest.param(("serial", None), id="serial"),
    pytest.param(("thread", None), id="thread"),
    pytest.param(("process", "fork"), id="process-fork"),
    pytest.param(("process", "forkserver"), id="process-forkserver"),
    pytest.param(("process", "spawn"), id="process-spawn"),
]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Options selecting one backend (and start method) for a contract test."""
    name, method = request.param
    options: dict[str, Any] = {"backend": name, "workers": 2}
    if method is not None:
        options["start_method"] = method
    return options


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


# Processes multiprocessing itself keeps for the whole session (the forkserver
# and the resource tracker); they are not leaks.
def _infrastructure() -> set[int]:
    pids = set()
    try:
        from multiprocessing import forkserver, resource_tracker
        server = forkserver._forkserver._forkserver_pid  # type: ignore[attr-defined]
        tracker = resource_tracker._resource_tracker._pid  # type: ignore[attr-defined]
        pids |= {p for p in (server, tracker) if p}
    except (ImportError, AttributeError):
        pass
    from parloop.backends.process import launch as _launch
    own = _launch.server_pid()  # parloop's own fork server, shared by every test
    if own is not None:
        pids.add(own)
    return pids


@pytest.fixture(autouse=True)
def census(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves a child process, a thread or an fd behind
    once the warm pool is closed. Each test starts with no costs measured
    by earlier tests (an earlier test's calls of the same function would
    make this one's first call skip its probe)."""
    _scope.warm_pools.close_all()
    _costs._history.clear()
    before_fds = _fds()
    before_threads = {t.ident for t in threading.enumerate()}
    yield
    _scope.warm_pools.close_all()
    if "no_census" in request.keywords:
        return
    deadline = time.monotonic() + 5
    while True:
        children = procs.children(os.getpid()) - _infrastructure()
        # Threads _threadpool keeps idle for the next trial or thread pool
        # are not leaks (each ends after IDLE_SECONDS); a busy one is.
        idle = _threadpool.idle_threads()
        threads = [t for t in threading.enumerate() if t.ident not in before_threads
                   and not t.name.startswith(("parloop-async", "asyncio")) and t not in idle]
        fds = _fds() - before_fds
        # Stragglers get a moment: a killed worker is reaped asynchronously.
        if (not children and not threads) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not children, f"child processes left behind: {sorted(children)}"
    assert not threads, f"threads left behind: {threads}"
    # fds opened by the forkserver/resource tracker on first use are shared infrastructure.
    leaked = {fd for fd in fds if not _is_infrastructure_fd(fd)}
    assert not leaked, f"file descriptors left open: {_describe(leaked)}"


def _is_infrastructure_fd(fd: str) -> bool:
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return True  # closed meanwhile
    if "/pym-" in target:
        return True  # multiprocessing's shared heap arena: one per process, reused
    return target.startswith(("pipe:", "socket:")) and _infrastructure_started_recently(fd)


_known_infra_fds: set[str] = set()


def _infrastructure_started_recently(fd: str) -> bool:
    # The forkserver and resource tracker each keep one pipe/socket open for the
    # session; accept at most the first few such fds ever seen.
    if fd in _known_infra_fds:
        return True
    if len(_known_infra_fds) < 4 and _infrastructure():
        _known_infra_fds.add(fd)
        return True
    return False


def _describe(fds: set[str]) -> list[str]:
    out = []
    for fd in sorted(fds, key=int):
        try:
            out.append(f"{fd} -> {os.readlink(f'/proc/self/fd/{fd}')}")
        except OSError:
            out.append(fd)
    return out


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "no_census: the test manages processes itself")
    # Started as a background job of a non-interactive shell (nohup, some CI
    # runners), this process ignores SIGINT, and so would every script the
    # Ctrl-C tests start (an ignored signal stays ignored across exec, and
    # Python then installs no KeyboardInterrupt handler). Restore it.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
