"""The DCC's service logic: every refusal path of a signed DUIS request, in the order the
checks run, and the acceptances (12.2 then 8.2, 8.4, 11.1 -> a WAN message -> the Comms
Hub's outcome -> the User's one signed final response).

Keys come from a test PKI `hanota pki init` makes; requests are built by `duis.build_request`
and signed with a Supplier's XML-signing key. The public templates (GPL) are checked locally
only, at the end (tests/support/gpl.py).
"""
from __future__ import annotations

import base64
import hashlib
import json
import random

import pytest

from hanota import images
from hanota.dcc import duis, pki, service, xmlsig
from hanota.dcc.service import Dcc
from hanota.dcc.store import DEVICE_TYPES, DccStore, DccUsageError
from hanota.keys import raw_point
from support import otabuild
from support.fakedevice import install_code
from support.gpl import gpl_path

pytestmark = pytest.mark.timeout(60)

SUP_A = pki.ORGS["supplier-a"][1]
SUP_B = pki.ORGS["supplier-b"][1]
NO = pki.ORGS["network-operator"][1]
HUB = bytes.fromhex("00DB1234567800C1")
HUB2 = bytes.fromhex("00DB1234567800C2")
HCALCS = bytes.fromhex("00DB123456789001")
PPMID = bytes.fromhex("00DB123456789002")
ALTHAN = bytes.fromhex("00DB123456789003")
ESME = bytes.fromhex("00DB123456789004")
OTHER_PREMISES_DEV = bytes.fromhex("00DB123456789005")
MFR = images.DEFAULT_MANUFACTURER

PLACEHOLDER = b"""<ds:Signature xmlns:ds="http://www.w3.org/2000/09/xmldsig#"><ds:SignedInfo>
<ds:CanonicalizationMethod Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/>
<ds:SignatureMethod Algorithm="http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256"/>
<ds:Reference URI=""><ds:Transforms>
<ds:Transform Algorithm="http://www.w3.org/2000/09/xmldsig#enveloped-signature"/>
</ds:Transforms><ds:DigestMethod Algorithm="http://www.w3.org/2001/04/xmlenc#sha256"/>
<ds:DigestValue>ZGVmYXVsdA==</ds:DigestValue></ds:Reference></ds:SignedInfo>
<ds:SignatureValue>ZGVmYXVsdA==</ds:SignatureValue><ds:KeyInfo><ds:X509Data>
<ds:X509IssuerSerial><ds:X509IssuerName>CN=U1, OU=07</ds:X509IssuerName>
<ds:X509SerialNumber>1234567890</ds:X509SerialNumber></ds:X509IssuerSerial></ds:X509Data>
</ds:KeyInfo></ds:Signature></sr:Request>"""


@pytest.fixture(scope="module")
def signers(pkidir):
    return {name: pki.signing_pair(pkidir, name + ".xml")
            for name in ("supplier-a", "supplier-b", "network-operator", "dcc")}


@pytest.fixture(scope="module")
def fw_key():
    return otabuild.new_key()


@pytest.fixture
def dcc(db_target, pkidir, signers):
    store = DccStore(db_target)
    store.add_premises("MPAN-1", [SUP_A], HUB)
    store.add_premises("MPAN-2", [SUP_A, SUP_B], HUB2)  # dual-Supplier premises
    store.add_device(HCALCS, "HCALCS", "MPAN-1", manufacturer=MFR, model=0x0086,
                     hw_version=0x0100, install_code=install_code(1))
    store.add_device(PPMID, "PPMID", "MPAN-1", manufacturer=MFR, model=0x0084,
                     install_code=install_code(2))
    store.add_device(ALTHAN, "ALTHAN", "MPAN-1", manufacturer=MFR, model=0x0085,
                     install_code=install_code(3))
    store.add_device(ESME, "ESME", "MPAN-1")
    store.add_device(OTHER_PREMISES_DEV, "HCALCS", "MPAN-2", manufacturer=MFR, model=0x0086,
                     install_code=install_code(5))
    d = Dcc(store, pki.KeyStore(pkidir), signers["dcc"])
    yield d
    store.close()


class User:
    """A User that builds, signs and submits requests with its own rising counter."""

    def __init__(self, dcc: Dcc, signers: dict, name: str = "supplier-a"):
        self.dcc, self.key, self.cert = dcc, *signers[name]
        self.eui = pki.ORGS[name][1]
        self.counter = 1000

    def request(self, srv: str, target: bytes = duis.DCC_EUI, *, counter: int | None = None,
                originator: bytes | None = None, **fields) -> bytes:
        if counter is None:
            self.counter += 1
            counter = self.counter
        return duis.build_request(srv, originator or self.eui, target, counter, **fields)

    def signed(self, srv: str, target: bytes = duis.DCC_EUI, **kw) -> bytes:
        return xmlsig.sign(self.request(srv, target, **kw), self.key, self.cert)

    def submit(self, srv: str, target: bytes = duis.DCC_EUI, **kw) -> dict:
        return answer(self.dcc, self.dcc.submit(self.signed(srv, target, **kw)))


