"""A call with ``checkpoint=``: finished results kept on disk, so that a
long loop that is interrupted loses nothing and a rerun does only what is
left.

    items --> each keyed: a hash of its pickle, or of key(item) (_checkpoint)
                 |
          stored for this function, as it is now? (_store.Store)
             | yes                               | no
             v                                   v
     read back in its place           the engine runs it (_dispatch.run) and
     (never sent anywhere)            tells the Ledger each result as it is
                                      made, before any reordering; the Ledger
                                      stores them, a transaction per batch
             \\_______________  _______________/
                             \\/
           one stream of results: input order, or (ordered=False) the
           stored ones first, then the rest as they complete

This layer wraps the engine; the engine only reports what it made
(``ledger=``), so every backend (serial, threads, processes, Dask, Ray)
checkpoints alike, and a call without ``checkpoint=`` never imports this.
"""

from __future__ import annotations

import collections
import pickle
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any

from . import _dispatch, _scope
from ._checkpoint import Checkpoint, identity, keyer, open_store
from ._options import Options
from ._plan import Plan
from ._progress import make_progress
from ._store import Store
from .errors import CheckpointError, ParloopWarning, SetupError, add_note, item_index, renumber_item, warn

__all__ = ["Ledger", "run"]

#: a transaction per BATCH_SECONDS, or sooner once this many results (or bytes) wait
BATCH_SECONDS = 1.0
BATCH_ROWS = 20_000
BATCH_BYTES = 32 * 2**20
#: stored results read back per query
READ_AHEAD = 512


# -- the items, read and looked up --------------------------------------------

class _Items:
    """One call's items, each looked up as it is read. ``misses`` are the
    items to run (a list when the input is a list, tuple or range, so the
    engine plans with their count; else read lazily as the engine asks);
    ``pending`` holds, in input order, (position, rowid) for a stored item and
    (position, None) for one sent to the engine (only stored ones when the
    order does not matter); (position, rowid) for a stored one."""

    def __init__(self, items: Iterable[Any], checkpoint: Checkpoint, known: dict[bytes, int],
                 ordered: bool) -> None:
        self.known, self.ordered = known, ordered
        self.key = keyer(checkpoint.key)
        self.miss_keys: list[bytes] = []  # by engine index
        self.miss_positions: list[int] = []  # by engine index: the item's position in the input
        self.pending: collections.deque[tuple[int, int | None]] = collections.deque()
        self.stored = 0
        self.total: int | None = None
        if isinstance(items, (list, tuple, range)):
            self.total = len(items)
            self.misses: Iterable[Any] = list(self._scan(items))
        else:
            self.misses = self._scan(items)

    def _scan(self, items: Iterable[Any]) -> Iterator[Any]:
        key, stored, pending = self.key, self.known.get, self.pending
        miss_keys, miss_positions = self.miss_keys, self.miss_positions
        for position, item in enumerate(items):
            digest = key(position, item)
            rowid = stored(digest)
            if rowid is not None:
                pending.append((position, rowid))
                self.stored += 1
                continue
            if self.ordered:
                pending.append((position, None))
            miss_keys.append(digest)
            miss_positions.append(position)
            yield item


# -- results in, results out --------------------------------------------------

class Ledger:
    """Stores the results the engine reports (``note``), a transaction per
    BATCH_ROWS results or BATCH_SECONDS, and whatever is left at the end."""

    def __init__(self, store: Store, function: int, items: _Items, checkpoint: Checkpoint,
                 name: str, older: dict[bytes, int]) -> None:
        self.store, self.function, self.items = store, function, items
        self.store_errors, self.name = checkpoint.store_errors, name
        self.older = older  # reuse=False: rows that new results replace, by key
        self.rows: list[tuple[bytes, bool, bytes]] = []
        self.size = 0  # bytes in ``rows``
        self.written = 0
        self.flushed_at = time.monotonic()
        self.warned = False
        self._lock = threading.Lock()

    def note(self, start: int, values: list[Any]) -> None:
        """The engine made ``values``, the results of its items ``start``, ``start + 1``, ..."""
        keys, rows = self.items.miss_keys, self.rows
        dumps, protocol = pickle.dumps, pickle.HIGHEST_PROTOCOL
        for offset, value in enumerate(values):
            index = start + offset
            if isinstance(value, BaseException) and item_index(value) == index:
                self.failed(index, value)  # errors="return": the exception in its place
                continue
            try:
                blob = dumps(value, protocol)
            except Exception as exc:
                self._unstorable(index, exc)
                continue
            rows.append((keys[index], True, blob))
            self.size += len(blob)
        if len(rows) >= BATCH_ROWS or self.size >= BATCH_BYTES \
                or time.monotonic() - self.flushed_at >= BATCH_SECONDS:
            self.flush()

    def failed(self, index: int, exc: BaseException) -> None:
        """Item ``index`` (the engine's) raised ``exc``: stored when asked."""
        if not self.store_errors:
            return
        try:
            self.rows.append((self.items.miss_keys[index], False,
                              pickle.dumps(exc, pickle.HIGHEST_PROTOCOL)))
        except Exception as problem:
            self._unstorable(index, problem)

    def _unstorable(self, index: int, exc: BaseException) -> None:
        if not self.warned:
            self.warned = True
            position = self.items.miss_positions[index]
            warn(f"parloop: the result of {self.name} for item #{position} cannot be pickled "
                 f"({type(exc).__name__}: {exc}), so the checkpoint cannot store it: such "
                 "items run again next time (warned once per call)", ParloopWarning)

    def flush(self) -> None:
        with self._lock:
            rows, self.rows, self.size = self.rows, [], 0
            self.flushed_at = time.monotonic()
            if rows:
                older = self.older
                replaced = [older.pop(row[0]) for row in rows if row[0] in older] if older else []
                self.store.write(self.function, rows, replaced)
                self.written += len(rows)


