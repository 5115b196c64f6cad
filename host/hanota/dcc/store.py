"""The DCC's SQLite database: registration data, the Central Products List, User counters,
requests, the DUIS responses queued per User, and the WAN outbox/inbox per Comms Hub.

The DCC (`hanota dcc serve`, `hanota dcc submit` and the `dcc cpl|registry` commands) open it
at the same time, so as the hub's database: WAL mode, short BEGIN IMMEDIATE transactions, a
busy timeout.

Identities are kept as 16 upper-case hex digits, most significant byte first, exactly as a
DUIS RequestID and an SMKI certificate's x500UniqueIdentifier carry them: a Responsible
Supplier is its certificate's **entity ID**, never a typed name; a device and a Comms Hub are
their EUI-64.

Rules the schema itself enforces (so that no code path can break them):

- premises have one Responsible Supplier, or two different ones (dual-Supplier: import and
  export, or gas and electricity), and exactly one Comms Hub;
- a device's type is one of `DEVICE_TYPES` and its status one of `DEVICE_STATUSES`;
- a User's RequestID counter only ever rises (a trigger);
- a request ends in exactly one final state: `outcome` is set exactly when `state` is 'done',
  a trigger refuses any change to a request that has it, and requests are never deleted;
- at most one *final* DUIS response per request (a unique partial index), and responses are
  never deleted;
- a WAN message is acknowledged once (a trigger keeps the first `acked` time), and an inbound
  WAN message id is recorded once per hub (its primary key), which is what makes both ends
  idempotent.

A change of a premises' Suppliers or Comms Hub queues a `set_suppliers` WAN message to the hub.
A Trust Centre Swap-Out (`replace_hub`) moves premises, pending requests and unsent messages
to the new hub identity and marks the premises' Alt HAN devices `lost_with_hub` (MP170: they
cannot rejoin, so no firmware can reach them).
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import sqlite3
import time
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .. import sqlitedb
from ..errors import HanotaError
from . import dialect

SCHEMA_VERSION = 1

# The device-type table the DCC's inventory (SR 8.2 / 8.4) and pre-notification (SR 12.2) use:
# DUIS DeviceType value -> (description, hanota role or None, the firmware SR that serves it).
# Source: the GB device types as DUIS names them (the public duis-templates' 12.2 request shows
# `ESME`; the others are the SEC's device classes: Smart Metering Equipment, Comms Hub and Gas
# Proxy Functions, Type 1 HAN devices PPMID, HCALCS and SAPC, Type 2 devices IHD and CAD). MP170
# (Alt HAN) adds a DUIS table for 8.2/8.4/12.2 with the Alt HAN device types; its text was not
# reachable from here, so `ALTHAN` stands for them (one type: an Alt HAN device, which joins
# through the Alt HAN Forum's equipment, not the Join Service). Marked as hanota's reading.
DEVICE_TYPES: dict[str, tuple[str, str | None, str | None]] = {
    "ESME": ("Electricity Smart Metering Equipment", None, None),
    "GSME": ("Gas Smart Metering Equipment", None, None),
    "CHF": ("Communications Hub Function", None, None),
    "GPF": ("Gas Proxy Function", None, None),
    "PPMID": ("Prepayment Interface Device", "ppmid", "11.4"),
    "HCALCS": ("HAN Connected Auxiliary Load Control Switch", "hcalcs", "11.1"),
    "SAPC": ("Standalone Auxiliary Proportional Controller", None, None),
    "IHD": ("In-Home Display (Type 2)", None, None),
    "CAD": ("Consumer Access Device (Type 2)", None, None),
    "ALTHAN": ("Alt HAN device (MP170)", "althan", "11.4"),  # as PPMIDs (MP170)
}
ROLE_DEVICE_TYPES = {v[1]: k for k, v in DEVICE_TYPES.items() if v[1]}
DEVICE_STATUSES = ("prenotified", "commissioned", "joined", "withdrawn")
REQUEST_STATES = ("accepted", "sent", "done")
RESPONSE_KINDS = ("response", "alert")

_HEX16 = re.compile(r"^[0-9A-F]{16}$")


class DccStoreError(HanotaError):
    """The DCC database cannot be opened or used: exit code 2."""

    reason = "dcc-db"


class DccUsageError(DccStoreError):
    """A registration or CPL change names something malformed or unknown: exit code 1."""

    reason = "usage"


def default_db_path() -> Path:
    """$HANOTA_HOME/dcc.db (HANOTA_HOME defaults to ~/.hanota)."""
    return Path(os.environ.get("HANOTA_HOME", Path.home() / ".hanota")) / "dcc.db"


def eui_hex(value: str | bytes) -> str:
    """An EUI-64 or entity ID as 16 upper-case hex digits, most significant byte first.

    Bytes are taken as DUIS and SMKI carry them (big-endian); text may use '-' or ':' between
    the pairs, as a RequestID does ("90-B3-D5-1F-30-01-00-00")."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        if len(value) != 8:
            raise DccUsageError("an EUI-64 is 8 bytes, not %d" % len(value), reason="bad-eui")
        return bytes(value).hex().upper()
    t = value.strip().replace("-", "").replace(":", "").upper()
    if not _HEX16.match(t):
        raise DccUsageError("EUI-64 %r: give 16 hex digits (pairs may be separated by '-' or "
                            "':')" % value, reason="bad-eui")
    return t


