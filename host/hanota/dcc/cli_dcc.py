"""`hanota dcc init|submit|responses|cpl|registry`: the DCC's records and a local submission.

Every command takes `--db FILE` (default $HANOTA_HOME/dcc.db, or $HANOTA_DCC_DB) or `--db
postgresql://...` (the database several `dcc serve` workers share). `dcc init
--pki DIR` records the PKI directory (the key store Users' signatures are checked against, and
the DCC's own XML-signing pair `dcc.xml`) in the database, so `submit` finds it again.
Exit codes: 0 done (including a request the DCC refused: the signed refusal is printed); 1 the
command's arguments are wrong (malformed EUI-64, unknown premises, ...); 2 a failure.
"""
from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any

import click

from ..clitypes import DomainExit, domain_errors
from .cli import dcc
from .store import DEVICE_TYPES, DEVICE_STATUSES, DccStore, DccUsageError, eui_hex


def _db_option(fn):
    return click.option("--db", "db_path", type=click.Path(dir_okay=False), default=None,
                        envvar="HANOTA_DCC_DB",
                        help="DCC database: a SQLite file (default $HANOTA_HOME/dcc.db) "
                             "or postgresql://USER@HOST:PORT/DB.")(fn)


def _json_option(fn):
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(fn)


def _usage_errors(fn):
    """DccUsageError (the arguments name something wrong) exits 1; other domain errors go
    through `domain_errors` (2)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DccUsageError as e:
            ex = DomainExit(e)
            ex.exit_code = 1
            raise ex from None
    return domain_errors(wrapper)


def _eui(value: str) -> bytes:
    return bytes.fromhex(eui_hex(value))


def _pki_dir(store: DccStore, pki_dir: str | None) -> str:
    d = pki_dir or store.get_meta("pki")
    if not d:
        raise DccUsageError("no PKI directory: give --pki DIR, or run hanota dcc init --pki DIR "
                            "once", reason="no-pki")
    if not Path(d).is_dir():
        raise DccUsageError("PKI directory %s does not exist (make one with hanota pki init)"
                            % d, reason="no-pki")
    return d


def open_service(store: DccStore, pki_dir: str | None) -> Any:
    """The DCC service over an open store and its PKI directory."""
    from .pki import KeyStore, signing_pair
    from .service import Dcc

    d = _pki_dir(store, pki_dir)
    return Dcc(store, KeyStore(d), signing_pair(d, "dcc.xml"))


def _print(rows: list[dict], as_json: bool, line) -> None:
    if as_json:
        click.echo(json.dumps(rows, indent=1, sort_keys=True, default=str))
        return
    for r in rows:
        click.echo(line(r))


# ---------------------------------------------------------------- init / submit / responses

@dcc.command("init")
@click.option("--pki", "pki_dir", type=click.Path(file_okay=False, exists=True), required=True,
              help="PKI directory (hanota pki init): Users' certificates and the DCC's "
                   "XML-signing key dcc.xml.")
@_db_option
@_usage_errors
def dcc_init(pki_dir: str, db_path: str | None) -> None:
    """Create the DCC database (if new) and record its PKI directory, after checking that
    the directory holds the DCC's signing key and certificate."""
    from .pki import signing_pair

    signing_pair(pki_dir, "dcc.xml")
    with DccStore(db_path) as store:
        store.set_meta("pki", str(Path(pki_dir).resolve()))
        click.echo("DCC database %s; PKI %s" % (store.path, Path(pki_dir).resolve()))


@dcc.command("submit")
@click.argument("file", type=click.File("rb"))
@click.option("--pki", "pki_dir", type=click.Path(file_okay=False), default=None,
              help="PKI directory (default: the one dcc init recorded).")
@_db_option
@_usage_errors
def dcc_submit(file, pki_dir: str | None, db_path: str | None) -> None:
    """Submit a signed DUIS request (FILE, or - for stdin) to the DCC without HTTP; prints
    the DCC's signed synchronous answer (I99 accepted, I0 with a DCC-only service's answer,
    or the refusal with its code and reason)."""
    xml = file.read()
    with DccStore(db_path) as store:
        reply = open_service(store, pki_dir).submit(xml)
    sys.stdout.buffer.write(reply)
    sys.stdout.buffer.flush()


