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

import threading
from collections.abc import Callable

from .._threadpool import SimpleQueue, take
from ._runner import EVERYTHING, run_items
from ._state import forget_thread, set_worker_id
from ._wire import Done, JobSpec, decode, end_state
from .base import Backend, Chunk, Ended, Job, Outcome, Settings, drain

__all__ = ["ThreadBackend", "create"]


def _as_it_is(exc: BaseException) -> BaseException:
    return exc  # an exception in a thread needs no capturing to reach the caller


class ThreadBackend(Backend):
    """``workers`` threads taking chunks from one queue. The threads come
    from ``_threadpool`` (a thread trial's helper among them, when there was
    one) and go back to it when the backend closes."""

    name = "thread"

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        # A chunk to run, a task for whichever thread takes it, or None: stop.
        self._queue: SimpleQueue[Chunk | Callable[[], None] | None] = SimpleQueue()
        self._done: SimpleQueue[Outcome] = SimpleQueue()
        self._live: set[int] = set()  # jobs whose chunks may start: not cancelled or ended
        self._cancelled: set[int] = set()  # jobs whose remaining items must not start
        self._ending = threading.Lock()  # one round of teardowns at a time
        self._stopped = threading.Semaphore(0)  # released as each thread stops serving
        for number, thread in enumerate(take(workers)):
            thread.run(lambda number=number: self._serve(number))  # type: ignore[misc]

    def _serve(self, number: int) -> None:
        """A pool thread's life in this backend; worker_id() is ``number``."""
        set_worker_id(number, per_thread=True)
        try:
            while True:
                task = self._queue.get()
                if task is None:
                    return
                if isinstance(task, Chunk):
                    if task.job.id in self._live:
                        self._run(task)
                else:
                    task()
                del task
        finally:
            forget_thread()  # as if the thread had ended: its states go with the backend
            self._stopped.release()

    def submit(self, chunk: Chunk) -> None:
        with self._lock:
            self._live.add(chunk.job.id)
        self._queue.put(chunk)

    def _run(self, chunk: Chunk) -> None:
        job = chunk.job
        spec = JobSpec.of(job, float("inf"), False)
        status = memoryview(bytearray(24)).cast("d")  # see _runner: three doubles
        worker = threading.current_thread().name

        def report(done: Done) -> None:
            self._done.put(decode(chunk, done, worker))

        run_items(job.id, spec, chunk.start, chunk.items, None, report=report, status=status,
                  cancelled=self._cancelled, load=_as_it_is, pack=_as_it_is,
                  as_is=EVERYTHING, keep=_as_it_is, per_thread=True)

    def _poll(self, timeout: float | None) -> list[Outcome]:
        return drain(self._done, timeout)

    def cancel(self, job: Job) -> None:
        with self._lock:
            self._cancelled.add(job.id)
            self._live.discard(job.id)

    def end_states(self, job: Job) -> list[Ended]:
        """Each pool thread ends its own state (a connection may be bound to
        the thread that opened it): one task per thread, held at a barrier
        until every thread has one, so that no thread takes two."""
        barrier = threading.Barrier(self.workers)
        answers: SimpleQueue[Ended | BaseException] = SimpleQueue()

        def end_this_thread() -> None:
            try:
                barrier.wait()
                answers.put(end_state(job.id, job.setup, per_thread=True))
            except BaseException as exc:  # raised again in the caller
                answers.put(exc)

        with self._ending:  # two rounds at once could each hold half the threads
            for _ in range(self.workers):
                self._queue.put(end_this_thread)
            ended = [answers.get() for _ in range(self.workers)]
        for answer in ended:
            if isinstance(answer, BaseException):
                raise answer
        return [answer for answer in ended if isinstance(answer, Ended) and answer.made]

    def end_job(self, job: Job) -> None:
        super().end_job(job)
        with self._lock:
            self._live.discard(job.id)
            self._cancelled.discard(job.id)

    def close(self, *, kill: bool = False) -> None:
        """Stop every thread once its current item is done (chunks not yet
        started are dropped); ``kill``: without waiting for that."""
        with self._lock:
            self._live.clear()
        for _ in range(self.workers):
            self._queue.put(None)
        if not kill:
            for _ in range(self.workers):
                self._stopped.acquire()


def create(workers: int, options: Settings) -> ThreadBackend:
    return ThreadBackend(workers)
