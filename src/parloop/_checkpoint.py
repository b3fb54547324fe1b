"""``checkpoint=``: the option, and what decides that a stored result
answers an item (see ``_resume`` for the call that reads and writes them,
and ``_store`` for the file)."""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _identity
from .errors import CheckpointError, short_repr

if TYPE_CHECKING:
    from ._store import FunctionRow, Store

__all__ = ["PROTOCOL", "Checkpoint", "identity", "keyer", "open_store"]

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
        store = open_store(self.path, create=False)
        try:
            return store.summary()
        finally:
            store.close()

    def clear(self, fn: Callable[..., Any] | None = None) -> int:
        """Delete the stored results (of ``fn`` only, under every version of
        its code, when given); return how many were deleted."""
        store = open_store(self.path, create=False)
        try:
            if fn is None:
                return store.clear()
            target = _identity.target(fn)
            return store.clear(_identity.module(target), _identity.qualname(target))
        finally:
            store.close()


def open_store(path: str, create: bool = True) -> Store:
    """The checkpoint file at ``path`` (made when ``create``), opened."""
    from ._store import Store  # sqlite3: only once a checkpoint is used

    if not create and not os.path.exists(path):
        raise CheckpointError(f"there is no checkpoint file {os.path.abspath(path)!r}")
    return Store(path)


# -- what decides a hit -------------------------------------------------------

def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def identity(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
             ) -> tuple[str, str, str, str]:
    """(module, qualname, code hash, arguments hash) of a call of ``fn``."""
    target = _identity.target(fn)
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
    code = _digest(b"\0".join(_identity.code_parts(target))).hex()
    return _identity.module(target), _identity.qualname(target), code, _digest(arguments).hex()


def keyer(key: Callable[[Any], Any] | None) -> Callable[[int, Any], bytes]:
    """``of(position, item)``: the item's key (called once per item: kept lean)."""
    dumps, blake2b = pickle.dumps, hashlib.blake2b

    def of(position: int, item: Any) -> bytes:
        try:
            return blake2b(dumps(item if key is None else key(item), PROTOCOL),
                           digest_size=16).digest()
        except Exception as exc:
            what = "the item" if key is None else f"its key {getattr(key, '__name__', key)}(item)"
            raise CheckpointError(
                f"checkpoint= cannot recognise item #{position} {short_repr(item)}: {what} "
                f"cannot be pickled ({exc}). Give Checkpoint(path, key=...) a function that "
                "returns something picklable naming the item (a file name, an id).") from exc
    return of
