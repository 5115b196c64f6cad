"""DUIS's Pre-Command flow for SR 11.3 (GBCS CS06 Activate Firmware, a Critical command), as
hanota's DCC, its Users and its Comms Hubs carry it (issue 13).

1. The User submits SR 11.3 with CommandVariant 4. The DCC answers (I0) with a DUIS response
   whose ResponseMessage holds `PreCommand / GBCSPayload`: base64 of the CS06 general-signing
   APDU without a signature (`DF 09 ...` to the end of the DER payload; `precommand`). Its
   originator counter is the RequestID's counter, originator the User, recipient the device,
   and the payload carries the FirmwareHash and the execution time (YYYYMMDDhhmmssZ; the
   DUIS cancellation date becomes GBCS's 99991231235959Z).
2. The User signs it (`sign`: ECDSA P-256 with its DS key over the APDU after `DF`, appended
   as `40 || r || s`) and submits it with the same RequestID, CommandVariant 5, and the body
   `SignedPreCommand / GBCSPayload` (`signed_request`; element names as DCC Boxed's Node-RED
   nodes build them: `hanota duis sign-precommand` does both steps).
3. The DCC checks that the signed APDU is exactly its pre-command plus a signature that
   verifies with the User's DS certificate, adds the MAC header and the GBCS MAC (`add_mac`:
   ECDH between the ACB's KA key and the device's KA key, the GBCS KDF, GMAC) and sends the
   whole GBCS message over the WAN; the Comms Hub relays it on the HAN in a ZCL frame (OTA
   cluster, manufacturer-specific 0xF3, hanfw/zcl.py) and the device answers with 0xF4.
"""
from __future__ import annotations

import base64
from datetime import datetime, timezone
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from hanfw import gbcs, p256

from ..errors import HanotaError
from . import duis


class PrecommandError(HanotaError):
    """A pre-command or signed pre-command that is not what it must be (named)."""

    reason = "precommand"


def gbcs_time(at: datetime | None, cancel: bool = False) -> str | None:
    """The CS06 execution date-time for a DUIS ExecutionDateTime (None: now)."""
    if cancel:
        return gbcs.CANCEL_TIME
    if at is None:
        return None
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    return at.astimezone(timezone.utc).strftime("%Y%m%d%H%M%SZ")


def precommand(request_id: duis.RequestID, image_hash: bytes, at: datetime | None = None,
               cancel: bool = False) -> bytes:
    """The CS06 pre-command the DCC returns for an SR 11.3 CV 4 request (module doc)."""
    m = gbcs.cs06_command(int(request_id.counter), bytes(request_id.originator),
                          bytes(request_id.target), bytes(image_hash), gbcs_time(at, cancel))
    return m.precommand()


def precommand_response(request_id: duis.RequestID, pre: bytes, srv: str = "11.3") -> bytes:
    """The (unsigned) DUIS response carrying a pre-command: I0, ResponseMessage / PreCommand /
    GBCSPayload."""
    return duis.response(request_id, "I0", srv, body={"PreCommand": {"GBCSPayload": pre}})


def _raw(key: ec.EllipticCurvePrivateKey | bytes) -> int:
    if isinstance(key, (bytes, bytearray)):
        return int.from_bytes(bytes(key), "big")
    return key.private_numbers().private_value


def sign(pre: bytes, key: ec.EllipticCurvePrivateKey | bytes) -> bytes:
    """The User's step: the pre-command with its signature appended (40 || r || s)."""
    m = _decode(pre, "the pre-command")
    if m.signature is not None or m.mac_header:
        raise PrecommandError("the pre-command already carries a signature or MAC header")
    k = ec.derive_private_key(_raw(key), ec.SECP256R1())
    r, s = utils.decode_dss_signature(k.sign(m.signed_bytes(), ec.ECDSA(hashes.SHA256())))
    m.signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return m.apdu()


def signed_request(request_id: duis.RequestID | str, signed: bytes, srv: str = "11.3") -> bytes:
    """The (unsigned) CV 5 DUIS request carrying a signed pre-command; xml-sign it to submit."""
    from lxml import etree
    rid = request_id if isinstance(request_id, duis.RequestID) else duis.RequestID.parse(request_id)
    svc = duis.service(srv)
    root = etree.Element(duis._q("Request"), nsmap=duis._NSMAP_REQUEST)
    root.set("schemaVersion", duis.SCHEMA_VERSION)
    header = duis._sub(root, "Header")
    duis._sub(header, "RequestID", str(rid))
    duis._sub(header, "CommandVariant", "5")
    duis._sub(header, "ServiceReference", svc.sr)
    duis._sub(header, "ServiceReferenceVariant", svc.srv)
    body = duis._sub(duis._sub(root, "Body"), "SignedPreCommand")
    duis._sub(body, "GBCSPayload", base64.b64encode(bytes(signed)).decode("ascii"))
    return duis._serialize(root)


