"""Tamper and policy cases on real virtual boards (the MicroPython device code), both kinds.

One board per bank kind, started from the deployed snapshot (V1 running), and a hub whose
policy offers exactly the file a case names, under the identity and size the case
announces (a careless or hostile hub). Each case must end in an Upgrade End Request that
rejects the image, the reason attribute (0xF000) must name the case's reason, the device
must still report the version it ran, and the flash must be untouched outside the
inactive bank, the filesystem (where the device keeps its resume point) and the inactive
bank's boot-control entry. Midway the board takes a real upgrade to V2 with security
version 3, so that the downgrade and replay cases have something to fall back from.
Every bit position is swept in-process (test_tamper_host); here the positions are sampled.
"""
from __future__ import annotations

import shutil
import struct

import pytest

from hanfw import otafile, reasons, zcl
from hanota import images
from hanota.keys import load_private_key
from hanota.server import Policy, ServedImage
from hanota.vboard import layout
from hanota.vboard.board import VirtualBoard
from support.hubkit import HubThread
from support.otabuild import new_key

import tamper
from fault import cutkit, results

KINDS = cutkit.KINDS
V1, V2, V3 = cutkit.V1, cutkit.V2, 0x00030000
MFR, ITYPE = images.DEFAULT_MANUFACTURER, images.ROLE_IMAGE_TYPES["ppmid"]
PKIND = {"vboard-esp32": otafile.PAYLOAD_ESP_APP, "vboard-nrf52840": otafile.PAYLOAD_ROMFS}


class ScriptedPolicy(Policy):
    """Offers `current` (a ServedImage) to any query, whatever the device runs."""

    current: ServedImage | None = None

    def offer(self, eui, manufacturer, image_type, file_version, hw_version):
        return self.current

    def lookup(self, eui, manufacturer, image_type, file_version):
        c = self.current
        if c is not None and c.identity == (manufacturer, image_type, file_version):
            return c
        return None


def served(path, data: bytes, announce=None, size=None) -> ServedImage:
    path.write_bytes(data)
    h = otafile.Header.parse(data[:otafile.MAX_HEADER_LEN]) if announce is None else None
    ident = announce or (h.manufacturer, h.image_type, h.file_version)
    return ServedImage(str(path), *ident, len(data) if size is None else size)


def protected(kind: str, data: bytes, inactive) -> bytes:
    """The flash with the inactive bank, the filesystem and the boot-control region
    blanked (the boot control is compared decoded, see running_entry)."""
    spec = layout.load_board(kind)
    out = bytearray(data)
    blank = [inactive, spec.region("otadata" if spec.bank_kind == "firmware" else "bootctl")]
    blank += [r for r in spec.regions if r.mount]
    for r in blank:
        out[r.offset:r.end] = bytes(r.size)
    return bytes(out)


def running_entry(kind: str, data: bytes):
    """The boot-control facts of the running bank (must survive any rejection)."""
    spec = layout.load_board(kind)
    if spec.bank_kind == "firmware":
        od = spec.region("otadata")
        from hanota.vboard.rt import espfmt
        es = [espfmt.parse_ota(data[od.offset + i * 4096:][:32]) for i in (0, 1)]
        a = espfmt.ota_active(es)
        return ("otadata", a, es[a] if a >= 0 else None)
    from hanfw.bootctl import RECORD_LEN, Record
    ctl = spec.region("bootctl")
    recs = [Record.parse(data[ctl.offset + i * 4096:][:RECORD_LEN]) for i in (0, 1)]
    r = max((x for x in recs if x), key=lambda x: x.seq)
    a = r.active
    return ("bootctl", a, r.state[a], r.version[a], r.length[a], r.secver[a], r.hash[a], r.floor)