def hex_text(value: str | bytes, nbytes: int, what: str) -> str:
    """A fixed-length value (hash, manufacturer, model) as lower-case hex."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        b = bytes(value)
    else:
        try:
            b = bytes.fromhex(value.strip().replace(":", "").replace("-", ""))
        except ValueError:
            raise DccUsageError("%s %r is not hex" % (what, value), reason="bad-hex") from None
    if len(b) != nbytes:
        raise DccUsageError("%s is %d bytes (%d hex digits), not %d"
                            % (what, nbytes, 2 * nbytes, len(b)), reason="bad-hex")
    return b.hex()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS premises (
    mpxn TEXT PRIMARY KEY,
    supplier1 TEXT NOT NULL CHECK (length(supplier1) = 16),
    supplier2 TEXT CHECK (supplier2 IS NULL OR (length(supplier2) = 16
                                                AND supplier2 <> supplier1)),
    hub_eui TEXT NOT NULL CHECK (length(hub_eui) = 16),
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS premises_by_hub ON premises (hub_eui);
CREATE TABLE IF NOT EXISTS devices (
    eui TEXT PRIMARY KEY CHECK (length(eui) = 16),
    device_type TEXT NOT NULL CHECK (device_type IN (%(types)s)),
    mpxn TEXT NOT NULL REFERENCES premises (mpxn),
    manufacturer TEXT,
    model TEXT,
    firmware_version TEXT,
    hw_version INTEGER CHECK (hw_version IS NULL OR hw_version BETWEEN 0 AND 65535),
    install_code TEXT,
    status TEXT NOT NULL CHECK (status IN (%(statuses)s)),
    lost_with_hub TEXT,
    ka_public TEXT CHECK (ka_public IS NULL OR length(ka_public) = 130),
    added REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS cpl (
    id INTEGER PRIMARY KEY,
    manufacturer TEXT NOT NULL CHECK (length(manufacturer) = 4),
    model TEXT NOT NULL,
    version TEXT NOT NULL CHECK (length(version) = 8),
    image_hash TEXT NOT NULL CHECK (length(image_hash) = 64),
    pubkey TEXT,
    added REAL NOT NULL,
    UNIQUE (manufacturer, model, image_hash)
);
CREATE TABLE IF NOT EXISTS users (
    entity_id TEXT PRIMARY KEY CHECK (length(entity_id) = 16),
    last_counter INTEGER NOT NULL,
    updated REAL NOT NULL
);
CREATE TRIGGER IF NOT EXISTS counters_rise BEFORE UPDATE ON users
    WHEN NEW.last_counter <= OLD.last_counter
    BEGIN SELECT RAISE(ABORT, 'a User''s RequestID counter only rises'); END;
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL UNIQUE,
    user TEXT NOT NULL,
    counter INTEGER NOT NULL,
    srv TEXT NOT NULL,
    device TEXT,
    hub_eui TEXT,
    detail TEXT NOT NULL DEFAULT '{}',
    state TEXT NOT NULL CHECK (state IN (%(states)s)),
    code TEXT,
    outcome TEXT,
    reason TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    finished REAL,
    CHECK ((state = 'done') = (outcome IS NOT NULL)),
    CHECK ((outcome IS NULL) = (finished IS NULL))
);
CREATE INDEX IF NOT EXISTS requests_by_device ON requests (device, state);
CREATE INDEX IF NOT EXISTS requests_open ON requests (state, updated);
CREATE TRIGGER IF NOT EXISTS request_outcome_is_final BEFORE UPDATE ON requests
    WHEN OLD.outcome IS NOT NULL
    BEGIN SELECT RAISE(ABORT, 'request already has its outcome'); END;
CREATE TRIGGER IF NOT EXISTS requests_are_kept BEFORE DELETE ON requests
    BEGIN SELECT RAISE(ABORT, 'requests are never deleted'); END;
CREATE TABLE IF NOT EXISTS responses (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    user TEXT NOT NULL CHECK (length(user) = 16),
    request INTEGER REFERENCES requests (id),
    kind TEXT NOT NULL CHECK (kind IN (%(kinds)s)),
    code TEXT NOT NULL,
    final INTEGER NOT NULL DEFAULT 0 CHECK (final IN (0, 1)),
    xml BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_by_user ON responses (user, seq);
CREATE UNIQUE INDEX IF NOT EXISTS one_final_response ON responses (request, user)
    WHERE final = 1;
CREATE TRIGGER IF NOT EXISTS responses_are_kept BEFORE DELETE ON responses
    BEGIN SELECT RAISE(ABORT, 'responses are never deleted'); END;
CREATE TABLE IF NOT EXISTS wan_out (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    hub_eui TEXT NOT NULL CHECK (length(hub_eui) = 16),
    request INTEGER REFERENCES requests (id),
    body TEXT NOT NULL,
    created REAL NOT NULL,
    acked REAL,
    published REAL
);
CREATE INDEX IF NOT EXISTS wan_out_by_hub ON wan_out (hub_eui, id);
CREATE INDEX IF NOT EXISTS wan_out_unpublished ON wan_out (hub_eui, id)
    WHERE published IS NULL AND acked IS NULL;
CREATE TABLE IF NOT EXISTS wan_leases (
    hub_eui TEXT PRIMARY KEY,
    worker TEXT,
    until REAL
);
CREATE TABLE IF NOT EXISTS wan_images (
    sha256 TEXT PRIMARY KEY CHECK (length(sha256) = 64),
    data BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE TRIGGER IF NOT EXISTS wan_ack_is_kept BEFORE UPDATE OF acked ON wan_out
    WHEN OLD.acked IS NOT NULL
    BEGIN SELECT RAISE(IGNORE); END;
CREATE TABLE IF NOT EXISTS wan_in (
    hub_eui TEXT NOT NULL,
    msg_id INTEGER NOT NULL,
    body TEXT NOT NULL,
    received REAL NOT NULL,
    PRIMARY KEY (hub_eui, msg_id)
);
""" % {"types": ", ".join("'%s'" % t for t in DEVICE_TYPES),
       "statuses": ", ".join("'%s'" % s for s in DEVICE_STATUSES),
       "states": ", ".join("'%s'" % s for s in REQUEST_STATES),
       "kinds": ", ".join("'%s'" % k for k in RESPONSE_KINDS)}


def _mpxn(text: str) -> str:
    t = str(text).strip()
    if not t or len(t) > 64 or not t.replace("-", "").replace("_", "").isalnum():
        raise DccUsageError("MPxN %r: use 1-64 letters, digits, '-' or '_'" % text,
                            reason="bad-mpxn")
    return t


def _version8(value: str | int | None) -> str | None:
    """A firmware version as DUIS writes it: 8 hex digits."""
    if value is None:
        return None
    if isinstance(value, int):
        if not 0 <= value <= 0xFFFFFFFF:
            raise DccUsageError("firmware version %r out of range" % value, reason="bad-version")
        return "%08X" % value
    t = value.strip()
    if t.lower().startswith("0x"):
        t = t[2:]
    if not re.fullmatch(r"[0-9A-Fa-f]{1,8}", t):
        raise DccUsageError("firmware version %r: give up to 8 hex digits" % value,
                            reason="bad-version")
    return t.upper().rjust(8, "0")


def _manufacturer(value: str | int) -> str:
    """A manufacturer code as DUIS writes it (4 hex digits; the Zigbee manufacturer code)."""
    if isinstance(value, int):
        if not 0 <= value <= 0xFFFF:
            raise DccUsageError("manufacturer %r out of range" % value, reason="bad-manufacturer")
        return "%04X" % value
    t = value.strip()
    if t.lower().startswith("0x"):
        t = t[2:]
    if not re.fullmatch(r"[0-9A-Fa-f]{1,4}", t):
        raise DccUsageError("manufacturer %r: give up to 4 hex digits" % value,
                            reason="bad-manufacturer")
    return t.upper().rjust(4, "0")


