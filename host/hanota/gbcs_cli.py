"""`hanota gbcs`: GBCS messages and GBCS firmware images on the command line.

- `decode FILE [--json]`: a GBCS message (hex text as the DCC's RTDS files hold it, or
  binary) with every field named, or a GBCS OTA file / Upgrade Image;
- `verify FILE --cert CERT [--ka-cert CERT --ka-key KEY]`: the Supplier's signature (of a
  message, or over an image's Manufacturer Image) and, given the two key-agreement keys, the
  GBCS MAC. The certificate only gives the public key, as on a device: no validity dates are
  checked (the DCC Boxed test certificates expired in 2025/26 and still verify);
- `build cs06 ...`: a Supplier-signed CS06 Activate Firmware, MAC'd when KA keys are given;
  `build image ...`: a GBCS OTA file, the Supplier's signature over the Manufacturer Image;
- `sign FILE --key KEY`: a User signs a pre-command (either form); `mac FILE --ka-cert
  --ka-key`: the DCC wraps a signed pre-command in the MAC header.

The codec is the device's own (hanfw.gbcs), so what the host writes is what a device reads.
"""
from __future__ import annotations

import hashlib
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import click
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from hanfw import gbcs, gbcsimage

from .clitypes import BasedInt, domain_errors
from .errors import HanotaError
from .keys import load_private_key, load_public_key, raw_point

OTA_MAGIC = b"\x1E\xF1\xEE\x0B"
DCC_BOXED_SUPPLIER = "90B3D51F30010000"  # the default originator: DCC Boxed's test Supplier
CRA_NAMES = {1: "command", 2: "response", 3: "alert"}


class GbcsFileError(HanotaError):
    """A file that is not a GBCS message or image (the reason names what is wrong)."""

    reason = "gbcs-format"


def read_input(path: str) -> bytes:
    """The bytes of FILE ('-' = stdin): hex text (whitespace ignored) or binary."""
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as e:
        raise GbcsFileError("cannot read %s: %s" % (path, e.strerror)) from None
    text = b"".join(data.split())
    if text and all(c in b"0123456789abcdefABCDEF" for c in text):
        if len(text) % 2:
            raise GbcsFileError("%s: hex text of odd length %d" % (path, len(text)))
        return bytes.fromhex(text.decode())
    return data


class SystemTitle(click.ParamType):
    """An EUI-64 as GBCS writes it, most significant byte first (16 hex digits, with or
    without '-' or ':' between the pairs): its 8 bytes in that order (GBCS is big-endian,
    unlike the Zigbee frames' wire order)."""

    name = "eui64"

    def convert(self, value, param, ctx):
        if isinstance(value, bytes):
            return value
        digits = value.strip().replace("-", "").replace(":", "")
        try:
            b = bytes.fromhex(digits)
        except ValueError:
            b = b""
        if len(b) != 8:
            self.fail("%r is not an EUI-64 (16 hex digits)" % value, param, ctx)
        return b


