"""Native thread pools in this process: whether a library that runs them
is loaded, how many CPUs an item keeps busy through them, and how many
threads a loaded BLAS runs per call.

The CPUs an item keeps busy are its thread's CPU time plus that of every
thread Python did not start (BLAS and OpenMP workers), each read through
the thread's own CPU clock (``item_clock``). The process's CPU clock will
not do: Linux adds the time of a thread running on another CPU to it only
at a scheduler tick, so one 0.4 ms NumPy product on two threads read 1.0
CPUs one time and 11 the next. A thread's own clock is brought up to date
whenever it is read.

The thread count is the library's own answer (``openblas_get_num_threads``
and its kin, found in the shared objects listed in ``/proc/self/maps``), the
way threadpoolctl asks, without depending on it.

A reading cannot tell BLAS threads at work from BLAS threads waiting for
work: OpenBLAS's threads spin on a CPU for a while after they start and after each
call (~30 ms after NumPy's import here, ~100 ms after a product), so a pure
Python item run just after ``import numpy`` reads as keeping two CPUs busy.
``one_thread`` caps the library at one thread per call, and ``CapCheck``
runs items capped and as usual in turn: items that run no slower capped
(``CAPPED_SLOWER``) than the items beside them do not need its threads.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable

__all__ = ["BUSY", "CAPPED_SLOWER", "CAP_MOST", "MODULES", "STALL", "CapCheck",
           "blas_threads", "describe", "item_clock", "loaded", "one_thread", "run_delay"]

#: modules whose code runs native thread pools (BLAS, OpenMP, intra-op threads)
MODULES = ("numpy", "scipy", "torch", "tensorflow", "jax", "numba", "sklearn")
#: CPUs an item keeps busy beyond which it runs a native thread pool
BUSY = 1.25
#: seconds two threads calling a multi-threaded BLAS at once can stall: NumPy
#: 300x300 products on 2 threads, under OpenBLAS's 2 threads per call, stalled
#: 15-28 ms in 4 trials of 12 here (a whole call of 64 runs in ~24 ms alone)
STALL = 0.02

#: items run with BLAS capped at one thread, no slower than this times the
#: quicker of the items run beside each, do not use BLAS's threads: 300x300
#: products ran 1.35-1.8x slower capped here, pure Python items 0.9-1.1x
CAPPED_SLOWER = 1.2
#: items run capped at most, each between two run as usual. One no slower
#: settles it; only this many slower in a row say the items use BLAS's
#: threads. A delay only ever adds time, and while OpenBLAS's threads spin
#: beside it a pure Python item took 1.3-1.7x its neighbours now and then
#: (~1 item in 15 here; two in a row failed a CI run): that error would keep
#: the function serial, where the other costs a call a pool at about par.
CAP_MOST = 4


class CapCheck:
    """Whether the items use BLAS's threads, from items run in turn as
    usual and capped (``one_thread``): the last item before it, then capped,
    as usual, capped, as usual... (CAP_MOST). ``free`` is None until it knows."""

    def __init__(self, before: float, cpus: float) -> None:
        self.capped: list[float] = []
        self.beside = [before]  # the items run as usual, each next to a capped one
        self.cpus = cpus  # the reading it puts to the test
        self.free: bool | None = None
        self.ratios: list[float] = []

    @classmethod
    def known(cls, free: bool) -> CapCheck:
        """What an earlier call's check found (the items' use of BLAS is the function's)."""
        check = cls(0.0, 1.0)
        check.free = free
        return check

    def next_capped(self) -> bool:
        """Whether the next item runs capped."""
        return self.free is None and len(self.capped) < len(self.beside)

    def cap(self) -> Callable[[], None] | None:
        """Cap BLAS for the next item (``one_thread``): the call that undoes
        it, or None when it could not be (the reading then stands)."""
        undo = one_thread()
        if undo is None:
            self.free = False
        return undo

    @property
    def found(self) -> bool | None:
        """What this call's capped items showed (None: they did not finish)."""
        return self.free if self.ratios else None

    def note(self, seconds: float, capped: bool) -> None:
        (self.capped if capped else self.beside).append(seconds)
        if capped or self.free is not None or len(self.beside) != len(self.capped) + 1:
            return
        item, left, right = self.capped[-1], self.beside[-2], self.beside[-1]
        self.ratios.append(item / max(1e-9, min(left, right)))
        if self.ratios[-1] <= CAPPED_SLOWER:
            self.free = True
        elif len(self.ratios) >= CAP_MOST:
            self.free = False

    def describe(self) -> str:
        """The plan's words for it, once it knows."""
        if not self.ratios or self.free is None:
            return ""
        ratios = " and ".join(f"{ratio:.2f}x" for ratio in self.ratios)
        items = f"{len(self.ratios)} item{'s' * (len(self.ratios) > 1)}"
        return (f"; {items} ran with BLAS capped at one thread, {ratios} the time of the "
                f"items beside {'them' if len(self.ratios) > 1 else 'it'}: "
                + (f"its threads' idle spin read as {self.cpus:.1f} CPUs busy" if self.free
                   else f"the items use its threads ({self.cpus:.1f} CPUs)"))


