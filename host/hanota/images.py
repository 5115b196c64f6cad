"""Build, sign, inspect and verify OTA upgrade files.

The byte formats live once, in the device package (`hanfw.otafile`); this module
only assembles and signs files (with `cryptography`) and reports on them.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from enum import Enum

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from hanfw import link, otafile, p256, roles
from hanfw.otafile import OtaError

from .errors import ImageFormatError
from .keys import raw_point

# Default image types per role, from the device's role table (hanfw.roles).
ROLE_IMAGE_TYPES = {r[0]: r[2] for r in roles.TABLE}
# Manufacturer code used for hanota's development images.
DEFAULT_MANUFACTURER = 0x1234
STACK_VERSION_PRO = 2

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


def build_image(payload: bytes, *, key: ec.EllipticCurvePrivateKey, version: int,
                role: str | None = None, manufacturer: int = DEFAULT_MANUFACTURER,
                image_type: int | None = None, min_hw: int | None = None,
                max_hw: int | None = None, destination: bytes | None = None,
                security_version: int = 0, header_string: str | None = None,
                payload_kind: int | None = None, board_family: int = otafile.BOARD_ANY) -> bytes:
    """Assemble and sign a hanota upgrade file around a manufacturer image."""
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
    desc = otafile.Descriptor(payload_kind, security_version, board_family,
                              hashlib.sha256(payload).digest())
    header = otafile.Header(manufacturer=manufacturer, image_type=image_type, file_version=version,
                            stack_version=STACK_VERSION_PRO, header_string=header_string.encode(),
                            destination=destination, min_hw=min_hw, max_hw=max_hw)
    body_len = (otafile.ELEMENT_HEADER_LEN + len(payload) + otafile.ELEMENT_HEADER_LEN
                + otafile.DESCRIPTOR_LEN + otafile.SIGNATURE_ELEMENT_LEN)
    header.total_size = header.header_length + body_len
    # The descriptor goes first so that a device can check the security version
    # (and the payload size) before it downloads the body.
    signed = b"".join([
        header.pack(),
        otafile.pack_element_header(otafile.TAG_DESCRIPTOR, otafile.DESCRIPTOR_LEN), desc.pack(),
        otafile.pack_element_header(otafile.TAG_UPGRADE_IMAGE, len(payload)), payload,
    ])
    digest = hashlib.sha256(signed).digest()
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
        "esp_app": _esp_app_summary(path, s) if d and d.payload_kind == otafile.PAYLOAD_ESP_APP
        else None,
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
    "integrity-code": Verdict.TAMPERED,
}


@dataclass(frozen=True)
class VerifyResult:
    verdict: Verdict
    reason: str  # the parser's reason name, "" when valid
    message: str


def verify_image(path: str | os.PathLike, pubkeys: list[bytes]) -> VerifyResult:
    """Check structure, integrity code, descriptor and signature against the given keys."""
    try:
        s = parse_file(path, allow_raw=False)
        s.check_integrity()
        key = otafile.check_signed(s, pubkeys)
    except ImageFormatError as e:
        return VerifyResult(_VERDICT_OF_REASON.get(e.reason, Verdict.MALFORMED), e.reason, str(e))
    except OtaError as e:
        return VerifyResult(_VERDICT_OF_REASON.get(e.reason, Verdict.MALFORMED), e.reason,
                            "%s: %s" % (path, e.message))
    return VerifyResult(Verdict.VALID, "", "%s: valid, signed by key %s" % (path, p256.key_id(key).hex()))


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