class _Merge:
    """Stored results and the engine's, as one stream."""

    def __init__(self, store: Store, items: _Items, checkpoint: Checkpoint,
                 return_errors: bool, progress: Any) -> None:
        self.store, self.items = store, items
        self.path, self.return_errors, self.progress = checkpoint.path, return_errors, progress

    def _stored(self, position: int, found: tuple[bool, bytes] | None) -> Any:
        """Item ``position``'s stored result, ``found`` (ok, pickle); a stored
        exception is returned or raised, as the call's ``errors=`` says."""
        if found is None:
            raise CheckpointError(
                f"the stored result of item #{position} vanished from {self.path!r} during "
                "the call (was it cleared meanwhile?); run the call again")
        ok, blob = found
        try:
            value = pickle.loads(blob)
        except Exception as exc:
            raise CheckpointError(
                f"the stored result of item #{position} in {self.path!r} cannot be unpickled "
                f"({type(exc).__name__}: {exc}); a class it needs may have moved. Run with "
                "Checkpoint(path, reuse=False) to make it again.") from exc
        if ok:
            return value
        renumber_item(value, position)
        add_note(value, f"parloop: stored in the checkpoint {self.path!r} by an earlier run "
                        "(Checkpoint(..., reuse=False) runs it again)")
        if self.return_errors:
            return value
        raise value

    def _hits(self, until_miss: bool) -> Iterator[list[Any]]:
        """The stored results at the head of ``pending`` (up to the next
        item the engine runs, when ``until_miss``), read READ_AHEAD at a time."""
        pending, loads = self.items.pending, pickle.loads
        while pending and (pending[0][1] is not None or not until_miss):
            block: list[tuple[int, int]] = []
            while pending and pending[0][1] is not None and len(block) < READ_AHEAD:
                block.append(pending.popleft())  # type: ignore[arg-type]
            found = self.store.load([rowid for _, rowid in block])
            try:  # the common case, at C speed: every one found, and a result
                batch = [loads(blob) for ok, blob in map(found.__getitem__,
                                                         (r for _, r in block)) if ok]
            except Exception:
                batch = []
            if len(batch) < len(block):  # one is missing, an error or does not load
                batch = []
                for position, rowid in block:
                    try:
                        batch.append(self._stored(position, found.get(rowid)))
                    except BaseException:
                        if batch:
                            yield self._restored(batch)
                        raise
            yield self._restored(batch)

    def _restored(self, batch: list[Any]) -> list[Any]:
        if self.progress is not None:
            self.progress.restore(len(batch))
        return batch

    def _ran(self, batch: list[Any]) -> list[Any]:
        if self.progress is not None:
            self.progress.update(len(batch))
        return batch

    def ordered(self, engine: Iterator[list[Any]] | None) -> Iterator[list[Any]]:
        pending = self.items.pending  # ordered: it maps each result to its position
        yield from self._hits(until_miss=True)
        for batch in engine or ():
            out: list[Any] = []
            for value in batch:
                if pending[0][1] is not None:  # stored ones before this result
                    if out:
                        yield self._ran(out)
                        out = []
                    yield from self._hits(until_miss=True)
                position = pending.popleft()[0]
                if isinstance(value, BaseException) and item_index(value) is not None:
                    renumber_item(value, position)
                out.append(value)
            if out:
                yield self._ran(out)
            yield from self._hits(until_miss=True)
        yield from self._hits(until_miss=False)

    def unordered(self, engine: Iterator[list[Any]] | None) -> Iterator[list[Any]]:
        positions = self.items.miss_positions
        yield from self._hits(until_miss=False)
        for batch in engine or ():
            for value in batch:
                index = item_index(value) if isinstance(value, BaseException) else None
                if index is not None and index < len(positions):
                    renumber_item(value, positions[index])
            yield self._ran(batch)
            yield from self._hits(until_miss=False)  # found as the engine read on
        yield from self._hits(until_miss=False)


