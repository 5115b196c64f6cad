"""An SMKI-like test PKI, and the key store the DCC checks DUIS signatures against.

GB smart metering identifies every party by certificate (SMKI). An Organisation certificate
says who a party is and what it may do, in its subject: the **role** as two hex digits in OU
(02 Supplier, 03 Network Operator, 04 Access Control Broker, 07 Issuing Authority ...) and the
**entity ID**, an EUI-64, in x500UniqueIdentifier (OID 2.5.4.45) as a DER BIT STRING
(`03 09 00` + 8 bytes). Its keyUsage is critical and names exactly one use: digitalSignature
(DS, for GBCS and DUIS XML signatures) or keyAgreement (KA, ECDH for GBCS MACs). Keys are P-256,
certificates are signed ecdsa-with-SHA256, SKI and AKI are 8 bytes, and the Organisation
certificate policy is critical. DCC Boxed adds two DUIS conventions: a User signs DUIS XML with
an "xml-sign" certificate of role 0x87, the DSP (the DCC) its responses with role 0x89
(reference/gbcs_duis.md §2). The DCC knows a User by the certificate's entity ID, never by a
name typed on a command line.

`init(DIR)` makes a root (OU=07) and, for each organisation in `ORGS`, a DS and a KA
certificate and, for Users and the DCC, an XML-signing one. Files are named by organisation
and use: `supplier-a.ds.key.pem`, `supplier-a.ds.cert.pem`, `supplier-a.ka.*`,
`supplier-a.xml.*`, `dcc.xml.*`, `root.*`, plus `index.json` listing each Organisation
certificate's entity ID, role, usage, issuer and serial (the root is a CA, not an
Organisation certificate, so the index leaves it out). The same directory is a `KeyStore`, so
`KeyStore(DIR)` after `init(DIR)` knows every certificate and key made.

Entity IDs (`ORGS`) are in DCC Boxed's 90-B3-D5-1F-30-... style but distinct from its test
organisations (90B3D51F30010000 and so on), so that our certificates and DCC Boxed's can sit in
one store without two parties sharing an identity. The exception is the DCC itself (ACB and
DSP XML signing): the DCC is one party in GB and DUIS requests address it as
90-B3-D5-1F-30-00-00-02 (`DCC_EUI`; the public templates do), so it keeps that EUI.

**Validity dates are never checked**, here or in `xmlsig`: DCC Boxed's test certificates
(keystore.json) expired in 2025/26 and must still verify its sample documents; a test PKI
gains nothing from clocks. Our own certificates run to 9999-12-31 (as SMKI device
certificates do). Keys are stored unencrypted (a test PKI) with file mode 0600.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier

from ..errors import HanotaError

# GBCS RemotePartyRole values (gbcs-parser src/asn1.ts), as written in the certificate's OU.
ROLE_ROOT = 0
ROLE_RECOVERY = 1
ROLE_SUPPLIER = 2
ROLE_NETWORK_OPERATOR = 3
ROLE_ACB = 4
ROLE_TRANSITIONAL_COS = 5
ROLE_WAN_PROVIDER = 6
ROLE_ISSUING_AUTHORITY = 7
ROLE_LOAD_CONTROLLER = 8
ROLE_OTHER = 0x7F
# DCC Boxed's DUIS XML-signing conventions (dccboxed-signing-tool): Users' and the DSP's keys.
XML_SIGN_USER_ROLE = 0x87
XML_SIGN_DSP_ROLE = 0x89

ROLE_NAMES = {
    ROLE_ROOT: "root", ROLE_RECOVERY: "recovery", ROLE_SUPPLIER: "supplier",
    ROLE_NETWORK_OPERATOR: "network operator", ROLE_ACB: "access control broker",
    ROLE_TRANSITIONAL_COS: "transitional CoS", ROLE_WAN_PROVIDER: "WAN provider",
    ROLE_ISSUING_AUTHORITY: "issuing authority", ROLE_LOAD_CONTROLLER: "load controller",
    ROLE_OTHER: "other user", XML_SIGN_USER_ROLE: "xml-sign (User)",
    XML_SIGN_DSP_ROLE: "xml-sign (DSP)",
}

DCC_EUI = bytes.fromhex("90B3D51F30000002")
# SMKI Organisation Certificate Policy (as DCC Boxed's certificates carry it).
ORG_POLICY = ObjectIdentifier("1.2.826.0.1.8641679.1.2.1.4")

# name -> (role, entity ID, uses). "xml" is the DUIS XML-signing certificate (role 0x87 for
# Users, 0x89 for the DCC), a DS certificate of its own as in DCC Boxed.
ORGS: dict[str, tuple[int, bytes, tuple[str, ...]]] = {
    "supplier-a": (ROLE_SUPPLIER, bytes.fromhex("90B3D51F3001A001"), ("ds", "ka", "xml")),
    "supplier-b": (ROLE_SUPPLIER, bytes.fromhex("90B3D51F3001B002"), ("ds", "ka", "xml")),
    "network-operator": (ROLE_NETWORK_OPERATOR, bytes.fromhex("90B3D51F3002A003"),
                         ("ds", "ka", "xml")),
    "acb": (ROLE_ACB, DCC_EUI, ("ds", "ka")),
    "dcc": (XML_SIGN_DSP_ROLE, DCC_EUI, ("xml",)),
}
ROOT_NAME = "root"
ROOT_CN = "HANOTA-OCA"
INDEX = "index.json"
FAR_FUTURE = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc)


class PkiError(HanotaError):
    """A certificate is not SMKI-shaped, a key does not match, or a store would lose data."""

    reason = "pki"


@dataclass(frozen=True)
class OrgCert:
    """What the DCC needs of an Organisation certificate: who (entity ID), as what (role),
    for what (usage), and how DUIS KeyInfo names it (issuer, serial)."""

    cert: x509.Certificate
    entity_id: bytes        # 8 bytes, from x500UniqueIdentifier
    role: int               # from OU (two hex digits)
    usage: str              # "ds" (digitalSignature) or "ka" (keyAgreement)
    issuer_name: str        # RFC 4514, as DUIS X509IssuerName writes it: "CN=Z1,OU=07"
    serial: int
    name: str               # e.g. "supplier-a.ds", or DCC Boxed's "Z1-supplier-ds"

    @property
    def entity_hex(self) -> str:
        return self.entity_id.hex().upper()

    @property
    def role_name(self) -> str:
        return ROLE_NAMES.get(self.role, "role 0x%02X" % self.role)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "entity_id": self.entity_hex, "role": self.role,
                "role_name": self.role_name, "usage": self.usage,
                "issuer": self.issuer_name, "serial": str(self.serial)}


# --- names -------------------------------------------------------------------------------

_ATTR_ALIASES = {"2.5.4.3": "CN", "2.5.4.11": "OU", "2.5.4.10": "O", "2.5.4.6": "C",
                 "2.5.4.45": "X500UNIQUEIDENTIFIER", "COMMONNAME": "CN",
                 "ORGANIZATIONALUNITNAME": "OU"}


def normalise_name(name: str) -> str:
    """An issuer name in one comparable form: RFC 4514 order as written, no spaces around
    separators, attribute types upper case ("CN=U1, OU=07" and "cn=U1,OU=07" compare equal).

    DUIS documents write X509IssuerName as the signer's tool formats it (Java: "CN=Z1,OU=07";
    the templates: "CN=U1, OU=07"), so names are compared in this form, not as raw text."""
    parts = re.split(r"(?<!\\)([,+])", name.strip())
    out = []
    for i, part in enumerate(parts):
        if i % 2:
            out.append(part)
            continue
        typ, sep, value = part.partition("=")
        typ = typ.strip().upper()
        out.append(_ATTR_ALIASES.get(typ, typ) + sep + value.strip())
    return "".join(out)


def issuer_name(cert: x509.Certificate) -> str:
    """The certificate's issuer as DUIS X509IssuerName writes it (RFC 4514, e.g. "CN=Z1,OU=07")."""
    return cert.issuer.rfc4514_string()


