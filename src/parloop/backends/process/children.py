"""The caller's side of the worker processes: starting one, stopping some,
what each holds, and the process-wide hooks that keep workers from outliving
their caller or leaking into a forked child. ``process.py`` drives them."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
import weakref
from collections import deque
from multiprocessing import util
from typing import Any, NamedTuple, Protocol

from ... import _threadpool
from ...errors import short_repr
from .._runner import IDLE, PREPARING
from ..base import Chunk
from . import inherit
from . import worker as _worker

__all__ = ["Sent", "Worker", "crash_message", "live_pools", "server_pid", "start", "stop",
           "track"]


class Sent:
    """A chunk sent to a worker and not yet fully reported. (Plain classes
    here, not dataclasses: dataclasses with inspect was ~7 ms of the first
    pool's start, on the way to its first item.)"""

    __slots__ = ("by_value", "cancelled_at", "chunk", "next_index", "revoking", "split",
                 "started")

    def __init__(self, chunk: Chunk, next_index: int, split: bool, by_value: bool = False) -> None:
        self.chunk = chunk
        self.next_index = next_index  # items before this one have been reported
        # items pickled one by one (the worker unpickles each just before running it)
        self.split = split
        self.by_value = by_value  # classes of __main__ among the items were sent by value
        self.revoking = False  # asked back (Revoke), no answer yet
        self.started = False  # the worker said it had started it: never asked back again
        self.cancelled_at: float | None = None

    @property
    def end(self) -> int:
        return self.chunk.start + len(self.chunk.items)


class Holding(NamedTuple):
    """The item a worker is at, from its status (see ``_runner``)."""

    sent: Sent
    item_index: int
    phase: float  # its start time while it runs; PREPARING; or IDLE (done, not yet sent)

    @property
    def running_since(self) -> float | None:
        return self.phase if self.phase > IDLE else None

    @property
    def unpickling(self) -> bool:
        return self.phase == PREPARING


class Worker:
    """One worker process, its pipe, and what it holds."""

    __slots__ = ("assigned", "conn", "ending", "forked", "holds", "inflight", "jobs", "pid",
                 "process", "ready", "server", "slot", "status")

    def __init__(self, process: Any, pid: int, conn: Any, status: Any, *, forked: bool = False,
                 server: int | None = None, slot: int = 0,
                 holds: frozenset[int] = frozenset()) -> None:
        self.process = process
        self.pid = pid
        self.conn = conn
        self.status = status  # RawArray('d', 3): [phase, item index, job id]; see _worker
        self.forked = forked  # a fork of this process: it has this process's __main__
        self.ready = False
        self.assigned = 0  # items given to it so far (for max_items_per_worker)
        self.server = server  # the fork server it came from, which reports its exit
        # its worker_id(): a replacement takes the slot of the worker it replaces
        self.slot = slot
        self.holds = holds  # jobs whose arguments it inherited by fork
        self.jobs: set[int] = set()
        self.ending: set[int] = set()  # jobs whose teardown it has yet to answer
        self.inflight: deque[Sent] = deque()

    def load(self) -> int:
        """Chunks it holds that anyone still waits for: a cancelled one it
        has not reached will be skipped at once."""
        return sum(1 for sent in self.inflight if sent.cancelled_at is None)

    @property
    def name(self) -> str:
        return f"pid {self.pid}"

    def holding(self) -> Holding | None:
        """The item the worker is at, if it is one it holds unreported."""
        phase, index, job_id = self.status[:]
        index = int(index)
        for sent in self.inflight:
            if sent.chunk.job.id == job_id and sent.next_index <= index < sent.end:
                return Holding(sent, index, phase)
        return None


def start(method: str, threads: int, idle_timeout: float, slot: int = 0) -> Worker:
    """A new worker process, started by ``method`` ("fork", "forkserver"
    (parloop's own server) or "spawn"); see ``launch``. ``slot``: its
    index in the pool (its ``worker_id()``)."""
    context: Any
    if method == "fork":  # launch (the fork server, spawn) is ~5 ms to import: only if used
        context = multiprocessing.get_context("fork")
    else:
        from . import launch

        context = launch.context_for(method)
    ours, theirs = context.Pipe(duplex=True)
    _caller_ends.add(ours)
    status = context.RawArray("d", 3)
    process = context.Process(target=_worker.main, name="parloop-worker",
                              args=(theirs, status, threads, idle_timeout, slot))
    # A Ctrl-C that reaches a worker before it ignores SIGINT would print
    # a traceback of its own: the child starts with SIGINT blocked (the
    # mask survives fork and exec) and unblocks it once it ignores it.
    # Here it is only deferred, never lost.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    holds: frozenset[int] = frozenset()
    try:
        if method == "fork":
            holds = inherit.holding()  # the running calls' arguments it will have
            _threadpool.stop_idle()  # parloop's own idle threads never make a fork unsafe
        process.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        theirs.close()
    server = server_pid() if method == "forkserver" else None
    return Worker(process, process.pid, ours, status, forked=method == "fork", server=server,
                  slot=slot, holds=holds)


def stop(workers: list[Worker]) -> None:
    """End ``workers`` now (SIGTERM, then SIGKILL) and release them."""
    for worker in workers:
        if worker.process.is_alive():
            worker.process.terminate()
    deadline = time.monotonic() + 0.5
    for worker in workers:
        worker.process.join(max(0.0, deadline - time.monotonic()))
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join(5)
        worker.conn.close()
        worker.process.close()


def crash_message(worker: Worker, code: int | None, index: int, chunk: Chunk) -> str:
    how = f"exit code {code}"
    if code is not None and code < 0:
        try:
            how = f"signal {signal.Signals(-code).name}"
        except ValueError:
            how = f"signal {-code}"
    item = chunk.items[index - chunk.start]
    if worker.server is not None and server_pid() != worker.server:
        # The server that forked it reports its exit; with the server gone,
        # the worker is lost to this pool (it ends when its pipe closes).
        return (f"parloop's fork server (pid {worker.server}) died, and with it the pool's "
                f"hold on worker pid {worker.pid}, which held item #{index} "
                f"({short_repr(item)}). A new server and worker have replaced them")
    return (f"worker pid {worker.pid} died ({how}) while it held item #{index} "
            f"({short_repr(item)}). A new worker has replaced it")


def server_pid() -> int | None:
    """The fork server's pid, if one runs (none can before its module is imported)."""
    server = sys.modules.get(f"{__package__}.server")
    return None if server is None else server.server_pid()


# -- process-wide hooks ------------------------------------------------------------------


class Pool(Protocol):
    def close(self, *, kill: bool = False) -> None: ...
    def disown(self) -> None: ...


# Caller-side pipe ends and the pools of this process, for the hooks below.
_caller_ends: weakref.WeakSet[Any] = weakref.WeakSet()
live_pools: weakref.WeakSet[Pool] = weakref.WeakSet()


def _close_inherited_ends() -> None:
    for conn in list(_caller_ends):
        conn.close()
    for pool in list(live_pools):
        pool.disown()


_finalizer_pid = 0


def track(pool: Pool) -> None:
    """Close ``pool`` at exit, whatever still holds it.

    multiprocessing's exit hook (at the main process's exit, and at the end of
    every multiprocessing child) waits for all non-daemonic children. It would
    wait forever for the workers of a pool still leased (say by an ``f.iter``
    abandoned at Ctrl-C) or idle in a child. Its finalizers run first.
    """
    global _finalizer_pid
    live_pools.add(pool)
    if _finalizer_pid != os.getpid():  # a forked child starts with no finalizers
        _finalizer_pid = os.getpid()
        util.Finalize(None, _close_live_pools, exitpriority=10)


def _close_live_pools() -> None:
    for pool in list(live_pools):
        pool.close()


os.register_at_fork(after_in_child=_close_inherited_ends)
