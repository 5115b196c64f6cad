"""Where the DCC database's two dialects differ: SQLite (the embedded default) and PostgreSQL
(`--db postgresql://...`, several `hanota dcc serve` workers sharing one database).

`DccStore` (store.py) is written once, in SQLite's SQL: `?` placeholders, `INSERT OR IGNORE`,
`cursor.lastrowid`, rows read by index or by name. On PostgreSQL `PgConnection` stands in for
the sqlite3 connection and translates each statement once (cached), so every query in
store.py, http.py and wan.py runs unchanged on both. The differences, all here:

- placeholders `?` -> `%s` (a literal `%` doubled);
- `INSERT OR IGNORE` -> `INSERT ... ON CONFLICT DO NOTHING`;
- `lastrowid` -> `RETURNING` the table's key (`ID_COLUMNS`);
- the column named `user` (a reserved word in PostgreSQL) is quoted;
- SQLite's two-argument scalar `max(a, b)` -> `GREATEST(a, b)`;
- the schema: `INTEGER PRIMARY KEY [AUTOINCREMENT]` -> an identity column, REAL -> DOUBLE
  PRECISION (Unix times need more than a float4), BLOB -> BYTEA, INTEGER -> BIGINT, and
  SQLite's triggers -> PL/pgSQL trigger functions with the same rules and messages
  (`pg_schema`);
- write transactions: SQLite's `BEGIN IMMEDIATE` lets one writer in at a time; on PostgreSQL
  `BEGIN` then a transaction-scoped advisory lock does the same, so a read-then-write
  (a User's counter, an outcome that must be the first) is as atomic under several workers
  as it is under several processes on one SQLite file. Claims of work (`claim_sql`) add
  `FOR UPDATE SKIP LOCKED` there.
"""
from __future__ import annotations

import re
from typing import Any, Iterator, Sequence

# tables whose INSERT callers read `lastrowid` of, and that key's column
ID_COLUMNS = {"requests": "id", "responses": "seq", "wan_out": "id", "cpl": "id"}
WRITE_LOCK = 0x68616E6F  # "hano": the advisory lock every write transaction holds

_USER = re.compile(r'(?<![."\w])user(?![\w"])')
_INSERT = re.compile(r"^\s*INSERT\s+(OR\s+IGNORE\s+)?INTO\s+(\w+)", re.I)
_TRIGGER = re.compile(r"CREATE TRIGGER.*?END;", re.S)
_MAX2 = re.compile(r"\bmax\(([^(),]+),([^(),]+)\)", re.I)  # SQLite's scalar max(a, b)


def is_postgres(target: Any) -> bool:
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


def redact(uri: str) -> str:
    """A PostgreSQL URI without its password (for messages)."""
    return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", uri)


def translate(sql: str) -> tuple[str, str | None]:
    """SQLite-flavoured SQL as PostgreSQL runs it; and the key column to return, if the
    statement is an INSERT whose lastrowid a caller may read."""
    out = sql.replace("%", "%%").replace("?", "%s")
    out = _USER.sub('"user"', out)
    out = _MAX2.sub(r"GREATEST(\1,\2)", out)
    if re.match(r"\s*CREATE\s+TABLE", out, re.I):
        out = _pg_types(out)
    m = _INSERT.match(out)
    returning = None
    if m:
        if m.group(1):
            out = out[:m.start(1)] + out[m.end(1):]
            out = out.rstrip().rstrip(";") + " ON CONFLICT DO NOTHING"
        table = m.group(2).lower()
        if table in ID_COLUMNS and "RETURNING" not in out.upper():
            returning = ID_COLUMNS[table]
            out = out.rstrip().rstrip(";") + " RETURNING " + returning
    return out, returning


class Row(tuple):
    """A row read by index or by column name, and `dict(row)`-able, as sqlite3.Row is."""

    _names: Sequence[str] = ()

    def __new__(cls, values: Sequence[Any], names: Sequence[str]) -> "Row":
        r = super().__new__(cls, values)
        r._names = names
        return r

    def __getitem__(self, key: Any) -> Any:  # type: ignore[override]
        if isinstance(key, str):
            try:
                return tuple.__getitem__(self, list(self._names).index(key))
            except ValueError:
                raise IndexError("no column %r" % key) from None
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


def _row_factory(cursor: Any) -> Any:
    names = [d.name for d in cursor.description] if cursor.description else []
    return lambda values: Row(values, names)


class PgCursor:
    """The part of sqlite3.Cursor the DCC uses."""

    def __init__(self, cur: Any, returning: str | None):
        self._cur = cur
        self.rowcount = cur.rowcount
        self.lastrowid = None
        self._rows: list | None = None
        if returning is not None:
            self._rows = cur.fetchall()
            self.lastrowid = self._rows[0][0] if self._rows else None

    def fetchone(self) -> Row | None:
        if self._rows is not None:
            return self._rows.pop(0) if self._rows else None
        return self._cur.fetchone() if self._cur.description else None

    def fetchall(self) -> list[Row]:
        if self._rows is not None:
            rows, self._rows = self._rows, []
            return rows
        return self._cur.fetchall() if self._cur.description else []

    def __iter__(self) -> Iterator[Row]:
        return iter(self.fetchall())