def _eui_of(cert: x509.Certificate) -> bytes:
    attrs = cert.subject.get_attributes_for_oid(NameOID.X500_UNIQUE_IDENTIFIER)
    if not attrs:
        raise PkiError("certificate %s has no entity ID: its subject lacks x500UniqueIdentifier "
                       "(2.5.4.45)" % _label(cert))
    value = attrs[0].value
    if isinstance(value, str):
        raise PkiError("certificate %s: x500UniqueIdentifier is a string, not the BIT STRING "
                       "holding an EUI-64" % _label(cert))
    raw = bytes(value)
    # cryptography gives the BIT STRING's content octets, unused-bits count first.
    if len(raw) == 9 and raw[0] == 0:
        raw = raw[1:]
    if len(raw) != 8:
        raise PkiError("certificate %s: x500UniqueIdentifier holds %d bytes, not an 8-byte "
                       "EUI-64" % (_label(cert), len(raw)))
    return raw


def _role_of(cert: x509.Certificate) -> int:
    attrs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    if not attrs:
        raise PkiError("certificate %s has no role: its subject lacks OU" % _label(cert))
    text = str(attrs[0].value)
    if not re.fullmatch(r"[0-9A-Fa-f]{2}", text):
        raise PkiError("certificate %s: OU %r is not a role as two hex digits" % (_label(cert), text))
    return int(text, 16)


