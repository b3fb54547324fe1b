"""What the ways of running a call would cost: the formulas the planner
(``_planner``) compares, and the constants they rest on."""

from __future__ import annotations

import math
from collections.abc import Callable

from . import _threads
from ._costs import PoolCost

__all__ = ["LATENCY", "LONG_ITEM", "MARGIN", "projections", "threads_projection", "threads_win",
           "trial_cannot_pay"]

LATENCY = 0.002  # fixed cost of a parallel run: wake-ups, first round trip, shutdown
MARGIN = 1.2  # a pool must be projected this much faster: estimates err toward the pool
LONG_ITEM = 0.02  # seconds: CPU-bound items this long are tried on threads if that can pay


def projections(remaining: int, cost: float, transfer: float, pool: PoolCost,
                worker_cost: float | None = None) -> tuple[float, float]:
    """(serial, parallel) seconds for ``remaining`` items of ``cost`` each
    (``worker_cost`` each in a worker, if different). With ``pool.overlap``
    the caller runs ~startup/cost items while the pool starts."""
    serial = remaining * cost
    if pool.overlap and cost > 0:
        remaining -= min(remaining, int(pool.startup / cost))
        if remaining == 0:
            return serial, pool.startup + LATENCY  # all done before the pool is up
    rounds = math.ceil(remaining / pool.workers)  # 3 items on 2 workers take 2 rounds
    busy = max(rounds * ((worker_cost or cost) + transfer / 2), remaining * transfer / 2)
    return serial, pool.startup + LATENCY + busy


def threads_projection(remaining: int, cost: float, speedup: float, cpus: int,
                       share: float) -> tuple[int, float]:
    """(threads, seconds) for ``remaining`` items of ``cost`` on a thread
    pool, from a trial's ``speedup`` on two threads and an item's CPU share."""
    threads = _threads.thread_count(cpus, share, remaining)
    gain = _threads.projected_speedup(speedup, threads)
    busy = remaining * (cost + _threads.ITEM_OVERHEAD) / gain
    return threads, _threads.THREAD_START * threads + LATENCY + busy


def threads_win(threaded: float, serial: float, parallel: float) -> bool:
    """Threads must beat serial by MARGIN; against a process pool, whose
    projection errs toward it (MARGIN), being within that of it wins: no
    pickling, no start, no copies."""
    return threaded * MARGIN < serial and threaded <= parallel * MARGIN


def trial_cannot_pay(size: int, cost: float, share: float, remaining: int,
                     transfer: Callable[[], float], pool: PoolCost) -> bool:
    """A thread trial of ``size`` items is not worth it: threads would beat
    a process pool only by its start and the moving of items (``transfer()``,
    read only then), less than the half of the trial's items' time that
    code holding the GIL would lose. Asked for CPU-bound items of LONG_ITEM
    or more (8 x 50 ms lost an item to a trial), and for a trial that would
    take over a quarter of the items left (6 x 16 ms ran serially after a
    trial of 2). Items that mostly wait are always tried."""
    if share < _threads.WAITING or (cost < LONG_ITEM and 4 * size <= remaining):
        return False
    lost, spared = size * cost / 2, pool.startup + LATENCY  # pickling 1 MB to measure: ~3 ms
    return lost > spared and lost > spared + remaining * transfer() / pool.workers
