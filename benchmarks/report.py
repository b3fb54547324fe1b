"""Turning measurements into the ratio tables, the target verdicts and the plot.

Every number shown is a ratio: a runner's median time over the best median
time in the same cell and mode (1.00 is the winner). The best absolute time
is shown once per row so the ratios can be turned back into seconds.
"""

from __future__ import annotations

from typing import Any

from parloop._plan import format_seconds

from .runners import PEERS

RUNNERS = ("loop", "parloop", *PEERS)
BEST_TARGET = 1.10  # parloop within this factor of the best runner
FIRST_TARGET = 1.15  # ... or this one, cold, on cells that time the import
CORES_TARGET = 1.10  # ... and of serial / cores on CPU-heavy cells
TINY_TARGET = 1e-3  # ... and within this many seconds of a plain loop on tiny cells, cold


def medians(cell: dict[str, Any], mode: str) -> dict[str, float | None]:
    """Each runner's median in ``mode``; the plain loop's one measurement serves both."""
    found: dict[str, float | None] = {"loop": cell["loop"]["median"]}
    for name in RUNNERS[1:]:
        found[name] = cell[mode][name]["median"]
    return found


def best_of(cell: dict[str, Any], mode: str) -> tuple[str, float] | None:
    timed = [(t, name) for name, t in medians(cell, mode).items() if t is not None]
    if not timed:
        return None
    seconds, name = min(timed)
    return name, seconds


def ideal(cell: dict[str, Any]) -> float | None:
    """serial / cores, for CPU-heavy cells."""
    loop = cell["loop"]["median"]
    if not cell["cell"]["cpu_heavy"] or loop is None:
        return None
    return float(loop) / cell["cores"]


def _ratio_text(cell: dict[str, Any], mode: str, name: str, best: float) -> str:
    entry = cell["loop"] if name == "loop" else cell[mode][name]
    if entry["error"] is not None:
        return "error"
    if entry["timeout"] is not None:
        return ">" + ratio_text(entry["timeout"] / best)
    return ratio_text(entry["median"] / best)


def ratio_text(ratio: float) -> str:
    if ratio < 10:
        return f"{ratio:.2f}"
    if ratio < 100:
        return f"{ratio:.1f}"
    return f"{ratio:,.0f}"


def chosen(cell: dict[str, Any], mode: str) -> str:
    backends = sorted({info.get("backend", "?") for info in cell[mode]["parloop"]["infos"]})
    return "/".join(backends) or "-"


def ratio_table(cells: list[dict[str, Any]], mode: str) -> list[str]:
    head = ["cell", "loop per item", "best time", *RUNNERS, "serial/cores", "parloop chose"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cell in cells:
        found = best_of(cell, mode)
        if found is None:
            continue
        winner, best = found
        loop = cell["loop"]["median"]
        per_item = format_seconds(loop / cell["cell"]["items"]) if loop is not None else "?"
        row = [cell["cell"]["label"], per_item, f"{format_seconds(best)} ({winner})"]
        row += [_ratio_text(cell, mode, name, best) for name in RUNNERS]
        target = ideal(cell)
        row.append(f"{target / best:.2f}" if target is not None else "")
        row.append(chosen(cell, mode))
        lines.append("| " + " | ".join(row) + " |")
    return lines


def verdicts(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (cell, mode, target): what was asked, what was measured, met or not."""
    found: list[dict[str, Any]] = []
    for cell in cells:
        for mode in ("cold", "warm"):
            mine = medians(cell, mode)["parloop"]
            best = best_of(cell, mode)
            label = cell["cell"]["label"]
            if mine is None or best is None:
                found.append({"cell": label, "mode": mode, "target": "ran", "measured": "no time",
                              "met": False})
                continue
            ratio = mine / best[1]
            allowed = FIRST_TARGET if cell["cell"].get("import_timed") and mode == "cold" \
                else BEST_TARGET
            found.append({"cell": label, "mode": mode, "target": f"≤ {allowed:.2f}x best",
                          "measured": f"{ratio_text(ratio)}x {best[0]}", "met": ratio <= allowed})
            target = ideal(cell)
            if target is not None:
                ratio = mine / target
                found.append({"cell": label, "mode": mode,
                              "target": f"≤ {CORES_TARGET:.2f}x serial/cores",
                              "measured": f"{ratio_text(ratio)}x ({format_seconds(target)})",
                              "met": ratio <= CORES_TARGET})
            loop = cell["loop"]["median"]
            if cell["cell"]["tiny"] and mode == "cold" and loop is not None:
                extra = mine - loop
                found.append({"cell": label, "mode": mode, "target": "≤ loop + 1 ms",
                              "measured": f"loop + {format_seconds(extra)}",
                              "met": extra <= TINY_TARGET})
    return found


def verdict_table(found: list[dict[str, Any]]) -> list[str]:
    lines = ["| cell | mode | target | parloop | met |", "|---|---|---|---|---|"]
    for entry in found:
        mark = "yes" if entry["met"] else "**MISSED**"
        lines.append(f"| {entry['cell']} | {entry['mode']} | {entry['target']} | "
                     f"{entry['measured']} | {mark} |")
    return lines


def plot(cells: list[dict[str, Any]], path: str) -> None:
    """Each runner's ratio to the best, per cell, cold above and warm below (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    figure, axes = plt.subplots(2, 1, figsize=(max(10, 0.75 * len(cells) + 4), 10), sharex=True)
    offsets = {name: (i - (len(RUNNERS) - 1) / 2) * 0.1 for i, name in enumerate(RUNNERS)}
    markers = dict(zip(RUNNERS, "osD^vXP", strict=True))
    for axis, mode in zip(axes, ("cold", "warm"), strict=True):
        for name in RUNNERS:
            xs, ys, capped_x, capped_y = [], [], [], []
            for index, cell in enumerate(cells):
                found = best_of(cell, mode)
                entry = cell["loop"] if name == "loop" else cell[mode][name]
                if found is None:
                    continue
                if entry["median"] is not None:
                    xs.append(index + offsets[name])
                    ys.append(entry["median"] / found[1])
                elif entry["timeout"] is not None:
                    capped_x.append(index + offsets[name])
                    capped_y.append(entry["timeout"] / found[1])
            line = axis.scatter(xs, ys, marker=markers[name], label=name,
                                s=60 if name == "parloop" else 30, zorder=3 if name == "parloop" else 2)
            if capped_x:
                axis.scatter(capped_x, capped_y, marker=markers[name], facecolors="none",
                             edgecolors=line.get_facecolor(), s=30)
        ideals = [(i, ideal(c) / best_of(c, mode)[1]) for i, c in enumerate(cells)  # type: ignore[index]
                  if ideal(c) is not None and best_of(c, mode) is not None]
        if ideals:
            axis.scatter([i for i, _ in ideals], [r for _, r in ideals], marker="_", s=300,
                         color="black", label="serial / cores")
        axis.axhline(BEST_TARGET, color="grey", linestyle="--", linewidth=1)
        axis.set_yscale("log")
        axis.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axis.set_ylabel(f"{mode}: time / best time")
        axis.grid(True, which="major", axis="y", alpha=0.3)
    axes[0].legend(ncol=len(RUNNERS) + 1, fontsize="small", loc="upper left")
    axes[0].set_title("Each runner's time / the best runner's time in the same cell\n"
                      "(1 = fastest; hollow = stopped at the time limit, so at least that; "
                      "dashed = 1.10)")
    axes[1].set_xticks(range(len(cells)))
    axes[1].set_xticklabels([c["cell"]["label"] for c in cells], rotation=60, ha="right",
                            fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