@dcc.command("responses")
@click.option("--user", "user", required=True, help="The User's entity ID (EUI-64).")
@click.option("--after", type=int, default=0, show_default=True,
              help="Only responses with a sequence number above this.")
@click.option("--summary", is_flag=True, help="One line per response (sequence, kind, "
              "code, RequestID) instead of the signed XML.")
@_db_option
@_usage_errors
def dcc_responses(user: str, after: int, summary: bool, db_path: str | None) -> None:
    """The signed DUIS responses and alerts queued for a User, in order, each preceded by a
    line `<!-- seq N -->`."""
    with DccStore(db_path) as store:
        rows = store.response_rows(_eui(user), after=after)
    for r in rows:
        if summary:
            req = r["request"]
            click.echo("%6d  %-8s %-5s request #%s%s" % (r["seq"], r["kind"], r["code"],
                                                         req if req is not None else "-",
                                                         "  final" if r["final"] else ""))
        else:
            click.echo("<!-- seq %d -->" % r["seq"])
            sys.stdout.buffer.write(bytes(r["xml"]))
            if not bytes(r["xml"]).endswith(b"\n"):
                sys.stdout.buffer.write(b"\n")
            sys.stdout.buffer.flush()


# ---------------------------------------------------------------- CPL

@dcc.group("cpl")
def cpl() -> None:
    """The Central Products List: the firmware images SR 11.1 / 11.4 may carry."""


@cpl.command("add")
@click.option("--manufacturer", required=True, help="Manufacturer code (4 hex digits).")
@click.option("--model", "model", required=True,
              help="Device model / OTA image type (hex; hanota's PPMID is 0084).")
@click.option("--version", "version", default=None,
              help="Firmware version (8 hex digits; default: the image's).")
@click.option("--hash", "image_hash", default=None,
              help="Manufacturer Image Hash (64 hex digits), or give --image.")
@click.option("--image", "image", type=click.Path(exists=True, dir_okay=False), default=None,
              help="An OTA file: its Manufacturer Image Hash and version are read from it.")
@click.option("--pubkey", type=click.Path(exists=True, dir_okay=False), default=None,
              help="The manufacturer's public key (public.bin or PEM): the image's signature "
                   "must verify with it.")
@_db_option
@_usage_errors
def cpl_add(manufacturer, model, version, image_hash, image, pubkey, db_path) -> None:
    """Put a firmware image on the CPL for a manufacturer and model."""
    if (image_hash is None) == (image is None):
        raise DccUsageError("give the image's --hash or the --image itself (one of them)",
                            reason="bad-argument")
    if image is not None:
        from .. import images

        info = images.parse_file(image)
        if info.descriptor is not None and info.descriptor.image_hash != info.image_sha256:
            raise DccUsageError("%s is tampered: its manufacturer image does not have the hash "
                                "its descriptor gives" % image, reason="tampered")
        image_hash = info.image_sha256
        if version is None:
            version = info.header.file_version
    if version is None:
        raise DccUsageError("give --version (8 hex digits) with --hash", reason="bad-argument")
    key = None
    if pubkey is not None:
        from ..keys import load_public_key

        key = load_public_key(pubkey)
    with DccStore(db_path) as store:
        e = store.cpl_add(manufacturer, model, version, image_hash, pubkey=key)
    click.echo("on the CPL: manufacturer %s model %s version %s hash %s%s"
               % (e["manufacturer"], e["model"], e["version"], e["image_hash"],
                  " (signature key held)" if e["pubkey"] else ""))


@cpl.command("list")
@_json_option
@_db_option
@_usage_errors
def cpl_list(as_json: bool, db_path: str | None) -> None:
    """Every CPL entry."""
    with DccStore(db_path) as store:
        rows = store.cpl_list()
    _print(rows, as_json, lambda e: "%s  %s  %s  %s%s" % (
        e["manufacturer"], e["model"], e["version"], e["image_hash"],
        "  key" if e["pubkey"] else ""))


