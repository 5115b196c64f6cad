"""GBCS CS06 on a virtual HCALCS (vboard-nrf52840: the real device code in the MicroPython unix
port over emulated flash, its 64 KiB heap, a UART to the hub): deployed with the Supplier's DS
certificate and the ACB's KA certificate (`board deploy --supplier-cert/--acb-cert`), SR 11.1
distributes, then CS06 commands the Supplier signs and the DCC MACs (hanota.dcc.precommand,
with the device's KA public key from its deploy) are relayed by the hub (ZCL 0xF3). Each bad
one is refused by the board with its named reason (wrong hash, another Supplier's key, another
device, a flipped MAC byte, a replayed counter) and the held image stays; the Comms Hub refuses
what is not a CS06 at all (truncated, unknown message code); then the good one activates V2,
and replaying it after is refused."""
from __future__ import annotations

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


def test_hcalcs_checks_gbcs_cs06(vboards, tmp_path):
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

        def cs06(counter, h=held, recipient=dev, signer="supplier-a", code=None):
            rid = duis.RequestID(pki.ORGS["supplier-a"][1], recipient, counter)
            m = gbcs.decode(precommand.precommand(rid, h))
            if code is not None:
                m.message_code = code
            pre = m.precommand()
            key = pki.load_key((pkidir / ("%s.ds.key.pem" % signer)).read_bytes())
            return precommand.add_mac(precommand.sign(pre, key), acb, bytes.fromhex(res.ka_public))

        def refused(data, outcome, why):
            r = wait_outcome(db, rq.activate_gbcs(db, res.eui64, data, SUP).id)
            assert r["outcome"] == outcome and why in r["reason"], dict(r)

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
    finally:
        hub.stop()
        db.close()
