"""Make the fork server import the main module once, not every worker.

A forkserver worker is forked from a server process, which is meant to have
imported the caller's main module already (``set_forkserver_preload
(["__main__"])``). In CPython up to 3.13 that request is silently ignored: the
server looks for a ``main_path`` key that ``spawn.get_preparation_data`` has
not produced since 2013 (CPython issues gh-98552 and gh-137996). Every worker
then re-runs the main script and its imports itself: ~0.13 s per worker for a
script that imports NumPy on the 2-core test machine, seconds for heavier
libraries.

parloop asks the server to import this module as well. Before the server is
spawned, the caller puts its main module's path (or name) and ``sys.path``
into the environment the server inherits, for the moment the spawn takes;
here, in the server, they are read, removed, and the main module is imported
the way each worker would have (as ``__mp_main__``, so its
``if __name__ == "__main__":`` block does not run). A worker forked from the
server then finds it already in place and skips the import. If the import
fails here, nothing is lost: each worker imports it itself, as before, and
reports any error the usual way.

What the main module does at import then happens in the server, once, and
the workers inherit it: a module that starts threads or initialises a GPU at
import hands that state to every worker, as CPython 3.14's own (working)
preload does. ``PARLOOP_PRELOAD_MAIN=0`` turns this off.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

__all__ = ["start_server"]

_ENV = "PARLOOP_FORKSERVER_MAIN"
_OFF = "PARLOOP_PRELOAD_MAIN"  # "0": workers import the main module themselves, as before
_MAX_ENV = 64 << 10  # bytes; Linux caps one environment string at 128 KiB


def start_server(forkserver: Any) -> None:
    """Start the fork server (if it is not running) with the main module preloaded."""
    server = forkserver._forkserver
    if getattr(server, "_forkserver_pid", None) is not None:
        return  # running already (its preload happened when it started)
    from multiprocessing import spawn

    data = spawn.get_preparation_data("parloop")
    main: dict[str, Any] = {key: data[key] for key in ("init_main_from_path", "init_main_from_name")
                            if key in data}
    main.update(sys_path=data.get("sys_path", sys.path), sys_argv=data.get("sys_argv", sys.argv),
                parent=os.getpid())
    spec = json.dumps(main)
    if os.environ.get(_OFF) == "0" or len(main) == 3 or len(spec) > _MAX_ENV:
        forkserver.ensure_running()  # no main module to preload, or not this way
        return
    previous = os.environ.get(_ENV)
    os.environ[_ENV] = spec
    try:
        forkserver.ensure_running()
    finally:
        if previous is None:
            os.environ.pop(_ENV, None)
        else:
            os.environ[_ENV] = previous


def _import_main_here() -> None:
    spec = os.environ.pop(_ENV, None)  # the workers forked from here need not see it
    if spec is None:
        return
    from multiprocessing import process, spawn

    main = json.loads(spec)
    if main["parent"] != os.getppid():
        return  # inherited by some other process, not a fork server parloop started
    sys.path[:] = main["sys_path"]
    sys.argv[:] = main["sys_argv"]  # a script may read its arguments at import
    me = process.current_process()
    me._inheriting = True  # type: ignore[attr-defined]  # as a spawned child would be
    try:
        if "init_main_from_name" in main:
            spawn._fixup_main_from_name(main["init_main_from_name"])  # type: ignore[attr-defined]
        else:
            spawn.import_main_path(main["init_main_from_path"])
    except BaseException:  # each worker will import it again and report what failed
        pass
    finally:
        del me._inheriting  # type: ignore[attr-defined]


_import_main_here()
