"""The process backend: parloop's own process pool (``pool``: the policy;
``roster``: its worker processes; ``deadlines``: when one must be stopped),
the worker processes' side (``worker``), starting and stopping them
(``children``, ``launch``, ``server``, ``server_main``), the messages between them
(``pipe``), and big buffers through shared memory (``shm``). See ``pool``
for how a chunk travels."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ... import _costs
from ..._cpu import default_start_method as default_start_method

if TYPE_CHECKING:
    from ..base import Settings

__all__ = ["create", "default_start_method", "launch_server", "prepare", "withdraw_server"]


def create(workers: int, options: Settings) -> Any:
    """A pool of ``workers`` processes (``pool.ProcessBackend``); the time it
    took to start is this machine's next estimate (see ``parloop._costs``)."""
    from .pool import ProcessBackend

    key = _costs.startup_key(options.start_method or default_start_method())
    started = time.perf_counter()
    backend = ProcessBackend(workers, options.start_method, options.max_items_per_worker)
    _costs.record_startup(key, workers, time.perf_counter() - started)
    return backend


def launch_server(options: Settings) -> None:
    """The fork server, when a pool started now would fork its workers
    there: ~0.5 ms here, then ~40 ms of booting on another CPU (see
    ``server``)."""
    if (options.start_method or default_start_method()) == "forkserver":
        from .server import ensure_running

        ensure_running()


def withdraw_server() -> None:
    """A fork server launched for a pool that was not needed after all is
    stopped, unless the caller has threads (a pool would need it now) or it
    has forked workers (see ``server.stop_unused``)."""
    if default_start_method() == "fork":
        from .server import stop_unused

        stop_unused()


def prepare(options: Settings) -> None:
    """Before a pool starts in a background thread: its fork server, and
    the pool's own modules, imported while the server boots: ~20 ms of
    imports (twice that beside a CPU-bound caller) that were on the way to
    the first worker."""
    launch_server(options)
    from . import pool  # noqa: F401