def answer(dcc: Dcc, xml: bytes) -> dict:
    """A DCC answer, once its signature verifies with the DCC's certificate."""
    signer = xmlsig.verify(xml, dcc.cert)
    assert signer.entity_id == duis.DCC_EUI
    return duis.parse_response(xml)


def image(key, role="hcalcs", version=2, **kw) -> bytes:
    payload = random.Random(version).randbytes(300)
    return images.build_image(payload, key=key, version=version, role=role, **kw)


def image_hash(data: bytes) -> bytes:
    """The Manufacturer Image Hash the DCC checks (SHA-256 of the upgrade image)."""
    return images.otafile.parse_stream(data, block=4096, allow_raw=True).image_sha256


def on_cpl(dcc: Dcc, data: bytes, model: int, pubkey: bytes | None = None) -> None:
    h = images.otafile.parse_stream(data, block=4096).header
    dcc.store.cpl_add(MFR, model, h.file_version, image_hash(data), pubkey=pubkey)


def update(user: User, data: bytes, device: bytes = HCALCS, srv: str = "11.1") -> dict:
    return user.submit(srv, firmware_image=data, firmware_version="00000000",
                       device_ids=[device])


def outbox(dcc: Dcc, hub: bytes = HUB) -> list[dict]:
    return dcc.wan_outbox(hub)


# ---------------------------------------------------------------- refusals, in check order

def test_unsigned_and_placeholder_signatures_are_refused(dcc, signers):
    u = User(dcc, signers)
    req = u.request("11.2", HCALCS)
    a = answer(dcc, dcc.submit(req))
    assert a["code"] == duis.E_SIGNATURE and "signature" in a["reason"]
    templated = req.replace(b"</sr:Request>", PLACEHOLDER)
    a = answer(dcc, dcc.submit(templated))
    assert a["code"] == duis.E_SIGNATURE and "placeholder" in a["reason"]
    assert outbox(dcc) == [] and dcc.store.last_counter(SUP_A) is None


def test_unknown_signer_and_changed_document(dcc, signers, tmp_path):
    other = tmp_path / "other-pki"
    pki.init(other)
    stranger = User(dcc, {"supplier-a": pki.signing_pair(other, "supplier-a.xml")})
    a = stranger.submit("11.2", HCALCS)
    assert a["code"] == duis.E_SIGNATURE and "unknown signer" in a["reason"]
    u = User(dcc, signers)
    signed = u.signed("11.2", HCALCS)
    changed = signed.replace(b"90-01:", b"90-02:")
    assert changed != signed
    a = answer(dcc, dcc.submit(changed))
    assert a["code"] == duis.E_SIGNATURE and "digest" in a["reason"]
    assert dcc.store.last_counter(SUP_A) is None


def test_malformed_request_is_refused_with_the_duis_error(dcc, signers):
    u = User(dcc, signers)
    bad = u.request("11.2", HCALCS, command_variant=8)
    a = answer(dcc, dcc.submit(xmlsig.sign(bad, u.key, u.cert)))
    assert a["code"] == "E12" and "CommandVariant 8" in a["reason"]
    assert dcc.store.last_counter(SUP_A) is None


def test_originator_must_be_the_signer(dcc, signers):
    b = User(dcc, signers, "supplier-b")
    a = b.submit("11.2", HCALCS, originator=SUP_A)
    assert a["code"] == duis.E_ORIGINATOR
    assert "90B3D51F3001A001" in a["reason"] and "90B3D51F3001B002" in a["reason"]
    # the real User's counters are untouched
    assert dcc.store.last_counter(SUP_A) is None and dcc.store.last_counter(SUP_B) is None


def test_replayed_or_older_counter_is_refused(dcc, signers):
    u = User(dcc, signers)
    first = u.signed("11.2", HCALCS, counter=5000)
    assert answer(dcc, dcc.submit(first))["code"] == service.ACCEPTED
    again = answer(dcc, dcc.submit(first))
    assert again["code"] == duis.E_REPLAY and "5000" in again["reason"]
    older = u.submit("11.2", HCALCS, counter=4999)
    assert older["code"] == duis.E_REPLAY
    assert len(outbox(dcc)) == 1
    # a request refused by an SR rule still uses its counter: it cannot be replayed either
    refused = u.signed("11.2", OTHER_PREMISES_DEV[:7] + b"\x77", counter=6000)
    assert answer(dcc, dcc.submit(refused))["code"] == "E19"
    assert answer(dcc, dcc.submit(refused))["code"] == duis.E_REPLAY
    assert dcc.store.last_counter(SUP_A) == 6000


