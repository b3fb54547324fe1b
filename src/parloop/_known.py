"""Decisions made before the probe: static facts (``static_choice``), and
what earlier calls of the function measured (``from_history``), which can
spare a call its probe so that every core works from its first item."""

from __future__ import annotations

from collections.abc import Callable

from . import _role, _threads
from ._costs import PoolCost
from ._options import Options
from ._plan import Verdict, format_seconds
from ._planner import CLEAR_WIN, HEAVY_ITEM, NO_TRIAL_ITEM, THREADS_GAIN
from ._projections import projections, threads_projection, threads_win, trial_cannot_pay

__all__ = ["from_history", "static_choice"]


def static_choice(options: Options, total: int | None) -> tuple[str, str]:
    """Decisions that need no measurement: ``("auto", "")`` when there are none."""
    if _role.IN_WORKER or _role.in_daemon_process():
        return "serial", "already inside a worker process: a pool never starts a pool"
    if options.backend != "auto":
        return options.backend, f"backend={options.backend!r} was asked for"
    if options.timeout is not None:
        return "process", f"timeout={options.timeout:g} s: only a worker process can be stopped"
    if total is not None and total <= 1:
        return "serial", f"{total} item{'s' * (total != 1)}: nothing to share out"
    if options.workers == 1:
        return "serial", "1 worker (workers=1 was asked for)"
    return "auto", ""


def from_history(total: int | None, history: dict[str, float], pool: Callable[[], PoolCost],
                 threads: bool = False) -> Verdict | None:
    """Skip the probe when the function's previous calls measured enough to
    decide: items heavy enough that a process pool clearly wins for this
    many, or (``threads``: threads are allowed) a kept thread trial by which
    threads clearly win. ``history``: seconds per item by the side that
    measured them (``_costs.recall``); the pool is projected from what its
    workers measured, when they did. None: probe as usual. A wrong guess
    (the items got lighter) costs a few round trips, then the chunk sizer
    adapts."""
    if total is None or total < 2:
        return None
    trial = history.get("trial")
    if threads and trial is not None and trial >= THREADS_GAIN:
        return _on_threads(total, history, trial, pool)
    # Only what workers measured: the caller's own cost says nothing of how an
    # item runs in a worker (BLAS there is capped at one thread), and the
    # probe, which also reads how many CPUs an item keeps busy, is cheap.
    per_item = history.get("process")
    if per_item is None or per_item < HEAVY_ITEM:
        return None
    cost = pool()
    if cost.workers == 1:
        return None
    # Threads are ruled out by a trial, or for items long enough that the
    # first call sent them to a pool without one (as a head start does), or
    # for long CPU-bound items when a trial cannot pay for this many.
    if threads and trial is None and per_item < NO_TRIAL_ITEM \
            and not _no_trial_pays(total, per_item, history, cost):
        return None  # threads may win and are not ruled out: the probe finds out
    serial_cost = history.get("serial", per_item)
    serial, parallel = projections(total, serial_cost, 0.0, cost, per_item)
    if serial <= CLEAR_WIN * parallel:
        return None
    return Verdict(0, lambda: (
        f"no probe: the workers of an earlier {_earlier(history)} measured "
        f"~{format_seconds(per_item)} per item; {total} items: serial ≈ "
        f"{format_seconds(serial)}, {cost.workers} workers ≈ {format_seconds(parallel)} "
        f"(pool start ~{format_seconds(cost.startup)})"), per_item)


def _on_threads(total: int, history: dict[str, float], trial: float,
                pool: Callable[[], PoolCost]) -> Verdict | None:
    """Threads, without a probe, when an earlier call's kept trial showed
    the function releases the GIL and threads win by the probe's own rule
    (``threads_win``) against a process pool projected with no transfer
    cost, in its favour. Else None: probe. (Not CLEAR_WIN, as for a pool: a
    thread pool wrongly chosen costs ~0.1 ms, not a pool's start.)"""
    serial_cost, share = history.get("serial"), history.get("share")
    # Without the CPU share (a cost cache written before it was kept) the
    # thread count is unknown: 2 threads for items that mostly wait would
    # be 16 times too few.
    if serial_cost is None or share is None or serial_cost < _threads.TRIAL_MIN_ITEM:
        return None
    cost = pool()
    if cost.workers == 1:
        return None
    count, threaded = threads_projection(total, serial_cost, trial, cost.workers, share)
    serial, parallel = projections(total, serial_cost, 0.0, cost,
                                   history.get("process", serial_cost))
    if not threads_win(threaded, serial, parallel):
        return None
    return Verdict(0, lambda: (
        f"no probe: an earlier {_earlier(history)} measured ~{format_seconds(serial_cost)} per "
        f"item here and a speedup of {trial:.2f}x on 2 threads (it releases the GIL); "
        f"{total} items: serial ≈ {format_seconds(serial)}, {count} threads ≈ "
        f"{format_seconds(threaded)}, {cost.workers} workers ≈ {format_seconds(parallel)}"),
        serial_cost, "thread", count)


def _no_trial_pays(total: int, per_item: float, history: dict[str, float],
                   cost: PoolCost) -> bool:
    """The probe's ``trial_cannot_pay`` (a trial of one item per thread, as
    for any item of LONG_ITEM or more) on what an earlier call measured."""
    share, transfer = history.get("share"), history.get("transfer")
    if share is None or transfer is None:
        return False
    return trial_cannot_pay(2, per_item, share, total, lambda: transfer, cost)


def _earlier(history: dict[str, float]) -> str:
    return "run (remembered in the cost cache)" if history.get("run") else "call"
