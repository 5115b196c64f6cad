"""Compressed and delta upgrades end to end on virtual boards (issue 15): the board decodes
as the blocks arrive, checks the target's SHA-256 and boots it; a delta against another base
is refused before its body; a reset mid-delta resumes at the last completed segment.
One of each per bank kind (ESP32 firmware banks, nRF ROMFS app banks)."""
import re
import time

import pytest

from hanfw import zcl
from hanota import images
from hanota.keys import load_private_key
from support.consolelog import ConsoleLog
from support.hubkit import HubThread
from test_ota_device import (KINDS, bring_up_in_64k, hub, read_reason,  # noqa: F401
                             running_bank_regions)
from test_ota_upgrade import V1, V2, bring_up, keys, payloads, read_version  # noqa: F401


def encoded_file(tmp_path, keys, payloads, kind, encoding, base=None, role="ppmid"):
    key = load_private_key(keys / "private.pem")
    target = payloads[kind, 2]["app"].read_bytes()
    if encoding == "delta" and base is None:
        base = payloads[kind, 1]["app"].read_bytes()  # what the board runs
    p = tmp_path / ("%s-%s.ota" % (kind, encoding))
    p.write_bytes(images.build_image(target, key=key, version=V2, role=role, encoding=encoding,
                                     base=base))
    return p, len(target)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("encoding", ["zlib", "delta"])
def test_encoded_upgrade_to_confirmed(vboards, hub, keys, payloads, tmp_path, kind, encoding):
    b, eui = bring_up(vboards, hub, keys, payloads, kind, "ppmid")
    hub.wait_event("hello", eui, timeout=30)
    path, target_len = encoded_file(tmp_path, keys, payloads, kind, encoding)
    hub.add_image(path)
    alert = hub.wait_event("alert", eui, timeout=180)[0]
    assert alert[2:6] == (V2, V1, False, zcl.ALERT_NONE)
    assert read_version(hub, eui) == V2
    served = hub.server.transfers[eui].bytes_served
    print("%s %s: %d bytes served for a %d-byte target" % (kind, encoding, served, target_len))
    assert served < target_len  # smaller on the link than the image it makes


