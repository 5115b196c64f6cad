"""hanfw.gbcs, hanfw.gcm and the ECDH in hanfw.p256 (under CPython): the GBCS section 18.4
vectors (every intermediate value), the derived CS06 / Upgrade Image / OTA file examples,
round trips, and the device's refusals, each by its named reason.

The vectors are tests/vectors/gbcs/gbcs-18.4.json (provenance in tests/vectors/README.md).
"""
from __future__ import annotations

import hashlib
import json
import random
import sys

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hanfw import gbcs, gbcsimage, gcm, otafile, p256
from support.mpy import VECTORS

V = json.loads((VECTORS / "gbcs" / "gbcs-18.4.json").read_text())
SRC = V["copied_from_source"]
EXP = V["computed_expected_values"]
DER = V["derived_examples"]
H = bytes.fromhex
CURVE = ec.SECP256R1()


def pub65(xy_hex: str) -> bytes:
    return b"\x04" + H(xy_hex)


SUPPLIER_A = SRC["supplier_a"]
DEVICE_A = SRC["device_a"]
ACB_KA_PRIV = H(SRC["acb"]["ka_private_key"])


def sign(priv: int, data: bytes) -> bytes:
    key = ec.derive_private_key(priv, CURVE)
    r, s = utils.decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def public(priv: int) -> bytes:
    return ec.derive_private_key(priv, CURVE).public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


# ---- 18.4: ECDH, KDF, GMAC, signature ------------------------------------------------


def test_ecdh_and_public_key_match_the_18_4_values():
    assert p256.public_key(ACB_KA_PRIV) == pub65(EXP["acb_ka_public_key"])
    assert p256.public_key(H(SUPPLIER_A["ds_private_key"])) == pub65(SUPPLIER_A["ds_public_key"])
    z = p256.ecdh(ACB_KA_PRIV, pub65(DEVICE_A["ka_public_key"]))
    assert z.hex().upper() == EXP["ecs04b"]["ecdh_shared_secret_z"]


def test_ecdh_agrees_with_cryptography_and_refuses_bad_keys():
    rng = random.Random(13)
    for _ in range(5):
        a, b = rng.randrange(1, p256.N), rng.randrange(1, p256.N)
        ka = ec.derive_private_key(a, CURVE)
        z = ka.exchange(ec.ECDH(), ec.derive_private_key(b, CURVE).public_key())
        assert p256.ecdh(a.to_bytes(32, "big"), public(b)) == z
        assert p256.public_key(a.to_bytes(32, "big")) == public(a)
    good = public(5)
    off_curve = good[:-1] + bytes([good[-1] ^ 1])
    for priv, pub in ((bytes(32), good), (p256.N.to_bytes(32, "big"), good),
                      (b"\x01" * 31, good), (b"\x01" * 32, off_curve), (b"\x01" * 32, good[1:])):
        with pytest.raises(ValueError):
            p256.ecdh(priv, pub)


def test_gcm_nist_example_and_agreement_with_cryptography():
    n = SRC["nist_gcm_example6"]
    ct, tag = gcm.Gcm(H(n["key"])).encrypt(H(n["iv"]), H(n["aad"]), H(n["plaintext"]))
    assert ct == H(n["ciphertext"]) and tag[:12] == H(n["tag"])
    rng = random.Random(6)
    for alen in (0, 1, 15, 16, 17, 33, 170):
        key, iv, aad = rng.randbytes(16), rng.randbytes(12), rng.randbytes(alen)
        pt = rng.randbytes(rng.choice((0, 5, 32)))
        want = AESGCM(key).encrypt(iv, pt, aad)
        assert b"".join(gcm.Gcm(key).encrypt(iv, aad, pt)) == want
        if not pt:
            cut = alen // 3
            assert gcm.Gcm(key).gmac(iv, (aad[:cut], aad[cut:])) == want


