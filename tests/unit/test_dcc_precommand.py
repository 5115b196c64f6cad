"""SR 11.3 to a GBCS-commissioned HCALCS through DUIS's Pre-Command flow: CV 4 -> the DCC's
Pre-Command (ResponseMessage/PreCommand/GBCSPayload: the CS06 APDU without signature), the
User signs it (`precommand.sign`) and submits CV 5 (SignedPreCommand/GBCSPayload, the same
RequestID); the DCC checks it is exactly its pre-command signed with the User's DS key, adds
the ACB MAC for the device's KA key and queues the GBCS bytes for the Comms Hub, where the
device's check (hanfw.activation) accepts them. Each refusal is named and queues nothing."""
from __future__ import annotations

import base64
import hashlib
from datetime import datetime, timezone

import pytest
from cryptography.hazmat.primitives import serialization

from hanfw import activation, config, gbcs, p256
from hanota.dcc import duis, pki, precommand, xmlsig
from hanota.dcc.service import Dcc
from hanota.dcc.store import DccStore
from hanota.deploy import gbcs_commissioning
from hanfw.state import State
from support.fakedevice import install_code

pytestmark = pytest.mark.timeout(60)

SUP_A = pki.ORGS["supplier-a"][1]
HUB = bytes.fromhex("00DB1234567800C1")
HCALCS = bytes.fromhex("00DB123456789001")
IMG = hashlib.sha256(b"held image").digest()


def open_dcc(db_target, pkidir):
    store = DccStore(db_target)
    return Dcc(store, pki.KeyStore(pkidir), pki.signing_pair(pkidir, "dcc.xml"))


def commissioning(pkidir):
    """A GBCS commissioning of the HCALCS (as `board deploy --supplier-cert --acb-cert`):
    (its device configuration, its KA public key as hex)."""
    block, ka_pub = gbcs_commissioning((pkidir / "supplier-a.ds.cert.pem").read_bytes(),
                                       (pkidir / "acb.ka.cert.pem").read_bytes())
    cfg = config.from_dict({"eui64": HCALCS.hex(), "role": "hcalcs", "manufacturer": 0x1234,
                            "hw_version": 0x100, "keys": [block["supplier_ds"]],
                            "install_code": "00" * 18, "gbcs": block})
    return cfg, ka_pub


@pytest.fixture
def world(db_target, pkidir):
    dcc = open_dcc(db_target, pkidir)
    dcc.store.add_premises("MPAN-1", [SUP_A], HUB)
    dcc.store.add_device(HCALCS, "HCALCS", "MPAN-1", manufacturer=0x1234, model=0x0086,
                         hw_version=0x0100, install_code=install_code(1))
    cfg, ka_pub = commissioning(pkidir)
    dcc.register_device_ka(HCALCS, bytes.fromhex(ka_pub))
    yield dcc, cfg, pkidir
    dcc.store.close()


def ds_key(pkidir, name="supplier-a"):
    return serialization.load_pem_private_key((pkidir / ("%s.ds.key.pem" % name)).read_bytes(), None)


def submit(dcc, pkidir, xml, who="supplier-a"):
    key, cert = pki.signing_pair(pkidir, who + ".xml")
    out = dcc.submit(xmlsig.sign(xml, key, cert))
    xmlsig.verify(out, dcc.cert)
    return out


def cv4(dcc, pkidir, counter, at=None, cancel=False):
    xml = duis.build_request("11.3", SUP_A, HCALCS, counter, firmware_hash=IMG,
                             execution_datetime=at, cancel=cancel)
    return submit(dcc, pkidir, xml)


def outbox(dcc):
    return [m for m in dcc.wan_outbox(HUB) if m.get("type") == "gbcs"]


def device_check(cfg, tmp_path, data):
    class Banks:
        def target_sha256(self, n):
            return IMG
    st = State(str(tmp_path / "ota.json"))
    st.update(held={"version": 2, "length": 9, "hash": IMG.hex()})
    return activation.process(cfg, st, Banks(), data, 1)


