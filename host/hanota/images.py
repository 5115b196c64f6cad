"""Build, sign, inspect and verify OTA upgrade files.

The byte formats live once, in the device package (`hanfw.otafile`); this module
only assembles and signs files (with `cryptography`) and reports on them.
"""
from __future__ import annotations

import hashlib
import os
import zlib
from dataclasses import dataclass
from enum import Enum

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from hanfw import delta, link, otafile, p256, roles
from hanfw.otafile import OtaError

from .errors import ImageFormatError
from .keys import raw_point

# Default image types per role, from the device's role table (hanfw.roles).
ROLE_IMAGE_TYPES = {r[0]: r[2] for r in roles.TABLE}
# Manufacturer code used for hanota's development images.
DEFAULT_MANUFACTURER = 0x1234
STACK_VERSION_PRO = 2

# Encoded images (descriptor version 2): the zlib window (2^bits bytes) and the longest
# segment payload a device must hold at once. A device decodes a segment only when it is
# whole (MicroPython's DeflateIO pulls its input), so the limit is its buffer.
DEFAULT_WINDOW_BITS = 10
# The longest segment payload: as long as a device takes (hanfw.delta.MAX_SEGMENT). Each
# segment restarts its zlib stream (empty window, new Huffman tables, 6 bytes of zlib framing)
# and carries a 40-byte header, so fewer, longer segments compress better: with 4 KiB + 256
# (one sector per segment) MicroPython v1.15 -> v1.16 compressed to 71.0 %, with 8 KiB to 69.7 %.
# A device holds one segment's payload while it checks it (8 KiB of heap).
DEFAULT_SEGMENT_MAX = 8192
MAX_SEGMENT_SECTORS = 16  # a segment's target piece: at most 64 KiB (bounds a decode step)

_ROMFS_MAGIC = b"\xd2\xcd\x31"
_ESP_IMAGE_MAGIC = 0xE9


# ---------------------------------------------------------------- build

def parse_version(text: str | int) -> int:
    """A file version: an integer (decimal or 0x hex) or a dotted quad a.b.c.d (one byte each)."""
    if isinstance(text, int):
        value = text
    elif text.count(".") == 3:
        parts = [int(p, 0) for p in text.split(".")]
        if any(not 0 <= p <= 255 for p in parts):
            raise ValueError("each part of a dotted version must be 0..255: %r" % text)
        value = (parts[0] << 24) | (parts[1] << 16) | (parts[2] << 8) | parts[3]
    else:
        value = int(text, 0)
    if not 0 <= value <= 0xFFFFFFFE:
        raise ValueError("file version must be 0..0xFFFFFFFE (0xFFFFFFFF is the wildcard): %r" % text)
    return value


def guess_payload_kind(payload: bytes) -> int:
    if payload[:3] == _ROMFS_MAGIC:
        return otafile.PAYLOAD_ROMFS
    if payload[:1] == bytes([_ESP_IMAGE_MAGIC]):
        return otafile.PAYLOAD_ESP_APP
    return otafile.PAYLOAD_RAW


def check_payload(payload: bytes, payload_kind: int | None = None,
                  board_family: int = otafile.BOARD_ANY, *, path: str = "PAYLOAD") -> int:
    """The payload's kind (`payload_kind`, or guessed from its first bytes) once the payload
    passes what the device will check after writing it: an esp-app payload must be a
    valid ESP-IDF app image for the board family (hanota.espimage: header, segments,
    checksum, SHA-256, app descriptor; a merged flash image is refused with a command that
    takes the app out). `build_image` itself wraps any bytes, as tests of bad files need."""
    from . import espimage

    kind = guess_payload_kind(payload) if payload_kind is None else payload_kind
    if kind == otafile.PAYLOAD_ESP_APP:
        family = {v: k for k, v in otafile.BOARD_FAMILIES.items()}.get(board_family, "any")
        try:
            espimage.check_app(payload, family, path=path)
        except espimage.EspImageError as e:
            raise espimage.EspImageError("%s: %s" % (path, e), reason=e.reason) from None
    return kind


