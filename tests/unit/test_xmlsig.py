"""DUIS XML signatures: sign, verify, and every refusal naming its reason.

The documents here are built in the test (DUIS-shaped); the checks against the public DUIS
templates and DCC Boxed's signed response run locally only (GPL data, tests/support/gpl.py).
"""
from __future__ import annotations

import base64
import hashlib
from datetime import datetime, timezone

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from lxml import etree

from hanota.dcc import pki, xmlsig
from support.gpl import gpl_path

DS = "http://www.w3.org/2000/09/xmldsig#"
SR = "http://www.dccinterface.co.uk/ServiceUserGateway"

# A DUIS-shaped SR 11.2 request written for this test. The unused `ra` declaration matters:
# inclusive C14N digests it, exclusive C14N would not.
REQUEST = b"""<?xml version="1.0" encoding="UTF-8"?>
<sr:Request xmlns:sr="http://www.dccinterface.co.uk/ServiceUserGateway" xmlns:ra="http://www.dccinterface.co.uk/ResponseAndAlert" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" schemaVersion="5.4">
  <sr:Header>
    <sr:RequestID>90-B3-D5-1F-30-01-A0-01:00-DB-12-34-56-78-90-A4:1001</sr:RequestID>
    <sr:CommandVariant>1</sr:CommandVariant>
    <sr:ServiceReference>11.2</sr:ServiceReference>
    <sr:ServiceReferenceVariant>11.2</sr:ServiceReferenceVariant>
  </sr:Header>
  <sr:Body>
    <sr:ReadFirmwareVersion/>
  </sr:Body>
</sr:Request>
"""

PLACEHOLDER_SIG = b"""  <ds:Signature xmlns:ds="http://www.w3.org/2000/09/xmldsig#">
    <ds:SignedInfo>
      <ds:CanonicalizationMethod Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/>
      <ds:SignatureMethod Algorithm="http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256"/>
      <ds:Reference URI="">
        <ds:Transforms>
          <ds:Transform Algorithm="http://www.w3.org/2000/09/xmldsig#enveloped-signature"/>
        </ds:Transforms>
        <ds:DigestMethod Algorithm="http://www.w3.org/2001/04/xmlenc#sha256"/>
        <ds:DigestValue>ZGVmYXVsdA==</ds:DigestValue>
      </ds:Reference>
    </ds:SignedInfo>
    <ds:SignatureValue>ZGVmYXVsdA==</ds:SignatureValue>
    <ds:KeyInfo><ds:X509Data><ds:X509IssuerSerial>
      <ds:X509IssuerName>CN=U1, OU=07</ds:X509IssuerName>
      <ds:X509SerialNumber>1234567890</ds:X509SerialNumber>
    </ds:X509IssuerSerial></ds:X509Data></ds:KeyInfo>
  </ds:Signature>
"""
TEMPLATE = REQUEST.replace(b"</sr:Request>", PLACEHOLDER_SIG + b"</sr:Request>")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    pki.init(d)
    return pki.KeyStore(d)


@pytest.fixture(scope="module")
def supplier(store):
    org = store.by_name("supplier-a.xml")
    return store.key_for(org), org.cert


@pytest.fixture(scope="module")
def signed(supplier):
    return xmlsig.sign(REQUEST, *supplier)


def _reason(xml, trust):
    with pytest.raises(xmlsig.SignatureError) as e:
        xmlsig.verify(xml, trust)
    return e.value.reason, str(e.value)


def test_round_trip_names_the_signer(store, signed, supplier):
    org = xmlsig.verify(signed, store)
    assert org.name == "supplier-a.xml"
    assert org.entity_id == pki.ORGS["supplier-a"][1] and org.role == pki.XML_SIGN_USER_ROLE
    assert xmlsig.verify(signed, supplier[1]).entity_id == org.entity_id          # --cert path
    assert xmlsig.signer_of(signed) == (org.issuer_name, org.serial)
    root = etree.fromstring(signed)
    assert root[-1].tag == "{%s}Signature" % DS            # enveloped, the root's last child


