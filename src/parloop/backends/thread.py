"""The thread backend: a thread pool in the caller's process. Nothing is
pickled, so it suits I/O-bound work and functions that release the GIL.

Items run with the same loop as in a worker process (``_runner``), their
results and exceptions kept as they are. A running item cannot be
interrupted: after a cancel (an error, ``break``, Ctrl-C) the items already
running finish in the background and their results are dropped, and no
further item of the cancelled call starts. ``timeout=`` is not enforced
here; use the process backend. A ``setup=`` state is made once per pool
thread, and each thread's ``worker_id()`` is its index in the pool.
"""

from __future__ import annotations

import array
import functools
import itertools
import queue
import threading
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor

from ._runner import EVERYTHING, run_items
from ._state import set_worker_id
from ._wire import Done, JobSpec, decode, end_state
from .base import Backend, Chunk, Ended, Job, Outcome, Settings, drain

__all__ = ["ThreadBackend", "create"]


def _as_it_is(exc: BaseException) -> BaseException:
    return exc  # an exception in a thread needs no capturing to reach the caller


class ThreadBackend(Backend):
    name = "thread"

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        # Each pool thread gets its index (worker_id()) as it starts: 0 .. workers - 1.
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="parloop",
                                            initializer=self._number_thread)
        self._numbers = itertools.count()
        self._done: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
        self._futures: defaultdict[int, set[Future[None]]] = defaultdict(set)
        self._cancelled: set[int] = set()  # jobs whose remaining items must not start
        self._ending = threading.Lock()  # one round of teardowns at a time

    def _number_thread(self) -> None:
        set_worker_id(next(self._numbers), per_thread=True)

    def submit(self, chunk: Chunk) -> None:
        future = self._executor.submit(self._run, chunk)
        with self._lock:
            self._futures[chunk.job.id].add(future)
        future.add_done_callback(functools.partial(self._forget, chunk.job.id))

    def _run(self, chunk: Chunk) -> None:
        job = chunk.job
        spec = JobSpec.of(job, float("inf"), False)
        status = memoryview(array.array("d", [0.0, 0.0, 0.0]))
        worker = threading.current_thread().name

        def report(done: Done) -> None:
            self._done.put(decode(chunk, done, worker))

        run_items(job.id, spec, chunk.start, chunk.items, None, report=report, status=status,
                  cancelled=self._cancelled, load=_as_it_is, pack=_as_it_is,
                  as_is=EVERYTHING, keep=_as_it_is, per_thread=True)

    def _forget(self, job_id: int, future: Future[None]) -> None:
        with self._lock:
            self._futures[job_id].discard(future)

    def _poll(self, timeout: float | None) -> list[Outcome]:
        return drain(self._done, timeout)

    def cancel(self, job: Job) -> None:
        with self._lock:
            self._cancelled.add(job.id)
            futures = self._futures.pop(job.id, set())
        for future in futures:
            future.cancel()

    def end_states(self, job: Job) -> list[Ended]:
        """Each pool thread ends its own state (a connection may be bound to
        the thread that opened it): one task per thread, held at a barrier
        until every thread has one, so that no thread takes two."""
        barrier = threading.Barrier(self.workers)

        def end_this_thread() -> Ended:
            barrier.wait()
            return end_state(job.id, job.setup, per_thread=True)

        with self._ending:  # two rounds at once could each hold half the threads
            futures = [self._executor.submit(end_this_thread) for _ in range(self.workers)]
            ended = [future.result() for future in futures]
        return [answer for answer in ended if answer.made]

    def end_job(self, job: Job) -> None:
        super().end_job(job)
        with self._lock:
            self._futures.pop(job.id, None)
            self._cancelled.discard(job.id)

    def close(self, *, kill: bool = False) -> None:
        self._executor.shutdown(wait=not kill, cancel_futures=True)


def create(workers: int, options: Settings) -> ThreadBackend:
    return ThreadBackend(workers)

