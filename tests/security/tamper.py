"""The tamper and policy cases: tampered files and the reason a device must give for each.

`layout_of` names every byte of a hanota upgrade file (header fields, descriptor, image
element, payload, signature element); `expected_reason` says what the device must answer
when one bit of it flips, from what the device checks and in which order:

1. the header as it streams in (magic, version, length, field control, total size against
   the size the hub announced), then, with the descriptor and the image element header in,
   manufacturer, image type, file version (against the one announced), hardware range,
   destination, security version (against the floor), element order, image size against
   the bank and payload kind -- all before a byte of the body is written;
2. then the body, and at the end the signature (key id first, then ECDSA over every byte
   before the signature element) and the payload hash in the descriptor.

A flip in a byte only the signature protects is therefore `bad-signature`.
"""
from __future__ import annotations

import struct

from hanfw import otafile

HW = 0x0100
MIN_HW, MAX_HW = 0x0001, 0x0FFF


def layout_of(data: bytes) -> list[tuple[str, int, int]]:
    """[(field, start, end)] of a hanota file with destination and hardware range."""
    h = otafile.Header.parse(data[:otafile.MAX_HEADER_LEN])
    hl = h.header_length
    fields = [("magic", 0, 4), ("header-version", 4, 6), ("header-length", 6, 8),
              ("field-control", 8, 10), ("manufacturer", 10, 12), ("image-type", 12, 14),
              ("file-version", 14, 18), ("stack-version", 18, 20), ("header-string", 20, 52),
              ("total-size", 52, 56)]
    off = 56
    if h.field_control & otafile.FC_DESTINATION:
        fields.append(("destination", off, off + 8))
        off += 8
    if h.field_control & otafile.FC_HW_VERSIONS:
        fields += [("min-hw", off, off + 2), ("max-hw", off + 2, off + 4)]
        off += 4
    assert off == hl
    d = hl
    fields += [("descriptor-tag", d, d + 2), ("descriptor-length", d + 2, d + 6),
               ("descriptor-version", d + 6, d + 7), ("payload-kind", d + 7, d + 8),
               ("board-family", d + 8, d + 10), ("security-version", d + 10, d + 14),
               ("image-hash", d + 14, d + 46)]
    i = d + 46
    (plen,) = struct.unpack_from("<I", data, i + 2)
    fields += [("image-tag", i, i + 2), ("image-length", i + 2, i + 6),
               ("payload", i + 6, i + 6 + plen)]
    s = i + 6 + plen
    fields += [("signature-tag", s, s + 2), ("signature-length", s + 2, s + 6),
               ("key-id", s + 6, s + 14), ("signature-r", s + 14, s + 46),
               ("signature-s", s + 46, s + 78)]
    assert s + 78 == len(data) == h.total_size
    return fields


def field_at(fields, pos: int) -> tuple[str, int, int]:
    for f in fields:
        if f[1] <= pos < f[2]:
            return f
    raise ValueError(pos)


def _u(data: bytes, start: int, end: int) -> int:
    return int.from_bytes(data[start:end], "little")


def expected_reason(original: bytes, pos: int, mask: int, *, floor: int = 0) -> str:
    """The reason a device (hw version HW, floor `floor`) gives for original with
    byte pos XOR mask, when the hub announces the original's identity and size."""
    fields = layout_of(original)
    name, start, end = field_at(fields, pos)
    tampered = bytearray(original)
    tampered[pos] ^= mask
    old, new = _u(original, start, end), _u(tampered, start, end)
    if name in ("magic", "header-version", "header-length"):
        return "malformed"
    if name == "field-control":
        # only bits 0-2 change the header length the field control implies
        return "malformed" if (old ^ new) & 0x07 else "bad-signature"
    if name == "total-size":
        return "too-big" if new > old else "malformed"
    if name == "manufacturer":
        return "wrong-manufacturer"
    if name == "image-type":
        return "wrong-image-type"
    if name == "file-version":
        return "malformed"  # the file is not the version the hub announced
    if name == "destination":
        return "wrong-destination"
    if name in ("min-hw", "max-hw"):
        lo = new if name == "min-hw" else MIN_HW
        hi = new if name == "max-hw" else MAX_HW
        return "bad-signature" if lo <= HW <= hi else "hardware-version"
    if name == "descriptor-tag":
        # 0xF0A1 is the signature tag: a signature element of the wrong length
        return "malformed" if new == otafile.TAG_SIGNATURE else "bad-descriptor"
    if name == "descriptor-length":
        # longer than the rest of the file: element overrun; else not 40 bytes
        return "malformed" if start + 4 + new > len(original) else "bad-descriptor"
    if name == "descriptor-version":
        return "bad-descriptor"
    if name == "payload-kind":
        return "wrong-payload-kind"
    if name == "security-version":
        return "security-version" if new < floor else "bad-signature"
    if name in ("board-family", "image-hash", "stack-version", "header-string", "payload",
                "signature-r", "signature-s"):
        return "bad-signature"
    if name == "image-tag":
        return "malformed"  # the second element must be the upgrade image
    if name == "image-length":
        return None  # depends on where the misframed elements land: see IMAGE_LENGTH
    if name == "signature-tag":
        # 0xF0A0 is a second descriptor; any other tag is an unknown element, skipped,
        # and the file then carries no signature
        return "bad-descriptor" if new == otafile.TAG_DESCRIPTOR else "unsigned"
    if name == "signature-length":
        return "malformed"  # not 72 bytes, or past the end of the file
    if name == "key-id":
        return "unknown-key"
    raise AssertionError(name)


# A flipped image length misframes what follows: a shorter length makes the last payload
# bytes an element header, a longer one runs into the signature element or past the end.
# Every outcome is a structural error or a failed signature/hash check, never acceptance.
IMAGE_LENGTH = {"malformed", "bad-signature", "unsigned", "payload-hash", "too-big",
                "bad-descriptor"}

# Reasons decided on the header and descriptor, before any byte of the body is written.
HEADER_LEVEL = {"wrong-manufacturer", "wrong-image-type", "hardware-version",
                "wrong-destination", "version-not-newer", "security-version", "too-big",
                "bad-descriptor", "wrong-payload-kind"}
