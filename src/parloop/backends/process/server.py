"""parloop's fork server: one clean process that forks workers on request.

When the caller cannot be forked safely (it has threads: NumPy's, a
server's, a notebook's), workers are forked from this server instead. It
plays the part of multiprocessing's forkserver, with three differences
that make a first call's pool come up sooner (see "Speed, measured" in the
README):

* **Its start costs the caller next to nothing.** Starting it takes a
  socket pair, a pipe and one ``subprocess.Popen``, in this module, which
  imports nothing heavy: a first call's head start launches it the moment
  it wakes, beside a caller busy with the user's first item, and does the
  rest of its work (the pool's modules, the CPU limits) while the server
  boots. multiprocessing's server first needed ~20 ms of its modules and
  the resource tracker.
* **No resource tracker is spawned for it.** multiprocessing spawns one
  in the caller first (a whole interpreter, ~25 ms of CPU, competing with
  the server's boot). parloop's workers keep nothing in it (shared memory
  here is unlinked by name: ``shm``), but the user's code in a worker
  may (a ``SharedMemory`` it creates or attaches to): the server forks a
  tracker from itself, in ~1 ms, which the caller adopts when it has none
  of its own, so that caller and workers share one, as under
  multiprocessing, and it cleans up at the caller's exit.
* **It imports only what its workers need** (multiprocessing's process
  and pickling modules, parloop's worker) and then the libraries of the
  caller's main module, never the main module itself (see ``launch``).
  It ignores Ctrl-C from its first line on: it is spawned with SIGINT
  blocked and unblocks it only once it ignores it.

Requests go over a datagram socket pair, one message per worker, carrying
the worker's pipes as file descriptors. The server forks, answers the
worker's pid on the worker's own status pipe, and later its exit code on
the same pipe (it is the worker's parent, so only it can wait for it); EOF
there means the server died. It exits when the caller does: its end of a
pipe that only the caller holds then reads EOF.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import types
from typing import Any

from ... import _costs
from .server_main import MAX_FDS, read_signed

#: seconds the interpreter's exit waits for the server to end
EXIT_WAIT = 1.0

__all__ = ["ensure_running", "fork", "libraries_of_main", "server_pid", "stop_unused"]


class ForkServer:
    """The caller's handle on its server. ``lock`` guards every use."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._requests: socket.socket | None = None
        self._alive_w: int | None = None  # the server exits when this closes
        self._owner = 0  # the process that started it (a fork of it has none)
        self.forks = 0  # workers it has forked
        self._finalized = False  # end() is registered to run after the pools' finalizers

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def running(self) -> bool:
        """Whether it runs; a dead one is reaped and forgotten. (Lock held.)"""
        if self._process is None or self._owner != os.getpid():
            return False
        if self._process.poll() is None:
            return True
        self.forget()
        return False

    def forget(self) -> None:
        """Let go of it (it died, or this is a fork of its owner)."""
        if self._requests is not None:
            self._requests.close()
        if self._alive_w is not None:
            os.close(self._alive_w)
        self._process = self._requests = self._alive_w = None

    def end(self) -> None:
        """(At exit, after the pools have stopped their workers, whose exit
        codes it reports.) Let it go, and reap it: it ends as soon as the
        descriptor only this process holds is closed."""
        with self.lock:
            process = self._process if self._owner == os.getpid() else None
            self.forget()
        if process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(EXIT_WAIT)

    def end_unforked(self) -> None:
        """(At exit.) End a server that forked no worker (one that did is
        ended after the pools, see ``fork``)."""
        if not self._finalized:
            self.end()

    def disown(self) -> None:
        """(In a fork of the owner.) Close this copy's ends; the server is
        its parent's to wait for, never this process's."""
        if self._process is not None and self._owner != os.getpid():
            self._process.returncode = 0  # not ours: nothing here may wait for it
        self.forget()

    def start(self, preload: list[str]) -> None:
        """Launch it (lock held; not running). The caller's thread mask is
        what the server starts with: it blocks SIGINT around the launch."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        alive_r, alive_w = os.pipe()
        try:
            code = (f"import sys; sys.path[:] = {sys.path!r}; "
                    f"from {__name__}_main import main; "
                    f"main({theirs.fileno()}, {alive_r}, {preload!r})")
            flags: list[str] = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]
            self._process = subprocess.Popen(
                [sys.executable, *flags, "-c", code], pass_fds=(theirs.fileno(), alive_r),
                stdin=subprocess.DEVNULL)
        except BaseException:
            ours.close()
            os.close(alive_w)
            raise
        finally:
            theirs.close()
            os.close(alive_r)
        self._requests, self._alive_w, self._owner = ours, alive_w, os.getpid()
        self.forks = 0

    def stop(self) -> None:
        """End it now (lock held; running)."""
        assert self._process is not None
        self._process.kill()
        self._process.wait()
        self.forget()

    def fork(self, fds: list[int]) -> tuple[int, int, int]:
        """A new worker (lock held; running): its status pipe's read end (its
        pid, then its exit code), the write end of its data pipe, its pid.
        ``fds`` travel with it (see ``DupFd``)."""
        assert self._requests is not None
        if len(fds) + 3 > MAX_FDS:
            raise ValueError(f"a worker may inherit at most {MAX_FDS - 3} descriptors")
        tracker = self._tracker()
        status_r, status_w = os.pipe()
        data_r, data_w = os.pipe()
        try:
            try:
                socket.send_fds(self._requests, [b"f"], [data_r, status_w, tracker, *fds])
            finally:
                # Only the server may hold these now: were the caller to keep
                # its copy of the status pipe's write end, a server killed
                # before it answers would leave the read below waiting forever.
                os.close(data_r)
                os.close(status_w)
            if not self._finalized:
                self._finalized = True
                from multiprocessing import util

                # Run at exit after the finalizers of priority 0 and up,
                # which include the pools' (10): they need it until then.
                util.Finalize(None, self.end, exitpriority=-10)
            self.forks += 1
            pid = read_signed(status_r)
        except BaseException:
            os.close(status_r)
            os.close(data_w)
            raise
        return status_r, data_w, pid

    def _tracker(self) -> int:
        """(Lock held; running.) The descriptor of this process's resource
        tracker, which its workers share, as multiprocessing's workers
        share their parent's: a ``SharedMemory`` the caller creates and a
        worker attaches to is then unlinked once, by its creator. When this
        process has none yet, it adopts the one the server forked (~1 ms)
        rather than spawning one (~25 ms of CPU, beside the server's boot)."""
        from multiprocessing import resource_tracker

        tracker: Any = resource_tracker._resource_tracker
        if tracker._fd is None:
            assert self._requests is not None
            self._requests.send(b"t")
            _, fds, _, _ = socket.recv_fds(self._requests, 16, 1)
            if not fds:
                raise EOFError("the fork server did not answer")
            tracker._fd = fds[0]  # _pid stays None, as in a child: it is not ours to reap
        return int(tracker._fd)


_server = ForkServer()
# Packages of interactive shells and test runners: never worth preloading.
_SKIP = frozenset({"IPython", "ipykernel", "jupyter_client", "traitlets", "zmq", "tornado",
                   "parloop", "_pytest", "pytest", "pluggy", "builtins", "__main__",
                   "__mp_main__"})
_MAX_PRELOAD_CHARS = 64 << 10


def ensure_running() -> None:
    """Start the server if it is not running (or has died)."""
    with _server.lock:
        _ensure_running()


def _ensure_running() -> None:
    """(Lock held.) The spawn blocks SIGINT for a moment in the calling
    thread, whose mask the server inherits: it starts deaf to Ctrl-C."""
    if _running():
        return
    preload = [] if os.environ.get("PARLOOP_PRELOAD_MAIN") == "0" else libraries_of_main()
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        _server.start(preload)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    _costs.note_fork_server(True)


def stop_unused() -> None:
    """Stop the server if it has forked no worker yet: a first call's head
    start launched it for a pool it did not need (the caller forks its
    own), and its boot (~40 ms of CPU) would slow that pool's workers (a 3
    x 30 ms call's two items took 53-57 ms instead of 42)."""
    with _server.lock:
        if _server.running() and _server.forks == 0:
            _server.stop()
            _costs.note_fork_server(False)


def fork(fds: list[int]) -> tuple[int, int, int]:
    """A new worker from the server (started if need be); see ``ForkServer.fork``."""
    with _server.lock:
        _ensure_running()
        return _server.fork(fds)


def _running() -> bool:
    if _server.running():
        return True
    _costs.note_fork_server(False)
    return False


def server_pid() -> int | None:
    """The server's pid, while it runs (for tests and ``python -m parloop info``)."""
    with _server.lock:
        return _server.pid if _running() else None


def libraries_of_main() -> list[str]:
    """The modules of the libraries the main module imported (``import numpy
    as np``, ``from x import y``), as far as this process has loaded them:
    the server imports them once for all its workers. With cloudpickle
    when the main module defines functions: they travel by value, and each
    worker would otherwise import it (~17 ms) to load its first job."""
    main = sys.modules.get("__main__")
    packages: set[str] = set()
    for value in list(vars(main).values()) if main is not None else []:
        name: Any = None
        if isinstance(value, types.ModuleType):
            name = value.__name__
        elif isinstance(value, (type, types.FunctionType, types.BuiltinFunctionType)):
            name = getattr(value, "__module__", None)
            if name == "__main__" and isinstance(value, types.FunctionType):
                packages.add("cloudpickle")
        if isinstance(name, str) and name.partition(".")[0] not in _SKIP:
            packages.add(name.partition(".")[0])
    found: list[str] = []
    size = 0
    for name in sorted(n for n in list(sys.modules) if n.partition(".")[0] in packages):
        size += len(name) + 4
        if size > _MAX_PRELOAD_CHARS:  # the list travels on the server's command line
            break
        found.append(name)
    if "cloudpickle" in packages and "cloudpickle" not in found:
        found.append("cloudpickle")  # not loaded here yet (_pickling imports it when used)
    return found


# A fork of this process (a fork worker, the user's own fork) must not use
# the server, nor keep it alive.
os.register_at_fork(after_in_child=_server.disown)
atexit.register(_server.end_unforked)
