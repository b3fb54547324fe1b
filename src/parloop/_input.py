"""The items of one call, read once and in order."""

from __future__ import annotations

import itertools
import operator
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from typing import Any, cast

__all__ = ["Input"]

_SEQUENCES = (list, tuple, range)
_SEQUENCE_ITERATORS: tuple[type, ...] = (type(iter([])), type(iter(())), type(iter(range(0))))


def _length(items: Iterable[Any]) -> int | None:
    """How many items there are, when that is known; None otherwise (a
    generator, or a range too long for ``len``)."""
    try:
        return len(items)  # type: ignore[arg-type]
    except (TypeError, OverflowError):
        try:
            hint = operator.length_hint(items, -1)
        except (TypeError, OverflowError, ValueError):
            return None
        return hint if hint > 0 else None


class Input:
    """One call's items: how many (when known), the index of the next one,
    and one item of read-ahead (to check that it pickles before a pool is
    chosen) that every reader sees first.

    A list, tuple or range cannot raise while it is read, and item ``k`` is
    ``sequence[k]``: while nothing has been read ahead, the serial loop may
    then run the rest in one C-level pass (``sequence`` is set)."""

    def __init__(self, items: Iterable[Any]) -> None:
        self.total = _length(items)
        self.iterator: Iterator[Any] = iter(items)
        self.sequence = cast(Sequence[Any], items) if type(items) in _SEQUENCES else None
        self.index = 0  # of the next item to read
        self._ahead: list[Any] = []

    @property
    def remaining(self) -> int | None:
        return None if self.total is None else self.total - self.index

    def peek(self) -> bool:
        """Read one item ahead; False when the input is done."""
        if not self._ahead:
            try:
                self._ahead = [next(self.iterator)]
            except StopIteration:
                return False
        return True

    @property
    def ahead(self) -> Any:
        """The item ``peek`` read (call only after it returned True)."""
        return self._ahead[0]

    def put_back(self) -> None:
        """Let the item read ahead be read again, first, by any reader."""
        if self._ahead:
            self.iterator = itertools.chain(self._ahead, self.iterator)
            self._ahead = []

    def give_back(self, items: list[Any]) -> None:
        """Let ``items``, just taken, be read again, first. A list, tuple or
        range is read on from their position, so the rest may still be read
        in one pass (``in_sequence``)."""
        if not items:
            return
        self.index -= len(items)
        if self.sequence is not None and type(self.iterator) in _SEQUENCE_ITERATORS:
            self.iterator = iter(self.sequence)
            self.iterator.__setstate__(self.index)  # type: ignore[attr-defined]
        else:
            self.iterator = itertools.chain(items, self.iterator)

    def in_sequence(self) -> bool:
        """Whether the rest may be read as ``sequence[index:]`` in one pass."""
        return self.sequence is not None and not self._ahead \
            and type(self.iterator) in _SEQUENCE_ITERATORS

    def take(self, count: int) -> tuple[list[Any], BaseException | None]:
        """Up to ``count`` items (fewer at the end), and the exception the
        input raised, if it did (the items read before it are kept)."""
        taken, self._ahead = self._ahead, []
        try:
            taken.extend(islice(self.iterator, count - len(taken)))
        except Exception as exc:
            self.index += len(taken)
            return taken, exc
        self.index += len(taken)
        return taken, None