def test_sign_is_rfc6979_the_derived_signatures_and_cryptography_agree():
    d = H(SUPPLIER_A["ds_private_key"])
    for name in ("cs06_immediate", "cs06_future_dated", "cs06_cancellation"):
        m = gbcs.decode(H(DER[name]["precommand"]))
        assert gbcs.sign_message(m, d).signature == H(DER[name]["signature"])
    image_hash = H(DER["manufacturer_image_hash_sha256"])
    assert p256.sign(d, image_hash) == H(DER["supplier_signature_over_manufacturer_image"])
    rng = random.Random(7)
    det = ec.ECDSA(utils.Prehashed(hashes.SHA256()), deterministic_signing=True)
    for _ in range(10):
        k, digest = rng.randrange(1, p256.N), rng.randbytes(32)
        r, s = utils.decode_dss_signature(ec.derive_private_key(k, CURVE).sign(digest, det))
        sig = p256.sign(k.to_bytes(32, "big"), digest)
        assert sig == r.to_bytes(32, "big") + s.to_bytes(32, "big")
        assert p256.verify(public(k), digest, sig)
    for priv, digest in ((bytes(32), bytes(32)), (b"\x01" * 32, bytes(31))):
        with pytest.raises(ValueError):
            p256.sign(priv, digest)


def test_gcm_without_cryptolib_or_cryptography_uses_hanfw_aes(monkeypatch):
    # the nRF port's path (no cryptolib): the same tags as with a C AES
    monkeypatch.setitem(sys.modules, "cryptolib", None)
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.ciphers", None)
    enc = gcm._encryptor(bytes(16))
    assert getattr(enc, "__self__", None).__class__.__name__ == "Aes128"
    e = EXP["ecs04b"]
    assert gcm.Gcm(H(e["mac_key"])).gmac(H(e["gcm_iv"]), [H(e["gmac_aad"])]) == \
        H(e["gmac_tag_16"])


def test_ecs04b_every_intermediate_value():
    e = EXP["ecs04b"]
    m = gbcs.decode(H(SRC["ecs04b_command"]["hex"]))
    assert m.mac_header and m.kind == "raw" and m.message_code == 0x00B3
    assert m.counter == 1 and m.originator == H(SUPPLIER_A["entity_id"])
    assert m.recipient == H(DEVICE_A["entity_id"]) and m.payload == H(e["payload"])
    assert m.signed_bytes() == H(e["signed_bytes"]) == bytes(m.raw[m.signed_start:m.signed_end])
    assert m.signature == H(e["signature"])
    assert gbcs.kdf_other_info(m) == H(e["kdf_other_info"])
    z = H(e["ecdh_shared_secret_z"])
    assert gbcs.mac_key(z, m) == H(e["mac_key"])
    assert b"\x11\x00\x00\x00\x00\x00" + m.apdu() == H(e["gmac_aad"])
    tag = gcm.Gcm(H(e["mac_key"])).gmac(H(e["gcm_iv"]), [H(e["gmac_aad"])])
    assert tag == H(e["gmac_tag_16"])
    assert gbcs.compute_mac(z, m) == m.mac == H(e["mac_12"])
    gbcs.check_signature(m, pub65(SUPPLIER_A["ds_public_key"]))
    assert m.encode() == H(SRC["ecs04b_command"]["hex"])


# ---- derived CS06 examples --------------------------------------------------------------


@pytest.mark.parametrize("name", ["cs06_immediate", "cs06_future_dated", "cs06_cancellation"])
def test_derived_cs06_decode_build_and_round_trip(name):
    d = DER[name]
    raw = H(d["command"])
    m = gbcs.decode(raw)
    assert (m.kind, m.message_code, m.cra) == ("cs06-command", 0x0012, gbcs.CRA_COMMAND)
    assert m.counter == m.fields["payload_originator_counter"] == d["originator_counter"]
    assert m.fields["manufacturer_image_hash"] == H(DER["manufacturer_image_hash_sha256"])
    assert m.fields["execution_date_time"] == d["execution_date_time"]
    assert m.encode() == raw
    assert m.precommand() == H(d["precommand"]) and m.signed_bytes() == H(d["signed_bytes"])
    pre = gbcs.decode(H(d["precommand"]))
    assert pre.signature is None and not pre.mac_header and pre.fields == m.fields
    assert pre.encode() == H(d["precommand"])
    z = p256.ecdh(ACB_KA_PRIV, pub65(DEVICE_A["ka_public_key"]))
    assert gbcs.mac_key(z, m) == H(d["mac_key"]) and gbcs.compute_mac(z, m) == H(d["mac"])
    gbcs.check_signature(m, pub65(SUPPLIER_A["ds_public_key"]))
    # built from its fields, signed (RFC 6979 in the vector, so take its signature) and MAC'd
    b = gbcs.cs06_command(d["originator_counter"], H(SUPPLIER_A["entity_id"]),
                          H(DEVICE_A["entity_id"]), H(DER["manufacturer_image_hash_sha256"]),
                          d["execution_date_time"])
    b.signature = H(d["signature"])
    b.mac = gbcs.compute_mac(z, b)
    assert b.encode() == raw