def test_supplier_not_responsible_is_refused_by_entity_id(dcc, signers):
    b = User(dcc, signers, "supplier-b")  # a valid Supplier, but not of MPAN-1
    a = b.submit("11.2", HCALCS)
    assert a["code"] == "E4"
    assert "90B3D51F3001B002 is not a Responsible Supplier" in a["reason"]
    no = User(dcc, signers, "network-operator")
    assert no.submit("11.2", HCALCS)["code"] == "E4"
    assert outbox(dcc) == []
    # either Supplier of dual-Supplier premises may ask
    assert b.submit("11.2", OTHER_PREMISES_DEV)["code"] == service.ACCEPTED
    assert User(dcc, signers).submit("11.2", OTHER_PREMISES_DEV)["code"] == service.ACCEPTED
    assert len(outbox(dcc, HUB2)) == 2
    rec = dcc.store.pending_requests()
    assert {r["user"] for r in rec} == {SUP_A.hex().upper(), SUP_B.hex().upper()}


def test_unknown_device_is_refused(dcc, signers):
    a = User(dcc, signers).submit("11.2", bytes.fromhex("00DB1234567890FF"))
    assert a["code"] == "E19" and "00DB1234567890FF" in a["reason"]


def test_firmware_sr_must_fit_the_device_type(dcc, signers, fw_key):
    u = User(dcc, signers)
    data = image(fw_key, "hcalcs")
    on_cpl(dcc, data, 0x86)
    a = update(u, data, HCALCS, "11.4")  # 11.4 is for PPMIDs only
    assert a["code"] == "E11" and "HCALCS" in a["reason"] and "SR 11.1" in a["reason"]
    p = image(fw_key, "ppmid")
    on_cpl(dcc, p, 0x84)
    a = update(u, p, PPMID, "11.1")
    assert a["code"] == "E11" and "SR 11.4" in a["reason"]
    a = update(u, p, ESME, "11.1")
    assert a["code"] == "E11" and "ESME" in a["reason"]
    assert outbox(dcc) == []


def test_image_refusals_never_touch_a_pending_request(dcc, signers, fw_key):
    u = User(dcc, signers)
    good = image(fw_key, "hcalcs", 2)
    on_cpl(dcc, good, 0x86)
    assert update(u, good)["code"] == service.ACCEPTED
    before_out = outbox(dcc)
    before_pending = dcc.store.pending_requests(HCALCS)
    assert len(before_out) == 1 and len(before_pending) == 1

    not_listed = image(fw_key, "hcalcs", 3)
    a = update(u, not_listed)
    assert a["code"] == duis.E_IMAGE and "not on the Central Products List" in a["reason"]
    assert image_hash(not_listed).hex() in a["reason"]

    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 1
    a = update(u, bytes(flipped))
    assert a["code"] == duis.E_IMAGE and "tampered" in a["reason"]

    a = update(u, good[:100])
    assert a["code"] == duis.E_IMAGE and "not a well-formed OTA file" in a["reason"]

    hw = image(fw_key, "hcalcs", 4, min_hw=0x0200, max_hw=0x02FF)
    on_cpl(dcc, hw, 0x86)
    a = update(u, hw)
    assert a["code"] == duis.E_IMAGE and "hardware version 0100" in a["reason"]
    assert "0200..02FF" in a["reason"]

    elsewhere = image(fw_key, "hcalcs", 5, destination=bytes(reversed(OTHER_PREMISES_DEV)))
    on_cpl(dcc, elsewhere, 0x86)
    a = update(u, elsewhere)
    assert a["code"] == duis.E_IMAGE and "addressed to device 00DB123456789005" in a["reason"]

    # the CPL entry carries the manufacturer's key: a file signed by another key is refused
    forged = image(otabuild.new_key(), "hcalcs", 6)
    on_cpl(dcc, forged, 0x86, pubkey=raw_point(fw_key.public_key()))
    a = update(u, forged)
    assert a["code"] == duis.E_IMAGE and "signature" in a["reason"]

    assert outbox(dcc) == before_out
    assert dcc.store.pending_requests(HCALCS) == before_pending
    refused = dcc.store.all("SELECT outcome, code FROM requests WHERE outcome = 'refused'")
    assert len(refused) == 6 and {r["code"] for r in refused} == {duis.E_IMAGE}


def test_signed_image_accepted_when_the_cpl_has_its_key(dcc, signers, fw_key):
    u = User(dcc, signers)
    data = image(fw_key, "ppmid", 7)
    on_cpl(dcc, data, 0x84, pubkey=raw_point(fw_key.public_key()))
    assert update(u, data, PPMID, "11.4")["code"] == service.ACCEPTED
    (msg,) = outbox(dcc)
    assert (msg["type"], msg["kind"], msg["role"]) == ("update_firmware", "11.4", "ppmid")
    assert base64.b64decode(msg["image_b64"]) == data
    assert msg["hash"] == image_hash(data).hex() and msg["device"] == PPMID.hex().upper()


