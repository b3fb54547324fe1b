"""Where backends live: inside a ``with parallel_for(...)`` block, or warm
between calls outside any block.

A block owns its backends: started on first use, reused by every call in
the block, closed when it exits. Outside a block, a call leases the warm
process pool the previous call left behind (loky does the same), so a
script calling a decorated function in a loop pays the start-up once. At
most one idle pool is kept; it is closed at interpreter exit, and its
workers also leave by themselves after PARLOOP_IDLE_TIMEOUT seconds idle.
"""

from __future__ import annotations

import atexit
import importlib
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from . import _cpu, _planner
from ._options import Options
from .backends.base import Backend
from .errors import BackendUnavailableError

__all__ = ["Block", "Lease", "lease"]

_EXTRAS = {"dask": ("distributed", "dask"), "ray": ("ray", "ray")}


def create_backend(name: str, workers: int, options: Options) -> Backend:
    """A new backend by name; the module is imported only now."""
    if name in _EXTRAS:
        package, extra = _EXTRAS[name]
        try:
            importlib.import_module(package)
        except ImportError as exc:
            raise BackendUnavailableError(
                f"backend={name!r} needs the {package!r} package: pip install 'parloop[{extra}]'"
            ) from exc
    module = importlib.import_module(f"parloop.backends.{name}")
    started = time.perf_counter()
    key = _planner.startup_key(options.start_method or _cpu.default_start_method())
    backend: Backend = module.create(workers, options)
    if name == "process":
        _planner.record_startup(key, workers, time.perf_counter() - started)
    return backend


def prepare(name: str, options: Options) -> None:
    """What must happen in the caller's own thread before a backend starts in
    another one (a backend module may define ``prepare(options)``)."""
    module = importlib.import_module(f"parloop.backends.{name}")
    hook = getattr(module, "prepare", None)
    if hook is not None:
        hook(options)


def _key(name: str, workers: int, options: Options) -> tuple[Any, ...]:
    if name == "process":
        # With start_method=None the pool picks fork or forkserver per worker
        # as it starts them, so the default is one key, not two.
        return (name, workers, options.start_method)
    if name in _EXTRAS:
        return (name, workers, id(options.client), options.address)
    return (name, workers)


class Lease:
    """One call's use of a backend."""

    def __init__(self, backend: Backend, warm: bool, release: Callable[[bool], None]) -> None:
        self.backend = backend
        self.warm = warm
        self._release = release

    def release(self, broken: bool = False) -> None:
        """Give the backend back; ``broken``: it was killed (Ctrl-C), drop it."""
        self._release(broken)


class Block:
    """The state of one active ``with parallel_for(...)`` block."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.options = dict(options)
        self._backends: dict[tuple[Any, ...], Backend] = {}
        self._lock = threading.Lock()

    def lease(self, name: str, workers: int, options: Options) -> Lease:
        key = _key(name, workers, options)
        with self._lock:
            backend = self._backends.get(key)
            warm = backend is not None
            if backend is None:
                backend = self._backends[key] = create_backend(name, workers, options)

        def release(broken: bool) -> None:
            if broken:
                with self._lock:
                    if self._backends.get(key) is backend:
                        del self._backends[key]
                backend.close(kill=True)

        return Lease(backend, warm, release)

    def is_warm(self, name: str, workers: int, options: Options) -> bool:
        return _key(name, workers, options) in self._backends

    def close(self, kill: bool = False) -> None:
        with self._lock:
            backends, self._backends = list(self._backends.values()), {}
        for backend in backends:
            backend.close(kill=kill)


class _WarmPools:
    """Pools kept between calls outside any block (one idle pool at most)."""

    def __init__(self) -> None:
        self._idle: dict[tuple[Any, ...], Backend] = {}
        self._lock = threading.Lock()

    def is_warm(self, name: str, workers: int, options: Options) -> bool:
        return _key(name, workers, options) in self._idle

    def lease(self, name: str, workers: int, options: Options) -> Lease:
        key = _key(name, workers, options)
        with self._lock:
            backend = self._idle.pop(key, None)
        warm = backend is not None
        if backend is None:
            backend = create_backend(name, workers, options)

        def release(broken: bool) -> None:
            retired: list[Backend] = [backend]
            if not broken and name in ("process", *_EXTRAS):
                with self._lock:
                    if key not in self._idle:  # this one becomes the idle pool
                        retired = list(self._idle.values())
                        self._idle = {key: backend}
            for old in retired:
                old.close(kill=broken)

        return Lease(backend, warm, release)

    def close_all(self) -> None:
        with self._lock:
            idle, self._idle = list(self._idle.values()), {}
        for backend in idle:
            backend.close()


warm_pools = _WarmPools()
atexit.register(warm_pools.close_all)


def lease(name: str, workers: int, options: Options, block: Block | None) -> Lease:
    return (block or warm_pools).lease(name, workers, options)


def is_warm(name: str, workers: int, options: Options, block: Block | None) -> bool:
    return (block or warm_pools).is_warm(name, workers, options)