def test_responses_and_alerts_build_as_the_reference_lays_them_out():
    cmd = gbcs.decode(H(DER["cs06_immediate"]["command"]))
    stamp = gbcs.dlms_date_time(2015, 1, 1)
    assert stamp == H("07DF0101FF000000008000FF")  # the RTDS responses' date-time
    r = gbcs.cs06_response(cmd, gbcs.CS06_SUCCESS, b"\x01\x23\xAB\xCE", stamp)
    assert gbcs.decode(r.encode()).date_time == stamp
    raw = r.encode()
    # gbcs_duis.md section 8: the outcome after the message code, then the signature length
    assert raw[-13:] == H("0B3009020100040401 23ABCE 00".replace(" ", ""))
    assert gbcs.decode(raw).fields == {"response_code": 0, "firmware_version": H("0123ABCE")}
    acc = gbcs.cs06_response(cmd).encode()
    assert acc.endswith(b"\x02\x05\x00\x00") and gbcs.decode(acc).kind == "cs06-accepted"
    al = gbcs.fd_alert(2000, cmd.recipient, cmd.originator, 1001, "20300115090000Z",
                       gbcs.CS06_SUCCESS, H("0123ABCF"))
    d = gbcs.decode(al.encode())
    assert d.fields["alert_code"] == 0x8F66 and d.payload[:7] == H("302502030 08F66".replace(" ", ""))
    bad = gbcs.fd_alert(2001, cmd.recipient, cmd.originator, 1004, "20300101000000Z",
                        gbcs.CS06_HASH_MISMATCH, H("0123ABCF"))
    assert gbcs.decode(bad.encode()).fields["alert_code"] == 0x8F67
    cs08 = gbcs.Message(gbcs.CRA_COMMAND, 1300, H("90B3D51F30000002"), H("00DB1234567890A4"),
                        gbcs.MSG_CS08, "cs08-command", supp_id=H("90B3D51F30010000"),
                        supp_counter=1000, signature=b"", mac_header=True)
    rsp = gbcs.cs08_response(cs08, H("0123ABCD")).encode()
    # CS08 puts the firmware version before the code (CS06: after)
    assert H("0B30090404 0123ABCD 020100 00".replace(" ", "")) in rsp
    assert gbcs.decode(rsp).kind == "cs08-response"


def test_non_minimal_der_and_bad_framing_are_malformed_not_silently_accepted():
    raw = bytearray(H(DER["cs06_immediate"]["precommand"]))
    # counter INTEGER 02 01 02 -> 02 02 00 02 (non-minimal), lengths adjusted
    pos = raw.rindex(b"\x02\x01\x02")
    bad = raw[:pos] + b"\x02\x02\x00\x02" + raw[pos + 3:]
    bad[bad.index(b"\x30\x25")] , bad[bad.index(b"\x30\x25") + 1] = 0x30, 0x26
    bad[bad.index(b"\x00\x12") + 2] += 1
    with pytest.raises(gbcs.GbcsError) as e:
        gbcs.decode(bytes(bad))
    assert e.value.reason == "malformed" and "not minimal" in str(e.value)
    for mutate, reason in ((lambda b: b"\xDE" + b[1:], "malformed"),
                           (lambda b: b[:1] + b"\x08" + b[2:], "malformed"),
                           (lambda b: b[:2] + b"\x07" + b[3:], "malformed"),
                           (lambda b: b + b"\x40" + bytes(10), "truncated"),
                           (lambda b: b + b"\x41" + bytes(65), "malformed")):
        with pytest.raises(gbcs.GbcsError) as e:
            gbcs.decode(mutate(bytes(raw)))
        assert e.value.reason == reason, (reason, str(e.value))