def test_alt_han_device_cannot_be_joined_by_the_join_service(dcc, signers):
    u = User(dcc, signers)
    for srv in ("8.7.1", "8.7.2"):
        a = u.submit(srv, ESME, other_device_id=ALTHAN)
        assert a["code"] == duis.E_ALTHAN_JOIN and "Alt HAN" in a["reason"], srv
        a = u.submit(srv, ALTHAN, other_device_id=ESME)
        assert a["code"] == duis.E_ALTHAN_JOIN, srv
    assert outbox(dcc) == []
    # a PPMID joins: a WAN message with its install code and role
    assert u.submit("8.7.1", ESME, other_device_id=PPMID)["code"] == service.ACCEPTED
    (msg,) = outbox(dcc)
    assert (msg["type"], msg["device"], msg["role"]) == ("join", PPMID.hex().upper(), "ppmid")
    assert msg["install_code"] == install_code(2).lower()


def test_activation_immediate_future_and_cancel(dcc, signers):
    from datetime import datetime, timezone

    u = User(dcc, signers)
    h = hashlib.sha256(b"held").digest()
    assert u.submit("11.3", HCALCS, firmware_hash=h)["code"] == service.ACCEPTED
    at = datetime(2031, 1, 15, 9, 0, tzinfo=timezone.utc)
    assert u.submit("11.3", HCALCS, firmware_hash=h, execution_datetime=at)["code"] == \
        service.ACCEPTED
    assert u.submit("11.3", HCALCS, firmware_hash=h, cancel=True)["code"] == service.ACCEPTED
    msgs = outbox(dcc)
    assert [(m["type"], m["at"]) for m in msgs] == [
        ("activate", None), ("activate", "2031-01-15T09:00:00Z"), ("cancel_activation", None)]
    assert all(m["hash"] == h.hex() for m in msgs)
    a = u.submit("11.3", PPMID, firmware_hash=h)  # PPMIDs activate as part of SR 11.4
    assert a["code"] == "E11"


# ---------------------------------------------------------------- acceptances

def test_prenotification_then_inventory_read_and_update(dcc, signers):
    # Supplier B is responsible for one premises (MPAN-2, with Supplier A): the 12.2 template
    # names no premises, so the DCC takes the Supplier's only one
    u = User(dcc, signers, "supplier-b")
    new = bytes.fromhex("00DB12345678A001")
    code = bytes.fromhex(install_code(9))
    a = u.submit("12.2", device_id=new, manufacturer="1234", model="00000084",
                 device_type="PPMID", smets_chts_version="SMETS V5.0",
                 firmware_version="00000001", install_code=code)
    assert a["code"] == service.SUCCESS
    dev = dcc.store.device(new)
    assert (dev["status"], dev["premises"], dev["install_code"]) == \
        ("prenotified", "MPAN-2", code.hex())
    (msg,) = outbox(dcc, HUB2)
    assert (msg["type"], msg["device"], msg["install_code"], msg["role"]) == \
        ("prenotify", new.hex().upper(), code.hex(), "ppmid")
    # what the Comms Hub needs for its device log
    assert (msg["manufacturer"], msg["image_type"], msg["premises"]) == ("1234", "0084", "MPAN-2")
    assert msg["suppliers"] == [SUP_A.hex().upper(), SUP_B.hex().upper()]

    inv = u.submit("8.2", device_id=new)
    assert inv["code"] == service.SUCCESS
    body = inv["body"]["DSPInventory"]
    assert body["DeviceType"] == "PPMID" and body["DeviceStatus"] == "prenotified"
    assert body["DeviceTypeDescription"] == DEVICE_TYPES["PPMID"][0]
    assert body["DeviceID"] == "00-DB-12-34-56-78-A0-01" and body["MPxN"] == "MPAN-2"
    assert body["ResponsibleSupplierID"] == ["90-B3-D5-1F-30-01-A0-01",
                                             "90-B3-D5-1F-30-01-B0-02"]
    # 8.2 is read-only: a Network Operator that is not a Supplier may read the inventory
    assert User(dcc, signers, "network-operator").submit("8.2", device_id=new)["code"] == \
        service.SUCCESS

    upd = u.submit("8.4", device_id=new, firmware_version="00000002")
    assert upd["code"] == service.SUCCESS
    assert dcc.store.device(new)["firmware_version"] == "00000002"
    assert u.submit("8.4", device_id=new, delete=True)["code"] == service.SUCCESS
    assert dcc.store.device(new)["status"] == "withdrawn"
    assert u.submit("8.2", device_id=new)["body"]["DSPInventory"]["DeviceStatus"] == \
        "withdrawn"
    # a withdrawn device takes no more device requests
    assert u.submit("11.2", new)["code"] == "E5"
    # 8.4 by a Supplier that is not responsible is refused
    assert u.submit("8.4", device_id=PPMID, firmware_version="00000009")["code"] == "E4"
    assert dcc.store.device(PPMID)["firmware_version"] is None


