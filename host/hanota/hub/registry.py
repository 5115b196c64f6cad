"""The hub's registry: devices, premises and their Responsible Suppliers, the hub identity.

The registration data decides who may send service requests for a device: the one or two
Responsible Suppliers of its premises (two in dual-Supplier premises; either may).
A device carries what the hub needs to serve it: role, manufacturer code, image type,
hardware version, install code (its link key derives from it), whether it supports OTA at
all (devices installed before OTA support do not), and what the hub last heard of it.

A Trust Centre Swap-Out (`swap_out`) gives the hub a new identity (EUI-64 and a fresh frame
counter space). Devices must rejoin it: PPMIDs and HCALCS do; Alt HAN devices that were
joined to an earlier hub cannot, so their requests end "OTA unavailable after TCSO".
"""
from __future__ import annotations

import sqlite3
from typing import Any

from .. import images
from .db import (IN_SLOT, ROLES, HubDB, HubUsageError, check_install_code, eui_text,
                 new_hub_eui)

TCSO_REASON = ("Trust Centre Swap-Out: hub %s replaced by %s; an Alt HAN device cannot rejoin "
               "the new hub, so OTA firmware cannot reach it")


def _mpxn(text: str) -> str:
    t = text.strip()
    if not t or len(t) > 64 or not t.replace("-", "").replace("_", "").isalnum():
        raise HubUsageError("MPxN %r: use 1-64 letters, digits, '-' or '_'" % text,
                            reason="bad-mpxn")
    return t


def _supplier(text: str) -> str:
    t = text.strip()
    if not t or len(t) > 64:
        raise HubUsageError("supplier name %r: 1-64 characters" % text, reason="bad-supplier")
    return t


def ensure_premises(db: HubDB, mpxn: str) -> str:
    """Create premises (without suppliers) if they are new; returns the MPxN."""
    m = _mpxn(mpxn)
    with db.tx() as c:
        if c.execute("SELECT 1 FROM premises WHERE mpxn = ?", (m,)).fetchone() is None:
            c.execute("INSERT INTO premises (mpxn, created) VALUES (?, ?)", (m, db.now()))
            db.event("premises_added", mpxn=m)
    return m


def set_suppliers(db: HubDB, mpxn: str, suppliers: list[str]) -> list[str]:
    """Record the one or two Responsible Suppliers of premises (created if new)."""
    names = [_supplier(s) for s in suppliers]
    if not 1 <= len(names) <= 2:
        raise HubUsageError("premises have one Responsible Supplier, or two in dual-Supplier "
                            "premises; got %d" % len(names), reason="bad-supplier")
    if len(names) == 2 and names[0] == names[1]:
        raise HubUsageError("the two Responsible Suppliers must differ", reason="bad-supplier")
    with db.tx() as c:
        m = ensure_premises(db, mpxn)
        c.execute("UPDATE premises SET supplier1 = ?, supplier2 = ? WHERE mpxn = ?",
                  (names[0], names[1] if len(names) > 1 else None, m))
        db.event("suppliers_set", mpxn=m, suppliers=names)
    return names


def add_device(db: HubDB, eui: str | bytes, role: str, install_code: str, premises: str, *,
               hw_version: int | None = None, manufacturer: int = images.DEFAULT_MANUFACTURER,
               image_type: int | None = None, ota_supported: bool = True) -> sqlite3.Row:
    """Register a device (its premises are created if new). HubUsageError if it exists."""
    e = eui_text(eui)
    if role not in ROLES:
        raise HubUsageError("unknown role %r (%s)" % (role, ", ".join(ROLES)), reason="bad-role")
    code = check_install_code(install_code)
    itype = images.ROLE_IMAGE_TYPES[role] if image_type is None else image_type
    for name, v, bits in (("manufacturer", manufacturer, 16), ("image type", itype, 16),
                          ("hardware version", hw_version, 16)):
        if v is not None and not 0 <= v < 1 << bits:
            raise HubUsageError("%s %r out of range" % (name, v), reason="bad-argument")
    with db.tx() as c:
        if c.execute("SELECT 1 FROM devices WHERE eui = ?", (e,)).fetchone() is not None:
            raise HubUsageError("device %s is already registered" % e, reason="exists")
        m = ensure_premises(db, premises)
        c.execute("INSERT INTO devices (eui, role, manufacturer, image_type, hw_version, "
                  "install_code, ota_supported, mpxn, added) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                  (e, role, manufacturer, itype, hw_version, code, int(ota_supported), m,
                   db.now()))
        db.event("device_added", e, role=role, mpxn=m, ota_supported=bool(ota_supported))
    return device(db, e)


def remove_device(db: HubDB, eui: str | bytes) -> None:
    """Remove a device from the registry (refused while it has pending requests)."""
    e = eui_text(eui)
    with db.tx() as c:
        if device(db, e) is None:
            raise HubUsageError("device %s is not registered" % e, reason="unknown-device")
        pending = [r[0] for r in c.execute(
            "SELECT id FROM requests WHERE eui = ? AND outcome IS NULL", (e,))]
        if pending:
            raise HubUsageError("device %s has pending request(s) %s; wait for their outcome"
                                % (e, ", ".join("#%d" % i for i in pending)), reason="pending")
        c.execute("DELETE FROM devices WHERE eui = ?", (e,))
        db.event("device_removed", e)