class Bench:
    """One board from the deployed snapshot and its hub."""

    def __init__(self, kit, snap, tmp_path):
        self.kit = kit
        self.kind = snap.kind
        self.snap = snap
        self.tmp = tmp_path
        d = tmp_path / "board"
        d.mkdir()
        for name in ("flash.bin", "flash.bin.ctl"):
            shutil.copyfile(snap.dir / name, d / name)
        self.policy = ScriptedPolicy()
        self.policy.joined[snap.eui] = dict(role="ppmid", manufacturer=MFR, image_type=ITYPE,
                                            hw_version=0x0100, file_version=V1)
        self.hub = HubThread(self.policy, block_cap=64)
        self.hub.add_device(snap.eui64, snap.install_code)
        self.board = VirtualBoard(d, board=self.kind, name="tamper", eui64=snap.eui64,
                                  hub=self.hub.udp)
        self.board.start()
        if self.kind != "vboard-esp32":
            self.hub.attach_serial(self.board.info.link)
        self.eui = snap.eui
        self.hub.wait_event("hello", self.eui, timeout=60)
        self.key = load_private_key(kit.keys / "private.pem")
        self.n = 0

    def close(self):
        self.board.stop()
        self.hub.stop()

    def flash(self) -> bytes:
        return self.board.flash_path.read_bytes()

    def read(self) -> tuple[int, str]:
        recs = self.hub.call(self.hub.server.read_attributes(
            self.eui, [zcl.ATTR_CURRENT_FILE_VERSION, reasons.ATTR_LAST_REJECTION]))
        return recs[0][3], reasons.name(recs[1][3])

    def make(self, version=V2, payload=bytes(range(256)) * 2, key=None, **kw) -> bytes:
        kw.setdefault("payload_kind", PKIND[self.kind])
        return images.build_image(payload, key=key or self.key, version=version, role="ppmid",
                                  **kw)

    def case(self, what: str, data: bytes, reason: str, *, running: int, announce=None,
             size=None, most_served: int | None = None) -> None:
        self.n += 1
        state = cutkit.decode_flash(self.kind, self.board.flash_path)
        spec = layout.load_board(self.kind)
        inactive = next(r for r in spec.banks if r.name != state.bank)
        before = self.flash()
        ends = len(self.hub.events("upgrade_end", self.eui))
        self.policy_path = str(self.tmp / ("case%d.ota" % self.n))
        self.policy.current = served(self.tmp / ("case%d.ota" % self.n), data, announce, size)
        try:
            end = self.hub.wait_event("upgrade_end", self.eui, timeout=60, count=ends + 1)[-1]
        finally:
            self.policy.current = None
        assert end[3] in (zcl.INVALID_IMAGE, zcl.ABORT), \
            "%s: Upgrade End status %s" % (what, end[3])
        version, why = self.read()
        assert why == reason, "%s: rejected as %s, expected %s" % (what, why, reason)
        assert version == running, "%s: now reports 0x%08x" % (what, version)
        after = self.flash()
        assert protected(self.kind, after, inactive) == protected(self.kind, before, inactive), \
            "%s: flash changed outside the inactive bank, the filesystem, the boot control" % what
        assert running_entry(self.kind, after) == running_entry(self.kind, before), \
            "%s: the running bank's boot-control entry changed" % what
        if most_served is not None:
            t = self.hub.server.transfers.get(self.eui)
            mine = t is not None and t.image.path == self.policy_path
            got = t.bytes_served if mine else 0
            assert got <= most_served, \
                "%s: %d bytes served, at most %d expected" % (what, got, most_served)
        results.record("tamper", (self.kind, "on the board: " + what, reason), tried=1, rejected=1)

    def upgrade(self, data: bytes, version: int, previous: int) -> None:
        n = len(self.hub.events("alert", self.eui))
        self.policy.current = served(self.tmp / "upgrade.ota", data)
        try:
            alert = self.hub.wait_event("alert", self.eui, timeout=120, count=n + 1)[-1]
        finally:
            self.policy.current = None
        assert alert[2:5] == (version, previous, False)


def flip(data: bytes, field: str, bit: int = 0, nth: int = 0) -> bytes:
    f = dict((x[0], x[1:]) for x in tamper.layout_of(data))[field]
    out = bytearray(data)
    out[f[0] + nth] ^= 1 << bit
    return bytes(out)


