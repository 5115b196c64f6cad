"""XMLDSig signatures of DUIS documents, as DCC Boxed makes and checks them.

A DUIS request or response carries one enveloped `ds:Signature`, the root's last child
(reference/gbcs_duis.md §3): SignedInfo canonicalised with exclusive C14N, ECDSA-SHA256, one
`Reference URI=""` whose only transform is enveloped-signature, SHA-256 digest; SignatureValue
is base64 of the raw 64-byte r||s (DCC Boxed wraps it with CR LF, so whitespace is ignored);
KeyInfo names the signer only by X509IssuerSerial (issuer as RFC 4514 text, decimal serial),
so the verifier must already hold the certificate (`pki.KeyStore`).

The rule that matters: the Reference names no canonicalisation transform, so the XMLDSig
default applies to the document after the enveloped transform: **inclusive C14N 1.0**. The
exclusive method named in SignedInfo applies to SignedInfo alone. DCC Boxed's real responses
verify only this way (their unused `ra`/`ns3` namespace declarations are digested).

- `verify` uses signxml (configured for exactly this profile: the signature a child of the
  root, one reference, ECDSA-SHA256 and SHA-256 only, inclusive C14N 1.0 as the reference
  default, the signer's certificate given from the key store). Before that it checks the
  shape itself, so that each refusal says what is wrong: the templates' placeholder
  (`ZGVmYXVsdA==`), an unknown signer, a key-agreement certificate, a digest mismatch, a bad
  signature value.
- `sign` builds the signature with lxml + cryptography rather than signxml: signxml's signer
  digests a `URI=""` reference with the SignedInfo method unless it writes a c14n Transform,
  and cannot resolve an explicit `URI=""` reference, so it cannot produce DUIS's
  inclusive-digest / exclusive-SignedInfo pair. Our signatures are then checked by signxml
  (a separate implementation) in `verify`, and by hand in the tests.

Certificate validity dates are never checked (see `pki`): DCC Boxed's test certificates have
expired and its documents must still verify.
"""
from __future__ import annotations

import base64
import hashlib
from typing import Union

from cryptography import x509
from cryptography.exceptions import InvalidSignature as _CryptoInvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from lxml import etree
import signxml
import signxml.exceptions
from signxml.algorithms import CanonicalizationMethod

from ..errors import HanotaError
from . import pki

DS = "http://www.w3.org/2000/09/xmldsig#"
EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"
ECDSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256"
ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"
PLACEHOLDER = "ZGVmYXVsdA=="        # base64("default"): duis-templates' digest and signature
_NS = {"ds": DS}


class SignatureError(HanotaError):
    """A DUIS document's signature is missing, malformed, made by an unknown or unsuitable
    certificate, or does not verify. `reason` names which: malformed, unsigned, placeholder,
    unsupported, unknown-signer, wrong-cert, not-ds, digest, signature, bad-value, key."""

    reason = "signature"


def _ds(tag: str) -> str:
    return "{%s}%s" % (DS, tag)


