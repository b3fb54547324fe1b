"""How parloop starts a worker process: forked from the caller, forked from
parloop's own fork server (``server``), or spawned as a fresh interpreter.

**No worker imports the user's main module.** parloop sends the functions
of ``__main__`` by value (see ``_pickling``), so no worker needs it, and
multiprocessing's habit of importing it in each spawn or forkserver child
breaks the places people write code: a script without an ``if __name__ ==
"__main__":`` guard runs its whole body again in every worker, and a script
read from stdin, ``python -c`` or a REPL has no main module to import.
Here a child's preparation data simply leaves the main module out.

The fork server (when forking the caller is not safe because it has
threads: NumPy's, a server's, a notebook's) is parloop's own, not the
shared one a user's own ``Pool`` uses: see ``server``.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import signal
from multiprocessing import context as _context
from multiprocessing import popen_fork, popen_spawn_posix, process
from multiprocessing import spawn as _spawn
from multiprocessing import util as _util
from typing import Any

from . import server, server_main
from .server import libraries_of_main, server_pid

# multiprocessing's internals, which typeshed does not describe
context: Any = _context
spawn: Any = _spawn
util: Any = _util

__all__ = ["context_for", "libraries_of_main", "server_pid"]


def start_tracker() -> None:
    """Have multiprocessing's resource tracker running, which spawned
    children are handed, without touching this thread's signal mask.

    * The tracker may have been killed (the OOM killer, a stray ``kill``):
      the dead one is forgotten first, so the new one starts without the
      warning multiprocessing prints then (parloop's workers keep no
      resources in it; the warning would only alarm).
    * Its start unblocks SIGINT unconditionally once it has spawned
      (bpo-33613's guard restores with ``SIG_UNBLOCK``, not the old mask).
      Every worker is spawned with SIGINT blocked, and a tracker started
      inside that region silently undid it: the child then printed a
      KeyboardInterrupt of its own for a Ctrl-C 50 ms in.
      Started here first, the tracker is found running inside the region."""
    from multiprocessing import resource_tracker

    tracker: Any = resource_tracker._resource_tracker
    try:
        with tracker._lock:
            if tracker._fd is not None and not tracker._check_alive():
                os.close(tracker._fd)
                with contextlib.suppress(ChildProcessError):
                    if tracker._pid is not None:
                        os.waitpid(tracker._pid, 0)
                tracker._fd = tracker._pid = None
    except AttributeError:  # its insides changed: let it relaunch (and warn) itself
        pass
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    try:
        tracker.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _preparation(name: str) -> dict[str, Any]:
    """What a new child needs to know of this process, less the main module."""
    preparation: dict[str, Any] = spawn.get_preparation_data(name)
    preparation.pop("init_main_from_path", None)
    preparation.pop("init_main_from_name", None)
    return preparation


def _payload(popen: Any, process_obj: Any) -> io.BytesIO:
    """The preparation data and the process object, pickled for the child;
    fds they hold are registered with ``popen`` to be passed beside them."""
    data = io.BytesIO()
    context.set_spawning_popen(popen)
    try:
        context.reduction.dump(_preparation(process_obj._name), data)
        context.reduction.dump(process_obj, data)
    finally:
        context.set_spawning_popen(None)
    return data


class _ForkServerPopen(popen_fork.Popen):
    """Starts one process through parloop's fork server, which reports its
    pid and, later, its exit code on ``sentinel``."""

    method = "forkserver"
    DupFd = server_main.DupFd

    def __init__(self, process_obj: Any) -> None:
        self._fds: list[int] = []
        super().__init__(process_obj)

    def duplicate_for_child(self, fd: int) -> int:
        self._fds.append(fd)
        return len(self._fds) - 1

    def _launch(self, process_obj: Any) -> None:
        data = _payload(self, process_obj)
        self.sentinel, writer, self.pid = server.fork(self._fds)
        # A duplicate of the write end tells the child when its parent is gone.
        parent_end = os.dup(writer)
        self.finalizer = util.Finalize(self, util.close_fds, (parent_end, self.sentinel))
        with open(writer, "wb", closefd=True) as pipe:
            pipe.write(data.getbuffer())

    def poll(self, flag: int = os.WNOHANG) -> int | None:
        if self.returncode is None:
            from multiprocessing.connection import wait

            if not wait([self.sentinel], 0 if flag == os.WNOHANG else None):
                return None
            try:
                self.returncode = server_main.read_signed(self.sentinel)
            except (OSError, EOFError):  # the server died: the worker is lost to us
                self.returncode = 255
        return self.returncode


class _SpawnPopen(popen_spawn_posix.Popen):
    """Starts one fresh interpreter, which reads its payload from a pipe."""

    _fds: list[int]

    def _launch(self, process_obj: Any) -> None:
        from multiprocessing import resource_tracker

        start_tracker()
        tracker: int = resource_tracker.getfd()  # type: ignore[assignment]
        self._fds.append(tracker)
        data = _payload(self, process_obj)
        parent_read, child_write = os.pipe()
        child_read, parent_write = os.pipe()
        try:
            command = spawn.get_command_line(tracker_fd=tracker, pipe_handle=child_read)
            self._fds += [child_read, child_write]
            self.pid = util.spawnv_passfds(spawn.get_executable(), command, self._fds)
            self.sentinel = parent_read  # EOF when the child exits
            with open(parent_write, "wb", closefd=False) as pipe:
                pipe.write(data.getbuffer())
        finally:
            self.finalizer = util.Finalize(self, util.close_fds, (parent_read, parent_write))
            os.close(child_read)
            os.close(child_write)


class _ForkServerProcess(process.BaseProcess):
    _start_method = "forkserver"

    @staticmethod
    def _Popen(process_obj: Any) -> _ForkServerPopen:
        return _ForkServerPopen(process_obj)


class _SpawnProcess(process.BaseProcess):
    _start_method = "spawn"

    @staticmethod
    def _Popen(process_obj: Any) -> _SpawnPopen:
        return _SpawnPopen(process_obj)


class _ForkServerContext(_context.BaseContext):
    _name = "forkserver"
    Process = _ForkServerProcess


class _SpawnContext(_context.BaseContext):
    _name = "spawn"
    Process = _SpawnProcess


def context_for(method: str) -> Any:
    """A multiprocessing context whose processes start by ``method``, without
    the main module (fork needs no change: a fork has it already)."""
    if method == "forkserver":
        return _ForkServerContext()
    if method == "spawn":
        return _SpawnContext()
    return multiprocessing.get_context(method)