@cpl.command("remove")
@click.argument("image_hash")
@click.option("--manufacturer", default=None, help="Only this manufacturer's entry.")
@click.option("--model", default=None, help="Only this model's entry.")
@_db_option
@_usage_errors
def cpl_remove(image_hash: str, manufacturer, model, db_path) -> None:
    """Take an image (by its Manufacturer Image Hash) off the CPL."""
    with DccStore(db_path) as store:
        n = store.cpl_remove(image_hash, manufacturer=manufacturer, image_type=model)
    click.echo("removed %d CPL entr%s" % (n, "y" if n == 1 else "ies"))


# ---------------------------------------------------------------- registration data

@dcc.group("registry")
def registry() -> None:
    """Registration data: premises, their Responsible Suppliers and Comms Hub, devices (and a
    GBCS-commissioned device's key-agreement key: set-ka)."""


@registry.command("add-premises")
@click.argument("mpxn")
@click.option("--supplier", "suppliers", multiple=True, required=True,
              help="A Responsible Supplier's entity ID (EUI-64); twice for dual-Supplier "
                   "premises.")
@click.option("--hub", "hub", required=True, help="The Comms Hub's EUI-64.")
@_db_option
@_usage_errors
def registry_add_premises(mpxn: str, suppliers: tuple[str, ...], hub: str, db_path) -> None:
    """Add premises (or change their Suppliers or Comms Hub)."""
    with DccStore(db_path) as store:
        p = store.add_premises(mpxn, [_eui(s) for s in suppliers], _eui(hub))
    click.echo("premises %s: suppliers %s, comms hub %s" % (
        p["mpxn"], " and ".join(p["suppliers"]), p["hub_eui"]))


@registry.command("add-device")
@click.argument("eui")
@click.option("--type", "device_type", required=True,
              type=click.Choice(list(DEVICE_TYPES), case_sensitive=False),
              help="Device type (the device-type table).")
@click.option("--premises", required=True, help="MPxN of the premises.")
@click.option("--manufacturer", default=None, help="Manufacturer code (4 hex digits).")
@click.option("--model", default=None, help="Device model (hex; hanota: its OTA image type).")
@click.option("--firmware-version", default=None, help="Firmware version (8 hex digits).")
@click.option("--hw-version", type=int, default=None, help="Hardware version.")
@click.option("--install-code", default=None, help="Install code (hex, with its CRC-16).")
@click.option("--status", type=click.Choice(DEVICE_STATUSES), default="commissioned",
              show_default=True)
@click.option("--ka-pub", default=None,
              help="GBCS: the device's key-agreement public key (130 hex digits, as `hanota "
                   "board deploy --acb-cert` prints it); see `registry set-ka`.")
@_db_option
@_usage_errors
def registry_add_device(eui, device_type, premises, manufacturer, model, firmware_version,
                        hw_version, install_code, status, ka_pub, db_path) -> None:
    """Register a device at premises."""
    with DccStore(db_path) as store:
        d = store.add_device(_eui(eui), device_type, premises, model=model,
                             manufacturer=manufacturer, firmware_version=firmware_version,
                             install_code=install_code, hw_version=hw_version, status=status,
                             ka_public=ka_pub)
    click.echo("device %s: %s at %s (%s)%s" % (d["eui"], d["device_type"], d["premises"],
                                              d["status"], "; GBCS KA key recorded"
                                              if d["ka_public"] else ""))