def test_payload_decoder_names_a_short_der_length_malformed():
    # fuzzer find: a lone SEQUENCE tag ran out inside its length and escaped as 'truncated'
    for data in (b"\x30", b"\x30\x81", b"\x30\x82\x01", b"\x30\x03\x04\x81"):
        with pytest.raises(gbcs.GbcsError) as e:
            gbcs.decode_payload(gbcs.MSG_CS06, gbcs.CRA_COMMAND, data)
        assert e.value.reason == "malformed", data


# ---- Upgrade Image and OTA file ---------------------------------------------------------


def test_derived_ota_file_streams_in_any_pieces_and_its_signature_verifies():
    raw = H(DER["ota_file"]["hex"])
    assert raw[60:60 + len(H(DER["manufacturer_image"]))] == H(DER["manufacturer_image"])
    rng = random.Random(1)
    for _ in range(20):
        seen = bytearray()
        r = gbcsimage.OtaFileReader(sink=seen.extend)
        i = 0
        while i < len(raw):
            k = rng.randrange(1, 40)
            r.feed(raw[i:i + k])
            i += k
        assert r.done and r.header_length == 60 and r.total_size == len(raw)
        assert (r.manufacturer, r.image_type, r.file_version) == (0x1234, 1, 2)
        assert (r.min_hw, r.max_hw, r.header_string) == (0, 0xFFFF, bytes(32))
        assert bytes(seen) == H(DER["manufacturer_image"])
        assert r.image.image_hash == H(DER["manufacturer_image_hash_sha256"])
        assert r.image.force_replace == 0
        r.image.check(pub65(SUPPLIER_A["ds_public_key"]))
    with pytest.raises(gbcsimage.ImageError) as e:
        r.image.check(pub65(DEVICE_A["ds_public_key"]))
    assert e.value.reason == "bad-signature"
    # built back from its parts
    hdr = otafile.Header(manufacturer=0x1234, image_type=1, file_version=2, min_hw=0, max_hw=0xFFFF)
    up = gbcsimage.upgrade_image(H(DER["manufacturer_image"]),
                            H(DER["supplier_signature_over_manufacturer_image"]))
    assert up == H(DER["upgrade_image"]) and gbcsimage.ota_file(hdr, up) == raw


def test_upgrade_image_refusals():
    up = bytearray(H(DER["upgrade_image"]))
    key = pub65(SUPPLIER_A["ds_public_key"])
    for pos in (0, len(up) - 67, len(up) - 60, len(up) - 1):
        bad = bytearray(up)
        bad[pos] ^= 0x10
        r = gbcsimage.UpgradeImageReader(len(bad))
        r.feed(bad)
        with pytest.raises(gbcsimage.ImageError) as e:
            r.check(key)
        assert e.value.reason == "bad-signature"
    bad = bytearray(up)
    bad[-65] = 0x41
    with pytest.raises(gbcsimage.ImageError, match="0x41") as e:
        gbcsimage.UpgradeImageReader(len(bad)).feed(bad)
    assert e.value.reason == "bad-image"
    r = gbcsimage.UpgradeImageReader(len(up))
    r.feed(up[:-1])
    with pytest.raises(gbcsimage.ImageError) as e:
        r.check(key)
    assert e.value.reason == "truncated"
    with pytest.raises(gbcsimage.ImageError) as e:
        r.feed(b"ab")
    assert e.value.reason == "bad-image"


# ---- the device's check of a command -----------------------------------------------------

SUP = 0x5A5A_1234_5678
ACB = 0xACB_ACB_ACB
DEV = 0xDE71CE
SUP_EUI, DEV_EUI, ACB_EUI = H("90B3D51F30010000"), H("00DB1234567890A5"), H("90B3D51F30000002")
HASH = hashlib.sha256(b"image").digest()


