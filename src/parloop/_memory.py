"""What earlier runs measured: each function's seconds per item, kept on
disk between runs of a script, so that its next run starts every core from
the first item instead of measuring again (a first call of 2 x 1 s items
ran ~1.35 s, where a pool that knows runs ~1.05 s).

* Where: ``$PARLOOP_COST_CACHE`` (a folder), else ``$XDG_CACHE_HOME/parloop``,
  else ``~/.cache/parloop``; one small text file, ``costs-v1.tsv``.
  ``PARLOOP_COST_CACHE=off`` (or ``0``) switches it off.
* Which function: its module, qualified name, a checksum of what its code
  does (see ``_identity``; an edit makes it a new function), and a
  partial's bound arguments (``partial(spin, 10**7)`` costs what 10**7 steps
  cost). Functions whose identity cannot be told across runs (one bound to
  an object printed with its address) simply never hit.
* Read once per process, on the first call that has no history in memory;
  written once, when the interpreter exits, merged with what other processes
  wrote meanwhile (a temporary file renamed over the old one: a reader sees
  one whole file or the other). A folder that cannot be written (a
  read-only home) is not an error: nothing is remembered.
* Only a first guess: the call that uses it proves the pool on a first
  chunk (``_flow.Flow.prove``) and measures again, and what it measures is
  what the next run reads.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import threading
import time
import weakref
import zlib
from typing import Any

from . import _identity, _role

__all__ = ["FILE", "KEEP", "folder", "forget", "recall", "remember"]

FILE = "costs-v1.tsv"
KEEP = 500  # functions kept in the file, the most recently measured
SIDES = ("serial", "process", "thread", "trial", "share", "transfer", "ratio", "blas")

_lock = threading.Lock()
_loaded: dict[str, tuple[float, dict[str, float]]] | None = None  # key -> (when, costs)
_changed: dict[str, tuple[float, dict[str, float]]] = {}
_writer_pid = 0


def folder() -> str | None:
    """The folder the costs live in; None when switched off."""
    given = os.environ.get("PARLOOP_COST_CACHE")
    if given is not None:
        return None if given.strip().lower() in ("", "0", "off", "no", "false") else given
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "parloop")


_keys: weakref.WeakKeyDictionary[Any, str | None] = weakref.WeakKeyDictionary()


def key(fn: Any) -> str | None:
    """``fn``'s name across runs, or None when it has none worth keeping
    (worked out once per function object: it walks the code)."""
    try:
        return _keys[fn]
    except (KeyError, TypeError):
        pass
    name = _key(fn)
    with contextlib.suppress(TypeError):  # not weakly referable: worked out each time
        _keys[fn] = name
    return name


def _key(fn: Any) -> str | None:
    target = _identity.target(fn)
    parts = _identity.code_parts(target)
    if isinstance(target, functools.partial):
        parts.append(_identity.constant((target.args, sorted(target.keywords.items()))).encode())
    data = b"\0".join(parts)
    if b" at 0x" in data:  # an object printed with its address: new every run
        return None
    code = f"{zlib.crc32(data):08x}{zlib.adler32(data):08x}"
    name = f"{_identity.module(target)}\t{_identity.qualname(target)}\t{code}"
    return None if "\n" in name else name


def _read(path: str) -> dict[str, tuple[float, dict[str, float]]]:
    found: dict[str, tuple[float, dict[str, float]]] = {}
    try:
        with open(path, encoding="utf-8") as file:
            lines = file.read().splitlines()
    except (OSError, UnicodeDecodeError):
        return found
    for line in lines:  # module, qualname, code, when, side=seconds,...
        fields = line.split("\t")
        if len(fields) != 5:
            continue  # not ours, or damaged: skipped
        try:
            costs = {side: float(value) for side, _, value in
                     (pair.partition("=") for pair in fields[4].split(",")) if side in SIDES}
            found["\t".join(fields[:3])] = (float(fields[3]), costs)
        except ValueError:
            continue
    return found


def recall(fn: Any) -> dict[str, float]:
    """What an earlier run measured of ``fn`` (empty: nothing, or switched off)."""
    global _loaded
    where = folder()
    if where is None or _role.IN_WORKER:
        return {}
    name = key(fn)
    if name is None:
        return {}
    with _lock:
        if _loaded is None:
            _loaded = _read(os.path.join(where, FILE))
        entry = _changed.get(name) or _loaded.get(name)
    return dict(entry[1]) if entry is not None else {}


def remember(fn: Any, costs: dict[str, float]) -> None:
    """Keep ``fn``'s costs (by side) for the next run: written at exit."""
    global _writer_pid
    if _role.IN_WORKER or folder() is None:
        return
    name = key(fn)
    if name is None:
        return
    with _lock:
        _changed[name] = (time.time(), {s: v for s, v in costs.items() if s in SIDES})
        if _writer_pid != os.getpid():  # once per process (a forked child registers anew)
            _writer_pid = os.getpid()
            atexit.register(_write)


def forget() -> None:
    """Drop what this process read and measured (tests; a changed folder)."""
    global _loaded
    with _lock:
        _loaded = None
        _changed.clear()


def _write() -> None:
    """(At exit.) Merge this run's costs into the file."""
    where = folder()
    if where is None or not _changed or _writer_pid != os.getpid():
        return
    path = os.path.join(where, FILE)
    try:
        os.makedirs(where, exist_ok=True)
        merged = _read(path)  # what other runs wrote meanwhile
        merged.update(_changed)
        newest = sorted(merged.items(), key=lambda entry: -entry[1][0])[:KEEP]
        temporary = f"{path}.{os.getpid()}.tmp"
        try:
            with open(temporary, "w", encoding="utf-8") as file:
                for name, (when, costs) in newest:
                    pairs = ",".join(f"{side}={value!r}" for side, value in sorted(costs.items()))
                    file.write(f"{name}\t{when!r}\t{pairs}\n")
            os.replace(temporary, path)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(temporary)  # (gone already once renamed)
    except OSError:
        pass  # a read-only or full disk: nothing is remembered
