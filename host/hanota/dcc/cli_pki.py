"""`hanota pki init|import|list` and `hanota duis sign|verify`: the test PKI and DUIS signatures.

A key store is a directory (`pki.KeyStore`); `--store` defaults to $HANOTA_HOME/pki, and
`hanota pki init DIR` makes one. `duis verify` exits 0 when the signature is valid (printing
the signer's entity ID and role), 1 when it is not (printing the reason), 2 when it could not
check (unreadable file or certificate).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import click

from ..clitypes import domain_errors
from . import pki as pkimod
from . import xmlsig
from .cli import duis, pki


def default_store() -> Path:
    """$HANOTA_HOME/pki (HANOTA_HOME defaults to ~/.hanota)."""
    return Path(os.environ.get("HANOTA_HOME", Path.home() / ".hanota")) / "pki"


def _store_option(fn):
    return click.option("--store", "store", type=click.Path(file_okay=False), default=None,
                        envvar="HANOTA_PKI", help="Key store directory (default $HANOTA_HOME/pki).")(fn)


def _line(org: pkimod.OrgCert) -> str:
    return "%-34s %s  role %-3s %-22s %s  %s serial %d" % (
        org.name, pkimod.entity_text(org.entity_id), "%02X" % org.role, "(%s)" % org.role_name,
        org.usage, org.issuer_name, org.serial)


@pki.command("init")
@click.argument("directory", type=click.Path(file_okay=False))
@domain_errors
def pki_init(directory: str) -> None:
    """Make a test PKI in DIRECTORY: a root (OU=07) and DS/KA/XML-signing certificates and keys
    for supplier-a, supplier-b, network-operator, acb and dcc (files <org>.<use>.cert.pem /
    .key.pem, and index.json). The directory is then a key store (--store DIRECTORY)."""
    pkimod.init(directory)
    for org in pkimod.KeyStore(directory):
        click.echo(_line(org))
    click.echo("root: %s" % (Path(directory) / "root.cert.pem"))


@pki.command("import")
@click.argument("cert", type=click.Path(exists=True, dir_okay=False))
@click.option("--key", "key", type=click.Path(exists=True, dir_okay=False), default=None,
              help="The certificate's private key (PEM), to sign with it later.")
@click.option("--name", default=None, help="Name in the store (default: the subject CN, else "
              "role-EUI-usage).")
@_store_option
@domain_errors
def pki_import(cert: str, key: str | None, name: str | None, store: str | None) -> None:
    """Add an outside Organisation certificate (PEM or DER) to the key store, or every entry
    of a DCC Boxed keystore.json (certificates with their keys, under their names)."""
    ks = pkimod.KeyStore(store or default_store())
    data = Path(cert).read_bytes()
    if data.lstrip().startswith(b"{"):
        if key or name:
            raise click.UsageError("--key and --name apply to one certificate, not to a "
                                   "keystore.json")
        imported, skipped = ks.import_dccboxed(data)
        for org in imported:
            click.echo(_line(org))
        for label, why in skipped:
            click.echo("skipped %s: %s" % (label, why), err=True)
        click.echo("%d imported, %d skipped into %s" % (len(imported), len(skipped), ks.path))
        return
    org = ks.add(data, Path(key).read_bytes() if key else None, name=name)
    click.echo(_line(org))


@pki.command("list")
@_store_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per certificate.")
@domain_errors
def pki_list(store: str | None, as_json: bool) -> None:
    """The certificates in the key store: name, entity ID, role, usage, issuer and serial."""
    ks = pkimod.KeyStore(store or default_store())
    for org in ks:
        if as_json:
            click.echo(json.dumps(dict(org.as_dict(), key=ks.key_path(org) is not None)))
        else:
            click.echo(_line(org) + ("  [key]" if ks.key_path(org) is not None else ""))


@duis.command("sign")
@click.argument("request", type=click.Path(exists=True, dir_okay=False))
@click.option("--key", "key", type=click.Path(exists=True, dir_okay=False), required=True,
              help="The signer's private key (PEM), e.g. supplier-a.xml.key.pem.")
@click.option("--cert", "cert", type=click.Path(exists=True, dir_okay=False), required=True,
              help="The signer's certificate (PEM); KeyInfo names its issuer and serial.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="-",
              help="Where to write the signed document (default: standard output).")
@domain_errors
def duis_sign(request: str, key: str, cert: str, output: str) -> None:
    """Sign a DUIS document (XMLDSig as DUIS has it; a template's placeholder signature is
    replaced)."""
    signed = xmlsig.sign(Path(request).read_bytes(), Path(key).read_bytes(),
                         Path(cert).read_bytes())
    if output == "-":
        click.echo(signed.decode("utf-8"), nl=False)
    else:
        Path(output).write_bytes(signed)


@duis.command("sign-precommand")
@click.argument("response", type=click.Path(exists=True, dir_okay=False))
@click.option("--ds-key", type=click.Path(exists=True, dir_okay=False), required=True,
              help="The Supplier's GBCS digital-signing key (PEM), e.g. supplier-a.ds.key.pem: "
                   "signs the CS06.")
@click.option("--key", "key", type=click.Path(exists=True, dir_okay=False), default=None,
              help="The XML-signing key (PEM) for the CV 5 request; without it the request is "
                   "written unsigned (sign it with `hanota duis sign`).")
@click.option("--cert", "cert", type=click.Path(exists=True, dir_okay=False), default=None,
              help="The XML-signing certificate (PEM), with --key.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="-",
              help="Where to write the CV 5 request (default: standard output).")
@domain_errors
def duis_sign_precommand(response: str, ds_key: str, key: str | None, cert: str | None,
                         output: str) -> None:
    """Sign the Pre-Command a DCC returned for a CV 4 request (SR 11.3) and write the CV 5
    request carrying it (SignedPreCommand/GBCSPayload, the same RequestID)."""
    from . import precommand
    if (key is None) != (cert is None):
        raise click.UsageError("--key and --cert go together")
    rid, srv, pre = precommand.from_response(Path(response).read_bytes())
    signed = precommand.sign(pre, pkimod.load_key(Path(ds_key).read_bytes()))
    doc = precommand.signed_request(rid, signed, srv)
    if key is not None:
        doc = xmlsig.sign(doc, Path(key).read_bytes(), Path(cert).read_bytes())
    if output == "-":
        click.echo(doc.decode("utf-8"), nl=False)
    else:
        Path(output).write_bytes(doc)


@duis.command("verify")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--cert", "cert", type=click.Path(exists=True, dir_okay=False), default=None,
              help="The certificate the document must be signed with.")
@_store_option
@domain_errors
def duis_verify(file: str, cert: str | None, store: str | None) -> None:
    """Check a DUIS document's signature against one certificate (--cert) or the key store
    (--store, the signer looked up by issuer and serial). Exit 0 valid, 1 invalid."""
    if cert and store:
        raise click.UsageError("give --cert or --store, not both")
    trust = (pkimod.load_cert(Path(cert).read_bytes()) if cert
             else pkimod.KeyStore(store or default_store()))
    try:
        org = xmlsig.verify(Path(file).read_bytes(), trust)
    except xmlsig.SignatureError as e:
        click.echo("invalid (%s): %s" % (e.reason, e), err=True)
        raise SystemExit(1) from None
    click.echo("valid: signed by %s, entity %s, role %02X (%s)"
               % (org.name, pkimod.entity_text(org.entity_id), org.role, org.role_name))