def _usage_of(cert: x509.Certificate) -> str:
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        raise PkiError("certificate %s has no keyUsage extension" % _label(cert)) from None
    ds, ka = ku.digital_signature, ku.key_agreement
    if ds and not ka:
        return "ds"
    if ka and not ds:
        return "ka"
    raise PkiError("certificate %s: keyUsage must name exactly one of digitalSignature and "
                   "keyAgreement (it names %s)" % (_label(cert), "both" if ds else "neither"))


def _label(cert: x509.Certificate) -> str:
    return "serial %d from %s" % (cert.serial_number, issuer_name(cert) or "(no issuer)")


def describe(cert: x509.Certificate | bytes, name: str | None = None) -> OrgCert:
    """The Organisation certificate's identity, role and use; PkiError naming what is missing.

    Accepts a certificate or its PEM/DER bytes. Validity dates are not looked at (module doc).
    `name` defaults to the subject CN, else "<role>-<EUI>-<usage>"."""
    if isinstance(cert, (bytes, bytearray)):
        cert = load_cert(bytes(cert))
    entity, role, usage = _eui_of(cert), _role_of(cert), _usage_of(cert)
    if name is None:
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        name = str(cns[0].value) if cns else "%s-%s-%s" % (
            ROLE_NAMES.get(role, "%02x" % role).replace(" ", "-"), entity.hex(), usage)
    return OrgCert(cert=cert, entity_id=entity, role=role, usage=usage,
                   issuer_name=issuer_name(cert), serial=cert.serial_number, name=name)


def load_cert(data: bytes) -> x509.Certificate:
    """A certificate from PEM or DER bytes; PkiError when it is neither."""
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as e:
        raise PkiError("not an X.509 certificate (PEM or DER): %s" % e) from None


def load_key(data: bytes) -> ec.EllipticCurvePrivateKey:
    """An unencrypted P-256 private key from PEM or DER; PkiError otherwise."""
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_private_key(data, password=None)
        else:
            key = serialization.load_der_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise PkiError("not an unencrypted private key (PEM or DER): %s" % e) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise PkiError("the private key is not a P-256 (secp256r1) EC key")
    return key


