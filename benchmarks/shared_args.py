"""A big read-only argument under fork: a 2-million-item list passed to
every item, ``f(items, table)``.

    python -m benchmarks.shared_args [--repeats 5]

Each run starts its pool (the argument exists before the pool, as in a
script) and maps 8 items that each read the list; median of ``--repeats``:

- parloop: ``parallel_for(lookup, backend="process", start_method="fork")(items, table)``;
- ``multiprocessing.Pool`` (fork) with ``initializer=`` storing the list in a global;
- ``multiprocessing.Pool`` (fork) ``map(functools.partial(lookup, table=table))``,
  which pickles the list with every task;
- mpire ``WorkerPool(shared_objects=table)`` (fork, copy-on-write), when installed.

Writes ``results/shared_args.md``.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SIZE = 2_000_000
ITEMS = list(range(8))
_table: list[int] = []


def lookup(i: int, table: list[int]) -> int:
    return table[i * 1000] + len(table)


def _store(table: list[int]) -> None:
    global _table
    _table = table


def _lookup_global(i: int) -> int:
    return lookup(i, _table)


def _lookup_shared(table: list[int], i: int) -> int:
    return lookup(i, table)


def run_parloop(table: list[int]) -> list[int]:
    from parloop import _scope, parallel_for

    try:
        return parallel_for(lookup, backend="process", workers=2, start_method="fork")(ITEMS, table)
    finally:
        _scope.warm_pools.close_all()  # the next run starts its pool too


def run_pool_initializer(table: list[int]) -> list[int]:
    with multiprocessing.get_context("fork").Pool(2, _store, (table,)) as pool:
        return pool.map(_lookup_global, ITEMS)


def run_pool_partial(table: list[int]) -> list[int]:
    with multiprocessing.get_context("fork").Pool(2) as pool:
        return pool.map(functools.partial(lookup, table=table), ITEMS)


def run_mpire(table: list[int]) -> list[int]:
    from mpire import WorkerPool

    with WorkerPool(n_jobs=2, shared_objects=table, start_method="fork") as pool:
        return pool.map(_lookup_shared, ITEMS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.shared_args")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    table = list(range(SIZE))
    expected = [lookup(i, table) for i in ITEMS]
    runners: dict[str, Callable[[list[int]], list[int]]] = {
        "parloop (fork)": run_parloop, "Pool, initializer": run_pool_initializer,
        "Pool, partial": run_pool_partial}
    try:
        import mpire  # noqa: F401
        runners["mpire, shared_objects"] = run_mpire
    except ImportError:
        pass
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(args.repeats):
        for name, run in runners.items():  # taking turns
            began = time.perf_counter()
            assert run(table) == expected
            times[name].append(time.perf_counter() - began)
    lines: list[Any] = [
        "# A 2-million-item list argument under fork", "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}; 8 items, 2 workers, each run starts its pool; median of "
        f"{args.repeats}.", "", "| runner | seconds |", "|---|---|"]
    for name, values in times.items():
        lines.append(f"| {name} | {statistics.median(values):.3f} |")
    print("\n".join(lines))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "shared_args.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
