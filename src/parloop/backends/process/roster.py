"""The worker processes of one pool: starting them (and starting others when
some die or have run their share of items), and choosing who takes the next
chunk. ``pool.ProcessBackend`` drives it; it never touches a pipe."""

from __future__ import annotations

import time
from typing import Any

from ..._cpu import default_start_method
from . import children
from .children import Worker

__all__ = ["Roster"]

STARTUP_FAILURES = 3  # workers dying before "ready" in a row: the pool is broken
START_PATIENCE = 5.0  # seconds starts may keep failing before waiting chunks fail
STOP_GRACE = 2.0  # an idle worker asked to stop may take this long before it is killed


class Roster:
    """``size`` workers, started by ``start_method`` (None: re-decided for
    each start, as the caller may have started threads since), each
    replaced after ``max_items`` items when that is set."""

    def __init__(self, size: int, start_method: str | None, threads: int,
                 idle_timeout: float, max_items: int | None) -> None:
        self.size = size
        self.start_method = start_method
        self.threads = threads
        self.idle_timeout = idle_timeout
        self.max_items = max_items
        self.workers: list[Worker] = []
        self.failures = 0  # workers that died before they were ready, in a row
        self.broken: str | None = None  # why no worker can start, once that is clear
        self.broken_at = 0.0
        self.failing_since: float | None = None  # starts have raised since then
        self.last_failure = ""

    def refill(self) -> None:
        """Start workers until there are ``size``. A start that raises (the
        fork server or the resource tracker just died, say) is tried again
        at once, with fresh helpers, and then at each refill."""
        if self.broken is not None and time.monotonic() - self.broken_at > START_PATIENCE:
            self.broken, self.failures = None, 0  # try again: the cause may have passed
        while len(self.workers) < self.size and self.broken is None:
            method = self.start_method or default_start_method()
            for attempt in (1, 2):
                try:
                    taken = {worker.slot for worker in self.workers}
                    slot = min(set(range(self.size)) - taken)
                    self.workers.append(children.start(method, self.threads, self.idle_timeout,
                                                       slot))
                    self.failing_since = None
                    break
                except Exception as exc:
                    self.last_failure = (f"a worker could not be started ({method}): "
                                         f"{type(exc).__name__}: {exc}")
                    if self.failing_since is None:
                        self.failing_since = time.monotonic()
                    if attempt == 2:
                        return

    def hopeless(self) -> str | None:
        """Why chunks waiting for a worker should fail now: the pool is
        broken, or no worker has been started for START_PATIENCE seconds."""
        if self.broken is not None:
            return self.broken
        if not self.workers and self.failing_since is not None \
                and time.monotonic() - self.failing_since > START_PATIENCE:
            return self.last_failure
        return None

    def started(self, worker: Worker) -> None:
        """``worker`` said it is ready."""
        worker.ready = True
        self.failures = 0

    def remove(self, worker: Worker) -> int | None:
        """End ``worker`` (if it is not dead already) and take it off the
        roster; its exit code."""
        code: int | None = worker.process.exitcode
        children.stop([worker])
        if worker in self.workers:
            self.workers.remove(worker)
        server_died = worker.server is not None and children.server_pid() != worker.server
        if not worker.ready and not server_died:  # a dead server is no fault of the worker's
            self.failures += 1
            if self.failures >= STARTUP_FAILURES:
                self.broken_at = time.monotonic()
                self.broken = (f"workers die before they start (exit code {code}); see their "
                               "output above")
        return code

    def dead(self) -> list[Worker]:
        return [worker for worker in self.workers if worker.process.exitcode is not None]

    def pick(self) -> Worker | None:
        """Who takes the next chunk: the worker holding fewest, a ready one
        first; None when none can take one (none could be started, or all
        have been given their share of items and wait to be replaced)."""
        able = [w for w in self.workers if self.capacity(w) != 0]
        return min(able, key=lambda w: (w.load(), not w.ready)) if able else None

    def capacity(self, worker: Worker) -> int | None:
        """How many more items ``worker`` may be given (None: no limit)."""
        if self.max_items is None:
            return None
        return max(0, self.max_items - worker.assigned)

    def spent(self) -> list[Worker]:
        """Workers that have run their share of items and hold nothing: they
        are ended now, and ``refill`` starts their successors."""
        if self.max_items is None:
            return []
        done = [w for w in self.workers if w.assigned >= self.max_items and not w.inflight]
        for worker in done:
            self.workers.remove(worker)
        children.stop(done)
        return done

    def running(self, job: Any) -> list[Worker]:
        """Workers running an item of ``job`` now (not loading one)."""
        return [w for w in self.workers
                if (at := w.holding()) is not None and at.sent.chunk.job is job
                and not at.unpickling]

    def handles(self) -> dict[Any, Worker]:
        """Each worker's pipe and sentinel, to wait on."""
        handles: dict[Any, Worker] = {}
        for worker in self.workers:
            handles[worker.conn] = worker
            handles[worker.process.sentinel] = worker
        return handles

    def close(self, idle_stop: Any) -> None:
        """End every worker: the idle ones are asked (``idle_stop(worker)``
        sends them Stop), busy ones (their work was cancelled or abandoned,
        since nobody waits for it any more) are killed."""
        workers, self.workers = self.workers, []
        idle = [w for w in workers if not w.inflight] if idle_stop is not None else []
        for worker in idle:
            idle_stop(worker)
        deadline = time.monotonic() + STOP_GRACE
        for worker in idle:
            worker.process.join(max(0.0, deadline - time.monotonic()))
        children.stop(workers)