def test_independent_check_of_our_signature(signed, supplier):
    """Recompute what DUIS specifies by hand, without xmlsig or signxml: the digest is SHA-256
    of the INCLUSIVE C14N of the document minus the signature; SignatureValue is raw r||s
    over the EXCLUSIVE C14N of SignedInfo; KeyInfo is issuer + decimal serial."""
    root = etree.fromstring(signed)
    sig = root.find("{%s}Signature" % DS)
    si = sig.find("{%s}SignedInfo" % DS)
    ns = {"ds": DS}
    assert si.find("ds:CanonicalizationMethod", ns).get("Algorithm") == "http://www.w3.org/2001/10/xml-exc-c14n#"
    assert [t.get("Algorithm") for t in si.iterfind("ds:Reference/ds:Transforms/ds:Transform", ns)] \
        == ["http://www.w3.org/2000/09/xmldsig#enveloped-signature"]
    assert si.find("ds:Reference", ns).get("URI") == ""
    raw = base64.b64decode(sig.find("ds:SignatureValue", ns).text)
    assert len(raw) == 64
    signed_info = etree.tostring(si, method="c14n", exclusive=True)
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    supplier[1].public_key().verify(der, signed_info, ec.ECDSA(hashes.SHA256()))
    digest = base64.b64decode(si.find("ds:Reference/ds:DigestValue", ns).text)
    prev = sig.getprevious()
    prev.tail = (prev.tail or "") + (sig.tail or "")
    root.remove(sig)
    assert digest == hashlib.sha256(etree.tostring(root, method="c14n")).digest()
    assert digest != hashlib.sha256(etree.tostring(root, method="c14n", exclusive=True)).digest()
    assert digest == hashlib.sha256(etree.tostring(etree.fromstring(REQUEST), method="c14n")).digest()
    ius = sig.find("ds:KeyInfo/ds:X509Data/ds:X509IssuerSerial", ns)
    assert ius.find("ds:X509IssuerName", ns).text == pki.issuer_name(supplier[1])
    assert int(ius.find("ds:X509SerialNumber", ns).text) == supplier[1].serial_number


def test_tampered_body_is_a_digest_mismatch(store, signed):
    bad = signed.replace(b":1001<", b":1002<")
    assert bad != signed
    reason, msg = _reason(bad, store)
    assert reason == "digest" and "digest mismatch" in msg


def test_tampered_signature_value(store, signed):
    root = etree.fromstring(signed)
    sv = root.find(".//{%s}SignatureValue" % DS)
    raw = bytearray(base64.b64decode(sv.text))
    raw[10] ^= 0x01
    sv.text = base64.b64encode(bytes(raw)).decode()
    assert _reason(etree.tostring(root), store)[0] == "signature"


def test_tampered_signed_info(store, signed):
    root = etree.fromstring(signed)
    dv = root.find(".//{%s}DigestValue" % DS)
    dv.text = base64.b64encode(hashlib.sha256(b"another document").digest()).decode()
    assert _reason(etree.tostring(root), store)[0] == "signature"


def test_wrong_cert(store, signed):
    other = store.by_name("supplier-b.xml").cert
    reason, msg = _reason(signed, other)
    assert reason == "wrong-cert" and "not by the given one" in msg


def test_same_issuer_and_serial_but_another_key(store, signed, supplier):
    """A certificate naming the same issuer/serial but another key (a forged look-alike)."""
    ca_key, ca = pki.make_root(pki.ROOT_CN)
    _, forged = pki.make_org_cert(ca_key, ca, role=pki.XML_SIGN_USER_ROLE,
                                  entity_id=pki.ORGS["supplier-a"][1], usage="ds",
                                  serial=supplier[1].serial_number)
    assert _reason(signed, forged)[0] == "signature"


def test_unknown_signer(signed, tmp_path):
    empty = pki.KeyStore(tmp_path)
    reason, msg = _reason(signed, empty)
    assert reason == "unknown-signer" and str(xmlsig.signer_of(signed)[1]) in msg