def test_cv4_precommand_then_cv5_reaches_the_device_which_accepts_it(world, tmp_path):
    dcc, cfg, pkidir = world
    resp = cv4(dcc, pkidir, 5001)
    rid, srv, pre = precommand.from_response(resp)
    assert (str(rid), srv) == ("%s:%s:5001" % (duis.eui_text(SUP_A), duis.eui_text(HCALCS)), "11.3")
    m = gbcs.decode(pre)
    assert m.signature is None and m.kind == "cs06-command" and m.counter == 5001
    assert m.originator == SUP_A and m.recipient == HCALCS
    assert m.fields["manufacturer_image_hash"] == IMG
    assert not outbox(dcc)  # nothing goes to the hub before the User signed it
    signed = precommand.sign(pre, ds_key(pkidir))
    ack = duis.parse_response(submit(dcc, pkidir, precommand.signed_request(rid, signed)))
    assert ack["code"] == "I99", ack["reason"]
    (msg,) = outbox(dcc)
    data = base64.b64decode(msg["gbcs_b64"])
    assert device_check(cfg, tmp_path, data)[::2] == (None, "activate")
    # the same Signed Pre-Command again: refused, nothing more queued
    again = duis.parse_response(submit(dcc, pkidir, precommand.signed_request(rid, signed)))
    assert again["code"] != "I99"
    assert len(outbox(dcc)) == 1


def tampered(pre, signed, pkidir):
    b = bytearray(signed)
    b[-70] ^= 1  # inside the payload (the hash): no longer the pre-command issued
    return bytes(b)


@pytest.mark.parametrize("how,why", [
    ("changed-field", "not the pre-command the DCC issued"),
    ("other-supplier-key", "does not verify with the Supplier's key"),
    ("bad-signature", "does not verify with the Supplier's key"),
    ("no-cv4", "no Pre-Command was issued")])
def test_signed_precommand_refusals(world, how, why):
    dcc, cfg, pkidir = world
    rid, _, pre = precommand.from_response(cv4(dcc, pkidir, 6001))
    if how == "changed-field":
        signed = precommand.sign(tampered(pre, pre, pkidir), ds_key(pkidir))
    elif how == "other-supplier-key":
        signed = precommand.sign(pre, ds_key(pkidir, "supplier-b"))
    elif how == "bad-signature":
        b = bytearray(precommand.sign(pre, ds_key(pkidir)))
        b[-1] ^= 1
        signed = bytes(b)
    else:
        signed = precommand.sign(pre, ds_key(pkidir))
        rid = duis.RequestID(rid.originator, rid.target, 6002)
    out = duis.parse_response(submit(dcc, pkidir, precommand.signed_request(rid, signed)))
    assert out["code"] != "I99" and why in out["reason"], out["reason"]
    assert not outbox(dcc)


def test_precommand_round_trip_and_mac_matches_the_device_side(pkidir):
    rid = duis.RequestID(SUP_A, HCALCS, 77)
    pre = precommand.precommand(rid, IMG, cancel=True)
    assert gbcs.decode(pre).fields["execution_date_time"] == gbcs.CANCEL_TIME
    assert precommand.from_response(precommand.precommand_response(rid, pre))[2] == pre
    req = duis.parse_request(precommand.signed_request(rid, precommand.sign(pre, ds_key(pkidir))))
    assert req.command_variant == 5 and gbcs.decode(req.fields["signed_precommand"]).signature
    dev = 0x1234567
    data = precommand.add_mac(req.fields["signed_precommand"], ds_key(pkidir),
                              p256.public_key(dev.to_bytes(32, "big")))
    m = gbcs.decode(data)
    acb_pub = ds_key(pkidir).public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    z = p256.ecdh(dev.to_bytes(32, "big"), acb_pub)
    assert gbcs.compute_mac(z, m, m.raw[m.apdu_start:m.sig_end]) == m.mac


