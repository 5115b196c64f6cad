"""Fuzz targets over the device's parsers, shared by the property tests (hypothesis) and the
coverage-guided fuzzer (atheris, run as a script: see main()).

Each target takes arbitrary bytes and must only ever raise the parser's documented error
type: `OtaError` (the streaming file parser and the signature check), `ZclError` (the ZCL
frame parsers), `GbcsError` (the GBCS message decoder and command check), `ImageError`
(the GBCS OTA file / Upgrade Image reader),
`LinkError` (the link frame decoder and its payload parsers; the SLIP decoder never raises), nothing (the boot-control record decoder: a blank, torn or corrupt
copy is None). Anything else escaping is a crash. The targets also check what the parsers
promise beyond not crashing (a decoded boot record packs back to the same bytes; a boot
decision names a bank that exists; a frame that decodes re-encodes).

Run by hand (atheris installed: `pip install -e '.[fuzz]'`):
    python tests/fault/fuzz_targets.py TARGET [libFuzzer options] [CORPUS_DIR ...]
"""
from __future__ import annotations

import binascii
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
TARGETS = ("otafile", "zcl", "link", "bootctl", "patch", "gbcs")


def _imports():
    from hanfw import bootctl, delta, gbcs, gbcsimage, link, otafile, p256, zcl  # noqa: F401
    return bootctl, link, otafile, zcl, delta, gbcs, gbcsimage


bootctl, link, otafile, zcl, delta, gbcs, gbcsimage = None, None, None, None, None, None, None


def load(instrument: bool = False) -> None:
    """Import the device modules (inside atheris' instrumentation when asked)."""
    global bootctl, link, otafile, zcl, delta, gbcs, gbcsimage
    if instrument:
        import atheris
        with atheris.instrument_imports(include=["hanfw"]):
            bootctl, link, otafile, zcl, delta, gbcs, gbcsimage = _imports()
    else:
        bootctl, link, otafile, zcl, delta, gbcs, gbcsimage = _imports()


# A fixed key for the signature path (any point on the curve: signatures will not verify).
_KEY = bytes.fromhex(
    "04" "6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296"
    "4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5")


def fuzz_otafile(data: bytes) -> None:
    """The streaming parser fed in chunks of a size the input chooses, then finish, the
    integrity code and the signature check."""
    if len(data) < 2:
        return
    step = data[0] % 97 + 1
    opts = data[1]
    body = memoryview(data)[2:]
    s = otafile.OtaStream(integrity=bool(opts & 1), allow_raw=bool(opts & 2),
                          max_total=None if opts & 4 else len(body) + (opts >> 3))
    try:
        for i in range(0, len(body), step):
            s.feed(body[i:i + step])
        s.finish()
        s.check_integrity()
        otafile.check_signed(s, [_KEY])
    except otafile.OtaError as e:
        assert isinstance(e.reason, str) and e.reason
        return
    assert s.done and s.received == s.header.total_size


_ZCL_PARSERS = None


def _zcl_parsers():
    global _ZCL_PARSERS
    if _ZCL_PARSERS is None:
        _ZCL_PARSERS = [getattr(zcl, n) for n in sorted(dir(zcl))
                        if n.startswith("parse_") and n != "parse_header"]
    return _ZCL_PARSERS


def fuzz_zcl(data: bytes) -> None:
    """The frame header, then every command parser on the payload (a device or hub may be
    handed any command id with any payload)."""
    try:
        fc, mfr, tsn, cmd, off = zcl.parse_header(data)
    except zcl.ZclError as e:
        assert e.status == zcl.MALFORMED_COMMAND
        return
    assert off in (3, 5) and (mfr is None) == (not fc & zcl.FC_MANUFACTURER)
    assert zcl.pack_header(fc & ~zcl.FC_MANUFACTURER if mfr is None else fc, tsn, cmd, mfr) \
        == bytes(data[:off]) or mfr is not None
    for parse in _zcl_parsers():
        try:
            parse(data, off)
        except zcl.ZclError as e:
            assert e.status in (zcl.MALFORMED_COMMAND, zcl.INVALID_FIELD, zcl.INVALID_DATA_TYPE)


_MAC = None


