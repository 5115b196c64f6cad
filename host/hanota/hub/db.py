"""The hub's SQLite database: schema, connection and the few writes every module shares.

The database is the single source of truth for the registry, the service requests and
their history. `hanota serve` and the CLI commands (`request`, `registry`, `status`,
`report`) open it at the same time: WAL mode, short transactions, a busy timeout.

Rules the schema itself enforces (so that no code path can break them):

- a request ends in exactly one outcome: `state = 'done'` exactly when `outcome` is set,
  the outcome belongs to `OUTCOMES`, a trigger refuses any change to a request that has
  its outcome, and requests are never deleted;
- a device has at most one pending request of each kind (a unique partial index);
- one current hub identity (a unique partial index over the hubs not retired).

Every state change also appends a row to `events` (time, device, request, kind, detail as
JSON), from which `status`, `report` and the HTML timelines are drawn.
"""
from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from hanfw import link as hlink
from hanfw import roles as hroles

from .. import sqlitedb
from ..errors import HanotaError

SCHEMA_VERSION = 1
ROLES = hroles.ROLES  # the device's role table
KINDS = ("update", "activate", "read_version")
STATES = ("queued", "notifying", "downloading", "activating", "running", "done")
IN_SLOT = ("notifying", "downloading")  # update requests that hold a transfer slot

# Final outcomes of a request, with a short description for reports.
OUTCOMES = {
    "activated": "new version running and confirmed",
    "rolled_back": "the device activated the image, then reverted to its previous one",
    "rejected_by_device": "the device refused the image (its Upgrade End status)",
    "hash_mismatch": "the image the device holds does not have the Manufacturer Image Hash",
    "no_image_held": "the device holds no image to activate",
    "activation_failed": "the device could not activate the image it holds",
    "hw_version_mismatch": "the image's hardware version range excludes the device",
    "image_mismatch": "the image is for another manufacturer, image type or device",
    "transfer_failed": "the image could not be delivered after every retry",
    "device_unreachable": "the device did not answer the command after every retry",
    "superseded": "a newer request for the same device replaced it",
    "not_authorized": "the requester is not a Responsible Supplier of the device",
    "ota_unsupported": "the device was installed before OTA support",
    "ota_unavailable_after_tcso": "an Alt HAN device cannot rejoin after a Trust Centre Swap-Out",
    "distributed": "SR 11.1: the image is held by the device, awaiting SR 11.3 activation",
    "version_read": "SR 11.2: the running firmware version was read",
    "read_failed": "SR 11.2: the device could not report its firmware version",
    "cancelled": "SR 11.3: a future-dated activation was cancelled before its time",
    "not_cancelled": "SR 11.3: the cancellation found no future-dated activation to end",
}
SUCCESS_OUTCOMES = ("activated", "distributed", "version_read")

DEFAULT_PRIORITY = {"hcalcs": 1, "ppmid": 2, "althan": 2}


class HubError(HanotaError):
    """A hub operation failed (database, image store, hub runtime): exit code 2."""

    reason = "hub"


class HubUsageError(HubError):
    """The request itself is malformed or names something that does not exist: exit code 1."""

    reason = "usage"


def default_db_path() -> Path:
    """$HANOTA_HOME/hub.db (HANOTA_HOME defaults to ~/.hanota)."""
    return Path(os.environ.get("HANOTA_HOME", Path.home() / ".hanota")) / "hub.db"