def z() -> bytes:
    return p256.ecdh(ACB.to_bytes(32, "big"), public(DEV))


def verifier() -> gbcs.Verifier:
    return gbcs.Verifier(public(SUP), public(ACB), DEV.to_bytes(32, "big"), DEV_EUI, SUP_EUI)


def build(counter=10, at=None, recipient=DEV_EUI, code=None, key=SUP, originator=SUP_EUI) -> bytes:
    m = gbcs.cs06_command(counter, originator, recipient, HASH, at)
    if code is not None:
        m.message_code = code
    m.signature = sign(key, m.signed_bytes())
    m.mac = gbcs.compute_mac(z(), m)
    return m.encode()


def refused(data, last=5, v=None) -> str:
    with pytest.raises(gbcs.GbcsError) as e:
        (v or verifier()).verify(data, last)
    assert e.value.reason in gbcs.REASONS and str(e.value)
    return e.value.reason


def test_a_good_cs06_passes_and_each_bad_one_is_refused_by_name():
    m = verifier().verify(build(), 5)
    assert m.fields["manufacturer_image_hash"] == HASH and m.counter == 10
    m = verifier().verify(build(11, at=gbcs.CANCEL_TIME), 10)
    assert m.fields["execution_date_time"] == gbcs.CANCEL_TIME
    assert refused(build(5)) == "replayed-counter"
    assert refused(build(4)) == "replayed-counter"
    assert refused(build(recipient=H("00DB1234567890A0"))) == "wrong-recipient"
    assert refused(build(code=0x00B3)) == "unknown-message-code"
    assert refused(build(key=SUP + 1)) == "bad-signature"
    assert refused(build(originator=H("90B3D51F30030000"))) == "wrong-originator"
    other_acb = gbcs.Verifier(public(SUP), public(ACB + 1), DEV.to_bytes(32, "big"), DEV_EUI)
    assert refused(build(), v=other_acb) == "bad-mac"
    unsigned = gbcs.decode(build())
    unsigned.signature = b""
    unsigned.mac = gbcs.compute_mac(z(), unsigned)
    assert refused(unsigned.encode()) == "unsigned"
    assert refused(unsigned.precommand()) == "no-mac"
    resp = gbcs.cs06_response(gbcs.decode(build()), 0, b"1234")
    assert refused(resp.encode()) == "not-a-command"
    mism = gbcs.decode(build())
    mism.fields["payload_originator_counter"] = 99
    mism.payload = gbcs.encode_payload(mism.kind, mism.fields)
    mism.signature = sign(SUP, mism.signed_bytes())
    mism.mac = gbcs.compute_mac(z(), mism)
    assert refused(mism.encode()) == "counter-mismatch"


def test_a_flipped_byte_anywhere_and_every_truncation_are_refused():
    good = build()
    v = verifier()
    reasons = {}
    for i in range(len(good)):
        bad = bytearray(good)
        bad[i] ^= 0x01
        r = refused(bytes(bad), v=v)
        reasons.setdefault(r, []).append(i)
    # the MAC covers everything after the header; no flip gets past the checks
    assert set(reasons) <= {"malformed", "truncated", "wrong-recipient", "bad-mac"}, reasons
    assert "bad-mac" in reasons and "wrong-recipient" in reasons
    for n in range(len(good)):
        assert refused(good[:n], v=v) == "truncated", n
    assert refused(good + b"\x00", v=v) == "malformed"


def test_verify_command_one_shot_and_cs08_needs_only_the_mac():
    data = build(20)
    m = gbcs.verify_command(data, public(SUP), public(ACB), DEV.to_bytes(32, "big"), DEV_EUI, 19)
    assert m.counter == 20
    c = gbcs.Message(gbcs.CRA_COMMAND, 1300, ACB_EUI, DEV_EUI, gbcs.MSG_CS08, "cs08-command",
                     supp_id=SUP_EUI, supp_counter=1000, signature=b"", mac_header=True)
    c.mac = gbcs.compute_mac(z(), c)
    assert verifier().verify(c.encode(), 1299).kind == "cs08-command"
    assert refused(c.encode(), last=1300) == "replayed-counter"


