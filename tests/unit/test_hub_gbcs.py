"""The Comms Hub's records of SR 11.3 as GBCS (issue 13): a CS06 cancellation ends the
pending activation as cancelled (not superseded), and a hub database made before the
cancellation's outcomes existed takes them (its requests.outcome CHECK widened in place,
nothing stored lost)."""
from __future__ import annotations

import hashlib
import json
import sqlite3

import pytest

from hanfw import gbcs
from hanota.hub import HubDB
from hanota.hub import db as hubdb
from hanota.hub import requests as rq
from support.hubfixtures import SUPPLIER, register

pytestmark = pytest.mark.timeout(30)

IMG = hashlib.sha256(b"held").digest()
SUP = bytes.fromhex("90B3D51F3001A001")


def cs06(dev_eui: str, counter: int, at: str | None) -> bytes:
    """A CS06 as the DCC relays it (signature and MAC are the device's business, not the
    Comms Hub's: placeholders here)."""
    m = gbcs.cs06_command(counter, SUP, bytes.fromhex(dev_eui.replace(":", "")), IMG, at)
    m.signature = bytes(64)
    m.mac = bytes(12)
    return m.encode()


def test_a_cancellation_ends_the_pending_activation_as_cancelled(db):
    e = register(db, 1, role="hcalcs")
    fd = rq.activate_gbcs(db, e, cs06(e, 10, "20991231120000Z"), SUPPLIER)
    assert fd.accepted and db.request(fd.id)["state"] == "queued"
    c = rq.activate_gbcs(db, e, cs06(e, 11, gbcs.CANCEL_TIME), SUPPLIER)
    assert c.accepted and c.superseded == [fd.id]
    row = db.request(fd.id)
    assert row["outcome"] == "cancelled" and "request #%d" % c.id in row["reason"]
    # what the hub knows for the device's answer: the one ended was never sent to the device
    assert json.loads(db.get_meta("gbcs.cancel.%d" % c.id)) == {"ended": [fd.id],
                                                                "at_device": False}
    assert db.get_meta("gbcs.cancel.%d" % fd.id) is None
    # an immediate CS06 supersedes as before
    a = rq.activate_gbcs(db, e, cs06(e, 12, None), SUPPLIER)
    assert db.request(c.id)["outcome"] == "superseded" and a.accepted


def test_a_cancellation_after_the_8f66_is_not_cancelled_and_ends_nothing(db):
    e = register(db, 1, role="hcalcs")
    fd = rq.activate_gbcs(db, e, cs06(e, 10, "20991231120000Z"), SUPPLIER)
    db.update_request(fd.id, state="activating")
    db.event("gbcs_alert", e, fd.id, alert_code="8F66", response_code=0)  # it was actioned
    c = rq.activate_gbcs(db, e, cs06(e, 11, gbcs.CANCEL_TIME), SUPPLIER)
    assert (c.outcome, c.superseded) == ("not_cancelled", [])
    assert "actioned already" in c.reason and "#%d" % fd.id in c.reason
    assert db.request(fd.id)["outcome"] is None  # it ends by its Activation Alert
    assert db.get_meta("gbcs.cancel.%d" % c.id) is None


def test_an_older_hub_database_takes_the_new_outcomes(tmp_path):
    path = tmp_path / "hub.db"
    d = HubDB.open(path)
    e = register(d, 1, role="hcalcs")
    done = rq.activate_gbcs(d, e, cs06(e, 1, None), "Nobody")  # refused: not_authorized
    d.close()
    # the table as a hanota before the cancellation outcomes made it
    conn = sqlite3.connect(path, isolation_level=None)
    sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'requests'").fetchone()[0]
    old = sql.replace(", 'cancelled', 'not_cancelled'", "")
    assert old != sql
    v = conn.execute("PRAGMA schema_version").fetchone()[0]
    conn.execute("PRAGMA writable_schema = ON")
    conn.execute("UPDATE sqlite_master SET sql = ? WHERE name = 'requests'", (old,))
    conn.execute("PRAGMA schema_version = %d" % (v + 1))
    conn.execute("PRAGMA writable_schema = OFF")
    conn.close()
    d = HubDB.open(path)
    try:
        assert d.one("PRAGMA integrity_check")[0] == "ok"
        assert d.request(done.id)["outcome"] == "not_authorized"  # kept
        fd = rq.activate_gbcs(d, e, cs06(e, 2, "20991231120000Z"), SUPPLIER)
        rq.activate_gbcs(d, e, cs06(e, 3, gbcs.CANCEL_TIME), SUPPLIER)
        assert d.request(fd.id)["outcome"] == "cancelled"
        with pytest.raises(ValueError):
            d.finish(fd.id + 1, "no-such-outcome")
        with pytest.raises(sqlite3.IntegrityError):  # the CHECK is still there
            with d.tx() as c:
                c.execute("UPDATE requests SET state = 'done', outcome = 'bogus', finished = 1 "
                          "WHERE id = ?", (fd.id + 1,))
    finally:
        d.close()
    assert set(hubdb.OUTCOMES) >= {"cancelled", "not_cancelled"}
