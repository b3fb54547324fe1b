"""A one-off script's only call, run for the first time and run again.

    python -m benchmarks.first_call [--repeats 5]

The three "first call, import timed" cells of the suite (2 × 1 s, 4 × 0.5 s,
8 × 50 ms of a busy loop), each run in a fresh interpreter with the
library's import inside the timed region, for:

- parloop, first run: an empty cost cache (what the suite measures);
- parloop, a later run of the same script: the cost cache an earlier run of
  it left (``parloop._memory``), so it knows the items' cost from the start;
- ``multiprocessing.Pool``, ``ProcessPoolExecutor`` and mpire, cold.

Runs go round-robin, so that drifting load falls on every runner alike;
medians of ``--repeats``. Writes ``results/first_call.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
from pathlib import Path

from .measure import Measurement, run_child
from .workloads import calibrate, iterations_for

CELLS = [(2, 1.0), (4, 0.5), (8, 0.05)]
PEERS = ("Pool", "PPE", "mpire")
RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    per_step, fixed = calibrate()
    lines = [f"# First call, import timed: first run and later run (median of {args.repeats})",
             "", f"Machine: {platform.processor() or platform.machine()}, "
             f"{len(os.sched_getaffinity(0))} usable CPUs, Python {platform.python_version()}; "
             f"load average {os.getloadavg()[0]:.2f} at the start.", "",
             "| cell | parloop, first run | parloop, later run | Pool | PPE | mpire | best peer "
             "| first / best | later / best |", "|---|---|---|---|---|---|---|---|---|"]
    for items, cost in CELLS:
        spec = {"work": "spin", "iterations": iterations_for(cost, per_step, fixed),
                "payload": "int", "size": 8, "items": items, "warmup": items,
                "import_timed": True, "mode": "cold"}
        runs = {name: Measurement() for name in ("first", "later", *PEERS)}
        with tempfile.TemporaryDirectory(prefix="parloop-costs-") as cache:
            remembered = {**spec, "runner": "parloop", "env": {"PARLOOP_COST_CACHE": cache}}
            run_child(remembered, 60.0, Measurement())  # the earlier run: untimed
            for _ in range(args.repeats):
                run_child({**spec, "runner": "parloop"}, 60.0, runs["first"])
                run_child(remembered, 60.0, runs["later"])
                for peer in PEERS:
                    run_child({**spec, "runner": peer}, 60.0, runs[peer])
        medians = {name: statistics.median(m.times) if m.times else float("nan")
                   for name, m in runs.items()}
        best = min(medians[peer] for peer in PEERS)
        label = f"{items} × {cost:g} s"
        row = " | ".join(f"{medians[name]:.3f} s" for name in ("first", "later", *PEERS))
        lines.append(f"| {label} | {row} | {best:.3f} s | {medians['first'] / best:.2f} | "
                     f"{medians['later'] / best:.2f} |")
        print(lines[-1], flush=True)
        later = runs["later"].infos[-1].get("plan", "") if runs["later"].infos else ""
        print(f"    later run's plan: {later}", flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "first_call.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
