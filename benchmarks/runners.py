"""One class per contender, each at its library's default settings.

A runner answers two questions, timed by the caller (``child.py``):

* ``cold(fn, items)``: everything a one-off script pays, from a pool that
  does not exist yet to one shut down again (parloop: its first call in a
  fresh interpreter, which starts whatever pool it decides on);
* ``again(fn, items)`` after ``open(fn, warmup)``: one more map over a pool
  that is already running and has run ``fn`` before.

Each library is imported when its runner is made, before any timing, so a
child interpreter holds only the one it measures (importing numpy, say, starts threads and changes what a
fork-based pool may safely do).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# What a run reports besides its time (parloop: its plan), or a callable that
# returns it, called once the clock has stopped.
Info = dict[str, Any] | Callable[[], dict[str, Any]]


class Runner:
    """The interface; the plain loop is its simplest case."""

    name = "loop"

    def cold(self, fn: Callable[[Any], Any], items: list[Any]) -> tuple[list[Any], Info]:
        return [fn(item) for item in items], {}

    def open(self, fn: Callable[[Any], Any], warmup: list[Any]) -> None:
        self.cold(fn, warmup)

    def again(self, fn: Callable[[Any], Any], items: list[Any]) -> tuple[list[Any], Info]:
        return self.cold(fn, items)

    def close(self) -> None:
        pass


class ParloopRunner(Runner):
    """``parallel_for(fn)(items)`` with every option at its default (backend="auto").
    Warm: a second call outside any block, which leases the idle pool the
    earlier call left behind."""

    name = "parloop"

    def __init__(self) -> None:
        import parloop._calls  # noqa: F401  (the engine: imported on a first call, ~20 ms)
        from parloop import parallel_for

        # The engine is part of the import, which a cold cell times only when
        # it says "import timed" (the tiny cell's target excludes the import).
        self._parallel_for = parallel_for
        self._decorated: Any = None

    @staticmethod
    def _plan_info(decorated: Any) -> dict[str, Any]:
        plan = decorated.last_plan
        return {"backend": plan.backend, "plan": str(plan)} if plan is not None else {}

    def cold(self, fn: Callable[[Any], Any], items: list[Any]) -> tuple[list[Any], Info]:
        decorated = self._parallel_for(fn)
        results = decorated(items)
        return results, lambda: self._plan_info(decorated)  # read after the clock stops

    def open(self, fn: Callable[[Any], Any], warmup: list[Any]) -> None:
        # The auto planner may (rightly) keep a short warm-up serial, which
        # would leave no pool open; the peers' pools are open, so open ours too.
        self._parallel_for(fn, backend="process")(warmup)
        self._decorated = self._parallel_for(fn)
        self._decorated(warmup)

    def again(self, fn: Callable[[Any], Any], items: list[Any]) -> tuple[list[Any], Info]:
        results = self._decorated(items)
        return results, lambda: self._plan_info(self._decorated)


class PoolRunner(Runner):
    """``multiprocessing.Pool().map``."""

    name = "Pool"

    def __init__(self) -> None:
        import multiprocessing

        self._new_pool = multiprocessing.Pool
        self._pool: Any = None

    def cold(self, fn: Callable[[Any], Any], items: list[Any]) -> tuple[list[Any], Info]:
        with self._new_pool() as pool:
            return pool.map(fn, items), {}

    def open(self, fn: Callable[[Any], Any], warmup: list[Any]) -> None:
        self._pool = self._new_pool()
        self._pool.map(fn, warmup)

    def again(self, fn: Callable[[Any], Any], items: list[Any]) -> tuple[list[Any], Info]:
        return self._pool.map(fn, items), {}

    def close(self) -> None:
        self._pool.terminate()
        self._pool.join()


class ExecutorRunner(Runner):
    """``concurrent.futures.ProcessPoolExecutor().map`` (chunksize 1, its default)."""

    name = "PPE"
    kind = "ProcessPoolExecutor"

    def __init__(self) -> None:
        import concurrent.futures

        self._new_executor = getattr(concurrent.futures, self.kind)
        self._executor: Any = None

    def cold(self, fn: Callable[[Any], Any], items: list[Any]) -> tuple[list[Any], Info]:
        with self._new_executor() as executor:
            return list(executor.map(fn, items)), {}

    def open(self, fn: Callable[[Any], Any], warmup: list[Any]) -> None:
        self._executor = self._new_executor()
        list(self._executor.map(fn, warmup))

    def again(self, fn: Callable[[Any], Any], items: list[Any]) -> tuple[list[Any], Info]:
        return list(self._executor.map(fn, items)), {}

    def close(self) -> None:
        self._executor.shutdown()


class ThreadsRunner(ExecutorRunner):
    """``concurrent.futures.ThreadPoolExecutor().map`` (its default
    ``min(32, cpus + 4)`` threads, chunksize 1): the peer that wins when the
    function releases the GIL."""

    name = "threads"
    kind = "ThreadPoolExecutor"


class JoblibRunner(Runner):
    """``Parallel(n_jobs=-1)(delayed(fn)(x) for x in items)``. Warm: the same
    call again, which reuses the loky executor the first one left running."""

    name = "joblib"

    def __init__(self) -> None:
        from joblib import Parallel, delayed

        self._parallel, self._delayed = Parallel, delayed

    def cold(self, fn: Callable[[Any], Any], items: list[Any]) -> tuple[list[Any], Info]:
        task = self._delayed(fn)
        return list(self._parallel(n_jobs=-1)(task(item) for item in items)), {}


class MpireRunner(Runner):
    """``WorkerPool().map``. Warm: one ``WorkerPool(keep_alive=True)`` reused;
    with mpire's default ``keep_alive=False`` its workers would restart on
    every map, so there would be no warm pool to measure."""

    name = "mpire"

    def __init__(self) -> None:
        from mpire import WorkerPool

        self._new_pool = WorkerPool
        self._pool: Any = None

    def cold(self, fn: Callable[[Any], Any], items: list[Any]) -> tuple[list[Any], Info]:
        with self._new_pool() as pool:
            return list(pool.map(fn, items)), {}

    def open(self, fn: Callable[[Any], Any], warmup: list[Any]) -> None:
        self._pool = self._new_pool(keep_alive=True)
        self._pool.map(fn, warmup)

    def again(self, fn: Callable[[Any], Any], items: list[Any]) -> tuple[list[Any], Info]:
        return list(self._pool.map(fn, items)), {}

    def close(self) -> None:
        self._pool.terminate()


RUNNERS: dict[str, type[Runner]] = {
    runner.name: runner
    for runner in (Runner, ParloopRunner, PoolRunner, ExecutorRunner, ThreadsRunner,
                   JoblibRunner, MpireRunner)
}
PEERS = ("Pool", "PPE", "threads", "joblib", "mpire")
