"""Where backends live: inside a ``with parallel_for(...)`` block, or warm
between calls outside any block.

A block owns its backends: started on first use, reused by every call in
the block, from any thread, closed when it exits. Outside a block, a call
leases the warm process pool the previous call left behind (loky does the
same), so a script calling a decorated function in a loop pays the start-up
once; calls made at once from several threads share it rather than each
starting one. At most one idle pool is kept; it is closed at interpreter
exit, and its workers also leave by themselves after PARLOOP_IDLE_TIMEOUT
seconds idle.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
from typing import Any

from . import backends
from ._options import Options
from .backends.base import Backend
from .errors import BackendUnavailableError

__all__ = ["Block", "Lease", "active_block", "enter", "is_warm", "lease", "leave", "prepare"]

# Blocks live in a ContextVar: a thread or an asyncio task never sees
# another one's block (a block's own pool.map takes its block along).
_block: ContextVar[Block | None] = ContextVar("parloop_block", default=None)


def active_block() -> Block | None:
    """The innermost ``with parallel_for(...)`` block of this context, if any."""
    return _block.get()


def enter(block: Block) -> Token[Block | None]:
    return _block.set(block)


def leave(token: Token[Block | None]) -> None:
    _block.reset(token)


prepare = backends.prepare


class Lease:
    """One call's use of a backend, which other calls may be using at once."""

    def __init__(self, backend: Backend, warm: bool, release: Callable[[bool], None]) -> None:
        self.backend = backend
        self.warm = warm
        self._release = release

    def release(self, broken: bool = False) -> None:
        """Give the backend back; ``broken``: it was killed (Ctrl-C): drop it,
        unless other calls still use it (their own cancel paths run)."""
        self._release(broken)


class _Entry:
    """A backend on a shelf: being created, or live, and how many calls use it."""

    def __init__(self) -> None:
        self.backend: Backend | None = None
        self.error: BaseException | None = None
        self.ready = threading.Event()
        self.users = 0


class _Shelf:
    """Backends by key, each shared by every call that leases it while it
    lives: calls made at once from several threads run on one pool (its
    workers take their chunks in turn) instead of each starting its own.
    A call that finds its backend still being created waits for it.

    ``keep``: which idle backends stay for the next call (a block keeps all
    until it closes; outside blocks, one idle pool at most)."""

    def __init__(self, keep_idle: bool) -> None:
        self._entries: dict[tuple[Any, ...], _Entry] = {}
        self._lock = threading.Lock()
        self._keep_idle = keep_idle

    def is_warm(self, name: str, workers: int, options: Options) -> bool:
        entry = self._entries.get(backends.key(name, workers, options))
        return entry is not None and entry.backend is not None

    def lease(self, name: str, workers: int, options: Options) -> Lease:
        key = backends.key(name, workers, options)
        retired: list[Backend] = []
        with self._lock:
            entry = self._entries.get(key)
            creator = entry is None
            if entry is None:
                entry = self._entries[key] = _Entry()
                if not self._keep_idle:
                    # A new pool: idle ones of other sizes give their CPUs back first.
                    retired = self._take_idle(except_key=key)
            entry.users += 1
        for old in retired:
            old.close()
        if creator:
            try:
                entry.backend = backends.create(name, workers, options)
            except BaseException as exc:
                entry.error = exc
                with self._lock:
                    entry.users -= 1
                    if self._entries.get(key) is entry:
                        del self._entries[key]
                raise
            finally:
                entry.ready.set()
        else:
            entry.ready.wait()
            if entry.backend is None:  # its creator failed; that call raised why
                with self._lock:
                    entry.users -= 1
                raise BackendUnavailableError(
                    f"the {name} backend failed to start in another call: {entry.error}"
                ) from entry.error
        backend = entry.backend
        assert backend is not None

        def release(broken: bool) -> None:
            closing: list[Backend] = []
            with self._lock:
                entry.users -= 1
                mine = self._entries.get(key) is entry
                if entry.users == 0 and mine:
                    if broken or not self._keeps(name):
                        del self._entries[key]
                        closing = [backend]
                    elif not self._keep_idle:
                        closing = self._take_idle(except_key=key)  # one idle pool at most
                elif entry.users == 0:  # already taken off the shelf (closed)
                    closing = [backend]
            for old in closing:
                old.close(kill=broken and old is backend)

        return Lease(backend, warm=not creator, release=release)

    def _keeps(self, name: str) -> bool:
        return self._keep_idle or backends.REGISTRY[name].keeps_warm

    def _take_idle(self, except_key: tuple[Any, ...]) -> list[Backend]:
        """Remove the idle backends of other keys (under the lock); close them after."""
        idle = [k for k, e in self._entries.items()
                if k != except_key and e.users == 0 and e.backend is not None]
        return [self._entries.pop(k).backend for k in idle]  # type: ignore[misc]

    def close_all(self, kill: bool = False) -> None:
        with self._lock:
            entries, self._entries = list(self._entries.values()), {}
        for entry in entries:
            if entry.backend is not None:
                entry.backend.close(kill=kill)


class Block:
    """The state of one active ``with parallel_for(...)`` block: its options,
    and the backends its calls started, shared by the calls of every thread."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.options = dict(options)
        self._shelf = _Shelf(keep_idle=True)

    def lease(self, name: str, workers: int, options: Options) -> Lease:
        return self._shelf.lease(name, workers, options)

    def is_warm(self, name: str, workers: int, options: Options) -> bool:
        return self._shelf.is_warm(name, workers, options)

    def close(self, kill: bool = False) -> None:
        self._shelf.close_all(kill=kill)


warm_pools = _Shelf(keep_idle=False)
atexit.register(warm_pools.close_all)


def lease(name: str, workers: int, options: Options, block: Block | None) -> Lease:
    return (block or warm_pools).lease(name, workers, options)


def is_warm(name: str, workers: int, options: Options, block: Block | None) -> bool:
    return (block or warm_pools).is_warm(name, workers, options)