#: (a word in the shared object's file name, the calls that return its thread
#: count, the calls that set it)
_COUNTERS = (
    ("openblas", ("openblas_get_num_threads", "openblas_get_num_threads64_",
                  "scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads"),
     ("openblas_set_num_threads", "openblas_set_num_threads64_",
      "scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads")),
    ("mkl", ("MKL_Get_Max_Threads",), ("MKL_Set_Num_Threads",)),
    ("blis", ("bli_thread_get_num_threads",), ("bli_thread_set_num_threads",)),
)

# The (count, set) calls found so far, by library name, and how many modules
# were loaded when the maps were last read (a library loads with a module).
_found: dict[str, tuple[Callable[[], int], Callable[[int], None] | None]] = {}
_scanned_at = -1


def loaded() -> bool:
    """Whether a module that runs native thread pools is imported."""
    return any(name in sys.modules for name in MODULES)


def item_clock() -> Callable[[], float]:
    """A clock of the CPU seconds that the calling thread and every thread
    Python did not start have used (see the module's docstring); the
    calling thread's own CPU clock when there is no such thread, or no
    library that starts them is loaded. A thread that ends meanwhile
    stops counting."""
    if not loaded():
        return time.thread_time
    try:
        tasks = [int(name) for name in os.listdir("/proc/self/task")]
    except (OSError, ValueError):
        return time.process_time
    python = {thread.native_id for thread in threading.enumerate()}
    # Linux's CPU clock of thread ``tid``, as glibc's pthread_getcpuclockid makes it.
    clocks = [((~tid) << 3) | 6 for tid in tasks if tid not in python]
    if not clocks:
        return time.thread_time
    own, read = time.thread_time, time.clock_gettime

    def cpu() -> float:
        total = own()
        for clock in clocks:
            try:  # noqa: SIM105 (contextlib.suppress costs ~1 µs a read)
                total += read(clock)
            except OSError:  # it ended
                pass
        return total
    return cpu


def blas_threads() -> tuple[str, int] | None:
    """(library, threads) for the loaded BLAS running the most threads per
    call, when that is more than one; None otherwise, or where it cannot
    be read. The count is asked each time (``threadpool_limits`` changes it)."""
    if not loaded():
        return None
    _scan()
    best: tuple[str, int] | None = None
    for name, (count, _) in _found.items():
        try:
            threads = int(count())
        except (OSError, ValueError):
            continue
        if threads > 1 and (best is None or threads > best[1]):
            best = (name, threads)
    return best


def one_thread() -> Callable[[], None] | None:
    """Cap every loaded BLAS that runs more than one thread per call at one;
    the call that undoes it, or None when there was none to cap, or another
    thread of the program's own might be calling BLAS meanwhile (the cap is
    the whole process's)."""
    me = threading.current_thread()
    if not loaded() or any(thread is not me and not thread.name.startswith("parloop")
                           for thread in threading.enumerate()):
        return None
    _scan()
    capped: list[tuple[Callable[[int], None], int]] = []
    for count, set_count in _found.values():
        try:
            threads = int(count())
            if threads > 1 and set_count is not None:
                set_count(1)
                capped.append((set_count, threads))
        except (OSError, ValueError):
            continue
    if not capped:
        return None

    def undo() -> None:
        for set_count, threads in capped:
            set_count(threads)
    return undo


def describe(cpus: float, blas: tuple[str, int] | None = None) -> str:
    """The plan's words for a thread trial left out for an item that kept
    ``cpus`` CPUs busy: they would compete, or (``blas``: the library and
    its threads) two calls of it at once could stall for longer than
    threads could save."""
    if blas is None:
        return (f"; not tried on threads: each item kept {cpus:.1f} CPUs busy (BLAS or other "
                f"native threads), and two at once would only compete")
    return (f"; not tried on threads: each item kept {cpus:.1f} CPUs busy, {blas[0]} runs "
            f"{blas[1]} threads per call, and two calls of it at once can stall for longer "
            f"(~{STALL * 1e3:.0f} ms) than threads could save")


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
        for name, counts, sets in _COUNTERS:
            if name in base and name not in _found and ".so" in base:
                calls = _calls(path, counts, sets)
                if calls is not None:
                    _found[name] = calls


def _calls(path: str, counts: tuple[str, ...], sets: tuple[str, ...]
           ) -> tuple[Callable[[], int], Callable[[int], None] | None] | None:
    import ctypes  # ~3 ms: only once a library that may be a BLAS is loaded

    try:
        library = ctypes.CDLL(path)  # already loaded: this only finds it
    except OSError:
        return None
    count, set_count = (next(filter(None, (getattr(library, name, None) for name in names)), None)
                        for names in (counts, sets))
    if count is None:
        return None
    count.restype, count.argtypes = ctypes.c_int, []
    if set_count is not None:
        set_count.restype, set_count.argtypes = None, [ctypes.c_int]
    return count, set_count


def run_delay() -> float | None:
    """Seconds this thread has spent runnable but waiting for a CPU (Linux's
    schedstat; ~13 µs to read); None where that is not known."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as stat:
            return int(stat.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None
