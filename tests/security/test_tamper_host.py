"""Tamper and policy sweep with the device's own code in-process (hostdev), over a copy of
a deployed virtual board's flash, for both bank kinds.

Every byte position of a small signed image with one bit flipped (all eight bits with
HANOTA_FAULT_FULL=1), sampled positions of a full-size image, and the policy cases: wrong
key, rotated keys, downgrades by file and by security version, replay of an older signed
image, wrong manufacturer / image type / hardware / destination, larger than the bank,
endless data. Each must be rejected with its named reason, write nothing outside the
inactive bank (nothing at all when decided on the header), and leave the running image.
"""
from __future__ import annotations

import random
import struct

import pytest

from hanfw import otafile, zcl
from hanota import images
from support.otabuild import new_key, raw_pub

import hostdev
import tamper
from fault import cutkit, results

FULL = results.FULL
KINDS = cutkit.KINDS
EUI64 = "02:68:61:00:00:00:00:01"
EUI = bytes(reversed(bytes.fromhex(EUI64.replace(":", ""))))
MFR, ITYPE = images.DEFAULT_MANUFACTURER, images.ROLE_IMAGE_TYPES["ppmid"]
V1, V2, V3 = 0x00010000, 0x00020000, 0x00030000
PKIND = {"vboard-esp32": otafile.PAYLOAD_ESP_APP, "vboard-nrf52840": otafile.PAYLOAD_ROMFS}
HEAD_BYTES = 192  # header + descriptor + image element header, in whole 64-byte blocks


def make(kind, key, payload=bytes(range(256)) * 2, version=V2, **kw):
    kw.setdefault("payload_kind", PKIND[kind])
    return images.build_image(payload, key=key, version=version, role="ppmid", **kw)


def device(kind, snapshot, tmp_path, keys, **kw) -> hostdev.HostDevice:
    d = hostdev.HostDevice(kind, snapshot(kind).dir / "flash.bin", tmp_path / "dev", keys,
                           eui64=EUI64, hw_version=tamper.HW, **kw)
    return d


def check_rejected(d: hostdev.HostDevice, r: hostdev.Result, reason: str, what: str,
                   field: str | None = None) -> None:
    if reason == "server-abort":  # the hub ended the transfer: no Upgrade End to send it
        assert r.status is None, "%s: %s" % (what, r)
    else:
        assert r.status in (zcl.INVALID_IMAGE, zcl.ABORT), "%s: not rejected (%s)" % (what, r)
    assert r.reason == reason, "%s: rejected as %s, expected %s" % (what, r.reason, reason)
    assert not d.outside_inactive(d.mark), "%s: wrote outside the inactive bank: %s" % (
        what, d.outside_inactive(d.mark))
    # a header-level reason is decided before the body, with no flash op -- except a second
    # descriptor where the signature should be (its tag flipped): that is met after the body
    late = field == "signature-tag"
    if (reason in tamper.HEADER_LEVEL or reason == "version-not-newer") and not late:
        assert r.ops == 0, "%s: decided on the header but did %d flash ops" % (what, r.ops)
    assert d.banks.running_version() == d.running_version


# ---------------------------------------------------------------- bit flips

def flip_and_check(d: hostdev.HostDevice, data: bytes, fields, pos: int, bit: int):
    """Serve data with one bit flipped; it must be rejected with the model's reason.
    Returns (field, result)."""
    bad = bytearray(data)
    bad[pos] ^= 1 << bit
    r = d.serve(bytes(bad), announce=(MFR, ITYPE, V2))
    field = tamper.field_at(fields, pos)[0]
    want = tamper.expected_reason(data, pos, 1 << bit)
    if want is None:
        assert r.reason in tamper.IMAGE_LENGTH, (field, pos, bit, r)
        want = r.reason
    check_rejected(d, r, want, "bit %d of byte %d (%s)" % (bit, pos, field), field)
    return field, r