def test_prenotification_refusals_and_an_alt_han_device(dcc, signers):
    b = User(dcc, signers, "supplier-b")
    again = b.submit("12.2", device_id=OTHER_PREMISES_DEV, manufacturer="1234",
                     model="00000084", device_type="PPMID", smets_chts_version="SMETS V5.0",
                     firmware_version="00000001")
    assert again["code"] == duis.E_MALFORMED and "already registered" in again["reason"]
    # Supplier A has two premises and the request names none: refused, naming why
    a = User(dcc, signers).submit("12.2", device_id=bytes.fromhex("00DB12345678A003"),
                                  manufacturer="1234", model="00000084", device_type="PPMID",
                                  smets_chts_version="SMETS V5.0", firmware_version="00000001")
    assert a["code"] == duis.E_MALFORMED and "2 premises" in a["reason"]
    alt = bytes.fromhex("00DB12345678A002")
    a = b.submit("12.2", device_id=alt, manufacturer="1234", model="00000085",
                 device_type="ALTHAN", smets_chts_version="SMETS V5.0",
                 firmware_version="00000001", install_code=bytes.fromhex(install_code(8)))
    assert a["code"] == service.SUCCESS
    assert a["body"]["DSPInventory"]["DeviceType"] == "ALTHAN"


def test_update_firmware_to_outcome_gives_one_signed_final_response(dcc, signers, fw_key):
    u = User(dcc, signers)
    data = image(fw_key, "hcalcs", 9)
    on_cpl(dcc, data, 0x86)
    ack = update(u, data)
    assert ack["code"] == service.ACCEPTED
    (msg,) = outbox(dcc)
    assert (msg["type"], msg["kind"], msg["role"]) == ("update_firmware", "11.1", "hcalcs")
    dcc.wan_acked(HUB, msg["id"])
    dcc.wan_acked(HUB, msg["id"])  # a second ack changes nothing
    assert outbox(dcc) == []
    assert dcc.responses(SUP_A) == []

    dcc.wan_received(HUB, {"id": 1, "type": "outcome", "request": msg["request"],
                           "device": msg["device"], "outcome": "distributed", "detail": {}})
    (seq, xml), = dcc.responses(SUP_A)
    r = answer(dcc, xml)
    assert r["code"] == service.SUCCESS and r["request_id"] == msg["request"]
    out = r["body"]["CommsHubOutcome"]
    assert out["Outcome"] == "distributed" and out["GBCSUseCase"] == "CCS08"
    assert out["GBCSResponseCode"] == "0" and r["response_id"].endswith(":%d" % u.counter)
    # a redelivered outcome, or a second outcome for the same request: no second response
    dcc.wan_received(HUB, {"id": 1, "type": "outcome", "request": msg["request"],
                           "device": msg["device"], "outcome": "distributed"})
    dcc.wan_received(HUB, {"id": 2, "type": "outcome", "request": msg["request"],
                           "device": msg["device"], "outcome": "transfer_failed"})
    assert [s for s, _ in dcc.responses(SUP_A)] == [seq]
    req = dcc.store.request_by_text(msg["request"])
    assert (req["state"], req["outcome"]) == ("done", "distributed")
    # another hub cannot answer for this request
    assert dcc.responses(SUP_A, after=seq) == []


def test_outcome_failures_and_dual_supplier_alert(dcc, signers, fw_key):
    b = User(dcc, signers, "supplier-b")
    data = image(fw_key, "hcalcs", 11)
    on_cpl(dcc, data, 0x86)
    assert update(b, data, OTHER_PREMISES_DEV)["code"] == service.ACCEPTED
    (msg,) = outbox(dcc, HUB2)
    # an outcome sent by the wrong hub is ignored
    dcc.wan_received(HUB, {"id": 7, "type": "outcome", "request": msg["request"],
                           "outcome": "transfer_failed"})
    assert dcc.responses(SUP_B) == []
    dcc.wan_received(HUB2, {"id": 7, "type": "outcome", "request": msg["request"],
                            "outcome": "hw_version_mismatch"})
    (_, xml), = dcc.responses(SUP_B)
    r = answer(dcc, xml)
    assert r["body"]["CommsHubOutcome"]["Outcome"] == "hw_version_mismatch"
    assert r["body"]["CommsHubOutcome"]["GBCSResponseCode"] == "2"
    # the premises' other Responsible Supplier hears of it as an alert
    (_, alert), = dcc.responses(SUP_A)
    assert xmlsig.verify(alert, dcc.cert).entity_id == duis.DCC_EUI
    assert b"hw_version_mismatch" in alert


def test_join_outcome_updates_the_device_status(dcc, signers):
    u = User(dcc, signers)
    assert u.submit("8.7.2", ESME, other_device_id=PPMID)["code"] == service.ACCEPTED
    (msg,) = outbox(dcc)
    dcc.wan_received(HUB, {"id": 3, "type": "outcome", "request": msg["request"],
                           "outcome": "joined"})
    assert dcc.store.device(PPMID)["status"] == "joined"
    assert u.submit("8.8.2", ESME, other_device_id=PPMID)["code"] == service.ACCEPTED
    msg = outbox(dcc)[-1]
    assert msg["type"] == "unjoin"
    dcc.wan_received(HUB, {"id": 4, "type": "outcome", "request": msg["request"],
                           "outcome": "unjoined"})
    assert dcc.store.device(PPMID)["status"] == "commissioned"