def public_point(path: str) -> bytes:
    """The 65-byte P-256 point of a certificate (PEM or DER; dates not checked), a PEM public
    key or a raw 65-byte point."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise GbcsFileError("cannot read %s: %s" % (path, e.strerror)) from None
    cert = None
    try:
        cert = (x509.load_pem_x509_certificate(data) if b"-----BEGIN CERTIFICATE" in data
                else x509.load_der_x509_certificate(data))
    except ValueError:
        pass
    if cert is None:
        return load_public_key(path)
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise GbcsFileError("%s: the certificate's key is not a P-256 key" % path)
    return raw_point(key)


def _hex(b: bytes | None) -> str | None:
    return None if b is None else b.hex().upper()


def dlms_date_time(b: bytes) -> str:
    """A 12-byte DLMS date-time as ISO text; 0xFF fields (not specified) as '*'."""
    year = int.from_bytes(b[0:2], "big")
    parts = ["*" if year == 0xFFFF else "%04d" % year]
    parts += ["*" if v == 0xFF else "%02d" % v for v in (b[2], b[3], b[5], b[6], b[7])]
    return "%s-%s-%sT%s:%s:%s" % tuple(parts)


def _fields(m: gbcs.Message) -> dict:
    out: dict = {}
    for k, v in m.fields.items():
        if k == "alert_code":
            out[k] = "0x%04X" % v
            out["alert_meaning"] = {
                gbcs.ALERT_FD_ACTIONED: "future-dated HAN command actioned",
                gbcs.ALERT_FD_NOT_ACTIONED: "future-dated HAN command not actioned",
                gbcs.ALERT_TRANSFER_OK: "firmware transfer success",
                gbcs.ALERT_TRANSFER_FAILED: "firmware transfer failure",
                gbcs.ALERT_FIRMWARE_VERSION: "read firmware version"}.get(v, "unknown")
        elif isinstance(v, bytes):
            out[k] = _hex(v)
        else:
            out[k] = v
        if k == "response_code" and isinstance(v, int):
            table = {"cs06-response": gbcs.CS06_CODES, "fd-alert": gbcs.CS06_CODES,
                     "cs08-response": gbcs.CS08_CODES, "ccs08-alert": gbcs.CCS08_CODES}
            names = table.get(m.kind, ())
            out["response_meaning"] = names[v] if v < len(names) else "unknown"
    if m.kind == "cs06-command":
        at = m.fields.get("execution_date_time")
        out["activation"] = ("immediate" if at is None else
                             "cancellation" if at == gbcs.CANCEL_TIME else "future-dated")
    if m.kind in ("cs06-accepted", "cs08-command"):
        out["payload"] = "NULL" + (" (command accepted)" if m.kind == "cs06-accepted" else "")
    return out


def describe_message(m: gbcs.Message) -> dict:
    """Every field of a decoded message, named."""
    d: dict = {"type": "message", "mac_header": m.mac_header}
    if m.mac_header:
        d["ciphered_length"] = 5 + (m.sig_end - m.apdu_start) + 12  # header, APDU, MAC
        d["security_header"] = "1100000000"
    d.update({
        "cra_flag": CRA_NAMES[m.cra],
        "originator_counter": m.counter,
        "originator_id": _hex(m.originator),
        "recipient_id": _hex(m.recipient),
        "date_time": _hex(m.date_time),
        "date_time_text": dlms_date_time(m.date_time) if m.date_time else None,
        "message_code": "0x%04X" % m.message_code,
        "message_code_name": gbcs.MESSAGE_NAMES.get(m.message_code, "unknown to hanota"),
    })
    if m.supp_id is not None:
        d["supplementary_remote_party_id"] = _hex(m.supp_id)
        d["supplementary_remote_party_counter"] = m.supp_counter
    if m.supp_orig_counter is not None:
        d["supplementary_originator_counter"] = m.supp_orig_counter
    if m.certificate is not None:
        d["certificate"] = _hex(m.certificate)
    d["content_length"] = len(m.payload)
    d["payload_kind"] = m.kind
    d["payload_der"] = _hex(m.payload)
    d["fields"] = _fields(m)
    if m.signature is None:
        d["signature"] = "absent (pre-command)"
    elif not m.signature:
        d["signature"] = "none (length 00)"
    else:
        d["signature"] = _hex(m.signature)
    d["signed_range"] = [m.signed_start, m.signed_end]
    d["mac"] = _hex(m.mac)
    return d


def decode_any(data: bytes) -> gbcsimage.OtaFileReader | gbcs.Message:
    """A GBCS OTA file (read whole) or a decoded message; GbcsFileError naming the problem
    otherwise."""
    try:
        if data[:4] == OTA_MAGIC:
            r = gbcsimage.OtaFileReader()
            r.feed(data)
            if not r.done:
                raise GbcsFileError("truncated GBCS OTA file: %d bytes of %d"
                                    % (len(data), getattr(r, "total_size", 0) or 0))
            return r
        return gbcs.decode(data)
    except (gbcs.GbcsError, gbcsimage.ImageError) as e:
        raise GbcsFileError("not a GBCS message or OTA file (%s): %s" % (e.reason, e),
                            reason=e.reason) from None


def describe_ota(r: gbcsimage.OtaFileReader) -> dict:
    img = r.image
    assert img is not None
    return {"type": "ota-file", "header_length": r.header_length,
            "field_control": "0x%04X" % r.field_control,
            "manufacturer_code": "0x%04X" % r.manufacturer, "image_type": "0x%04X" % r.image_type,
            "file_version": "0x%08X" % r.file_version, "stack_version": r.stack_version,
            "header_string": r.header_string.rstrip(b"\x00").decode("latin-1"),
            "total_image_size": r.total_size,
            "min_hw_version": None if r.min_hw is None else "0x%04X" % r.min_hw,
            "max_hw_version": None if r.max_hw is None else "0x%04X" % r.max_hw,
            "upgrade_image_bytes": img.length, "manufacturer_image_bytes": img.image_len,
            "manufacturer_image_hash": _hex(img.image_hash),
            "force_replace": img.force_replace, "signature_length": 64,
            "supplier_signature": _hex(img.signature)}


def _lines(d: dict, indent: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            out.append("%s%s:" % (indent, k))
            out += _lines(v, indent + "  ") or [indent + "  (none)"]
        else:
            out.append("%s%s: %s" % (indent, k, "-" if v is None else v))
    return out


@click.group()
def gbcs_group() -> None:
    """GBCS messages (CS06, CS08, alerts) and GBCS firmware images: decode, verify, build."""


@gbcs_group.command("decode")
@click.argument("file")
@click.option("--json", "as_json", is_flag=True, help="Print the fields as JSON.")
@domain_errors
def decode_cmd(file: str, as_json: bool) -> None:
    """Decode FILE: a GBCS message (hex text, as in the RTDS files, or binary) or a GBCS OTA
    file; every field named. Exit 2 if it is neither (the reason named)."""
    obj = decode_any(read_input(file))
    info = describe_ota(obj) if isinstance(obj, gbcsimage.OtaFileReader) else describe_message(obj)
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        click.echo("\n".join(_lines(info)))


def _mac_secret(ka_cert: str | None, ka_key: str | None) -> bytes | None:
    if (ka_cert is None) != (ka_key is None):
        raise click.UsageError("--ka-cert and --ka-key go together (the MAC needs both)")
    if ka_cert is None or ka_key is None:
        return None
    priv = load_private_key(ka_key)
    peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), public_point(ka_cert))
    return priv.exchange(ec.ECDH(), peer)


@gbcs_group.command("verify")
@click.argument("file")
@click.option("--cert", "cert", required=True, metavar="CERT",
              help="The Supplier's (signer's) certificate, PEM public key or raw point.")
@click.option("--ka-cert", metavar="CERT",
              help="The other party's key-agreement certificate (for the MAC): the device's, "
                   "when --ka-key is the ACB's, or the ACB's, when it is the device's.")
@click.option("--ka-key", metavar="KEY", help="A key-agreement private key (PEM) for the MAC.")
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON.")
@domain_errors
def verify_cmd(file: str, cert: str, ka_cert: str | None, ka_key: str | None,
               as_json: bool) -> None:
    """Check FILE's Supplier signature (a message: over its signed bytes; an OTA file: over
    the Manufacturer Image) and, with --ka-cert/--ka-key, its MAC. Exit 0 valid, 1 invalid
    (the reason named). No certificate validity dates are checked, as on a device."""
    pub = public_point(cert)
    z = _mac_secret(ka_cert, ka_key)
    obj = decode_any(read_input(file))
    checked = []
    try:
        if isinstance(obj, gbcsimage.OtaFileReader):
            assert obj.image is not None
            obj.image.check(pub)
            checked.append("supplier signature over the manufacturer image")
        else:
            if z is not None:
                if not obj.mac_header:
                    raise gbcs.GbcsError("no-mac", "the message has no MAC header")
                if gbcs.compute_mac(z, obj, obj.raw[obj.apdu_start:obj.sig_end]) != obj.mac:
                    raise gbcs.GbcsError("bad-mac", "the GBCS MAC does not verify with these "
                                         "key-agreement keys")
                checked.append("MAC")
            if obj.signature or z is None:
                gbcs.check_signature(obj, pub, received=True)
                checked.append("signature")
    except (gbcs.GbcsError, gbcsimage.ImageError) as e:
        if as_json:
            click.echo(json.dumps({"valid": False, "reason": e.reason, "message": str(e)}))
        click.echo("invalid: %s (%s)" % (e, e.reason), err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps({"valid": True, "checked": checked}))
    else:
        click.echo("valid: %s" % ", ".join(checked))


def parse_at(text: str | None) -> str | None:
    """--at as GBCS GeneralizedTime: 'cancel', YYYYMMDDhhmmssZ, or an ISO date-time (UTC)."""
    if text is None:
        return None
    if text.lower() == "cancel":
        return gbcs.CANCEL_TIME
    t = text.strip()
    if len(t) == 15 and t.endswith("Z") and t[:14].isdigit():
        return t
    try:
        when = datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter("%r is not a date-time (ISO, YYYYMMDDhhmmssZ or 'cancel')"
                                 % text, param_hint="--at") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).strftime("%Y%m%d%H%M%SZ")


@gbcs_group.group("build")
def build_group() -> None:
    """Build GBCS messages."""


@build_group.command("cs06")
@click.option("--hash", "image_hash", required=True, metavar="HEX",
              help="Manufacturer Image Hash: SHA-256 of the manufacturer image (64 hex digits).")
@click.option("--counter", required=True, type=BasedInt(64), help="Originator counter.")
@click.option("--recipient", required=True, type=SystemTitle(), help="The device's EUI-64.")
@click.option("--at", "at", metavar="T",
              help="Execution date-time (ISO or YYYYMMDDhhmmssZ, UTC); 'cancel' cancels a "
                   "pending one; absent: activate at once.")
@click.option("--key", required=True, metavar="KEY",
              help="The Supplier's digital-signature private key (PEM).")
@click.option("--originator", type=SystemTitle(), default=DCC_BOXED_SUPPLIER, show_default=True,
              help="The Supplier's EUI-64 (default: DCC Boxed's test Supplier).")
@click.option("--ka-cert", metavar="CERT", help="The device's key-agreement certificate.")
@click.option("--ka-key", metavar="KEY", help="The ACB's key-agreement private key (PEM).")
@click.option("-o", "--output", metavar="OUT", help="Write here (default: stdout).")
@click.option("--binary", is_flag=True, help="Write bytes rather than hex text.")
@domain_errors
def build_cs06(image_hash: str, counter: int, recipient: bytes, at: str | None, key: str,
               originator: bytes, ka_cert: str | None, ka_key: str | None,
               output: str | None, binary: bool) -> None:
    """A CS06 Activate Firmware command signed by the Supplier. With --ka-cert and --ka-key
    it is wrapped in the MAC header with its MAC (what the device receives); without, it is
    the signed pre-command (DF ... 40 r||s) the DCC wraps."""
    try:
        h = bytes.fromhex(image_hash)
    except ValueError:
        h = b""
    if len(h) != 32:
        raise click.BadParameter("the hash is 64 hex digits (SHA-256)", param_hint="--hash")
    priv = load_private_key(key)
    z = _mac_secret(ka_cert, ka_key)
    m = gbcs.cs06_command(counter, originator, recipient, h, parse_at(at))
    _finish(m, priv, z, output, binary)


@build_group.command("image")
@click.option("--image", "image_path", required=True, metavar="FILE",
              help="The Manufacturer Image (the firmware itself).")
@click.option("--key", required=True, metavar="KEY",
              help="The Supplier's digital-signature private key (PEM).")
@click.option("--manufacturer", required=True, type=BasedInt(16), help="Manufacturer code.")
@click.option("--image-type", required=True, type=BasedInt(16), help="Image type.")
@click.option("--file-version", required=True, type=BasedInt(32), help="File version.")
@click.option("--min-hw", type=BasedInt(16), default=0, show_default=True)
@click.option("--max-hw", type=BasedInt(16), default=0xFFFF, show_default=True)
@click.option("--header-string", default="", help="Up to 32 bytes of text (zero-filled).")
@click.option("--force-replace", type=BasedInt(8), default=0, show_default=True,
              help="The Upgrade Image's Force-Replace byte (used by the Comms Hub).")
@click.option("-o", "--output", required=True, metavar="OUT", help="The OTA file to write.")
@domain_errors
def build_image(image_path: str, key: str, manufacturer: int, image_type: int,
                file_version: int, min_hw: int, max_hw: int, header_string: str,
                force_replace: int, output: str) -> None:
    """A GBCS OTA file (SR 11.1's FirmwareImage): the 60-byte Zigbee OTA header, then the
    Upgrade Image = Manufacturer Image || Force-Replace || 40 || the Supplier's signature
    over the Manufacturer Image (deterministic ECDSA, RFC 6979), with no sub-element tag.
    Prints the Manufacturer Image Hash, which an SR 11.3 / CS06 names."""
    from hanfw import otafile
    try:
        image = Path(image_path).read_bytes()
    except OSError as e:
        raise GbcsFileError("cannot read %s: %s" % (image_path, e.strerror)) from None
    if not image:
        raise GbcsFileError("%s is empty: a Manufacturer Image has at least one byte"
                            % image_path)
    hs = header_string.encode()
    if len(hs) > 32:
        raise click.BadParameter("at most 32 bytes", param_hint="--header-string")
    priv = load_private_key(key)
    r, s = utils.decode_dss_signature(priv.sign(
        image, ec.ECDSA(hashes.SHA256(), deterministic_signing=True)))
    upgrade = gbcsimage.upgrade_image(image, r.to_bytes(32, "big") + s.to_bytes(32, "big"),
                                 force_replace)
    hdr = otafile.Header(manufacturer=manufacturer, image_type=image_type,
                         file_version=file_version, header_string=hs.ljust(32, b"\x00"),
                         min_hw=min_hw, max_hw=max_hw)
    data = gbcsimage.ota_file(hdr, upgrade)
    Path(output).write_bytes(data)
    click.echo("wrote %s: %d bytes; manufacturer image hash %s"
               % (output, len(data), hashlib.sha256(image).hexdigest().upper()))


def _finish(m: gbcs.Message, priv: ec.EllipticCurvePrivateKey | None, z: bytes | None,
            output: str | None, binary: bool) -> None:
    """Sign m (when a key is given), MAC it (when z is: else no MAC header) and write it."""
    if priv is not None:
        r, s = utils.decode_dss_signature(priv.sign(m.signed_bytes(),
                                                    ec.ECDSA(hashes.SHA256())))
        m.signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    m.mac_header = z is not None
    if z is not None:
        m.mac = gbcs.compute_mac(z, m)
    data = m.encode()
    out = data if binary else (data.hex().upper() + "\n").encode()
    if output:
        Path(output).write_bytes(out)
        click.echo("wrote %s: %s counter %d to %s, %d bytes%s" % (
            output, m.describe(), m.counter, m.recipient.hex().upper(), len(data),
            ", MAC'd" if z is not None else " (no MAC header)"), err=True)
    else:
        sys.stdout.buffer.write(out)


def _message(file: str) -> gbcs.Message:
    obj = decode_any(read_input(file))
    if not isinstance(obj, gbcs.Message):
        raise GbcsFileError("%s is an OTA file, not a GBCS message" % file)
    return obj


@gbcs_group.command("sign")
@click.argument("file")
@click.option("--key", required=True, metavar="KEY",
              help="The signer's digital-signature private key (PEM): the Supplier's.")
@click.option("--ka-cert", metavar="CERT", help="The device's key-agreement certificate.")
@click.option("--ka-key", metavar="KEY", help="The ACB's key-agreement private key (PEM).")
@click.option("-o", "--output", metavar="OUT", help="Write here (default: stdout).")
@click.option("--binary", is_flag=True, help="Write bytes rather than hex text.")
@domain_errors
def sign_cmd(file: str, key: str, ka_cert: str | None, ka_key: str | None,
             output: str | None, binary: bool) -> None:
    """Sign a pre-command (DUIS's signed pre-command flow: the DCC returns it, the User
    signs it). Both forms are read: without a signature-length byte (RTDS, DCC Boxed before
    1.4.1) and with a trailing 00 (Green Book); any signature or MAC it had is replaced.
    With --ka-cert/--ka-key the result is also MAC'd, as the DCC sends it."""
    _finish(_message(file), load_private_key(key), _mac_secret(ka_cert, ka_key), output,
            binary)


@gbcs_group.command("mac")
@click.argument("file")
@click.option("--ka-cert", required=True, metavar="CERT",
              help="The other party's key-agreement certificate (the device's).")
@click.option("--ka-key", required=True, metavar="KEY",
              help="A key-agreement private key (PEM): the ACB's.")
@click.option("-o", "--output", metavar="OUT", help="Write here (default: stdout).")
@click.option("--binary", is_flag=True, help="Write bytes rather than hex text.")
@domain_errors
def mac_cmd(file: str, ka_cert: str, ka_key: str, output: str | None, binary: bool) -> None:
    """Wrap a signed pre-command (or any GBCS message) in the MAC header with its MAC, as
    the DCC does before it sends a command; a message with no signature field gets the
    00 length byte (unsigned)."""
    m = _message(file)
    if m.signature is None:
        m.signature = b""
    _finish(m, None, _mac_secret(ka_cert, ka_key), output, binary)


def register(main: click.Group) -> None:
    """Add `gbcs` to the top-level `hanota` command."""
    main.add_command(gbcs_group, "gbcs")