def from_response(xml: bytes) -> tuple[duis.RequestID, str, bytes]:
    """(RequestID, SRV, pre-command) of a DUIS response carrying a PreCommand."""
    root = duis.parse_xml(xml)
    ns = {"sr": duis.SR_NS}
    rid = root.findtext("sr:Header/sr:RequestID", namespaces=ns)
    msg = root.find("sr:Body/sr:ResponseMessage", namespaces=ns)
    payload = None if msg is None else msg.findtext("sr:PreCommand/sr:GBCSPayload", namespaces=ns)
    if rid is None or payload is None:
        raise PrecommandError("not a DUIS response carrying a PreCommand (Header/RequestID and "
                              "Body/ResponseMessage/PreCommand/GBCSPayload)")
    srv = msg.findtext("sr:ServiceReferenceVariant", namespaces=ns) or "11.3"
    try:
        pre = base64.b64decode("".join(payload.split()), validate=True)
    except ValueError:
        raise PrecommandError("PreCommand/GBCSPayload is not base64") from None
    return duis.RequestID.parse(rid.strip()), srv.strip(), pre


def _decode(data: bytes, what: str) -> Any:
    try:
        return gbcs.decode(data)
    except gbcs.GbcsError as e:
        raise PrecommandError("%s is not a GBCS message: %s" % (what, e)) from None


def check_signed(signed: bytes, expected_pre: bytes, supplier_pub: bytes) -> Any:
    """The DCC's check of a Signed Pre-Command: exactly its pre-command plus a signature that
    verifies with the User's DS key (65-byte point). The decoded message, else
    PrecommandError naming the difference."""
    m = _decode(signed, "the Signed Pre-Command")
    if m.mac_header:
        raise PrecommandError("a Signed Pre-Command carries no MAC header (the DCC adds it)")
    if m.signature is None or len(m.signature) != 64:
        raise PrecommandError("the Signed Pre-Command carries no signature")
    if m.precommand() != bytes(expected_pre) or bytes(signed[:m.signed_end]) != bytes(expected_pre):
        raise PrecommandError("the Signed Pre-Command is not the pre-command the DCC issued for "
                              "this RequestID (a field was changed)")
    try:
        gbcs.check_signature(m, supplier_pub, True)
    except gbcs.GbcsError as e:
        raise PrecommandError(str(e)) from None
    return m


def add_mac(signed: bytes, acb_ka_key: ec.EllipticCurvePrivateKey | bytes,
            device_ka_pub: bytes) -> bytes:
    """The GBCS message the DCC sends: MAC header || signed APDU || MAC (ACB KA key with the
    device's KA public key)."""
    m = _decode(signed, "the Signed Pre-Command")
    m.mac_header = True
    z = p256.ecdh(_raw(acb_ka_key).to_bytes(32, "big"), bytes(device_ka_pub))
    m.mac = gbcs.compute_mac(z, m)
    return m.encode()


# ---- the DCC's side (host/hanota/dcc/service.py calls these) ----------------------------


def acb_ka_key(keystore: Any) -> ec.EllipticCurvePrivateKey:
    """The ACB's KA private key from the DCC's key store (`hanota pki init` makes acb.ka)."""
    from . import pki
    for org in keystore.for_entity(pki.DCC_EUI, "ka", pki.ROLE_ACB):
        key = keystore.key_for(org)
        if key is not None:
            return key
    raise PrecommandError("the DCC's key store holds no ACB key-agreement key (role 04, ka) "
                          "with its private key: it cannot MAC a command")


def supplier_keys(keystore: Any, user: bytes) -> list[bytes]:
    """The User's DS public keys (65-byte points) in the DCC's key store."""
    from cryptography.hazmat.primitives import serialization
    from . import pki
    out = []
    for org in keystore.for_entity(bytes(user), "ds"):
        if org.role == pki.ROLE_SUPPLIER:
            out.append(org.cert.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint))
    return out


def check_and_mac(signed: bytes, expected_pre: bytes, user: bytes, keystore: Any,
                  device_ka_pub: bytes) -> bytes:
    """A CV 5 Signed Pre-Command checked against the pre-command issued and the User's DS
    keys, then MAC'd: the GBCS message for the WAN."""
    keys = supplier_keys(keystore, user)
    if not keys:
        raise PrecommandError("the DCC's key store holds no Supplier DS certificate for %s"
                              % bytes(user).hex().upper())
    err: PrecommandError | None = None
    for k in keys:
        try:
            check_signed(signed, expected_pre, k)
            break
        except PrecommandError as e:
            err = e
    else:
        assert err is not None
        raise err
    return add_mac(signed, acb_ka_key(keystore), device_ka_pub)