def test_placeholder_is_refused(store):
    reason, msg = _reason(TEMPLATE, store)
    assert reason == "placeholder" and "ZGVmYXVsdA==" in msg


def test_unsigned_and_malformed(store):
    assert _reason(REQUEST, store)[0] == "unsigned"
    assert _reason(b"<sr:Request xmlns:sr='x'><a></sr:Request>", store)[0] == "malformed"
    doctype = b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY e "x">]><r>&e;</r>'
    assert _reason(doctype, store)[0] == "malformed"


def _edit(signed, fn):
    root = etree.fromstring(signed)
    fn(root.find("{%s}Signature" % DS))
    return etree.tostring(root)


def test_profile_departures_are_named(store, signed):
    def uri(sig):
        sig.find(".//{%s}Reference" % DS).set("URI", "#Body")

    def c14n_transform(sig):
        etree.SubElement(sig.find(".//{%s}Transforms" % DS), "{%s}Transform" % DS,
                         Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#")

    def rsa(sig):
        sig.find(".//{%s}SignatureMethod" % DS).set(
            "Algorithm", "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256")

    def short_value(sig):
        sig.find("{%s}SignatureValue" % DS).text = base64.b64encode(bytes(32)).decode()

    def no_serial(sig):
        el = sig.find(".//{%s}X509SerialNumber" % DS)
        el.getparent().remove(el)

    for fn, reason, words in ((uri, "unsupported", "URI"), (c14n_transform, "unsupported", "transforms"),
                              (rsa, "unsupported", "SignatureMethod"), (short_value, "bad-value", "64"),
                              (no_serial, "malformed", "X509SerialNumber")):
        got, msg = _reason(_edit(signed, fn), store)
        assert (got, words in msg) == (reason, True), msg
    nested = signed.replace(b"<sr:ReadFirmwareVersion/>", b"<sr:ReadFirmwareVersion>"
                            + etree.tostring(etree.fromstring(signed).find("{%s}Signature" % DS))
                            + b"</sr:ReadFirmwareVersion>")
    assert _reason(nested, store)[0] == "unsupported"


def test_comment_that_would_cut_a_value_is_refused(store, signed):
    """C14N without comments digests `1001` for `10<!---->01`, but a parser reads "10"."""
    cut = signed.replace(b":1001<", b":10<!---->01<")
    assert etree.fromstring(cut).find(".//{%s}RequestID" % SR).text.endswith(":10")
    reason, msg = _reason(cut, store)
    assert reason == "malformed" and "comment inside <RequestID>" in msg
    pi = signed.replace(b"<sr:Body>", b"<sr:Body><?x y?>")
    assert _reason(pi, store)[0] == "malformed"


def test_crlf_wrapped_signature_value_verifies(store, signed):
    """DCC Boxed wraps SignatureValue with CR LF (`&#13;` + newline)."""
    root = etree.fromstring(signed)
    sv = root.find(".//{%s}SignatureValue" % DS)
    sv.text = sv.text[:76] + "\r\n" + sv.text[76:]
    wrapped = etree.tostring(root)
    assert b"&#13;" in wrapped
    assert xmlsig.verify(wrapped, store).name == "supplier-a.xml"


def test_key_agreement_certificate_cannot_sign(store):
    org = store.by_name("supplier-a.ka")
    signed = xmlsig.sign(REQUEST, store.key_for(org), org.cert)
    reason, msg = _reason(signed, store)
    assert reason == "not-ds" and "key agreement" in msg


def test_expired_certificate_still_verifies(tmp_path):
    ca_key, ca = pki.make_root("OLD-CA")
    key, cert = pki.make_org_cert(ca_key, ca, role=2, entity_id=bytes.fromhex("90B3D51F3001C003"),
                                  usage="ds", not_before=datetime(2015, 1, 1, tzinfo=timezone.utc),
                                  not_after=datetime(2016, 1, 1, tzinfo=timezone.utc))
    ks = pki.KeyStore(tmp_path)
    ks.add(cert.public_bytes(serialization.Encoding.PEM))
    assert xmlsig.verify(xmlsig.sign(REQUEST, key, cert), ks).entity_id.hex() == "90b3d51f3001c003"


def test_sign_replaces_a_placeholder_and_strip_gives_the_document(store, supplier):
    signed = xmlsig.sign(TEMPLATE, *supplier)
    assert len(etree.fromstring(signed).findall(".//{%s}Signature" % DS)) == 1
    assert b"ZGVmYXVsdA==" not in signed
    assert xmlsig.verify(signed, store).name == "supplier-a.xml"
    c14n = lambda x: etree.tostring(etree.fromstring(x), method="c14n")  # noqa: E731
    assert b"Signature" not in xmlsig.strip(signed)
    assert c14n(xmlsig.strip(signed)) == c14n(xmlsig.strip(TEMPLATE))
    resigned = xmlsig.sign(signed, *supplier)                  # signing again: one signature
    assert len(etree.fromstring(resigned).findall("{%s}Signature" % DS)) == 1
    assert xmlsig.verify(resigned, supplier[1]).name == "supplier-a.xml"


def test_sign_refuses_a_key_that_is_not_the_certificates(store, supplier):
    other = store.key_for(store.by_name("supplier-b.xml"))
    with pytest.raises(xmlsig.SignatureError) as e:
        xmlsig.sign(REQUEST, other, supplier[1])
    assert e.value.reason == "key"


# --- local checks against GPL reference data (skip in CI) ---------------------------------

ECS52 = ("test", "data", "ECS52_11.2_SUCCESS_RESPONSE_DUIS.XML")
ACB_SERIAL = 117636141832862931915946451229571981153


def _dccboxed_acb(tmp_path):
    import json
    ks_json = json.loads(gpl_path("dccboxed-keystore", "keystore.json").read_text())
    entry = ks_json["90b3d51f30000002"]["digitalSignature"][str(ACB_SERIAL)]
    assert entry["name"] == "Z1-accessControlBroker-ds"
    ks = pki.KeyStore(tmp_path)
    ks.add(entry["certificate"].encode(), name=entry["name"])
    return ks


def test_real_dcc_boxed_response_verifies(tmp_path):
    """DCC Boxed's own signed response: accepted with its (expired) ACB certificate, refused
    after one flipped byte in the body or in the signature."""
    doc = gpl_path("duis-templates", *ECS52).read_bytes()
    ks = _dccboxed_acb(tmp_path)
    org = xmlsig.verify(doc, ks)
    assert org.name == "Z1-accessControlBroker-ds" and org.serial == ACB_SERIAL
    assert org.entity_id == bytes.fromhex("90B3D51F30000002")
    assert org.cert.not_valid_after_utc < datetime.now(timezone.utc)        # expired, still fine
    i = doc.index(b"<sr:GBCSPayload>") + len(b"<sr:GBCSPayload>") + 5
    flipped = doc[:i] + bytes([doc[i] ^ 0x01]) + doc[i + 1:]
    assert _reason(flipped, ks)[0] == "digest"
    j = doc.index(b"<ds:SignatureValue>") + len(b"<ds:SignatureValue>") + 3
    flipped = doc[:j] + bytes([doc[j] ^ 0x01]) + doc[j + 1:]
    assert _reason(flipped, ks)[0] in ("signature", "bad-value")


@pytest.mark.parametrize("name", [
    "11.1_UPDATE_FIRMWARE_REQUEST_DUIS.XML", "11.4_UPDATE_PPMID_FIRMWARE_REQUEST_DUIS.XML",
    "CS06_11.3_IMMEDIATE_SUCCESS_REQUEST_DUIS.XML", "CS08_11.2_SUCCESS_REQUEST_DUIS.XML"])
def test_templates_placeholder_refused_and_our_signature_accepted(name, store, supplier):
    doc = gpl_path("duis-templates", "templates", name).read_bytes()
    assert _reason(doc, store)[0] == "placeholder"
    signed = xmlsig.sign(doc, *supplier)
    assert xmlsig.verify(signed, store).name == "supplier-a.xml"
    assert _reason(signed.replace(b"<sr:ServiceReference>", b"<sr:ServiceReference> "), store)[0] == "digest"


def test_template_signed_with_dcc_boxed_user_key(tmp_path):
    """The templates' originator is DCC Boxed's Supplier 90-B3-D5-1F-30-01-00-00: signed with
    its xml-sign key from keystore.json (imported), the signer's entity ID is the originator."""
    ks = pki.KeyStore(tmp_path)
    ks.import_dccboxed(gpl_path("dccboxed-keystore", "keystore.json").read_bytes())
    org = ks.by_name("xml-sign-90B3D51F30010000-ds")
    doc = gpl_path("duis-templates", "templates", "11.1_UPDATE_FIRMWARE_REQUEST_DUIS.XML").read_bytes()
    signer = xmlsig.verify(xmlsig.sign(doc, ks.key_for(org), org.cert), ks)
    assert signer.entity_id == bytes.fromhex("90B3D51F30010000") and signer.role == 0x87
    rid = etree.fromstring(doc).find(".//{%s}RequestID" % SR).text
    assert rid.startswith(pki.entity_text(signer.entity_id) + ":")


# --- xmlsec1 (libxmlsec, an independent XMLDSig implementation), when installed -------------

def _xmlsec1():
    import shutil
    exe = shutil.which("xmlsec1")
    if exe is None:
        pytest.skip("xmlsec1 is not installed (apt-get install xmlsec1): the libxmlsec "
                    "cross-check is optional; test_independent_check_of_our_signature covers it")
    return exe


def test_xmlsec1_accepts_our_signature_and_we_accept_its(tmp_path, store, signed, supplier):
    import subprocess
    exe = _xmlsec1()
    pub = tmp_path / "pub.pem"
    pub.write_bytes(supplier[1].public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    ours, bad = tmp_path / "ours.xml", tmp_path / "bad.xml"
    ours.write_bytes(signed)
    bad.write_bytes(signed.replace(b":1001<", b":1002<"))

    def xmlsec(*args):
        return subprocess.run([exe, *args], capture_output=True, timeout=30).returncode

    assert xmlsec("--verify", "--pubkey-pem", str(pub), str(ours)) == 0
    assert xmlsec("--verify", "--pubkey-pem", str(pub), str(bad)) != 0
    # xmlsec1 signs a DUIS-shaped template (empty values; it fills X509IssuerSerial from the
    # certificate): our verify accepts it and finds the signer in the key store.
    tmpl = REQUEST.replace(b"</sr:Request>", (
        b'<ds:Signature xmlns:ds="%s"><ds:SignedInfo>'
        b'<ds:CanonicalizationMethod Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/>'
        b'<ds:SignatureMethod Algorithm="http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256"/>'
        b'<ds:Reference URI=""><ds:Transforms><ds:Transform Algorithm="http://www.w3.org/2000/'
        b'09/xmldsig#enveloped-signature"/></ds:Transforms><ds:DigestMethod Algorithm="http://'
        b'www.w3.org/2001/04/xmlenc#sha256"/><ds:DigestValue/></ds:Reference></ds:SignedInfo>'
        b'<ds:SignatureValue/><ds:KeyInfo><ds:X509Data><ds:X509IssuerSerial/></ds:X509Data>'
        b'</ds:KeyInfo></ds:Signature></sr:Request>') % DS.encode())
    org = store.by_name("supplier-a.xml")
    (tmp_path / "tmpl.xml").write_bytes(tmpl)
    out = tmp_path / "theirs.xml"
    assert xmlsec("--sign", "--privkey-pem", "%s,%s" % (store.key_path(org), store.cert_path(org)),
                  "--output", str(out), str(tmp_path / "tmpl.xml")) == 0
    theirs = out.read_bytes()
    assert xmlsig.verify(theirs, store).name == "supplier-a.xml"
    assert _reason(theirs.replace(b":1001<", b":1002<"), store)[0] == "digest"