# ---- round trip of everything the builders make ----------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_EUI = st.binary(min_size=8, max_size=8)
_TIME = st.builds(lambda y, mo, d, h, mi, s: "%04d%02d%02d%02d%02d%02dZ" % (y, mo, d, h, mi, s),
                  st.integers(2000, 9999), st.integers(1, 12), st.integers(1, 28),
                  st.integers(0, 23), st.integers(0, 59), st.integers(0, 59))
_COUNTER = st.integers(0, (1 << 63) - 1)


@st.composite
def messages(draw):
    kind = draw(st.sampled_from(["cs06-command", "cs06-response", "cs06-accepted", "fd-alert",
                                 "cs08-command", "cs08-response", "ccs08-alert", "cs09-alert",
                                 "raw"]))
    code = {"cs06": gbcs.MSG_CS06, "fd": gbcs.MSG_FD_ALERT, "cs08": gbcs.MSG_CS08,
            "ccs08": gbcs.MSG_CCS08, "cs09": gbcs.MSG_CS09}.get(kind.split("-")[0], 0x00B3)
    cra = gbcs.CRA_ALERT if kind.endswith("alert") else \
        gbcs.CRA_RESPONSE if kind in ("cs06-response", "cs06-accepted", "cs08-response") \
        else gbcs.CRA_COMMAND
    code_i = st.integers(0, 3)
    fw = st.binary(min_size=4, max_size=4)
    f = {
        "cs06-command": lambda: {"manufacturer_image_hash": draw(st.binary(min_size=32,
                                                                           max_size=32)),
                                 "payload_originator_counter": draw(_COUNTER),
                                 "execution_date_time": draw(st.none() | _TIME)},
        "cs06-response": lambda: {"response_code": draw(code_i), "firmware_version": draw(fw)},
        "fd-alert": lambda: {"alert_code": draw(st.sampled_from([0x8F66, 0x8F67])),
                             "execution_date_time": draw(_TIME),
                             "payload_originator_counter": draw(_COUNTER),
                             "response_code": draw(code_i), "firmware_version": draw(fw)},
        "cs08-response": lambda: {"firmware_version": draw(fw), "response_code": draw(code_i)},
        "ccs08-alert": lambda: {"alert_code": 0x8F8A, "date_time": draw(_TIME),
                                "entity_id": draw(_EUI), "firmware_version": draw(fw),
                                "response_code": draw(code_i)},
        "cs09-alert": lambda: {"alert_code": 0x8F8B, "date_time": draw(_TIME),
                               "firmware_version": draw(fw), "activation_result": draw(code_i)},
    }.get(kind, dict)()
    supp = draw(st.integers(0, 3))
    m = gbcs.Message(cra, draw(_COUNTER), draw(_EUI), draw(_EUI), code, kind, f,
                     payload=draw(st.binary(max_size=300)) if kind == "raw" else None,
                     date_time=draw(st.none() | st.binary(min_size=12, max_size=12)),
                     supp_id=draw(_EUI) if supp else None,
                     supp_counter=draw(_COUNTER) if supp else None,
                     supp_orig_counter=draw(_COUNTER) if supp > 1 else None,
                     certificate=draw(st.binary(min_size=1, max_size=200)) if supp > 2 else None,
                     signature=draw(st.none() | st.just(b"") | st.binary(min_size=64,
                                                                          max_size=64)))
    if m.signature is not None and draw(st.booleans()):
        m.mac_header, m.mac = True, draw(st.binary(min_size=12, max_size=12))
    return m


@settings(max_examples=300, deadline=None)
@given(messages())
def test_every_built_message_decodes_to_its_fields_and_the_same_bytes(m):
    raw = m.encode()
    d = gbcs.decode(raw)
    assert d.encode() == raw
    assert (d.kind, d.fields, d.payload) == (m.kind, m.fields, m.payload)
    for a in ("cra", "counter", "originator", "recipient", "date_time", "message_code",
              "supp_id", "supp_counter", "supp_orig_counter", "certificate", "signature",
              "mac_header", "mac"):
        assert getattr(d, a) == getattr(m, a), a
