"""GBCS CS06 on a virtual HCALCS (vboard-nrf52840: the real device code in the MicroPython unix
port over emulated flash, its 64 KiB heap, a UART to the hub): deployed with the Supplier's DS
certificate and the ACB's KA certificate (`board deploy --supplier-cert/--acb-cert`), SR 11.1
distributes, then CS06 commands the Supplier signs and the DCC MACs (hanota.dcc.precommand,
with the device's KA public key from its deploy) are relayed by the hub (ZCL 0xF3). Each bad
one is refused by the board with its named reason (wrong hash, another Supplier's key, another
device, a flipped MAC byte, a replayed counter) and the held image stays; the Comms Hub refuses
what is not a CS06 at all (truncated, unknown message code); then the good one activates V2,
and replaying it after is refused. Future-dated: the board waits for the time by the hub's
clock and alerts 8F66 (0xF4, unasked), which the hub puts on the request; a cancellation
removes a pending one."""
from __future__ import annotations

import json
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

import pytest

from hanfw import gbcs
from hanota import deploy, fwbuild, images
from hanota.dcc import duis, pki, precommand
from hanota.hub import HubDB
from hanota.hub import registry as reg
from hanota.hub import requests as rq
from hanota.hub.db import HubUsageError
from hanota.keys import generate_keys, load_private_key
from support.hubfixtures import HubInThread, fast_options, wait_outcome

pytestmark = pytest.mark.timeout(300)

V1, V2 = 0x00010000, 0x00020000
FAST = {"query_interval": 1, "health_timeout": 20, "block_timeout_ms": 800}
SUP = "Elec Co"


@contextmanager
def gbcs_hcalcs(vboards, tmp_path):
    """A GBCS-commissioned virtual HCALCS holding V2 (SR 11.1 done) behind a hub in a thread:
    yields (hub database, the deploy result, cs06(counter, h, recipient, signer, code, at):
    a CS06 the Supplier signed and the DCC MAC'd for it, refused(data, outcome, why))."""
    kind = "vboard-nrf52840"
    generate_keys(tmp_path / "keys")
    pkidir = tmp_path / "pki"
    pki.init(pkidir)
    p2 = fwbuild.build(kind, "2.0.0", tmp_path / "p2")
    db = HubDB.open(tmp_path / "hub.db")
    hub = HubInThread(db.path, udp=("127.0.0.1", 0),
                      options=fast_options(request_timeout=20.0, request_retries=1, retry={
                          "answer_timeout": 30, "stall_window": 30, "activation_timeout": 60}))
    try:
        b = vboards(kind)
        hub.attach_serial(b.info.link)
        b.console.wait_ready(15)
        res = deploy.deploy(b.console.pty_path, kind, "hcalcs", [tmp_path / "keys" / "public.bin"],
                            version=V1, settings=FAST,
                            supplier_cert=(pkidir / "supplier-a.ds.cert.pem").read_bytes(),
                            acb_cert=(pkidir / "acb.ka.cert.pem").read_bytes())
        assert res.supplier_id == pki.ORGS["supplier-a"][1].hex().upper()
        reg.set_suppliers(db, "MPAN-VB", [SUP])
        reg.add_device(db, res.eui64, "hcalcs", res.install_code, "MPAN-VB")
        f = tmp_path / "v2.ota"
        f.write_bytes(images.build_image(p2["app"].read_bytes(), version=V2, role="hcalcs",
                                         key=load_private_key(tmp_path / "keys" / "private.pem")))
        row = wait_outcome(db, rq.update_firmware(db, res.eui64, f, SUP).id)
        assert (row["outcome"], row["result"]) == ("distributed", V2)
        held = bytes.fromhex(row["image_hash"])

        dev = bytes.fromhex(res.eui64.replace(":", ""))
        acb = pki.load_key((pkidir / "acb.ka.key.pem").read_bytes())

        def cs06(counter, h=held, recipient=dev, signer="supplier-a", code=None, at=None,
                 cancel=False):
            rid = duis.RequestID(pki.ORGS["supplier-a"][1], recipient, counter)
            m = gbcs.decode(precommand.precommand(rid, h, at, cancel))
            if code is not None:
                m.message_code = code
            pre = m.precommand()
            key = pki.load_key((pkidir / ("%s.ds.key.pem" % signer)).read_bytes())
            return precommand.add_mac(precommand.sign(pre, key), acb, bytes.fromhex(res.ka_public))

        def refused(data, outcome, why):
            r = wait_outcome(db, rq.activate_gbcs(db, res.eui64, data, SUP).id)
            assert r["outcome"] == outcome and why in r["reason"], dict(r)

        yield db, res, cs06, refused
    finally:
        hub.stop()
        db.close()