def test_device_alert_goes_to_the_responsible_suppliers(dcc):
    dcc.wan_received(HUB2, {"id": 9, "type": "alert", "device": OTHER_PREMISES_DEV.hex().upper(),
                            "alert": "activation", "detail": {"running": "00000002"}})
    assert len(dcc.responses(SUP_A)) == 1 and len(dcc.responses(SUP_B)) == 1
    dcc.wan_received(HUB2, {"id": 9, "type": "alert", "device": OTHER_PREMISES_DEV.hex().upper()})
    assert len(dcc.responses(SUP_A)) == 1
    with pytest.raises(DccUsageError, match="integer id"):
        dcc.wan_received(HUB2, {"type": "alert"})
    # an alert about the hub itself (a Trust Centre Swap-Out) reaches the Suppliers of every
    # premises it serves, and no one else
    dcc.wan_received(HUB, {"id": 10, "type": "alert", "alert": "trust_centre_swap_out",
                           "device": None, "detail": {"old": "AA", "new": "BB"}})
    (_, xml), = dcc.responses(SUP_A, after=dcc.responses(SUP_A)[0][0])
    r = answer(dcc, xml)
    assert r["kind"] == "dcc_alert" and r["alert_code"] == "NH3"
    assert len(dcc.responses(SUP_B)) == 1


def test_trust_centre_swap_out_moves_the_premises_and_loses_alt_han(dcc, signers, fw_key):
    u = User(dcc, signers)
    alt = image(fw_key, "althan", 12)
    on_cpl(dcc, alt, 0x85)
    assert update(u, alt, ALTHAN, "11.4")["code"] == service.ACCEPTED  # as PPMIDs (MP170)
    assert u.submit("11.2", HCALCS)["code"] == service.ACCEPTED
    first, second = outbox(dcc)
    assert first["kind"] == "11.4" and first["role"] == "althan"
    dcc.wan_acked(HUB, first["id"])  # the old hub took the first; the second is unsent
    new_hub = bytes.fromhex("00DB1234567800D1")
    moved = dcc.wan_hub_replaced(HUB, new_hub)
    assert moved == {"premises": ["MPAN-1"], "requests": 2, "messages": 1, "alt_han_lost": 1}
    assert dcc.store.premises("MPAN-1")["hub_eui"] == new_hub.hex().upper()
    assert outbox(dcc) == [] and [m["id"] for m in outbox(dcc, new_hub)] == [second["id"]]
    # the hub reports under its new identity on the requests it had taken before the swap
    dcc.wan_received(new_hub, {"id": 1, "type": "outcome", "request": first["request"],
                               "outcome": "ota_unavailable_after_tcso"})
    (_, xml), = dcc.responses(SUP_A)
    assert answer(dcc, xml)["code"] == duis.E_OTA_UNAVAILABLE
    # and the DCC refuses further firmware for the Alt HAN device (MP170); others go on
    a = update(u, alt, ALTHAN, "11.4")
    assert a["code"] == duis.E_OTA_UNAVAILABLE and "Trust Centre Swap-Out" in a["reason"]
    h = image(fw_key, "hcalcs", 13)
    on_cpl(dcc, h, 0x86)
    assert update(u, h, HCALCS)["code"] == service.ACCEPTED
    assert outbox(dcc, new_hub)[-1]["type"] == "update_firmware"


def test_a_comms_hub_refusal_is_a_failure_for_the_user(dcc, signers):
    u = User(dcc, signers)
    assert u.submit("11.2", HCALCS)["code"] == service.ACCEPTED
    (msg,) = outbox(dcc)
    dcc.wan_received(HUB, {"id": 1, "type": "outcome", "request": msg["request"],
                           "outcome": "refused", "detail": {"reason": "bad message"}})
    (_, xml), = dcc.responses(SUP_A)
    r = answer(dcc, xml)
    assert r["code"] == "E20" and r["body"]["CommsHubOutcome"]["Reason"] == "bad message"


# ---------------------------------------------------------------- the store's own rules

def test_store_rules(db_target):
    s = DccStore(db_target)
    with pytest.raises(DccUsageError, match="must differ"):
        s.add_premises("MP", [SUP_A, SUP_A], HUB)
    with pytest.raises(DccUsageError, match="unknown-premises|not registered"):
        s.add_device(PPMID, "PPMID", "NOPE")
    s.add_premises("MP", [SUP_A], HUB)
    with pytest.raises(DccUsageError, match="device-type table"):
        s.add_device(PPMID, "TOASTER", "MP")
    with pytest.raises(DccUsageError, match="install code"):
        s.add_device(PPMID, "PPMID", "MP", install_code="00112233")
    s.add_device(PPMID, "ppmid", "MP")
    with pytest.raises(DccUsageError, match="already registered"):
        s.add_device(PPMID, "PPMID", "MP")
    assert s.take_counter(SUP_A, 10) and not s.take_counter(SUP_A, 10)
    assert not s.take_counter(SUP_A, 9) and s.last_counter(SUP_A) == 10
    with pytest.raises(s.integrity_errors, match="only rises"):
        with s.tx() as c:
            c.execute("UPDATE users SET last_counter = 1")
    rid = s.add_request("r:1", SUP_A, 11, "11.2", device=PPMID)
    assert s.finish_request(rid, "version_read", "I0")
    assert not s.finish_request(rid, "read_failed", "I0")
    with pytest.raises(s.integrity_errors, match="never deleted"):
        with s.tx() as c:
            c.execute("DELETE FROM requests")
    h = bytes(32)
    s.cpl_add(MFR, 0x84, 1, h)
    assert s.cpl_find("1234", "00000084", h) is not None
    assert s.cpl_remove(h) == 1
    with pytest.raises(DccUsageError, match="no CPL entry"):
        s.cpl_remove(h)
    s.close()