def device(db: HubDB, eui: str | bytes) -> sqlite3.Row | None:
    return db.one("SELECT * FROM devices WHERE eui = ?", (eui_text(eui),))


def responsible_suppliers(db: HubDB, eui: str | bytes) -> list[str]:
    """The Responsible Suppliers of a device per the registration data ([] if none)."""
    row = db.one("SELECT p.supplier1, p.supplier2 FROM devices d JOIN premises p "
                 "ON p.mpxn = d.mpxn WHERE d.eui = ?", (eui_text(eui),))
    if row is None:
        return []
    return [s for s in (row[0], row[1]) if s]


def tcso_affected(dev: sqlite3.Row, hub_eui: str) -> bool:
    """An Alt HAN device joined to an earlier hub: after the swap-out it cannot rejoin."""
    return dev["role"] == "althan" and dev["joined_hub"] is not None \
        and dev["joined_hub"] != hub_eui


def list_devices(db: HubDB) -> list[dict[str, Any]]:
    """Every device with its premises' suppliers and whether it is joined to the current hub."""
    hub = db.current_hub()["eui"]
    out = []
    for r in db.all("SELECT d.*, p.supplier1, p.supplier2 FROM devices d "
                    "JOIN premises p ON p.mpxn = d.mpxn ORDER BY d.mpxn, d.eui"):
        out.append({
            "eui": r["eui"], "role": r["role"], "premises": r["mpxn"],
            "suppliers": [s for s in (r["supplier1"], r["supplier2"]) if s],
            "manufacturer": r["manufacturer"], "image_type": r["image_type"],
            "hw_version": r["hw_version"], "ota_supported": bool(r["ota_supported"]),
            "joined": r["joined_hub"] == hub, "joined_hub": r["joined_hub"],
            "tcso_affected": tcso_affected(r, hub),
            "running_version": r["running_version"], "last_seen": r["last_seen"],
        })
    return out


def list_premises(db: HubDB) -> list[dict[str, Any]]:
    return [{"mpxn": r["mpxn"], "suppliers": [s for s in (r["supplier1"], r["supplier2"]) if s],
             "devices": r["n"]}
            for r in db.all("SELECT p.*, (SELECT count(*) FROM devices d WHERE d.mpxn = p.mpxn) "
                            "AS n FROM premises p ORDER BY p.mpxn")]


# ---------------------------------------------------------------- hub identity

def hub_info(db: HubDB) -> dict[str, Any]:
    """The current hub identity and the ones it replaced."""
    rows = db.all("SELECT * FROM hubs ORDER BY id")
    cur = [r for r in rows if r["retired"] is None][0]
    return {"eui": cur["eui"], "since": cur["created"], "counter": cur["counter"],
            "generation": len(rows),
            "previous": [{"eui": r["eui"], "from": r["created"], "retired": r["retired"]}
                         for r in rows if r["retired"] is not None]}


def swap_out(db: HubDB, new_eui: str | bytes | None = None) -> dict[str, Any]:
    """Trust Centre Swap-Out: the hub is replaced by one with a new identity.

    The new hub has a new EUI-64 (random unless given) and a new frame counter space.
    Every device must rejoin it. Pending requests of Alt HAN devices joined to an earlier
    hub end "ota_unavailable_after_tcso"; transfers in progress to other devices go back to
    the queue (the new hub has no transfer state) and resume once the device has rejoined.
    A running `hanota serve` notices the new identity and restarts its server with it.
    """
    with db.tx() as c:
        old = db.current_hub()["eui"]
        new = eui_text(new_eui) if new_eui is not None else new_hub_eui()
        if c.execute("SELECT 1 FROM hubs WHERE eui = ?", (new,)).fetchone() is not None:
            raise HubUsageError("hub EUI %s was already used" % new, reason="exists")
        now = db.now()
        c.execute("UPDATE hubs SET retired = ? WHERE retired IS NULL", (now,))
        c.execute("INSERT INTO hubs (eui, created) VALUES (?, ?)", (new, now))
        db.event("swap_out", old=old, new=new)
        unavailable, requeued = [], []
        for r in c.execute("SELECT r.id, r.state, d.role, d.joined_hub FROM requests r "
                           "LEFT JOIN devices d ON d.eui = r.eui "
                           "WHERE r.outcome IS NULL ORDER BY r.id").fetchall():
            if r["role"] == "althan" and r["joined_hub"] is not None:
                db.finish(r["id"], "ota_unavailable_after_tcso", TCSO_REASON % (old, new))
                unavailable.append(r["id"])
            elif r["state"] in IN_SLOT or r["state"] == "running":
                db.set_state(r["id"], "queued", "requeued",
                             {"reason": "Trust Centre Swap-Out: transfer state lost"},
                             next_attempt=now, deadline=None, offset=0)
                requeued.append(r["id"])
    return {"old": old, "new": new, "unavailable": unavailable, "requeued": requeued}