@pytest.mark.parametrize("kind", KINDS)
def test_every_bit_position_of_a_small_image(kit, snapshot, tmp_path, key, pub, kind):
    data = make(kind, key, destination=EUI, min_hw=tamper.MIN_HW, max_hw=tamper.MAX_HW)
    d = device(kind, snapshot, tmp_path, [pub])
    before = d.protected()
    fields = tamper.layout_of(data)
    counts: dict = {}
    for pos in range(len(data)):
        for bit in (range(8) if FULL else [pos % 8]):
            field, r = flip_and_check(d, data, fields, pos, bit)
            c = counts.setdefault((field, r.reason), [0, 0])
            c[0] += 1
            c[1] += r.status in (zcl.INVALID_IMAGE, zcl.ABORT)
    assert d.protected() == before
    for (field, reason), (tried, rejected) in counts.items():
        results.record("tamper", (kind, "bit flip (small image): " + field, reason),
                       tried=tried, rejected=rejected)
    d.close()


@pytest.mark.parametrize("kind", KINDS)
def test_sampled_bit_flips_of_a_full_size_image(kit, snapshot, tmp_path, key, pub, kind):
    payload = kit.payloads[kind, 2]["app"].read_bytes()
    data = make(kind, key, payload=payload)
    fields = tamper.layout_of(data)
    rng = random.Random("full-size/" + kind)
    positions = set()
    for name, start, end in fields:
        n = end - start if name != "payload" else (512 if FULL else 24)
        if name != "payload" and not FULL:
            n = min(n, 2)
        positions.update(rng.sample(range(start, end), min(n, end - start)))
    d = device(kind, snapshot, tmp_path, [pub])
    before = d.protected()
    for pos in sorted(positions):
        field, r = flip_and_check(d, data, fields, pos, rng.randrange(8))
        results.record("tamper", (kind, "bit flip (full-size image): " + field, r.reason),
                       tried=1, rejected=1)
    assert d.protected() == before
    d.close()


# ---------------------------------------------------------------- policy cases

def _case(d: hostdev.HostDevice, data: bytes, reason: str, what: str, **serve) -> hostdev.Result:
    before = d.protected()
    r = d.serve(data, **serve)
    check_rejected(d, r, reason, what)
    assert d.protected() == before, what
    results.record("tamper", (d.kind, what, reason), tried=1, rejected=1)
    return r


def _accepted(d: hostdev.HostDevice, data: bytes, what: str, **serve) -> None:
    r = d.serve(data, **serve)
    assert r.accepted, "%s: should be accepted, got %s" % (what, r)
    assert not d.outside_inactive(d.mark) or d.kind == "vboard-nrf52840" and all(
        d.spec.region("bootctl").offset <= a < d.spec.region("bootctl").end
        for a, _ in d.outside_inactive(d.mark)), what  # staging writes the boot-control record


@pytest.mark.parametrize("kind", KINDS)
def test_wrong_and_rotated_keys(kit, snapshot, tmp_path, key, pub, kind):
    old = new_key()
    d = device(kind, snapshot, tmp_path, [pub])
    _case(d, make(kind, old), "unknown-key", "wrong key")
    d.close()
    # before the rotation the device trusts both keys: an image signed by the old one is fine
    d = device(kind, snapshot, tmp_path, [raw_pub(old), pub])
    _accepted(d, make(kind, old), "old key, both pinned")
    d.close()
    # after it (old key removed) the same image is refused, the new key's accepted
    d = device(kind, snapshot, tmp_path, [pub])
    _case(d, make(kind, old), "unknown-key", "rotated keys: old key removed")
    _accepted(d, make(kind, key), "rotated keys: new key")
    d.close()


@pytest.mark.parametrize("kind", KINDS)
def test_downgrades_and_replays(kit, snapshot, tmp_path, key, pub, kind):
    v1_release = make(kind, key, version=V1)  # an older, validly signed image
    d = device(kind, snapshot, tmp_path, [pub], running_version=V2, floor=3)
    r = _case(d, make(kind, key, version=0x00018000, security_version=3), "version-not-newer",
              "downgrade by file version")
    assert r.served == 0  # refused on the Query Next Image Response
    _case(d, make(kind, key, version=V2, security_version=3), "version-not-newer",
          "same file version")
    _case(d, v1_release, "version-not-newer", "replay of an older signed image")
    # a hub that announces the old file as a newer version: the header disagrees
    r = _case(d, v1_release, "malformed", "replay announced as a newer version",
              announce=(MFR, ITYPE, V3))
    assert r.served <= HEAD_BYTES
    r = _case(d, make(kind, key, version=V3, security_version=2), "security-version",
              "downgrade by security version")
    assert r.served <= HEAD_BYTES
    _accepted(d, make(kind, key, version=V3, security_version=3), "equal security version")
    d.close()


