"""Service requests: the rules applied when a Supplier submits one, and the image store.

Three requests, as GBCS names them:

- `update_firmware`: SR 11.4 for PPMIDs and Alt HAN devices (one request distributes the
  image and activates it at `activate_at`: on receipt, after a delay, or at a UTC time, via
  the Upgrade End Response); SR 11.1 for HCALCS (distribution only: the Upgrade End
  Response says "wait", activation is a later SR 11.3).
- `activate`: SR 11.3 (CS06) for HCALCS: the Activate Image command with the Manufacturer
  Image Hash and an optional execution time.
- `read_version`: SR 11.2 / CS08: read the device's CurrentFileVersion attribute.

Every submission is recorded, refused ones too, with the reason. Rules, in order:
not a Responsible Supplier of the device (per the registration data) -> not_authorized;
a device installed before OTA support -> ota_unsupported (update and activate); an Alt HAN
device after a Trust Centre Swap-Out -> ota_unavailable_after_tcso; an image whose header
does not fit the device -> image_mismatch or hw_version_mismatch, without any transfer.
An accepted request supersedes the device's pending request of the same kind.

Before any of that, the image file itself is checked (`check_image_file`): well formed, its
integrity code and its manufacturer image matching the descriptor's hash, and its signature
against the image keys the hub trusts (`set_image_keys`; the keys the devices pin) when it
has any. A file failing these raises ImageFormatError: nothing is stored, recorded or
superseded, so a tampered file can never replace a valid pending request.
"""
from __future__ import annotations

import json

import asyncio
import hashlib
import os
import re
import sqlite3
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Generator

from hanfw import otafile
from hanfw.roles import row as role_row

from .. import images
from ..errors import ImageFormatError
from .db import OUTCOMES, HubDB, HubError, HubUsageError, eui_text, version_text
from .registry import TCSO_REASON, device, responsible_suppliers, tcso_affected


@dataclass
class Submission:
    """What became of a submitted request: queued (outcome None) or refused (its outcome)."""

    id: int
    kind: str
    sr: str
    eui: str
    state: str
    outcome: str | None = None
    reason: str | None = None
    target_version: int | None = None
    superseded: list[int] = field(default_factory=list)

    @property
    def accepted(self) -> bool:
        return self.outcome is None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- times

_REL = re.compile(r"^\+(\d+(?:\.\d+)?)([smhd]?)$")


