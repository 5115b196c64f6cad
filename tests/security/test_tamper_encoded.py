"""Tamper sweep of compressed and delta files (issue 15) with the device's own code
in-process (hostdev), over a copy of a deployed board's flash, both bank kinds.

Bytes spread over a small signed delta and compressed file (every byte, all eight bits, with
HANOTA_FAULT_FULL=1) with one bit flipped, a delta against another base, and a truncated segment: each must be
refused with a named reason, write nothing outside the inactive bank (nothing at all for a
wrong base: it is decided on the descriptor) and leave the running image. The delta is made
against the first 8 KiB of the image the board runs, so each offer decodes quickly.
"""
from __future__ import annotations

import struct

import pytest

from hanfw import otafile, reasons, zcl
from hanota import images

import hostdev
import tamper
from fault import cutkit, results

FULL = results.FULL
EUI64 = "02:68:61:00:00:00:00:01"
V2 = 0x00020000
PKIND = {"vboard-esp32": otafile.PAYLOAD_ESP_APP, "vboard-nrf52840": otafile.PAYLOAD_ROMFS}
BASE_LEN = 8192
# the compressed file is some 5 KB: every byte, eight bits each, is hours in FULL mode
pytestmark = pytest.mark.timeout(6 * 3600 if FULL else 300)
ANNOUNCE = (images.DEFAULT_MANUFACTURER, images.ROLE_IMAGE_TYPES["ppmid"], V2)


def device(kind, snapshot, tmp_path, keys):
    return hostdev.HostDevice(kind, snapshot(kind).dir / "flash.bin", tmp_path / "dev", keys,
                              eui64=EUI64, hw_version=tamper.HW)


def base_of(kit, kind) -> bytes:
    return kit.payloads[kind, 1]["app"].read_bytes()[:BASE_LEN]


def target_of(base: bytes) -> bytes:
    t = bytearray(base)
    t[100:110] = b"version 2!"
    t[5000:5000] = bytes(range(200))
    return bytes(t[:BASE_LEN])


def make(kind, key, encoding, base, target, **kw):
    return images.build_image(target, key=key, version=V2, role="ppmid",
                              payload_kind=PKIND[kind], encoding=encoding,
                              base=base if encoding == "delta" else None, **kw)


def field_of(data: bytes, pos: int) -> str:
    s = otafile.parse_stream(data)
    for tag, n, off in s.elements:
        if off <= pos < off + otafile.ELEMENT_HEADER_LEN + n:
            return {otafile.TAG_DESCRIPTOR: "descriptor", otafile.TAG_UPGRADE_IMAGE: "segments",
                    otafile.TAG_SIGNATURE: "signature"}.get(tag, "element")
    return "header"


def check_refused(d, r, what, reason=None):
    assert r.status in (zcl.INVALID_IMAGE, zcl.ABORT), "%s: not refused (%s)" % (what, r)
    assert r.reason in reasons.REASONS and r.reason != "none", (what, r)
    if reason is not None:
        assert r.reason == reason, "%s: refused as %s, expected %s" % (what, r.reason, reason)
    assert not d.outside_inactive(d.mark), "%s: wrote outside the inactive bank" % what
    assert d.banks.running_version() == d.running_version, what


@pytest.mark.parametrize("kind", cutkit.KINDS)
@pytest.mark.parametrize("encoding", ["delta", "zlib"])
def test_every_bit_position_of_an_encoded_file(kit, snapshot, tmp_path, key, pub, kind,
                                               encoding):
    base = base_of(kit, kind)
    data = make(kind, key, encoding, base, target_of(base))
    d = device(kind, snapshot, tmp_path, [pub])
    before = d.protected()
    counts: dict = {}
    # CI: 40 positions spread over the file, and every field's first byte; FULL: every byte
    positions = set(range(len(data))) if FULL else set(range(0, len(data), max(1, len(data) // 40)))
    if not FULL:
        s = otafile.parse_stream(data)
        positions.update(off + otafile.ELEMENT_HEADER_LEN for _, _, off in s.elements)
        positions.update((0, 52, len(data) - 1))
    for pos in sorted(positions):
        for bit in (range(8) if FULL else [pos % 8]):
            bad = bytearray(data)
            bad[pos] ^= 1 << bit
            r = d.serve(bytes(bad), announce=ANNOUNCE)
            field = field_of(data, pos)
            check_refused(d, r, "bit %d of byte %d (%s)" % (bit, pos, field))
            c = counts.setdefault((field, r.reason), 0)
            counts[field, r.reason] = c + 1
    assert d.protected() == before
    r = d.serve(data)  # and after all that, the intact file is taken
    assert r.accepted, "the intact file: %s" % (r,)
    for (field, reason), n in counts.items():
        results.record("tamper", (kind, "bit flip (%s file): %s" % (encoding, field), reason),
                       tried=n, rejected=n)
    # a flipped segment byte is caught by the chain, before it is decoded
    assert {r for (f, r) in counts if f == "segments"} <= {"bad-segment", "truncated-segment",
                                                            "malformed", "bad-descriptor",
                                                            "too-big", "truncated"}
    d.close()


@pytest.mark.parametrize("kind", cutkit.KINDS)
def test_a_delta_against_another_base_is_refused_on_its_descriptor(kit, snapshot, tmp_path,
                                                                   key, pub, kind):
    base = bytearray(base_of(kit, kind))
    base[4000] ^= 0x01  # not what the board runs
    d = device(kind, snapshot, tmp_path, [pub])
    before = d.protected()
    r = d.serve(make(kind, key, "delta", bytes(base), target_of(bytes(base))))
    check_refused(d, r, "delta against another base", "wrong-base")
    assert r.ops == 0 and r.served <= 300
    assert d.protected() == before
    results.record("tamper", (kind, "delta against another base", r.reason), tried=1,
                   rejected=1)
    d.close()


@pytest.mark.parametrize("kind", cutkit.KINDS)
def test_a_truncated_segment_is_refused(kit, snapshot, tmp_path, key, pub, kind):
    base = base_of(kit, kind)
    data = bytearray(make(kind, key, "zlib", base, target_of(base)))
    s = otafile.parse_stream(bytes(data))
    tag, n, off = next(e for e in s.elements if e[0] == otafile.TAG_UPGRADE_IMAGE)
    cut = 9  # the last segment loses its last 9 bytes; lengths made to agree with it
    body_end = off + otafile.ELEMENT_HEADER_LEN + n
    data[body_end - cut:body_end] = b""
    struct.pack_into("<I", data, off + 2, n - cut)
    struct.pack_into("<I", data, 52, len(data))
    d = device(kind, snapshot, tmp_path, [pub])
    before = d.protected()
    r = d.serve(bytes(data))
    check_refused(d, r, "truncated segment", "truncated-segment")
    assert d.protected() == before
    results.record("tamper", (kind, "truncated segment", r.reason), tried=1, rejected=1)
    d.close()
