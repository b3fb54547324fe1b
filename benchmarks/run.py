"""The suite's driver: ``python -m benchmarks [--quick] [--only TEXT]``.

For each cell it measures the plain loop (its time serves both modes), then
parloop and each peer cold and warm, in fresh interpreters (``child.py``),
and prints the cell's ratios as soon as it has them. At the end it writes
``results/latest.md``, ``results/latest.json`` (raw numbers) and
``results/plot.png``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

from . import report
from .grid import FULL, QUICK, Cell
from .measure import Measurement, run_child
from .report import format_seconds
from .runners import PEERS
from .workloads import calibrate, iterations_for

RESULTS = Path(__file__).resolve().parent / "results"
MIN_RUN_LIMIT = 5.0  # seconds any single run may take at least ...
LOOP_FACTOR = 4.0  # ... or this many plain loops, whichever is longer


def machine() -> dict[str, Any]:
    import parloop

    model = "unknown"
    try:
        with open("/proc/cpuinfo") as info:
            model = next((line.split(":", 1)[1].strip() for line in info
                          if line.startswith("model name")), model)
    except OSError:
        pass
    versions = {}
    for package in ("parloop", "joblib", "mpire", "numpy", "matplotlib"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "missing"
    return {"cpu": model, "cores": parloop.cpu_count(), "os_cpu_count": os.cpu_count(),
            "python": platform.python_version(), "platform": platform.platform(),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "load_start": os.getloadavg(), "versions": versions}


IMPORT = "from parloop import parallel_for"  # what a script does first


def import_cost(runs: int = 7) -> dict[str, float]:
    """``IMPORT`` in fresh interpreters (after one that writes the bytecode
    caches), ``runs`` times each way: with ``-X importtime``, the median self
    time of parloop's own modules and wrapt's share; without, the whole
    import's wall time."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    timed = f"import time; t = time.perf_counter(); {IMPORT}; print(time.perf_counter() - t)"
    subprocess.run([sys.executable, "-c", IMPORT], env=env, check=True)
    own, wrapt, whole = [], [], []
    for _ in range(runs):
        done = subprocess.run([sys.executable, "-X", "importtime", "-c", IMPORT],
                              capture_output=True, text=True, env=env, check=True)
        mine = wrapped = 0
        for line in done.stderr.splitlines():
            fields = line.removeprefix("import time:").split("|")
            if len(fields) != 3 or not fields[0].strip().isdigit():
                continue
            name = fields[2].strip()
            if name.startswith("parloop"):
                mine += int(fields[0])
            elif name == "wrapt":
                wrapped = int(fields[1])
        own.append(mine / 1e6)
        wrapt.append(wrapped / 1e6)
        done = subprocess.run([sys.executable, "-c", timed], capture_output=True, text=True,
                              env=env, check=True)
        whole.append(float(done.stdout))
    return {"own": statistics.median(own), "whole": statistics.median(whole),
            "wrapt": statistics.median(wrapt), "runs": runs}


def run_cell(cell: Cell, repeats: int, per_step: float, fixed: float,
             cores: int) -> dict[str, Any]:
    """Cold runs go round-robin (loop, parloop, peers; again), so that load
    from elsewhere on the machine, which drifts, falls on every runner alike.
    Each warm measurement is one interpreter timing ``repeats`` runs."""
    iterations = iterations_for(cell.cost, per_step, fixed) if cell.work != "square" else 0
    spec = {"work": cell.work, "iterations": iterations, "payload": cell.payload,
            "size": cell.size, "items": cell.items, "warmup": min(cell.items, 4 * cores),
            "import_timed": cell.import_timed, "env": dict(cell.env)}
    names = ("parloop", *PEERS)
    loop = Measurement()
    cold = {name: Measurement() for name in names}
    limit = MIN_RUN_LIMIT
    for _ in range(repeats):
        run_child({**spec, "runner": "loop", "mode": "cold"}, 10 * MIN_RUN_LIMIT, loop)
        if loop.times:
            limit = max(MIN_RUN_LIMIT, LOOP_FACTOR * loop.times[0])
        for name in names:
            if cold[name].timeout is None and cold[name].error is None:  # one failure says enough
                run_child({**spec, "runner": name, "mode": "cold"}, limit, cold[name])
    warm = {}
    for name in names:
        warm[name] = Measurement()
        run_child({**spec, "runner": name, "mode": "warm", "repeats": repeats}, limit, warm[name])
    return {"cell": asdict(cell), "iterations": iterations, "cores": cores, "run_limit": limit,
            "loop": loop.as_json(), "cold": {name: m.as_json() for name, m in cold.items()},
            "warm": {name: m.as_json() for name, m in warm.items()}}


