"""Campaigns: a Supplier sends one firmware image to many devices, in waves, through the DCC.

A campaign (`hanota campaign create`) belongs to one Supplier, a User of the DCC: its DUIS
XML-signing certificate is kept with the campaign in the DCC's database, never its private
key (in GB the DCC holds no User's key). `create` takes the key only to prove the Supplier
makes the campaign (it must be the certificate's), then drops it. The requests are signed by
a process holding the key in memory (`Signer`): the Supplier's own `hanota campaign drive`,
or a `dcc serve --supplier-key` worker (the single-machine setup); a driver sends only the
campaigns whose Supplier entity ID and certificate it holds, and records a heartbeat lease
per Supplier (`campaign_signers`) so `campaign status` can say when nobody signs. It
targets an explicit list of devices, or every device of a manufacturer and model running a
given firmware version at premises the Supplier is Responsible Supplier of (the DCC's
registration data), with one image and one SR: 11.4 for PPMIDs and Alt HAN devices, 11.1 for
HCALCS (the image is then held; its activation, the Supplier's SR 11.3 by Pre-Command, is
not part of a campaign).

**Each device gets its own DUIS request.** The driver builds the SR's request for the device,
signs it with the Supplier's key it holds, and has the DCC check it with `Dcc.check` then record it
with `Dcc.record`, the two halves of `Dcc.submit`, the path a request POSTed to
`/api/v1/serviceD` takes, so every rule applies (signature, counter, Responsible Supplier,
device type, CPL, image checks) and the device's Comms Hub outcome becomes the one final DUIS
response to the Supplier, as for any request. (The driver takes the acknowledgement's code and
reason from `record` rather than a signed acknowledgement: it is the only reader.) The
RequestID counter is the larger of the Supplier's last counter + 1 and the time in
milliseconds (what `duis build` uses), so the Supplier's own tools keep working beside a
campaign.

**Exactly once, without the crypto under the lock.** A send has three steps. (1) A claim:
one short transaction marks up to `batch` due devices as this worker's for `claim_lease`
seconds (`claimed_by`, `claim_until`; on PostgreSQL FOR UPDATE SKIP LOCKED, outside the
write lock), so workers prepare different devices. (2) The preparation, with no write
transaction open: the request built, signed for the Supplier, and checked by the DCC
(signature, document, rules, image; the image's parse, hashes and signature are memoised per
file). (3) One short write transaction (SQLite's BEGIN IMMEDIATE, PostgreSQL's write
advisory lock) that re-checks what can have changed (the campaign still running, its window
open and its rate not reached, the device still waiting at this attempt and not claimed by
another worker; in `Dcc.record` the Supplier's counter, the device's registration and
Responsible Suppliers, the CPL entry) and writes the Supplier's counter, the DUIS request
row, its WAN message and the campaign's record of the send (`campaign_sends`, one row per
device and attempt, a primary key, and a unique RequestID) together or not at all. So any
number of `dcc serve` workers drive the same campaign side by side without sending a device
twice, and a worker killed at any point leaves nothing behind: before (3) commits nothing of
the send is written (its claim runs out and another worker sends the device).

GBCS/DUIS counters must rise per User in the order the DCC takes them, and the counter is
inside the signed document, so two workers preparing for the same Supplier at once can pick
the same counter, or one can be overtaken by the other's higher one. Reserving blocks of
counters per worker would not help (the DCC refuses any counter not above the last it took,
whoever took it); signing inside the lock would put the crypto back under it. So the common
case stays outside, and a request whose counter is no longer above the Supplier's last (seen
just before (3), or by `Dcc.record` in it, which then rolls back) is built, signed and
checked again outside the lock, up to `retries_outside` (2) times (`CampaignDriver.retried`);
after that (3) redoes it inside the lock, where the counter cannot move, so every send ends
(`CampaignDriver.redone`). Two workers sending for the same Supplier overtake each other
often (their counters are the time in ms, and the commits do not come in the order the
preparations started): that work is wasted CPU, but not lock time. Outcomes are read from
the DCC's requests table (the Comms Hub's outcome, or the DCC's refusal), so whichever worker
received it, any worker moves the campaign on.

**Rollout controls** (as hawkBit's groups and thresholds, AWS IoT Jobs' rate and retries):

- waves: sizes as a count or a percentage of the devices; the last size repeats until every
  device has a wave. Wave n+1 opens once the successes in wave n reach the success threshold
  (of the wave's size); a wave whose devices all have outcomes below it stops the campaign.
- error threshold: when the failures in any open wave reach it (of the wave's size), the
  campaign stops: nothing more is sent, devices not sent get the outcome `not_sent`.
- rate limit: at most N requests per minute (all workers together).
- maintenance window: a cron-like schedule (`minute hour day-of-month month day-of-week`) or a
  daily start time, a duration and an IANA time zone (zoneinfo): requests go out only while a
  window is open; outcomes are taken at any time.
- retries: a device whose outcome is `transfer_failed`, `device_unreachable` or
  `no_response` is sent a new request (a new RequestID) after a backoff that doubles per
  attempt, up to `retries` times.
- response deadline: a request without an outcome `response_timeout` seconds after it was
  sent gets the DCC's outcome `no_response` (`Dcc.expire_request`: its final DUIS response,
  E21), which counts as a failure for the thresholds and is retried; the Comms Hub's answer,
  if it comes later, is kept but makes no second outcome. The deadline goes in the request's
  WAN message (`expires`): a Comms Hub that gets it later (a backlog, a hub offline that
  long) does not carry it out but answers `expired` (retried too), so a device never acts on
  both the late request and its retry. Without one, `dcc serve
  --response-timeout` (for every request) is the only deadline.
- pause (no more sends, outcomes still taken), resume, cancel (devices not sent get the
  outcome `cancelled`; requests already sent keep theirs).

A device's campaign outcome is the outcome of its last request (`activated` for 11.4 and
`distributed` for 11.1 are successes), or `not_sent` / `cancelled` when it never got one.
"""
from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any, Callable, Iterable

from . import dialect
from .store import DEVICE_TYPES, DccStore, DccUsageError, eui_hex

log = logging.getLogger(__name__)

