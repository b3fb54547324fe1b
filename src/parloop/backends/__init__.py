"""The backends parloop can run a call on, one entry each.

The engine knows none of them by name: it asks this registry to create the
one a plan names. A backend is a module with ``create(workers, options)``
(and maybe ``prepare(options)``; see ``base.Backend``) and one entry here;
the module is imported only when a call first uses it, so ``import
parloop`` never imports an engine such as Dask or Ray.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, NamedTuple

from ..errors import BackendUnavailableError

if TYPE_CHECKING:
    from .base import Backend, Settings

__all__ = ["CHOICES", "REGISTRY", "BackendInfo", "create", "key", "load", "prepare"]


class BackendInfo(NamedTuple):
    name: str
    module: str  # imported when first used
    requires: str | None = None  # a package it needs ...
    extra: str | None = None  # ... which pip install 'parloop[extra]' installs
    keeps_warm: bool = False  # outside a block, the last pool stays for the next call
    keyed_by: tuple[str, ...] = ()  # the options that make two pools different

    def missing(self) -> BackendUnavailableError | None:
        """Why it cannot run here, or None."""
        if self.requires is None:
            return None
        try:
            importlib.import_module(self.requires)
        except ImportError as exc:
            error = BackendUnavailableError(
                f"backend={self.name!r} needs the {self.requires!r} package: "
                f"pip install 'parloop[{self.extra}]'")
            error.__cause__ = exc
            return error
        return None


REGISTRY: dict[str, BackendInfo] = {info.name: info for info in (
    # start_method=None picks fork or forkserver per worker as it starts
    # them, so the default is one key, not two.
    BackendInfo("process", "parloop.backends.process", keeps_warm=True,
                keyed_by=("start_method", "max_items_per_worker")),
    BackendInfo("thread", "parloop.backends.thread"),
    BackendInfo("dask", "parloop.backends.cluster.dask", "distributed", "dask",
                keeps_warm=True, keyed_by=("client", "address")),
    BackendInfo("ray", "parloop.backends.cluster.ray", "ray", "ray", keeps_warm=True,
                keyed_by=("client", "address")),
)}

#: What ``backend=`` accepts: "auto" and "serial" are the engine's own
#: (a serial plan runs in the caller, on no backend).
CHOICES: tuple[str, ...] = ("auto", "serial", *REGISTRY)


def create(name: str, workers: int, options: Settings) -> Backend:
    """A new backend by name; its module is imported only now."""
    info = REGISTRY[name]
    problem = info.missing()
    if problem is not None:
        raise problem
    backend: Backend = importlib.import_module(info.module).create(workers, options)
    return backend


def load(name: str) -> None:
    """Import a backend's module ahead of its first use."""
    importlib.import_module(REGISTRY[name].module)


def prepare(name: str, options: Settings) -> None:
    """What must happen in the caller's own thread before a backend starts
    in another one (a backend module may define ``prepare(options)``)."""
    hook = getattr(importlib.import_module(REGISTRY[name].module), "prepare", None)
    if hook is not None:
        hook(options)


def key(name: str, workers: int, options: Settings) -> tuple[Any, ...]:
    """Which pool a call may share: same backend, size and keyed options
    (an engine client by identity)."""
    values = tuple(id(value) if option == "client" else value
                   for option in REGISTRY[name].keyed_by
                   for value in [getattr(options, option)])
    return (name, workers, *values)
