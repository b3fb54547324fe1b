"""``checkpoint=``: finished results kept on disk, so that a long loop that
is interrupted loses nothing and a rerun does only what is left.

    items --> each keyed: a hash of its pickle, or of key(item)
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
import functools
import hashlib
import os
import pickle
import threading
import time
import types
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any

from . import _dispatch, _scope
from ._options import Options
from ._plan import Plan
from ._progress import make_progress
from ._store import FunctionRow, Store
from .errors import CheckpointError, ParloopWarning, add_note, item_index, renumber_item, short_repr, warn

__all__ = ["Checkpoint", "Ledger", "identity", "run"]

#: a transaction per this many results, or per BATCH_SECONDS, whichever comes first
BATCH_ROWS = 1000
BATCH_SECONDS = 1.0
#: stored results read back per query
READ_AHEAD = 512
#: the pickle protocol of keys: fixed, so that a key never changes with the Python
PROTOCOL = 4


class Checkpoint:
    """Where a call keeps its finished results, and how it recognises them.

    ``checkpoint="sweep.db"`` is ``Checkpoint("sweep.db")``. A result is
    reused when all of these match a stored one:

    * the function: its module, its qualified name, and a hash of its code
      (bytecode, constants, names and default arguments), so editing what
      it does starts afresh, while comments, blank lines or moving it in
      its file do not. (Another Python version compiles other bytecode, and
      starts afresh too.) What it reads from globals or closures is not in
      the hash: pass such values as arguments to have them checked;
    * the extra arguments of the call (``f(items, *args, **kwargs)``), by a
      hash of their pickle;
    * the item, by a hash of its pickle, or of ``key(item)`` when ``key``
      is given: use it for items whose pickle is not the same from run to
      run (sets of strings, objects holding a timestamp) or is costly to
      make (give a file name, not the file's bytes).

    ``store_errors``: store an item's exception too, and raise (or, with
    ``errors="return"``, return) it again next time instead of running it;
    by default an item that raised is run again. ``reuse=False`` runs
    every item, overwriting what is stored.
    """

    __slots__ = ("key", "path", "reuse", "store_errors")

    def __init__(self, path: str | os.PathLike[str], *, key: Callable[[Any], Any] | None = None,
                 store_errors: bool = False, reuse: bool = True) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"Checkpoint path must be a file name or a path, got "
                            f"{type(path).__name__} {path!r}")
        if key is not None and not callable(key):
            raise TypeError(f"Checkpoint key must be a function of the item or None, got "
                            f"{type(key).__name__} {key!r}")
        for name, value in (("store_errors", store_errors), ("reuse", reuse)):
            if not isinstance(value, bool):
                raise TypeError(f"Checkpoint {name} must be True or False, got {value!r}")
        self.path = os.fspath(path)
        self.key = key
        self.store_errors = store_errors
        self.reuse = reuse

    def __repr__(self) -> str:
        shown = [repr(self.path)]
        if self.key is not None:
            shown.append(f"key={getattr(self.key, '__qualname__', self.key)!s}")
        if self.store_errors:
            shown.append("store_errors=True")
        if not self.reuse:
            shown.append("reuse=False")
        return f"Checkpoint({', '.join(shown)})"

    def summary(self) -> list[FunctionRow]:
        """What the file holds: one row per function (as its code was), newest first."""
        store = _open(self.path, create=False)
        try:
            return store.summary()
        finally:
            store.close()

    def clear(self, fn: Callable[..., Any] | None = None) -> int:
        """Delete the stored results (of ``fn`` only, under every version of
        its code, when given); return how many were deleted."""
        store = _open(self.path, create=False)
        try:
            if fn is None:
                return store.clear()
            target = _target(fn)
            return store.clear(_module(target), _qualname(target))
        finally:
            store.close()


def _open(path: str, create: bool = True) -> Store:
    if not create and not os.path.exists(path):
        raise CheckpointError(f"there is no checkpoint file {os.path.abspath(path)!r}")
    return Store(path)


# -- what decides a hit -------------------------------------------------------

def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def _target(fn: Callable[..., Any]) -> Any:
    """The user's function under parloop's decorator, if it is one."""
    return getattr(fn, "__wrapped__", fn) if hasattr(fn, "_self_state") else fn


def _module(fn: Any) -> str:
    inner = fn.func if isinstance(fn, functools.partial) else getattr(fn, "__func__", fn)
    return str(getattr(inner, "__module__", None) or type(inner).__module__)


def _qualname(fn: Any) -> str:
    inner = fn.func if isinstance(fn, functools.partial) else getattr(fn, "__func__", fn)
    return str(getattr(inner, "__qualname__", None) or type(inner).__qualname__)


def _constant(value: Any) -> str:
    """A constant of a code object, spelled the same in every run (a
    frozenset's repr follows string hashing, which changes per process)."""
    if isinstance(value, frozenset):
        return "frozenset(" + ",".join(sorted(map(_constant, value))) + ")"
    if isinstance(value, tuple):
        return "(" + ",".join(map(_constant, value)) + ")"
    return repr(value)


def _fingerprint(code: types.CodeType, out: list[bytes]) -> None:
    """What ``code`` does: its bytecode, names and constants, nested code
    included; not its line numbers nor its file."""
    out += [code.co_code, repr((code.co_names, code.co_varnames, code.co_freevars,
                                code.co_cellvars, code.co_argcount, code.co_kwonlyargcount,
                                code.co_flags)).encode()]
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _fingerprint(const, out)
        else:
            out.append(_constant(const).encode())


def _code_hash(fn: Any) -> str:
    if isinstance(fn, functools.partial):
        return _code_hash(fn.func)
    func = getattr(fn, "__func__", fn)  # a bound method: its function
    code = getattr(func, "__code__", None)
    if code is None:  # a callable object: its class's __call__
        call = getattr(type(func), "__call__", None)  # noqa: B004 (its code, not a test)
        func = getattr(call, "__func__", call)
        code = getattr(func, "__code__", None)
    parts: list[bytes] = []
    if code is not None:
        _fingerprint(code, parts)
        defaults = (getattr(func, "__defaults__", None), getattr(func, "__kwdefaults__", None))
        parts.append(_constant(defaults).encode())
    else:  # a builtin: its name is all there is
        parts.append(f"{_module(fn)}.{_qualname(fn)}".encode())
    return _digest(b"\0".join(parts)).hex()


def identity(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
             ) -> tuple[str, str, str, str]:
    """(module, qualname, code hash, arguments hash) of a call of ``fn``."""
    target = _target(fn)
    bound: list[Any] = []
    if isinstance(target, functools.partial):
        bound += [target.args, sorted(target.keywords.items())]
    if isinstance(target, types.MethodType):
        bound.append(target.__self__)
    elif getattr(target, "__code__", None) is None and not isinstance(target, functools.partial) \
            and not isinstance(target, types.BuiltinFunctionType):
        bound.append(target)  # a callable object: its state is part of what it computes
    try:
        arguments = pickle.dumps((bound, args, sorted(kwargs.items())), PROTOCOL)
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint= needs the call's extra arguments (and a method's instance) to pickle, "
            f"to know whether stored results were made with the same ones: {exc}. Pass them "
            "inside the items instead, or drop checkpoint=.") from exc
    return _module(target), _qualname(target), _code_hash(target), _digest(arguments).hex()