STATES = ("running", "paused", "stopped", "cancelled", "done")
DEVICE_STATES = ("waiting", "sent", "done")
SUCCESS = {"11.1": ("distributed",), "11.4": ("activated",)}
RETRYABLE = ("transfer_failed", "device_unreachable", "no_response", "expired")
DEFAULTS = {"waves": ["100%"], "success_threshold": 0.9, "error_threshold": 0.1, "rate": None,
            "window": None, "retries": 2, "backoff": 60.0, "backoff_max": 3600.0,
            "response_timeout": None}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS campaigns (
    name TEXT PRIMARY KEY,
    supplier TEXT NOT NULL CHECK (length(supplier) = 16),
    srv TEXT NOT NULL CHECK (srv IN ('11.1', '11.4')),
    image BLOB NOT NULL,
    image_hash TEXT NOT NULL,
    version TEXT NOT NULL,
    signer_cert BLOB NOT NULL,
    config TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN (%s)),
    wave INTEGER NOT NULL,
    waves INTEGER NOT NULL,
    reason TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL
)""" % ", ".join("'%s'" % s for s in STATES),
    """CREATE TABLE IF NOT EXISTS campaign_devices (
    campaign TEXT NOT NULL REFERENCES campaigns (name),
    device TEXT NOT NULL CHECK (length(device) = 16),
    seq INTEGER NOT NULL,
    wave INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN (%s)),
    attempts INTEGER NOT NULL DEFAULT 0,
    request_id TEXT,
    next_at REAL,
    last_outcome TEXT,
    outcome TEXT,
    ok INTEGER CHECK (ok IS NULL OR ok IN (0, 1)),
    code TEXT,
    reason TEXT,
    finished REAL,
    claimed_by TEXT,
    claim_until REAL,
    PRIMARY KEY (campaign, device),
    CHECK ((state = 'done') = (outcome IS NOT NULL))
)""" % ", ".join("'%s'" % s for s in DEVICE_STATES),
    "CREATE INDEX IF NOT EXISTS campaign_devices_by_state ON campaign_devices "
    "(campaign, state, wave, seq)",
    """CREATE TABLE IF NOT EXISTS campaign_sends (
    campaign TEXT NOT NULL,
    device TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    request_id TEXT NOT NULL UNIQUE,
    worker TEXT,
    sent REAL NOT NULL,
    PRIMARY KEY (campaign, device, attempt)
)""",
    "CREATE INDEX IF NOT EXISTS campaign_sends_by_time ON campaign_sends (campaign, sent)",
    """CREATE TABLE IF NOT EXISTS campaign_signers (
    supplier TEXT NOT NULL,
    worker TEXT NOT NULL,
    cert_sha256 TEXT NOT NULL,
    seen REAL NOT NULL,
    until REAL NOT NULL,
    PRIMARY KEY (supplier, worker)
)""",
)

SIGNER_LEASE = 30.0  # seconds a signer's heartbeat says it runs (renewed every third of it)


class CampaignError(DccUsageError):
    """A campaign cannot be created or changed as asked (exit code 1): the message names why."""

    reason = "campaign"


def ensure_schema(store: DccStore) -> None:
    """The campaign tables, in the DCC's database (both dialects), made once per store."""
    if getattr(store, "_campaign_schema", False):
        return
    with store.tx() as c:
        for stmt in _SCHEMA:
            c.execute(stmt)
    # made before sends were claimed (CampaignDriver._claim): the columns added (looked
    # up first: PostgreSQL's ALTER TABLE would lock the table even when they are there)
    have = _columns(store, "campaign_devices")
    for column, decl in (("claimed_by", "TEXT"), ("claim_until", "REAL")):
        if column not in have:
            store.add_column("campaign_devices", column, decl)
    if "signer_key" in _columns(store, "campaigns"):
        _wipe_signer_keys(store)
    store._campaign_schema = True  # type: ignore[attr-defined]


def _columns(store: DccStore, table: str) -> set[str]:
    if store.postgres:
        return {r[0] for r in store.all("SELECT column_name FROM information_schema.columns "
                                        "WHERE table_name = ? AND table_schema = "
                                        "current_schema()", (table,))}
    return {r[1] for r in store.all("PRAGMA table_info(%s)" % table)}


def _wipe_signer_keys(store: DccStore) -> None:
    """A database made when campaigns kept the Supplier's private key (`signer_key`): the
    keys are overwritten, then the column dropped, and the log says so. The DCC holds no
    User's private key: those campaigns wait for a signer (`hanota campaign drive`, `dcc
    serve --supplier-key`) like new ones. On SQLite `secure_delete` zeroes the freed
    content for this; on PostgreSQL the old row versions go at the table's next vacuum."""
    if not store.postgres:
        store.conn.execute("PRAGMA secure_delete = ON")
    try:
        with store.tx() as c:
            if "signer_key" not in _columns(store, "campaigns"):
                return  # another process wiped them first
            rows = c.execute("SELECT name, supplier FROM campaigns ORDER BY name").fetchall()
            c.execute("UPDATE campaigns SET signer_key = ?", (b"",))
            if store.postgres:
                c.execute_raw("ALTER TABLE campaigns DROP COLUMN IF EXISTS signer_key")
            else:
                c.execute("ALTER TABLE campaigns DROP COLUMN signer_key")
    finally:
        if not store.postgres:
            store.conn.execute("PRAGMA secure_delete = OFF")
    log.warning("DCC database %s: the Supplier private keys stored with %d campaign(s) were "
                "wiped (the DCC holds no User's private key)%s; they wait for a signer with "
                "the Supplier's key: hanota campaign drive --key --cert, or dcc serve "
                "--supplier-key", store.path, len(rows),
                (": " + ", ".join("%s (Supplier %s)" % (r[0], r[1]) for r in rows))
                if rows else "")


class Signer:
    """A Supplier's DUIS XML-signing key and its certificate, held in memory by the process
    that signs the Supplier's campaign requests (`hanota campaign drive`, `dcc serve
    --supplier-key`); never written to the DCC's database. `supplier` is the
    certificate's entity ID (hex), `cert_sha256` the certificate's fingerprint (DER)."""

    def __init__(self, key: Any, cert: Any, *, names: tuple[str, str] = (
            "the Supplier's key", "its certificate")):
        import hashlib

        from cryptography.hazmat.primitives import serialization

        from . import pki

        if not pki.key_matches(key, cert):
            raise CampaignError("%s is not the one %s (%s) certifies"
                                % (names[0], names[1], pki._label(cert)))
        try:
            self.supplier = eui_hex(pki.describe(cert).entity_id)
        except Exception as e:  # noqa: BLE001 - a certificate without an SMKI entity ID
            raise CampaignError("%s names no User entity ID: %s" % (names[1], e)) from None
        self.key, self.cert = key, cert
        self.cert_sha256 = hashlib.sha256(
            cert.public_bytes(serialization.Encoding.DER)).hexdigest()
        self.label = pki._label(cert)

    @classmethod
    def from_pem(cls, key_pem: bytes, cert_pem: bytes, names: tuple[str, str] = (
            "the Supplier's key", "its certificate")) -> "Signer":
        from . import pki

        try:
            key = pki.load_key(bytes(key_pem))
        except pki.PkiError as e:
            raise CampaignError("%s: %s" % (names[0], e)) from None
        try:
            cert = pki.load_cert(bytes(cert_pem))
        except pki.PkiError as e:
            raise CampaignError("%s: %s" % (names[1], e)) from None
        return cls(key, cert, names=names)

    @classmethod
    def from_files(cls, key_path: str, cert_path: str) -> "Signer":
        """The key and certificate files (PEM or DER), as `hanota duis sign` takes them."""
        from pathlib import Path

        try:
            key_pem, cert_pem = Path(key_path).read_bytes(), Path(cert_path).read_bytes()
        except OSError as e:
            raise CampaignError("cannot read %s: %s" % (e.filename, e.strerror)) from None
        return cls.from_pem(key_pem, cert_pem, names=("key %s" % key_path,
                                                      "certificate %s" % cert_path))