def fuzz_link(data: bytes) -> None:
    """The link frame decoder (with a known key, then an unknown sender; at the default and
    the bundle frame limit), the join / hello payload parsers, the bundle splitter, and
    the SLIP decoder over the raw bytes."""
    global _MAC
    if _MAC is None:
        _MAC = link.Mac(bytes(range(16)))
    for keys in (lambda src: _MAC, lambda src: None):
        for limit in (link.MAX_FRAME, link.RX_FRAME):
            try:
                kind, src, dst, ctr, cluster, payload = link.unpack(data, keys, limit)
            except link.LinkError as e:
                assert e.reason in ("short", "long", "kind", "unknown-sender", "bad-mac")
            else:
                assert link.pack(_MAC, kind, src, dst, ctr, cluster, payload) == bytes(data)
    for parse in (link.parse_join_req, link.parse_join_rsp, link.parse_hello):
        try:
            parse(bytes(data))
        except link.LinkError as e:
            assert e.reason == "malformed"
    assert link.hello_rx_frame(bytes(data)) >= link.MAX_FRAME
    try:
        items = link.split_bundle(data)
    except link.LinkError as e:
        assert e.reason == "malformed"
    else:
        assert link.pack_bundle([bytes(x) for x in items]) == bytes(data)
    dec = link.SlipDecoder()
    dec.feed(data)
    while True:
        f = dec.pop()
        if f is None:
            break
        assert len(f) <= link.MAX_FRAME
        assert link.slip_encode(f)  # a frame that decoded re-encodes


def fuzz_bootctl(data: bytes) -> None:
    """Record.parse of raw bytes, and of bytes whose CRC is made right (so the checks after
    the CRC are reached); a decoded record packs back to the same bytes, and the boot
    decision over it names a bank that exists and a record that decodes."""
    bc = bootctl
    recs = [bc.Record.parse(data)]
    if len(data) >= bc.RECORD_LEN:
        body = bytearray(data[:bc.RECORD_LEN])
        struct.pack_into("<I", body, 0, bc.MAGIC)
        struct.pack_into("<I", body, bc.RECORD_LEN - 4, binascii.crc32(body[:bc.RECORD_LEN - 4]))
        recs.append(bc.Record.parse(body))
        if recs[-1] is not None:
            assert recs[-1].pack() == bytes(body)
    ok = data[-1] if data else 0
    for r in recs:
        if r is None:
            continue
        bank, new, event = bc.decide(r, lambda i, rec: bool(ok >> i & 1))
        assert bank in (-1, 0, 1)
        assert event in ("trial", "boot", "rollback", "no-bootable-bank")
        if new is not None:
            assert bc.Record.parse(new.pack()) is not None
            assert bank < 0 or new.active == bank


_PATCH_BASE = bytes((i * 7 + (i >> 8)) & 0xFF for i in range(8192))


class _BaseDev:
    """The fuzzed patches' base (8 KiB) as a block device."""

    def readblocks(self, block, buf, offset=0):
        p = block * 4096 + offset
        chunk = _PATCH_BASE[p:p + len(buf)]
        buf[:len(chunk)] = chunk
        for i in range(len(chunk), len(buf)):
            buf[i] = 0xFF


def fuzz_patch(data: bytes) -> None:
    """One segment through the device's decoder (hanfw.delta): data[0] picks the target
    length, data[1] the encoding (bit 1: delta, else zlib) and whether the rest is taken as
    the zlib stream itself (bit 0 clear) or as the inflated bytes (bit 0 set: compressed
    here, so that the patch applier sees the input as it is). Only OtaError with a
    decoder's reason may escape; a segment that decodes gives exactly its target length."""
    import zlib
    if len(data) < 2:
        return
    tlen = data[0] * 97 + 1
    mode = data[1]
    body = bytes(data[2:])
    if mode & 1:  # a small compressor: the harness's own memory is not the decoder's
        c = zlib.compressobj(1, zlib.DEFLATED, 12, 1)
        payload = c.compress(body) + c.flush()
    else:
        payload = body
    if len(payload) > 8192:
        return
    d = otafile.Descriptor(0, 0, 0, bytes(32), encoding=2 if mode & 2 else 1, window_bits=12,
                           segment_max=8192, target_size=tlen, chain=bytes(32),
                           base_size=len(_PATCH_BASE))
    out = [0]

    def write(mv):
        out[0] += len(mv)
    dec = delta.Decoder(d, write, _BaseDev())
    try:
        dec.data(payload)
        dec.end(tlen)
    except otafile.OtaError as e:
        assert e.reason in ("bad-patch", "bad-segment"), e.reason
        return
    assert out[0] == tlen


