"""Which cells run: a sparse grid over item count, per-item cost and payload.

The full cartesian product would take hours on two cores, so each cell is
chosen to show one thing: pure overhead (``x*x``), the break-even region
where a pool only just pays, CPU-heavy loops where every core should be
busy, and payloads large enough that moving them costs more than the work.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

SERIAL_BUDGET = 5.0  # seconds of serial work above which a cell is sized down


@dataclass(frozen=True)
class Cell:
    """One benchmark: ``items`` calls of about ``cost`` seconds each on items of
    ``payload`` kind and ``size`` bytes."""

    label: str
    work: str  # "square" (x*x), "spin" (the calibrated busy loop), "uneven" (1 in 16 100x longer)
    items: int
    cost: float = 0.0  # seconds per item for "spin"; x*x is ~0.1 µs
    payload: str = "int"  # "int", "bytes" or "numpy"
    size: int = 8  # bytes per item
    tiny: bool = False  # target: within 1 ms of a plain loop, cold
    cpu_heavy: bool = False  # target: within 1.10x of serial / cores
    # cold runs time the library's import too, for every runner (a one-off
    # script pays it); target: within 1.15x of the best, cold
    import_timed: bool = False
    env: tuple[tuple[str, str], ...] = ()  # set for every runner's interpreter

    @property
    def serial_estimate(self) -> float:
        if self.work == "uneven":  # 15 items in 16 of cost, 1 of 100 x cost
            return self.items * self.cost * (15 + 100) / 16
        return self.items * max(self.cost, 1e-7)

    def sized(self, budget: float = SERIAL_BUDGET) -> Cell:
        """This cell, with fewer items if its serial work would exceed ``budget``."""
        if self.serial_estimate <= budget:
            return self
        items = max(1, int(budget / max(self.cost, 1e-7)))
        return replace(self, items=items, label=f"{self.label} (sized to {items})")


def _spin(items: int, cost: float, payload: str = "int", size: int = 8,
          heavy: bool = False) -> Cell:
    what = {"int": "int", "bytes": f"{_bytes(size)} bytes", "numpy": f"{_bytes(size)} ndarray"}[payload]
    label = f"{_count(items)} × {_seconds(cost)}, {what}"
    return Cell(label, "spin", items, cost, payload, size, cpu_heavy=heavy)


def _first(items: int, cost: float) -> Cell:
    """A one-off script's first (and only) call: few heavy items, timed from
    before the import of the library to the results."""
    return Cell(f"{items} × {_seconds(cost)}, first call, import timed", "spin", items, cost,
                import_timed=True)


ONE_BLAS_THREAD = tuple((name, "1") for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                   "MKL_NUM_THREADS"))
#: the commonest CPU-heavy Python, which runs in C with the GIL released
NATIVE: list[Cell] = [
    Cell("64 × zlib.compress of 1 MB", "zlib", 64, 30e-3, "text", 10**6),
    Cell("64 × sha256 of 1 MB", "sha256", 64, 1e-3, "text", 10**6),
    Cell("64 × NumPy 300×300 a @ a.T, 1 BLAS thread", "matmul", 64, 1e-3, "matrix",
         env=ONE_BLAS_THREAD),
    Cell("64 × NumPy 300×300 a @ a.T, default BLAS threads", "matmul", 64, 1e-3, "matrix"),
    Cell("64 × sleep 10 ms (I/O-bound)", "sleep", 64, 10e-3),
]


def _count(n: int) -> str:
    exponent = len(str(n)) - 1
    return f"10^{exponent}" if n >= 1000 and n == 10**exponent else str(n)


def _seconds(seconds: float) -> str:
    if seconds >= 1e-3:
        return f"{seconds * 1e3:g} ms"
    return f"{seconds * 1e6:g} µs"


def _bytes(size: int) -> str:
    for unit, scale in (("MB", 10**6), ("KB", 10**3)):
        if size >= scale:
            return f"{size / scale:g} {unit}"
    return f"{size} B"


FULL: list[Cell] = [
    Cell("8 × x*x (tiny)", "square", 8, tiny=True),
    Cell("10^3 × x*x", "square", 1000),
    Cell("10^6 × x*x", "square", 10**6),
    _spin(1, 10e-3),
    _spin(10**6, 1e-6),
    _spin(10**5, 10e-6),
    _spin(100, 100e-6),
    _spin(10**4, 100e-6),
    _spin(30, 1e-3),
    _spin(2000, 1e-3, heavy=True),
    _spin(8, 10e-3),
    _spin(300, 10e-3, heavy=True),
    _spin(2, 100e-3, heavy=True),
    _spin(40, 100e-3, heavy=True),
    _spin(10**4, 100e-6, "bytes", 100),
    _spin(1000, 1e-3, "numpy", 10**4, heavy=True),
    _spin(1000, 10e-6, "numpy", 10**5),
    _spin(100, 10e-3, "numpy", 10**6, heavy=True),
    _spin(20, 1e-6, "numpy", 10**7),
    _spin(20, 100e-3, "numpy", 10**7, heavy=True),
    Cell("256 × 1 ms, 1 in 16 100x longer (uneven)", "uneven", 256, 1e-3, cpu_heavy=True),
    _first(2, 1.0),
    _first(4, 0.5),
    _first(8, 50e-3),
    *NATIVE,
]

QUICK: list[Cell] = [
    Cell("8 × x*x (tiny)", "square", 8, tiny=True),
    _spin(2000, 100e-6),
    _spin(300, 1e-3, heavy=True),
    _spin(20, 10e-3, "numpy", 10**6, heavy=True),
    _spin(4, 1e-6, "numpy", 10**7),
    Cell("256 × 1 ms, 1 in 16 100x longer (uneven)", "uneven", 256, 1e-3, cpu_heavy=True),
    _first(4, 0.5),
    NATIVE[1],
    NATIVE[4],
]
