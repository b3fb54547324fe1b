"""The first module parloop's fork server imports, and nothing else imports
it (see ``_launch``).

* The server was spawned with SIGINT blocked; from here on it ignores
  SIGINT, so a Ctrl-C meant for the caller, pending or new, never prints a
  traceback in it. Its workers inherit that, as every parloop worker
  ignores SIGINT anyway.
* It imports the libraries the caller's main module had loaded, each in a
  ``try``: multiprocessing's own preload loop stops the server at any
  error but ImportError, and a library that fails here must cost nothing
  (each worker imports what it needs, and reports what fails). They come
  as entries ``parloop-preload:NAME`` of the server's preload list, which
  the server's own loop then skips (no module has such a name).
* Before that, it caps BLAS and OpenMP at one thread (unless the
  environment says otherwise): a library's thread pool is sized when it
  loads, so the workers forked from here, one per CPU by default, would
  each inherit a pool as wide as the machine and oversubscribe it (a
  300x300 matrix product took 13 ms in each of two workers instead of
  ~1.5 ms). A worker with threadpoolctl installed sets its own share.
"""

import contextlib
import importlib
import os
import signal
import sys

signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _requested() -> list[str]:
    """Our entries of the preload list that multiprocessing.forkserver.main
    (a caller of this import) is working through."""
    from .launch import PRELOAD_PREFIX

    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "main" and \
                frame.f_globals.get("__name__") == "multiprocessing.forkserver":
            preload = frame.f_locals.get("preload") or []
            return [name[len(PRELOAD_PREFIX):] for name in preload
                    if isinstance(name, str) and name.startswith(PRELOAD_PREFIX)]
        frame = frame.f_back  # type: ignore[assignment]
    return []


from .worker import BLAS_VARIABLES  # noqa: E402 (after the signal set-up, on purpose)

for _variable in BLAS_VARIABLES:
    os.environ.setdefault(_variable, "1")

for _name in _requested():
    with contextlib.suppress(BaseException):  # see the docstring
        importlib.import_module(_name)
