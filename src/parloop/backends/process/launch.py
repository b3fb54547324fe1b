"""How parloop starts a worker process: forked from the caller, forked from
parloop's own fork server, or spawned as a fresh interpreter.

**No worker imports the user's main module.** parloop sends the functions
of ``__main__`` by value (see ``_pickling``), so no worker needs it, and
multiprocessing's habit of importing it in each spawn or forkserver child
breaks the places people write code: a script without an ``if __name__ ==
"__main__":`` guard runs its whole body again in every worker, and a script
read from stdin, ``python -c`` or a REPL has no main module to import.
Here a child's preparation data simply leaves the main module out.

**parloop's fork server** (when forking the caller is not safe because it
has threads: NumPy's, a server's, a notebook's) is a private instance of
multiprocessing's ``ForkServer``, not the shared one a user's own ``Pool``
uses, so parloop's preloads never reach the user's pools. Beyond leaving
the main module alone:

* It imports, once, the *libraries* the main module had imported (NumPy,
  pandas, ...), so that each worker finds them loaded rather than importing
  them itself (NumPy's import is the cost of the README's cold NumPy cells).
* Ctrl-C never reaches it. It is spawned with SIGINT blocked, and the first
  module it imports (``_server_init``) ignores SIGINT before unblocking it,
  so a Ctrl-C while it starts prints no traceback of its own
  (multiprocessing's server ignores SIGINT only after its imports).
* It is disposable: when it dies (the OOM killer, a stray ``kill``), the
  next worker start launches a new one.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import signal
import sys
import threading
import types
from multiprocessing import context as _context
from multiprocessing import forkserver as _forkserver
from multiprocessing import popen_forkserver, popen_spawn_posix, process
from multiprocessing import spawn as _spawn
from multiprocessing import util as _util
from typing import Any

from ... import _costs

# multiprocessing's internals, which typeshed does not describe
context: Any = _context
forkserver: Any = _forkserver
spawn: Any = _spawn
util: Any = _util

__all__ = ["context_for", "ensure_running", "libraries_of_main", "server_pid"]

#: marks a library in the server's preload list, for ``_server_init`` to import
PRELOAD_PREFIX = "parloop-preload:"
_server = forkserver.ForkServer()
_server_lock = threading.Lock()
_SERVER_MODULES = ("parloop.backends.process.server_init", "parloop.backends.process.worker")
# Packages of interactive shells and test runners: never worth preloading.
_SKIP = frozenset({"IPython", "ipykernel", "jupyter_client", "traitlets", "zmq", "tornado",
                   "parloop", "_pytest", "pytest", "pluggy", "builtins", "__main__",
                   "__mp_main__"})
_MAX_PRELOAD_CHARS = 64 << 10


def libraries_of_main() -> list[str]:
    """The modules of the libraries the main module imported (``import numpy
    as np``, ``from x import y``), as far as this process has loaded them:
    the fork server imports them once for all its workers. With cloudpickle
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


def start_tracker() -> None:
    """Have multiprocessing's resource tracker running, which forkserver and
    spawn children are handed, without touching this thread's signal mask.

    * The tracker may have been killed (the OOM killer, a stray ``kill``):
      the dead one is forgotten first, so the new one starts without the
      warning multiprocessing prints then (parloop's workers keep no
      resources in it; the warning would only alarm).
    * Its start unblocks SIGINT unconditionally once it has spawned
      (bpo-33613's guard restores with ``SIG_UNBLOCK``, not the old mask).
      The fork server and every worker are spawned with SIGINT blocked, and
      a tracker started inside that region silently undid it: the server
      then printed a KeyboardInterrupt of its own for a Ctrl-C 50 ms in.
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


def ensure_running() -> None:
    """Start the server if it is not running (or has died). Called from the
    caller's own thread before a pool starts in another one: the spawn
    blocks SIGINT for a moment, which only the calling thread's mask sees."""
    start_tracker()
    with _server_lock:
        if _alive():
            return
        if os.environ.get("PARLOOP_PRELOAD_MAIN") == "0":
            _server.set_forkserver_preload(list(_SERVER_MODULES))
        else:
            libraries = [PRELOAD_PREFIX + name for name in libraries_of_main()]
            _server.set_forkserver_preload([*_SERVER_MODULES, *libraries])
        # The server inherits this thread's mask: it starts deaf to Ctrl-C.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            _server.ensure_running()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        _costs.note_fork_server(True)


def _alive() -> bool:
    """Whether the server runs; a dead one is forgotten here (it is reaped
    here, so multiprocessing's own check would find no such child)."""
    pid = _server._forkserver_pid
    if pid is None:
        return False
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == 0:
            return True
    except ChildProcessError:
        pass
    _costs.note_fork_server(False)
    if _server._forkserver_alive_fd is not None:
        os.close(_server._forkserver_alive_fd)
    _server._forkserver_alive_fd = _server._forkserver_address = _server._forkserver_pid = None
    return False


def server_pid() -> int | None:
    """The server's pid, while it runs (for tests and ``python -m parloop info``)."""
    with _server_lock:
        return _server._forkserver_pid if _alive() else None


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


class _ForkServerPopen(popen_forkserver.Popen):
    """Starts one process through parloop's fork server."""

    _fds: list[int]

    def _launch(self, process_obj: Any) -> None:
        ensure_running()
        data = _payload(self, process_obj)
        self.sentinel, writer = _server.connect_to_new_process(self._fds)
        # A duplicate of the write end tells the child when its parent is gone.
        parent_end = os.dup(writer)
        self.finalizer = util.Finalize(self, util.close_fds, (parent_end, self.sentinel))
        with open(writer, "wb", closefd=True) as pipe:
            pipe.write(data.getbuffer())
        self.pid = forkserver.read_signed(self.sentinel)


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