def test_hcalcs_checks_gbcs_cs06(vboards, tmp_path):
    with gbcs_hcalcs(vboards, tmp_path) as (db, res, cs06, refused):
        flipped = bytearray(cs06(13))
        flipped[-3] ^= 0x10  # inside the MAC
        refused(cs06(10, h=bytes(32)), "hash_mismatch", "hash-mismatch")
        refused(cs06(11, signer="supplier-b"), "activation_failed", "bad-signature")
        refused(cs06(12, recipient=bytes(8)), "activation_failed", "wrong-recipient")
        refused(bytes(flipped), "activation_failed", "bad-mac")
        refused(cs06(10), "activation_failed", "replayed-counter")  # 10 was authentic
        for bad in (cs06(14)[:-20], cs06(15, code=0x00B3)):
            with pytest.raises(HubUsageError):
                rq.activate_gbcs(db, res.eui64, bad, SUP)
        good = cs06(20)
        row = wait_outcome(db, rq.activate_gbcs(db, res.eui64, good, SUP).id)
        assert (row["outcome"], row["result"]) == ("activated", V2), dict(row)
        refused(good, "activation_failed", "replayed-counter")
        read = wait_outcome(db, rq.read_version(db, res.eui64, SUP).id)
        assert (read["outcome"], read["result"]) == ("version_read", V2)


def test_hcalcs_future_dated_cs06_alerts_8f66_and_a_cancellation_removes_one(vboards, tmp_path):
    """The board's own clock from the hub: a future-dated CS06 waits, a cancellation removes
    it (no alert, no activation at its time), the next future-dated one alerts 8F66 at its
    time and activates V2; the hub puts the 8F66 on that request."""
    with gbcs_hcalcs(vboards, tmp_path) as (db, res, cs06, refused):
        def gbcs_alerts():
            return [(e["request_id"], json.loads(e["detail"])) for e in db.all(
                "SELECT * FROM events WHERE kind = 'gbcs_alert' ORDER BY id")]

        now = datetime.now(timezone.utc).replace(microsecond=0)
        first = rq.activate_gbcs(db, res.eui64, cs06(30, at=now + timedelta(seconds=6)), SUP)
        deadline = time.monotonic() + 60
        while db.request(first.id)["state"] != "activating":  # the board accepted it
            assert db.request(first.id)["outcome"] is None, dict(db.request(first.id))
            assert time.monotonic() < deadline, "the board did not accept the CS06"
            time.sleep(0.1)
        cancel = wait_outcome(db, rq.activate_gbcs(db, res.eui64, cs06(31, cancel=True), SUP).id)
        assert cancel["outcome"] == "cancelled", dict(cancel)
        assert "removed its pending future-dated activation" in cancel["reason"]
        assert db.request(first.id)["outcome"] == "cancelled"
        at = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=8)
        second = rq.activate_gbcs(db, res.eui64, cs06(32, at=at), SUP)
        row = wait_outcome(db, second.id)
        assert (row["outcome"], row["result"]) == ("activated", V2), dict(row)
        # one alert, 8F66 for the second command, on its request; none for the cancelled one
        ((rid, alert),) = gbcs_alerts()
        assert rid == second.id and alert["alert_code"] == "8F66", alert
        assert alert["response_code"] == 0 and alert["reason"] is None
        m = gbcs.decode(bytes.fromhex(alert["gbcs"]))
        assert m.fields["payload_originator_counter"] == 32
        assert m.fields["execution_date_time"] == at.strftime("%Y%m%d%H%M%SZ")
        # the time it was given is the time it acted by (the hub's clock, not the board's)
        assert db.request(second.id)["finished"] >= at.timestamp()