# The GBCS target's device: fixed keys (the Supplier's, the ACB's KA key, its own KA key)
# and EUI; its Verifier keeps the ECDH secret, so a fuzzed command costs a GMAC at most.
_GBCS_EUI = bytes.fromhex("00DB1234567890A5")
_GBCS_SUP, _GBCS_ACB, _GBCS_DEV = 0x5151, 0xACB, 0xDE7
_VERIFIER = None


def _gbcs_verifier():
    global _VERIFIER
    if _VERIFIER is None:
        from hanfw import p256
        _VERIFIER = gbcs.Verifier(p256.public_key(_GBCS_SUP.to_bytes(32, "big")),
                                  p256.public_key(_GBCS_ACB.to_bytes(32, "big")),
                                  _GBCS_DEV.to_bytes(32, "big"), _GBCS_EUI)
    return _VERIFIER


def fuzz_gbcs(data: bytes) -> None:
    """The GBCS message decoder (a message that decodes re-encodes to the same bytes), the
    device's check of a command, every payload shape's DER decoder on the raw bytes (one that
    decodes re-encodes), and the GBCS OTA file reader fed in pieces whose size the first
    byte chooses, then its signature check. Only GbcsError (ImageError for the image) with
    a documented reason may escape."""
    g = gbcs
    try:
        m = g.decode(data)
    except g.GbcsError as e:
        assert e.reason in ("truncated", "malformed"), e.reason
    else:
        assert m.encode() == bytes(data)
    try:
        _gbcs_verifier().verify(data, 0)
    except g.GbcsError as e:
        assert e.reason in g.REASONS, e.reason
    for code in g.MESSAGE_NAMES:
        for cra in (g.CRA_COMMAND, g.CRA_RESPONSE, g.CRA_ALERT):
            try:
                kind, fields = g.decode_payload(code, cra, data)
            except g.GbcsError as e:
                assert e.reason == "malformed", e.reason
            else:
                assert g.encode_payload(kind, fields) == bytes(data)
    if not data:
        return
    step = data[0] % 61 + 1
    r = gbcsimage.OtaFileReader(max_total=1 << 20)
    try:
        for i in range(0, len(data), step):
            r.feed(data[i:i + step])
        if r.done and r.image is not None:
            r.image.check(_KEY)
    except gbcsimage.ImageError as e:
        assert e.reason in ("bad-image", "bad-signature", "truncated"), e.reason