def _zlib(data: bytes, wbits: int) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, wbits, 9)
    return c.compress(data) + c.flush()


def _patch_ops(base: bytes, target: bytes) -> list[tuple[int, int, int, bytes]]:
    """The target as (target offset, kind, base offset, bytes) pieces, kind 0 a diff against
    the base at that offset, 1 extra bytes: read from one detools sequential patch
    (no compression) of the whole target, so that it can be cut anywhere."""
    import io

    import detools

    out = io.BytesIO()
    detools.create_patch(io.BytesIO(base), io.BytesIO(target), out, compression="none",
                         patch_type="sequential")
    p = out.getvalue()
    if p[0] != 0:
        raise ImageFormatError("detools made a patch of type 0x%02x, not sequential" % p[0],
                               reason="delta")
    size, i = delta.unpack_size(p, 1)
    dfs, i = delta.unpack_size(p, i)
    if size != len(target) or dfs != 0:
        raise ImageFormatError("unexpected detools patch header", reason="delta")
    ops = []
    to = fp = 0
    while to < size:
        n, i = delta.unpack_size(p, i)
        if n:
            ops.append((to, 0, fp, p[i:i + n]))
        i += n
        to += n
        fp += n
        n, i = delta.unpack_size(p, i)
        if n:
            ops.append((to, 1, 0, p[i:i + n]))
        i += n
        to += n
        adj, i = delta.unpack_size(p, i)
        fp += adj
    return ops


def _piece_patch(ops: list, starts: list[int], t0: int, t1: int) -> bytes:
    """A sequential patch (detools' format, no compression) of target[t0:t1] against the
    whole base, from the cut-anywhere pieces of _patch_ops."""
    import bisect

    recs = []  # [diff bytes, extra bytes, base offset of the diff]
    cur = None
    k = max(0, bisect.bisect_right(starts, t0) - 1)
    while k < len(ops) and ops[k][0] < t1:
        to, kind, fp, data = ops[k]
        k += 1
        lo, hi = max(t0, to), min(t1, to + len(data))
        if lo >= hi:
            continue
        part = data[lo - to:hi - to]
        if kind == 0:
            fp += lo - to
            if cur is None or cur[1] or fp != cur[2] + len(cur[0]):
                cur = [bytearray(), bytearray(), fp]
                recs.append(cur)
            cur[0] += part
        else:
            if cur is None:
                cur = [bytearray(), bytearray(), 0]
                recs.append(cur)
            cur[1] += part
    out = bytearray([0]) + delta.pack_size(t1 - t0) + delta.pack_size(0)
    fp = 0
    for j, (d, e, at) in enumerate(recs):
        if j == 0 and d and at != 0:
            # the patch starts reading the base at 0: move to the first diff's place
            out += delta.pack_size(0) + delta.pack_size(0) + delta.pack_size(at)
            fp = at
        out += delta.pack_size(len(d)) + d + delta.pack_size(len(e)) + e
        fp += len(d)
        nxt = next((r[2] for r in recs[j + 1:] if r[0]), fp)
        out += delta.pack_size(nxt - fp)
        fp = nxt
    return bytes(out)


