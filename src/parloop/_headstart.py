"""A first item that runs long starts the pool early, while it still runs.

Before a function's first call has measured anything, the probe runs the
first item in the caller. When that item is still running LAUNCH_AFTER
(20 ms) in, a thread launches parloop's fork server (~0.5 ms of the
caller's time; the server boots on another CPU); at PREPARE_AFTER (50 ms)
it loads the pool's modules; when the item is still running HEAD_START
(75 ms) in, it is heavy, and so, most likely, are the others: waiting for
it to finish before starting a pool would lose up to its whole time (all
of it, for a call of two items). So the thread leases a pool that does not
fork the caller and, once it is up, sends it the next items. The caller
meanwhile goes on with the probe, item by item, and hands the rest of the
call to the pool as soon as the pool has taken items; if the input runs
out first, the caller never waited for the pool at all. This is ski rental
over time: renting (running here) until what has been spent says that
buying (a pool) pays. Buying costs the caller no wait; the steps are
staggered because each costs the caller's item what it runs of Python
beside it (the thread and the caller take turns on the GIL): the launch
next to nothing, the modules ~10-20 ms, which is why they wait for items
longer than 50 ms. Items shorter than that are left to the probe, whose
fork pool (when the caller has no threads) starts in ~10 ms.

Only for inputs that can be read without running user code (a list, tuple
or range), so that the thread never drives the user's iterator, and only
when nothing about the function is known yet.
"""

from __future__ import annotations

import _thread
import atexit
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _costs, _scope
from ._cpu import affinity, thread_count
from ._pickling import explain_item, explain_unpicklable
from .backends.base import Chunk, Job

if TYPE_CHECKING:
    from ._input import Input
    from ._options import Options

__all__ = ["HEAD_START", "HeadStart", "arrange", "switch_often"]

#: seconds a first item must run before the pool is started beside it (at
#: least, and at least HEAD_FRACTION of a spawn pool's estimated start-up)
HEAD_START = 0.075
HEAD_FRACTION = 0.25
#: seconds into the first item at which the fork server is launched, so
#: that it is up (~40-50 ms later) by the time the pool is wanted
LAUNCH_AFTER = 0.02
#: seconds into the first item at which the pool's modules are loaded (an
#: 8 x 50 ms call ran 0.38 s without a head start and 0.45 s with all of its
#: work done at 20 ms, while 2 x 1 s gained ~0.8 s either way)
PREPARE_AFTER = 0.05
#: seconds the interpreter's exit waits for a pool a head start is starting
EXIT_WAIT = 30.0
#: seconds a caller that closed a head start waits for each of its threads
QUIESCE_WAIT = 0.05


