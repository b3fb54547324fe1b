"""How many items each chunk sent to a pool holds."""

from __future__ import annotations

import math

__all__ = ["CHUNK_SECONDS", "MIN_CHUNK_SECONDS", "ChunkSizer"]

CHUNK_SECONDS = 0.02  # target duration of one chunk: amortises a ~0.1 ms round trip
MIN_CHUNK_SECONDS = 0.002  # the shortest chunk worth a round trip, even at the tail


class ChunkSizer:
    """Chunks long enough to amortise a round trip, short enough to balance:
    about CHUNK_SECONDS each, and never more than a quarter of what each
    worker has left, so chunks shrink toward the end and no worker idles
    while one finishes a big chunk (guided self-scheduling), down to
    MIN_CHUNK_SECONDS of work."""

    def __init__(self, workers: int, fixed: int | None = None,
                 per_item: float | None = None) -> None:
        self.workers = workers
        self.fixed = fixed
        self.per_item = per_item
        self._observed_items = 0
        self._observed_seconds = 0.0

    @property
    def observed(self) -> int:
        """Items whose busy time the workers have reported."""
        return self._observed_items

    def observe(self, count: int, busy: float) -> None:
        if count and busy > 0:
            self._observed_items += count
            self._observed_seconds += busy
            self.per_item = self._observed_seconds / self._observed_items

    def next(self, remaining: int | None) -> int:
        if self.fixed is not None:
            return self.fixed
        if self.per_item is None:
            size = 1  # nothing measured yet: learn from small chunks first
        else:
            size = max(1, min(100_000, int(CHUNK_SECONDS / max(self.per_item, 1e-7))))
        if remaining is not None:
            # Guided self-scheduling shrinks chunks toward the end, but never
            # below MIN_CHUNK_SECONDS of work: smaller ones would cost more
            # in round trips than any imbalance they save.
            floor = 1 if self.per_item is None else int(MIN_CHUNK_SECONDS / max(self.per_item, 1e-7))
            size = min(size, max(1, floor, math.ceil(remaining / (4 * self.workers))))
        return size