# -- one call -----------------------------------------------------------------

def run(fn: Callable[..., Any], items: Iterable[Any], args: tuple[Any, ...],
        kwargs: dict[str, Any], options: Options, block: _scope.Block | None,
        record: Callable[[Plan], None], eager_errors: bool = True,
        sink: list[Any] | None = None, abort: threading.Event | None = None
        ) -> Generator[list[Any], None, None]:
    """``_dispatch.run`` with a checkpoint: stored results are read back,
    the rest run and are stored as they finish."""
    checkpoint: Checkpoint = options.checkpoint
    began = time.perf_counter()
    name = getattr(fn, "__qualname__", None) or repr(fn)
    store = open_store(checkpoint.path)
    try:
        function = store.function(*identity(fn, args, kwargs))
        store.claim(function, name)
    except BaseException:
        store.close()
        raise
    plans: list[Plan] = []
    engine: Generator[list[Any], None, None] | None = None
    ledger: Ledger | None = None
    keyed: _Items | None = None
    progress = None
    try:
        known = store.keys(function)
        keyed = _Items(items, checkpoint, known if checkpoint.reuse else {}, options.ordered)
        ledger = Ledger(store, function, keyed, checkpoint, name,
                        older={} if checkpoint.reuse else known)
        progress = make_progress(options.progress, keyed.total, getattr(fn, "__name__", "parloop"))
        if not isinstance(keyed.misses, list) or keyed.misses:
            # Results as they come, in ~20 ms batches (as for an iterator),
            # not a list call's 1024 items: what is done is stored within
            # BATCH_SECONDS. An item's error, in order, then comes after the
            # results before it, as this layer raises it either way.
            engine = _dispatch.run(fn, keyed.misses, args, kwargs,
                                   options.replace(progress=False, checkpoint=None), block,
                                   plans.append, eager_errors=False, abort=abort,
                                   ledger=ledger.note)
        merge = _Merge(store, keyed, checkpoint, options.errors == "return", progress)
        stream = merge.ordered(engine) if options.ordered else merge.unordered(engine)
        for batch in stream:
            if sink is not None:
                sink.extend(batch)
            else:
                yield batch
    except BaseException as exc:
        index = item_index(exc)
        if engine is not None and keyed is not None and ledger is not None and index is not None \
                and index < len(keyed.miss_positions) and not _from_store(exc) \
                and not isinstance(exc, SetupError):  # (not the item's: never stored)
            ledger.failed(index, exc)
            renumber_item(exc, keyed.miss_positions[index])
        raise
    finally:
        try:
            if engine is not None:
                engine.close()  # cancels what is pending; records the engine's plan
            if ledger is not None:
                ledger.flush()
        finally:
            store.release(function)
            store.close()
            if progress is not None:
                progress.close()
            record(_plan(plans, keyed, ledger, checkpoint, began))


def _from_store(exc: BaseException) -> bool:
    notes = getattr(exc, "__notes__", None) or []
    return any(isinstance(n, str) and n.startswith("parloop: stored in the checkpoint")
               for n in notes)


def _plan(plans: list[Plan], keyed: _Items | None, ledger: Ledger | None, checkpoint: Checkpoint,
          began: float) -> Plan:
    """The engine's plan for the items it ran, told what the checkpoint did."""
    stored = keyed.stored if keyed is not None else 0
    written = ledger.written if ledger is not None else 0
    if plans:
        plan = plans[-1]
        if keyed is not None:  # the engine numbered only the items it ran
            positions = keyed.miss_positions
            plan.slowest = [(positions[i] if i < len(positions) else i, t) for i, t in plan.slowest]
        why = plan.why
    else:
        plan = Plan("serial", 1, None)
        why = None
    plan.restored, plan.stored, plan.checkpoint = stored, written, checkpoint.path
    plan.wall_seconds = time.perf_counter() - began
    ran = plan.items
    plan.reason = lambda: (
        f"{stored} results read from the checkpoint {checkpoint.path!r}, {written} stored"
        + (f"; the {ran} others: {why}" if why is not None and ran else "; nothing ran"))
    return plan