class HeadStart:
    """The caller arms it as its first item begins. Unless the caller closes
    it first, its thread calls ``launch()`` (the fork server starts) after
    LAUNCH_AFTER seconds, ``prepare()`` (the pool's modules) after
    PREPARE_AFTER, and after ``after`` seconds leases a pool
    (``start()``); then, under ``lock``, ``send(lease)`` takes the next
    items from the input and submits them, returning the chunks sent. The
    caller meanwhile goes on running items itself, each taken through
    ``take()`` (under the same lock), until the pool has taken over: it
    never waits for a pool that is still starting, and no item runs twice."""

    def __init__(self, launch: Callable[[bool], None], prepare: Callable[[], None],
                 start: Callable[[], _scope.Lease],
                 send: Callable[[_scope.Lease], list[Chunk]], after: float) -> None:
        self._launch, self._prepare, self._start, self._send = launch, prepare, start, send
        self.lock = threading.Lock()
        self.after = after
        self.closed = False  # the caller wants nothing more from it
        self.fired_at: float | None = None  # seconds into the first item
        self.lease: _scope.Lease | None = None  # set once items were sent to it
        self.sent: list[Chunk] = []
        self.error: BaseException | None = None  # the pool could not start
        self.busy = False  # the fork server was started (or is starting)
        self._wake = _thread.allocate_lock()  # released by close(): stop waiting
        self._wake.acquire()
        self._woken = False
        self._thread: threading.Thread | None = None  # the named thread, once there is work
        self._began = 0.0
        self._switching = False  # arm() made the GIL change hands often
        self._others: int | None = None  # set once the fork server was launched
        self._done = _thread.allocate_lock()  # held until the bare thread ends
        self._done.acquire()

    def arm(self) -> None:
        """(Caller.) The first item starts now. The first wait runs in a bare
        thread, which starts in ~60 µs where a threading.Thread takes 150 µs
        or more: most first calls close it again at once. Until the item
        ends, the GIL changes hands often (see ``switch_often``): a thread
        that had waited 20 ms beside a CPU-bound caller woke 10-20 ms late."""
        self._began = time.perf_counter()
        switch_often(True)
        self._switching = True
        _thread.start_new_thread(self._first_wait, ())

    def _switched_back(self) -> None:
        """(Caller.) The first item is over: the GIL's hand-overs as before."""
        if self._switching:
            self._switching = False
            switch_often(False)

    def settle(self) -> bool:
        """(Caller, after the first item.) Whether it fired; when not, it is
        closed, and if its thread had launched the fork server, the caller
        waits for the thread to end: a caller with no other thread can fork
        a pool in ~10 ms, where the fork server's workers take ~20 ms (a
        3 x 30 ms call was kept serial by the slower estimate)."""
        self._switched_back()
        with self.lock:
            if self.fired_at is not None:
                return True
        self.close()
        if self._others is not None:
            self._quiesce()
            self._launch(False)
        return False

    def _quiesce(self) -> None:
        """(Caller.) Wait, briefly, until its threads are gone."""
        if self._done.acquire(timeout=QUIESCE_WAIT):
            self._done.release()
        thread = self._thread
        if thread is not None:
            thread.join(QUIESCE_WAIT)
        # A thread that has ended its Python work still exits in the OS.
        deadline = time.perf_counter() + 0.002
        while thread_count() > self._others and time.perf_counter() < deadline:  # type: ignore[operator]
            time.sleep(0.0001)

    def take(self, source: Input) -> tuple[list[Any], BaseException | None] | None:
        """(Caller.) The next item from ``source``, as ``source.take(1)``, or
        None once the pool has taken the items after those the caller ran."""
        with self.lock:
            return None if self.sent else source.take(1)

    def close(self) -> _scope.Lease | None:
        """(Caller.) It is no longer wanted: the lease when the pool has
        taken items (the caller waits for them there), else None. A pool
        still starting is given back by its thread once it is up."""
        self._switched_back()
        with self.lock:
            self.closed = True
            if self.sent:
                return self.lease
            wake, self._woken = not self._woken, True
        if wake:
            self._wake.release()
        # Not waited for: a waiting thread ends within microseconds, holding
        # nothing a forked worker could need (waiting for it cost a tiny
        # first call ~0.3 ms). If the next pool starts that soon, it merely
        # sees a thread and uses the fork server.
        return None

    def _first_wait(self) -> None:
        try:
            self._wait_and_launch()
        finally:
            self._done.release()

    def _wait_and_launch(self) -> None:
        """(Bare thread.) Wait LAUNCH_AFTER for the caller to close it; if it
        does not, launch the fork server, and wait on to PREPARE_AFTER; if it
        still does not, hand the work to a named thread and end."""
        if self._wake.acquire(timeout=LAUNCH_AFTER):
            return
        with self.lock:  # settle() reads _others once closed: either it sees it, or this ends
            if self.closed:
                return
            self._others = thread_count() - 1  # the threads that are not the head start's
        switch_often(True)  # see below
        try:
            self._launch(True)
        except Exception as exc:  # prepare() meets it again, and says so
            self.error = exc
        finally:
            switch_often(False)
        left = PREPARE_AFTER - (time.perf_counter() - self._began)
        if self._wake.acquire(timeout=max(0.0, left)):
            return
        # From here each GIL hand-over counts: a CPU-bound caller gives the
        # GIL up only every switch interval, and starting the thread alone
        # took ~25 ms at 5 ms per hand-over (measured, 2 x 1 s first call).
        switch_often(True)
        try:
            with self.lock:
                if self.closed:
                    return
                self._thread = threading.Thread(target=self._main, name="parloop-head-start",
                                                daemon=True)
                with _live_lock:
                    _live.add(self._thread)
                self._thread.start()
        finally:
            switch_often(False)

    def _step(self, step: Callable[[], None]) -> bool:
        """(Its thread.) Run ``step`` unless the caller has closed it; whether it ran."""
        with self.lock:
            if self.closed:
                return False
        switch_often(True)  # its many small steps, against a CPU-bound caller
        try:
            step()
        finally:
            switch_often(False)
        return True

    def _main(self) -> None:
        try:
            if self._step(self._begin):
                left = self.after - (time.perf_counter() - self._began)
                if not self._wake.acquire(timeout=max(0.0, left)):
                    self._step(self._fire)
        except BaseException as exc:  # the caller goes on alone
            self.error = exc
            with self.lock:
                self.closed = True
        finally:
            with _live_lock:
                _live.discard(threading.current_thread())

    def _begin(self) -> None:
        self.busy = True
        self._prepare()

    def _fire(self) -> None:
        self.fired_at = time.perf_counter() - self._began
        lease = self._start()
        with self.lock:
            if not self.closed:
                self.sent = self._send(lease)
                if self.sent:
                    self.lease = lease
                    return
                self.closed = True  # nothing it could send: the caller goes on alone
        lease.release()