def test_cli_sign_precommand(world, tmp_path):
    from click.testing import CliRunner

    from hanota.cli import cli as main
    dcc, cfg, pkidir = world
    resp = tmp_path / "pre.xml"
    resp.write_bytes(cv4(dcc, pkidir, 7001))
    out = tmp_path / "cv5.xml"
    r = CliRunner().invoke(main, ["duis", "sign-precommand", str(resp), "--ds-key",
                                  str(pkidir / "supplier-a.ds.key.pem"), "--key",
                                  str(pkidir / "supplier-a.xml.key.pem"), "--cert",
                                  str(pkidir / "supplier-a.xml.cert.pem"), "-o", str(out)])
    assert r.exit_code == 0, r.output
    ack = duis.parse_response(dcc.submit(out.read_bytes()))
    assert ack["code"] == "I99", ack["reason"]
    assert len(outbox(dcc)) == 1
    # not a Pre-Command response: named, exit code of a domain error
    r = CliRunner().invoke(main, ["duis", "sign-precommand", str(out), "--ds-key",
                                  str(pkidir / "supplier-a.ds.key.pem")])
    assert r.exit_code != 0 and "PreCommand" in r.output


def signed_cv5(dcc, pkidir, resp):
    rid, srv, pre = precommand.from_response(resp)
    signed = precommand.sign(pre, ds_key(pkidir))
    return duis.parse_response(submit(dcc, pkidir, precommand.signed_request(rid, signed, srv)))


def test_the_device_ka_key_is_registration_data_kept_across_a_restart(db_target, pkidir,
                                                                      tmp_path):
    dcc = open_dcc(db_target, pkidir)
    dcc.store.add_premises("MPAN-1", [SUP_A], HUB)
    cfg, ka_pub = commissioning(pkidir)
    # recorded with the device at registration (`dcc registry add-device --ka-pub`)
    dcc.store.add_device(HCALCS, "HCALCS", "MPAN-1", manufacturer=0x1234, model=0x0086,
                         install_code=install_code(1), ka_public=ka_pub)
    dcc.store.close()
    dcc = open_dcc(db_target, pkidir)  # the DCC restarted: a new service over the same store
    try:
        assert dcc.store.device(HCALCS)["ka_public"] == ka_pub
        ack = signed_cv5(dcc, pkidir, cv4(dcc, pkidir, 8001))
        assert ack["code"] == "I99", ack["reason"]
        (msg,) = outbox(dcc)
        # MAC'd to the key the registration data holds: the device accepts it
        assert device_check(cfg, tmp_path, base64.b64decode(msg["gbcs_b64"]))[::2] == \
            (None, "activate")
        # a new commissioning (a change of Supplier re-deploys the board) replaces the key;
        # a CS06 MAC'd to the old one no longer passes the device's check
        cfg2, ka2 = commissioning(pkidir)
        dcc.register_device_ka(HCALCS, ka2)
        dcc.store.close()
        dcc = open_dcc(db_target, pkidir)
        assert dcc.store.device(HCALCS)["ka_public"] == ka2
        ack = signed_cv5(dcc, pkidir, cv4(dcc, pkidir, 8002))
        assert ack["code"] == "I99", ack["reason"]
        new = base64.b64decode(outbox(dcc)[-1]["gbcs_b64"])
        (tmp_path / "b").mkdir()
        (tmp_path / "c").mkdir()
        assert device_check(cfg2, tmp_path / "b", new)[::2] == (None, "activate")
        assert device_check(cfg, tmp_path / "c", new)[0] == "bad-mac"
    finally:
        dcc.store.close()


