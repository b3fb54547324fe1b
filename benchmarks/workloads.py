"""The per-item functions the benchmarks run, and the items they run on.

Everything a worker process calls lives here, at module level, so that every
runner can ship it by reference: ``multiprocessing`` with spawn, loky and
forkserver re-import this module in their workers by name.
"""

from __future__ import annotations

import functools
import hashlib
import statistics
import time
import zlib
from collections.abc import Callable
from typing import Any


def square(x: int) -> int:
    """The tiny case: far cheaper than any round trip to another process."""
    return x * x


def spin(iterations: int, item: Any) -> int:
    """Busy the CPU for ``iterations`` steps of a Python loop (CPU-bound, not
    sleep, so that the number of cores matters), then answer something small.
    ``item`` is only read for its size, the way a real function would touch it."""
    total = 0
    for step in range(iterations):
        total += step
    return total + (len(item) if isinstance(item, (bytes, bytearray)) or hasattr(item, "shape") else 0)


def spin_uneven(iterations: int, item: int) -> int:
    """``spin``, but every 16th item (by its value) runs 100 times longer:
    work whose cost a chunk size cannot predict."""
    return spin(iterations * (100 if item % 16 == 0 else 1), item)


def compressed_size(data: bytes) -> int:
    """zlib at its default level: C code that releases the GIL on big buffers."""
    return len(zlib.compress(data))


def digest(data: bytes) -> str:
    """sha256: releases the GIL on buffers over 2 KiB."""
    return hashlib.sha256(data).hexdigest()


def gram(matrix: Any) -> float:
    """One BLAS matrix product (NumPy releases the GIL inside BLAS)."""
    return float((matrix @ matrix.T)[0, 0])


def nap(item: Any) -> Any:
    """I/O-bound work, as the CPU sees it: 10 ms of waiting."""
    time.sleep(0.01)
    return item


NATIVE = {"zlib": compressed_size, "sha256": digest, "matmul": gram, "sleep": nap}


def per_item_function(work: str, iterations: int) -> Callable[[Any], Any]:
    """The callable a cell maps over its items: ``square``, one of
    ``NATIVE``, or a bound ``spin`` or ``spin_uneven``. A
    ``functools.partial`` of a module-level function pickles by reference."""
    if work == "square":
        return square
    if work in NATIVE:
        return NATIVE[work]
    if work == "uneven":
        return functools.partial(spin_uneven, iterations)
    return functools.partial(spin, iterations)


def make_items(payload: str, count: int, size: int) -> list[Any]:
    """``count`` distinct items. Distinct objects matter: a chunk holding the
    same array twice would be pickled once, flattering chunked runners."""
    if payload == "int":
        return list(range(count))
    if payload == "bytes":
        return [index.to_bytes(8, "little") * max(1, size // 8) for index in range(count)]
    if payload == "text":  # compressible, like logs or CSV: digits, commas, spaces
        return [str(list(range(index * 1000, index * 1000 + size // 6))).encode()[:size]
                for index in range(count)]
    if payload == "matrix":
        import numpy

        return [numpy.random.default_rng(index).random((300, 300)) for index in range(count)]
    if payload == "numpy":
        import numpy  # only cells that need it import it: it starts BLAS threads

        return [numpy.full(max(1, size // 8), float(index)) for index in range(count)]
    raise ValueError(f"unknown payload kind {payload!r}")


def _best_time(call: Callable[[], object], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return best


def _median_time(call: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def calibrate() -> tuple[float, float]:
    """(seconds per ``spin`` step, fixed seconds per call), measured here."""
    # The median of many short rounds: the speed a loop gets on this machine
    # as it is now (busy or not), which is what the cells will get too.
    steps = 20_000
    per_step = _median_time(lambda: spin(steps, None), 41) / steps
    bound = functools.partial(spin, 0)
    fixed = _best_time(lambda: bound(None), 200)
    return per_step, fixed


def iterations_for(seconds: float, per_step: float, fixed: float) -> int:
    """Steps of ``spin`` that make one call last about ``seconds``."""
    return max(0, round((seconds - fixed) / per_step))