# ---------------------------------------------------------------- public templates (local)

TEMPLATE_HCALCS = bytes.fromhex("00DB1234567890A0")  # the templates' device IDs
TEMPLATE_PPMID = bytes.fromhex("00DB1234567890A4")


@pytest.mark.parametrize("name", [
    "11.1_UPDATE_FIRMWARE_REQUEST_DUIS.XML",
    "11.4_UPDATE_PPMID_FIRMWARE_REQUEST_DUIS.XML",
    "CS06_11.3_IMMEDIATE_SUCCESS_REQUEST_DUIS.XML",
    "CS06_11.3_FUTURE_DATED_SUCCESS_REQUEST_DUIS.XML",
    "CS06_11.3_CANCELLATION_SUCCESS_REQUEST_DUIS.XML",
    "CS08_11.2_SUCCESS_REQUEST_DUIS.XML",
])
def test_templates_with_placeholder_refused_and_signed_by_the_supplier(name, tmp_path, pkidir,
                                                                       signers):
    """The public templates as they are (placeholder signature) are refused; the same
    requests from our Supplier (its entity ID as originator, signed with its key), with their
    devices registered and their GBCS images on the CPL, are accepted and sent to the hub."""
    doc = gpl_path("duis-templates", "templates", name).read_bytes()
    store = DccStore(tmp_path / "t.db")
    store.add_premises("MPAN-T", [SUP_A], HUB)
    store.add_device(TEMPLATE_HCALCS, "HCALCS", "MPAN-T", manufacturer=0x121D, model=0,
                     hw_version=0x1111)
    store.add_device(TEMPLATE_PPMID, "PPMID", "MPAN-T", manufacturer=0x121D, model=0x84,
                     hw_version=0x1111)
    dcc = Dcc(store, pki.KeyStore(pkidir), signers["dcc"])
    a = answer(dcc, dcc.submit(doc))
    assert a["code"] == duis.E_SIGNATURE and "placeholder" in a["reason"]
    req = duis.parse_request(xmlsig.strip(doc))
    orig = duis.eui_text(req.request_id.originator).encode()
    mine = xmlsig.strip(doc).replace(orig + b":", duis.eui_text(SUP_A).encode() + b":", 1)
    key, cert = signers["supplier-a"]
    signed = xmlsig.sign(mine, key, cert)
    image = req.fields.get("firmware_image")
    if image:  # a GBCS OTA file: not on the CPL yet, then listed
        a = answer(dcc, dcc.submit(signed))
        assert a["code"] == duis.E_IMAGE and "Central Products List" in a["reason"], a
        h = images.otafile.parse_stream(image, block=4096, allow_raw=True).header
        store.cpl_add(h.manufacturer, h.image_type, h.file_version, image_hash(image))
        signed = xmlsig.sign(mine.replace(b":1000<", b":1001<"), key, cert)
    a = answer(dcc, dcc.submit(signed))
    assert a["code"] == service.ACCEPTED, a
    (msg,) = dcc.wan_outbox(HUB)
    assert msg["type"] in ("update_firmware", "activate", "cancel_activation", "read_version")
    store.close()


# ---------------------------------------------------------------- the command line