def write_markdown(path: Path, info: dict[str, Any], cells: list[dict[str, Any]],
                   command: str, seconds: float) -> None:
    load = " / ".join(f"{a:.2f}" for a in info["load_start"])
    load_end = " / ".join(f"{a:.2f}" for a in info["load_end"])
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    lines = [
        "# parloop benchmark results", "",
        f"`{command}` on {info['date']}, took {seconds / 60:.1f} min.", "",
        f"- CPU: {info['cpu']}; cores (parloop.cpu_count()): {info['cores']} "
        f"(os.cpu_count(): {info['os_cpu_count']})",
        f"- Python {info['python']} on {info['platform']}; {versions}",
        f"- Load average (1/5/15 min) at start: {load}; at end: {load_end}. "
        "Other work on the machine inflates times and their spread.",
        f"- Busy loop: {info['per_step'] * 1e9:.1f} ns per step, {info['fixed'] * 1e9:.0f} ns "
        "per call. Medians of several runs; cold runs each in a fresh interpreter.",
        f"- `{IMPORT}` (median of {info['import']['runs']} fresh interpreters, bytecode "
        f"cached): {format_seconds(info['import']['whole'])} in all; parloop's own modules "
        f"{format_seconds(info['import']['own'])} of self time (`-X importtime`), wrapt "
        f"{format_seconds(info['import']['wrapt'])} with what it imports.", "",
        "Each number is that runner's median time divided by the best median in the same "
        "row (1.00 = fastest). `>N`: stopped at the per-run time limit, so at least N. "
        "`loop per item` is the plain loop's measured time per item (the label's cost is "
        "nominal). `serial/cores` is the ideal (plain loop / cores) on the same scale, for CPU-heavy "
        "cells. `parloop chose` is `last_plan.backend` of parloop's default "
        "`backend=\"auto\"`. PPE = `concurrent.futures.ProcessPoolExecutor`.", "",
        "## Cold: a pool started, used once, shut down (parloop: first call in a fresh "
        "interpreter)", "", *report.ratio_table(cells, "cold"), "",
        "## Warm: a pool already running (parloop: a later call on the pool the first one "
        "left open)", "", *report.ratio_table(cells, "warm"), "",
        "## parloop's speed targets", "", *report.verdict_table(report.verdicts(cells)), "",
        "## What parloop's planner said (first timed run)", "",
    ]
    for cell in cells:
        for mode in ("cold", "warm"):
            infos = cell[mode]["parloop"]["infos"]
            if infos:
                lines.append(f"- {cell['cell']['label']}, {mode}: {infos[0].get('plan', '')}")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few small cells")
    parser.add_argument("--only", metavar="TEXT", help="only cells whose label contains TEXT")
    parser.add_argument("--repeats", type=int, help="runs per measurement (default 3)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the results")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    cells = [cell.sized() for cell in (QUICK if args.quick else FULL)]
    if args.only:
        cells = [cell for cell in cells if args.only in cell.label]
    repeats = args.repeats or 3
    info = machine()
    info["per_step"], info["fixed"] = calibrate()
    info["import"] = import_cost()
    print(f"{IMPORT}: {info['import']['whole'] * 1e3:.1f} ms, parloop's own modules "
          f"{info['import']['own'] * 1e3:.1f} ms, wrapt {info['import']['wrapt'] * 1e3:.1f} ms",
          flush=True)
    print(f"{info['cpu']}, {info['cores']} cores, Python {info['python']}, "
          f"load {info['load_start'][0]:.2f}; {len(cells)} cells, {repeats} runs each", flush=True)
    results: list[dict[str, Any]] = []
    for number, cell in enumerate(cells, 1):
        cell_started = time.perf_counter()
        results.append(run_cell(cell, repeats, info["per_step"], info["fixed"], info["cores"]))
        rows = report.ratio_table(results[-1:], "cold")[2:] + report.ratio_table(results[-1:], "warm")[2:]
        print(f"[{number}/{len(cells)}, {time.perf_counter() - cell_started:.0f} s] cold, warm:",
              *rows, sep="\n  ", flush=True)
    info["load_end"] = os.getloadavg()
    seconds = time.perf_counter() - started
    command = "python -m benchmarks" + (" --quick" if args.quick else "") \
        + (f" --only {args.only!r}" if args.only else "") \
        + (f" --repeats {args.repeats}" if args.repeats else "")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(
        {"machine": info, "command": command, "seconds": seconds, "cells": results}, indent=1))
    write_markdown(args.out / "latest.md", info, results, command, seconds)
    report.plot(results, str(args.out / "plot.png"))
    print()
    for mode in ("cold", "warm"):
        print(f"{mode}:", *report.ratio_table(results, mode), sep="\n")
    print("targets:", *report.verdict_table(report.verdicts(results)), sep="\n")
    print(f"\nwrote {args.out}/latest.md, latest.json, plot.png in {seconds / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