def _ka_from_cert(path: str) -> str:
    """The public key of a device's key-agreement certificate (PEM or DER), as hex."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    data = Path(path).read_bytes()
    try:
        cert = x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data \
            else x509.load_der_x509_certificate(data)
    except ValueError as e:
        raise DccUsageError("--ka-cert %s is not an X.509 certificate: %s" % (path, e),
                            reason="bad-ka-key") from None
    pub = cert.public_key()
    if not isinstance(pub, ec.EllipticCurvePublicKey) or pub.curve.name != "secp256r1":
        raise DccUsageError("--ka-cert %s does not hold a P-256 key" % path, reason="bad-ka-key")
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        if not ku.key_agreement:
            raise DccUsageError("--ka-cert %s is not a key-agreement certificate (its Key Usage "
                                "lacks keyAgreement)" % path, reason="bad-ka-key")
    except x509.ExtensionNotFound:
        pass
    return pub.public_bytes(serialization.Encoding.X962,
                            serialization.PublicFormat.UncompressedPoint).hex()


@registry.command("set-ka")
@click.argument("eui", required=False)
@click.option("--ka-pub", default=None,
              help="The device's KA public key: the 65-byte uncompressed P-256 point as 130 hex "
                   "digits (`hanota board deploy --acb-cert` prints it).")
@click.option("--ka-cert", type=click.Path(exists=True, dir_okay=False), default=None,
              help="The device's key-agreement certificate (PEM or DER): its public key.")
@click.option("--deploy-json", type=click.Path(exists=True, dir_okay=False), default=None,
              help="The output of `hanota board deploy --json` with --supplier-cert/--acb-cert: "
                   "its eui64 and ka_public (EUI may then be left out).")
@click.option("--clear", is_flag=True, help="Remove the device's KA key (SR 11.3 then goes as "
                                            "hanota's own activation command).")
@_db_option
@_usage_errors
def registry_set_ka(eui, ka_pub, ka_cert, deploy_json, clear, db_path) -> None:
    """Record a GBCS-commissioned device's key-agreement public key in its registration data.

    The DCC MACs every CS06 (SR 11.3 by the Pre-Command flow) to this key; a device without
    one is activated by hanota's own command, and a Signed Pre-Command for it is refused (EH13).
    A new commissioning (a change of Supplier re-deploys the board) replaces it."""
    given = [x for x in (ka_pub, ka_cert, deploy_json) if x] + (["clear"] if clear else [])
    if len(given) != 1:
        raise click.UsageError("give exactly one of --ka-pub, --ka-cert, --deploy-json, --clear")
    if deploy_json:
        try:
            dep = json.loads(Path(deploy_json).read_text())
        except (ValueError, OSError) as e:
            raise DccUsageError("--deploy-json %s is not JSON: %s" % (deploy_json, e),
                                reason="bad-argument") from None
        if not isinstance(dep, dict) or not dep.get("ka_public") or not dep.get("eui64"):
            raise DccUsageError("--deploy-json %s has no eui64 and ka_public: deploy the board "
                                "with --supplier-cert and --acb-cert, and --json"
                                % deploy_json, reason="bad-argument")
        if eui and eui_hex(eui) != eui_hex(str(dep["eui64"])):
            raise DccUsageError("EUI %s is not the deployed board's %s" % (
                eui_hex(eui), eui_hex(str(dep["eui64"]))), reason="bad-argument")
        eui, ka_pub = str(dep["eui64"]), str(dep["ka_public"])
    elif ka_cert:
        ka_pub = _ka_from_cert(ka_cert)
    if not eui:
        raise click.UsageError("give the device's EUI-64 (or --deploy-json)")
    with DccStore(db_path) as store:
        d = store.update_device(_eui(eui), ka_public=None if clear else ka_pub)
    click.echo("device %s: %s" % (d["eui"], "GBCS KA public key %s" % d["ka_public"]
                                  if d["ka_public"] else "no GBCS KA key"))


@registry.command("list")
@_json_option
@_db_option
@_usage_errors
def registry_list(as_json: bool, db_path: str | None) -> None:
    """Premises and their devices."""
    with DccStore(db_path) as store:
        prem = store.list_premises()
        devs = store.list_devices()
    if as_json:
        click.echo(json.dumps({"premises": prem, "devices": devs}, indent=1, sort_keys=True,
                              default=str))
        return
    for p in prem:
        click.echo("%s  suppliers %s  comms hub %s" % (p["mpxn"], " and ".join(p["suppliers"]),
                                                      p["hub_eui"]))
        for d in devs:
            if d["premises"] == p["mpxn"]:
                click.echo("  %s  %-7s %-12s %s %s fw %s%s" % (
                    d["eui"], d["device_type"], d["status"], d["manufacturer"] or "-",
                    d["model"] or "-", d["firmware_version"] or "-",
                    "  GBCS KA key" if d["ka_public"] else ""))
