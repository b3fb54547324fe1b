"""A resumable parameter sweep: state built once per worker, and a checkpoint.

Each point of a grid runs a small simulation that needs a table of primes,
built once per worker by ``setup=`` (not once per point). Every finished
result goes to a checkpoint file, so a run that is interrupted (Ctrl-C, a
crash, a laptop lid) loses nothing: run it again with the same file and only
the points not yet stored are computed.

Run it:  python examples/sweep.py [CHECKPOINT]
         (default: a new file in a temporary directory, removed afterwards)
Run it twice with the same CHECKPOINT and the second run reads every point
back. It prints "sweep: N points, C computed, R read back from ..." and the
best point.
"""

from __future__ import annotations

import itertools
import os
import sys
import tempfile

from parloop import parallel_for, worker_id


def prime_table(limit: int = 200_000) -> list[int]:
    """The per-worker state: every prime below ``limit`` (a sieve, ~50 ms)."""
    sieve = bytearray([1]) * limit
    sieve[:2] = b"\0\0"
    for n in range(2, int(limit ** 0.5) + 1):
        if sieve[n]:
            sieve[n * n::n] = bytearray(len(sieve[n * n::n]))
    return [n for n, is_prime in enumerate(sieve) if is_prime]


def simulate(primes: list[int], point: tuple[int, int]) -> tuple[int, int, float, int]:
    """A stand-in for real work: a walk over the primes, shaped by the point."""
    step, offset = point
    total = 0.0
    for i in range(offset, len(primes), step):
        total += 1.0 / primes[i]
    return step, offset, round(total, 6), worker_id()


def main() -> None:
    folder = None
    if len(sys.argv) > 1:
        path = sys.argv[1]
    else:
        folder = tempfile.TemporaryDirectory()
        path = os.path.join(folder.name, "sweep.db")
    grid = list(itertools.product(range(1, 9), range(0, 40, 5)))  # 64 points
    sweep = parallel_for(simulate, setup=prime_table, checkpoint=path)
    results = sweep(grid)
    plan = sweep.last_plan
    assert plan is not None
    print(f"sweep: {len(grid)} points, {plan.items} computed, {plan.restored} read back from "
          f"{path}")
    step, offset, score, _ = max(results, key=lambda r: r[2])
    print(f"best: step={step} offset={offset} score={score}")
    if folder is not None:
        folder.cleanup()


if __name__ == "__main__":
    main()
