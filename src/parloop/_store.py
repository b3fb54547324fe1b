"""A checkpoint file: the finished results of parloop calls, in SQLite.

The file's tables (schema version 1; ``PRAGMA application_id`` marks the
file as parloop's, so a foreign SQLite file is refused, never written)::

    functions(id, module, qualname, code, args, created, written, pid)
        one row per function *as it was*: the hash of its code and of its
        extra arguments are part of the row's identity, so an edited
        function, or other arguments, get a new row and none of the old
        results
    results(rowid, function, key, ok, value)   indexed by function
        one row per finished item: ``key`` hashes the item (or the user's
        ``key(item)``); ``value`` is its pickled result (ok=1) or, when
        errors are stored, its pickled exception (ok=0)

* **Rows are appended in the order results finish**, and found by rowid: a
  call reads its function's keys once (``keys``), and the rowids of the
  ones it needs (``load``). A table keyed by the item hashes would put each
  new row at a random place, and every commit would rewrite pages all
  over the file (10^6 results of x*x took 25 s to store that way, and
  40 s to read back). A key stored twice (``reuse=False``, or an item
  twice in one call) keeps its newest row; ``write`` deletes the rows it
  replaces.

* **Only the caller writes**, a transaction per batch of rows (see
  ``_resume.Ledger``), in WAL mode with ``synchronous=NORMAL``: a
  process killed at any moment, SIGKILL included, leaves a file holding
  every committed batch. (A power cut may lose the last batches; the file
  stays whole.)
* **One function of one file runs in one process at a time.** A call
  claims its function's row with a byte-range lock on a sidecar file
  (``FILE.lock``, at the row's id). The kernel drops the lock when its
  holder dies, however it dies, so no stale claim ever needs clearing. A
  second process (or a second call in this one) gets a CheckpointError
  that names the holder. SQLite's own file locks are not used for this:
  they last a transaction, and closing any descriptor of the database
  would drop them.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

from .errors import CheckpointError

__all__ = ["FunctionRow", "Store"]

#: "plp1" in the file's header: this is a parloop checkpoint
APPLICATION_ID = 0x706C7031
SCHEMA_VERSION = 1
#: how long a write waits for another process's transaction (reads never wait in WAL mode)
BUSY_SECONDS = 30.0
#: SQLite limits the number of ``?`` in one statement (999 before 3.32)
_IN_LIMIT = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS functions (
    id INTEGER PRIMARY KEY,
    module TEXT NOT NULL,
    qualname TEXT NOT NULL,
    code TEXT NOT NULL,
    args TEXT NOT NULL,
    created REAL NOT NULL,
    written REAL,
    pid INTEGER,
    UNIQUE (module, qualname, code, args)
);
CREATE TABLE IF NOT EXISTS results (
    function INTEGER NOT NULL,
    key BLOB NOT NULL,
    ok INTEGER NOT NULL,
    value BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS results_by_function ON results (function);
"""


class FunctionRow(NamedTuple):
    """One function's results in a file, for ``python -m parloop checkpoint``."""

    id: int
    module: str
    qualname: str
    code: str
    args: str
    created: float
    written: float | None
    done: int
    errors: int
    size: int


# The claims this process holds, and one descriptor per lock file: POSIX
# record locks belong to the process, and closing *any* descriptor of the
# file drops all of them, so each lock file is opened once and kept.
_claims_lock = threading.Lock()
_claimed: set[tuple[str, int]] = set()
_lock_files: dict[str, list[int]] = {}  # path -> [fd, claims held through it]