@pytest.mark.parametrize("kind", KINDS)
def test_tampered_and_unwanted_images_are_rejected_on_the_board(kit, snapshot, tmp_path, kind):
    b = Bench(kit, snapshot(kind), tmp_path)
    try:
        small = b.make()
        head = 192
        # sampled bit flips (every position: test_tamper_host)
        b.case("bit flip: manufacturer", flip(small, "manufacturer", 3), "wrong-manufacturer",
               running=V1, announce=(MFR, ITYPE, V2), most_served=head)
        b.case("bit flip: payload kind", flip(small, "payload-kind", 2), "wrong-payload-kind",
               running=V1, announce=(MFR, ITYPE, V2), most_served=head)
        b.case("bit flip: payload", flip(small, "payload", 5, nth=100), "bad-signature",
               running=V1, announce=(MFR, ITYPE, V2))
        b.case("bit flip: key id", flip(small, "key-id", 1, nth=3), "unknown-key",
               running=V1, announce=(MFR, ITYPE, V2))
        b.case("bit flip: signature", flip(small, "signature-s", 7, nth=20), "bad-signature",
               running=V1, announce=(MFR, ITYPE, V2))
        b.case("bit flip: image hash", flip(small, "image-hash", 4, nth=9), "bad-signature",
               running=V1, announce=(MFR, ITYPE, V2))
        # policy
        b.case("wrong key", b.make(key=new_key()), "unknown-key", running=V1)
        # (the hub itself offers no image of another manufacturer or type: announce ours)
        b.case("wrong manufacturer (file only)", b.make(manufacturer=0x9999),
               "wrong-manufacturer", running=V1, announce=(MFR, ITYPE, V2), most_served=head)
        b.case("wrong image type (file only)", b.make(image_type=0x00AA), "wrong-image-type",
               running=V1, announce=(MFR, ITYPE, V2), most_served=head)
        b.case("hardware range", b.make(min_hw=0x0200, max_hw=0x0300), "hardware-version",
               running=V1, most_served=head)
        b.case("wrong destination", b.make(destination=bytes(range(8))), "wrong-destination",
               running=V1, most_served=head)
        other = "esp32s3" if kind == "vboard-esp32" else "esp32"  # deploy pinned the chip's
        b.case("built for another board family", b.make(
            board_family=images.otafile.BOARD_FAMILIES[other]), "wrong-board", running=V1,
            most_served=head)
        bank = layout.load_board(kind).banks[1].size
        b.case("larger than the bank", b.make(payload=bytes(bank + 4096)), "too-big",
               running=V1, most_served=head)
        b.case("endless data: announced 0xFFFFFFFF bytes", small, "too-big", running=V1,
               size=0xFFFFFFFF, most_served=0)
        huge = bytearray(small)
        struct.pack_into("<I", huge, 52, 0xFFFFFFF0)
        b.case("endless data: header claims 4 GiB", bytes(huge), "too-big", running=V1,
               announce=(MFR, ITYPE, V2), size=len(small), most_served=64)
        b.case("same version", b.make(version=V1), "version-not-newer", running=V1, most_served=0)
        # a real upgrade raises the anti-rollback floor to 3
        v1_release = b.make(version=V1, payload=kit.payloads[kind, 1]["app"].read_bytes())
        b.upgrade(b.make(version=V2, payload=kit.payloads[kind, 2]["app"].read_bytes(),
                         security_version=3), V2, V1)
        b.case("replay of the older signed release", v1_release, "version-not-newer",
               running=V2, most_served=0)
        b.case("replay announced as newer", v1_release, "malformed", running=V2,
               announce=(MFR, ITYPE, V3), most_served=head)
        b.case("downgrade by file version", b.make(version=0x00018000, security_version=3),
               "version-not-newer", running=V2, most_served=0)
        b.case("downgrade by security version", b.make(version=V3, security_version=1),
               "security-version", running=V2, most_served=head)
    finally:
        b.close()