@pytest.mark.parametrize("kind", KINDS)
def test_delta_against_another_base_is_refused_before_its_body(vboards, hub, keys, payloads,
                                                               tmp_path, kind):
    b, eui = bring_up(vboards, hub, keys, payloads, kind, "ppmid")
    hub.wait_event("hello", eui, timeout=30)
    before = running_bank_regions(b)
    # a base the board does not run: its own image with one byte changed (on the nRF the v1
    # and v2 app images are the same bytes, so v2 would be no other base)
    other = bytearray(payloads[kind, 1]["app"].read_bytes())
    other[len(other) // 2] ^= 0x01
    path, _ = encoded_file(tmp_path, keys, payloads, kind, "delta", base=bytes(other))
    hub.add_image(path)
    end = hub.wait_event("upgrade_end", eui, timeout=60)[0]
    assert end[3] == zcl.INVALID_IMAGE
    assert read_reason(hub, eui) == "wrong-base"
    t = hub.server.transfers.get(eui)
    assert t is None or t.bytes_served <= 300  # header, descriptor v2, image element header
    assert read_version(hub, eui) == V1
    assert running_bank_regions(b) == before


@pytest.fixture(scope="module")
def blob_target(tmp_path_factory, payloads):
    """v2 with up to 48 KiB of new incompressible data in its ROMFS (a file no code reads): a
    delta and a compressed file of it have many segments, so a reset lands between two. The
    blob is cut to what the board's smallest bank holds beside v2 (one sector spare): the app
    grows with the device code, and a target larger than the bank is refused (too-big)."""
    import random

    from hanota import fwbuild
    from hanota.boardspec import load_board
    d = tmp_path_factory.mktemp("blob")
    out = {}
    for kind in KINDS:
        room = min(r.size for r in load_board(kind).banks)
        room -= payloads[kind, 2]["app"].stat().st_size + 4096
        size = min(48 * 1024, room)
        assert size >= 16 * 1024, "%s: v2 leaves only %d bytes of its bank for the blob" % (kind, room)
        blob = random.Random(48).randbytes(size)
        out[kind] = fwbuild.build(kind, "2.0.0", d / kind, extra={"blob.bin": blob})["app"]
    return out


def segment_starts(path):
    """File offsets at which the segments of an encoded file begin."""
    from hanfw import otafile
    data = path.read_bytes()
    s = otafile.parse_stream(data)
    off = next(o for tag, _, o in s.elements if tag == 0) + otafile.ELEMENT_HEADER_LEN
    out = []
    while True:
        out.append(off)
        tlen, plen = int.from_bytes(data[off:off + 4], "little"), int.from_bytes(data[off + 4:off + 8], "little")
        nxt = data[off + 8:off + 40]
        off += otafile.SEG_HEADER_LEN + plen
        if nxt == bytes(32):
            return out


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("encoding", ["zlib", "delta"])
def test_reset_mid_transfer_resumes_at_a_segment(vboards, hub, keys, payloads, blob_target,
                                                 tmp_path, kind, encoding):
    b, eui = bring_up(vboards, hub, keys, payloads, kind, "ppmid")
    hub.wait_event("hello", eui, timeout=30)
    log = ConsoleLog(b.console.pty_path)
    try:
        key = load_private_key(keys / "private.pem")
        target = blob_target[kind].read_bytes()
        path = tmp_path / "blob.ota"
        path.write_bytes(images.build_image(
            target, key=key, version=V2, role="ppmid", encoding=encoding,
            base=payloads[kind, 1]["app"].read_bytes() if encoding == "delta" else None))
        size = path.stat().st_size
        starts_of = segment_starts(path)
        assert len(starts_of) >= 8
        hub.add_image(path)
        end = time.monotonic() + 60
        while time.monotonic() < end:
            t = hub.server.transfers.get(eui)
            if t is not None and t.offset >= size * 0.6:
                break
            time.sleep(0.002)
        cut_at = hub.server.transfers[eui].offset
        b.power_cycle()
        alert = hub.wait_event("alert", eui, timeout=180)[0]
        assert alert[2:6] == (V2, V1, False, zcl.ALERT_NONE)
        starts = [int(m) for m in re.findall(r"from offset (\d+)", log.text)]
        assert starts[0] == 0 and len(starts) >= 2, log.text[-2000:]
        resumed = starts[1]
        # at a segment that was complete before the cut, not from the start
        assert resumed in starts_of and 0 < resumed <= cut_at, (resumed, cut_at, starts_of)
        assert resumed >= size * 0.3, (resumed, size)
        served = hub.server.transfers[eui].bytes_served
        assert served < size + cut_at - resumed + 2 * 4400, (served, size)
        assert read_version(hub, eui) == V2
    finally:
        log.close()


# The decoders in the smallest heap hanota supports, 64 KiB: a delta by blocks, a compressed
# file by bundled pages (4.4 KiB frames on top of the segment buffer).
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("pages", [False, True], ids=["blocks", "bundled-pages"])
def test_encoded_in_a_64k_heap(vboards, hub, keys, payloads, tmp_path, kind, pages):
    b, eui = bring_up_in_64k(vboards, hub, keys, payloads, kind, pages)
    path, _ = encoded_file(tmp_path, keys, payloads, kind, "zlib" if pages else "delta")
    hub.add_image(path)
    alert = hub.wait_event("alert", eui, timeout=180)[0]
    assert alert[2:5] == (V2, V1, False)


@pytest.mark.parametrize("kind", KINDS)
def test_the_server_sends_the_delta_and_falls_back_after_wrong_base(vboards, keys, payloads,
                                                                    tmp_path, kind):
    """The default server policy holding full, compressed and delta files of V2 and a V1
    file: a board on V1 gets the delta. When the hub's V1 is not what the board runs (its V1
    file differs by one byte, and the delta was made against it), the board refuses the delta
    (wrong-base) and the next offer is the compressed file, which it applies."""
    key = load_private_key(keys / "private.pem")
    v1 = payloads[kind, 1]["app"].read_bytes()
    v2 = payloads[kind, 2]["app"].read_bytes()
    for believed, want in ((v1, "delta"), (v1[:100] + bytes([v1[100] ^ 1]) + v1[101:], "zlib")):
        h = HubThread(block_cap=64)
        try:
            b, eui = bring_up(vboards, h, keys, payloads, kind, "ppmid")
            h.wait_event("hello", eui, timeout=30)  # deployed: offers from now on
            built = {}
            # V1 and the delta first: a query between two additions must not find a V2
            # the delta would not yet compete with
            for name, payload, kw in (("v1", believed, dict(version=V1)),
                                      ("delta", v2, dict(version=V2, encoding="delta",
                                                         base=believed)),
                                      ("zlib", v2, dict(version=V2, encoding="zlib")),
                                      ("full", v2, dict(version=V2))):
                p = tmp_path / ("%s-%s.ota" % (want, name))
                p.write_bytes(images.build_image(payload, key=key, role="ppmid", **kw))
                built[name] = p
            files = {name: h.add_image(p) for name, p in built.items()}
            alert = h.wait_event("alert", eui, timeout=180)[0]
            assert alert[2:5] == (V2, V1, False)
            ends = [(e[2], e[3]) for e in h.events("upgrade_end", eui)]
            if want == "delta":
                assert ends == [(files["delta"], zcl.SUCCESS)]
            else:  # refused (wrong-base: tests above), then the compressed file
                assert ends == [(files["delta"], zcl.INVALID_IMAGE), (files["zlib"], zcl.SUCCESS)]
            b.stop()
        finally:
            h.stop()