def eui_text(value: str | bytes) -> str:
    """The canonical text form of an EUI-64 (most significant byte first, colon separated).

    Bytes are taken in wire order (least significant first, as `hanfw.link` carries them).
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        if len(value) != 8:
            raise HubUsageError("an EUI-64 is 8 bytes, not %d" % len(value))
        return hlink.eui_str(value)
    try:
        return hlink.eui_str(hlink.eui_from_str(value.strip()))
    except ValueError as e:
        raise HubUsageError(str(e), reason="bad-eui") from None


def version_text(v: int | None) -> str:
    return "-" if v is None else "0x%08x" % v


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS hubs (
    id INTEGER PRIMARY KEY,
    eui TEXT NOT NULL UNIQUE,
    created REAL NOT NULL,
    retired REAL,
    counter INTEGER NOT NULL DEFAULT 1 CHECK (counter >= 1)
);
CREATE UNIQUE INDEX IF NOT EXISTS one_current_hub ON hubs ((retired IS NULL))
    WHERE retired IS NULL;
CREATE TABLE IF NOT EXISTS premises (
    mpxn TEXT PRIMARY KEY,
    supplier1 TEXT,
    supplier2 TEXT,
    created REAL NOT NULL,
    CHECK (supplier2 IS NULL OR (supplier1 IS NOT NULL AND supplier2 <> supplier1))
);
CREATE TABLE IF NOT EXISTS devices (
    eui TEXT PRIMARY KEY,
    role TEXT NOT NULL CHECK (role IN (%(roles)s)),
    manufacturer INTEGER NOT NULL,
    image_type INTEGER NOT NULL,
    hw_version INTEGER,
    install_code TEXT NOT NULL,
    ota_supported INTEGER NOT NULL CHECK (ota_supported IN (0, 1)),
    mpxn TEXT NOT NULL REFERENCES premises (mpxn),
    joined_hub TEXT,
    running_version INTEGER,
    held_hash TEXT,
    last_seen REAL,
    last_counter INTEGER,
    added REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS images (
    sha256 TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    manufacturer INTEGER NOT NULL,
    image_type INTEGER NOT NULL,
    file_version INTEGER NOT NULL,
    size INTEGER NOT NULL,
    image_hash TEXT,
    min_hw INTEGER,
    max_hw INTEGER,
    destination TEXT,
    added REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('update', 'activate', 'read_version')),
    sr TEXT NOT NULL,
    eui TEXT NOT NULL,
    role TEXT,
    supplier TEXT NOT NULL,
    image TEXT REFERENCES images (sha256),
    target_version INTEGER,
    image_hash TEXT,
    activate_at REAL,
    state TEXT NOT NULL
        CHECK (state IN ('queued', 'notifying', 'downloading', 'activating', 'running', 'done')),
    attempts INTEGER NOT NULL DEFAULT 0,
    checks INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL,
    deadline REAL,
    offset INTEGER NOT NULL DEFAULT 0,
    size INTEGER,
    rate REAL,
    created REAL NOT NULL,
    started REAL,
    updated REAL NOT NULL,
    finished REAL,
    outcome TEXT CHECK (outcome IN (%(outcomes)s)),
    reason TEXT,
    result INTEGER,
    CHECK ((state = 'done') = (outcome IS NOT NULL)),
    CHECK ((outcome IS NULL) = (finished IS NULL))
);
CREATE UNIQUE INDEX IF NOT EXISTS one_pending_per_kind ON requests (eui, kind)
    WHERE outcome IS NULL;
CREATE INDEX IF NOT EXISTS requests_by_state ON requests (state);
CREATE TRIGGER IF NOT EXISTS outcome_is_final BEFORE UPDATE ON requests
    WHEN OLD.outcome IS NOT NULL
    BEGIN SELECT RAISE(ABORT, 'request already has its outcome'); END;
CREATE TRIGGER IF NOT EXISTS requests_are_kept BEFORE DELETE ON requests
    BEGIN SELECT RAISE(ABORT, 'requests are never deleted'); END;
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    eui TEXT,
    request_id INTEGER REFERENCES requests (id),
    kind TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS events_by_request ON events (request_id);
CREATE INDEX IF NOT EXISTS events_by_eui ON events (eui, at);
""" % {"outcomes": ", ".join("'%s'" % o for o in OUTCOMES),
       "roles": ", ".join("'%s'" % r for r in ROLES)}