def parse_when(text: str | None, now: float | None = None) -> float | None:
    """An activation time: None or "now" -> None (on receipt); "+N[s|m|h|d]" -> now + N;
    an ISO 8601 time (UTC unless it names its offset) -> that Unix time."""
    if text is None or text.strip().lower() in ("", "now", "0"):
        return None
    now = time.time() if now is None else now
    t = text.strip()
    m = _REL.match(t)
    if m:
        return now + float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[
            m.group(2)]
    try:
        dt = datetime.fromisoformat(t.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise HubUsageError("time %r: use now, +SECONDS (or +Nm, +Nh) or an ISO UTC time "
                            "like 2030-01-31T02:00:00Z" % text, reason="bad-time") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


# ---------------------------------------------------------------- image store

def image_keys(db: HubDB) -> list[bytes]:
    """The image signing keys (65-byte P-256 points) the hub checks submitted files against."""
    text = db.get_meta("image_keys") or ""
    return [bytes.fromhex(k) for k in text.split(",") if k]


def set_image_keys(db: HubDB, keys: list[bytes]) -> None:
    """Trust these image signing keys (the ones the devices pin); [] trusts none, and then
    a file's signature is not checked at submission (the device still checks it)."""
    for k in keys:
        if len(k) != 65 or k[0] != 4:
            raise HubUsageError("an image key is an uncompressed P-256 point (65 bytes, 04...)",
                                reason="bad-key")
    db.set_meta("image_keys", ",".join(bytes(k).hex() for k in keys) or None)


def check_image_file(db: HubDB, path: str | os.PathLike, pubkeys: list[bytes] = ()) -> None:
    """What a device would find wrong with the file itself, checked before the hub stores
    it or lets it supersede anything: ImageFormatError (reason: the parser's, or
    "payload-hash", "bad-signature", "unknown-key") names the problem. The signature is
    checked against `pubkeys` and the hub's trusted image keys, when there are any."""
    s = images.parse_file(path)
    try:
        s.check_integrity()
        # (a compressed or delta body is checked segment by segment against the descriptor's
        # chain as it is parsed; its hash is the decoded target's, which the device checks)
        if s.descriptor is not None and not s.descriptor.encoded \
                and s.descriptor.image_hash != s.image_sha256:
            raise otafile.OtaError("payload-hash", "the manufacturer image does not have the "
                                   "SHA-256 its descriptor gives: the file is tampered")
        keys = list(pubkeys) + image_keys(db)
        if keys:
            otafile.check_signed(s, keys)
    except otafile.OtaError as e:
        raise ImageFormatError("%s: %s" % (path, e.message), reason=e.reason) from None


def store_image(db: HubDB, path: str | os.PathLike, images_dir: str | os.PathLike | None = None
                ) -> sqlite3.Row:
    """Parse an upgrade file and keep a content-addressed copy (<sha256>.ota) in the hub's
    image store; returns its `images` row. ImageFormatError if it is not an OTA file."""
    info = images.parse_file(path)
    h = info.header
    digest = info.descriptor.image_hash if info.descriptor is not None else info.image_sha256
    with open(path, "rb") as f:
        data = f.read()
    sha = hashlib.sha256(data).hexdigest()
    store = Path(images_dir) if images_dir is not None else db.images_dir()
    dest = store / (sha + ".ota")
    try:
        store.mkdir(parents=True, exist_ok=True)
        if not dest.exists() or dest.stat().st_size != len(data):
            fd, tmp = tempfile.mkstemp(dir=store, prefix=".in-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dest)
    except OSError as e:
        raise HubError("cannot store the image in %s: %s" % (store, e), reason="image-store") \
            from None
    with db.tx() as c:
        c.execute("INSERT INTO images (sha256, path, manufacturer, image_type, file_version, "
                  "size, image_hash, min_hw, max_hw, destination, added) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                  "ON CONFLICT (sha256) DO UPDATE SET path = excluded.path",
                  (sha, str(dest.resolve()), h.manufacturer, h.image_type, h.file_version,
                   h.total_size, digest.hex() if digest else None, h.min_hw, h.max_hw,
                   eui_text(h.destination) if h.destination is not None else None, db.now()))
    return db.one("SELECT * FROM images WHERE sha256 = ?", (sha,))


def _image_refusal(img: sqlite3.Row, dev: sqlite3.Row) -> tuple[str, str] | None:
    if img["destination"] is not None and img["destination"] != dev["eui"]:
        return ("image_mismatch", "the image is for device %s, not %s"
                % (img["destination"], dev["eui"]))
    if (img["manufacturer"], img["image_type"]) != (dev["manufacturer"], dev["image_type"]):
        return ("image_mismatch", "the image is for manufacturer 0x%04x image type 0x%04x; the "
                "device is 0x%04x / 0x%04x" % (img["manufacturer"], img["image_type"],
                                               dev["manufacturer"], dev["image_type"]))
    if img["min_hw"] is not None and dev["hw_version"] is not None \
            and not img["min_hw"] <= dev["hw_version"] <= img["max_hw"]:
        return ("hw_version_mismatch", "device hardware version 0x%04x is outside the image's "
                "range 0x%04x..0x%04x" % (dev["hw_version"], img["min_hw"], img["max_hw"]))
    return None


# ---------------------------------------------------------------- rules

def _refusal(db: HubDB, dev: sqlite3.Row | None, eui: str, supplier: str,
             kind: str) -> tuple[str, str] | None:
    if dev is None:
        return ("not_authorized", "device %s is not in the registry, so it has no Responsible "
                "Supplier" % eui)
    allowed = responsible_suppliers(db, eui)
    if supplier not in allowed:
        who = (" and ".join(allowed) if allowed else "none recorded")
        return ("not_authorized", "%s is not a Responsible Supplier of device %s (premises %s: "
                "%s)" % (supplier, eui, dev["mpxn"], who))
    if kind != "read_version" and not dev["ota_supported"]:
        return ("ota_unsupported", "device %s was installed before OTA support: its firmware "
                "cannot be updated over the air" % eui)
    hub = db.current_hub()
    if tcso_affected(dev, hub["eui"]):
        return ("ota_unavailable_after_tcso", TCSO_REASON % (dev["joined_hub"], hub["eui"]))
    return None


def _record(db: HubDB, *, kind: str, sr: str, eui: str, dev: sqlite3.Row | None,
            supplier: str, refusal: tuple[str, str] | None, image: str | None = None,
            target_version: int | None = None, image_hash: str | None = None,
            activate_at: float | None = None,
            ends_as: tuple[str, str] | None = None) -> Submission:
    """Record a request; a pending one of the same kind for the device ends as superseded
    (or as `ends_as`: (outcome, reason), a GBCS cancellation's "cancelled")."""
    now = db.now()
    with db.tx() as c:
        rid = c.execute("SELECT coalesce(max(id), 0) + 1 FROM requests").fetchone()[0]
        superseded = []
        if refusal is None:
            for old in c.execute("SELECT id FROM requests WHERE eui = ? AND kind = ? "
                                 "AND outcome IS NULL", (eui, kind)).fetchall():
                outcome, why = ends_as or ("superseded", "superseded by request #%d")
                db.finish(old[0], outcome, why % rid if "%d" in why else why)
                superseded.append(old[0])
        outcome, reason = refusal if refusal else (None, None)
        c.execute("INSERT INTO requests (id, kind, sr, eui, role, supplier, image, "
                  "target_version, image_hash, activate_at, state, next_attempt, created, "
                  "updated, finished, outcome, reason) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                  (rid, kind, sr, eui, dev["role"] if dev is not None else None, supplier,
                   image, target_version, image_hash, activate_at,
                   "done" if refusal else "queued", None if refusal else now, now, now,
                   now if refusal else None, outcome, reason))
        db.event("submitted", eui, rid, sr=sr, supplier=supplier,
                 target_version=target_version, superseded=superseded)
        if refusal:
            db.event("outcome", eui, rid, outcome=outcome, reason=reason, result=None)
        else:
            db.event("queued", eui, rid)
    return Submission(rid, kind, sr, eui, "done" if refusal else "queued", outcome, reason,
                      target_version, superseded)


def update_firmware(db: HubDB, eui: str | bytes, image_path: str | os.PathLike, supplier: str,
                    activate_at: float | None = None, *,
                    images_dir: str | os.PathLike | None = None,
                    pubkeys: list[bytes] = ()) -> Submission:
    """Submit SR 11.4 (ppmid, althan: distribute and activate at activate_at, a Unix time or
    None for on receipt) or SR 11.1 (hcalcs: distribute only). The file is checked first
    (`check_image_file`, with `pubkeys`: the keys the device pins): a tampered file raises
    ImageFormatError and changes nothing."""
    e = eui_text(eui)
    dev = device(db, e)
    by_command = dev is not None and role_row(dev["role"])[3] == "command"
    if by_command and activate_at is not None:
        raise HubUsageError("HCALCS firmware is distributed by SR 11.1 and activated by a "
                            "separate SR 11.3 (hanota request activate); drop --activate-at",
                            reason="bad-argument")
    check_image_file(db, image_path, pubkeys)  # before anything is stored or superseded
    img = store_image(db, image_path, images_dir)
    refusal = _refusal(db, dev, e, supplier, "update")
    if refusal is None:
        refusal = _image_refusal(img, dev)
    sr = "11.1" if by_command else "11.4"
    return _record(db, kind="update", sr=sr, eui=e, dev=dev, supplier=supplier,
                   refusal=refusal, image=img["sha256"], target_version=img["file_version"],
                   image_hash=img["image_hash"], activate_at=activate_at)


def activate(db: HubDB, eui: str | bytes, image_hash: str | bytes, supplier: str,
             at: float | None = None, *, ends_as: tuple[str, str] | None = None,
             refuse: tuple[str, str] | None = None) -> Submission:
    """Submit SR 11.3 (HCALCS): activate the image the device holds if its Manufacturer
    Image Hash is image_hash, at Unix time `at` (None: now). `ends_as`: how a pending one
    ends (superseded); `refuse`: (outcome, reason) to record it as refused at once, unless
    a rule refuses it first."""
    e = eui_text(eui)
    if isinstance(image_hash, (bytes, bytearray)):
        hx = bytes(image_hash).hex()
    else:
        hx = image_hash.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", hx):
        raise HubUsageError("the Manufacturer Image Hash is 64 hex digits (SHA-256)",
                            reason="bad-hash")
    dev = device(db, e)
    if dev is not None and role_row(dev["role"])[3] != "command":
        raise HubUsageError("SR 11.3 activates HCALCS firmware; a %s activates as part of SR "
                            "11.4 (hanota request update-firmware --activate-at)" % dev["role"],
                            reason="bad-argument")
    refusal = _refusal(db, dev, e, supplier, "activate") or refuse
    target = None
    if dev is not None:
        row = db.one("SELECT file_version FROM images WHERE image_hash = ? AND manufacturer = ? "
                     "AND image_type = ? ORDER BY added DESC", (hx, dev["manufacturer"],
                                                               dev["image_type"]))
        target = row[0] if row is not None else None
    return _record(db, kind="activate", sr="11.3", eui=e, dev=dev, supplier=supplier,
                   refusal=refusal, target_version=target, image_hash=hx, activate_at=at,
                   ends_as=ends_as)


def activate_gbcs(db: HubDB, eui: str | bytes, data: bytes, supplier: str) -> Submission:
    """Submit SR 11.3 as GBCS: `data` is a CS06 the Supplier signed and the DCC MAC'd, relayed
    to the device as it is (ZCL 0xF3) at its execution time (less the hub's activation lead),
    kept as meta gbcs.<request id>. A cancellation (execution time 99991231235959Z) ends the
    pending activation as cancelled and is relayed at once (meta gbcs.cancel.<id>: what it
    ended, and whether that had reached the device). HubUsageError unless it is a CS06
    command."""
    from datetime import datetime, timezone

    from hanfw import gbcs

    try:
        m = gbcs.decode(bytes(data))
    except gbcs.GbcsError as e:
        raise HubUsageError("not a GBCS message: %s" % e, reason="bad-argument") from None
    if m.kind != "cs06-command":
        raise HubUsageError("the Comms Hub relays GBCS CS06 commands only, not %s"
                            % m.describe(), reason="bad-argument")
    t = m.fields["execution_date_time"]
    at = None
    if t is not None and t != gbcs.CANCEL_TIME:
        at = datetime.strptime(t, "%Y%m%d%H%M%SZ").replace(tzinfo=timezone.utc).timestamp()
    with db.tx():
        ends_as, ended, refuse = None, None, None
        if t == gbcs.CANCEL_TIME:
            # A cancellation (execution time 99991231235959Z): the pending activation ends as
            # cancelled; one still queued here never reaches the device, one the device holds
            # is removed there by this CS06 (relayed at once: hub.Hub._gbcs)
            pending = db.all("SELECT id, state FROM requests WHERE eui = ? AND kind = "
                             "'activate' AND outcome IS NULL", (eui_text(eui),))
            ended = {"ended": [r["id"] for r in pending],
                     "at_device": any(r["state"] != "queued" for r in pending)}
            ends_as = ("cancelled", "cancelled by a GBCS CS06 cancellation (request #%d)")
            actioned = [r["id"] for r in pending if db.one(
                "SELECT 1 FROM events WHERE request_id = ? AND kind = 'gbcs_alert'",
                (r["id"],))]
            if actioned:  # its 8F66 came: the device acts on it, too late to cancel
                refuse = ("not_cancelled", "the future-dated activation (request #%d) was "
                          "actioned already (the device alerted 8F66)" % actioned[0])
        sub = activate(db, eui, m.fields["manufacturer_image_hash"], supplier, at,
                       ends_as=ends_as, refuse=refuse)
        db.set_meta("gbcs.%d" % sub.id, bytes(data).hex())
        if ended is not None and sub.outcome is None:
            db.set_meta("gbcs.cancel.%d" % sub.id, json.dumps(ended))
    return sub


def read_version(db: HubDB, eui: str | bytes, supplier: str) -> Submission:
    """Submit SR 11.2 / CS08: read the device's running firmware version."""
    e = eui_text(eui)
    dev = device(db, e)
    refusal = _refusal(db, dev, e, supplier, "read_version")
    return _record(db, kind="read_version", sr="11.2", eui=e, dev=dev, supplier=supplier,
                   refusal=refusal)


# ---------------------------------------------------------------- reading back

def request_dict(row: sqlite3.Row) -> dict[str, Any]:
    """A request row as a JSON-ready dict (times as Unix seconds and ISO UTC)."""
    d = dict(row)
    for k in ("created", "started", "finished", "activate_at", "next_attempt", "deadline"):
        d[k + "_iso"] = iso(d.get(k))
    d["target_version_hex"] = version_text(d.get("target_version"))
    if d.get("kind") == "read_version" and d.get("result") is not None:
        d["result_hex"] = version_text(d["result"])
    d["percent"] = (round(100.0 * d["offset"] / d["size"], 1) if d.get("size") else None)
    d["outcome_text"] = OUTCOMES.get(d["outcome"]) if d.get("outcome") else None
    return d


SERVE_HINT = "; is hanota serve running?"  # said when the serving hub is another process


def outcome_polls(db: HubDB, request_id: int, timeout: float, poll: float,
                  hint: str = "") -> Generator[float, None, sqlite3.Row]:
    """The one wait-for-an-outcome loop, shared by the blocking and the asyncio waits: it
    yields how long to sleep before looking again and returns the request's row once it has
    its outcome. HubUsageError for an unknown request; HubError (reason "timeout") when
    `timeout` seconds pass first (`hint` ends that message)."""
    deadline = time.monotonic() + timeout
    while True:
        row = db.request(request_id)
        if row is None:
            raise HubUsageError("no request #%d" % request_id, reason="unknown-request")
        if row["outcome"] is not None:
            return row
        if time.monotonic() >= deadline:
            raise HubError("request #%d has no outcome after %g s (state %s)%s"
                           % (request_id, timeout, row["state"], hint), reason="timeout")
        yield poll


def wait_for_outcome(db: HubDB, request_id: int, timeout: float, poll: float = 0.2,
                     hint: str = SERVE_HINT) -> sqlite3.Row:
    """Block (polling the database) until the request has its outcome; see outcome_polls."""
    polls = outcome_polls(db, request_id, timeout, poll, hint)
    while True:
        try:
            pause = next(polls)
        except StopIteration as done:
            return done.value
        time.sleep(pause)


async def await_outcome(db: HubDB, request_id: int, timeout: float, poll: float = 0.05,
                        hint: str = "") -> sqlite3.Row:
    """wait_for_outcome for a caller on the event loop (the hub's own process)."""
    polls = outcome_polls(db, request_id, timeout, poll, hint)
    while True:
        try:
            pause = next(polls)
        except StopIteration as done:
            return done.value
        await asyncio.sleep(pause)
