"""hanfw.gbcs against the DCC's own reference data (local only: GPL-3.0, never committed).

- every RTDS 4.5.0 file of 11.3_CS06 and 11.2_CS08 (and the CCS08 / CS09 alerts) decodes to
  the facts listed in the research brief's rtds-index.json, and re-encodes to the same bytes;
- every other file the index lists decodes and re-encodes (as a message with a raw payload);
- the CS06 commands' Supplier signatures verify with DCC Boxed's Z1-supplier-ds key (its
  certificate expired in 2025: only the public key is used), their MACs with the ACB's KA key
  and the device's KA certificate, and the device-side Verifier accepts them;
- the DCC's 11.1 sample Upgrade Image carries a Supplier signature that verifies.

The index (facts only, no GPL text) lives beside the research brief, at
$HANOTA_SHARED_DIR/vectors/gbcs/rtds-index.json (default ../shared): skipped when absent.
"""
from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from hanfw import gbcs, gbcsimage, p256
from support.gpl import ROOT, gpl_path

SHARED = Path(os.environ.get("HANOTA_SHARED_DIR", ROOT.parent / "shared"))
INDEX = SHARED / "vectors" / "gbcs" / "rtds-index.json"


def index() -> list[dict]:
    if not INDEX.exists():
        pytest.skip(f"the RTDS facts index is not at {INDEX} (set HANOTA_SHARED_DIR)")
    return json.loads(INDEX.read_text())["files"]


def rtds(path: str) -> bytes:
    return bytes.fromhex(gpl_path("gbcs-parser", path).read_text().strip())


def point(pem: bytes) -> bytes:
    if b"CERTIFICATE" in pem:
        key = x509.load_pem_x509_certificate(pem).public_key()
    else:
        key = serialization.load_pem_public_key(pem)
    return key.public_bytes(serialization.Encoding.X962,
                            serialization.PublicFormat.UncompressedPoint)


def keystore_entry(name: str) -> dict:
    ks = json.loads(gpl_path("dccboxed-keystore", "keystore.json").read_text())
    for usages in ks.values():
        for entries in usages.values():
            for e in entries.values():
                if e["name"] == name:
                    return e
    raise AssertionError("no %s in keystore.json" % name)


def private_scalar(pem: str) -> bytes:
    key = serialization.load_pem_private_key(pem.encode(), None)
    return key.private_numbers().private_value.to_bytes(32, "big")


def device_ka(eui_hex: str) -> bytes:
    return point(gpl_path("gbcs-parser", "test", "rtds", "keystore",
                          eui_hex.lower() + "-ka.pem").read_bytes())


CRA = {"command": 1, "response": 2, "alert": 3}


def facts_of(m: gbcs.Message) -> dict:
    """The decoded message in the index's vocabulary."""
    f = {"cra_flag": {v: k for k, v in CRA.items()}[m.cra], "originator_counter": m.counter,
         "originator_id": m.originator.hex().upper(), "recipient_id": m.recipient.hex().upper(),
         "grouping_date_time": m.date_time.hex().upper() if m.date_time else None,
         "message_code": "0x%04X" % m.message_code, "mac_header": m.mac_header}
    if m.supp_id is not None:
        f["supplementary_remote_party_id"] = m.supp_id.hex().upper()
        f["supplementary_remote_party_counter"] = m.supp_counter
    for k, v in m.fields.items():
        if k == "alert_code":
            v = "0x%04X" % v
        elif isinstance(v, bytes):
            v = v.hex().upper()
        f[k] = v
    if m.mac is not None:
        f["mac"] = m.mac.hex().upper()
    return f


FIRMWARE = re.compile(r"11\.3_CS06|11\.2_CS08|NA_CCS08|NA_CS09")


