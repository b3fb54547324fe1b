"""Threads kept between tasks, so that the threads a thread trial started are
the ones that then run the call's items.

A thread trial (``_threads``) runs items in the caller and in one helper
thread; when threads win, the thread backend runs the rest on ``workers``
threads. Taking them from here, the backend gets the trial's helper back
instead of starting a new thread: no start (0.1-1.5 ms here, waited for in
the caller), and whatever the thread warmed up for the function stays warm
(OpenBLAS gives each new thread its buffers on its first product: 2-3 ms).

A thread waits for tasks on its own queue; between tasks it is idle, and an
idle thread ends after IDLE_SECONDS. Threads are daemons, as the trial's
helper always was: an idle one must never keep the interpreter from exiting.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

try:  # queue.SimpleQueue is this C class; importing queue costs ~0.3 ms more
    from _queue import Empty, SimpleQueue
except ImportError:  # pragma: no cover - not CPython
    from queue import Empty, SimpleQueue

__all__ = ["IDLE_SECONDS", "Empty", "SimpleQueue", "Worker", "idle_count", "idle_threads",
           "stop_idle", "take"]

IDLE_SECONDS = 30.0  # an idle thread ends after this long without a task
_idle: list[Worker] = []  # the most recently idle last
_lock = threading.Lock()
_names = iter(range(1, 1 << 62))


class Worker:
    """One thread running the tasks given to it, in turn. After each task it
    goes back to the idle list, from which ``take`` hands it out again."""

    def __init__(self) -> None:
        self._tasks: SimpleQueue[Callable[[], object] | None] = SimpleQueue()
        self.thread = threading.Thread(target=self._serve, daemon=True,
                                       name=f"parloop-thread-{next(_names)}")
        self.thread.start()

    def run(self, task: Callable[[], object]) -> None:
        """Run ``task`` on this thread (its exceptions are its own to catch)."""
        self._tasks.put(task)

    def stop(self) -> None:
        """End the thread once its current task, if any, is done."""
        self._tasks.put(None)

    def _serve(self) -> None:
        while True:
            try:
                task = self._tasks.get(timeout=IDLE_SECONDS)
            except Empty:
                with _lock:
                    if self in _idle:  # nobody took it meanwhile: end
                        _idle.remove(self)
                        return
                continue  # taken just now: its task is on the way
            if task is None:
                return
            try:
                task()
            except BaseException:  # a task reports its own errors: the thread goes on
                pass
            finally:
                del task
            with _lock:
                _idle.append(self)


def take(count: int) -> list[Worker]:
    """``count`` threads: idle ones first (the most recently used first:
    their caches are the warmest), then new ones."""
    with _lock:
        taken = [_idle.pop() for _ in range(min(count, len(_idle)))]
    return taken + [Worker() for _ in range(count - len(taken))]


def _forget_all() -> None:
    """(In a forked child.) The parent's threads do not exist here."""
    global _lock
    _idle.clear()
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_all)


def stop_idle() -> None:
    """End every idle thread, and wait for it (before a fork: a process
    with threads is forked at its own risk, and CPython 3.12+ warns)."""
    with _lock:
        stopping, _idle[:] = list(_idle), []
    for worker in stopping:
        worker.stop()
    for worker in stopping:
        worker.thread.join(1.0)


def idle_count() -> int:
    with _lock:
        return len(_idle)


def idle_threads() -> list[threading.Thread]:
    with _lock:
        return [worker.thread for worker in _idle]