@pytest.mark.parametrize("kind", KINDS)
def test_wrong_target(kit, snapshot, tmp_path, key, pub, kind):
    d = device(kind, snapshot, tmp_path, [pub])
    for field, value, reason in (("manufacturer", 0x9999, "wrong-manufacturer"),
                                 ("image_type", 0x00AA, "wrong-image-type")):
        data = make(kind, key, **{field: value})
        announced = (value, ITYPE, V2) if field == "manufacturer" else (MFR, value, V2)
        r = _case(d, data, reason, "wrong %s (announced)" % field.replace("_", " "),
                  announce=announced)
        assert r.served == 0
        r = _case(d, data, reason, "wrong %s (file only)" % field.replace("_", " "),
                  announce=(MFR, ITYPE, V2))
        assert r.served <= HEAD_BYTES
    r = _case(d, make(kind, key, min_hw=0x0200, max_hw=0x0300), "hardware-version",
              "hardware range excludes the device")
    assert r.served <= HEAD_BYTES
    r = _case(d, make(kind, key, destination=bytes(range(8))), "wrong-destination",
              "destination is another device")
    assert r.served <= HEAD_BYTES
    other = "vboard-esp32" if kind == "vboard-nrf52840" else "vboard-nrf52840"
    _case(d, make(kind, key, payload_kind=PKIND[other]), "wrong-payload-kind",
          "payload for the other bank kind")
    _accepted(d, make(kind, key, destination=EUI, min_hw=0x0100, max_hw=0x0100),
              "destination and hardware range of this device")
    d.close()


@pytest.mark.parametrize("kind", KINDS)
def test_too_big_and_endless_data(kit, snapshot, tmp_path, key, pub, kind):
    d = device(kind, snapshot, tmp_path, [pub])
    bank = d.inactive.size
    big = make(kind, key, payload=bytes(bank + 4096))
    r = _case(d, big, "too-big", "image larger than the bank")
    assert r.served <= HEAD_BYTES
    small = make(kind, key)
    r = _case(d, small, "too-big", "endless data: announced size 0xFFFFFFFF",
              size=0xFFFFFFFF)
    assert r.served == 0
    huge = bytearray(small)
    struct.pack_into("<I", huge, 52, 0xFFFFFFF0)
    r = _case(d, bytes(huge), "too-big", "endless data: header claims 4 GiB")
    assert r.served <= 64
    # element lengths that claim more than the file: refused before the body
    r = _case(d, _with_image_length(small, 0xFFFFFF00), "malformed",
              "endless data: image element claims 4 GiB")
    assert r.served <= HEAD_BYTES
    # a hub that keeps streaming past the signed length
    r = _case(d, small, "malformed", "endless data: bytes past the signed length",
              extra=bytes(200))
    assert r.served <= len(small) + 200
    # and a hub that announces less than the file holds: the stream stops at the
    # announced size (the file's total size is above it)
    r = _case(d, small, "too-big", "file longer than announced", size=len(small) - 10)
    assert r.served <= 64
    d.close()


def _with_image_length(data: bytes, n: int) -> bytes:
    fields = dict((f[0], f[1:]) for f in tamper.layout_of(data))
    out = bytearray(data)
    struct.pack_into("<I", out, fields["image-length"][0], n)
    return bytes(out)


@pytest.mark.parametrize("kind", KINDS)
def test_unsigned_and_truncated(kit, snapshot, tmp_path, key, pub, kind):
    d = device(kind, snapshot, tmp_path, [pub])
    data = make(kind, key)
    unsigned = bytearray(data[:-otafile.SIGNATURE_ELEMENT_LEN])
    struct.pack_into("<I", unsigned, 52, len(unsigned))
    _case(d, bytes(unsigned), "unsigned", "unsigned image")
    # a file cut short: the hub has no more to give (it aborts past its end)
    _case(d, data[:len(data) - 100], "server-abort", "file shorter than its header says",
          size=len(data))
    d.close()