class Store:
    """One open checkpoint file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self._lock = threading.Lock()  # the caller's thread writes; an async call's thread may too
        try:
            self.db = sqlite3.connect(self.path, timeout=BUSY_SECONDS, isolation_level=None,
                                      check_same_thread=False)
        except sqlite3.Error as exc:
            raise CheckpointError(f"cannot open the checkpoint file {self.path!r}: {exc}. "
                                  "Check that its folder exists and is writable.") from exc
        try:
            self._prepare()
        except BaseException:
            self.db.close()
            raise

    def _prepare(self) -> None:
        db = self.db
        try:
            # One statement, one snapshot: another process may be creating
            # the file's tables (and its id) at this very moment.
            tables, found, version = db.execute(
                "SELECT count(*), (SELECT application_id FROM pragma_application_id()), "
                "(SELECT user_version FROM pragma_user_version()) FROM sqlite_master").fetchone()
            empty = tables == 0
        except sqlite3.DatabaseError as exc:
            raise CheckpointError(
                f"{self.path!r} is not a parloop checkpoint ({exc}). Give checkpoint= a new "
                "file name, or delete this file if it is a damaged checkpoint.") from exc
        if not empty and found != APPLICATION_ID:
            raise CheckpointError(
                f"{self.path!r} is an SQLite file but not a parloop checkpoint; parloop will "
                "not write into it. Give checkpoint= another file name.")
        if not empty and version != SCHEMA_VERSION:
            raise CheckpointError(
                f"{self.path!r} is a parloop checkpoint of format {version}, and this parloop "
                f"reads format {SCHEMA_VERSION}. Use the parloop that wrote it, or start a new "
                "file.")
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA cache_size=-65536")  # KiB: 64 MB at most, used as needed
            if empty:
                with self.transaction():
                    db.execute(f"PRAGMA application_id={APPLICATION_ID}")
                    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            db.execute(statement)
        except sqlite3.DatabaseError as exc:
            raise CheckpointError(f"cannot use the checkpoint file {self.path!r}: {exc}") from exc

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; BEGIN IMMEDIATE takes the write lock at
        once, so two writers queue (up to BUSY_SECONDS) instead of failing."""
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self.db.close()

    # -- one function's rows -------------------------------------------------

    def function(self, module: str, qualname: str, code: str, args: str) -> int:
        """The id of this function's row, created if it is new."""
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO functions (module, qualname, code, args, created) "
                       "VALUES (?, ?, ?, ?, ?)", (module, qualname, code, args, time.time()))
            row = db.execute("SELECT id FROM functions WHERE module = ? AND qualname = ? AND "
                             "code = ? AND args = ?", (module, qualname, code, args)).fetchone()
        return int(row[0])

    def claim(self, function: int, name: str) -> None:
        """Hold ``function`` for this call, or raise CheckpointError naming
        who holds it (another call in this process, or another process)."""
        import fcntl

        path = self.path + ".lock"
        with _claims_lock:
            if (path, function) in _claimed:
                raise CheckpointError(
                    f"{name} is already running on the checkpoint {self.path!r} in this "
                    "process (another thread, or an iterator not yet finished); one call at "
                    "a time per function and file. Finish the other call first.")
            entry = _lock_files.get(path)
            if entry is None:
                try:
                    entry = _lock_files[path] = [os.open(path, os.O_RDWR | os.O_CREAT, 0o666), 0]
                except OSError as exc:
                    raise CheckpointError(f"cannot create the lock file {path!r} beside the "
                                          f"checkpoint: {exc}") from exc
            try:
                fcntl.lockf(entry[0], fcntl.LOCK_EX | fcntl.LOCK_NB, 1, function)
            except OSError:
                if entry[1] == 0:
                    os.close(entry[0])
                    del _lock_files[path]
                holder = self.db.execute("SELECT pid FROM functions WHERE id = ?",
                                         (function,)).fetchone()
                who = f"process {holder[0]}" if holder and holder[0] else "another process"
                raise CheckpointError(
                    f"{name} is running on the checkpoint {self.path!r} in {who}; one "
                    "process at a time per function and file. Wait for it to finish, or give "
                    "this run another checkpoint file.") from None
            entry[1] += 1
            _claimed.add((path, function))
        with self.transaction() as db:
            db.execute("UPDATE functions SET pid = ? WHERE id = ?", (os.getpid(), function))

    def release(self, function: int) -> None:
        import fcntl

        path = self.path + ".lock"
        with _claims_lock:
            if (path, function) not in _claimed:
                return
            _claimed.discard((path, function))
            entry = _lock_files[path]
            fcntl.lockf(entry[0], fcntl.LOCK_UN, 1, function)
            entry[1] -= 1
            if entry[1] == 0:
                os.close(entry[0])
                del _lock_files[path]

    def keys(self, function: int) -> dict[bytes, int]:
        """The rowid of every item stored for ``function``, by its key (the
        newest row, should a key have two: the index on function lists a
        function's rows in rowid order)."""
        with self._lock:
            return {key: rowid for rowid, key in self.db.execute(
                "SELECT rowid, key FROM results WHERE function = ?", (function,))}

    def load(self, rowids: Sequence[int]) -> dict[int, tuple[bool, bytes]]:
        """The stored (ok, pickled value) of each of ``rowids`` that is stored."""
        found: dict[int, tuple[bool, bytes]] = {}
        with self._lock:
            for at in range(0, len(rowids), _IN_LIMIT):
                part = rowids[at:at + _IN_LIMIT]
                marks = ",".join("?" * len(part))
                for rowid, ok, value in self.db.execute(
                        f"SELECT rowid, ok, value FROM results WHERE rowid IN ({marks})", part):
                    found[rowid] = (bool(ok), value)
        return found

    def write(self, function: int, rows: Iterable[tuple[bytes, bool, bytes]],
              replaced: Sequence[int] = ()) -> None:
        """Store ``rows`` (key, ok, pickled value), and delete the rows
        ``replaced`` (rowids), in one transaction."""
        with self.transaction() as db:
            if replaced:
                db.executemany("DELETE FROM results WHERE rowid = ?", ((r,) for r in replaced))
            db.executemany(f"INSERT INTO results (function, key, ok, value) "
                           f"VALUES ({int(function)}, ?, ?, ?)", rows)
            db.execute("UPDATE functions SET written = ? WHERE id = ?", (time.time(), function))

    # -- the whole file ------------------------------------------------------

    def summary(self) -> list[FunctionRow]:
        """Every function in the file, newest first, with its counts."""
        with self._lock:
            rows = self.db.execute(
                "SELECT f.id, f.module, f.qualname, f.code, f.args, f.created, f.written, "
                "count(r.key), coalesce(sum(1 - r.ok), 0), coalesce(sum(length(r.value)), 0) "
                "FROM functions f LEFT JOIN results r ON r.function = f.id "
                "GROUP BY f.id ORDER BY coalesce(f.written, f.created) DESC").fetchall()
        return [FunctionRow(i, m, q, c, a, cr, w, n - e, e, s)
                for i, m, q, c, a, cr, w, n, e, s in rows]

    def clear(self, module: str | None = None, qualname: str | None = None) -> int:
        """Delete the stored results of every function (or of those named);
        return how many were deleted."""
        where: str = ""
        params: tuple[str, ...] = ()
        if qualname is not None:
            where, params = " WHERE qualname = ?", (qualname,)
            if module is not None:
                where, params = " WHERE module = ? AND qualname = ?", (module, qualname)
        with self.transaction() as db:
            ids = [row[0] for row in db.execute(f"SELECT id FROM functions{where}", params)]
            # The functions' rows stay: a call running on one meanwhile keeps its id.
            return sum(db.execute("DELETE FROM results WHERE function = ?", (function,)).rowcount
                       for function in ids)