class PgConnection:
    """A psycopg connection (autocommit; transactions are explicit BEGIN/COMMIT, as the
    store's sqlite3 connection in isolation_level=None) that takes SQLite-flavoured SQL."""

    def __init__(self, uri: str):
        import psycopg

        self.uri = uri
        self.psycopg = psycopg
        self.conn = psycopg.connect(uri, autocommit=True, row_factory=_row_factory,
                                    connect_timeout=10)
        self._cache: dict[str, tuple[str, str | None]] = {}

    @property
    def in_transaction(self) -> bool:
        return self.conn.info.transaction_status != self.psycopg.pq.TransactionStatus.IDLE

    @property
    def broken(self) -> bool:
        return self.conn.closed or self.conn.broken

    def execute(self, sql: str, args: Sequence[Any] | dict = ()) -> PgCursor:
        t = self._cache.get(sql)
        if t is None:
            t = self._cache[sql] = translate(sql)
        cur = self.conn.execute(t[0], tuple(args) if not isinstance(args, dict) else args,
                                prepare=False)
        return PgCursor(cur, t[1])

    def execute_raw(self, sql: str, args: Sequence[Any] | None = None) -> Any:
        """PostgreSQL's own SQL, untranslated (no args: a '%' is literal)."""
        return self.conn.execute(sql, args)

    def close(self) -> None:
        self.conn.close()


def skip_locked(postgres: bool, table: str) -> str:
    """The clause that claims rows without waiting for another worker's claim (PostgreSQL);
    SQLite has one writer at a time, so nothing."""
    return " FOR UPDATE OF %s SKIP LOCKED" % table if postgres else ""


def pg_schema(sqlite_schema: str) -> str:
    """The DCC schema for PostgreSQL, derived from the SQLite one (one source of truth for
    the columns and CHECK constraints) plus the triggers as PL/pgSQL."""
    s = _pg_types(_TRIGGER.sub("", sqlite_schema))
    s = _USER.sub('"user"', s)
    return s + _PG_TRIGGERS


def _pg_types(s: str) -> str:
    """SQLite column types as PostgreSQL's (REAL is float4 there: too coarse for Unix
    times)."""
    s = re.sub(r"\bINTEGER PRIMARY KEY( AUTOINCREMENT)?",
               "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY", s)
    s = re.sub(r"\bREAL\b", "DOUBLE PRECISION", s)
    s = re.sub(r"\bBLOB\b", "BYTEA", s)
    return re.sub(r"\bINTEGER\b", "BIGINT", s)


_PG_TRIGGERS = """
CREATE OR REPLACE FUNCTION hanota_counters_rise() RETURNS trigger AS $$
BEGIN
    IF NEW.last_counter <= OLD.last_counter THEN
        RAISE EXCEPTION 'a User''s RequestID counter only rises' USING ERRCODE = '23514';
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE OR REPLACE TRIGGER counters_rise BEFORE UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION hanota_counters_rise();
CREATE OR REPLACE FUNCTION hanota_outcome_is_final() RETURNS trigger AS $$
BEGIN
    IF OLD.outcome IS NOT NULL THEN
        RAISE EXCEPTION 'request already has its outcome' USING ERRCODE = '23514';
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE OR REPLACE TRIGGER request_outcome_is_final BEFORE UPDATE ON requests
    FOR EACH ROW EXECUTE FUNCTION hanota_outcome_is_final();
CREATE OR REPLACE FUNCTION hanota_never_deleted() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION '% are never deleted', TG_TABLE_NAME USING ERRCODE = '23514';
END $$ LANGUAGE plpgsql;
CREATE OR REPLACE TRIGGER requests_are_kept BEFORE DELETE ON requests
    FOR EACH ROW EXECUTE FUNCTION hanota_never_deleted();
CREATE OR REPLACE TRIGGER responses_are_kept BEFORE DELETE ON responses
    FOR EACH ROW EXECUTE FUNCTION hanota_never_deleted();
CREATE OR REPLACE FUNCTION hanota_ack_is_kept() RETURNS trigger AS $$
BEGIN
    IF OLD.acked IS NOT NULL THEN
        RETURN NULL;  -- as SQLite's RAISE(IGNORE): the first acknowledgement stays
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE OR REPLACE TRIGGER wan_ack_is_kept BEFORE UPDATE OF acked ON wan_out
    FOR EACH ROW EXECUTE FUNCTION hanota_ack_is_kept();
"""
