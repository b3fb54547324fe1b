"""The fork server's own side: what runs in the server process and in each
worker it forks (see ``server`` for why parloop has its own)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import sys

__all__ = ["ESSENTIALS", "MAX_FDS", "DupFd", "inherited", "main", "read_signed"]

_SIGNED = struct.Struct("q")
#: file descriptors a request may carry (the worker's pipes and shared buffers)
MAX_FDS = 32
#: what every worker needs, imported by the server before its first fork
ESSENTIALS = ("multiprocessing.spawn", "multiprocessing.connection",
              "multiprocessing.sharedctypes", "multiprocessing.resource_tracker",
              "parloop.backends.process.worker")

# In a worker: the descriptors its request carried, which ``DupFd`` reads.
inherited: list[int] = []


class DupFd:
    """A descriptor pickled for a worker the server forks: it travels beside
    the request, and the worker finds it by its place in ``inherited``."""

    def __init__(self, index: int) -> None:
        self.index = index

    def detach(self) -> int:
        return inherited[self.index]


def read_signed(fd: int) -> int:
    data = b""
    while len(data) < _SIGNED.size:
        more = os.read(fd, _SIGNED.size - len(data))
        if not more:
            raise EOFError("the fork server closed the pipe")
        data += more
    return int(_SIGNED.unpack(data)[0])


def _write_signed(fd: int, value: int) -> None:
    message = _SIGNED.pack(value)
    while message:
        message = message[os.write(fd, message):]


def main(requests_fd: int, alive_fd: int, preload: list[str]) -> None:
    """The server: started by ``ForkServer.start``; returns when the caller is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    from .worker import BLAS_VARIABLES

    # A library's thread pool is sized when it loads: the workers forked
    # from here, one per CPU, would each inherit one as wide as the
    # machine (a 300x300 product took 13 ms in each of two workers
    # instead of ~1.5 ms). A worker with threadpoolctl sets its own share.
    for variable in BLAS_VARIABLES:
        os.environ.setdefault(variable, "1")
    import importlib

    for name in ESSENTIALS:
        importlib.import_module(name)
    for name in preload:  # the libraries of the caller's main module
        # A worker that needs one that failed here reports what fails.
        with contextlib.suppress(BaseException):
            importlib.import_module(name)
    tracker = _start_tracker([requests_fd, alive_fd])
    with socket.socket(fileno=requests_fd) as requests:
        _serve(requests, alive_fd, tracker)


def _start_tracker(unused: list[int]) -> int:
    """A resource tracker for the workers, forked from here (a spawned one
    is an interpreter, ~25 ms of CPU): what a worker's code registers
    (shared memory it creates, or attaches to before Python 3.13) is
    unlinked when the server and all its workers have ended, that is, at
    the caller's exit, as with multiprocessing's own server. Returns the
    descriptor its workers write to."""
    from multiprocessing import resource_tracker

    tracker_r, tracker_w = os.pipe()
    if os.fork() == 0:
        code = 1
        try:
            for fd in (*unused, tracker_w):
                os.close(fd)
            resource_tracker.main(tracker_r)
            code = 0
        finally:
            os._exit(code)
    os.close(tracker_r)
    return tracker_w


def _serve(requests: socket.socket, alive_fd: int, tracker: int) -> None:
    import select

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)  # a SIGCHLD wakes the poll below
    signal.signal(signal.SIGCHLD, lambda *_: None)
    children: dict[int, int] = {}  # pid -> its status pipe
    poller = select.poll()
    for fd in (requests.fileno(), alive_fd, wake_r):
        poller.register(fd, select.POLLIN)
    while True:
        ready = {fd for fd, _ in poller.poll()}
        if alive_fd in ready:
            return  # the caller is gone: its workers end when their pipes close
        if wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(wake_r, 4096):
                    pass
            _reap(children)
        if requests.fileno() in ready:
            message, fds, _, _ = socket.recv_fds(requests, 16, MAX_FDS)
            if not message:
                return
            if message == b"t":  # the caller adopts the workers' tracker
                socket.send_fds(requests, [b"t"], [tracker])
                continue
            data_r, status_w, tracker_w, *rest = fds
            pid = os.fork()
            if pid == 0:
                _child(data_r, rest, tracker_w, [requests.fileno(), alive_fd, wake_r, wake_w,
                                                 status_w, tracker, *children.values()])
            children[pid] = status_w
            _write_signed(status_w, pid)
            for fd in (data_r, tracker_w, *rest):
                os.close(fd)


def _reap(children: dict[int, int]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        status_w = children.pop(pid, None)
        if status_w is not None:
            with contextlib.suppress(OSError):  # the caller let go of it
                _write_signed(status_w, os.waitstatus_to_exitcode(status))
            os.close(status_w)


def _child(data_r: int, fds: list[int], tracker: int, unused: list[int]) -> None:
    """(A worker, just forked.) Read the process object multiprocessing
    pickled for it, and run it; never returns."""
    import atexit
    from multiprocessing import resource_tracker, spawn, util

    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in unused:
            os.close(fd)
        inherited[:] = fds
        resource_tracker._resource_tracker._fd = tracker  # type: ignore[attr-defined]
        atexit._clear()  # the server's exit hooks are not the worker's
        atexit.register(util._exit_function)  # type: ignore[attr-defined]
        parent_sentinel = os.dup(data_r)
        code = spawn._main(data_r, parent_sentinel)
    except BaseException:
        sys.excepthook(*sys.exc_info())
        sys.stderr.flush()
    finally:
        atexit._run_exitfuncs()
        os._exit(code)