def test_every_rtds_file_decodes_to_its_facts_and_re_encodes():
    entries = index()
    checked = 0
    for e in entries:
        raw = rtds(e["path"])
        assert len(raw) == e["message_bytes"]
        m = gbcs.decode(raw)
        assert m.encode() == raw, e["path"]
        if not FIRMWARE.search(e["path"]):
            continue
        got = facts_of(m)
        for key in ("cra_flag", "originator_counter", "originator_id", "recipient_id",
                    "grouping_date_time", "message_code", "mac_header", "mac",
                    "supplementary_remote_party_id", "supplementary_remote_party_counter",
                    "manufacturer_image_hash", "payload_originator_counter",
                    "execution_date_time", "response_code", "firmware_version", "alert_code",
                    "date_time", "entity_id", "activation_result"):
            if key in e:
                assert got.get(key) == e[key], (e["path"], key, got.get(key), e[key])
        if e.get("payload") == "NULL" or str(e.get("response", "")).startswith("NULL"):
            assert m.kind in ("cs08-command", "cs06-accepted")
        if e["file_kind"] == "PRECOMMAND":
            assert m.signature is None and not m.mac_header
        if "signed_range" in e:
            assert [m.signed_start, m.signed_end] == e["signed_range"]
            assert len(m.signature) == 64
        checked += 1
    assert checked == 23  # 17 in 11.3_CS06 (with the 8F66/8F67 alerts), 4 CS08, CCS08, CS09
    assert len(entries) > 60


def test_rtds_cs06_commands_verify_signature_mac_and_on_the_device_path():
    supplier = point(keystore_entry("Z1-supplier-ds")["certificate"].encode())
    wrong = point(keystore_entry("Z1b-supplier-ds")["certificate"].encode())
    acb_ka_priv = private_scalar(keystore_entry("Z1-accessControlBroker-ka")["privateKey"])
    n = 0
    for e in index():
        if "11.3_CS06" not in e["path"] or e["file_kind"] != "COMMAND":
            continue
        raw = rtds(e["path"])
        m = gbcs.decode(raw)
        gbcs.check_signature(m, supplier, received=True)
        with pytest.raises(gbcs.GbcsError) as err:
            gbcs.check_signature(m, wrong)
        assert err.value.reason == "bad-signature"
        ka = device_ka(e["recipient_id"])
        z = p256.ecdh(acb_ka_priv, ka)
        assert gbcs.compute_mac(z, m) == m.mac
        # the device's own check; ECDH is symmetric, so the ACB's private key against the
        # device's public KA key stands in for the device's private key (not published)
        v = gbcs.Verifier(supplier, ka, acb_ka_priv, m.recipient, m.originator)
        assert v.verify(raw, m.counter - 1).counter == e["originator_counter"]
        with pytest.raises(gbcs.GbcsError) as err:
            v.verify(raw, m.counter)
        assert err.value.reason == "replayed-counter"
        n += 1
    assert n == 5


def test_rtds_cs08_macs_verify():
    acb_ka_priv = private_scalar(keystore_entry("Z1-accessControlBroker-ka")["privateKey"])
    n = 0
    for e in index():
        if "11.2_CS08" not in e["path"]:
            continue
        m = gbcs.decode(rtds(e["path"]))
        peer = m.recipient if m.cra == gbcs.CRA_COMMAND else m.originator
        z = p256.ecdh(acb_ka_priv, device_ka(peer.hex()))
        assert gbcs.compute_mac(z, m) == m.mac, e["path"]
        n += 1
    assert n == 4


def test_dcc_11_1_sample_image_supplier_signature_verifies():
    xml = gpl_path("duis-templates", "templates", "11.1_UPDATE_FIRMWARE_REQUEST_DUIS.XML").read_text()
    image = base64.b64decode(re.search(r"<sr:FirmwareImage>([^<]+)<", xml).group(1))
    r = gbcsimage.OtaFileReader()
    for i in range(0, len(image), 17):
        r.feed(image[i:i + 17])
    assert r.done and r.header_length == 60 and r.manufacturer == 0x121D
    assert r.image.image_len == 235 and r.image.force_replace == 0
    assert r.image.image_hash.hex().upper() == \
        "7542F475E3F12EAE887D81E32C46D313741D67076B13CAEC2F82E00BA5E1BB36"
    r.image.check(point(keystore_entry("Z1-supplier-ds")["certificate"].encode()))
    with pytest.raises(gbcsimage.ImageError) as err:
        r.image.check(point(keystore_entry("Z1b-supplier-ds")["certificate"].encode()))
    assert err.value.reason == "bad-signature"