def key_matches(key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> bool:
    """Whether the private key is the one the certificate certifies."""
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return key.public_key().public_bytes(*fmt) == cert.public_key().public_bytes(*fmt)


# --- making certificates --------------------------------------------------------------------

def _ski(key: ec.EllipticCurvePublicKey) -> bytes:
    """An 8-byte key identifier (SMKI's length): SHA-1 of the public key point, first 8 bytes
    (RFC 5280 §4.2.1.2 method (2) shape)."""
    point = key.public_bytes(serialization.Encoding.X962,
                             serialization.PublicFormat.UncompressedPoint)
    return hashlib.sha1(point).digest()[:8]


def _serial() -> int:
    # 16 bytes like DCC Boxed's serials, positive (top bit clear).
    return int.from_bytes(os.urandom(16), "big") >> 1 or 1


def _policies() -> x509.CertificatePolicies:
    return x509.CertificatePolicies([x509.PolicyInformation(ORG_POLICY, None)])


def make_root(cn: str = ROOT_CN) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed Organisation CA (issuing authority, OU=07)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "%02X" % ROLE_ISSUING_AUTHORITY),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    ski = _ski(key.public_key())
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(_serial())
            .not_valid_before(datetime.now(timezone.utc) - timedelta(days=1))
            .not_valid_after(FAR_FUTURE)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                           critical=True)
            .add_extension(x509.SubjectKeyIdentifier(ski), critical=False)
            .add_extension(_policies(), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def make_org_cert(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, *,
                  role: int, entity_id: bytes, usage: str, cn: str | None = None,
                  serial: int | None = None, not_before: datetime | None = None,
                  not_after: datetime = FAR_FUTURE,
                  ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new key and its Organisation certificate as SMKI profiles it (module doc).
    `serial` and the validity dates are for tests (e.g. an expired certificate)."""
    if len(entity_id) != 8:
        raise PkiError("entity ID must be an 8-byte EUI-64, not %d bytes" % len(entity_id))
    if usage not in ("ds", "ka"):
        raise PkiError("usage must be 'ds' or 'ka', not %r" % usage)
    key = ec.generate_private_key(ec.SECP256R1())
    attrs = [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "%02X" % role)]
    if cn:
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    # BIT STRING content: unused-bits count 0, then the EUI-64.
    attrs.append(x509.NameAttribute(NameOID.X500_UNIQUE_IDENTIFIER, b"\x00" + entity_id,
                                    _type=x509.name._ASN1Type.BitString))
    ds = usage == "ds"
    ca_ski = _ski(ca_cert.public_key())  # type: ignore[arg-type]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name(attrs)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(serial or _serial())
            .not_valid_before(not_before or datetime.now(timezone.utc) - timedelta(days=1))
            .not_valid_after(not_after)
            .add_extension(x509.KeyUsage(ds, False, False, False, not ds, False, False, False, False),
                           critical=True)
            .add_extension(_policies(), critical=True)
            .add_extension(x509.SubjectKeyIdentifier(_ski(key.public_key())), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier(ca_ski, None, None), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def init(directory: str | os.PathLike) -> dict[str, Path]:
    """Make the test PKI in DIR (created if needed; refused if it already holds one).

    Returns file stem -> path: "root.cert", "root.key", "<org>.<use>.cert",
    "<org>.<use>.key" for every organisation and use in `ORGS` (use ds | ka | xml), and
    "index". The directory is then a `KeyStore` holding all of them with their keys."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    planned = [ROOT_NAME] + ["%s.%s" % (org, use) for org, (_, _, uses) in ORGS.items()
                             for use in uses]
    existing = [p.name for p in [d / INDEX] + [d / ("%s.%s.pem" % (s, k)) for s in planned
                                               for k in ("cert", "key")] if p.exists()]
    if existing:
        raise PkiError("%s already holds a PKI (%s): refusing to overwrite its keys"
                       % (d, ", ".join(existing[:3])))
    ca_key, ca_cert = make_root()
    out: dict[str, Path] = {}
    store = KeyStore(d)
    out["root.cert"], out["root.key"] = store._write_pair(ROOT_NAME, _pem_cert(ca_cert),
                                                          _pem_key(ca_key))
    for org, (role, eui, uses) in ORGS.items():
        for use in uses:
            name = "%s.%s" % (org, use)
            if use == "xml":
                r = XML_SIGN_DSP_ROLE if role == XML_SIGN_DSP_ROLE else XML_SIGN_USER_ROLE
                key, cert = make_org_cert(ca_key, ca_cert, role=r, entity_id=eui, usage="ds", cn=name)
            else:
                key, cert = make_org_cert(ca_key, ca_cert, role=role, entity_id=eui, usage=use, cn=name)
            org_cert = store.add(_pem_cert(cert), _pem_key(key), name=name)
            out[name + ".cert"] = store.cert_path(org_cert)
            out[name + ".key"] = store.key_path(org_cert)
    out["index"] = d / INDEX
    return out


def signing_pair(directory: str | os.PathLike, name: str,
                 ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The key and certificate stored under NAME (e.g. "dcc.xml", "supplier-a.xml") in a PKI
    directory: what a User or the DCC signs DUIS documents with."""
    d = Path(directory)
    cert_file, key_file = d / ("%s.cert.pem" % name), d / ("%s.key.pem" % name)
    for f in (cert_file, key_file):
        if not f.is_file():
            raise PkiError("%s: no such file (is %s a PKI directory made by `hanota pki init`?)"
                           % (f, d))
    key, cert = load_key(key_file.read_bytes()), load_cert(cert_file.read_bytes())
    if not key_matches(key, cert):
        raise PkiError("%s does not hold the key of %s" % (key_file, cert_file))
    return key, cert


# --- the key store ------------------------------------------------------------------------

class KeyStore:
    """A directory of certificates (PEM, `<name>.cert.pem`), optional keys (`<name>.key.pem`)
    and `index.json`, which lists each certificate's name, entity ID, role, usage, issuer
    and serial. Lookups are by X509IssuerSerial (how DUIS signatures name their signer) and
    by entity ID (who a party is). Writes replace the index atomically; a certificate already
    held is never replaced by a different one with the same issuer and serial."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._stamp: tuple[int, int] | None = None
        self._load()

    def _index_stamp(self) -> tuple[int, int] | None:
        try:
            st = (self.path / INDEX).stat()
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_ino

    def _fresh(self) -> None:
        """Reload when another process (e.g. `hanota pki import` beside a running DCC)
        replaced the index since we read it."""
        if self._index_stamp() != self._stamp:
            self._load()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise writers across processes (flock on `.lock`), starting from the index on
        disk so that no writer's entries are lost."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._load()
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _load(self) -> None:
        self._certs: list[OrgCert] = []
        self._keys: dict[tuple[str, int], str] = {}
        self._files: dict[tuple[str, int], str] = {}
        index = self.path / INDEX
        self._stamp = self._index_stamp()
        if self._stamp is None:
            return
        try:
            entries = json.loads(index.read_text())["certs"]
        except (ValueError, KeyError, TypeError) as e:
            raise PkiError("%s is not a hanota key store index: %s" % (index, e)) from None
        for e in entries:
            try:
                cert_file, name = self.path / e["file"], e["name"]
            except (KeyError, TypeError):
                raise PkiError("%s: an entry lacks its file or name: %r" % (index, e)) from None
            try:
                data = cert_file.read_bytes()
            except OSError as err:
                raise PkiError("key store %s: %s is listed but unreadable: %s"
                               % (self.path, e["file"], err)) from None
            org = describe(load_cert(data), name=name)
            k = (normalise_name(org.issuer_name), org.serial)
            self._certs.append(org)
            self._files[k] = e["file"]
            if e.get("key"):
                self._keys[k] = e["key"]

    def _write_index(self) -> None:
        entries = []
        for org in self._certs:
            k = (normalise_name(org.issuer_name), org.serial)
            entries.append(dict(org.as_dict(), file=self._files[k], key=self._keys.get(k)))
        self._atomic(self.path / INDEX, json.dumps({"version": 1, "certs": entries},
                                                   indent=1).encode() + b"\n")
        self._stamp = self._index_stamp()

    def _atomic(self, path: Path, data: bytes, mode: int = 0o644) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".tmp-")
        try:
            os.fchmod(fd, mode)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def _write_pair(self, name: str, cert_pem: bytes, key_pem: bytes | None) -> tuple[Path, Path]:
        c, k = self.path / ("%s.cert.pem" % name), self.path / ("%s.key.pem" % name)
        self._atomic(c, cert_pem)
        if key_pem is not None:
            self._atomic(k, key_pem, 0o600)
        return c, k

    def __iter__(self) -> Iterator[OrgCert]:
        self._fresh()
        return iter(list(self._certs))

    def __len__(self) -> int:
        self._fresh()
        return len(self._certs)

    def add(self, cert_pem: bytes, key_pem: bytes | None = None, *, name: str | None = None
            ) -> OrgCert:
        """Store a certificate (and its key, if given) and return what it says.

        PkiError when the certificate is not SMKI-shaped, the key is not its key, or a
        different certificate with the same issuer and serial is already held. Adding the
        same certificate again is harmless (and adds its key if it had none)."""
        cert = load_cert(cert_pem)
        org = describe(cert, name=name)
        key = None
        if key_pem is not None:
            key = load_key(key_pem)
            if not key_matches(key, cert):
                raise PkiError("the key is not the key of certificate %s (%s)"
                               % (org.name, _label(cert)))
        with self._locked():
            return self._add(cert, org, key)

    def _add(self, cert: x509.Certificate, org: OrgCert,
             key: ec.EllipticCurvePrivateKey | None) -> OrgCert:
        k = (normalise_name(org.issuer_name), org.serial)
        old = self._find(org.issuer_name, org.serial)
        if old is not None:
            if old.cert != cert:
                raise PkiError("the store already holds a different certificate with issuer %s "
                               "and serial %d (%s)" % (org.issuer_name, org.serial, old.name))
            if key is not None and k not in self._keys:
                self._write_pair(self._files[k][:-len(".cert.pem")], _pem_cert(cert), _pem_key(key))
                self._keys[k] = self._files[k][:-len(".cert.pem")] + ".key.pem"
                self._write_index()
            return old
        stem = self._free_stem(_safe(org.name))
        org = OrgCert(cert=cert, entity_id=org.entity_id, role=org.role, usage=org.usage,
                      issuer_name=org.issuer_name, serial=org.serial, name=stem)
        self._write_pair(stem, _pem_cert(cert), _pem_key(key) if key is not None else None)
        self._certs.append(org)
        self._files[k] = stem + ".cert.pem"
        if key is not None:
            self._keys[k] = stem + ".key.pem"
        self._write_index()
        return org

    def _free_stem(self, stem: str) -> str:
        taken = {org.name for org in self._certs}
        candidate, n = stem, 2
        while candidate in taken or (self.path / ("%s.cert.pem" % candidate)).exists():
            candidate, n = "%s-%d" % (stem, n), n + 1
        return candidate

    def import_dccboxed(self, keystore_json: bytes
                        ) -> tuple[list[OrgCert], list[tuple[str, str]]]:
        """Every certificate (and key) of a DCC Boxed `keystore.json`, under its own names.

        Returns (imported, skipped): an entry whose certificate cannot be used (not an
        Organisation certificate, or one the cryptography library cannot parse, as DCC Boxed's
        mdr-ds/-ka whose signature algorithm carries extra parameters) is skipped with its
        name and the reason; the others are imported. A skipped entry leaves nothing behind."""
        try:
            data = json.loads(keystore_json)
            items = [(eui, usage, serial, entry) for eui, uses in data.items()
                     for usage in ("digitalSignature", "keyAgreement")
                     for serial, entry in (uses.get(usage) or {}).items()]
        except (ValueError, AttributeError) as e:
            raise PkiError("not a DCC Boxed keystore.json (EUI -> digitalSignature / "
                           "keyAgreement -> serial -> entry): %s" % e) from None
        imported, skipped = [], []
        for eui, usage, serial, entry in items:
            label = str(entry.get("name") or "%s/%s/%s" % (eui, usage, serial))
            if not isinstance(entry.get("certificate"), str):
                skipped.append((label, "no certificate"))
                continue
            key = entry.get("privateKey")
            try:
                imported.append(self.add(entry["certificate"].encode(),
                                         key.encode() if isinstance(key, str) else None,
                                         name=entry.get("name")))
            except PkiError as e:
                skipped.append((label, str(e)))
        return imported, skipped

    def by_issuer_serial(self, issuer: str, serial: int) -> OrgCert | None:
        """The certificate a DUIS KeyInfo X509IssuerSerial names, if held."""
        self._fresh()
        return self._find(issuer, serial)

    def _find(self, issuer: str, serial: int) -> OrgCert | None:
        want = (normalise_name(issuer), int(serial))
        for org in self._certs:
            if (normalise_name(org.issuer_name), org.serial) == want:
                return org
        return None

    def by_name(self, name: str) -> OrgCert | None:
        self._fresh()
        for org in self._certs:
            if org.name == name:
                return org
        return None

    def for_entity(self, entity_id: bytes, usage: str = "ds", role: int | None = None
                   ) -> list[OrgCert]:
        """The certificates of one party (entity ID) for a use, optionally of one role."""
        self._fresh()
        return [o for o in self._certs if o.entity_id == entity_id and o.usage == usage
                and (role is None or o.role == role)]

    def cert_path(self, org: OrgCert) -> Path:
        return self.path / self._files[(normalise_name(org.issuer_name), org.serial)]

    def key_path(self, org: OrgCert) -> Path | None:
        k = self._keys.get((normalise_name(org.issuer_name), org.serial))
        return self.path / k if k else None

    def key_for(self, org: OrgCert) -> ec.EllipticCurvePrivateKey | None:
        """The private key held for the certificate, or None (most outside ones have none)."""
        p = self.key_path(org)
        return load_key(p.read_bytes()) if p is not None else None


def _safe(name: str) -> str:
    """A file-name-safe version of a certificate name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "cert"


def entity_text(entity_id: bytes) -> str:
    """An entity ID as DUIS RequestIDs write it: 90-B3-D5-1F-30-01-00-00."""
    return "-".join("%02X" % b for b in entity_id)
