"""`hanota duis build` and `hanota duis show`: DUIS requests for Users, and any DUIS document
(request, acknowledgement, response or alert) as readable fields.

`build` writes an unsigned request shaped as the public template for the SRV (sign it with
`hanota duis sign`). `show` exits 0 for a valid document, 1 when it is not valid DUIS (printing
the response code the DCC would answer and the reason), 2 when the file cannot be read.
"""
from __future__ import annotations

import hashlib
import json
import struct
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from . import duis as d
from .cli import duis

_OTA_FILE_ID = b"\x1e\xf1\xee\x0b"   # Zigbee OTA upgrade file identifier, little-endian


class DuisEui(click.ParamType):
    """An EUI-64, most significant byte first: DUIS hyphens, colons or 16 hex digits."""

    name = "eui64"

    def convert(self, value, param, ctx):
        if isinstance(value, bytes):
            return value
        try:
            return d.eui_arg(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


class DuisDateTime(click.ParamType):
    """A date-time with a time zone (2030-01-15T09:00:00Z), or `now`."""

    name = "datetime"

    def convert(self, value, param, ctx):
        if isinstance(value, datetime):
            return value
        if value == "now":
            return datetime.now(timezone.utc)
        try:
            return d.parse_datetime(value, "--at")
        except ValueError as e:
            self.fail(str(e), param, ctx)


class Originator(DuisEui):
    """The User: an EUI-64, or a certificate file whose entity ID (x500UniqueIdentifier) is
    the User's, as the DCC will check it against the signer."""

    name = "eui64|cert"

    def convert(self, value, param, ctx):
        if isinstance(value, str) and Path(value).is_file():
            from . import pki
            try:
                return pki.describe(pki.load_cert(Path(value).read_bytes())).entity_id
            except Exception as e:   # PkiError, or a file that is no certificate
                self.fail("%s: no entity ID from this certificate: %s" % (value, e), param, ctx)
        return super().convert(value, param, ctx)


EUI = DuisEui()


def ota_file_version(image: bytes) -> str | None:
    """The file version in a Zigbee OTA header (little-endian at offset 14), as DUIS's
    FirmwareVersion (8 hex digits), or None when the bytes are not an OTA file."""
    if len(image) >= 18 and image[:4] == _OTA_FILE_ID:
        return "%08X" % struct.unpack_from("<I", image, 14)[0]
    return None


@duis.command("build")
@click.argument("srv", type=click.Choice(list(d.SERVICES)))
@click.option("--from", "originator", type=Originator(), required=True,
              help="The User's entity ID (RequestID originator), e.g. 90-B3-D5-1F-30-01-00-00, "
                   "or the User's certificate file to take it from.")
@click.option("--to", "target", type=EUI, default=None,
              help="RequestID target: the device for 11.2, 11.3, 8.7.x and 8.8.x; default the "
                   "DCC (90-B3-D5-1F-30-00-00-02) for the non-device services.")
@click.option("--counter", type=click.IntRange(0, 2**64 - 1), default=None,
              help="RequestID counter (default: the time in milliseconds, as DCC Boxed's "
                   "signing tool does, so it always rises).")
@click.option("--image", type=click.Path(exists=True, dir_okay=False), default=None,
              help="11.1 / 11.4: the OTA file.")
@click.option("--version", "fw_version", default=None,
              help="FirmwareVersion, 8 hex digits (11.1 / 11.4: default the OTA header's file "
                   "version; 8.4 / 12.2).")
@click.option("--hash", "fw_hash", default=None,
              help="11.3: the Manufacturer Image Hash, 64 hex digits.")
@click.option("--at", type=DuisDateTime(), default=None,
              help="11.3: ExecutionDateTime (future-dated activation), e.g. 2030-01-15T09:00:00Z.")
@click.option("--cancel", is_flag=True, help="11.3: cancel a future-dated activation.")
@click.option("--device", "devices", type=EUI, multiple=True,
              help="The device the request is about: 11.1 / 11.4 DeviceIDList (repeatable); "
                   "8.2, 8.4, 12.2 DeviceID; 8.7.x / 8.8.x OtherDeviceID (the device joined or "
                   "unjoined).")
@click.option("--device-type", default=None, help="8.4 / 12.2: DeviceType (ESME, PPMID, "
              "HCALCS, ALTHAN ...).")
@click.option("--manufacturer", default=None, help="8.4 / 12.2: DeviceManufacturer, 4 hex.")
@click.option("--model", default=None, help="8.4 / 12.2: DeviceModel, 8 hex.")
@click.option("--smets-version", default="SMETS V1.58", show_default=True,
              help="12.2: SMETSCHTSVersion.")
@click.option("--esme-variant", default=None, help="12.2: ESMEVariant (ESMEs only).")
@click.option("--install-code", default=None, help="12.2: the device's install code, hex "
              "(a hanota extension the CH needs to let the device join).")
@click.option("--delete", is_flag=True, help="8.4: DeleteDevice.")
@click.option("--command-variant", type=int, default=None,
              help="Override the CommandVariant (to see the DCC refuse it).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Write here (default: standard output).")
def duis_build(srv: str, originator: bytes, target: bytes | None, counter: int | None,
               image: str | None, fw_version: str | None, fw_hash: str | None,
               at: datetime | None, cancel: bool, devices: tuple[bytes, ...],
               device_type: str | None, manufacturer: str | None, model: str | None,
               smets_version: str, esme_variant: str | None, install_code: str | None,
               delete: bool, command_variant: int | None, output: str | None) -> None:
    """Build an unsigned DUIS request for SRV, shaped as the public template (sign it with
    `hanota duis sign`)."""
    svc = d.SERVICES[srv]
    if target is None:
        if not svc.non_device:
            raise click.UsageError("SR %s (%s) is addressed to a device: give --to" % (srv, svc.name))
        target = d.DCC_EUI
    if counter is None:
        counter = time.time_ns() // 1_000_000
    one = devices[0] if devices else None
    if len(devices) > 1 and srv not in ("11.1", "11.4"):
        raise click.UsageError("SR %s takes one --device" % srv)
    fields: dict[str, Any] = {}
    if srv in ("11.1", "11.4"):
        if not image:
            raise click.UsageError("SR %s needs --image" % srv)
        data = Path(image).read_bytes()
        fw_version = fw_version or ota_file_version(data)
        if fw_version is None:
            raise click.UsageError("%s has no Zigbee OTA header to take the version from: give "
                                   "--version" % image)
        if not devices:
            raise click.UsageError("SR %s needs --device (one or more)" % srv)
        fields = dict(firmware_image=data, firmware_version=fw_version, device_ids=list(devices))
    elif srv == "11.3":
        if not fw_hash:
            raise click.UsageError("SR 11.3 needs --hash")
        try:
            h = bytes.fromhex(fw_hash)
        except ValueError:
            raise click.UsageError("--hash %r is not hex" % fw_hash) from None
        fields = dict(firmware_hash=h, execution_datetime=at, cancel=cancel)
    elif srv in ("8.2", "8.4", "12.2", "8.7.1", "8.7.2", "8.8.1", "8.8.2"):
        if one is None:
            raise click.UsageError("SR %s needs --device" % srv)
        if srv.startswith(("8.7", "8.8")):
            fields = dict(other_device_id=one)
        elif srv == "8.2":
            fields = dict(device_id=one)
        elif srv == "8.4":
            fields = dict(device_id=one, delete=delete, device_type=device_type,
                          manufacturer=manufacturer, model=model, firmware_version=fw_version)
        else:
            fields = dict(device_id=one, device_type=device_type, manufacturer=manufacturer,
                          model=model, smets_chts_version=smets_version,
                          firmware_version=fw_version, esme_variant=esme_variant,
                          install_code=install_code)
    try:
        xml = d.build_request(srv, originator, target, counter,
                              command_variant=command_variant, **fields)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    if output:
        Path(output).write_bytes(xml)
        click.echo("%s %s -> %s" % (srv, d.RequestID(originator, target, counter), output),
                   err=True)
    else:
        sys.stdout.buffer.write(xml)


def _plain(v: Any) -> Any:
    """A field value for text or JSON: short bytes as hex, long ones as length and SHA-256,
    EUI-64 lists as DUIS text, date-times as ISO-8601."""
    if isinstance(v, (bytes, bytearray)):
        v = bytes(v)
        if len(v) == 8:
            return d.eui_text(v)
        if len(v) <= 64:
            return v.hex().upper()
        return {"length": len(v), "sha256": hashlib.sha256(v).hexdigest().upper()}
    if isinstance(v, datetime):
        return d.format_datetime(v)
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def _lines(obj: dict, indent: str = "") -> list[str]:
    out = []
    for k, v in obj.items():
        if isinstance(v, dict) and not ({"length", "sha256"} == set(v)):
            out.append("%s%s:" % (indent, k))
            out.extend(_lines(v, indent + "  "))
        elif isinstance(v, dict):
            out.append("%s%s: %d bytes, sha256 %s" % (indent, k, v["length"], v["sha256"]))
        elif isinstance(v, list):
            out.append("%s%s: %s" % (indent, k, ", ".join(
                json.dumps(x) if isinstance(x, dict) else str(x) for x in v)))
        elif v is not None:
            out.append("%s%s: %s" % (indent, k, v))
    return out


@duis.command("show")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--json", "as_json", is_flag=True, help="Print the fields as JSON.")
def duis_show(file: str, as_json: bool) -> None:
    """Print a DUIS request, acknowledgement, response or alert as fields (the public
    templates and DCC Boxed's responses too). Exit 1, with the response code the DCC would
    answer and the reason, when it is not valid DUIS. The signature is not checked here
    (`hanota duis verify`)."""
    try:
        data = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
    except OSError as e:
        raise click.ClickException("cannot read %s: %s" % (file, e)) from None
    try:
        info = d.describe(data)
    except d.DuisError as e:
        if as_json:
            click.echo(json.dumps({"valid": False, "code": e.code, "reason": e.reason,
                                   "request_id": e.request_id, "srv": e.srv}, indent=2))
        click.echo("invalid: %s" % e, err=True)
        sys.exit(1)
    info = _plain(info)
    if as_json:
        click.echo(json.dumps({"valid": True, **info}, indent=2))
        return
    if info["document"] == "request":
        fields = info.pop("fields")
        click.echo("\n".join(_lines(info)))
        click.echo("fields:")
        click.echo("\n".join(_lines(fields, "  ")) or "  (none)")
    else:
        body = info.pop("body")
        click.echo("\n".join(_lines(info)))
        if body:
            click.echo("body:")
            click.echo("\n".join(_lines(body, "  ")))