class HubDB(sqlitedb.Closing):
    """One connection to the hub database (use one per thread / process).

    `clock` gives Unix times for every timestamp written. `listeners` are called with each
    event dict appended by this connection (the running hub uses it for its log lines).
    """

    def __init__(self, conn: sqlite3.Connection, path: str, clock: Callable[[], float]):
        self.conn = conn
        self.path = path
        self.clock = clock
        self.listeners: list[Callable[[dict], None]] = []
        self._depth = 0

    @classmethod
    def open(cls, path: str | os.PathLike | None = None, *, create: bool = True,
             clock: Callable[[], float] = time.time) -> "HubDB":
        """Open (and create, unless create=False) the database at path (default
        `default_db_path()`); HubError if it cannot be opened or is not a hub database."""
        p = Path(path) if path is not None else default_db_path()
        if not create and not p.exists():
            raise HubError("no hub database at %s (register a device or run hanota serve first)"
                           % p, reason="db-missing")

        def setup(conn: sqlite3.Connection) -> "HubDB":
            db = cls(conn, str(p), clock)
            db._migrate()
            return db
        return sqlitedb.open_sqlite(p, "hub database", HubError, setup, reason="db")

    def _migrate(self) -> None:
        if sqlitedb.has_schema(self.conn, self.path, "hub", SCHEMA_VERSION, HubError):
            self._widen_outcomes()
            return
        sqlitedb.create_schema(self.conn, _SCHEMA)
        with self.tx():
            self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)",
                              (str(SCHEMA_VERSION),))
            self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('images_dir', ?)",
                              (str(Path(self.path).resolve().parent / "images"),))
            if self.conn.execute("SELECT 1 FROM hubs WHERE retired IS NULL").fetchone() is None:
                self.conn.execute("INSERT INTO hubs (eui, created) VALUES (?, ?)",
                                  (new_hub_eui(), self.clock()))

    def _widen_outcomes(self) -> None:
        """A database made before some of today's OUTCOMES (the GBCS cancellation's) gets
        them into its requests.outcome CHECK. SQLite cannot alter a CHECK; widening its list
        changes nothing stored, so the table's SQL is rewritten in place (SQLite's documented
        procedure for loosening a constraint: writable_schema, schema_version + 1)."""
        row = self.conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND "
                                "name = 'requests'").fetchone()
        m = re.search(r"outcome TEXT CHECK \(outcome IN \(([^)]*)\)\)", row[0] if row else "")
        if m is None:
            return
        have = {x.strip().strip("'") for x in m.group(1).split(",")}
        if set(OUTCOMES) <= have:
            return
        names = ", ".join("'%s'" % o for o in list(OUTCOMES) + sorted(have - set(OUTCOMES)))
        sql = row[0][:m.start(1)] + names + row[0][m.end(1):]
        with self.tx():
            v = self.conn.execute("PRAGMA schema_version").fetchone()[0]
            self.conn.execute("PRAGMA writable_schema = ON")
            try:
                self.conn.execute("UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND "
                                  "name = 'requests'", (sql,))
                self.conn.execute("PRAGMA schema_version = %d" % (v + 1))
            finally:
                self.conn.execute("PRAGMA writable_schema = OFF")

    # -- plumbing

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE); nested uses join the outer one."""
        if self._depth:
            self._depth += 1
            try:
                yield self.conn
            finally:
                self._depth -= 1
            return
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise HubError("hub database %s: %s" % (self.path, e), reason="db") from None
        self._depth = 1
        pending: list[dict] = []
        self._pending_events = pending
        try:
            yield self.conn
        except BaseException:
            self._depth = 0
            self.conn.execute("ROLLBACK")
            raise
        self._depth = 0
        try:
            self.conn.execute("COMMIT")
        except sqlite3.Error as e:
            self.conn.execute("ROLLBACK")
            raise HubError("hub database %s: %s" % (self.path, e), reason="db") from None
        for ev in pending:
            for fn in self.listeners:
                try:
                    fn(ev)
                except Exception:  # a display problem must not undo or stop the work
                    logging.getLogger(__name__).exception("event listener")

    def all(self, sql: str, args: tuple | dict = ()) -> list[sqlite3.Row]:
        try:
            return self.conn.execute(sql, args).fetchall()
        except sqlite3.OperationalError as e:
            raise HubError("hub database %s: %s" % (self.path, e), reason="db") from None

    def one(self, sql: str, args: tuple | dict = ()) -> sqlite3.Row | None:
        try:
            return self.conn.execute(sql, args).fetchone()
        except sqlite3.OperationalError as e:
            raise HubError("hub database %s: %s" % (self.path, e), reason="db") from None

    def now(self) -> float:
        return self.clock()

    # -- meta / config

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.one("SELECT value FROM meta WHERE key = ?", (key,))
        return row[0] if row is not None else default

    def set_meta(self, key: str, value: str | None) -> None:
        with self.tx() as c:
            if value is None:
                c.execute("DELETE FROM meta WHERE key = ?", (key,))
            else:
                c.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE "
                          "SET value = excluded.value", (key, value))

    def priorities(self) -> dict[str, int]:
        """Class priority per role (lower is served first)."""
        p = dict(DEFAULT_PRIORITY)
        for row in self.all("SELECT key, value FROM meta WHERE key LIKE 'priority.%'"):
            p[row[0].split(".", 1)[1]] = int(row[1])
        return p

    def set_priorities(self, prio: dict[str, int]) -> None:
        with self.tx():
            for role, n in prio.items():
                if role not in ROLES:
                    raise HubUsageError("unknown role %r in priorities (%s)"
                                        % (role, ", ".join(ROLES)))
                self.set_meta("priority." + role, str(int(n)))

    def images_dir(self) -> Path:
        return Path(self.get_meta("images_dir"))

    # -- hub identity and counters

    def current_hub(self) -> sqlite3.Row:
        row = self.one("SELECT * FROM hubs WHERE retired IS NULL")
        if row is None:
            raise HubError("the hub database has no current hub identity", reason="db")
        return row

    def hub_counter(self) -> int:
        return int(self.current_hub()["counter"])

    def save_hub_counter(self, n: int) -> None:
        with self.tx() as c:
            c.execute("UPDATE hubs SET counter = max(counter, ?) WHERE retired IS NULL", (n,))

    # -- events and request state

    def event(self, kind: str, eui: str | None = None, request_id: int | None = None,
              **detail: Any) -> None:
        """Append an event row (inside the current transaction, or its own)."""
        at = self.clock()
        with self.tx() as c:
            c.execute("INSERT INTO events (at, eui, request_id, kind, detail) "
                      "VALUES (?, ?, ?, ?, ?)",
                      (at, eui, request_id, kind, json.dumps(detail, sort_keys=True)))
            ev = dict(detail)
            ev.update(at=at, eui=eui, request_id=request_id, kind=kind)
            self._pending_events.append(ev)

    def request(self, request_id: int) -> sqlite3.Row | None:
        return self.one("SELECT * FROM requests WHERE id = ?", (request_id,))

    def update_request(self, request_id: int, **fields: Any) -> bool:
        """Set fields of a request that has no outcome yet; False if it already has one."""
        fields["updated"] = self.clock()
        cols = ", ".join("%s = ?" % k for k in fields)
        with self.tx() as c:
            cur = c.execute("UPDATE requests SET %s WHERE id = ? AND outcome IS NULL" % cols,
                            (*fields.values(), request_id))
            return cur.rowcount == 1

    def set_state(self, request_id: int, state: str, event: str | None = None,
                  detail: dict | None = None, **fields: Any) -> bool:
        """Move a pending request to state (and record an event); False if already done."""
        if state not in STATES or state == "done":
            raise ValueError("bad state %r" % state)
        with self.tx():
            if not self.update_request(request_id, state=state, **fields):
                return False
            row = self.request(request_id)
            self.event(event or state, row["eui"], request_id, **(detail or {}))
            return True

    def finish(self, request_id: int, outcome: str, reason: str | None = None,
               result: int | None = None) -> bool:
        """Give a request its one final outcome. False (and nothing written) if it already
        has one: the first outcome stands."""
        if outcome not in OUTCOMES:
            raise ValueError("unknown outcome %r" % outcome)
        now = self.clock()
        with self.tx() as c:
            cur = c.execute(
                "UPDATE requests SET state = 'done', outcome = ?, reason = ?, result = ?, "
                "finished = ?, updated = ?, deadline = NULL, next_attempt = NULL "
                "WHERE id = ? AND outcome IS NULL",
                (outcome, reason, result, now, now, request_id))
            if cur.rowcount != 1:
                return False
            row = self.request(request_id)
            self.event("outcome", row["eui"], request_id, outcome=outcome, reason=reason,
                       result=result)
            return True


def new_hub_eui() -> str:
    """A random EUI-64 for a new hub identity (locally administered bit set)."""
    b = bytearray(os.urandom(8))
    b[7] = (b[7] | 0x02) & 0xFE  # most significant byte: locally administered, unicast
    return eui_text(bytes(b))


def check_install_code(code: str) -> str:
    """Normalise and validate an install code (hex, with its CRC-16)."""
    text = code.replace(":", "").replace(" ", "").replace("-", "").lower()
    try:
        bytes.fromhex(text)
        hlink.link_key(text)
    except ValueError:
        raise HubUsageError("install code %r is not hex" % code, reason="bad-install-code") \
            from None
    except hlink.LinkError as e:
        raise HubUsageError("install code %r: %s" % (code, e), reason="bad-install-code") \
            from None
    return text
