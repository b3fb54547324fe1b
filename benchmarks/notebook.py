"""parloop in a Jupyter kernel, as a notebook user meets it.

    python -m benchmarks.notebook [--repeats 3] [--items 40] [--item-ms 50]

Starts a real kernel (nbclient), defines a CPU-bound function in a cell, and
times in that kernel, taking turns:

- the plain loop: ``[work(n) for n in items]``
- parloop: the same function under the plain ``@parallel_for``, first call
  (the pool starts inside the timing) and a later call (the pool is warm)
- ``multiprocessing.Pool().map`` on the same cell function, which fails in a
  notebook under spawn or forkserver (the workers cannot import the cell),
  so it is timed under fork, the only way it runs there

Prints the median of ``--repeats`` kernels for each, and the speed-ups.
"""

from __future__ import annotations

import argparse
import json
import statistics

CELL = """
import json, time
from multiprocessing import get_context
from parloop import parallel_for

def work(n):
    total = 0
    for i in range(n):
        total += i * i % 7
    return total

def calibrate(seconds):
    n = 20_000
    while True:
        began = time.perf_counter(); work(n); took = time.perf_counter() - began
        if took > 0.02:
            return int(n * seconds / took)
        n *= 2

n = calibrate({item_seconds})
items = [n] * {items}
times = {{}}
began = time.perf_counter(); expected = [work(x) for x in items]
times["loop"] = time.perf_counter() - began
fast = parallel_for(work)
began = time.perf_counter(); got = fast(items)
times["parloop first call"] = time.perf_counter() - began
assert got == expected
began = time.perf_counter(); got = fast(items)
times["parloop later call"] = time.perf_counter() - began
plan = str(fast.last_plan)
began = time.perf_counter()
with get_context("fork").Pool() as pool:
    got = pool.map(work, items)
times["Pool (fork)"] = time.perf_counter() - began
print(json.dumps({{"times": times, "plan": plan}}))
"""


def _one_kernel(items: int, item_seconds: float) -> dict[str, object]:
    import nbclient
    import nbformat

    book = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(CELL.format(items=items, item_seconds=item_seconds))
    book.cells.append(cell)
    client = nbclient.NotebookClient(book, kernel_name="python3", timeout=600)
    client.execute()
    text = "".join(o.get("text", "") for o in cell.outputs if o.get("name") == "stdout")
    return json.loads(text.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--items", type=int, default=40)
    parser.add_argument("--item-ms", type=float, default=50.0)
    args = parser.parse_args()
    runs = [_one_kernel(args.items, args.item_ms / 1000) for _ in range(args.repeats)]
    names = list(runs[0]["times"])  # type: ignore[call-overload]
    medians = {name: statistics.median(run["times"][name] for run in runs)  # type: ignore[index]
               for name in names}
    print(f"{args.items} items of ~{args.item_ms:g} ms, median of {args.repeats} kernels")
    for name in names:
        speedup = medians["loop"] / medians[name]
        print(f"  {name:20s} {medians[name]:7.3f} s   {speedup:4.2f}x the loop's speed")
    print(f"  parloop's plan, later call: {runs[-1]['plan']}")


if __name__ == "__main__":
    main()
