"""What ``checkpoint=`` costs: the same call with and without it.

    python -m benchmarks.checkpoint [--repeats 5] [--out DIR]

In one interpreter (the pool stays warm for every variant), taking turns so
that background load falls on all of them alike, median of ``--repeats``:

- **plain**: ``@parallel_for`` at its defaults;
- **storing**: the same with ``checkpoint=`` a new file, so every result is
  keyed, pickled and written (the first run of a long job);
- **read back**: the same again on the file the storing run left, so every
  result comes from it and nothing runs (the rerun after a finished job).

Cells: 10^4 items of ~1 ms (target: storing within 1.05x of plain) and
10^6 items of x*x (reported: there the bookkeeping is the whole cost).
Writes ``results/checkpoint.md``.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import workloads

TARGET = 1.05


def _timed(call: Callable[[], list[Any]], expected: list[Any]) -> float:
    began = time.perf_counter()
    results = call()
    took = time.perf_counter() - began
    assert results == expected, "wrong results"
    return took


def measure(fn: Callable[[Any], Any], items: list[Any], repeats: int) -> dict[str, float]:
    from parloop import parallel_for

    expected = [fn(x) for x in items[:1000]]
    plain = parallel_for(fn)
    plain(items[:200])  # the pool up and the function's costs known, for every variant
    times: dict[str, list[float]] = {"plain": [], "storing": [], "read back": []}
    with tempfile.TemporaryDirectory() as folder:
        for run in range(repeats):
            db = os.path.join(folder, f"run{run}.db")
            stored = parallel_for(fn, checkpoint=db)
            for name, call in (("plain", lambda: plain(items)),
                               ("storing", lambda: stored(items)),  # noqa: B023 (called at once)
                               ("read back", lambda: stored(items))):  # noqa: B023
                took = _timed(lambda: call()[:1000], expected)  # noqa: B023
                times[name].append(took)
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.checkpoint")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    per_step, fixed = workloads.calibrate()
    millisecond = functools.partial(workloads.spin, workloads.iterations_for(1e-3, per_step, fixed))
    cells = [("10^4 × 1 ms", millisecond, list(range(10**4)), True),
             ("10^6 × x*x", workloads.square, list(range(10**6)), False)]
    lines = ["# What checkpoint= costs", "",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
             f"Python {platform.python_version()}; median of {args.repeats}, warm pool, "
             "variants taking turns.", "",
             "| cell | plain | storing (first run) | ratio | read back (rerun) | target |",
             "|---|---|---|---|---|---|"]
    for label, fn, items, targeted in cells:
        result = measure(fn, items, args.repeats)
        ratio = result["storing"] / result["plain"]
        verdict = (f"≤ {TARGET}x: {'met' if ratio <= TARGET else 'missed'}" if targeted
                   else "reported")
        line = (f"| {label} | {result['plain']:.3f} s | {result['storing']:.3f} s | "
                f"{ratio:.2f}x | {result['read back']:.3f} s | {verdict} |")
        print(line, flush=True)
        lines.append(line)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "checkpoint.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'checkpoint.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
