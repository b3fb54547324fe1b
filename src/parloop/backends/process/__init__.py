"""The process backend: parloop's own process pool (``pool``), the worker
processes' side (``worker``), starting and stopping them (``children``,
``launch``, ``server_init``), and big buffers through shared memory
(``shm``). See ``pool`` for how a chunk travels."""

from __future__ import annotations

from typing import Any

from ..._cpu import default_start_method as default_start_method

__all__ = ["create", "default_start_method", "prepare"]


def create(workers: int, options: Any) -> Any:
    """A new process pool of ``workers`` workers (see ``pool.ProcessBackend``)."""
    from .pool import create as create_pool

    return create_pool(workers, options)


def prepare(options: Any) -> None:
    """What must happen in the caller's own thread before a pool starts in
    another one (see ``pool.prepare``)."""
    from .pool import prepare as prepare_pool

    prepare_pool(options)
