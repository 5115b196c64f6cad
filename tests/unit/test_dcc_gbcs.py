"""The GBCS-shaped payloads the Comms Hub attaches to firmware outcomes (`hanota.dcc.gbcs`):
DER as GBCS writes it, the general-signing APDU's layout, and each outcome's use case and
response code, read back by a small independent DER reader."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from hanota.dcc import gbcs

DEV = bytes.fromhex("70A15E0000000001")
HUB = bytes.fromhex("00DB123456789AB0")
USER = bytes.fromhex("90B3D51F3001A001")
WHEN = datetime(2026, 12, 4, 18, 0, 5, tzinfo=timezone.utc)


def read_der(b: bytes, i: int = 0):
    """(tag, value, next index) of the TLV at i."""
    tag, n = b[i], b[i + 1]
    i += 2
    if n & 0x80:
        k = n & 0x7F
        n = int.from_bytes(b[i:i + k], "big")
        i += k
    return tag, b[i:i + n], i + n


def items(seq: bytes) -> list:
    tag, body, end = read_der(seq)
    assert tag == 0x30 and end == len(seq)
    out, i = [], 0
    while i < len(body):
        t, v, i = read_der(body, i)
        out.append(int.from_bytes(v, "big", signed=True) if t == 0x02 else (t, v))
    return out


def split(apdu: bytes) -> dict:
    """The general-signing APDU's fields at the offsets gbcs_duis.md section 5 gives."""
    assert apdu[:2] == b"\xDF\x09"
    assert apdu[11] == 8 and apdu[20] == 8 and apdu[29] == 0 and apdu[30] == 2
    n = apdu[33]
    assert n < 0x80 and len(apdu) == 34 + n + 1 and apdu[-1] == 0  # unsigned
    return {"cra": apdu[2], "counter": int.from_bytes(apdu[3:11], "big"),
            "originator": apdu[12:20], "recipient": apdu[21:29],
            "code": int.from_bytes(apdu[31:33], "big"), "payload": apdu[34:34 + n]}


def test_der_as_gbcs_writes_it():
    assert gbcs.der_integer(1000) == bytes.fromhex("020203E8")
    assert gbcs.der_integer(0x8F66) == bytes.fromhex("0203008F66")
    assert gbcs.der_integer(0) == bytes.fromhex("020100")
    assert gbcs.der_time(WHEN) == b"\x18\x0f20261204180005Z"
    assert gbcs.der_length(200) == b"\x81\xc8" and gbcs.der_length(300) == b"\x82\x01\x2c"


@pytest.mark.parametrize("outcome,code", [("distributed", 0), ("rejected_by_device", 1),
                                          ("image_mismatch", 1), ("hw_version_mismatch", 2),
                                          ("transfer_failed", 3)])
def test_distribution_outcomes_are_ccs08_from_the_comms_hub(outcome, code):
    mc, apdu = gbcs.for_outcome(outcome, "11.1", device=DEV, comms_hub=HUB, requester=USER,
                                counter=1002, version=0x00020000, when=WHEN)
    f = split(apdu)
    assert (mc, f["code"], f["cra"], f["counter"]) == (0x0128, 0x0128, gbcs.CRA_ALERT, 1002)
    assert (f["originator"], f["recipient"]) == (HUB, USER)
    alert, (t1, when), (t2, entity), (t3, ver), rc = items(f["payload"])
    assert alert == (0x8F8A if code == 0 else 0x8F89)
    assert (t1, when) == (0x18, b"20261204180005Z")
    assert (t2, entity, t3, ver, rc) == (0x04, DEV, 0x04, b"\x00\x02\x00\x00", code)


@pytest.mark.parametrize("outcome,code", [("activated", 0), ("no_image_held", 1),
                                          ("hash_mismatch", 2), ("activation_failed", 3),
                                          ("rolled_back", 3)])
def test_activation_outcomes_are_cs06_responses(outcome, code):
    mc, apdu = gbcs.for_outcome(outcome, "11.3", device=DEV, comms_hub=HUB, requester=USER,
                                counter=7, version=3, when=WHEN)
    f = split(apdu)
    assert (mc, f["cra"], f["originator"], f["recipient"]) == (0x0012, gbcs.CRA_RESPONSE,
                                                               DEV, USER)
    assert items(f["payload"]) == [code, (0x04, b"\x00\x00\x00\x03")]


def test_version_read_is_cs08_and_ppmid_activation_cs09():
    _, apdu = gbcs.for_outcome("version_read", "11.2", device=DEV, comms_hub=HUB,
                               requester=USER, counter=9, version=0x01020304, when=WHEN)
    assert items(split(apdu)["payload"]) == [(0x04, b"\x01\x02\x03\x04"), 0]
    _, apdu = gbcs.for_outcome("read_failed", "11.2", device=DEV, comms_hub=HUB,
                               requester=USER, counter=9, version=None, when=WHEN)
    assert items(split(apdu)["payload"])[1] == 1
    mc, apdu = gbcs.for_outcome("rolled_back", "11.4", device=DEV, comms_hub=HUB,
                                requester=USER, counter=9, version=1, when=WHEN)
    f = split(apdu)
    assert (mc, f["cra"], f["originator"]) == (0x012B, gbcs.CRA_ALERT, DEV)
    assert items(f["payload"])[0] == 0x8F8B and items(f["payload"])[-1] == 1


@pytest.mark.parametrize("outcome,sr", [("superseded", "11.1"), ("not_authorized", "11.4"),
                                        ("device_unreachable", "11.3"),
                                        ("ota_unavailable_after_tcso", "11.1"),
                                        ("activated", "8.7.1")])
def test_outcomes_gbcs_has_no_message_for(outcome, sr):
    assert gbcs.for_outcome(outcome, sr, device=DEV, comms_hub=HUB, requester=USER, counter=1,
                            version=1, when=WHEN) is None


@pytest.mark.parametrize("outcome,sr,kind,code", [
    ("hw_version_mismatch", "11.1", "ccs08-alert", 2),
    ("hash_mismatch", "11.3", "cs06-response", 2),
    ("version_read", "11.2", "cs08-response", 0), ("activated", "11.4", "cs09-alert", 0)])
def test_the_device_codec_reads_them(outcome, sr, kind, code):
    """hanfw.gbcs (the HAN side's own GBCS codec, written separately) decodes every one."""
    hgbcs = pytest.importorskip("hanfw.gbcs")
    mc, apdu = gbcs.for_outcome(outcome, sr, device=DEV, comms_hub=HUB, requester=USER,
                                counter=1002, version=0x00020000, when=WHEN)
    m = hgbcs.decode(apdu)
    assert (m.message_code, m.counter, m.recipient, m.signature) == (mc, 1002, USER, b"")
    assert m.kind == kind
    f = dict(m.fields)
    got = f.get("response_code", f.get("activation_result"))
    assert got == code, f