class _Declined(Exception):
    """(Its thread.) No pool after all: the caller goes on alone."""


_live_lock = threading.Lock()
_live: set[threading.Thread] = set()  # head-start timers armed and not yet done


@atexit.register
def _finish() -> None:
    """A pool a head start is still starting when the interpreter exits is
    let finish, so that it is shut down in order (this runs before the
    pools are closed: atexit calls run last registered, first)."""
    with _live_lock:
        timers = list(_live)
    for timer in timers:
        timer.join(EXIT_WAIT)


def arrange(job: Job, source: Input, options: Options, block: _scope.Block | None,
            workers: Callable[[], int]) -> HeadStart | None:
    """A head start for a call, or None when it may not have one (see the
    module docstring): its input must be a sequence of two items or more,
    nothing forces the plan, and the pool must not fork the caller (it
    starts from a thread while the caller runs the user's code)."""
    if options.backend != "auto" or options.start_method == "fork" or options.workers == 1 \
            or os.environ.get("PARLOOP_HEAD_START") == "0" \
            or source.sequence is None or (source.total or 0) < 2 or source.index != 0:
        return None
    # Nothing here may cost the call time: reading the CPU limits, the pool
    # registry or multiprocessing itself waits for the thread (a first call
    # of tiny work must stay within a millisecond of a plain loop).
    count = [0]

    def launch(wanted: bool) -> None:
        """The fork server, launched (or, once not wanted, withdrawn)."""
        from .backends import process

        if not wanted:
            process.withdraw_server()
            return
        if (affinity() or os.cpu_count() or 1) >= 2:  # the CPU limits (workers()): later
            process.launch_server(options)

    def prepare() -> None:
        count[0] = workers()
        if count[0] < 2:
            raise _Declined("one usable CPU")
        _scope.prepare("process", options)

    def start() -> _scope.Lease:
        problem = explain_unpicklable(job.fn, job.args, job.kwargs, job.star)
        if problem is not None:
            raise problem  # no pool: the caller's probe finds it too, and says so
        return _scope.lease("process", count[0], options, block)

    def send(lease: _scope.Lease) -> list[Chunk]:
        chunks: list[Chunk] = []
        # One item per worker but one: the caller is still busy with an item
        # of its own, and a third CPU-bound process on two cores would slow
        # all three (the first item ran 1.2 s instead of 1.0 s here).
        while len(chunks) < max(1, count[0] - 1) and source.remaining:
            begin = source.index
            items, _ = source.take(1)  # a list, tuple or range: it cannot raise
            if explain_item(begin, items[0]) is not None:
                source.give_back(items)
                break
            chunks.append(Chunk(job, begin, items))
        if chunks:
            lease.backend.start_job(job)
            for chunk in chunks:
                lease.backend.submit(chunk)
        return chunks

    # Started from a thread, the pool uses the fork server, launched early
    # (LAUNCH_AFTER), or spawn if asked for, whose start is the slowest.
    startup = _costs.startup_estimate("spawn", 2) if options.start_method == "spawn" else 0.0
    return HeadStart(launch, prepare, start, send, max(HEAD_START, HEAD_FRACTION * startup))


_switching_lock = threading.Lock()
_switching = 0  # calls with a pool starting now
_user_interval = 0.0  # the switch interval to restore after them


def switch_often(on: bool) -> None:
    """A pool's starter thread needs the GIL for a moment at each of its many
    steps, and a CPU-bound caller hands it over only every switch interval
    (5 ms): 0.5 ms while any pool starts, or the start takes many times
    longer. Counted, so that calls starting pools at once restore the user's
    value."""
    global _switching, _user_interval
    with _switching_lock:
        if on:
            if _switching == 0:
                _user_interval = sys.getswitchinterval()
                sys.setswitchinterval(min(_user_interval, 0.0005))
            _switching += 1
        else:
            _switching -= 1
            if _switching == 0:
                sys.setswitchinterval(_user_interval)
