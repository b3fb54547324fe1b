"""One decorated function, three engines: parloop's process pool, Dask, Ray.

The function estimates pi by Monte Carlo, one seed per item. Only the
``backend=`` option changes between the runs, and every engine returns the
same numbers, in input order. An engine that is not installed is skipped
with the command that installs it.

With no address, parloop starts a local Dask cluster (``workers`` processes,
one thread each) or a local Ray, keeps it for the ``with`` block and shuts it
down when the block ends. To use a real cluster, start one and pass its
address::

    dask scheduler                        # prints tcp://10.0.0.5:8786
    dask worker tcp://10.0.0.5:8786       # on every machine that should work
    python examples/cluster.py --dask-address tcp://10.0.0.5:8786

    ray start --head                      # then, on the other machines:
    ray start --address 10.0.0.5:6379
    python examples/cluster.py --ray-address 10.0.0.5:6379

In your own code that is ``parallel_for(backend="dask", address=...)``, or
``client=`` for a ``distributed.Client`` you already hold; a Client or a Ray
that is already running is used without asking. parloop must be installed
on the cluster's workers.

Run it:  python examples/cluster.py [--items N] [--workers N]
                                    [--dask-address ADDRESS] [--ray-address ADDRESS]
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

from parloop import BackendUnavailableError, parallel_for


@parallel_for(chunksize=2)
def estimate_pi(seed: int, samples: int = 20_000) -> float:
    rng = random.Random(seed)
    inside = sum(1 for _ in range(samples) if rng.random() ** 2 + rng.random() ** 2 <= 1.0)
    return 4.0 * inside / samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=24, help="seeds to run (default 24)")
    parser.add_argument("--workers", type=int, default=2, help="local workers (default 2)")
    parser.add_argument("--dask-address", help="a running Dask scheduler, e.g. tcp://host:8786")
    parser.add_argument("--ray-address", help="a running Ray cluster, e.g. host:6379")
    args = parser.parse_args()

    addresses = {"dask": args.dask_address, "ray": args.ray_address}
    results: dict[str, list[float]] = {}
    for backend in ("process", "dask", "ray"):
        options: dict[str, Any] = {"backend": backend, "workers": args.workers}
        if addresses.get(backend):
            options["address"] = addresses[backend]
        started = time.perf_counter()
        try:
            with parallel_for(**options):  # the cluster lives as long as this block
                estimates = estimate_pi(range(args.items))
        except BackendUnavailableError as exc:
            print(f"{backend:<8} skipped: {exc}")
            continue
        seconds = time.perf_counter() - started
        results[backend] = estimates
        mean = sum(estimates) / len(estimates)
        print(f"{backend:<8} pi ≈ {mean:.4f} from {len(estimates)} seeds in {seconds:.2f} s "
              "(start-up included)")
        print(f"plan: {estimate_pi.last_plan}")

    first = next(iter(results.values()))
    assert all(values == first for values in results.values())
    print(f"same estimates from {', '.join(results)}")


if __name__ == "__main__":
    main()
