"""Per-worker output files: a connection opened once per worker, committed
and counted at the end of the call.

Each worker writes the words it counts into its own SQLite file, named by
``worker_id()``, so no two processes ever write to one file. ``setup=``
opens the worker's file once; ``teardown=`` commits it and reports how many
rows it wrote; the caller gets one report per worker in
``last_plan.teardown_results`` and merges the shards.

Run it:  python examples/shards.py [FOLDER]
         (default: a temporary folder, removed afterwards)
It prints "shards: N rows in K files" and the five commonest words.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import sys
import tempfile
from collections import Counter

from parloop import parallel_for, worker_id

TEXT = ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "while", "the",
        "cat", "sleeps", "and", "the", "dog", "dreams", "of", "the", "fox", "and", "the", "cat"]


def open_shard(folder: str) -> sqlite3.Connection:
    """The per-worker state: this worker's own file."""
    db = sqlite3.connect(os.path.join(folder, f"shard-{worker_id()}.db"))
    db.execute("CREATE TABLE IF NOT EXISTS words (line INTEGER, word TEXT)")
    return db


def close_shard(db: sqlite3.Connection) -> tuple[int, int]:
    """The teardown: commit, and say which shard wrote how many rows."""
    db.commit()
    (rows,) = db.execute("SELECT COUNT(*) FROM words").fetchone()
    db.close()
    return worker_id(), rows


def count_line(db: sqlite3.Connection, line: int) -> int:
    """A stand-in for parsing one line of a big file."""
    words = TEXT[line % 7:] + TEXT[: line % 5]
    db.executemany("INSERT INTO words VALUES (?, ?)", [(line, word) for word in words])
    return len(words)


def main() -> None:
    folder = tempfile.TemporaryDirectory() if len(sys.argv) < 2 else None
    path = folder.name if folder is not None else sys.argv[1]
    count = parallel_for(count_line, setup=functools.partial(open_shard, path),
                         teardown=close_shard, backend="process", chunksize=50)
    written = sum(count(range(2000)))
    plan = count.last_plan
    assert plan is not None
    reports = plan.teardown_results
    assert sum(rows for _, rows in reports) == written  # every row reached a committed shard
    totals: Counter[str] = Counter()
    for index, _ in reports:
        with contextlib.closing(sqlite3.connect(os.path.join(path, f"shard-{index}.db"))) as db:
            totals.update(dict(db.execute("SELECT word, COUNT(*) FROM words GROUP BY word")))
    print(f"shards: {written} rows in {len(reports)} files")
    print("commonest:", ", ".join(f"{word} {n}" for word, n in totals.most_common(5)))
    if folder is not None:
        folder.cleanup()


if __name__ == "__main__":
    main()
