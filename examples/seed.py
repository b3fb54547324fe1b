"""The classic first ``multiprocessing.Pool`` program, written with parloop.

The usual beginner's version::

    from multiprocessing import Pool, cpu_count

    def work(x):
        ...

    if __name__ == "__main__":
        print(cpu_count())
        with Pool() as pool:
            print(pool.map(work, range(10)))          # in input order
            for r in pool.imap_unordered(work, range(10)):
                print(r)                              # as each one finishes

With parloop the function is decorated once and called with all its items;
``work.iter(items)`` is ``imap``, and inside a ``with parallel_for(ordered=False)``
block it is ``imap_unordered``. Items sleep for different times, so the
unordered results come back in a different order.

Run it:  python examples/seed.py [--start-method fork|forkserver|spawn]
(or set PARLOOP_START_METHOD).
"""

from __future__ import annotations

import argparse
import os
import time

from parloop import cpu_count, parallel_for


@parallel_for(backend="process", chunksize=1)
def work(x: int) -> int:
    # Every fourth item is slow: the others overtake it when order is free.
    time.sleep(0.25 if x % 4 == 0 else 0.02)
    return x * x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start-method", choices=["fork", "forkserver", "spawn"],
                        default=None)  # None: parloop reads $PARLOOP_START_METHOD
    args = parser.parse_args()

    print(f"cpu_count() = {cpu_count()} usable CPUs (os.cpu_count() = {os.cpu_count()})")

    # The block's options apply to every decorated call inside it.
    with parallel_for(workers=max(2, cpu_count()), start_method=args.start_method):
        ordered = work(range(10))  # Pool.map
        print(f"ordered   (like Pool.map):            {ordered}")
        print(f"plan: {work.last_plan}")

    with parallel_for(workers=max(2, cpu_count()), start_method=args.start_method,
                      ordered=False):
        unordered = []
        for result in work.iter(range(10)):  # Pool.imap_unordered
            unordered.append(result)
        print(f"unordered (like Pool.imap_unordered): {unordered}")

    assert ordered == [x * x for x in range(10)]
    assert sorted(unordered) == ordered
    print(f"same results, {'a different' if unordered != ordered else 'the same'} order")


if __name__ == "__main__":
    main()
