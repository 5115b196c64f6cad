"""`hanota gbcs decode|verify|build cs06`: built commands decode to their fields and verify
(signature and MAC), an expired certificate still gives its key, each bad input is refused
with its reason and exit code; locally (GPL data) the RTDS CS06 commands and the DCC's 11.1
sample image verify with DCC Boxed's keys."""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hanfw import gbcs
from hanota.cli import cli
from support.gpl import gpl_path
from support.mpy import VECTORS

V = json.loads((VECTORS / "gbcs" / "gbcs-18.4.json").read_text())
CURVE = ec.SECP256R1()
HASH = hashlib.sha256(b"manufacturer image").hexdigest()


def run(*args, ok=None):
    r = CliRunner().invoke(cli, [str(a) for a in args])
    if ok is not None:
        assert r.exit_code == ok, (r.exit_code, r.output, r.exception)
    return r


def write_key(path, key):
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


def write_cert(path, key, expired=True):
    """A self-signed certificate for key's public half, expired (as DCC Boxed's are)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test supplier")])
    start = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
    end = dt.datetime(2025, 10, 29, tzinfo=dt.timezone.utc) if expired else \
        dt.datetime(2099, 1, 1, tzinfo=dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(7).not_valid_before(start)
            .not_valid_after(end).sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture
def keys(tmp_path):
    k = {n: ec.derive_private_key(d, CURVE) for n, d in
         (("sup", 0x5151), ("acb", 0xACB), ("dev", 0xDE7), ("other", 0x0707))}
    return {
        "sup_key": write_key(tmp_path / "sup.key.pem", k["sup"]),
        "sup_cert": write_cert(tmp_path / "sup.cert.pem", k["sup"]),
        "other_cert": write_cert(tmp_path / "other.cert.pem", k["other"], expired=False),
        "acb_ka_key": write_key(tmp_path / "acb-ka.key.pem", k["acb"]),
        "acb_ka_cert": write_cert(tmp_path / "acb-ka.cert.pem", k["acb"]),
        "dev_ka_key": write_key(tmp_path / "dev-ka.key.pem", k["dev"]),
        "dev_ka_cert": write_cert(tmp_path / "dev-ka.cert.pem", k["dev"]),
    }


def build(tmp_path, keys, *extra, mac=True, name="cs06.hex"):
    out = tmp_path / name
    args = ["gbcs", "build", "cs06", "--hash", HASH, "--counter", 1001, "--recipient",
            "00-DB-12-34-56-78-90-A5", "--key", keys["sup_key"], "-o", out, *extra]
    if mac:
        args += ["--ka-cert", keys["dev_ka_cert"], "--ka-key", keys["acb_ka_key"]]
    run(*args, ok=0)
    return out


def test_build_decode_verify_round_trip(tmp_path, keys):
    f = build(tmp_path, keys, "--at", "2030-01-15T09:00:00Z")
    info = json.loads(run("gbcs", "decode", f, "--json", ok=0).output)
    assert info["mac_header"] and info["cra_flag"] == "command"
    assert info["originator_id"] == "90B3D51F30010000"
    assert info["recipient_id"] == "00DB1234567890A5" and info["originator_counter"] == 1001
    assert info["message_code"] == "0x0012" and info["payload_kind"] == "cs06-command"
    assert info["fields"] == {"manufacturer_image_hash": HASH.upper(),
                              "payload_originator_counter": 1001,
                              "execution_date_time": "20300115090000Z",
                              "activation": "future-dated"}
    # the expired certificate still gives its key; the device's side of the MAC agrees too
    r = run("gbcs", "verify", f, "--cert", keys["sup_cert"], "--ka-cert", keys["dev_ka_cert"],
            "--ka-key", keys["acb_ka_key"], ok=0)
    assert "MAC" in r.output and "signature" in r.output
    run("gbcs", "verify", f, "--cert", keys["sup_cert"], "--ka-cert", keys["acb_ka_cert"],
        "--ka-key", keys["dev_ka_key"], ok=0)
    run("gbcs", "verify", f, "--cert", keys["sup_cert"], ok=0)  # signature only
    # binary form and the text output name the fields
    b = build(tmp_path, keys, "--binary", "--at", "cancel", name="cs06.bin")
    assert gbcs.decode(b.read_bytes()).fields["execution_date_time"] == gbcs.CANCEL_TIME
    text = run("gbcs", "decode", b, ok=0).output
    assert "activation: cancellation" in text and "mac: " in text


def test_verify_refusals_name_their_reason(tmp_path, keys):
    f = build(tmp_path, keys)
    r = run("gbcs", "verify", f, "--cert", keys["other_cert"], "--json", ok=1)
    assert json.loads(r.stdout.splitlines()[0])["reason"] == "bad-signature"
    r = run("gbcs", "verify", f, "--cert", keys["sup_cert"], "--ka-cert", keys["sup_cert"],
            "--ka-key", keys["acb_ka_key"], ok=1)
    assert "bad-mac" in r.output
    raw = bytearray(bytes.fromhex(f.read_text()))
    raw[60] ^= 1
    bad = tmp_path / "flipped.hex"
    bad.write_text(raw.hex())
    assert "bad-signature" in run("gbcs", "verify", bad, "--cert", keys["sup_cert"], ok=1).output
    pre = build(tmp_path, keys, mac=False, name="pre.hex")
    assert not gbcs.decode(bytes.fromhex(pre.read_text())).mac_header
    run("gbcs", "verify", pre, "--cert", keys["sup_cert"], ok=0)
    assert "no-mac" in run("gbcs", "verify", pre, "--cert", keys["sup_cert"], "--ka-cert",
                           keys["dev_ka_cert"], "--ka-key", keys["acb_ka_key"], ok=1).output
    cut = tmp_path / "cut.hex"
    cut.write_text(f.read_text()[:100])
    r = run("gbcs", "decode", cut, ok=2)
    assert "truncated" in r.output
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\xDF\x09\x07" + bytes(40))
    assert "CRA flag 7" in run("gbcs", "decode", garbage, ok=2).output
    r = run("gbcs", "verify", f, "--cert", keys["sup_cert"], "--ka-key", keys["acb_ka_key"])
    assert r.exit_code != 0 and "go together" in r.output
    r = run("gbcs", "build", "cs06", "--hash", "abcd", "--counter", 1, "--recipient",
            "00DB1234567890A5", "--key", keys["sup_key"])
    assert r.exit_code == 2 and "64 hex digits" in r.output
    r = run("gbcs", "build", "cs06", "--hash", HASH, "--counter", 1, "--recipient",
            "00DB1234567890A5", "--key", keys["sup_key"], "--at", "soon")
    assert r.exit_code == 2 and "not a date-time" in r.output


def test_precommand_signed_by_the_user_then_maced_by_the_dcc(tmp_path, keys):
    d = V["derived_examples"]["cs06_future_dated"]
    for form, pre in (("rtds", d["precommand"]), ("green-book", d["precommand"] + "00")):
        f = tmp_path / ("pre-%s.hex" % form)
        f.write_text(pre)
        signed = tmp_path / ("signed-%s.hex" % form)
        run("gbcs", "sign", f, "--key", keys["sup_key"], "-o", signed, ok=0)
        m = gbcs.decode(bytes.fromhex(signed.read_text()))
        assert not m.mac_header and len(m.signature) == 64
        assert m.precommand() == bytes.fromhex(d["precommand"])
        run("gbcs", "verify", signed, "--cert", keys["sup_cert"], ok=0)
        wrapped = tmp_path / ("cmd-%s.bin" % form)
        run("gbcs", "mac", signed, "--ka-cert", keys["dev_ka_cert"], "--ka-key",
            keys["acb_ka_key"], "--binary", "-o", wrapped, ok=0)
        run("gbcs", "verify", wrapped, "--cert", keys["sup_cert"], "--ka-cert",
            keys["acb_ka_cert"], "--ka-key", keys["dev_ka_key"], ok=0)
        assert gbcs.decode(wrapped.read_bytes()).signature == m.signature
    r = run("gbcs", "sign", tmp_path / "cmd-rtds.bin", "--key", keys["other_cert"])
    assert r.exit_code == 2 and "private key" in r.output


def test_derived_ota_file_decodes_and_verifies(tmp_path):
    d = V["derived_examples"]
    f = tmp_path / "image.zigbee"
    f.write_bytes(bytes.fromhex(d["ota_file"]["hex"]))
    info = json.loads(run("gbcs", "decode", f, "--json", ok=0).output)
    assert info["type"] == "ota-file" and info["header_length"] == 60
    assert info["manufacturer_image_hash"] == d["manufacturer_image_hash_sha256"]
    assert info["manufacturer_image_bytes"] == len(bytes.fromhex(d["manufacturer_image"]))
    pub = ec.EllipticCurvePublicKey.from_encoded_point(
        CURVE, b"\x04" + bytes.fromhex(V["copied_from_source"]["supplier_a"]["ds_public_key"]))
    pem = tmp_path / "supplier-a.pub.pem"
    pem.write_bytes(pub.public_bytes(serialization.Encoding.PEM,
                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    run("gbcs", "verify", f, "--cert", pem, ok=0)
    raw = bytearray(f.read_bytes())
    raw[70] ^= 0x20
    f.write_bytes(raw)
    assert "bad-signature" in run("gbcs", "verify", f, "--cert", pem, ok=1).output


def test_build_image_reproduces_the_derived_ota_file(tmp_path):
    d = V["derived_examples"]
    img = tmp_path / "firmware.bin"
    img.write_bytes(bytes.fromhex(d["manufacturer_image"]))
    key = write_key(tmp_path / "supplier-a.key.pem", ec.derive_private_key(
        int(V["copied_from_source"]["supplier_a"]["ds_private_key"], 16), CURVE))
    out = tmp_path / "gbcs.zigbee"
    r = run("gbcs", "build", "image", "--image", img, "--key", key, "--manufacturer", "0x1234",
            "--image-type", 1, "--file-version", 2, "-o", out, ok=0)
    assert d["manufacturer_image_hash_sha256"] in r.output
    # RFC 6979 signatures: the same file as the vector, byte for byte
    assert out.read_bytes() == bytes.fromhex(d["ota_file"]["hex"])
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    r = run("gbcs", "build", "image", "--image", empty, "--key", key, "--manufacturer", 1,
            "--image-type", 1, "--file-version", 1, "-o", out)
    assert r.exit_code == 2 and "empty" in r.output


# ---- local: the DCC's own data (GPL, not committed) -----------------------------------


def keystore_pem(name: str, field: str) -> bytes:
    ks = json.loads(gpl_path("dccboxed-keystore", "keystore.json").read_text())
    for usages in ks.values():
        for entries in usages.values():
            for e in entries.values():
                if e["name"] == name:
                    return e[field].encode()
    raise AssertionError(name)


def test_rtds_cs06_commands_and_the_11_1_image_verify_with_dcc_boxed_keys(tmp_path):
    folder = gpl_path("gbcs-parser", "test", "rtds", "RTDS-4.5.0", "11.3_CS06")
    cert = tmp_path / "z1-supplier-ds.pem"
    cert.write_bytes(keystore_pem("Z1-supplier-ds", "certificate"))
    wrong = tmp_path / "z1b-supplier-ds.pem"
    wrong.write_bytes(keystore_pem("Z1b-supplier-ds", "certificate"))
    acb = tmp_path / "acb-ka.key.pem"
    acb.write_bytes(keystore_pem("Z1-accessControlBroker-ka", "privateKey"))
    dev = gpl_path("gbcs-parser", "test", "rtds", "keystore", "00db1234567890a0-ka.pem")
    commands = sorted(folder.glob("*_COMMAND_GBCS.HEX"))
    assert len(commands) == 5
    for f in commands:
        run("gbcs", "verify", f, "--cert", cert, "--ka-cert", dev, "--ka-key", acb, ok=0)
        assert "bad-signature" in run("gbcs", "verify", f, "--cert", wrong, ok=1).output
        # the DCC's step: the RTDS signed pre-command wrapped in the MAC header gives the RTDS
        # command byte for byte
        signed = tmp_path / "signed.hex"
        signed.write_text(gbcs.decode(bytes.fromhex(f.read_text().strip())).apdu().hex())
        out = tmp_path / "wrapped.hex"
        run("gbcs", "mac", signed, "--ka-cert", dev, "--ka-key", acb, "-o", out, ok=0)
        assert out.read_text().strip() == f.read_text().strip().upper()
    xml = gpl_path("duis-templates", "templates", "11.1_UPDATE_FIRMWARE_REQUEST_DUIS.XML").read_text()
    image = tmp_path / "11.1.zigbee"
    image.write_bytes(base64.b64decode(re.search(r"<sr:FirmwareImage>([^<]+)<", xml).group(1)))
    run("gbcs", "verify", image, "--cert", cert, ok=0)
    info = json.loads(run("gbcs", "decode", image, "--json", ok=0).output)
    assert info["header_string"] == "I am a GFI ESME[] firmware image"
    assert info["manufacturer_image_hash"] == \
        "7542F475E3F12EAE887D81E32C46D313741D67076B13CAEC2F82E00BA5E1BB36"