def seeds(target: str) -> dict[str, bytes]:
    """Well-formed inputs to start from (written to corpus/<target>/ by write_seeds)."""
    load()
    out = {}
    if target == "otafile":
        from cryptography.hazmat.primitives.asymmetric import ec
        from hanota import images
        key = ec.derive_private_key(0x5EED, ec.SECP256R1())
        payload = bytes(range(256))
        for name, kw in (("plain", {}), ("hw-dest", dict(min_hw=1, max_hw=0x200,
                                                          destination=bytes(range(8)))),
                         ("romfs", dict(payload_kind=2, security_version=7))):
            f = images.build_image(payload, key=key, version=0x00020000, role="ppmid", **kw)
            out["signed-" + name] = b"\x40\x05" + f
            out["signed-" + name + "-bytewise"] = b"\x00\x05" + f
        h = otafile.Header(manufacturer=0x1234, image_type=0x84, file_version=3,
                           header_string=b"gb raw")
        h.total_size = h.header_length + 64
        out["gb-raw"] = b"\x10\x07" + h.pack() + bytes(range(64))
        el = otafile.pack_element_header(0, 16) + bytes(16)
        h.total_size = h.header_length + len(el) + 22
        ic = otafile.OtaStream(integrity=True)
        ic.feed(h.pack() + el)
        code = ic._mmo.digest()
        out["integrity"] = (b"\x20\x01" + h.pack() + el
                            + otafile.pack_element_header(3, 16) + code)
    elif target == "zcl":
        z = zcl
        frames = [
            (z.CMD_IMAGE_NOTIFY, z.pack_image_notify(3, 100, 0x1234, 0x84, 5)),
            (z.CMD_QUERY_NEXT_IMAGE, z.pack_query_next_image(0x1234, 0x84, 1, 0x100)),
            (z.CMD_QUERY_NEXT_IMAGE_RESPONSE, z.pack_image_available(0, 0x1234, 0x84, 2, 999)),
            (z.CMD_IMAGE_BLOCK, z.pack_block_request(0x1234, 0x84, 2, 64, 64, min_block_period=5)),
            (z.CMD_IMAGE_PAGE, z.pack_page_request(0x1234, 0x84, 2, 0, 64, 1024, 10)),
            (z.CMD_IMAGE_BLOCK_RESPONSE, z.pack_block_response(0x1234, 0x84, 2, 0, bytes(40))),
            (z.CMD_IMAGE_BLOCK_RESPONSE, z.pack_block_wait(0, 10, 100)),
            (z.CMD_UPGRADE_END, z.pack_upgrade_end(0, 0x1234, 0x84, 2)),
            (z.CMD_UPGRADE_END_RESPONSE, z.pack_upgrade_end_response(0x1234, 0x84, 2, 0, 0)),
            (z.CMD_ACTIVATE_IMAGE, z.pack_activate_image(bytes(32), 0, 7)),
            (z.CMD_ACTIVATE_IMAGE_RESPONSE, z.pack_activate_image_response(0, 2, 7)),
            (z.CMD_ACTIVATION_ALERT, z.pack_activation_alert(2, 1, 0, 0, 5)),
        ]
        for cmd, payload in frames:
            out["cmd-%02x" % cmd] = z.pack_header(z.FC_CLUSTER, 1, cmd) + payload
        out["mfr-activate"] = z.pack_header(z.FC_CLUSTER, 2, z.CMD_ACTIVATE_IMAGE, 0x1234) \
            + z.pack_activate_image(bytes(range(32)), 10, 9)
        out["read-attrs"] = z.pack_header(z.FC_GLOBAL, 3, z.GLOBAL_READ_ATTRIBUTES) \
            + z.pack_read_attributes([0, 2, 6, 0xF000])
        out["read-attrs-rsp"] = z.pack_header(z.FC_GLOBAL, 3, z.GLOBAL_READ_ATTRIBUTES_RESPONSE) \
            + z.pack_read_attributes_response([(2, 0, z.TYPE_UINT32, 5),
                                               (0, 0, z.TYPE_EUI64, bytes(8)),
                                               (6, 0, z.TYPE_ENUM8, 1), (9, 0x86, None, None)])
        out["default-rsp"] = z.pack_header(z.FC_GLOBAL, 4, z.GLOBAL_DEFAULT_RESPONSE) \
            + z.pack_default_response(6, 0)
    elif target == "link":
        mac = link.Mac(bytes(range(16)))
        src, dst = bytes(range(8)), bytes(range(8, 16))
        frames = {
            "data": link.pack(mac, link.KIND_DATA, src, dst, 5, 0x19, bytes(range(30))),
            "join-req": link.pack(mac, link.KIND_JOIN_REQ, src, link.BROADCAST, 1, 0,
                                  link.pack_join_req(0, "ppmid", 0x1234, 0x84, 0x100, 1,
                                                     bytes(8))),
            "join-rsp": link.pack(mac, link.KIND_JOIN_RSP, dst, src, 2, 0,
                                  link.pack_join_rsp(0, dst, 9, bytes(8))),
            "hello": link.pack(mac, link.KIND_HELLO, src, dst, 3, 0, link.pack_hello(bytes(8), 1)),
        }
        for name, f in frames.items():
            out[name] = f
            out[name + "-slip"] = link.slip_encode(f) + link.slip_encode(f[:40])
        out["join-req-payload"] = link.pack_join_req(1, "althan", 1, 2, 3, 4, bytes(8))
        out["slip-escapes"] = link.slip_encode(bytes([0xC0, 0xDB, 0xDC, 0xDD] * 10))
    elif target == "bootctl":
        r = bootctl.Record()
        r.seq, r.version, r.length = 7, [1, 2], [100, 200]
        r.state = [bootctl.CONFIRMED, bootctl.STAGED]
        r.hash = [bytes(range(32)), bytes(32)]
        out["confirmed-staged"] = r.pack() + b"\x03"
        r.active, r.state = 1, [bootctl.CONFIRMED, bootctl.TRIAL]
        out["trial"] = r.pack() + b"\x01"
        r.state = [bootctl.REJECTED, bootctl.CONFIRMED]
        out["rejected"] = r.pack() + b"\x02"
        out["blank"] = b"\xff" * bootctl.RECORD_LEN
    elif target == "patch":
        import zlib
        from hanota import images
        t = bytearray(_PATCH_BASE[1000:1000 + 97 * 20 + 1])
        t[10:20] = b"new bytes!"
        t[500:500] = b"inserted"
        t = bytes(t[:97 * 20 + 1])
        for enc, base in (("zlib", None), ("delta", _PATCH_BASE)):
            (n, payload), = images.encode_segments(t, base=base)
            mode = 2 if enc == "delta" else 0
            out[enc] = bytes([20, mode]) + payload
            out[enc + "-inflated"] = bytes([20, mode | 1]) + zlib.decompress(payload)
    elif target == "gbcs":
        import json
        from hanfw import p256
        v = json.loads((HERE.parent / "vectors" / "gbcs" / "gbcs-18.4.json").read_text())
        out["ecs04b"] = bytes.fromhex(v["copied_from_source"]["ecs04b_command"]["hex"])
        der = v["derived_examples"]
        for name in ("cs06_immediate", "cs06_future_dated", "cs06_cancellation"):
            out[name] = bytes.fromhex(der[name]["command"])
            out[name + "-precommand"] = bytes.fromhex(der[name]["precommand"])
        out["ota-file"] = bytes.fromhex(der["ota_file"]["hex"])
        # a command this target's device accepts (so the fuzzer starts past the MAC)
        z = p256.ecdh(_GBCS_ACB.to_bytes(32, "big"),
                      p256.public_key(_GBCS_DEV.to_bytes(32, "big")))
        m = gbcs.cs06_command(7, bytes.fromhex("90B3D51F30010000"), _GBCS_EUI, bytes(32),
                              "20300115090000Z")
        m.signature = bytes(range(1, 65))
        m.mac = gbcs.compute_mac(z, m)
        out["cs06-device"] = m.encode()
        c = gbcs.Message(gbcs.CRA_COMMAND, 9, bytes.fromhex("90B3D51F30000002"), _GBCS_EUI,
                         gbcs.MSG_CS08, "cs08-command", supp_id=bytes(8), supp_counter=1,
                         signature=b"", mac_header=True)
        c.mac = gbcs.compute_mac(z, c)
        out["cs08-device"] = c.encode()
        out["cs08-response"] = gbcs.cs08_response(c, b"\x01\x02\x03\x04").encode()
        out["cs06-response"] = gbcs.cs06_response(m, 2, b"\x00\x00\x00\x05").encode()
        out["cs06-accepted"] = gbcs.cs06_response(m).encode()
        out["fd-alert"] = gbcs.fd_alert(5, _GBCS_EUI, m.originator, 7, "20300115090000Z", 0,
                                        b"\x00\x00\x00\x05").encode()
        out["ccs08-payload"] = gbcs.encode_payload(
            "ccs08-alert", {"alert_code": 0x8F8A, "date_time": "20150101000000Z",
                            "entity_id": _GBCS_EUI, "firmware_version": bytes(4),
                            "response_code": 0})
        out["cs09-payload"] = gbcs.encode_payload(
            "cs09-alert", {"alert_code": 0x8F8B, "date_time": "20150101000000Z",
                           "firmware_version": bytes(4), "activation_result": 0})
    return out


def write_seeds(target: str, corpus: Path | None = None) -> Path:
    """Put the seeds into the corpus folder of target (kept in the repository)."""
    d = (corpus or CORPUS) / target
    d.mkdir(parents=True, exist_ok=True)
    for name, data in seeds(target).items():
        p = d / ("seed-" + name)
        if not p.exists():
            p.write_bytes(data)
    return d


def corpus_inputs(target: str) -> list[bytes]:
    """Every input of the target's corpus in the repository."""
    d = CORPUS / target
    return [p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()] if d.is_dir() else []


FUNCS = {"otafile": fuzz_otafile, "zcl": fuzz_zcl, "link": fuzz_link, "bootctl": fuzz_bootctl,
         "patch": fuzz_patch, "gbcs": fuzz_gbcs}


def main(argv: list[str]) -> None:
    target = argv[1]
    if target not in FUNCS:
        raise SystemExit("usage: fuzz_targets.py {%s} [libFuzzer options] [corpus...]"
                         % ",".join(TARGETS))
    import atheris
    load(instrument=True)
    atheris.Setup([argv[0]] + argv[2:], FUNCS[target])
    atheris.Fuzz()


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))  # tests/, for support modules
    main(sys.argv)