def _model(value: str | int) -> str:
    """A device model as DUIS writes it (DeviceModel: 8 hex digits). hanota's devices are
    the model their OTA image type names (0x0084 -> "00000084"), so an int or shorter hex is
    that value zero-padded."""
    if isinstance(value, int):
        if not 0 <= value <= 0xFFFFFFFF:
            raise DccUsageError("model %r out of range" % value, reason="bad-model")
        return "%08X" % value
    t = value.strip()
    if t.lower().startswith("0x"):
        t = t[2:]
    if not re.fullmatch(r"[0-9A-Fa-f]{1,8}", t):
        raise DccUsageError("model %r: give up to 8 hex digits" % value, reason="bad-model")
    return t.upper().rjust(8, "0")


class DccStore(sqlitedb.Closing):
    """One connection to the DCC database (use one per thread; `check_same_thread` is off so
    an asyncio server may hand it between its own callbacks).

    `clock` gives the Unix times written into every row."""

    def __init__(self, path: str | os.PathLike | None = None, *,
                 clock: Callable[[], float] = time.time):
        self.clock = clock
        self._depth = 0
        self._images: OrderedDict[str, str] = OrderedDict()  # image_ref -> base64 (LRU)
        self._refs: dict[str, str] = {}  # base64 -> image_ref (the last IMAGE_CACHE)
        self._committed: set[str] = set()  # image_refs seen in wan_images
        self.conn: Any = None  # sqlite3.Connection, or dialect.PgConnection
        if dialect.is_postgres(path):
            self._open_postgres(str(path))
            return
        self.postgres = False
        self.integrity_errors: tuple[type[BaseException], ...] = (sqlite3.IntegrityError,)
        p = Path(path) if path is not None else default_db_path()
        self.path = str(p)

        def setup(conn: sqlite3.Connection) -> None:
            self.conn = conn
            self._migrate()
        sqlitedb.open_sqlite(p, "DCC database", DccStoreError, setup)

    def _open_postgres(self, uri: str) -> None:
        """The same store on PostgreSQL (dialect.py says what differs)."""
        try:
            import psycopg
        except ImportError:
            raise DccStoreError("--db %s needs psycopg (pip install 'psycopg[binary]')"
                                % dialect.redact(uri)) from None
        self.postgres = True
        self.uri = uri
        self.path = dialect.redact(uri)
        self.integrity_errors = (psycopg.IntegrityError,)
        self._pg_errors = (psycopg.OperationalError, psycopg.InterfaceError)
        try:
            self.conn = dialect.PgConnection(uri)
            self._migrate_postgres()
        except psycopg.Error as e:
            raise DccStoreError("cannot use DCC database %s: %s" % (self.path, e)) from None

    def _reconnect(self) -> None:
        """A PostgreSQL connection lost (the server restarted): open a new one."""
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001 - it is broken already
            pass
        self.conn = dialect.PgConnection(self.uri)

    def _migrate_postgres(self) -> None:
        c = self.conn
        c.execute("BEGIN")
        try:
            c.execute_raw("SELECT pg_advisory_xact_lock(%s)", (dialect.WRITE_LOCK,))
            row = c.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()
            v = None
            if row[0]:
                v = c.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
                if v is not None and int(v[0]) != SCHEMA_VERSION:
                    raise DccStoreError("%s has DCC schema %s; this hanota knows %d"
                                        % (self.path, v[0], SCHEMA_VERSION), reason="db-schema")
            if not row[0] or v is None:
                for stmt in _split_sql(dialect.pg_schema(_SCHEMA)):
                    c.execute_raw(stmt)
                c.execute("INSERT INTO meta VALUES ('schema', ?) ON CONFLICT DO NOTHING",
                          (str(SCHEMA_VERSION),))
            else:  # made before the device's GBCS KA key was kept
                c.execute_raw("ALTER TABLE devices ADD COLUMN IF NOT EXISTS ka_public TEXT "
                              "CHECK (ka_public IS NULL OR length(ka_public) = 130)")
                # ... and before response deadlines (Dcc.expire_requests sweeps by it)
                c.execute_raw("CREATE INDEX IF NOT EXISTS requests_open ON requests "
                              "(state, updated)")
                # ... and before the publisher's claims looked only at unpublished messages
                c.execute_raw(WAN_OUT_UNPUBLISHED)
                # ... and before WAN messages referred to their image (wan_queue)
                c.execute(WAN_IMAGES)
            c.execute("COMMIT")
        except BaseException:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise

    def _migrate(self) -> None:
        if sqlitedb.has_schema(self.conn, self.path, "DCC", SCHEMA_VERSION, DccStoreError):
            cols = [r[1] for r in self.conn.execute("PRAGMA table_info(devices)")]
            if "lost_with_hub" not in cols:  # databases made before the column existed
                self.conn.execute("ALTER TABLE devices ADD COLUMN lost_with_hub TEXT")
            if "ka_public" not in cols:  # made before the device's GBCS KA key was kept
                self.conn.execute("ALTER TABLE devices ADD COLUMN ka_public TEXT CHECK "
                                  "(ka_public IS NULL OR length(ka_public) = 130)")
            if "published" not in [r[1] for r in self.conn.execute(
                    "PRAGMA table_info(wan_out)")]:  # made before the WAN on NATS
                self.conn.execute("ALTER TABLE wan_out ADD COLUMN published REAL")
            self.conn.execute("CREATE TABLE IF NOT EXISTS wan_leases (hub_eui TEXT PRIMARY "
                              "KEY, worker TEXT, until REAL)")
            self.conn.execute("CREATE INDEX IF NOT EXISTS requests_open ON requests "
                              "(state, updated)")  # made before response deadlines
            self.conn.execute(WAN_OUT_UNPUBLISHED)  # made before it (wan_claim_hubs)
            self.conn.execute(WAN_IMAGES)  # made before WAN messages referred to images
            return
        sqlitedb.create_schema(self.conn, _SCHEMA + "INSERT OR IGNORE INTO meta VALUES "
                               "('schema', '%d');" % SCHEMA_VERSION)

    # -- plumbing

    @contextmanager
    def tx(self, exclusive: bool = True) -> Iterator[Any]:
        """A write transaction, one writer at a time (SQLite: BEGIN IMMEDIATE; PostgreSQL:
        BEGIN and the write advisory lock); nested uses join the outer one. On PostgreSQL
        `exclusive=False` leaves the lock out, for writes whose rows are claimed with
        FOR UPDATE SKIP LOCKED or that touch one row (workers then run side by side)."""
        if self._depth:
            self._depth += 1
            try:
                yield self.conn
            finally:
                self._depth -= 1
            return
        errors = self._pg_errors if self.postgres else (sqlite3.Error,)
        try:
            self._begin(exclusive)
        except errors as e:
            raise DccStoreError("DCC database %s: %s" % (self.path, e)) from None
        self._depth = 1
        try:
            yield self.conn
        except BaseException as e:
            self._depth = 0
            self._rollback()
            if self.postgres and isinstance(e, self._pg_errors):  # the server went away
                raise DccStoreError("DCC database %s: %s" % (self.path, e)) from None
            raise
        self._depth = 0
        try:
            self.conn.execute("COMMIT")
        except errors as e:
            self._rollback()
            raise DccStoreError("DCC database %s: %s" % (self.path, e)) from None

    def _begin(self, exclusive: bool = True) -> None:
        if not self.postgres:
            self.conn.execute("BEGIN IMMEDIATE")
            return
        if self.conn.broken:
            self._reconnect()
        # BEGIN and the lock in one round trip (no parameters: one simple query)
        begin = "BEGIN; SELECT pg_advisory_xact_lock(%d)" % dialect.WRITE_LOCK \
            if exclusive else "BEGIN"
        try:
            self.conn.execute_raw(begin)
        except self._pg_errors:  # the server restarted since: one new connection
            self._reconnect()
            self.conn.execute_raw(begin)

    def _rollback(self) -> None:
        try:
            self.conn.execute("ROLLBACK")
        except Exception:  # noqa: BLE001 - a lost connection rolled back by itself
            if not self.postgres:
                raise

    def all(self, sql: str, args: tuple | dict = ()) -> list[Any]:
        return self._read(sql, args, False)

    def one(self, sql: str, args: tuple | dict = ()) -> Any:
        return self._read(sql, args, True)

    def _read(self, sql: str, args: tuple | dict, one: bool) -> Any:
        if self.postgres:
            try:
                if self.conn.broken and not self._depth:
                    self._reconnect()
                cur = self.conn.execute(sql, args)
            except self._pg_errors as e:
                if self._depth:
                    raise DccStoreError("DCC database %s: %s" % (self.path, e)) from None
                try:  # outside a transaction a read may go again on a new connection
                    self._reconnect()
                    cur = self.conn.execute(sql, args)
                except self._pg_errors as e2:
                    raise DccStoreError("DCC database %s: %s" % (self.path, e2)) from None
            return cur.fetchone() if one else cur.fetchall()
        try:
            cur = self.conn.execute(sql, args)
            return cur.fetchone() if one else cur.fetchall()
        except sqlite3.OperationalError as e:
            raise DccStoreError("DCC database %s: %s" % (self.path, e)) from None

    def add_column(self, table: str, column: str, decl: str) -> None:
        """Add a column to a table made before it existed (both dialects; a no-op when it
        is there), for the tables other modules own (http.py's http_push)."""
        if self.postgres:
            with self.tx() as c:
                c.execute_raw("ALTER TABLE %s ADD COLUMN IF NOT EXISTS %s %s"
                              % (table, column, dialect._pg_types(decl)))
            return
        if column not in [r[1] for r in self.all("PRAGMA table_info(%s)" % table)]:
            with self.tx() as c:
                c.execute("ALTER TABLE %s ADD COLUMN %s %s" % (table, column, decl))

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.one("SELECT value FROM meta WHERE key = ?", (key,))
        return row[0] if row is not None else default

    def set_meta(self, key: str, value: str) -> None:
        with self.tx() as c:
            c.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE "
                      "SET value = excluded.value", (key, value))

    # -- registration data (the DSP's)

    def add_premises(self, mpxn: str, suppliers: list[bytes | str], hub_eui: bytes | str
                     ) -> dict[str, Any]:
        """Record premises with their Responsible Supplier(s) (entity IDs: one, or two in
        dual-Supplier premises) and the Comms Hub serving them; existing premises are updated
        (a change of supplier or a new hub after a swap-out)."""
        m = _mpxn(mpxn)
        ids = [eui_hex(s) for s in suppliers]
        if not 1 <= len(ids) <= 2:
            raise DccUsageError("premises have one Responsible Supplier, or two in "
                                "dual-Supplier premises; got %d" % len(ids), reason="bad-supplier")
        if len(ids) == 2 and ids[0] == ids[1]:
            raise DccUsageError("the two Responsible Suppliers must differ",
                                reason="bad-supplier")
        hub = eui_hex(hub_eui)
        now = self.clock()
        with self.tx() as c:
            old = self.premises(m)
            c.execute("INSERT INTO premises (mpxn, supplier1, supplier2, hub_eui, created, "
                      "updated) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (mpxn) DO UPDATE SET "
                      "supplier1 = excluded.supplier1, supplier2 = excluded.supplier2, "
                      "hub_eui = excluded.hub_eui, updated = excluded.updated",
                      (m, ids[0], ids[1] if len(ids) > 1 else None, hub, now, now))
            if old is not None and (old["suppliers"] != ids or old["hub_eui"] != hub):
                # a change of Supplier: the Comms Hub's registry follows the DCC's
                self.wan_queue(hub, {"type": "set_suppliers", "premises": m,
                                     "suppliers": ids, "request": None, "device": None})
        return _found(self.premises(m))

    def premises(self, mpxn: str) -> dict[str, Any] | None:
        row = self.one("SELECT * FROM premises WHERE mpxn = ?", (str(mpxn).strip(),))
        return _premises_dict(row) if row is not None else None

    def list_premises(self) -> list[dict[str, Any]]:
        return [_premises_dict(r) for r in self.all("SELECT * FROM premises ORDER BY mpxn")]

    def add_device(self, eui: bytes | str, device_type: str, premises: str, *,
                   model: str | int | None = None, manufacturer: str | int | None = None,
                   firmware_version: str | int | None = None, install_code: str | None = None,
                   hw_version: int | None = None, status: str = "commissioned",
                   ka_public: bytes | str | None = None) -> dict[str, Any]:
        """Register a device at premises (which must exist). DccUsageError names an unknown
        device type, unknown premises, a malformed value, or a device already registered.
        `ka_public`: a GBCS-commissioned device's key-agreement public key (`ka_key`)."""
        e = eui_hex(eui)
        t = str(device_type).strip().upper()
        if t not in DEVICE_TYPES:
            raise DccUsageError("device type %r is not in the device-type table (%s)"
                                % (device_type, ", ".join(DEVICE_TYPES)), reason="bad-device-type")
        if status not in DEVICE_STATUSES:
            raise DccUsageError("device status %r: one of %s" % (status, ", ".join(
                DEVICE_STATUSES)), reason="bad-status")
        m = _mpxn(premises)
        code = _install_code(install_code) if install_code else None
        if hw_version is not None and not 0 <= hw_version <= 0xFFFF:
            raise DccUsageError("hardware version %r out of range 0..0xFFFF" % hw_version,
                                reason="bad-argument")
        row = (e, t, m, _manufacturer(manufacturer) if manufacturer is not None else None,
               _model(model) if model is not None else None, _version8(firmware_version),
               hw_version, code, status,
               ka_key(ka_public, e) if ka_public is not None else None)
        now = self.clock()
        with self.tx() as c:
            if c.execute("SELECT 1 FROM premises WHERE mpxn = ?", (m,)).fetchone() is None:
                raise DccUsageError("premises %s are not registered (add them first, with their "
                                    "Responsible Supplier and Comms Hub)" % m,
                                    reason="unknown-premises")
            if c.execute("SELECT 1 FROM devices WHERE eui = ?", (e,)).fetchone() is not None:
                raise DccUsageError("device %s is already registered" % e, reason="exists")
            c.execute("INSERT INTO devices (eui, device_type, mpxn, manufacturer, model, "
                      "firmware_version, hw_version, install_code, status, ka_public, added, "
                      "updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (*row, now, now))
        return _found(self.device(e))

    def update_device(self, eui: bytes | str, **fields: Any) -> dict[str, Any]:
        """Change a registered device's inventory fields (SR 8.4, a join's status; its GBCS
        KA key, `ka_public`, from its commissioning: None removes it)."""
        e = eui_hex(eui)
        conv = {"manufacturer": _manufacturer, "model": _model,
                "firmware_version": _version8, "install_code": _install_code,
                "ka_public": lambda v: ka_key(v, e)}
        cols = {}
        for k, v in fields.items():
            if k == "device_type":
                v = str(v).strip().upper()
                if v not in DEVICE_TYPES:
                    raise DccUsageError("device type %r is not in the device-type table (%s)"
                                        % (v, ", ".join(DEVICE_TYPES)), reason="bad-device-type")
            elif k == "status":
                if v not in DEVICE_STATUSES:
                    raise DccUsageError("device status %r: one of %s"
                                        % (v, ", ".join(DEVICE_STATUSES)), reason="bad-status")
            elif k in conv:
                v = conv[k](v) if v is not None else None
            elif k != "hw_version":
                raise DccUsageError("device field %r cannot be updated" % k, reason="bad-field")
            cols[k] = v
        with self.tx() as c:
            if c.execute("SELECT 1 FROM devices WHERE eui = ?", (e,)).fetchone() is None:
                raise DccUsageError("device %s is not registered" % e, reason="unknown-device")
            if cols:
                c.execute("UPDATE devices SET %s, updated = ? WHERE eui = ?"
                          % ", ".join("%s = ?" % k for k in cols),
                          (*cols.values(), self.clock(), e))
        return _found(self.device(e))

    def set_firmware_version(self, eui: bytes | str, version: str | int) -> bool:
        """The firmware version a registered device runs now (one statement: an outcome's
        transaction); False when the device is not registered. DccUsageError names a
        malformed version."""
        v = _version8(version)
        with self.tx() as c:
            return c.execute("UPDATE devices SET firmware_version = ?, updated = ? WHERE "
                             "eui = ?", (v, self.clock(), eui_hex(eui))).rowcount == 1

    def device(self, eui: bytes | str) -> dict[str, Any] | None:
        """A device with its premises' Responsible Suppliers and Comms Hub, or None."""
        row = self.one("SELECT d.*, p.supplier1, p.supplier2, p.hub_eui FROM devices d "
                       "JOIN premises p ON p.mpxn = d.mpxn WHERE d.eui = ?", (eui_hex(eui),))
        return _device_dict(row) if row is not None else None

    def list_devices(self, mpxn: str | None = None) -> list[dict[str, Any]]:
        sql = ("SELECT d.*, p.supplier1, p.supplier2, p.hub_eui FROM devices d "
               "JOIN premises p ON p.mpxn = d.mpxn")
        if mpxn is not None:
            return [_device_dict(r) for r in self.all(sql + " WHERE d.mpxn = ? ORDER BY d.eui",
                                                      (_mpxn(mpxn),))]
        return [_device_dict(r) for r in self.all(sql + " ORDER BY d.mpxn, d.eui")]

    def replace_hub(self, old: bytes | str, new: bytes | str) -> dict[str, Any]:
        """A Trust Centre Swap-Out: Comms Hub `new` replaces `old`. The premises it served,
        their pending requests and the WAN messages it had not acknowledged move to the new
        identity (hanota's Comms Hub keeps its records across the swap, so it reports on them
        there); Alt HAN devices at those premises cannot rejoin a new hub (MP170), so they are
        marked lost with the old one: no more firmware requests for them. Counts moved."""
        o, n = eui_hex(old), eui_hex(new)
        if o == n:
            raise DccUsageError("a Comms Hub cannot replace itself (%s)" % o, reason="bad-eui")
        with self.tx() as c:
            mpxns = [r[0] for r in c.execute("SELECT mpxn FROM premises WHERE hub_eui = ?",
                                             (o,))]
            now = self.clock()
            lost = c.execute(
                "UPDATE devices SET lost_with_hub = ?, updated = ? WHERE device_type = 'ALTHAN' "
                "AND lost_with_hub IS NULL AND mpxn IN (SELECT mpxn FROM premises "
                "WHERE hub_eui = ?)", (o, now, o)).rowcount
            c.execute("UPDATE premises SET hub_eui = ?, updated = ? WHERE hub_eui = ?",
                      (n, now, o))
            reqs = c.execute("UPDATE requests SET hub_eui = ?, updated = ? WHERE hub_eui = ? "
                             "AND outcome IS NULL", (n, now, o)).rowcount
            msgs = c.execute("UPDATE wan_out SET hub_eui = ?, published = NULL WHERE "
                             "hub_eui = ? AND acked IS NULL", (n, o)).rowcount
            if msgs:
                c.execute("INSERT OR IGNORE INTO wan_leases (hub_eui) VALUES (?)", (n,))
        return {"premises": mpxns, "requests": reqs, "messages": msgs, "alt_han_lost": lost}

    # -- Central Products List

    def cpl_add(self, manufacturer: str | int, image_type: str | int, version: str | int,
                image_hash: bytes | str, *, pubkey: bytes | str | None = None
                ) -> dict[str, Any]:
        """Put a firmware image on the CPL: the device model (DUIS DeviceModel; hanota's
        devices use their OTA image type) it is for, its version and Manufacturer Image Hash
        (SHA-256), optionally the manufacturer's public key (65-byte P-256 point) that must
        verify the image's signature."""
        man, mod, ver = _manufacturer(manufacturer), _model(image_type), _version8(version)
        h = hex_text(image_hash, 32, "a Manufacturer Image Hash")
        key = hex_text(pubkey, 65, "the manufacturer's public key") if pubkey else None
        with self.tx() as c:
            c.execute("INSERT INTO cpl (manufacturer, model, version, image_hash, pubkey, added) "
                      "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (manufacturer, model, image_hash) "
                      "DO UPDATE SET version = excluded.version, pubkey = excluded.pubkey",
                      (man, mod, ver, h, key, self.clock()))
        return _found(self.cpl_find(man, mod, h))

    def cpl_list(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.all("SELECT * FROM cpl ORDER BY manufacturer, model, "
                                          "version")]

    def cpl_remove(self, image_hash: bytes | str, *, manufacturer: str | int | None = None,
                   image_type: str | int | None = None) -> int:
        """Take an image off the CPL (every model it is listed for, unless narrowed); the
        number of entries removed (DccUsageError when none matched)."""
        h = hex_text(image_hash, 32, "a Manufacturer Image Hash")
        sql, args = "DELETE FROM cpl WHERE image_hash = ?", [h]
        if manufacturer is not None:
            sql += " AND manufacturer = ?"
            args.append(_manufacturer(manufacturer))
        if image_type is not None:
            sql += " AND model = ?"
            args.append(_model(image_type))
        with self.tx() as c:
            n = c.execute(sql, args).rowcount
        if not n:
            raise DccUsageError("no CPL entry has Manufacturer Image Hash %s" % h,
                                reason="not-on-cpl")
        return n

    def cpl_find(self, manufacturer: str | int, model: str | int, image_hash: bytes | str
                 ) -> dict[str, Any] | None:
        row = self.one("SELECT * FROM cpl WHERE manufacturer = ? AND model = ? AND "
                       "image_hash = ?", (_manufacturer(manufacturer), _model(model),
                                          hex_text(image_hash, 32, "a Manufacturer Image Hash")))
        return dict(row) if row is not None else None

    # -- User counters

    def last_counter(self, user: bytes | str) -> int | None:
        row = self.one("SELECT last_counter FROM users WHERE entity_id = ?", (eui_hex(user),))
        return int(row[0]) if row is not None else None

    def take_counter(self, user: bytes | str, counter: int) -> bool:
        """Record `counter` as the User's latest if it is strictly greater than the last one
        (one statement, atomic on both dialects); False (nothing written) for a replay or an
        older counter."""
        u = eui_hex(user)
        with self.tx() as c:
            return c.execute(
                "INSERT INTO users (entity_id, last_counter, updated) VALUES (?, ?, ?) "
                "ON CONFLICT (entity_id) DO UPDATE SET last_counter = excluded.last_counter, "
                "updated = excluded.updated WHERE users.last_counter < excluded.last_counter",
                (u, int(counter), self.clock())).rowcount == 1

    # -- requests

    def add_request(self, request_id: str, user: bytes | str, counter: int, srv: str, *,
                    device: bytes | str | None = None, hub_eui: bytes | str | None = None,
                    detail: dict | None = None, outcome: str | None = None,
                    code: str | None = None, reason: str | None = None,
                    state: str = "accepted") -> int:
        """Record a request: accepted (outcome None; `state` accepted, or sent when its WAN
        message is queued in the same transaction) or refused at once (its outcome)."""
        now = self.clock()
        done = outcome is not None
        if state not in ("accepted", "sent"):
            raise ValueError("bad request state %r" % state)
        with self.tx() as c:
            cur = c.execute(
                "INSERT INTO requests (request_id, user, counter, srv, device, hub_eui, detail, "
                "state, code, outcome, reason, created, updated, finished) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (request_id, eui_hex(user), counter, srv,
                 eui_hex(device) if device is not None else None,
                 eui_hex(hub_eui) if hub_eui is not None else None,
                 json.dumps(detail or {}, sort_keys=True), "done" if done else state,
                 code, outcome, reason, now, now, now if done else None))
            return int(cur.lastrowid or 0)

    def request(self, rid: int) -> dict[str, Any] | None:
        row = self.one("SELECT * FROM requests WHERE id = ?", (rid,))
        return _request_dict(row) if row is not None else None

    def request_by_text(self, request_id: str) -> dict[str, Any] | None:
        row = self.one("SELECT * FROM requests WHERE request_id = ?", (request_id,))
        return _request_dict(row) if row is not None else None

    def pending_requests(self, device: bytes | str | None = None) -> list[dict[str, Any]]:
        if device is None:
            rows = self.all("SELECT * FROM requests WHERE outcome IS NULL ORDER BY id")
        else:
            rows = self.all("SELECT * FROM requests WHERE outcome IS NULL AND device = ? "
                            "ORDER BY id", (eui_hex(device),))
        return [_request_dict(r) for r in rows]

    def set_request_state(self, rid: int, state: str) -> bool:
        if state not in REQUEST_STATES or state == "done":
            raise ValueError("bad request state %r" % state)
        with self.tx() as c:
            return c.execute("UPDATE requests SET state = ?, updated = ? WHERE id = ? AND "
                             "outcome IS NULL", (state, self.clock(), rid)).rowcount == 1

    def finish_request(self, rid: int, outcome: str, code: str, reason: str | None = None
                       ) -> bool:
        """Give a request its one final outcome; False (nothing written) if it has one."""
        now = self.clock()
        with self.tx() as c:
            return c.execute("UPDATE requests SET state = 'done', outcome = ?, code = ?, "
                             "reason = ?, finished = ?, updated = ? WHERE id = ? AND "
                             "outcome IS NULL", (outcome, code, reason, now, now, rid)
                             ).rowcount == 1

    # -- DUIS responses and alerts queued per User

    def queue_response(self, user: bytes | str, xml: bytes, code: str, *,
                       request: int | None = None, kind: str = "response",
                       final: bool = False) -> int:
        """Queue a signed response or alert for a User; its sequence number."""
        with self.tx() as c:
            cur = c.execute("INSERT INTO responses (user, request, kind, code, final, xml, "
                            "created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (eui_hex(user), request, kind, code, int(final), bytes(xml),
                             self.clock()))
            return int(cur.lastrowid or 0)

    def responses(self, user: bytes | str, after: int = 0) -> list[tuple[int, bytes]]:
        return [(int(r[0]), bytes(r[1])) for r in self.all(
            "SELECT seq, xml FROM responses WHERE user = ? AND seq > ? ORDER BY seq",
            (eui_hex(user), after))]

    def response_rows(self, user: bytes | str | None = None, after: int = 0
                      ) -> list[dict[str, Any]]:
        if user is None:
            rows = self.all("SELECT * FROM responses WHERE seq > ? ORDER BY seq", (after,))
        else:
            rows = self.all("SELECT * FROM responses WHERE user = ? AND seq > ? ORDER BY seq",
                            (eui_hex(user), after))
        return [dict(r) for r in rows]

    # -- the WAN, per Comms Hub

    def wan_queue(self, hub_eui: bytes | str, msg: dict, request: int | None = None) -> int:
        """Append a DCC -> CH message; its id (set into the stored body as "id").

        An image the message carries (`image_b64`, an update_firmware) is stored once, in
        `wan_images` by its SHA-256, and the stored body refers to it (`image_ref`): a
        campaign's thousands of messages share one copy. `wan_outbox` / `wan_unpublished`
        give the message back as queued, image included."""
        hub = eui_hex(hub_eui)
        b64 = msg.get("image_b64")
        ref = None
        if isinstance(b64, str):
            # a campaign queues one image thousands of times: its hash once per store
            ref = self._refs.get(b64)
            if ref is None:
                ref = hashlib.sha256(base64.b64decode(b64, validate=True)).hexdigest()
                self._refs[b64] = ref
                while len(self._refs) > IMAGE_CACHE:
                    del self._refs[next(iter(self._refs))]
            self._cache_image(ref, b64)
            msg = {k: v for k, v in msg.items() if k != "image_b64"}
            msg["image_ref"] = ref
        with self.tx() as c:
            # an image seen committed is not looked up again (images are never deleted)
            if ref is not None and ref not in self._committed:
                if c.execute("SELECT 1 FROM wan_images WHERE sha256 = ?",
                             (ref,)).fetchone() is None:
                    c.execute("INSERT INTO wan_images (sha256, data, created) VALUES "
                              "(?, ?, ?)", (ref, base64.b64decode(b64), self.clock()))
                else:
                    self._committed.add(ref)
            if self.postgres:
                # one round trip: the id drawn first, then written into the body's text
                rest = json.dumps({k: v for k, v in msg.items() if k != "id"},
                                  sort_keys=True)[1:]
                mid = int(c.execute(
                    "INSERT INTO wan_out (id, hub_eui, request, body, created) SELECT n.id, "
                    "?, ?, '{\"id\": ' || n.id || CASE WHEN ? = '}' THEN '' ELSE ', ' END "
                    "|| ?, ? FROM (SELECT nextval(pg_get_serial_sequence('wan_out', 'id')) "
                    "AS id) n RETURNING id", (hub, request, rest, rest, self.clock())
                ).fetchone()[0])
            else:
                cur = c.execute("INSERT INTO wan_out (hub_eui, request, body, created) "
                                "VALUES (?, ?, '{}', ?)", (hub, request, self.clock()))
                mid = int(cur.lastrowid or 0)
                body = dict(msg)
                body["id"] = mid
                c.execute("UPDATE wan_out SET body = ? WHERE id = ?",
                          (json.dumps(body, sort_keys=True), mid))
            c.execute("INSERT OR IGNORE INTO wan_leases (hub_eui) VALUES (?)", (hub,))
        return mid

    # -- several workers: who publishes which hub's messages (the WAN on NATS)

    def wan_claim_hubs(self, worker: str, lease: float, limit: int = 100) -> list[str]:
        """Claim (or renew) the right to publish the unpublished messages of up to `limit`
        Comms Hubs for `lease` seconds: hubs nobody holds, whose lease ran out (a worker
        that died), or that `worker` holds already. One worker per hub at a time keeps
        each hub's messages in id order. On PostgreSQL the rows are claimed with
        FOR UPDATE SKIP LOCKED outside the global write lock, so workers claim in
        parallel and never wait for each other; SQLite has one writer anyway."""
        now = self.clock()
        with self.tx(exclusive=False) as c:
            # driven by the unpublished messages (a partial index: empty when idle), not
            # by the leases (a row per Comms Hub ever sent to: 10,000s)
            hubs = [r[0] for r in c.execute(
                "SELECT l.hub_eui FROM wan_leases l WHERE l.hub_eui IN (SELECT o.hub_eui "
                "FROM wan_out o WHERE o.published IS NULL AND o.acked IS NULL) AND "
                "(l.until IS NULL OR l.until < ? OR l.worker = ?) ORDER BY l.until "
                "NULLS FIRST, l.hub_eui LIMIT ?" + dialect.skip_locked(self.postgres, "l"),
                (now, worker, int(limit))).fetchall()]
            for h in hubs:
                c.execute("UPDATE wan_leases SET worker = ?, until = ? WHERE hub_eui = ?",
                          (worker, now + lease, h))
        return hubs

    def wan_release(self, worker: str) -> int:
        """A worker stopping gives its hubs back at once (a killed one's leases run out)."""
        with self.tx(exclusive=False) as c:
            return c.execute("UPDATE wan_leases SET worker = NULL, until = NULL WHERE "
                             "worker = ?", (worker,)).rowcount

    def wan_unpublished(self, hub_eui: bytes | str, limit: int = 1000) -> list[dict]:
        """The hub's messages not handed to the broker yet (nor acknowledged), in order."""
        return [self._wan_body(r[0]) for r in self.all(
            "SELECT body FROM wan_out WHERE hub_eui = ? AND published IS NULL AND acked IS "
            "NULL ORDER BY id LIMIT ?", (eui_hex(hub_eui), int(limit)))]

    def wan_published(self, msg_ids: int | list[int]) -> int:
        """The broker has stored these messages (they reach their hub from there); how many
        were not marked before."""
        ids = [int(msg_ids)] if isinstance(msg_ids, int) else [int(i) for i in msg_ids]
        now, n = self.clock(), 0
        with self.tx(exclusive=False) as c:
            for i in ids:
                n += c.execute("UPDATE wan_out SET published = ? WHERE id = ? AND published "
                               "IS NULL", (now, i)).rowcount
        return n

    def wan_outbox(self, hub_eui: bytes | str, after: int = 0) -> list[dict]:
        """The hub's messages not yet acknowledged, with ids above `after`, in order."""
        return [self._wan_body(r[0]) for r in self.all(
            "SELECT body FROM wan_out WHERE hub_eui = ? AND id > ? AND acked IS NULL "
            "ORDER BY id", (eui_hex(hub_eui), after))]

    def _wan_body(self, text: str) -> dict:
        """A stored WAN message as it was queued: its image put back from `wan_images`."""
        msg = json.loads(text)
        ref = msg.pop("image_ref", None)
        if ref is None:
            return msg
        b64 = self._images.get(ref)
        if b64 is None:
            row = self.one("SELECT data FROM wan_images WHERE sha256 = ?", (ref,))
            if row is None:
                raise DccStoreError("WAN message %s refers to image sha256 %s, which is not in "
                                    "the DCC database's wan_images" % (msg.get("id"), ref),
                                    reason="db-integrity")
            b64 = base64.b64encode(bytes(row[0])).decode("ascii")
        self._cache_image(ref, b64)
        msg["image_b64"] = b64
        return msg

    def _cache_image(self, ref: str, b64: str) -> None:
        self._images[ref] = b64
        self._images.move_to_end(ref)
        while len(self._images) > IMAGE_CACHE:
            self._images.popitem(last=False)

    def wan_new(self, after: int, also: Iterable[int] = (), limit: int = 5000
                ) -> list[tuple[int, str, bool]]:
        """(id, hub EUI, acknowledged) of the WAN messages with ids above `after` (at most
        `limit` of them, in id order), and of those among `also` (ids found missing below it
        earlier: another process's transaction may commit an id after a later one): how a
        WAN endpoint learns with one query which hubs have new messages."""
        also = sorted({int(i) for i in also})
        rows = self.all("SELECT id, hub_eui, acked FROM wan_out WHERE id > ? ORDER BY id "
                        "LIMIT ?", (int(after), int(limit)))
        if also:
            rows = list(self.all("SELECT id, hub_eui, acked FROM wan_out WHERE id IN (%s)"
                                 % ",".join("?" * len(also)), tuple(also))) + list(rows)
        return [(int(r[0]), str(r[1]), r[2] is not None) for r in rows]

    def wan_acked(self, hub_eui: bytes | str, msg_id: int) -> bool:
        """Mark a message acknowledged by its hub; False if it was already (or is not
        that hub's message)."""
        with self.tx() as c:
            return c.execute("UPDATE wan_out SET acked = ? WHERE id = ? AND hub_eui = ? AND "
                             "acked IS NULL", (self.clock(), int(msg_id), eui_hex(hub_eui))
                             ).rowcount == 1

    def wan_message(self, msg_id: int) -> dict[str, Any] | None:
        row = self.one("SELECT * FROM wan_out WHERE id = ?", (int(msg_id),))
        return dict(row) if row is not None else None

    def wan_seen(self, hub_eui: bytes | str, msg_id: int, body: dict) -> bool:
        """Record an inbound CH -> DCC message id; False if it was received before (a
        redelivery: acknowledge it, do not act on it again)."""
        with self.tx() as c:
            cur = c.execute("INSERT OR IGNORE INTO wan_in (hub_eui, msg_id, body, received) "
                            "VALUES (?, ?, ?, ?)", (eui_hex(hub_eui), int(msg_id),
                                                    json.dumps(body, sort_keys=True),
                                                    self.clock()))
            return cur.rowcount == 1