def test_cli_end_to_end(tmp_path, fw_key):
    """hanota pki init, dcc init, registry, cpl, duis build + sign, dcc submit, responses:
    as a User would run them (click's runner; exit codes as hanota.cli.main gives them)."""
    import click
    from click.testing import CliRunner

    from hanota.cli import cli as main

    def run(*args: str, input: bytes | None = None) -> tuple[int, str]:
        r = CliRunner().invoke(main, [str(a) for a in args], standalone_mode=False,
                               input=input)
        e = r.exception
        if e is None:
            return 0, r.output
        if isinstance(e, click.ClickException):
            return (1 if isinstance(e, click.UsageError) else e.exit_code), \
                r.output + e.format_message()
        raise e

    p, db = tmp_path / "pki", tmp_path / "dcc.db"
    assert run("pki", "init", p)[0] == 0
    assert run("dcc", "init", "--pki", p, "--db", db)[0] == 0
    code, out = run("dcc", "registry", "add-premises", "MPAN-9", "--supplier",
                    "90-B3-D5-1F-30-01-A0-01", "--hub", "00DB1234567800C9", "--db", db)
    assert code == 0 and "90B3D51F3001A001" in out
    code, out = run("dcc", "registry", "add-device", "00-DB-12-34-56-78-90-01", "--type",
                    "hcalcs", "--premises", "MPAN-9", "--manufacturer", "1234", "--model",
                    "0086", "--db", db)
    assert code == 0 and "HCALCS at MPAN-9" in out
    code, out = run("dcc", "registry", "add-device", "00DB1234567890FF", "--type", "PPMID",
                    "--premises", "NOWHERE", "--db", db)
    assert code == 1 and "NOWHERE are not registered" in out
    assert run("dcc", "registry", "add-premises", "X", "--supplier", "12", "--hub",
               "00DB1234567800C9", "--db", db)[0] == 1
    code, out = run("dcc", "registry", "list", "--db", db)
    assert code == 0 and "00DB123456789001  HCALCS" in out

    img = tmp_path / "fw.ota"
    img.write_bytes(image(fw_key, "hcalcs", 0x21))
    code, out = run("dcc", "cpl", "add", "--manufacturer", "1234", "--model", "0086",
                    "--image", img, "--db", db)
    assert code == 0 and "version 00000021" in out
    code, out = run("dcc", "cpl", "list", "--json", "--db", db)
    (entry,) = json.loads(out)
    assert entry["image_hash"] == image_hash(img.read_bytes()).hex()

    req, signed = tmp_path / "req.xml", tmp_path / "req.signed.xml"
    code, out = run("duis", "build", "11.1", "--from", "90-B3-D5-1F-30-01-A0-01",
                    "--counter", "77", "--image", img, "--device", "00-DB-12-34-56-78-90-01")
    assert code == 0
    req.write_text(out)
    assert run("duis", "sign", req, "--key", p / "supplier-a.xml.key.pem", "--cert",
               p / "supplier-a.xml.cert.pem", "-o", signed)[0] == 0
    code, out = run("dcc", "submit", signed, "--db", db)
    assert code == 0 and duis.parse_response(out.encode())["code"] == service.ACCEPTED
    code, out = run("dcc", "submit", signed, "--db", db)  # the same again: a replay
    assert code == 0 and duis.parse_response(out.encode())["code"] == duis.E_REPLAY

    store = DccStore(db)
    dcc = Dcc(store, pki.KeyStore(p), pki.signing_pair(p, "dcc.xml"))
    (msg,) = dcc.wan_outbox(bytes.fromhex("00DB1234567800C9"))
    dcc.wan_received(bytes.fromhex("00DB1234567800C9"), {
        "id": 1, "type": "outcome", "request": msg["request"], "outcome": "distributed"})
    store.close()
    code, out = run("dcc", "responses", "--user", "90B3D51F3001A001", "--summary", "--db", db)
    assert code == 0 and "response I0" in out and "final" in out
    code, out = run("dcc", "responses", "--user", "90B3D51F3001A001", "--db", db)
    assert code == 0 and out.startswith("<!-- seq 1 -->") and "distributed" in out

    code, out = run("dcc", "cpl", "remove", entry["image_hash"], "--db", db)
    assert code == 0 and "removed 1" in out
    assert run("dcc", "cpl", "remove", entry["image_hash"], "--db", db)[0] == 1


def test_change_of_supplier_and_a_refused_prenotification_reach_the_hub_and_user(dcc, signers):
    # the hub refuses a pre-notified device: the User, answered I0 at submission, is alerted
    b = User(dcc, signers, "supplier-b")
    new = bytes.fromhex("00DB12345678A00B")
    assert b.submit("12.2", device_id=new, manufacturer="1234", model="00000084",
                    device_type="PPMID", smets_chts_version="x", firmware_version="00000001",
                    install_code=bytes.fromhex(install_code(11)))["code"] == service.SUCCESS
    pre = outbox(dcc, HUB2)[-1]
    dcc.wan_received(HUB2, {"id": 2, "type": "outcome", "request": pre["request"],
                            "outcome": "refused", "detail": {"reason": "role unknown"}})
    (_, xml), = dcc.responses(SUP_B)
    r = answer(dcc, xml)
    assert r["kind"] == "dcc_alert" and r["code"] == "E20" and r["request_id"] == pre["request"]
    # a change of Supplier goes to the premises' hub
    dcc.store.add_premises("MPAN-1", [SUP_A], HUB)  # unchanged: nothing to tell the hub
    assert outbox(dcc) == []
    dcc.store.add_premises("MPAN-1", [SUP_B], HUB)
    (msg,) = outbox(dcc)
    assert (msg["type"], msg["premises"], msg["suppliers"]) == \
        ("set_suppliers", "MPAN-1", [SUP_B.hex().upper()])
    dcc.wan_received(HUB, {"id": 1, "type": "outcome", "request": None, "outcome": "applied"})
    assert dcc.responses(SUP_A) == []