def _keyer(key: Callable[[Any], Any] | None) -> Callable[[int, Any], bytes]:
    def of(position: int, item: Any) -> bytes:
        try:
            return _digest(pickle.dumps(item if key is None else key(item), PROTOCOL))
        except Exception as exc:
            what = "the item" if key is None else f"its key {getattr(key, '__name__', key)}(item)"
            raise CheckpointError(
                f"checkpoint= cannot recognise item #{position} {short_repr(item)}: {what} "
                f"cannot be pickled ({exc}). Give Checkpoint(path, key=...) a function that "
                "returns something picklable naming the item (a file name, an id).") from exc
    return of


# -- the items, read and looked up --------------------------------------------

class _Items:
    """One call's items, each looked up as it is read. ``misses`` are the
    items to run (a list when the input is a list, tuple or range, so the
    engine plans with their count; else read lazily as the engine asks);
    ``pending`` holds, in input order, (position, key) for a stored item and
    (position, None) for one sent to the engine (only stored ones when the
    order does not matter)."""

    def __init__(self, items: Iterable[Any], checkpoint: Checkpoint, known: set[bytes],
                 ordered: bool) -> None:
        self.known, self.ordered = known, ordered
        self.key = _keyer(checkpoint.key)
        self.miss_keys: list[bytes] = []  # by engine index
        self.miss_positions: list[int] = []  # by engine index: the item's position in the input
        self.pending: collections.deque[tuple[int, bytes | None]] = collections.deque()
        self.stored = 0
        self.total: int | None = None
        if isinstance(items, (list, tuple, range)):
            self.total = len(items)
            self.misses: Iterable[Any] = list(self._scan(items))
        else:
            self.misses = self._scan(items)

    def _scan(self, items: Iterable[Any]) -> Iterator[Any]:
        key, known, pending = self.key, self.known, self.pending
        miss_keys, miss_positions = self.miss_keys, self.miss_positions
        for position, item in enumerate(items):
            digest = key(position, item)
            if digest in known:
                pending.append((position, digest))
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
                 name: str) -> None:
        self.store, self.function, self.items = store, function, items
        self.store_errors, self.name = checkpoint.store_errors, name
        self.rows: list[tuple[bytes, bool, bytes]] = []
        self.written = 0
        self.flushed_at = time.monotonic()
        self.warned = False
        self._lock = threading.Lock()

    def note(self, start: int, values: list[Any]) -> None:
        """The engine made ``values``, the results of its items ``start``, ``start + 1``, ..."""
        keys = self.items.miss_keys
        rows = self.rows
        for offset, value in enumerate(values):
            index = start + offset
            if isinstance(value, BaseException) and item_index(value) == index:
                self.failed(index, value)  # errors="return": the exception in its place
                continue
            try:
                rows.append((keys[index], True, pickle.dumps(value, pickle.HIGHEST_PROTOCOL)))
            except Exception as exc:
                self._unstorable(index, exc)
        if len(rows) >= BATCH_ROWS or time.monotonic() - self.flushed_at >= BATCH_SECONDS:
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
            rows, self.rows = self.rows, []
            self.flushed_at = time.monotonic()
            if rows:
                self.store.write(self.function, rows)
                self.written += len(rows)