WAN_IMAGES = ("CREATE TABLE IF NOT EXISTS wan_images (sha256 TEXT PRIMARY KEY CHECK "
              "(length(sha256) = 64), data BLOB NOT NULL, created REAL NOT NULL)")
IMAGE_CACHE = 4  # images (base64) a store keeps at hand for the WAN messages it reads
WAN_OUT_UNPUBLISHED = ("CREATE INDEX IF NOT EXISTS wan_out_unpublished ON wan_out (hub_eui, id) "
                       "WHERE published IS NULL AND acked IS NULL")


def _split_sql(script: str) -> list[str]:
    """Statements of a schema script; a PL/pgSQL body between $$ marks stays whole."""
    out: list[str] = []
    cur = ""
    for i, part in enumerate(script.split("$$")):
        if i % 2:  # inside a body
            cur += "$$" + part + "$$"
            continue
        pieces = part.split(";")
        cur += pieces[0]
        for piece in pieces[1:]:
            if cur.strip():
                out.append(cur)
            cur = piece
    if cur.strip():
        out.append(cur)
    return out


def _found(row: dict[str, Any] | None) -> dict[str, Any]:
    """A row just written, read back (it is there: the write committed)."""
    assert row is not None
    return row


def _install_code(code: str) -> str:
    """An install code as hex with its CRC-16 checked (the CH derives the link key from it)."""
    from hanfw import link as hlink

    text = str(code).replace(":", "").replace(" ", "").replace("-", "").lower()
    try:
        bytes.fromhex(text)
        hlink.link_key(text)
    except ValueError:
        raise DccUsageError("install code %r is not hex" % code, reason="bad-install-code") \
            from None
    except hlink.LinkError as e:
        raise DccUsageError("install code %r: %s" % (code, e), reason="bad-install-code") \
            from None
    return text