def cert_sha256(cert_pem: bytes) -> str:
    """A stored certificate's fingerprint (SHA-256 of its DER), as `Signer.cert_sha256`."""
    import hashlib

    from cryptography.hazmat.primitives import serialization

    from . import pki

    return hashlib.sha256(pki.load_cert(bytes(cert_pem)).public_bytes(
        serialization.Encoding.DER)).hexdigest()


# ---------------------------------------------------------------- parsing the controls

def fraction(text: str | float, what: str) -> float:
    """A threshold as a percentage ("90%") or a fraction (0.9), within 0..1."""
    if isinstance(text, (int, float)):
        v = float(text)
    else:
        t = str(text).strip()
        try:
            v = float(t[:-1]) / 100 if t.endswith("%") else float(t)
        except ValueError:
            raise CampaignError("%s %r: give a percentage (90%%) or a fraction (0.9)"
                                % (what, text)) from None
    if not 0.0 <= v <= 1.0 or math.isnan(v):
        raise CampaignError("%s %r is outside 0%%..100%%" % (what, text))
    return v


def wave_sizes(specs: Iterable[str | int], total: int) -> list[int]:
    """The size of each wave for `total` devices: each spec a count ("10") or a percentage of
    the total ("5%"); the last spec repeats until every device has a wave."""
    parsed: list[tuple[str, float]] = []
    for s in specs:
        t = str(s).strip()
        try:
            if t.endswith("%"):
                p = float(t[:-1])
                if not 0 < p <= 100:
                    raise ValueError
                parsed.append(("%", p))
            else:
                n = int(t)
                if n < 1:
                    raise ValueError
                parsed.append(("n", n))
        except ValueError:
            raise CampaignError("wave size %r: give a count of at least 1 (10) or a "
                                "percentage above 0 up to 100 (5%%)" % (s,)) from None
    if not parsed:
        parsed = [("%", 100.0)]
    sizes: list[int] = []
    left, i = total, 0
    while left > 0:
        kind, v = parsed[min(i, len(parsed) - 1)]
        n = int(v) if kind == "n" else max(1, math.ceil(total * v / 100))
        n = min(n, left)
        sizes.append(n)
        left -= n
        i += 1
    return sizes


def duration(text: str | float | int) -> float:
    """Seconds from "4h", "90m", "1h30m", "45s" or a plain number of seconds."""
    if isinstance(text, (int, float)):
        v = float(text)
    else:
        t = str(text).strip().lower()
        m = re.fullmatch(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s?)?", t)
        if not t or m is None:
            raise CampaignError("duration %r: give e.g. 4h, 90m, 1h30m or seconds" % text)
        d, h, mi, s = m.groups()
        v = int(d or 0) * 86400 + int(h or 0) * 3600 + int(mi or 0) * 60 + float(s or 0)
    if v <= 0:
        raise CampaignError("duration %r must be above zero" % (text,))
    return v


_CRON_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31),
                ("month", 1, 12), ("day of week", 0, 7))


def _cron_field(text: str, name: str, lo: int, hi: int) -> tuple[frozenset[int], bool]:
    """One cron field: *, N, A-B, with /STEP, comma lists. (values, restricted)."""
    out: set[int] = set()
    for part in text.split(","):
        m = re.fullmatch(r"(\*|\d+(?:-\d+)?)(?:/(\d+))?", part)
        if m is None:
            raise CampaignError("maintenance window: %s field %r: use *, N, A-B, */STEP or "
                                "lists of those (names like MON are not taken)" % (name, part))
        rng, step = m.group(1), int(m.group(2) or 1)
        if rng == "*":
            a, b = lo, hi
        elif "-" in rng:
            a, b = (int(x) for x in rng.split("-"))
        else:
            a = int(rng)
            b = hi if m.group(2) else a
        if not lo <= a <= b <= hi or step < 1:
            raise CampaignError("maintenance window: %s field %r is outside %d..%d"
                                % (name, part, lo, hi))
        out.update(range(a, b + 1, step))
    return frozenset(out), text != "*"