def test_every_signed_rtds_file_verifies_with_the_key_the_index_names():
    """All 38 signed files (commands, responses, alerts): the signed range and the device's
    own signature check agree with the key the index names, and no other listed key."""
    folder = ("test", "rtds", "keystore")
    keys: dict[str, bytes] = {}
    n = 0
    for e in index():
        m = re.match(r"64 bytes, verified with: (.*)", e["signature"])
        if not m:
            continue
        names = [k.strip() for k in m.group(1).split(";")]
        for name in names:
            if name not in keys:
                kind, ref = name.split(":", 1)
                keys[name] = (point(keystore_entry(ref)["certificate"].encode()) if kind == "KS"
                              else point(gpl_path("gbcs-parser", *folder, ref).read_bytes()))
        msg = gbcs.decode(rtds(e["path"]))
        gbcs.check_signature(msg, keys[names[0]], received=True)
        for other, pub in keys.items():
            if other not in names and pub != keys[names[0]]:
                with pytest.raises(gbcs.GbcsError):
                    gbcs.check_signature(msg, pub, received=True)
        n += 1
    assert n == 38


def _rtds_named(part: str) -> bytes:
    for e in index():
        if e["path"].endswith(part):
            return rtds(e["path"])
    raise AssertionError(part)


def test_the_device_builders_give_the_rtds_responses_and_alerts_byte_for_byte():
    """What a device sends, built by hanfw.gbcs from the command it answers, equals the
    DCC's reference bytes once the reference's own signature (or MAC) is put in."""
    d = "11.3_CS06/CS06_11.3_"
    stamp = gbcs.dlms_date_time(2015, 1, 1)
    for case, code, version in (("IMMEDIATE_SUCCESS", 0, "0123ABCE"),
                                ("IMMEDIATE_ERROR", 1, "0123ABCF"),
                                ("FUTURE_DATED_SUCCESS", None, None),
                                ("CANCELLATION_SUCCESS", None, None)):
        cmd = gbcs.decode(_rtds_named(d + case + "_COMMAND_GBCS.HEX"))
        want = _rtds_named(d + case + "_RESPONSE_GBCS.HEX")
        r = gbcs.cs06_response(cmd, code, bytes.fromhex(version or ""), stamp)
        r.signature = gbcs.decode(want).signature
        assert r.encode() == want, case
    fut = gbcs.decode(_rtds_named(d + "FUTURE_DATED_SUCCESS_COMMAND_GBCS.HEX"))
    err = gbcs.decode(_rtds_named(d + "FUTURE_DATED_ERROR_COMMAND_GBCS.HEX"))
    for name, cmd, counter, code in (("8F66_FUTURE_DATED_SUCCESS", fut, 2000, 0),
                                     ("8F67_FUTURE_DATED_ERROR", err, 2001, 2)):
        want = _rtds_named(d + name + "_ALERT_GBCS.HEX")
        a = gbcs.fd_alert(counter, cmd.recipient, cmd.originator, cmd.counter,
                          cmd.fields["execution_date_time"], code, bytes.fromhex("0123ABCF"))
        a.signature = gbcs.decode(want).signature
        assert a.encode() == want, name
    # CS08 responses are MAC'd, not signed: the MAC is computed here (device KA with the
    # ACB's, the same Z as the ACB's private key with the device's certificate)
    acb_ka_priv = private_scalar(keystore_entry("Z1-accessControlBroker-ka")["privateKey"])
    for case, version, ok in (("SUCCESS", "0123ABCD", True), ("ERROR", "00000000", False)):
        cmd = gbcs.decode(_rtds_named("11.2_CS08/CS08_11.2_%s_COMMAND_GBCS.HEX" % case))
        want = _rtds_named("11.2_CS08/CS08_11.2_%s_RESPONSE_GBCS.HEX" % case)
        r = gbcs.cs08_response(cmd, bytes.fromhex(version), ok)
        r.mac = gbcs.compute_mac(p256.ecdh(acb_ka_priv, device_ka(cmd.recipient.hex())), r)
        assert r.encode() == want, case
