"""Native thread pools in this process: whether a library that runs them
is loaded, and how many threads a loaded BLAS runs per call.

The count is the library's own answer (``openblas_get_num_threads`` and
its kin, found in the shared objects listed in ``/proc/self/maps``), the
way threadpoolctl asks, without depending on it. The CPU time of BLAS's
threads cannot stand in for it: Linux adds another thread's CPU time to
the process's only at a scheduler tick or switch, so a 0.4 ms product on
two threads read 1.0 CPUs one time and 11 the next.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

__all__ = ["MODULES", "STALL", "blas_threads", "describe", "loaded"]

#: modules whose code runs native thread pools (BLAS, OpenMP, intra-op threads)
MODULES = ("numpy", "scipy", "torch", "tensorflow", "jax", "numba", "sklearn")
#: seconds two threads calling a multi-threaded BLAS at once can stall: NumPy
#: 300x300 products on 2 threads, under OpenBLAS's 2 threads per call, stalled
#: 15-28 ms in 4 trials of 12 here (a whole call of 64 runs in ~24 ms alone)
STALL = 0.02

#: (a word in the shared object's file name, the calls that return its thread count)
_COUNTERS = (
    ("openblas", ("openblas_get_num_threads", "openblas_get_num_threads64_",
                  "scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads")),
    ("mkl", ("MKL_Get_Max_Threads",)),
    ("blis", ("bli_thread_get_num_threads",)),
)

# The count calls found so far, by library name, and how many modules were
# loaded when the maps were last read (a library loads with a module).
_found: dict[str, Callable[[], int]] = {}
_scanned_at = -1


def loaded() -> bool:
    """Whether a module that runs native thread pools is imported."""
    return any(name in sys.modules for name in MODULES)


def blas_threads() -> tuple[str, int] | None:
    """(library, threads) for the loaded BLAS running the most threads per
    call, when that is more than one; None otherwise, or where it cannot
    be read. The count is asked each time (``threadpool_limits`` changes it)."""
    if not loaded():
        return None
    _scan()
    best: tuple[str, int] | None = None
    for name, count in _found.items():
        try:
            threads = int(count())
        except (OSError, ValueError):
            continue
        if threads > 1 and (best is None or threads > best[1]):
            best = (name, threads)
    return best


def describe(library: str, threads: int) -> str:
    """The plan's words for a thread trial left out because of ``library``."""
    return (f"; not tried on threads: {library} runs {threads} threads per call, and two "
            f"callers at once can stall it for longer (~{STALL * 1e3:.0f} ms) than threads "
            f"could save")


def _scan() -> None:
    """Find the count calls of BLAS libraries loaded since the last scan."""
    global _scanned_at
    if len(sys.modules) == _scanned_at:
        return
    _scanned_at = len(sys.modules)
    try:
        with open("/proc/self/maps") as maps:
            fields = [line.split(None, 5) for line in maps]
    except OSError:
        return
    paths = {parts[5].strip() for parts in fields if len(parts) == 6}
    for path in paths:
        base = path.rsplit("/", 1)[-1].lower()
        for name, calls in _COUNTERS:
            if name in base and name not in _found and ".so" in base:
                count = _count_call(path, calls)
                if count is not None:
                    _found[name] = count


def _count_call(path: str, calls: tuple[str, ...]) -> Callable[[], int] | None:
    import ctypes  # ~3 ms: only once a library that may be a BLAS is loaded

    try:
        library = ctypes.CDLL(path)  # already loaded: this only finds it
    except OSError:
        return None
    for symbol in calls:
        call = getattr(library, symbol, None)
        if call is not None:
            call.restype = ctypes.c_int
            call.argtypes = []
            return call  # type: ignore[no-any-return]
    return None
