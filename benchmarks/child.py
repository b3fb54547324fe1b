"""One runner on one cell, in a fresh interpreter: ``python -m benchmarks.child SPEC``.

``SPEC`` is a JSON object (see ``run.py``). The child builds the items, then
writes one JSON line per event to stdout, so the parent can time out a
single slow run without losing the ones before it::

    {"event": "ready"}                       items built, runner imported
    {"event": "run", "seconds": ..., "info": {...}}   once per timed run
    {"event": "done"}

Mode ``cold`` times one run (with ``import_timed``, from before the
runner's library is imported); mode ``warm`` opens the runner's pool, warms
it on a few items, then times ``repeats`` runs on it.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from .runners import RUNNERS
from .workloads import make_items, per_item_function


def _say(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def _check(results: list[Any], expected_first: Any, count: int) -> None:
    # Outside the timed region: a runner that returned the wrong thing is a bug, not a result.
    if len(results) != count or (count and results[0] != expected_first):
        raise AssertionError(f"wrong results: {len(results)} of {count}, first {results[:1]!r}")


def main(spec: dict[str, Any]) -> None:
    fn = per_item_function(spec["work"], spec["iterations"])
    items = make_items(spec["payload"], spec["items"], spec["size"])
    expected_first = fn(items[0]) if items else None
    clock = time.perf_counter
    if spec["mode"] == "cold":
        timed = spec.get("import_timed", False)
        runner = None if timed else RUNNERS[spec["runner"]]()
        _say("ready")
        started = clock()
        if runner is None:
            runner = RUNNERS[spec["runner"]]()  # its __init__ imports the library
        results, info = runner.cold(fn, items)
        seconds = clock() - started
        _check(results, expected_first, len(items))
        _say("run", seconds=seconds, info=info() if callable(info) else info)
    else:
        runner = RUNNERS[spec["runner"]]()
        runner.open(fn, items[: spec["warmup"]])
        _say("ready")
        for _ in range(spec["repeats"]):
            started = clock()
            results, info = runner.again(fn, items)
            seconds = clock() - started
            _check(results, expected_first, len(items))
            del results
            _say("run", seconds=seconds, info=info() if callable(info) else info)
        runner.close()
    _say("done")


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
