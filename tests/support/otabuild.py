"""Builders for test OTA files: valid signed images, and hand-made malformed ones."""
from __future__ import annotations

import struct

from cryptography.hazmat.primitives.asymmetric import ec

from hanota.keys import raw_point
from hanfw import otafile


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def raw_pub(key: ec.EllipticCurvePrivateKey) -> bytes:
    return raw_point(key.public_key())


def element(tag: int, value: bytes) -> bytes:
    return struct.pack("<HI", tag, len(value)) + value


def header(total: int, *, fc: int = 0, hlen: int | None = None, magic: int = 0x0BEEF11E,
           version: int = 0x0100, mfr: int = 0x1234, itype: int = 0x0084, fver: int = 1,
           string: bytes = b"test", extra: bytes | None = None) -> bytes:
    """A header from raw field values (so tests can make it disagree with itself)."""
    if hlen is None:
        hlen = otafile.header_length_for(fc)
    h = struct.pack("<IHHHHHIH32sI", magic, version, hlen, fc, mfr, itype, fver, 2, string, total)
    if extra is None:
        extra = bytes(otafile.header_length_for(fc) - 56)
    return h + extra


def unsigned_file(elements: list[bytes], **kw) -> bytes:
    """Header + the given element bytes, with a total size that fits exactly."""
    fc = kw.get("fc", 0)
    body = b"".join(elements)
    total = otafile.header_length_for(fc) + len(body)
    return header(total, **kw) + body