def test_a_cs06_for_a_device_without_a_ka_key_is_refused_naming_it(world):
    dcc, cfg, pkidir = world
    dev = duis.eui_text(HCALCS).replace("-", "")
    # the key removed after the Pre-Command was issued: the CV 5 cannot be MAC'd
    resp = cv4(dcc, pkidir, 9001)
    dcc.register_device_ka(HCALCS, None)
    assert dcc.store.device(HCALCS)["ka_public"] is None
    ack = signed_cv5(dcc, pkidir, resp)
    assert ack["code"] == duis.E_NO_KA_KEY, ack
    assert dev in ack["reason"] and "key-agreement" in ack["reason"], ack["reason"]
    assert not outbox(dcc)
    # never commissioned for GBCS: SR 11.3 goes as hanota's own activation, and a Signed
    # Pre-Command for that RequestID is refused with the same named error
    rid = duis.RequestID(SUP_A, HCALCS, 9002)
    ack = duis.parse_response(cv4(dcc, pkidir, 9002))
    assert ack["code"] == "I99"
    assert [m["type"] for m in dcc.wan_outbox(HUB)] == ["activate"]
    pre = precommand.precommand(rid, IMG)
    out = duis.parse_response(submit(dcc, pkidir, precommand.signed_request(
        rid, precommand.sign(pre, ds_key(pkidir)))))
    assert out["code"] == duis.E_NO_KA_KEY and dev in out["reason"], out
    assert not outbox(dcc)


@pytest.mark.parametrize("value,why", [
    ("zz" * 65, "not hex"), ("04" + "00" * 32, "33 bytes"),
    ("04" + "01" * 64, "not a point on P-256"), ("02" + "01" * 64, "65-byte uncompressed")])
def test_a_bad_ka_key_is_refused_and_the_stored_one_kept(world, value, why):
    from hanota.dcc.store import DccUsageError

    dcc, cfg, pkidir = world
    before = dcc.store.device(HCALCS)["ka_public"]
    with pytest.raises(DccUsageError) as e:
        dcc.register_device_ka(HCALCS, value)
    assert why in str(e.value) and duis.eui_text(HCALCS).replace("-", "") in str(e.value)
    assert dcc.store.device(HCALCS)["ka_public"] == before
    with pytest.raises(DccUsageError, match="not registered"):
        dcc.register_device_ka(b"\x00" * 8, before)


def test_cli_registry_set_ka(tmp_path, pkidir):
    import json

    from click.testing import CliRunner

    from hanota.cli import cli as main
    db = str(tmp_path / "dcc.db")
    cfg, ka_pub = commissioning(pkidir)
    eui = duis.eui_text(HCALCS).replace("-", "")

    def hanota(*args):
        return CliRunner().invoke(main, ["dcc", *args, "--db", db])
    assert hanota("registry", "add-premises", "MPAN-1", "--supplier", SUP_A.hex(), "--hub",
                  HUB.hex()).exit_code == 0
    r = hanota("registry", "add-device", eui, "--type", "HCALCS", "--premises", "MPAN-1",
               "--ka-pub", "04" + "01" * 64)
    assert r.exit_code == 1 and "not a point on P-256" in r.output, r.output
    r = hanota("registry", "add-device", eui, "--type", "HCALCS", "--premises", "MPAN-1")
    assert r.exit_code == 0, r.output
    # from the board's deploy output (`hanota board deploy --json ... --acb-cert`)
    dep = tmp_path / "deploy.json"
    dep.write_text(json.dumps({"eui64": ":".join("%02x" % b for b in HCALCS),
                               "ka_public": ka_pub, "role": "hcalcs"}))
    r = hanota("registry", "set-ka", "--deploy-json", str(dep))
    assert r.exit_code == 0 and ka_pub in r.output, r.output
    r = hanota("registry", "list")
    assert "GBCS KA key" in r.output
    with DccStore(db) as store:
        assert store.device(HCALCS)["ka_public"] == ka_pub
    # from the device's KA certificate (here: a KA certificate of the test PKI)
    r = hanota("registry", "set-ka", eui, "--ka-cert", str(pkidir / "supplier-b.ka.cert.pem"))
    assert r.exit_code == 0, r.output
    # a DS certificate is not a key-agreement one: named, exit 1, the key kept
    r = hanota("registry", "set-ka", eui, "--ka-cert", str(pkidir / "supplier-a.ds.cert.pem"))
    assert r.exit_code == 1 and "keyAgreement" in r.output, r.output
    r = hanota("registry", "set-ka", eui, "--ka-pub", "04" + "00" * 10)
    assert r.exit_code == 1 and "11 bytes" in r.output, r.output
    r = hanota("registry", "set-ka", "00DB000000000000", "--ka-pub", ka_pub)
    assert r.exit_code == 1 and "not registered" in r.output, r.output
    r = hanota("registry", "set-ka", eui)
    assert r.exit_code == 2 and "exactly one" in r.output
    r = hanota("registry", "set-ka", eui, "--clear")
    assert r.exit_code == 0 and "no GBCS KA key" in r.output


