"""When a worker must be stopped from the caller: an item past its
``timeout=``, or a cancelled item that its worker has not stopped by itself
within CANCEL_GRACE. Functions over the pool's workers; the pool replaces
the ones they name, or kill."""

from __future__ import annotations

import threading
from typing import Any

from ...errors import TaskTimeoutError, short_repr
from .children import Worker
from .worker import CANCEL_GRACE

__all__ = ["kill_later", "overdue", "seconds_to_next"]


def kill_later(lock: Any, roster: Any, job: Any, seconds: float) -> None:
    """In ``seconds``, a timer thread kills the workers still on an item of
    the cancelled ``job``, whether or not anyone polls the pool meanwhile.
    It only kills: the pool's next use replaces them (no fork from there)."""

    def kill() -> None:
        with lock:
            for worker in roster.running(job):
                worker.process.kill()

    timer = threading.Timer(seconds, kill)
    timer.name, timer.daemon = "parloop-cancel", True
    timer.start()


def _deadlines(worker: Worker) -> list[float]:
    """The moments (time.monotonic) by which ``worker`` must have moved on."""
    if not worker.inflight:
        return []
    ends = []
    if worker.inflight[0].cancelled_at is not None:
        ends.append(worker.inflight[0].cancelled_at + CANCEL_GRACE)
    at = worker.holding()
    if at is not None and at.running_since and at.sent.chunk.job.timeout is not None:
        ends.append(at.running_since + at.sent.chunk.job.timeout)
    return ends


def seconds_to_next(workers: list[Worker], now: float, timeout: float | None) -> float | None:
    """``timeout``, shortened to the next deadline of any of ``workers``."""
    for worker in workers:
        for end in _deadlines(worker):
            left = max(0.0, end - now)
            timeout = left if timeout is None else min(timeout, left)
    return timeout


def overdue(workers: list[Worker], now: float) -> list[tuple[Worker, BaseException | None]]:
    """Workers to stop now, each with the error its item gets (None: the
    item was cancelled, and nobody waits for it)."""
    late: list[tuple[Worker, BaseException | None]] = []
    for worker in workers:
        if not worker.inflight:
            continue
        cancelled_at = worker.inflight[0].cancelled_at
        if cancelled_at is not None and now - cancelled_at > CANCEL_GRACE:
            late.append((worker, None))  # it did not stop a cancelled item itself
            continue
        at = worker.holding()
        if at is None or at.running_since is None:
            continue
        timeout = at.sent.chunk.job.timeout
        if timeout is not None and now - at.running_since > timeout:
            item = at.sent.chunk.items[at.item_index - at.sent.chunk.start]
            late.append((worker, TaskTimeoutError(
                f"item #{at.item_index} ({short_repr(item)}) ran longer than timeout="
                f"{timeout:g} s; its worker (pid {worker.pid}) was killed and replaced")))
    return late
