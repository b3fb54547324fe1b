"""parloop on Dask and Ray against each engine's own API, on the same cluster.

    python -m benchmarks.cluster [--workers 2] [--repeats 3] [--small-items 2000]
                                 [--engines dask ray]

Run from the repository root. Each engine is started once (a LocalCluster of
``--workers`` processes with one thread each; a local Ray with that many
CPUs), warmed, and then used by both contenders, taking turns:

- raw Dask: ``client.gather(client.map(burn, items, pure=False))``
- raw Ray:  ``ray.get([burn_remote.remote(x) for x in items])``
- parloop:  ``parallel_for(burn, backend="dask" | "ray")(items)``

on two workloads of calibrated CPU-bound work (``workloads.spin``):

- large: 64 items of ~50 ms. One task per item suits the raw APIs; parloop's
  target is at most 1.10x their time.
- small: many items of ~50 µs. One task per item costs the raw APIs far more
  than the work; parloop batches items into chunks and should be faster.

Prints the median of ``--repeats`` runs and the ratio parloop / raw.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable
from typing import Any

from parloop import parallel_for

from .workloads import calibrate, iterations_for, spin


def burn(iterations: int) -> int:
    """One item: ``iterations`` steps of a Python loop."""
    return spin(iterations, None)


def _seconds(run: Callable[[list[int]], object], items: list[int]) -> float:
    started = time.perf_counter()
    run(items)
    return time.perf_counter() - started


def _contenders(engine: str, workers: int) -> tuple[Callable[[list[int]], object], Any] | None:
    """The raw-API runner for ``engine``, and a handle to shut it down; None if missing."""
    if engine == "dask":
        try:
            import distributed
        except ImportError:
            return None
        cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1,
                                           processes=True, dashboard_address=":0",
                                           silence_logs=logging.ERROR)
        client = distributed.Client(cluster)  # the default client: parloop uses it too

        def raw_dask(items: list[int]) -> object:
            return client.gather(client.map(burn, items, pure=False))

        return raw_dask, (client, cluster)
    try:
        import ray
    except ImportError:
        return None
    ray.init(num_cpus=workers, include_dashboard=False, logging_level=logging.ERROR)
    burn_remote = ray.remote(burn)

    def raw_ray(items: list[int]) -> object:
        return ray.get([burn_remote.remote(x) for x in items])

    return raw_ray, ray


def _shut_down(engine: str, handle: Any) -> None:
    if engine == "dask":
        client, cluster = handle
        client.close()
        cluster.close()
    else:
        handle.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--engines", nargs="+", choices=["dask", "ray"], default=["dask", "ray"])
    # Raw Dask pays 1-10 ms per task (more on a busy machine): 20,000 one-item
    # tasks would take minutes, so the default stays small.
    parser.add_argument("--small-items", type=int, default=2_000)
    args = parser.parse_args()

    per_step, fixed = calibrate()
    workloads = {
        "large (64 x 50 ms)": [iterations_for(0.05, per_step, fixed)] * 64,
        f"small ({args.small_items} x 50 µs)":
            [iterations_for(50e-6, per_step, fixed)] * args.small_items,
    }
    rows: list[tuple[str, str, float, float]] = []
    for engine in args.engines:
        started = time.perf_counter()
        found = _contenders(engine, args.workers)
        if found is None:
            print(f"{engine}: not installed, skipped (pip install 'parloop[{engine}]')")
            continue
        raw, handle = found
        print(f"{engine}: started in {time.perf_counter() - started:.2f} s")
        ours = parallel_for(burn, backend=engine, workers=args.workers)
        try:
            with parallel_for(backend=engine, workers=args.workers):  # one warm backend
                raw([1] * 8)
                ours([1] * 8)
                for label, items in workloads.items():
                    # Interleaved, so that background load falls on both alike.
                    raw_times, our_times = [], []
                    for _ in range(args.repeats):
                        raw_times.append(_seconds(raw, items))
                        our_times.append(_seconds(ours, items))
                    rows.append((engine, label, statistics.median(raw_times),
                                 statistics.median(our_times)))
                    print(f"  {label}: raw {rows[-1][2]:.2f} s, parloop {rows[-1][3]:.2f} s")
        finally:
            _shut_down(engine, handle)

    print()
    print("| engine | workload | raw API | parloop | parloop / raw |")
    print("|---|---|---:|---:|---:|")
    for engine, label, raw_seconds, our_seconds in rows:
        print(f"| {engine} | {label} | {raw_seconds:.2f} s | {our_seconds:.2f} s | "
              f"{our_seconds / raw_seconds:.2f}x |")


if __name__ == "__main__":
    main()