def test_a_dcc_database_made_before_the_ka_key_gains_the_column(db_target, pkidir):
    """A store made before devices had ka_public opens with the column added (both dialects),
    its devices kept, without a key."""
    store = DccStore(db_target)
    store.add_premises("MPAN-1", [SUP_A], HUB)
    store.add_device(HCALCS, "HCALCS", "MPAN-1", install_code=install_code(1))
    with store.tx() as c:
        c.execute("ALTER TABLE devices DROP COLUMN ka_public")
    store.close()
    dcc = open_dcc(db_target, pkidir)
    try:
        assert dcc.store.device(HCALCS)["ka_public"] is None
        _, ka_pub = commissioning(pkidir)
        assert dcc.register_device_ka(HCALCS, ka_pub)["ka_public"] == ka_pub
    finally:
        dcc.store.close()


def test_a_device_future_dated_alert_reaches_the_requesting_user(world):
    """The Comms Hub's WAN alert "gbcs" (the device's 8F66/8F67 with the SR 11.3 request it
    answers) becomes DUIS's FutureDatedDeviceAlertMessage for that request, to its User, once
    (a redelivered WAN id is not acted on again); one that is not a future-dated alert, or
    names no request of this hub, goes to the premises' Suppliers as the general alert."""
    dcc, cfg, pkidir = world
    ack = signed_cv5(dcc, pkidir, cv4(dcc, pkidir, 9101, at=datetime(2031, 1, 2, 3, 4, 5,
                                                                     tzinfo=timezone.utc)))
    assert ack["code"] == "I99"
    rid = duis.RequestID(SUP_A, HCALCS, 9101)
    alert = gbcs.fd_alert(7, HCALCS, SUP_A, 9101, "20310102030405Z", gbcs.CS06_HASH_MISMATCH,
                          (3).to_bytes(4, "big")).encode()
    msg = {"id": 1, "type": "alert", "alert": "gbcs", "device": HCALCS.hex().upper(),
           "request": str(rid), "gbcs_b64": base64.b64encode(alert).decode(),
           "detail": {"reason": "activation-failure"}}
    dcc.wan_received(HUB, msg)
    dcc.wan_received(HUB, msg)  # redelivered
    got = [duis.parse_response(x) for _, x in dcc.responses(SUP_A)]
    fd = [p for p in got if p["kind"] == "future_dated_alert"]
    assert len(fd) == 1 and fd[0]["request_id"] == str(rid), got
    assert fd[0]["alert_code"] == "8F67" and fd[0]["gbcs_payload"] == alert
    assert fd[0]["service_reference_variant"] == "11.3"
    xmlsig.verify(dcc.responses(SUP_A)[-1][1], dcc.cert)
    # not a future-dated alert (a CS06 response) / no request: the general device alert
    n = len(got)
    for i, (payload, request) in enumerate(((b"\x00junk", str(rid)), (alert, None))):
        dcc.wan_received(HUB, dict(msg, id=2 + i, request=request,
                                   gbcs_b64=base64.b64encode(payload).decode()))
    got = [duis.parse_response(x) for _, x in dcc.responses(SUP_A)][n:]
    assert [p["kind"] for p in got] == ["dcc_alert", "dcc_alert"], got
