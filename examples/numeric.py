"""A CPU-bound loop in pure Python: count the primes below a limit.

The range is cut into blocks and each block is counted by trial division, a
stand-in for any per-item computation that keeps one core busy. The script
times a plain loop against the same function decorated with
``@parallel_for``, with a progress bar (``pip install 'parloop[progress]'``
for tqdm; without it parloop prints a plain counter).

Run it:  python examples/numeric.py [--limit N] [--block N]
                                    [--start-method fork|forkserver|spawn]
(PARLOOP_START_METHOD works too).
"""

from __future__ import annotations

import argparse
import time

from parloop import cpu_count, parallel_for


def is_prime(n: int) -> bool:
    if n < 4:
        return n >= 2
    if n % 2 == 0:
        return False
    divisor = 3
    while divisor * divisor <= n:
        if n % divisor == 0:
            return False
        divisor += 2
    return True


def count_primes(block: tuple[int, int]) -> int:
    """How many primes lie in ``range(start, stop)``."""
    start, stop = block
    return sum(1 for n in range(start, stop) if is_prime(n))


# The same function, decorated: it now takes all the blocks at once.
parallel_count_primes = parallel_for(count_primes, progress=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=400_000, help="count primes below this")
    parser.add_argument("--block", type=int, default=5_000, help="numbers per item")
    parser.add_argument("--start-method", choices=["fork", "forkserver", "spawn"],
                        default=None)  # None: parloop reads $PARLOOP_START_METHOD
    args = parser.parse_args()
    blocks = [(start, min(start + args.block, args.limit))
              for start in range(0, args.limit, args.block)]
    print(f"counting primes below {args.limit:,} in {len(blocks)} blocks "
          f"on {cpu_count()} usable CPUs")

    started = time.perf_counter()
    serial = sum(count_primes(block) for block in blocks)
    serial_seconds = time.perf_counter() - started
    print(f"plain loop: {serial:,} primes in {serial_seconds:.2f} s")

    started = time.perf_counter()
    with parallel_for(start_method=args.start_method):
        parallel = sum(parallel_count_primes(blocks))
    parallel_seconds = time.perf_counter() - started
    print(f"parloop:    {parallel:,} primes in {parallel_seconds:.2f} s "
          f"({serial_seconds / parallel_seconds:.1f}x the plain loop's speed)")

    assert parallel == serial, (parallel, serial)
    print("same answer")
    print(f"plan: {parallel_count_primes.last_plan}")


if __name__ == "__main__":
    main()
