"""The thread backend: a thread pool in the caller's process. Nothing is
pickled, so it suits I/O-bound work and functions that release the GIL.

A running thread cannot be interrupted: after a cancel (an error, ``break``,
Ctrl-C) the items already running finish in the background and their results
are dropped. ``timeout=`` is not enforced here; use the process backend.
"""

from __future__ import annotations

import queue
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor

from .base import Backend, Chunk, Job, Outcome, run_chunk

__all__ = ["ThreadBackend"]


class ThreadBackend(Backend):
    name = "thread"

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="parloop")
        self._done: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
        self._futures: defaultdict[int, set[Future[Outcome]]] = defaultdict(set)

    def submit(self, chunk: Chunk) -> None:
        future = self._executor.submit(run_chunk, chunk, BaseException)
        futures = self._futures[chunk.job.id]
        futures.add(future)
        future.add_done_callback(self._finished)

    def _finished(self, future: Future[Outcome]) -> None:
        if future.cancelled():
            return
        outcome = future.result()  # run_chunk caught everything the item raised
        self._futures[outcome.job_id].discard(future)
        self._done.put(outcome)

    def _poll(self, timeout: float | None) -> list[Outcome]:
        try:
            ready = [self._done.get(timeout=timeout)]
        except queue.Empty:
            return []
        while True:
            try:
                ready.append(self._done.get_nowait())
            except queue.Empty:
                return ready

    def cancel(self, job: Job) -> None:
        for future in self._futures.pop(job.id, set()):
            future.cancel()

    def end_job(self, job: Job) -> None:
        super().end_job(job)
        self._futures.pop(job.id, None)

    def close(self, *, kill: bool = False) -> None:
        self._executor.shutdown(wait=not kill, cancel_futures=True)


def create(workers: int, options: object) -> ThreadBackend:
    return ThreadBackend(workers)
