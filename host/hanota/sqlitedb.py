"""The SQLite plumbing the hub's database (`hub/db.py`) and the DCC's store (`dcc/store.py`)
share: how a database file is opened (WAL mode, a busy timeout, foreign keys), how its stored
schema version is checked, how a new one is created, and close / `with`.

Each caller keeps its own error class and words: `fail(message, reason)` makes the error to
raise, and `what` names the database in messages ("hub database", "DCC database").
"""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Callable, TypeVar

T = TypeVar("T")
Fail = Callable[[str, "str | None"], BaseException]


def open_sqlite(path: Path, what: str, fail: Fail, setup: Callable[[sqlite3.Connection], T],
                reason: str | None = None) -> T:
    """Open (creating its folder) the SQLite database at path for several processes at once
    (WAL, synchronous NORMAL, busy timeout 10 s, foreign keys on, autocommit: callers BEGIN
    their own transactions), then `setup(conn)` (the caller's migration); its result is
    returned. A file that cannot be opened, or that setup finds unusable
    (`sqlite3.DatabaseError`), raises `fail(message, reason)`."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), timeout=10.0, isolation_level=None,
                               check_same_thread=False)
    except (OSError, sqlite3.Error) as e:
        raise fail("cannot open %s %s: %s" % (what, path, e), reason) from None
    conn.row_factory = sqlite3.Row
    try:
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("PRAGMA foreign_keys = ON")
        if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        return setup(conn)
    except sqlite3.DatabaseError as e:
        conn.close()
        raise fail("%s is not a usable %s: %s" % (path, what, e), reason) from None


def has_schema(conn: sqlite3.Connection, path: str, what: str, known: int, fail: Fail) -> bool:
    """True if the database already holds a schema (its `meta` row 'schema') of version
    `known`; False if it has none yet (a new file). Another version raises
    `fail("<path> has <what> schema N; this hanota knows M", "db-schema")`."""
    row = None
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    except sqlite3.OperationalError:
        pass
    if row is None:
        return False
    if int(row[0]) != known:
        raise fail("%s has %s schema %s; this hanota knows %d" % (path, what, row[0], known),
                   "db-schema")
    return True


def create_schema(conn: sqlite3.Connection, script: str) -> None:
    """Run a schema script in one BEGIN IMMEDIATE transaction (rolled back if it fails)."""
    try:
        conn.executescript("BEGIN IMMEDIATE;" + script + "COMMIT;")
    except sqlite3.Error:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


class Closing:
    """close() and `with` for a class that holds its connection as `self.conn`."""

    conn: Any

    def close(self) -> None:
        self.conn.close()

    def __enter__(self: T) -> T:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