def ka_key(value: bytes | str, eui: str = "") -> str:
    """A device's GBCS key-agreement public key as the registration data keeps it: the
    65-byte uncompressed P-256 point as 130 lower-case hex digits. DccUsageError names a
    value that is not hex, not 65 bytes, or not a point on the curve."""
    from hanfw import p256

    who = " of device %s" % eui if eui else ""
    if isinstance(value, (bytes, bytearray, memoryview)):
        b = bytes(value)
    else:
        try:
            b = bytes.fromhex(str(value).strip().replace(":", "").replace(" ", ""))
        except ValueError:
            raise DccUsageError("the KA public key%s %r is not hex" % (who, value),
                                reason="bad-ka-key") from None
    if len(b) != 65 or b[0] != 4:
        raise DccUsageError("the KA public key%s is %d bytes: give the 65-byte uncompressed "
                            "P-256 point (04 || X || Y, 130 hex digits)" % (who, len(b)),
                            reason="bad-ka-key")
    if not p256.is_valid_point(b):
        raise DccUsageError("the KA public key%s is not a point on P-256" % who,
                            reason="bad-ka-key")
    return b.hex()


def _premises_dict(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    d["suppliers"] = [s for s in (row["supplier1"], row["supplier2"]) if s]
    return d


def _device_dict(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    d["premises"] = d["mpxn"]
    d["suppliers"] = [s for s in (d.pop("supplier1", None), d.pop("supplier2", None)) if s]
    desc, role, sr = DEVICE_TYPES[d["device_type"]]
    d.update(type_description=desc, role=role, firmware_sr=sr)
    return d


def _request_dict(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    d["detail"] = json.loads(d["detail"] or "{}")
    return d
