"""The serial backend: a plain loop in the caller, with the same outcomes,
errors and notes as every other backend."""

from __future__ import annotations

from collections import deque

from .base import Backend, Chunk, Job, Outcome, run_chunk

__all__ = ["SerialBackend"]


class SerialBackend(Backend):
    """Runs each chunk when it is waited for, in the calling thread."""

    name = "serial"

    def __init__(self, workers: int = 1) -> None:
        super().__init__(1)
        self._pending: deque[Chunk] = deque()

    def submit(self, chunk: Chunk) -> None:
        self._pending.append(chunk)

    def _poll(self, timeout: float | None) -> list[Outcome]:
        if not self._pending:
            return []
        return [run_chunk(self._pending.popleft())]

    def cancel(self, job: Job) -> None:
        self._pending = deque(c for c in self._pending if c.job is not job)

    def close(self, *, kill: bool = False) -> None:
        self._pending.clear()


def create(workers: int, options: object) -> SerialBackend:
    return SerialBackend()