def _parse(xml: bytes) -> etree._ElementTree:
    """Parse without DTDs, entities or network (a DUIS endpoint takes XML from outside)."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                             huge_tree=False, remove_blank_text=False)
    try:
        tree = etree.ElementTree(etree.fromstring(xml, parser))
    except etree.XMLSyntaxError as e:
        raise SignatureError("the document is not well-formed XML: %s" % e, "malformed") from None
    if tree.docinfo.doctype:
        raise SignatureError("the document has a DOCTYPE; DUIS documents have none and a DTD is "
                             "not accepted", "malformed")
    return tree


def _serialise(tree: etree._ElementTree) -> bytes:
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + etree.tostring(tree, encoding="UTF-8")


def _remove_keep_tail(el: etree._Element) -> None:
    """Remove an element as the enveloped-signature transform does: its following text stays."""
    parent = el.getparent()
    if el.tail:
        prev = el.getprevious()
        if prev is not None:
            prev.tail = (prev.tail or "") + el.tail
        else:
            parent.text = (parent.text or "") + el.tail
    parent.remove(el)


def _signatures(root: etree._Element) -> list[etree._Element]:
    return list(root.iter(_ds("Signature")))


def strip(xml: bytes) -> bytes:
    """The document without its ds:Signature element(s): what the signature covers."""
    tree = _parse(xml)
    for sig in _signatures(tree.getroot()):
        if sig is tree.getroot():
            raise SignatureError("the document is a bare ds:Signature, not a signed DUIS "
                                 "document", "malformed")
        _remove_keep_tail(sig)
    return _serialise(tree)


def _load_key(key) -> ec.EllipticCurvePrivateKey:
    if isinstance(key, (bytes, bytearray)):
        return pki.load_key(bytes(key))
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SignatureError("the signing key is not an EC private key", "key")
    return key


def _load_cert(cert) -> x509.Certificate:
    if isinstance(cert, pki.OrgCert):
        return cert.cert
    if isinstance(cert, (bytes, bytearray)):
        return pki.load_cert(bytes(cert))
    return cert


def sign(xml: bytes, key, cert) -> bytes:
    """The document signed by KEY, named in KeyInfo by CERT's issuer and serial.

    Any signature it already carries (e.g. a template's placeholder) is replaced. KEY is a
    P-256 private key or its PEM; CERT a certificate, its PEM, or an `OrgCert`."""
    key, cert = _load_key(key), _load_cert(cert)
    if not pki.key_matches(key, cert):
        raise SignatureError("the key is not the key of the certificate (serial %d from %s)"
                             % (cert.serial_number, pki.issuer_name(cert)), "key")
    tree = _parse(xml)
    root = tree.getroot()
    # Where the new signature goes: the old one's place in the layout when it was the last
    # child (a template's), else at the end. `before` is the text between the preceding
    # node and the signature, `after` the text that follows it; the enveloped transform
    # removes the signature and leaves before + after, which is what is digested.
    before = after = None
    old = _signatures(root)
    if old and old[-1].getparent() is root and old[-1] is root[-1]:
        prev = old[-1].getprevious()
        before = (prev.tail if prev is not None else root.text) or ""
        after = old[-1].tail or ""
    for sig in old:
        if sig is root:
            raise SignatureError("the document is a bare ds:Signature", "malformed")
        _remove_keep_tail(sig)
    # The reference: inclusive C14N 1.0 (no comments) of the document without the signature,
    # taken before the signature is appended (module doc).
    digest = hashlib.sha256(etree.tostring(root, method="c14n", exclusive=False,
                                           with_comments=False)).digest()
    sig = etree.SubElement(root, _ds("Signature"), nsmap={"ds": DS})
    if before is not None:
        prev = sig.getprevious()
        if prev is not None:
            prev.tail = before or None
        else:
            root.text = before or None
        sig.tail = after or None
    si = etree.SubElement(sig, _ds("SignedInfo"))
    etree.SubElement(si, _ds("CanonicalizationMethod"), Algorithm=EXC_C14N)
    etree.SubElement(si, _ds("SignatureMethod"), Algorithm=ECDSA_SHA256)
    ref = etree.SubElement(si, _ds("Reference"), URI="")
    etree.SubElement(etree.SubElement(ref, _ds("Transforms")), _ds("Transform"), Algorithm=ENVELOPED)
    etree.SubElement(ref, _ds("DigestMethod"), Algorithm=SHA256)
    etree.SubElement(ref, _ds("DigestValue")).text = base64.b64encode(digest).decode()
    signed_info = etree.tostring(si, method="c14n", exclusive=True, with_comments=False)
    r, s = decode_dss_signature(key.sign(signed_info, ec.ECDSA(hashes.SHA256())))
    etree.SubElement(sig, _ds("SignatureValue")).text = base64.b64encode(
        r.to_bytes(32, "big") + s.to_bytes(32, "big")).decode()
    ius = etree.SubElement(etree.SubElement(etree.SubElement(sig, _ds("KeyInfo")),
                                            _ds("X509Data")), _ds("X509IssuerSerial"))
    etree.SubElement(ius, _ds("X509IssuerName")).text = pki.issuer_name(cert)
    etree.SubElement(ius, _ds("X509SerialNumber")).text = str(cert.serial_number)
    return _serialise(tree)


def _the_signature(root: etree._Element) -> etree._Element:
    sigs = _signatures(root)
    if not sigs:
        raise SignatureError("the document is not signed (no ds:Signature)", "unsigned")
    if len(sigs) > 1:
        raise SignatureError("the document has %d ds:Signature elements; DUIS has exactly one"
                             % len(sigs), "unsupported")
    sig = sigs[0]
    if sig.getparent() is not root:
        raise SignatureError("ds:Signature is not a child of the document's root element "
                             "(DUIS signatures are enveloped at the top level)", "unsupported")
    return sig


def _text(sig: etree._Element, path: str, what: str) -> str:
    el = sig.find(path, _NS)
    if el is None or not (el.text or "").strip():
        raise SignatureError("the signature has no %s" % what, "malformed")
    return el.text.strip()


def signer_of(xml: bytes) -> tuple[str, int]:
    """The signer's certificate as KeyInfo names it: (issuer name, serial). No verification."""
    return _signer(_the_signature(_parse(xml).getroot()))


def _signer(sig: etree._Element) -> tuple[str, int]:
    issuer = _text(sig, "ds:KeyInfo/ds:X509Data/ds:X509IssuerSerial/ds:X509IssuerName",
                   "KeyInfo X509IssuerName")
    serial = _text(sig, "ds:KeyInfo/ds:X509Data/ds:X509IssuerSerial/ds:X509SerialNumber",
                   "KeyInfo X509SerialNumber")
    try:
        return issuer, int(serial, 10)
    except ValueError:
        raise SignatureError("X509SerialNumber %r is not a decimal serial" % serial,
                             "malformed") from None


def _check_shape(sig: etree._Element) -> None:
    """The DUIS profile, each departure named (signxml would say less or accept more)."""
    si = sig.find("ds:SignedInfo", _NS)
    if si is None:
        raise SignatureError("the signature has no SignedInfo", "malformed")
    digest = _text(sig, "ds:SignedInfo/ds:Reference/ds:DigestValue", "DigestValue")
    value = _text(sig, "ds:SignatureValue", "SignatureValue")
    if PLACEHOLDER in (digest, "".join(value.split())):
        raise SignatureError("the signature is the DUIS templates' placeholder (%s): the "
                             "document was never signed; sign it with `hanota duis sign`"
                             % PLACEHOLDER, "placeholder")
    algs = [(si.find("ds:CanonicalizationMethod", _NS), EXC_C14N, "CanonicalizationMethod"),
            (si.find("ds:SignatureMethod", _NS), ECDSA_SHA256, "SignatureMethod")]
    refs = si.findall("ds:Reference", _NS)
    if len(refs) != 1:
        raise SignatureError("SignedInfo has %d references; DUIS has one (URI=\"\")" % len(refs),
                             "unsupported")
    ref = refs[0]
    if ref.get("URI") != "":
        raise SignatureError("the reference URI is %r; DUIS signs the whole document (URI=\"\")"
                             % ref.get("URI"), "unsupported")
    algs.append((ref.find("ds:DigestMethod", _NS), SHA256, "DigestMethod"))
    for el, want, what in algs:
        got = None if el is None else el.get("Algorithm")
        if got != want:
            raise SignatureError("%s is %s; DUIS uses %s" % (what, got, want), "unsupported")
    transforms = [t.get("Algorithm") for t in ref.findall("ds:Transforms/ds:Transform", _NS)]
    if transforms != [ENVELOPED]:
        raise SignatureError("the reference's transforms are %s; DUIS has the enveloped-"
                             "signature transform alone" % (transforms or "none"), "unsupported")
    try:
        raw = base64.b64decode("".join(value.split()), validate=True)
    except ValueError:
        raise SignatureError("SignatureValue is not base64", "bad-value") from None
    if len(raw) != 64:
        raise SignatureError("SignatureValue holds %d bytes; an ECDSA P-256 signature is 64 "
                             "(r||s)" % len(raw), "bad-value")


def _no_comments(root: etree._Element, sig: etree._Element) -> None:
    """Refuse comments and processing instructions in the signed part. The digest leaves
    them out (C14N without comments), yet a parser reading `<a>10<!---->00</a>` sees "10":
    text could be cut after signing without breaking the signature (the SAML comment attack,
    CVE-2017-11427). DUIS documents carry none outside the signature."""
    for node in root.iter(etree.Comment, etree.ProcessingInstruction):
        if sig not in node.iterancestors():
            raise SignatureError("the document has a %s inside <%s>; a signed DUIS document "
                                 "carries none (the digest leaves them out, so they could "
                                 "change what is read after signing)"
                                 % ("comment" if isinstance(node, etree._Comment)
                                    else "processing instruction",
                                    etree.QName(node.getparent()).localname), "malformed")


Trust = Union["pki.KeyStore", x509.Certificate, "pki.OrgCert", bytes]


def verify(xml: bytes, keystore_or_cert: Trust) -> pki.OrgCert:
    """The certificate that signed the document, once its signature verifies; else
    SignatureError with the reason. The signer is looked up by X509IssuerSerial in a
    `pki.KeyStore`, or must be the one certificate given (a certificate, its PEM, or an
    OrgCert). It must be an Organisation certificate for digital signature."""
    tree = _parse(xml)
    sig = _the_signature(tree.getroot())
    _check_shape(sig)
    _no_comments(tree.getroot(), sig)
    issuer, serial = _signer(sig)
    if isinstance(keystore_or_cert, pki.KeyStore):
        org = keystore_or_cert.by_issuer_serial(issuer, serial)
        if org is None:
            raise SignatureError("unknown signer: no certificate with issuer %s and serial %d in "
                                 "the key store %s" % (issuer, serial, keystore_or_cert.path),
                                 "unknown-signer")
    else:
        cert = _load_cert(keystore_or_cert)
        try:
            org = keystore_or_cert if isinstance(keystore_or_cert, pki.OrgCert) else pki.describe(cert)
        except pki.PkiError as e:
            raise SignatureError("the given certificate is not an Organisation certificate: %s"
                                 % e, "wrong-cert") from None
        if (pki.normalise_name(org.issuer_name), org.serial) != (pki.normalise_name(issuer), serial):
            raise SignatureError("signed by the certificate with issuer %s and serial %d, not by "
                                 "the given one (issuer %s, serial %d)"
                                 % (issuer, serial, org.issuer_name, org.serial), "wrong-cert")
    if org.usage != "ds":
        raise SignatureError("the signer's certificate %s is for key agreement, not digital "
                             "signature" % org.name, "not-ds")
    config = signxml.SignatureConfiguration(
        location="./", expect_references=1,
        signature_methods=frozenset({signxml.SignatureMethod.ECDSA_SHA256}),
        digest_algorithms=frozenset({signxml.DigestAlgorithm.SHA256}),
        default_reference_c14n_method=CanonicalizationMethod.CANONICAL_XML_1_0,
        # Validity dates are not checked (module doc): verify "as of" the certificate's start.
        verification_time=org.cert.not_valid_before_utc)
    try:
        signxml.XMLVerifier().verify(xml, x509_cert=org.cert, expect_config=config)
    except signxml.exceptions.InvalidDigest:
        raise SignatureError("digest mismatch: the document is not the one %s signed (changed "
                             "after signing)" % org.name, "digest") from None
    except signxml.exceptions.InvalidSignature as e:
        raise SignatureError("the signature value does not verify with %s's key (%s): "
                             "SignedInfo was changed or another key signed"
                             % (org.name, e), "signature") from None
    except (signxml.exceptions.InvalidInput, _CryptoInvalidSignature, ValueError) as e:
        raise SignatureError("the signature cannot be checked: %s" % e, "bad-value") from None
    return org