def encode_segments(target: bytes, *, base: bytes | None = None,
                    window_bits: int = DEFAULT_WINDOW_BITS,
                    segment_max: int = DEFAULT_SEGMENT_MAX) -> list[tuple[int, bytes]]:
    """The target cut into pieces of whole 4 KiB sectors (the last may be shorter), each
    encoded on its own as one zlib stream (of the piece, or with `base` of a sequential
    patch of it against the base), as [(target length, payload)]. Each piece is as long as
    fits segment_max (at most MAX_SEGMENT_SECTORS sectors)."""
    if not 9 <= window_bits <= 15:
        raise ValueError("window bits must be 9..15 (a 512 B to 32 KiB window): %d" % window_bits)
    if not target:
        raise ValueError("the target image is empty")
    unit = otafile.SEG_UNIT
    if base is not None:
        ops = _patch_ops(base, target)
        starts = [o[0] for o in ops]

        def encode(t0: int, t1: int) -> bytes:
            return _zlib(_piece_patch(ops, starts, t0, t1), window_bits)
    else:
        def encode(t0: int, t1: int) -> bytes:
            return _zlib(target[t0:t1], window_bits)
    out = []
    t = 0
    k = MAX_SEGMENT_SECTORS
    while t < len(target):
        k = MAX_SEGMENT_SECTORS if k >= MAX_SEGMENT_SECTORS // 2 else k * 2
        while True:
            end = min(len(target), t + k * unit)
            payload = encode(t, end)
            if len(payload) <= segment_max:
                break
            if k == 1:
                raise ValueError("one 4 KiB sector encodes to %d bytes, over the segment limit "
                                 "%d: raise --segment-max" % (len(payload), segment_max))
            k = max(1, min(k - 1, k * segment_max // len(payload)))
        out.append((end - t, payload))
        t = end
    return out


def chain_segments(segments: list[tuple[int, bytes]]) -> tuple[bytes, bytes]:
    """(body, root): the segments with their headers, each naming the SHA-256 of the next
    (zero in the last), and the SHA-256 of the first (the descriptor's chain root)."""
    nxt = bytes(32)
    parts = []
    for tlen, payload in reversed(segments):
        seg = otafile.pack_segment_header(tlen, len(payload), nxt) + payload
        parts.append(seg)
        nxt = hashlib.sha256(seg).digest()
    return b"".join(reversed(parts)), nxt


def build_image(payload: bytes, *, key: ec.EllipticCurvePrivateKey, version: int,
                role: str | None = None, manufacturer: int = DEFAULT_MANUFACTURER,
                image_type: int | None = None, min_hw: int | None = None,
                max_hw: int | None = None, destination: bytes | None = None,
                security_version: int = 0, header_string: str | None = None,
                payload_kind: int | None = None, board_family: int = otafile.BOARD_ANY,
                encoding: str = "full", base: bytes | None = None,
                window_bits: int = DEFAULT_WINDOW_BITS,
                segment_max: int = DEFAULT_SEGMENT_MAX) -> bytes:
    """Assemble and sign a hanota upgrade file around a manufacturer image (the target).

    encoding "full" carries the target itself (descriptor version 1, as before); "zlib"
    compresses it and "delta" sends a patch against `base` (the payload the device runs),
    both as a chain of segments (descriptor version 2, hanfw.otafile)."""
    if encoding not in otafile.ENCODINGS:
        raise ValueError("encoding must be one of %s" % ", ".join(otafile.ENCODINGS))
    if (encoding == "delta") != (base is not None):
        raise ValueError("a delta image needs the base image, and only a delta image takes one")
    if image_type is None:
        if role not in ROLE_IMAGE_TYPES:
            raise ValueError("give a role (%s) or an image type" % ", ".join(ROLE_IMAGE_TYPES))
        image_type = ROLE_IMAGE_TYPES[role]
    if (min_hw is None) != (max_hw is None):
        raise ValueError("give both --min-hw and --max-hw, or neither")
    if min_hw is not None and min_hw > max_hw:
        raise ValueError("minimum hardware version 0x%04x is above the maximum 0x%04x" % (min_hw, max_hw))
    if header_string is None:
        header_string = "hanota %s %08x" % (role or "image", version)
    if payload_kind is None:
        payload_kind = guess_payload_kind(payload)
    target_hash = hashlib.sha256(payload).digest()
    if encoding == "full":
        desc = otafile.Descriptor(payload_kind, security_version, board_family, target_hash)
    else:
        segs = encode_segments(payload, base=base, window_bits=window_bits,
                               segment_max=segment_max)
        body, root = chain_segments(segs)
        desc = otafile.Descriptor(
            payload_kind, security_version, board_family, target_hash,
            encoding=otafile.ENCODINGS[encoding], window_bits=window_bits,
            segment_max=max(len(p) for _, p in segs), target_size=len(payload), chain=root,
            base_size=len(base) if base is not None else 0,
            base_hash=hashlib.sha256(base).digest() if base is not None else bytes(32))
        payload = body
    header = otafile.Header(manufacturer=manufacturer, image_type=image_type, file_version=version,
                            stack_version=STACK_VERSION_PRO, header_string=header_string.encode(),
                            destination=destination, min_hw=min_hw, max_hw=max_hw)
    body_len = (otafile.ELEMENT_HEADER_LEN + len(payload) + otafile.ELEMENT_HEADER_LEN
                + desc.length + otafile.SIGNATURE_ELEMENT_LEN)
    header.total_size = header.header_length + body_len
    # The descriptor goes first so that a device can check the security version
    # (and the payload size) before it downloads the body.
    signed = b"".join([
        header.pack(),
        otafile.pack_element_header(otafile.TAG_DESCRIPTOR, desc.length), desc.pack(),
        otafile.pack_element_header(otafile.TAG_UPGRADE_IMAGE, len(payload)), payload,
    ])
    if encoding == "full":
        digest = hashlib.sha256(signed).digest()
    else:  # the segments are covered by their chain (hanfw.otafile), not hashed here
        digest = hashlib.sha256(signed[:len(signed) - len(payload)]).digest()
    der = key.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    r, s = utils.decode_dss_signature(der)
    point = raw_point(key.public_key())
    sig = p256.key_id(point) + r.to_bytes(32, "big") + s.to_bytes(32, "big")
    out = signed + otafile.pack_element_header(otafile.TAG_SIGNATURE, otafile.SIGNATURE_LEN) + sig
    assert len(out) == header.total_size
    return out


# ---------------------------------------------------------------- inspect / verify

def parse_file(path: str | os.PathLike, *, allow_raw: bool = True,
               integrity: bool = True) -> otafile.OtaStream:
    """Parse a file with the device's streaming parser; ImageFormatError names what is wrong."""
    try:
        with open(path, "rb") as f:
            return otafile.parse_stream(f, block=4096, integrity=integrity, allow_raw=allow_raw)
    except OtaError as e:
        raise ImageFormatError("%s: %s" % (path, e.message), reason=e.reason) from None
    except OSError as e:
        raise ImageFormatError("cannot read %s: %s" % (path, e.strerror), reason="unreadable") from None


def decode_file(path: str | os.PathLike, base: bytes | None = None,
                *, keep: bool = True) -> tuple[otafile.OtaStream, bytes | None]:
    """Parse a file and, when its body is encoded, decode it with the device's decoder
    (hanfw.delta): (stream, target), target None when a delta has no base to apply to.
    A base that is not the one the delta was made against is refused (wrong-base)."""
    if base is None and not keep:
        return parse_file(path, allow_raw=False), None
    with open(path, "rb") as f:
        head = f.read(otafile.MAX_HEADER_LEN + 2 * otafile.ELEMENT_HEADER_LEN
                      + otafile.DESCRIPTOR_V2_LEN)
    probe = otafile.OtaStream(integrity=False)
    try:
        probe.feed(head)
    except OtaError:
        pass  # parse_file below names it
    d = probe.descriptor
    if d is None or not d.encoded:
        s = parse_file(path, allow_raw=False)
        target = None
        if keep and s.descriptor is not None:
            target = _element(path, s)
        return s, target
    if d.encoding == otafile.ENC_DELTA and base is not None:
        if len(base) != d.base_size or hashlib.sha256(base).digest() != d.base_hash:
            raise ImageFormatError(
                "%s: the delta was made against a base of %d bytes with SHA-256 %s; the given "
                "base is %d bytes with SHA-256 %s" % (path, d.base_size, d.base_hash.hex(),
                                                      len(base), hashlib.sha256(base).hexdigest()),
                reason="wrong-base")
    if d.encoding == otafile.ENC_DELTA and base is None:
        return parse_file(path, allow_raw=False), None
    out = bytearray()
    dev = _BytesDev(base or b"")
    dec = delta.Decoder(d, out.extend, dev)
    s = otafile.OtaStream(sink=dec.data, integrity=True)
    s.seg_end = dec.end
    try:
        with open(path, "rb") as f:
            while True:
                block = f.read(4096)
                if not block:
                    break
                s.feed(block)
        s.finish()
    except OtaError as e:
        raise ImageFormatError("%s: %s" % (path, e.message), reason=e.reason) from None
    return s, bytes(out)


class _BytesDev:
    """A base image in memory as a block device (readblocks with an offset)."""

    def __init__(self, data: bytes):
        self.data = data

    def readblocks(self, block: int, buf, offset: int = 0) -> None:
        p = block * otafile.SEG_UNIT + offset
        chunk = self.data[p:p + len(buf)]
        buf[:len(chunk)] = chunk


def _element(path, s: otafile.OtaStream) -> bytes | None:
    start = next((off for tag, _, off in s.elements if tag == otafile.TAG_UPGRADE_IMAGE), None)
    if start is None:
        return None
    with open(path, "rb") as f:
        f.seek(start + otafile.ELEMENT_HEADER_LEN)
        return f.read(s.image_length)


def read_base(path: str | os.PathLike) -> bytes:
    """The image a delta is made against: PATH is that payload, or an upgrade file whose
    target it is (decoded when the file is compressed; a delta file cannot be a base)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != otafile.MAGIC.to_bytes(4, "little"):
        return data
    s, target = decode_file(path)
    d = s.descriptor
    if d is not None and d.encoding == otafile.ENC_DELTA:
        raise ImageFormatError("%s is itself a delta image: give the payload it decodes to, or "
                               "the full or compressed file" % path, reason="delta-base")
    if target is None:
        raise ImageFormatError("%s has no upgrade image to use as a base" % path,
                               reason="no-upgrade-image")
    return target


def inspect_image(path: str | os.PathLike) -> dict:
    """Every header field and sub-element of an OTA file, as a JSON-ready dict."""
    s = parse_file(path)
    h = s.header
    d = s.descriptor
    kinds = {v: k for k, v in otafile.PAYLOAD_KINDS.items()}
    families = {v: k for k, v in otafile.BOARD_FAMILIES.items()}
    return {
        "file": str(path),
        "file_size": os.path.getsize(path),
        "format": s.format,
        "header_version": h.header_version,
        "header_length": h.header_length,
        "field_control": h.field_control,
        "manufacturer_code": h.manufacturer,
        "image_type": h.image_type,
        "file_version": h.file_version,
        "stack_version": h.stack_version,
        "header_string": h.header_string_text(),
        "total_image_size": h.total_size,
        "security_credential_version": h.security_credential,
        "min_hw_version": h.min_hw,
        "max_hw_version": h.max_hw,
        "destination": link.eui_str(h.destination) if h.destination is not None else None,
        "sub_elements": [{"tag": t, "length": n} for t, n, _ in s.elements],
        "upgrade_image_length": s.image_length,
        "upgrade_image_sha256": s.image_sha256.hex(),
        "integrity_code_ok": s.integrity_ok,
        "signed": s.sig is not None,
        "key_id": s.key_id.hex() if s.key_id is not None else None,
        "security_version": d.security_version if d else None,
        "payload_kind": kinds.get(d.payload_kind, d.payload_kind) if d else None,
        "board_family": families.get(d.board_family, d.board_family) if d else None,
        "manufacturer_image_hash": d.image_hash.hex() if d else None,
        "descriptor_version": d.version if d else None,
        "encoding": {v: k for k, v in otafile.ENCODINGS.items()}.get(d.encoding, d.encoding)
        if d else None,
        "target_size": (d.target_size if d.encoded else s.image_length) if d else None,
        "window_bits": d.window_bits if d and d.encoded else None,
        "segments": s.segments if d and d.encoded else None,
        "segment_max": d.segment_max if d and d.encoded else None,
        "base_size": d.base_size if d and d.encoding == otafile.ENC_DELTA else None,
        "base_sha256": d.base_hash.hex() if d and d.encoding == otafile.ENC_DELTA else None,
        "esp_app": _esp_app_summary(path, s) if d and d.payload_kind == otafile.PAYLOAD_ESP_APP
        and not d.encoded else None,
    }


def _esp_app_summary(path, s: otafile.OtaStream) -> dict:
    """The app descriptor and chip of an esp-app payload, or the reason it is not valid."""
    from . import espimage

    start = next((off for tag, _, off in s.elements if tag == otafile.TAG_UPGRADE_IMAGE), None)
    if start is None:
        return {"invalid": "no-image"}
    with open(path, "rb") as f:
        f.seek(start + otafile.ELEMENT_HEADER_LEN)
        data = f.read(s.image_length)
    try:
        return espimage.check_app(data).summary()
    except espimage.EspImageError as e:
        return {"invalid": e.reason}


class Verdict(Enum):
    """Outcome of `verify_image`, one message each in the CLI."""

    VALID = "valid"
    MALFORMED = "malformed"
    TRUNCATED = "truncated"
    UNSIGNED = "unsigned"
    WRONG_KEY = "wrong key"
    TAMPERED = "tampered"
    REJECTED = "rejected by the device"  # valid, but not for this device (--for-device)


_VERDICT_OF_REASON = {
    "truncated": Verdict.TRUNCATED, "truncated-header": Verdict.TRUNCATED,
    "unsigned": Verdict.UNSIGNED, "unknown-key": Verdict.WRONG_KEY,
    "bad-signature": Verdict.TAMPERED, "payload-hash": Verdict.TAMPERED,
    "integrity-code": Verdict.TAMPERED, "bad-segment": Verdict.TAMPERED,
    "bad-patch": Verdict.TAMPERED, "truncated-segment": Verdict.TRUNCATED,
    "wrong-base": Verdict.REJECTED,
}


@dataclass(frozen=True)
class VerifyResult:
    verdict: Verdict
    reason: str  # the parser's reason name, "" when valid
    message: str


def verify_image(path: str | os.PathLike, pubkeys: list[bytes],
                 base: bytes | None = None) -> VerifyResult:
    """Check structure, integrity code, descriptor and signature against the given keys. A
    compressed file is decoded and its target checked against the descriptor's hash; a
    delta file too when `base` is given (else only up to its segment chain)."""
    untested = ""
    try:
        s, target = decode_file(path, base, keep=False)
        s.check_integrity()
        digest = hashlib.sha256(target).digest() if target is not None else None
        key = otafile.check_signed(s, pubkeys, digest)
        if s.descriptor is not None and s.descriptor.encoding == otafile.ENC_DELTA \
                and target is None:
            untested = "; the delta's target is not checked (give --base)"
    except ImageFormatError as e:
        return VerifyResult(_VERDICT_OF_REASON.get(e.reason, Verdict.MALFORMED), e.reason, str(e))
    except OtaError as e:
        return VerifyResult(_VERDICT_OF_REASON.get(e.reason, Verdict.MALFORMED), e.reason,
                            "%s: %s" % (path, e.message))
    return VerifyResult(Verdict.VALID, "", "%s: valid, signed by key %s%s"
                        % (path, p256.key_id(key).hex(), untested))


_REASON_TEXT = {
    "wrong-manufacturer": "the file is for manufacturer 0x{h.manufacturer:04x}; the device is "
                          "0x{cfg.manufacturer:04x}",
    "wrong-image-type": "the file is image type 0x{h.image_type:04x}; the device takes "
                        "0x{cfg.image_type:04x}",
    "hardware-version": "the file is for hardware 0x{h.min_hw:04x}..0x{h.max_hw:04x}; the device "
                        "is 0x{cfg.hw_version:04x}",
    "wrong-destination": "the file is for device {dest}; this one is {cfg.eui64_text}",
    "security-version": "security version {d.security_version} is below the device's "
                        "anti-rollback floor {floor}",
    "too-big": "the manufacturer image ({image_len} bytes) is larger than the bank "
               "({bank_size} bytes)",
    "wrong-payload-kind": "the payload is {kind}; {bank_kind} banks take {want}",
    "version-not-newer": "file version 0x{h.file_version:08x} is not newer than the running "
                         "0x{running:08x}",
    "malformed": "the descriptor is not followed by the upgrade image element",
    "wrong-board": "the file is built for board family {family}; the device is {cfg.family}",
    "unsupported-encoding": "the body's encoding (window 2^{d.window_bits}, segments up to "
                            "{d.segment_max} bytes) is beyond what a device decodes",
}


def check_for_device(path: str | os.PathLike, config: dict, *, board: str | None = None,
                     running: int | None = None, floor: int = 0) -> VerifyResult:
    """Would the device with this configuration (its hanota.json) take the file? The same
    header rules the device applies before writing anything (hanfw.imagecheck); with
    `board`, also the bank's payload kind and size (and its family when the configuration
    names none); with `running`, a newer version."""
    from hanfw import config as devconfig, imagecheck

    try:
        cfg = devconfig.from_dict(config)
    except devconfig.ConfigError as e:
        raise ImageFormatError("the device configuration is unusable: %s" % e,
                               reason="bad-config") from None
    s = parse_file(path, allow_raw=False)
    if s.descriptor is None or not s.elements or s.elements[0][0] != otafile.TAG_DESCRIPTOR:
        return VerifyResult(Verdict.REJECTED, "bad-descriptor",
                            "%s: no hanota descriptor first: the device rejects it" % path)
    bank_size = bank_kind = None
    if board is not None:
        from . import boardspec

        spec = boardspec.load_board(board)
        bank_kind = spec.bank_kind
        bank_size = min(b.size for b in spec.banks)
        if cfg.family is None and spec.chip in otafile.BOARD_FAMILIES:
            cfg.family = spec.chip
    h, d = s.header, s.descriptor
    tag, image_len = s.elements[1][:2] if len(s.elements) > 1 else (None, 0)
    if d.encoded:
        image_len = d.target_size
    why = imagecheck.reason(h, d, tag, image_len, cfg, floor, bank_size, bank_kind)
    if why is None and running is not None and h.file_version <= running:
        why = "version-not-newer"
    if why is None:
        return VerifyResult(Verdict.VALID, "", "%s: the device %s takes it" % (path,
                                                                                cfg.eui64_text))
    kinds = {v: k for k, v in otafile.PAYLOAD_KINDS.items()}
    text = _REASON_TEXT[why].format(
        h=h, d=d, cfg=cfg, floor=floor, image_len=image_len, bank_size=bank_size,
        bank_kind=bank_kind, running=running, kind=kinds.get(d.payload_kind, d.payload_kind),
        want=kinds.get(imagecheck.BANK_PAYLOAD.get(bank_kind), "?"),
        family={v: k for k, v in otafile.BOARD_FAMILIES.items()}.get(d.board_family,
                                                                    d.board_family),
        dest=link.eui_str(h.destination or b""))
    return VerifyResult(Verdict.REJECTED, why, "%s: %s" % (path, text))