@dataclass
class Window:
    """When sends may go out: each start a cron-like schedule (in the time zone) gives,
    for `duration` seconds."""

    cron: str
    duration: float
    tz: str = "UTC"

    def __post_init__(self) -> None:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            self._zone = ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise CampaignError("time zone %r is not an IANA time zone zoneinfo knows (e.g. "
                                "Europe/London, UTC)" % self.tz) from None
        fields = self.cron.split()
        if len(fields) != 5:
            raise CampaignError("maintenance window %r: give 5 cron fields (minute hour "
                                "day-of-month month day-of-week), e.g. '0 2 * * *'" % self.cron)
        parsed = [_cron_field(f, *spec) for f, spec in zip(fields, _CRON_FIELDS)]
        self._min, self._hour = sorted(parsed[0][0]), sorted(parsed[1][0])
        self._dom, self._mon = parsed[2], parsed[3][0]
        self._dow = (frozenset(d % 7 for d in parsed[4][0]), parsed[4][1])
        self.duration = float(self.duration)

    @classmethod
    def daily(cls, start: str, duration: float, tz: str = "UTC") -> "Window":
        m = re.fullmatch(r"(\d{1,2}):(\d{2})", str(start).strip())
        if m is None or int(m.group(1)) > 23 or int(m.group(2)) > 59:
            raise CampaignError("window start %r: give a time of day HH:MM" % start)
        return cls("%d %d * * *" % (int(m.group(2)), int(m.group(1))), duration, tz)

    def as_dict(self) -> dict[str, Any]:
        return {"cron": self.cron, "duration": self.duration, "tz": self.tz}

    def _day(self, d: date) -> bool:
        if d.month not in self._mon:
            return False
        dom_ok = d.day in self._dom[0]
        dow_ok = (d.isoweekday() % 7) in self._dow[0]  # cron: Sunday 0
        if self._dom[1] and self._dow[1]:
            return dom_ok or dow_ok  # cron: either restricted day field matches
        return dom_ok and dow_ok

    def _starts(self, d: date) -> Iterable[float]:
        if self._day(d):
            for h in self._hour:
                for m in self._min:
                    yield datetime(d.year, d.month, d.day, h, m, tzinfo=self._zone).timestamp()

    def is_open(self, t: float) -> bool:
        today = datetime.fromtimestamp(t, self._zone).date()
        for back in range(int(self.duration // 86400) + 2):
            for s in self._starts(today - timedelta(days=back)):
                if s <= t < s + self.duration:
                    return True
        return False

    def next_open(self, t: float) -> float | None:
        """`t` if a window is open then, else the next start (within a year), else None."""
        if self.is_open(t):
            return t
        today = datetime.fromtimestamp(t, self._zone).date()
        for ahead in range(367):
            for s in self._starts(today + timedelta(days=ahead)):
                if s > t:
                    return s
        return None


def window_of(config: dict) -> Window | None:
    w = config.get("window")
    return Window(w["cron"], w["duration"], w.get("tz", "UTC")) if w else None


# ---------------------------------------------------------------- creating and steering

def create(store: DccStore, *, name: str, key_pem: bytes, cert_pem: bytes, image: bytes,
           devices: Iterable[bytes | str] | None = None,
           model: tuple[str | int, str | int] | None = None,
           from_version: str | int | None = None, srv: str | None = None,
           waves: Iterable[str | int] = ("100%",), success_threshold: str | float = 0.9,
           error_threshold: str | float = 0.1, rate: int | None = None,
           window: Window | None = None, retries: int = 2, backoff: float = 60.0,
           backoff_max: float = 3600.0,
           response_timeout: float | None = None) -> dict[str, Any]:
    """Record a campaign (running at once: the DCC's workers start sending when a wave and a
    window are open). Targets: `devices`, or `model` (manufacturer, model) with
    `from_version` (the firmware they run) among the Supplier's premises. CampaignError
    names what is wrong; nothing is recorded then."""
    from hanfw import otafile

    from .store import _manufacturer, _model, _version8

    ensure_schema(store)
    if not _NAME.match(name or ""):
        raise CampaignError("campaign name %r: 1-64 letters, digits, '.', '_' or '-', "
                            "starting with a letter or digit" % name)
    # the Supplier proves it makes the campaign: the key must be its certificate's; it is
    # checked here and dropped (only the certificate is kept: the DCC holds no User's key)
    supplier = Signer.from_pem(key_pem, cert_pem).supplier
    try:
        s = otafile.parse_stream(bytes(image), block=4096, integrity=True, allow_raw=True)
        s.check_integrity()
    except otafile.OtaError as e:
        raise CampaignError("the image is not a well-formed OTA file: %s" % e.message) \
            from None
    if (devices is None) == (model is None):
        raise CampaignError("give the devices either as a list or as a model with the "
                            "firmware version they run, not both and not neither")
    if model is not None:
        if from_version is None:
            raise CampaignError("a campaign by model needs the firmware version the devices "
                                "run (--from-version)")
        man, mod, ver = _manufacturer(model[0]), _model(model[1]), _version8(from_version)
        targets = [r[0] for r in store.all(
            "SELECT d.eui FROM devices d JOIN premises p ON p.mpxn = d.mpxn WHERE "
            "d.manufacturer = ? AND d.model = ? AND d.firmware_version = ? AND "
            "d.status <> 'withdrawn' AND (p.supplier1 = ? OR p.supplier2 = ?) ORDER BY d.eui",
            (man, mod, ver, supplier, supplier))]
        if not targets:
            raise CampaignError("no device of manufacturer %s model %s running %s is at "
                                "premises of Supplier %s in the registration data"
                                % (man, mod, ver, supplier))
    else:
        targets = list(dict.fromkeys(eui_hex(d) for d in devices or ()))
        if not targets:
            raise CampaignError("the campaign names no device")
    takes: set[str] = {sr for sr in (DEVICE_TYPES[d["device_type"]][2] for d in (
        store.device(t) for t in targets) if d is not None) if sr is not None}
    if srv is None:
        if len(takes) != 1 or not takes <= set(SUCCESS):
            raise CampaignError("cannot tell the SR from the devices (%s): give --srv 11.4 "
                                "(PPMID, Alt HAN) or 11.1 (HCALCS)"
                                % (", ".join(sorted(takes)) or "none registered"))
        srv = takes.pop()
    if srv not in SUCCESS:
        raise CampaignError("a campaign sends SR 11.4 or 11.1, not %r" % srv)
    if rate is not None and rate < 1:
        raise CampaignError("rate %r: at least 1 request per minute" % rate)
    if retries < 0 or backoff <= 0 or backoff_max < backoff:
        raise CampaignError("retries must be >= 0 and 0 < backoff <= its maximum")
    if response_timeout is not None and not response_timeout > 0:
        raise CampaignError("response timeout %r: a number of seconds above zero"
                            % (response_timeout,))
    waves = [str(w) for w in waves]
    sizes = wave_sizes(waves, len(targets))
    config = {"waves": waves, "sizes": sizes,
              "success_threshold": fraction(success_threshold, "success threshold"),
              "error_threshold": fraction(error_threshold, "error threshold"),
              "rate": rate, "window": window.as_dict() if window else None,
              "retries": int(retries), "backoff": float(backoff),
              "backoff_max": float(backoff_max),
              "response_timeout": float(response_timeout) if response_timeout else None}
    now = store.clock()
    with store.tx() as c:
        if c.execute("SELECT 1 FROM campaigns WHERE name = ?", (name,)).fetchone():
            raise CampaignError("campaign %s exists already" % name)
        c.execute("INSERT INTO campaigns (name, supplier, srv, image, image_hash, version, "
                  "signer_cert, config, state, wave, waves, created, updated) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'running', 1, ?, ?, ?)",
                  (name, supplier, srv, bytes(image), s.image_sha256.hex(),
                   "%08X" % s.header.file_version, bytes(cert_pem),
                   json.dumps(config, sort_keys=True), len(sizes), now, now))
        seq, wave = 0, 1
        for n in sizes:
            for _ in range(n):
                c.execute("INSERT INTO campaign_devices (campaign, device, seq, wave, state) "
                          "VALUES (?, ?, ?, ?, 'waiting')", (name, targets[seq], seq, wave))
                seq += 1
            wave += 1
    return status(store, name)


def _campaign(store: DccStore, name: str) -> dict[str, Any]:
    ensure_schema(store)
    row = store.one("SELECT name, supplier, srv, image_hash, version, config, state, wave, "
                    "waves, reason, created, updated FROM campaigns WHERE name = ?", (name,))
    if row is None:
        raise CampaignError("no campaign %r in the DCC's database" % name)
    d = dict(row)
    d["config"] = json.loads(d["config"])
    return d


def _set_state(store: DccStore, name: str, to: str, allowed: tuple[str, ...],
               reason: str | None = None) -> dict[str, Any]:
    now = store.clock()
    with store.tx() as c:
        row = c.execute("SELECT state FROM campaigns WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise CampaignError("no campaign %r in the DCC's database" % name)
        if row[0] not in allowed:
            raise CampaignError("campaign %s is %s: it cannot be made %s" % (name, row[0], to))
        c.execute("UPDATE campaigns SET state = ?, reason = ?, updated = ? WHERE name = ?",
                  (to, reason, now, name))
        if to == "cancelled":
            _close_waiting(c, name, "cancelled", "the campaign was cancelled", now)
    return status(store, name)


def pause(store: DccStore, name: str) -> dict[str, Any]:
    """No more requests (retries neither) until resumed; outcomes are still taken."""
    ensure_schema(store)
    return _set_state(store, name, "paused", ("running",), "paused")


def resume(store: DccStore, name: str) -> dict[str, Any]:
    ensure_schema(store)
    return _set_state(store, name, "running", ("paused",))


def cancel(store: DccStore, name: str) -> dict[str, Any]:
    """End the campaign: devices not sent get the outcome `cancelled` (a device waiting for a
    retry keeps its last request's outcome); requests already sent keep theirs."""
    ensure_schema(store)
    return _set_state(store, name, "cancelled", ("running", "paused"), "cancelled")


def _close_waiting(c: Any, name: str, outcome: str, reason: str, now: float) -> None:
    """Give every device still waiting its final outcome: its last request's if it had one
    (a retry that will not happen), else `outcome`."""
    c.execute("UPDATE campaign_devices SET state = 'done', ok = 0, finished = ?, "
              "outcome = COALESCE(last_outcome, ?), reason = COALESCE(reason, ?) "
              "WHERE campaign = ? AND state = 'waiting'", (now, outcome, reason, name))


def list_campaigns(store: DccStore) -> list[dict[str, Any]]:
    ensure_schema(store)
    out = []
    for row in store.all("SELECT name FROM campaigns ORDER BY created, name"):
        s = status(store, row[0], devices=False)
        out.append(s)
    return out


def status(store: DccStore, name: str, *, devices: bool = True,
           now: float | None = None) -> dict[str, Any]:
    """A campaign, its waves (size, successes, failures, in flight, waiting, open or not)
    and, with `devices`, each device's state, attempts, requests and outcome."""
    camp = _campaign(store, name)
    cfg = camp["config"]
    waves = []
    for w, size in enumerate(cfg["sizes"], 1):
        waves.append({"wave": w, "size": size, "ok": 0, "failed": 0, "sent": 0, "waiting": 0})
    for row in store.all("SELECT wave, state, ok, count(*) FROM campaign_devices WHERE "
                         "campaign = ? GROUP BY wave, state, ok", (name,)):
        wv = waves[int(row[0]) - 1]
        key = row[1] if row[1] != "done" else ("ok" if row[2] else "failed")
        wv[key] += int(row[3])
    for wv in waves:
        wv["open"] = wv["wave"] <= camp["wave"]
    camp["waves_detail"] = waves
    camp["totals"] = {k: sum(w[k] for w in waves) for k in ("size", "ok", "failed", "sent",
                                                              "waiting")}
    win = window_of(cfg)
    t = store.clock() if now is None else now
    camp["window_open"] = None if win is None else win.is_open(t)
    camp["next_window"] = None if win is None else win.next_open(t)
    camp["signer"] = signer_state(store, name, camp["supplier"], t)
    camp["waiting_for_signer"] = camp["state"] == "running" \
        and camp["totals"]["waiting"] > 0 and not camp["signer"]["live"]
    if devices:
        sends: dict[str, list[str]] = {}
        for r in store.all("SELECT device, request_id FROM campaign_sends WHERE campaign = ? "
                           "ORDER BY device, attempt", (name,)):
            sends.setdefault(r[0], []).append(r[1])
        camp["devices"] = [dict(dict(r), requests=sends.get(r["device"], []))
                           for r in store.all(
            "SELECT device, wave, state, attempts, request_id, next_at, last_outcome, "
            "outcome, ok, code, reason, finished FROM campaign_devices WHERE campaign = ? "
            "ORDER BY seq", (name,))]
    return camp


def signer_state(store: DccStore, name: str, supplier: str, now: float) -> dict[str, Any]:
    """Who signs the campaign's requests (the heartbeat leases the drivers holding its
    Supplier's key write, `CampaignDriver.heartbeat`): `live`, the workers whose lease runs
    with the campaign's certificate; `last_seen`, when the last such lease ran out (None:
    none ever ran); `other_cert`, live workers signing for the Supplier with another
    certificate (they do not send this campaign's requests)."""
    row = store.one("SELECT signer_cert FROM campaigns WHERE name = ?", (name,))
    fp = cert_sha256(bytes(row[0])) if row is not None else ""
    live, other, last = [], [], None
    for r in store.all("SELECT worker, cert_sha256, seen, until FROM campaign_signers WHERE "
                       "supplier = ? ORDER BY worker", (supplier,)):
        until = float(r[3])
        if r[1] != fp:
            if until > now:
                other.append(r[0])
            continue
        if until > now:
            live.append({"worker": r[0], "seen": float(r[2])})
        last = until if last is None else max(last, until)
    return {"live": live, "last_seen": None if live else last, "other_cert": other}


def report_data(store: DccStore) -> list[dict[str, Any]]:
    """Every campaign with its waves and per-device outcomes (for `hanota report`); none
    when the database has no campaign tables."""
    if store.postgres:
        there = store.one("SELECT to_regclass('campaigns') IS NOT NULL")[0]
    else:
        there = store.one("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                          "name = 'campaigns'") is not None
    if not there:  # a database from before campaigns
        return []
    names = [r[0] for r in store.all("SELECT name FROM campaigns ORDER BY created, name")]
    return [status(store, n) for n in names]


# ---------------------------------------------------------------- the driver

class CampaignDriver:
    """Moves every campaign on, one `step()` at a time: takes the outcomes that came in,
    opens waves or stops campaigns, then sends what the waves, the window and the rate allow
    (at most `batch` requests per campaign per step). Any number of drivers, in any number
    of processes, may step the same database: each send is claimed, prepared outside any
    write transaction, then committed in one short one (the module's "Exactly once").

    `dcc` is a `hanota.dcc.service.Dcc` (its store is where the campaigns are); `clock`
    gives the time for windows, rates and backoffs (injectable in tests)."""

    claim_lease = 20.0  # seconds a claimed device is this worker's to send (`_claim`)

    def __init__(self, dcc: Any, *, signers: Iterable[Signer] = (), worker: str | None = None,
                 clock: Callable[[], float] = time.time, batch: int = 50,
                 advance: bool = True):
        import os
        import socket

        self.dcc = dcc
        self.store: DccStore = dcc.store
        self.worker = worker or "%s:%d" % (socket.gethostname(), os.getpid())
        self.clock = clock
        self.batch = batch
        # False: only send (the Supplier's `campaign drive`): outcomes, waves, thresholds and
        # deadlines are the DCC's workers' (a deadline's final response is the DCC's to sign)
        self.advances = advance
        # the Suppliers' keys this driver holds (in memory only), by (entity ID, certificate)
        self.signers: dict[tuple[str, str], Signer] = {
            (x.supplier, x.cert_sha256): x for x in signers}
        self._fixed_: dict[str, tuple[bytes, str, str, str, str]] = {}
        self._beat_at: float | None = None
        self._warned: set[str] = set()
        self.sent = 0
        self.redone = 0  # requests overtaken by another worker's counter, redone under the lock
        self.retried = 0  # ... prepared again outside the lock

    def step(self) -> int:
        """One pass over the campaigns that have work; the number of requests sent. Every
        campaign's outcomes and waves are moved on (`advance`: no Supplier's key needed;
        not with `advance=False`); requests go out only for the campaigns whose Supplier's
        key this driver holds (`signers`: the certificate the campaign's)."""
        ensure_schema(self.store)
        self.heartbeat()
        names = [r[0] for r in self.store.all(
            "SELECT c.name FROM campaigns c WHERE EXISTS (SELECT 1 FROM campaign_devices d "
            "WHERE d.campaign = c.name AND d.state <> 'done') ORDER BY c.created, c.name")]
        total = 0
        for name in names:
            if self.advances:
                self.advance(name)
            if self.signer_for(name) is not None:
                total += self.send(name, self.batch)
                if self.advances:
                    self.advance(name)
        self.sent += total
        return total

    # -- the signers

    def signer_for(self, name: str) -> Signer | None:
        """The key this driver holds for the campaign's Supplier and certificate, or None
        (a certificate of the same Supplier but not the campaign's is logged once)."""
        _, supplier, _, _, cert = self._fixed(name)
        got = self.signers.get((supplier, cert))
        if got is None and name not in self._warned and any(
                k[0] == supplier for k in self.signers):
            self._warned.add(name)
            log.warning("campaign %s: the certificate held for Supplier %s is not the "
                        "campaign's (SHA-256 %s...): its requests are not signed here",
                        name, supplier, cert[:16])
        return got

    def heartbeat(self, force: bool = False) -> None:
        """Record that this worker signs for its Suppliers, for `SIGNER_LEASE` seconds
        (renewed every third of it; `campaign status` reads it)."""
        if not self.signers:
            return
        now = self.clock()
        if not force and self._beat_at is not None and now < self._beat_at:
            return
        with self.store.tx(exclusive=False) as c:
            for x in self.signers.values():
                c.execute("INSERT INTO campaign_signers (supplier, worker, cert_sha256, seen, "
                          "until) VALUES (?, ?, ?, ?, ?) ON CONFLICT (supplier, worker) DO "
                          "UPDATE SET cert_sha256 = excluded.cert_sha256, seen = excluded.seen, "
                          "until = excluded.until",
                          (x.supplier, self.worker, x.cert_sha256, now, now + SIGNER_LEASE))
        self._beat_at = now + SIGNER_LEASE / 3

    def leave(self) -> None:
        """This worker stops signing: its leases end now."""
        if not self.signers:
            return
        ensure_schema(self.store)
        now = self.clock()
        with self.store.tx(exclusive=False) as c:
            c.execute("UPDATE campaign_signers SET until = ? WHERE worker = ? AND until > ?",
                      (now, self.worker, now))
        self._beat_at = None

    # -- outcomes, waves, thresholds

    def advance(self, name: str) -> None:
        """Take the outcomes of the campaign's requests, then open the next wave, stop the
        campaign, or finish it, as the thresholds say."""
        now = self.clock()
        with self.store.tx() as c:
            row = c.execute("SELECT srv, config, state, wave, waves FROM campaigns WHERE "
                            "name = ?", (name,)).fetchone()
            if row is None:
                return
            srv, cfg, state, wave, nwaves = row[0], json.loads(row[1]), row[2], int(row[3]), \
                int(row[4])
            timeout = cfg.get("response_timeout")
            if timeout:
                # requests past the campaign's deadline get the DCC's no_response (one
                # outcome: only where none was written; this transaction is the writer)
                for d in c.execute(
                        "SELECT cd.request_id FROM campaign_devices cd JOIN campaign_sends s "
                        "ON s.request_id = cd.request_id JOIN requests r ON r.request_id = "
                        "cd.request_id WHERE cd.campaign = ? AND cd.state = 'sent' AND "
                        "r.outcome IS NULL AND s.sent <= ?", (name, now - timeout)).fetchall():
                    self.dcc.expire_request(d[0], "no answer within the campaign's response "
                                                  "deadline (%gs)" % timeout)
            for d in c.execute(
                    "SELECT cd.device, cd.attempts, r.outcome, r.code, r.reason FROM "
                    "campaign_devices cd JOIN requests r ON r.request_id = cd.request_id "
                    "WHERE cd.campaign = ? AND cd.state = 'sent' AND r.outcome IS NOT NULL",
                    (name,)).fetchall():
                self._outcome(c, name, srv, cfg, state, d, now)
            if state != "running":
                self._finish_if_done(c, name, state, now)
                return
            while True:
                stats = {int(r[0]): (int(r[1]), int(r[2] or 0), int(r[3] or 0)) for r in
                         c.execute("SELECT wave, count(*), sum(CASE WHEN state = 'done' AND "
                                   "ok = 1 THEN 1 ELSE 0 END), sum(CASE WHEN state = 'done' "
                                   "AND ok = 0 THEN 1 ELSE 0 END) FROM campaign_devices "
                                   "WHERE campaign = ? AND wave <= ? GROUP BY wave",
                                   (name, wave)).fetchall()}
                stop = None
                for w, (size, ok, failed) in sorted(stats.items()):
                    if failed and failed >= cfg["error_threshold"] * size:
                        stop = ("wave %d: %d of %d devices failed, at or above the error "
                                "threshold (%s)" % (w, failed, size, _pct(cfg["error_threshold"])))
                        break
                size, ok, failed = stats.get(wave, (0, 0, 0))
                need = math.ceil(cfg["success_threshold"] * size)
                if stop is None and ok + failed == size and ok < need:
                    stop = ("wave %d ended with %d of %d devices successful, below the success "
                            "threshold (%s)" % (wave, ok, size, _pct(cfg["success_threshold"])))
                if stop is not None:
                    c.execute("UPDATE campaigns SET state = 'stopped', reason = ?, updated = ? "
                              "WHERE name = ?", (stop, now, name))
                    _close_waiting(c, name, "not_sent", "the campaign stopped", now)
                    log.warning("campaign %s stopped: %s", name, stop)
                    return
                if ok >= need and wave < nwaves:
                    wave += 1
                    c.execute("UPDATE campaigns SET wave = ?, updated = ? WHERE name = ?",
                              (wave, now, name))
                    log.info("campaign %s: wave %d opens", name, wave)
                    continue
                break
            self._finish_if_done(c, name, state, now)

    def _outcome(self, c: Any, name: str, srv: str, cfg: dict, state: str, d: Any,
                 now: float) -> None:
        device, attempts, outcome, code, reason = d[0], int(d[1]), d[2], d[3], d[4]
        if outcome in SUCCESS[srv]:
            c.execute("UPDATE campaign_devices SET state = 'done', ok = 1, outcome = ?, "
                      "last_outcome = ?, code = ?, reason = ?, finished = ? WHERE campaign = ? "
                      "AND device = ? AND state = 'sent'",
                      (outcome, outcome, code, reason, now, name, device))
        elif outcome in RETRYABLE and attempts <= cfg["retries"] \
                and state in ("running", "paused"):
            delay = min(cfg["backoff"] * 2 ** (attempts - 1), cfg["backoff_max"])
            c.execute("UPDATE campaign_devices SET state = 'waiting', last_outcome = ?, "
                      "code = ?, reason = ?, next_at = ? WHERE campaign = ? AND device = ? "
                      "AND state = 'sent'", (outcome, code, reason, now + delay, name, device))
        else:
            c.execute("UPDATE campaign_devices SET state = 'done', ok = 0, outcome = ?, "
                      "last_outcome = ?, code = ?, reason = ?, finished = ? WHERE campaign = ? "
                      "AND device = ? AND state = 'sent'",
                      (outcome, outcome, code, reason, now, name, device))

    def _finish_if_done(self, c: Any, name: str, state: str, now: float) -> None:
        if state in ("running", "paused") and c.execute(
                "SELECT 1 FROM campaign_devices WHERE campaign = ? AND state <> 'done' LIMIT 1",
                (name,)).fetchone() is None:
            c.execute("UPDATE campaigns SET state = 'done', reason = NULL, updated = ? "
                      "WHERE name = ?", (now, name))
            log.info("campaign %s done", name)

    # -- sending

    def send_one(self, name: str) -> bool:
        """Send the campaign's next due device its DUIS request (`send`); False when
        nothing was sent."""
        return self.send(name, 1) == 1

    def send(self, name: str, limit: int) -> int:
        """Send up to `limit` due devices of the campaign their DUIS requests, if the
        campaign runs, its wave is open, the window is open and the rate allows; how many
        were sent. Devices are claimed first (`_claim`), then each is prepared outside any
        write transaction (`_prepare`: the request built and signed, the DCC's checks) and
        committed in one short one (`_commit`)."""
        sent = 0
        claimed = self._claim(name, limit)
        try:
            for device, attempt in claimed:
                if not self._send(name, device, attempt):
                    break
                sent += 1
        except Exception:
            self._release_quietly(name)
            raise
        if sent < len(claimed):
            self._release(name)
        return sent

    def _release_quietly(self, name: str) -> None:
        try:
            self._release(name)
        except Exception:  # noqa: BLE001 - the database is gone: the claims run out
            log.debug("campaign %s: claims not given back", name, exc_info=True)

    def _campaign(self, c: Any, name: str, now: float) -> tuple | None:
        """The campaign's (supplier, srv, version, wave, config) if it may send now."""
        row = c.execute("SELECT supplier, srv, version, config, state, wave FROM campaigns "
                        "WHERE name = ?", (name,)).fetchone()
        if row is None or row[4] != "running":
            return None
        cfg = json.loads(row[3])
        win = window_of(cfg)
        if win is not None and not win.is_open(now):
            return None
        return row[0], row[1], row[2], int(row[5]), cfg

    def _claim(self, name: str, limit: int) -> list[tuple[str, int]]:
        """Claim up to `limit` due devices for this worker for `claim_lease` seconds (one
        short transaction; on PostgreSQL FOR UPDATE SKIP LOCKED, outside the write lock, so
        workers claim side by side). A claim only keeps other workers from preparing the
        same device: what makes a send happen once is `_commit`'s re-check. A killed
        worker's claims run out."""
        now = self.clock()
        with self.store.tx(exclusive=False) as c:
            camp = self._campaign(c, name, now)
            if camp is None:
                return []
            cfg = camp[4]
            if cfg.get("rate"):
                n = c.execute("SELECT count(*) FROM campaign_sends WHERE campaign = ? AND "
                              "sent > ?", (name, now - 60.0)).fetchone()[0]
                limit = min(limit, int(cfg["rate"]) - int(n))
                if limit <= 0:
                    return []
            rows = c.execute(
                "SELECT d.device, d.attempts FROM campaign_devices d WHERE d.campaign = ? AND "
                "d.state = 'waiting' AND d.wave <= ? AND (d.next_at IS NULL OR d.next_at <= ?) "
                "AND (d.claimed_by IS NULL OR d.claimed_by = ? OR d.claim_until < ?) "
                "ORDER BY d.seq LIMIT ?" + dialect.skip_locked(self.store.postgres, "d"),
                (name, camp[3], now, self.worker, now, int(limit))).fetchall()
            got = [(r[0], int(r[1]) + 1) for r in rows]
            if got:
                c.execute("UPDATE campaign_devices SET claimed_by = ?, claim_until = ? WHERE "
                          "campaign = ? AND device IN (%s)" % ", ".join("?" * len(got)),
                          (self.worker, now + self.claim_lease, name, *[g[0] for g in got]))
        return got

    def _release(self, name: str) -> None:
        """Give back this worker's claims it did not send (the campaign paused, the
        window closed, the rate was reached)."""
        with self.store.tx(exclusive=False) as c:
            c.execute("UPDATE campaign_devices SET claimed_by = NULL, claim_until = NULL "
                      "WHERE campaign = ? AND claimed_by = ? AND state = 'waiting'",
                      (name, self.worker))

    def _prepare(self, name: str, device: str, counter_floor: int = 0) -> tuple[int, Any]:
        """The device's request built, signed with the Supplier's key and checked by the
        DCC (`Dcc.check`: no writes): (counter, Checked). The counter is the larger of the
        Supplier's last + 1 and the time in ms (what `duis build` uses)."""
        from . import duis, xmlsig

        image, supplier, srv, version, cert_fp = self._fixed(name)
        signer = self.signers.get((supplier, cert_fp))
        if signer is None:
            raise CampaignError("campaign %s: this driver holds no key for Supplier %s with "
                                "the campaign's certificate" % (name, supplier))
        now = self.clock()
        counter = max((self.store.last_counter(supplier) or 0) + 1, int(now * 1000),
                      counter_floor)
        # SR 11.1 / 11.4 are addressed to the DCC; the device is in DeviceIDList
        xml = duis.build_request(srv, bytes.fromhex(supplier), duis.DCC_EUI, counter,
                                 firmware_image=image, firmware_version=version,
                                 device_ids=[bytes.fromhex(device)])
        return counter, self.dcc.check(xmlsig.sign(xml, signer.key, signer.cert))

    retries_outside = 2  # overtaken requests redone outside the lock before one under it

    def _send(self, name: str, device: str, attempt: int) -> bool:
        """Prepare the device's request (no lock), then commit it (`_commit`); False when
        the campaign may no longer send (it changed meanwhile) or the claim was lost.

        A request overtaken by another worker's counter (seen just before the commit, or
        in it) is prepared again outside the lock, up to `retries_outside` times; then the
        commit redoes it under the lock, which always succeeds."""
        supplier = self._fixed(name)[1]
        floor = 0
        for i in range(self.retries_outside + 1):
            counter, chk = self._prepare(name, device, floor)
            last = self.store.last_counter(supplier) or 0
            if counter <= last and i < self.retries_outside:
                self.retried += 1  # overtaken while preparing: again, still no lock
                floor = last + 1
                continue
            try:
                return self._commit(name, device, attempt, counter, chk,
                                    redo=i == self.retries_outside)
            except _Overtaken as e:
                self.retried += 1
                floor = e.last + 1
        raise AssertionError("unreachable: the last commit redoes under the lock")

    def _commit(self, name: str, device: str, attempt: int, counter: int, chk: Any, *,
                redo: bool = True) -> bool:
        """One short write transaction: re-check what can have changed since the claim
        and the preparation (the campaign still running, its window open and rate not
        reached, the device still waiting at this attempt and claimed by no one else),
        then the DCC's record of the request (`Dcc.record`: it re-checks the counter and
        the device's registration) and the campaign's record of the send, together.

        GBCS/DUIS counters: a User's counters must rise in the order the DCC takes them,
        and they are inside the signed document, so a request prepared outside the lock
        can be overtaken by another worker's (same Supplier) that committed a higher
        counter first. Then, with `redo`, it is built, signed and checked again here,
        inside the lock, where no one else can take a counter; without, the transaction
        rolls back (`_Overtaken`) and `_send` prepares it again outside the lock. The
        common case (no overtaking) keeps all the crypto outside."""
        from . import duis
        from .service import Refusal

        supplier = self._fixed(name)[1]
        now = self.clock()
        with self.store.tx() as c:
            d = c.execute("SELECT c.state, c.config, d.state, d.attempts, d.claimed_by FROM "
                          "campaigns c JOIN campaign_devices d ON d.campaign = c.name WHERE "
                          "c.name = ? AND d.device = ?", (name, device)).fetchone()
            if d is None or d[2] != "waiting" or int(d[3]) + 1 != attempt \
                    or d[4] not in (None, self.worker):
                return False  # another worker sent it (our claim ran out), or it ended
            cfg = json.loads(d[1])
            win = window_of(cfg)
            if d[0] != "running" or (win is not None and not win.is_open(now)):
                return False  # paused, stopped or cancelled meanwhile, or the window shut
            if cfg.get("rate") and int(c.execute(
                    "SELECT count(*) FROM campaign_sends WHERE campaign = ? AND sent > ?",
                    (name, now - 60.0)).fetchone()[0]) >= int(cfg["rate"]):
                return False
            for _ in range(2):
                r = chk.refusal
                if r is None:
                    try:
                        code, reason = self.dcc.record(chk, expires=(
                            now + float(cfg["response_timeout"])
                            if cfg.get("response_timeout") else None))
                        break
                    except Refusal as e:
                        r = e
                if r.name != "replay":  # refused before any rule: nothing in the DCC
                    code, reason = r.code, r.reason
                    break
                if not redo:  # roll back; the caller prepares again outside the lock
                    raise _Overtaken(self.store.last_counter(supplier) or 0)
                # overtaken: redo under the lock (the counter cannot move now)
                self.redone += 1
                counter, chk = self._prepare(name, device, counter + 1)
            else:  # pragma: no cover - the lock is held: the second try has the counter
                raise RuntimeError("counter %d of %s refused under the write lock"
                                   % (counter, supplier))
            rid = str(duis.RequestID(bytes.fromhex(supplier), duis.DCC_EUI, counter))
            send = ("INSERT INTO campaign_sends (campaign, device, attempt, request_id, worker, "
                    "sent) VALUES (?, ?, ?, ?, ?, ?)", (name, device, attempt, rid,
                                                         self.worker, now))
            if code == "I99":
                mark = ("UPDATE campaign_devices SET state = 'sent', attempts = ?, "
                        "request_id = ?, next_at = NULL, claimed_by = NULL, claim_until = "
                        "NULL WHERE campaign = ? AND device = ?", (attempt, rid, name, device))
            else:  # refused by the DCC's rules: that is the device's outcome
                mark = ("UPDATE campaign_devices SET state = 'done', attempts = ?, "
                        "request_id = ?, ok = 0, outcome = 'refused', last_outcome = "
                        "'refused', code = ?, reason = ?, finished = ?, claimed_by = NULL, "
                        "claim_until = NULL WHERE campaign = ? AND device = ?",
                        (attempt, rid, code, reason, now, name, device))
            if self.store.postgres:  # one round trip under the lock, not two
                c.execute("WITH s AS (%s) %s" % (send[0], mark[0]), (*send[1], *mark[1]))
            else:
                c.execute(*send)
                c.execute(*mark)
        return True

    def _fixed(self, name: str) -> tuple[bytes, str, str, str, str]:
        """A campaign's image, Supplier, SR, version and certificate's SHA-256 (they never
        change), read once."""
        got = self._fixed_.get(name)
        if got is None:
            r = self.store.one("SELECT image, supplier, srv, version, signer_cert FROM "
                               "campaigns WHERE name = ?", (name,))
            if r is None:
                raise CampaignError("no campaign named %r" % name)
            got = self._fixed_[name] = (bytes(r[0]), r[1], r[2], r[3],
                                        cert_sha256(bytes(r[4])))
        return got


class _Overtaken(Exception):
    """A prepared request's counter is no longer above the Supplier's last (`last`)."""

    def __init__(self, last: int):
        super().__init__(last)
        self.last = last


def _pct(v: float) -> str:
    return "%g%%" % round(v * 100, 2)


class CampaignThread:
    """The campaign driver in a `dcc serve` worker: a thread with its own connection to the
    DCC's database, stepping every `poll` seconds until `stop()`, sending for the Suppliers
    whose keys are in `signers` (`--supplier-key`); with `response_timeout`,
    it also gives every request unanswered that long its outcome `no_response`
    (`Dcc.expire_requests`), campaigns or not."""

    def __init__(self, dcc: Any, *, signers: Iterable[Signer] = (), worker: str | None = None,
                 poll: float = 1.0, response_timeout: float | None = None,
                 campaigns: bool = True):
        from .pki import KeyStore
        from .service import Dcc

        st = dcc.store
        store = DccStore(st.uri if st.postgres else st.path)
        # (campaigns send SR 11.1 / 11.4 only: nothing of the DCC's SR 11.3 state is needed)
        mine = Dcc(store, KeyStore(dcc.keystore.path), (dcc.key, dcc.cert))
        self.driver = CampaignDriver(mine, signers=signers, worker=worker)
        self.poll = poll
        self.response_timeout = response_timeout
        self.campaigns = campaigns
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="campaigns", daemon=True)

    def start(self) -> "CampaignThread":
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            sent = 0
            if self.response_timeout:
                try:  # every request's deadline (dcc serve --response-timeout)
                    self.driver.dcc.expire_requests(self.response_timeout)
                except Exception:  # noqa: BLE001 - as a step's: logged, tried again
                    log.exception("response deadlines")
            if self.campaigns:
                try:
                    sent = self.driver.step()
                except Exception:  # a bug or a lost database must not end the worker; logged
                    log.exception("campaign step")
            if not sent:
                self._stop.wait(self.poll)

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        if self.campaigns:
            try:
                self.driver.leave()
            except Exception:  # noqa: BLE001 - the database is gone: the leases run out
                log.debug("signer leases not ended", exc_info=True)
        self.driver.store.close()


def iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds") \
        .replace("+00:00", "Z")