class _Merge:
    """Stored results and the engine's, as one stream."""

    def __init__(self, store: Store, function: int, items: _Items, checkpoint: Checkpoint,
                 return_errors: bool, progress: Any) -> None:
        self.store, self.function, self.items = store, function, items
        self.path, self.return_errors, self.progress = checkpoint.path, return_errors, progress
        self.cache: dict[bytes, tuple[bool, bytes]] = {}

    def stored(self, position: int, key: bytes) -> Any:
        """Item ``position``'s stored result (a stored exception is returned
        or raised, as the call's ``errors=`` says)."""
        found = self.cache.pop(key, None)
        if found is None:
            wanted = [k for _, k in list(self.items.pending)[:4 * READ_AHEAD] if k is not None]
            self.cache.update(self.store.load(self.function, [key, *wanted[:READ_AHEAD]]))
            found = self.cache.pop(key, None)
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
        item the engine runs, when ``until_miss``), in batches."""
        pending, batch = self.items.pending, []
        while pending and (pending[0][1] is not None or not until_miss):
            position, key = pending.popleft()
            assert key is not None
            try:
                batch.append(self.stored(position, key))
            except BaseException:
                if batch:
                    yield self._restored(batch)
                raise
            if len(batch) >= READ_AHEAD:
                yield self._restored(batch)
                batch = []
        if batch:
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
    store = _open(checkpoint.path)
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
        known = store.keys(function) if checkpoint.reuse else set()
        keyed = _Items(items, checkpoint, known, options.ordered)
        ledger = Ledger(store, function, keyed, checkpoint, name)
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
        merge = _Merge(store, function, keyed, checkpoint, options.errors == "return", progress)
        stream = merge.ordered(engine) if options.ordered else merge.unordered(engine)
        for batch in stream:
            if sink is not None:
                sink.extend(batch)
            else:
                yield batch
    except BaseException as exc:
        index = item_index(exc)
        if engine is not None and keyed is not None and ledger is not None and index is not None \
                and index < len(keyed.miss_positions) and not _from_store(exc):
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
