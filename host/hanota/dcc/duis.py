"""DUIS documents: the service requests Users send the DCC, and the acknowledgements, responses
and alerts the DCC sends back, as XML shaped exactly as the public DUIS templates have them.

A request is untrusted input from the network. `parse_request` reads it with a parser that
refuses DTDs and entities and fetches nothing, walks it element by element in the template's
order, and turns every way it can be wrong into a `DuisError` carrying the DUIS response code a
User would get and a reason naming the element. It does not verify the XML signature (that is
`xmlsig`) nor apply rules that need state (the RequestID counter, Responsible Supplier, CPL:
that is `service`); it applies the header rules that need none:

- RequestID is `originator:target:counter`, each EUI-64 eight hyphen-separated hex pairs and
  the counter decimal (0 .. 2**64-1, GBCS carries it in 8 bytes);
- the ServiceReferenceVariant is one hanota's DCC serves (`SERVICES`) and the
  ServiceReference is the one it belongs to;
- the CommandVariant is valid for the SRV: 8 (non-device service) for 11.1, 11.4, 8.2, 8.4
  and 12.2; 4 (critical: transform into a pre-command) for 11.3, 8.7.1 and 8.8.1; 1 (send
  over the SM WAN) for 11.2, 8.7.2 and 8.8.2. The local-delivery variants 2, 3, 6 and 7 are
  valid DUIS but not offered (E17), and 5 (a Signed Pre-Command) has a different body that
  hanota does not read yet;
- a non-device service is addressed to the DCC (`DCC_EUI`), a device service to a device
  (never the DCC).

The request fields (`DuisRequest.fields`), per SRV, snake_case:

| SRV | body | fields |
|---|---|---|
| 11.1, 11.4 | UpdateFirmware, UpdatePPMIDFirmware | firmware_image (bytes: the whole OTA file), firmware_version (str, 8 hex digits), device_ids (list[bytes]) |
| 11.2 | ReadFirmwareVersion (empty) | none: the device is `request_id.target` |
| 11.3 | ActivateFirmware | firmware_hash (bytes, 32), execution_datetime (datetime, UTC, or None: now), cancel (bool: the DUIS cancellation value 3000-12-31T00:00:00Z) |
| 8.2 | ReadInventory | device_id (bytes) |
| 8.4 | UpdateInventory | device_id (bytes), delete (bool: DeleteDevice), and/or device_type, manufacturer, model, firmware_version (str; a hanota reading of the update choice, the template shows only DeleteDevice) |
| 8.7.1, 8.7.2, 8.8.1, 8.8.2 | JoinServiceCritical, JoinServiceNonCritical, UnjoinServiceCritical, UnjoinServiceNonCritical | other_device_id (bytes); the device joined to is `request_id.target` |
| 12.2 | DevicePrenotification | device_id (bytes), manufacturer (str, 4 hex), model (str, 8 hex), device_type (str, one of store.DEVICE_TYPES), smets_chts_version (str), firmware_version (str, 8 hex), esme_variant (str or None), install_code (bytes or None: a hanota extension, last, absent from the template) |

EUI-64s are bytes, most significant first (as the RequestID writes them). Hex text is kept
upper case. `build_request` writes exactly these fields back, in the template's element order,
so that `parse_request(build_request(...))` gives them again.

Responses (`response`, `acknowledgement`) and alerts (`alert`, `future_dated_alert`) follow the
DCC Boxed samples (duis-templates `test/data/ECS52_11.2_SUCCESS_RESPONSE_DUIS.XML`, duis-parser
`test/resources/acknowledgement-error.xml`, and duis-parser's DeviceAlertMessage /
DCCAlertMessage / FutureDatedDeviceAlertMessage body types): root `sr:Response`, a Header with
RequestID, ResponseID (target and originator swapped, same counter), ResponseCode and
ResponseDateTime (UTC, milliseconds), then the Body. A refusal's reason, which DUIS has no
element for, travels as `h:Reason` (namespace `HANOTA_NS`) at the end of the Header, where
DUIS readers that pick the header fields they know skip it. They are unsigned here; the DCC
signs them (`xmlsig.sign`).
"""
from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, NoReturn

from lxml import etree

from ..errors import HanotaError

SR_NS = "http://www.dccinterface.co.uk/ServiceUserGateway"
RA_NS = "http://www.dccinterface.co.uk/ResponseAndAlert"
DS_NS = "http://www.w3.org/2000/09/xmldsig#"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
HANOTA_NS = "urn:hanota:duis"
SCHEMA_VERSION = "5.4"   # what the public templates carry

DCC_EUI = bytes.fromhex("90B3D51F30000002")   # the DCC (Access Control Broker) in DCC Boxed

# The DUIS cancellation value of a future-dated Activate Firmware (the 11.3 CANCELLATION
# template); the DCC maps it onto GBCS's 9999-12-31T23:59:59Z (gbcs_duis.md section 8).
CANCEL_DATETIME = datetime(3000, 12, 31, tzinfo=timezone.utc)

# Largest request parse_request reads (a base64 OTA file of a few MB plus the envelope). lxml
# without huge_tree also caps one text node at 10 MB, so a FirmwareImage over about 7.5 MB of
# binary is refused either way.
MAX_REQUEST_BYTES = 16 * 1024 * 1024

# --- response codes ------------------------------------------------------------------------

# code -> meaning. Source of the DUIS codes: the DUIS "DCC Systems Response Codes" table
# (SEC Appendix AD, DCC User Interface Specification) as reproduced at
# https://iananthony3000.wixsite.com/smets2reference-1/copy-of-esme-sr-list (read through the
# pages search on 2026-12-04; the specification's own text was not reachable from here, and
# the reproduction was readable up to E30 only). E65 is seen on an unsigned acknowledgement
# in duis-parser's test/resources/acknowledgement-error.xml; its meaning is not in any source
# reachable here. The I0/I99 pattern (acknowledgement first, then the response) is DCC Boxed's
# (dccboxed-nodered-nodes README).
DUIS_RESPONSE_CODES: dict[str, str] = {
    "I0": "Success: the request has had a successful outcome",
    "I99": "Acknowledgement: the request was accepted and passed access control (or a "
           "non-device request succeeded with no data to return)",
    "E1": "Failed authorisation: invalid User / User Role (not a valid SEC party and role)",
    "E2": "Failed authorisation: User Role not permitted to send this Service Reference",
    "E3": "Failed authorisation: User status not permitted to send this Service Reference",
    "E4": "Failed authorisation: User Role not authorised for the Device (at the required "
          "date and time)",
    "E5": "Failed authorisation: Device status incompatible with the Service Reference",
    "E11": "Failed validation: Service Reference not compatible with the Device's type",
    "E12": "Failed validation: Command Variant not applicable to the request type",
    "E13": "Failed validation: request type not valid for the URL",
    "E17": "Failed authorisation: not available for local command services (local delivery)",
    "E19": "Failed authorisation: Device does not exist (Device ID invalid)",
    "E20": "Communications failure: unable to communicate with the Device",
    "E21": "Communications failure: no response received from the Device",
    "E30": "Time-out: future-dated command",
    "E65": "(seen on a DCC Boxed acknowledgement; meaning not found in the sources)",
}

# hanota's own codes, for refusals whose DUIS code no reachable source gives. They start with
# "EH" (E: an error, as DUIS's I/W/E prefixes go; H: hanota) so that nobody takes them for
# DUIS codes; a User's tooling that treats any E... as an error does the right thing.
E_MALFORMED = "EH1"
E_REQUEST_ID = "EH2"
E_REPLAY = "EH3"
E_UNKNOWN_SERVICE = "EH4"
E_TARGET = "EH5"
E_SIGNATURE = "EH6"
E_ORIGINATOR = "EH7"
E_IMAGE = "EH8"
E_ALTHAN_JOIN = "EH9"
E_OTA_UNAVAILABLE = "EH10"
E_UNSUPPORTED = "EH11"
E_SUPERSEDED = "EH12"
E_NO_KA_KEY = "EH13"
HANOTA_RESPONSE_CODES: dict[str, str] = {
    E_MALFORMED: "(hanota) malformed request: not well-formed XML, a DTD or entity, the wrong "
                 "root or namespace, or a missing, unexpected or ill-formed element",
    E_REQUEST_ID: "(hanota) RequestID is not originator:target:counter",
    E_REPLAY: "(hanota) RequestID counter not greater than the User's last one (a replay)",
    E_UNKNOWN_SERVICE: "(hanota) unknown Service Reference or Service Reference Variant, or "
                       "the two disagree",
    E_TARGET: "(hanota) wrong target: a non-device service must be addressed to the DCC, a "
              "device service to a device",
    E_SIGNATURE: "(hanota) XML signature missing or invalid (placeholder, digest or signature "
                 "mismatch, unknown signer)",
    E_ORIGINATOR: "(hanota) RequestID originator is not the signer's entity ID",
    E_IMAGE: "(hanota) firmware image refused: not a well-formed OTA file, not on the Central "
             "Products List for the device's model, or outside its hardware range",
    E_ALTHAN_JOIN: "(hanota, for MP170's code) an Alt HAN device cannot be joined with the "
                   "Join Service (8.7.1 / 8.7.2); MP170's own code was not found",
    E_OTA_UNAVAILABLE: "(hanota) OTA unavailable for the device (Alt HAN device after a Trust "
                       "Centre Swap-Out)",
    E_UNSUPPORTED: "(hanota) valid DUIS that hanota's DCC does not serve",
    E_SUPERSEDED: "(hanota) the request was superseded by a later one for the same device "
                  "before it completed",
    E_NO_KA_KEY: "(hanota) the device has no key-agreement public key in the DCC's "
                 "registration data: the DCC cannot MAC a GBCS command to it",
}
RESPONSE_CODES: dict[str, str] = {**DUIS_RESPONSE_CODES, **HANOTA_RESPONSE_CODES}

# GBCS alert codes carried by DeviceAlertMessage / FutureDatedDeviceAlertMessage (gbcs_duis.md
# section 6, read in gbcs-parser src/util.ts).
ALERT_CODES: dict[int, str] = {
    0x8F66: "Future-dated HAN command actioned",
    0x8F67: "Future-dated HAN command not actioned",
    0x8F89: "Firmware transfer failed (CCS08)",
    0x8F8A: "Firmware transfer succeeded (CCS08)",
    0x8F8B: "Read firmware version alert (CS09)",
    0x8F72: "Firmware verification successful",
    0x8F1B: "Firmware verification failed at power-on",
    0x8F1C: "Firmware verification failed",
    0x8F43: "Change in the executing firmware version",
}

# DCC alert codes (DCCAlertMessage/DCCAlertCode). N24 is seen in duis-parser's tests carrying
# an UpdateHANDeviceLogResult; the DUIS list itself was not reachable. hanota's own DCC alerts
# start with "NH".
DCC_ALERT_CODES: dict[str, str] = {
    "N24": "Update HAN Device Log result",
    "NH1": "(hanota) the outcome of another User's request on a device this User is "
           "Responsible Supplier for (e.g. the other Supplier's firmware update)",
    "NH2": "(hanota) OTA unavailable after a Trust Centre Swap-Out: pending request ended",
    "NH3": "(hanota) an alert from the Comms Hub about a device, without a GBCS payload",
}


class DuisError(HanotaError):
    """A request the DCC refuses: `code` is the DUIS response code the User gets, `reason`
    the human-readable cause naming the element. `request_id` and `srv` are set when the
    header got that far, so the acknowledgement can carry them."""

    reason = "duis"

    def __init__(self, code: str, reason: str, *, request_id: str | None = None,
                 srv: str | None = None):
        meaning = RESPONSE_CODES.get(code, "")
        super().__init__("%s%s: %s" % (code, " (%s)" % meaning if meaning else "", reason),
                         reason=reason)
        self.code = code
        self.request_id = request_id
        self.srv = srv


# --- identities -------------------------------------------------------------------------

_EUI_RE = re.compile(r"^[0-9A-Fa-f]{2}(-[0-9A-Fa-f]{2}){7}$")
_COUNTER_MAX = (1 << 64) - 1


def eui_text(eui: bytes) -> str:
    """An EUI-64 as DUIS writes it: eight upper-case hex pairs joined by hyphens."""
    if len(eui) != 8:
        raise ValueError("an EUI-64 is 8 bytes, not %d" % len(eui))
    return "-".join("%02X" % b for b in eui)


def parse_eui(text: str, what: str = "EUI-64") -> bytes:
    """A DUIS EUI-64 (`00-DB-12-34-56-78-90-A0`, either case) as bytes; ValueError naming
    `what` otherwise."""
    t = (text or "").strip()
    if not _EUI_RE.match(t):
        raise ValueError("%s %r is not an EUI-64 (eight hex pairs joined by hyphens, such as "
                         "00-DB-12-34-56-78-90-A0)" % (what, text))
    return bytes.fromhex(t.replace("-", ""))


def eui_arg(text: str) -> bytes:
    """An EUI-64 typed by a person: DUIS hyphens, colons, or 16 hex digits."""
    t = text.strip().replace(":", "-")
    if re.fullmatch(r"[0-9A-Fa-f]{16}", t):
        return bytes.fromhex(t)
    return parse_eui(t)


@dataclass(frozen=True)
class RequestID:
    """A DUIS RequestID: who sent it, to whom (a device, or the DCC for non-device services),
    and the User's counter, which the DCC requires to rise strictly per User."""

    originator: bytes
    target: bytes
    counter: int

    def __str__(self) -> str:
        return "%s:%s:%d" % (eui_text(self.originator), eui_text(self.target), self.counter)

    @classmethod
    def parse(cls, text: str) -> RequestID:
        """`originator:target:counter`; DuisError (E_REQUEST_ID) naming what is wrong."""
        t = (text or "").strip()
        parts = t.split(":")
        if len(parts) != 3:
            raise DuisError(E_REQUEST_ID, "RequestID %r is not originator:target:counter" % text)
        try:
            originator = parse_eui(parts[0], "RequestID originator")
            target = parse_eui(parts[1], "RequestID target")
        except ValueError as e:
            raise DuisError(E_REQUEST_ID, str(e)) from None
        if not re.fullmatch(r"[0-9]{1,20}", parts[2]):
            raise DuisError(E_REQUEST_ID, "RequestID counter %r is not a decimal number"
                            % parts[2])
        counter = int(parts[2])
        if counter > _COUNTER_MAX:
            raise DuisError(E_REQUEST_ID, "RequestID counter %d does not fit in 64 bits"
                            % counter)
        return cls(originator, target, counter)

    def response_id(self) -> RequestID:
        """The ResponseID of a response to this request: ends swapped, same counter."""
        return RequestID(self.target, self.originator, self.counter)


# --- the services hanota's DCC serves ---------------------------------------------------------

@dataclass(frozen=True)
class Service:
    """One Service Reference Variant: its body element and how it travels. `critical` and
    `non_device` are from duis-parser's src/duis-request-matrix.json (the DUIS request
    matrix); `cv` is the CommandVariant of the request the DCC accepts (the templates')."""

    srv: str
    sr: str
    name: str
    body: str
    critical: bool
    non_device: bool

    @property
    def cv(self) -> int:
        return 8 if self.non_device else 4 if self.critical else 1


SERVICES: dict[str, Service] = {s.srv: s for s in (
    Service("11.1", "11.1", "Update Firmware", "UpdateFirmware", False, True),
    Service("11.2", "11.2", "Read Firmware Version", "ReadFirmwareVersion", False, False),
    Service("11.3", "11.3", "Activate Firmware", "ActivateFirmware", True, False),
    Service("11.4", "11.4", "Update PPMID Firmware", "UpdatePPMIDFirmware", False, True),
    Service("8.2", "8.2", "Read Inventory", "ReadInventory", False, True),
    Service("8.4", "8.4", "Update Inventory", "UpdateInventory", False, True),
    Service("8.7.1", "8.7", "Join Service (Critical)", "JoinServiceCritical", True, False),
    Service("8.7.2", "8.7", "Join Service (Non-Critical)", "JoinServiceNonCritical", False,
            False),
    Service("8.8.1", "8.8", "Unjoin Service (Critical)", "UnjoinServiceCritical", True, False),
    Service("8.8.2", "8.8", "Unjoin Service (Non-Critical)", "UnjoinServiceNonCritical", False,
            False),
    Service("12.2", "12.2", "Device Pre-notification", "DevicePrenotification", False, True),
)}


def service(srv: str) -> Service:
    """The Service for an SRV, or DuisError (E_UNKNOWN_SERVICE)."""
    s = SERVICES.get(srv)
    if s is None:
        raise DuisError(E_UNKNOWN_SERVICE, "Service Reference Variant %r is not one hanota's "
                        "DCC serves (%s)" % (srv, ", ".join(SERVICES)), srv=srv)
    return s


def check_command_variant(svc: Service, cv: int, request_id: str | None = None) -> None:
    """The CommandVariant rule for one SRV (see the module docstring)."""
    if cv == svc.cv:
        return
    rid = {"request_id": request_id, "srv": svc.srv}
    if svc.non_device:
        raise DuisError("E12", "CommandVariant %d is not valid for SR %s (%s), a non-device "
                        "service: it takes 8" % (cv, svc.srv, svc.name), **rid)
    valid = (4, 5, 6, 7) if svc.critical else (1, 2, 3)
    if cv not in valid:
        raise DuisError("E12", "CommandVariant %d is not valid for SR %s (%s), a %s service: "
                        "it takes %d (DUIS also has %s for %s)"
                        % (cv, svc.srv, svc.name, "critical" if svc.critical else "non-critical",
                           svc.cv, ", ".join(map(str, valid[1:])),
                           "Signed Pre-Commands" if svc.critical else "local delivery"),
                        **rid)
    if cv in (2, 3, 6, 7):
        raise DuisError("E17", "CommandVariant %d asks for local delivery, which hanota's DCC "
                        "does not offer; use %d" % (cv, svc.cv), **rid)
    if svc.srv in SIGNED_PRECOMMAND_SRVS:
        return  # CV 5: the Signed Pre-Command of an earlier CV 4 request
    raise DuisError(E_UNSUPPORTED, "CommandVariant %d (a Signed Pre-Command) is read by "
                    "hanota's DCC for SR %s only; submit the request with CommandVariant 4"
                    % (cv, ", ".join(SIGNED_PRECOMMAND_SRVS)), **rid)


# SRs whose CV 4 request the DCC answers with a Pre-Command and whose CV 5 Signed Pre-Command
# it sends (GBCS on the HAN: CS06 to an HCALCS). A CV 5 request's body is, as DCC Boxed's
# Node-RED nodes build it: sr:SignedPreCommand / sr:GBCSPayload (base64 of the pre-command
# with the User's signature appended: signature length 0x40 || r || s); its RequestID is the
# CV 4 request's (host/hanota/dcc/precommand.py).
SIGNED_PRECOMMAND_SRVS = ("11.3",)


# --- request parsing -------------------------------------------------------------------------

@dataclass
class DuisRequest:
    """A parsed DUIS request (see the module docstring for `fields` per SRV)."""

    request_id: RequestID
    command_variant: int
    service_reference: str
    service_reference_variant: str
    body: str
    fields: dict[str, Any]
    xml: bytes = field(repr=False)

    @property
    def service(self) -> Service:
        return SERVICES[self.service_reference_variant]


def _parser() -> etree.XMLParser:
    # A request is untrusted: no DTD loading or validation, no entity expansion, no network,
    # no huge-tree mode (lxml's limits on depth and text size stay on).
    return etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False,
                           load_dtd=False, dtd_validation=False, remove_pis=True)


def parse_xml(xml: bytes) -> etree._Element:
    """The root element of an untrusted DUIS document, or DuisError (E_MALFORMED)."""
    if not isinstance(xml, (bytes, bytearray)):
        raise DuisError(E_MALFORMED, "a DUIS document is bytes, not %s" % type(xml).__name__)
    if len(xml) > MAX_REQUEST_BYTES:
        raise DuisError(E_MALFORMED, "document is %d bytes, over the %d-byte limit"
                        % (len(xml), MAX_REQUEST_BYTES))
    if b"<!DOCTYPE" in xml or b"<!ENTITY" in xml:
        raise DuisError(E_MALFORMED, "document has a DTD or entity declaration, which a DUIS "
                        "request never has")
    try:
        root = etree.fromstring(bytes(xml), _parser())
    except etree.XMLSyntaxError as e:
        raise DuisError(E_MALFORMED, "not well-formed XML: %s" % e) from None
    doc = root.getroottree().docinfo
    if doc.internalDTD is not None or doc.doctype:
        raise DuisError(E_MALFORMED, "document has a DTD, which a DUIS request never has")
    return root


def _q(local: str, ns: str = SR_NS) -> str:
    return "{%s}%s" % (ns, local)


def _local(el: etree._Element) -> str:
    return etree.QName(el).localname


def _name(el: etree._Element) -> str:
    """sr:Header, ds:Signature ... for messages; the full {ns}tag for other namespaces."""
    q = etree.QName(el)
    prefix = {SR_NS: "sr:", DS_NS: "ds:", RA_NS: "ra:"}.get(q.namespace or "")
    return prefix + q.localname if prefix else el.tag


def _elements(parent: etree._Element) -> list[etree._Element]:
    """Child elements (comments and processing instructions skipped: the templates have
    comments inside Header and Signature)."""
    return [c for c in parent if isinstance(c.tag, str)]


class _Reader:
    """Reads a parent's children in order, as the templates lay them out, raising DuisError
    naming the element for a missing, unexpected or ill-formed one."""

    def __init__(self, parent: etree._Element, path: str, rid: str | None = None,
                 srv: str | None = None):
        self.children = _elements(parent)
        self.i = 0
        self.path = path
        self.rid = rid
        self.srv = srv
        for c in self.children:
            if etree.QName(c).namespace != SR_NS:
                self.fail("element %s inside %s is not in the DUIS namespace %s"
                          % (c.tag, path, SR_NS))
        if self.children:
            stray = [(parent.text or "").strip()] + [(c.tail or "").strip() for c in parent]
            if any(stray):
                self.fail("%s holds stray text %r between its elements"
                          % (path, next(t for t in stray if t)[:40]))

    def fail(self, msg: str, code: str = E_MALFORMED) -> NoReturn:
        raise DuisError(code, msg, request_id=self.rid, srv=self.srv)

    def peek(self) -> str | None:
        return _local(self.children[self.i]) if self.i < len(self.children) else None

    def element(self, local: str, optional: bool = False) -> etree._Element | None:
        if self.peek() == local:
            el = self.children[self.i]
            self.i += 1
            return el
        if optional:
            return None
        found = self.peek()
        self.fail("%s/%s is missing%s" % (self.path, local,
                                          " (found %s)" % found if found else ""))

    def need(self, local: str) -> str:
        """The text of a required element (DuisError when missing or empty)."""
        t = self.text(local)
        assert t is not None
        return t

    def text(self, local: str, optional: bool = False, empty_ok: bool = False) -> str | None:
        el = self.element(local, optional)
        if el is None:
            return None
        if _elements(el):
            self.fail("%s/%s must hold text, not elements" % (self.path, local))
        t = (el.text or "").strip()
        if not t and not empty_ok:
            self.fail("%s/%s is empty" % (self.path, local))
        return t

    def empty(self, local: str, optional: bool = False) -> bool:
        el = self.element(local, optional)
        if el is None:
            return False
        if _elements(el) or (el.text or "").strip():
            self.fail("%s/%s must be empty" % (self.path, local))
        return True

    def end(self) -> None:
        if self.i < len(self.children):
            self.fail("unexpected element %s/%s" % (self.path, _local(self.children[self.i])))

    # typed values
    def eui(self, local: str) -> bytes:
        t = self.need(local)
        try:
            return parse_eui(t, "%s/%s" % (self.path, local))
        except ValueError as e:
            self.fail(str(e))

    def hexstr(self, local: str, digits: int, optional: bool = False) -> str | None:
        t = self.text(local, optional)
        if t is None:
            return None
        if not re.fullmatch(r"[0-9A-Fa-f]{%d}" % digits, t):
            self.fail("%s/%s %r is not %d hex digits" % (self.path, local, t, digits))
        return t.upper()


_DT_RE = re.compile(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(\.\d{1,9})?"
                    r"(Z|[+-]\d\d:\d\d)$")


def parse_datetime(text: str, what: str = "ExecutionDateTime") -> datetime:
    """An xs:dateTime with a time zone (`2030-01-15T09:00:00.00Z`) as an aware UTC datetime;
    ValueError naming `what`. A time without a zone is refused: the DCC cannot know whose
    local time it is."""
    m = _DT_RE.match((text or "").strip())
    if not m:
        raise ValueError("%s %r is not a date-time with a time zone, such as "
                         "2030-01-15T09:00:00.00Z" % (what, text))
    y, mo, d, h, mi, s = (int(m.group(i)) for i in range(1, 7))
    frac = m.group(7) or ""
    us = int((frac[1:] + "000000")[:6]) if frac else 0
    zone = m.group(8)
    try:
        if zone == "Z":
            tz = timezone.utc
        else:
            sign = 1 if zone[0] == "+" else -1
            tz = timezone(sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
        return datetime(y, mo, d, h, mi, s, us, tzinfo=tz).astimezone(timezone.utc)
    except ValueError as e:
        raise ValueError("%s %r is not a valid date-time: %s" % (what, text, e)) from None


def format_datetime(dt: datetime) -> str:
    """A UTC xs:dateTime with hundredths, as the templates write ExecutionDateTime."""
    if dt.tzinfo is None:
        raise ValueError("a date-time for DUIS needs a time zone")
    u = dt.astimezone(timezone.utc)
    return u.strftime("%Y-%m-%dT%H:%M:%S") + ".%02dZ" % (u.microsecond // 10000)


def _device_types() -> tuple[str, ...]:
    from .store import DEVICE_TYPES
    return tuple(DEVICE_TYPES)


def _read_firmware(r: _Reader) -> dict[str, Any]:
    text = r.need("FirmwareImage")
    try:
        image = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        r.fail("%s/FirmwareImage is not base64" % r.path)
    if not image:
        r.fail("%s/FirmwareImage is empty" % r.path)
    version = r.hexstr("FirmwareVersion", 8)
    ids_text = r.need("DeviceIDList")
    ids = []
    for t in ids_text.split():
        try:
            ids.append(parse_eui(t, "%s/DeviceIDList entry" % r.path))
        except ValueError as e:
            r.fail(str(e))
    return {"firmware_image": image, "firmware_version": version, "device_ids": ids}


def _read_activate(r: _Reader) -> dict[str, Any]:
    t = r.text("ExecutionDateTime", optional=True)
    at = None
    if t is not None:
        try:
            at = parse_datetime(t, "%s/ExecutionDateTime" % r.path)
        except ValueError as e:
            r.fail(str(e))
    h = r.hexstr("FirmwareHash", 64) or ""
    return {"firmware_hash": bytes.fromhex(h), "execution_datetime": at,
            "cancel": at == CANCEL_DATETIME}


def _read_device_type(r: _Reader, local: str, optional: bool = False) -> str | None:
    t = r.text(local, optional)
    if t is None:
        return None
    types = _device_types()
    if t.upper() not in types:
        r.fail("%s/%s %r is not a device type of the inventory's table (%s)"
               % (r.path, local, t, ", ".join(types)))
    return t.upper()


def _read_prenotification(r: _Reader) -> dict[str, Any]:
    f: dict[str, Any] = {"device_id": r.eui("DeviceID"),
                         "manufacturer": r.hexstr("DeviceManufacturer", 4),
                         "model": r.hexstr("DeviceModel", 8),
                         "device_type": _read_device_type(r, "DeviceType"),
                         "smets_chts_version": r.need("SMETSCHTSVersion"),
                         "firmware_version": r.hexstr("FirmwareVersion", 8),
                         "esme_variant": r.text("ESMEVariant", optional=True)}
    ic = r.text("InstallCode", optional=True)
    if ic is not None and not re.fullmatch(r"(?:[0-9A-Fa-f]{2}){6,18}", ic):
        r.fail("%s/InstallCode %r is not 6 to 18 bytes of hex" % (r.path, ic))
    f["install_code"] = bytes.fromhex(ic) if ic is not None else None
    return f


def _read_update_inventory(r: _Reader) -> dict[str, Any]:
    f: dict[str, Any] = {"device_id": r.eui("DeviceID")}
    f["delete"] = r.empty("DeleteDevice", optional=True)
    if not f["delete"]:
        upd = {"device_type": _read_device_type(r, "DeviceType", optional=True),
               "manufacturer": r.hexstr("DeviceManufacturer", 4, optional=True),
               "model": r.hexstr("DeviceModel", 8, optional=True),
               "firmware_version": r.hexstr("FirmwareVersion", 8, optional=True)}
        upd = {k: v for k, v in upd.items() if v is not None}
        if not upd:
            r.fail("%s has neither DeleteDevice nor anything to update" % r.path)
        f.update(upd)
    return f


_BODY_READERS = {
    "11.1": _read_firmware,
    "11.4": _read_firmware,
    "11.2": lambda r: {},
    "11.3": _read_activate,
    "8.2": lambda r: {"device_id": r.eui("DeviceID")},
    "8.4": _read_update_inventory,
    "8.7.1": lambda r: {"other_device_id": r.eui("OtherDeviceID")},
    "8.7.2": lambda r: {"other_device_id": r.eui("OtherDeviceID")},
    "8.8.1": lambda r: {"other_device_id": r.eui("OtherDeviceID")},
    "8.8.2": lambda r: {"other_device_id": r.eui("OtherDeviceID")},
    "12.2": _read_prenotification,
}


def parse_request(xml: bytes) -> DuisRequest:
    """A DUIS request, checked as the module docstring says; DuisError otherwise.

    The signature is not verified here, only allowed as the root's last child."""
    root = parse_xml(xml)
    if root.tag != _q("Request"):
        raise DuisError(E_MALFORMED, "root element is %s, not sr:Request in %s"
                        % (root.tag, SR_NS))
    top = _elements(root)
    names = [c.tag for c in top]
    if names[-1:] == [_q("Signature", DS_NS)]:
        top = top[:-1]
    if [c.tag for c in top] != [_q("Header"), _q("Body")]:
        raise DuisError(E_MALFORMED, "sr:Request must hold sr:Header, sr:Body and an optional "
                        "ds:Signature, in that order; it holds %s"
                        % (", ".join(_name(c) for c in _elements(root)) or "nothing"))
    if any([(root.text or "").strip()] + [(c.tail or "").strip() for c in root]):
        raise DuisError(E_MALFORMED, "sr:Request holds stray text between its elements")
    header, body = top
    h = _Reader(header, "Header")
    rid_text = h.need("RequestID")
    request_id = RequestID.parse(rid_text)
    rid = str(request_id)
    h.rid = rid
    cv_text = h.need("CommandVariant")
    if not re.fullmatch(r"[0-9]{1,3}", cv_text):
        h.fail("Header/CommandVariant %r is not a number" % cv_text)
    cv = int(cv_text)
    sr = h.need("ServiceReference")
    srv = h.need("ServiceReferenceVariant")
    h.end()
    svc = SERVICES.get(srv)
    if svc is None:
        raise DuisError(E_UNKNOWN_SERVICE, "Header/ServiceReferenceVariant %r is not one "
                        "hanota's DCC serves (%s)" % (srv, ", ".join(SERVICES)),
                        request_id=rid, srv=srv)
    if sr != svc.sr:
        raise DuisError(E_UNKNOWN_SERVICE, "Header/ServiceReference %r does not match "
                        "ServiceReferenceVariant %s (whose reference is %s)" % (sr, srv, svc.sr),
                        request_id=rid, srv=srv)
    if not 1 <= cv <= 8:
        raise DuisError("E12", "Header/CommandVariant %d is not a DUIS CommandVariant (1 to 8)"
                        % cv, request_id=rid, srv=srv)
    check_command_variant(svc, cv, rid)
    if svc.non_device and request_id.target != DCC_EUI:
        raise DuisError(E_TARGET, "SR %s (%s) is a non-device service: the RequestID target "
                        "must be the DCC, %s, not %s" % (srv, svc.name, eui_text(DCC_EUI),
                                                         eui_text(request_id.target)),
                        request_id=rid, srv=srv)
    if not svc.non_device and request_id.target == DCC_EUI:
        raise DuisError(E_TARGET, "SR %s (%s) is a device service: the RequestID target must "
                        "be the device, not the DCC" % (srv, svc.name), request_id=rid, srv=srv)
    b = _Reader(body, "Body", rid, srv)
    if cv == 5:
        el = b.element("SignedPreCommand")
        assert el is not None
        b.end()
        r = _Reader(el, "Body/SignedPreCommand", rid, srv)
        try:
            payload = _b64(r.text("GBCSPayload"), "Body/SignedPreCommand/GBCSPayload")
        except DuisError as e:
            r.fail(e.reason)
        r.end()
        return DuisRequest(request_id, cv, sr, srv, "SignedPreCommand",
                           {"signed_precommand": payload}, bytes(xml))
    el = b.element(svc.body)
    assert el is not None
    b.end()
    r = _Reader(el, "Body/%s" % svc.body, rid, srv)
    if srv == "11.2":
        if _elements(el) or (el.text or "").strip():
            r.fail("Body/ReadFirmwareVersion must be empty")
    fields = _BODY_READERS[srv](r)
    r.end()
    return DuisRequest(request_id, cv, sr, srv, svc.body, fields, bytes(xml))


# --- building requests -----------------------------------------------------------------------

_NSMAP_REQUEST = {"ds": DS_NS, "sr": SR_NS, "xsi": XSI_NS}


def _sub(parent: etree._Element, local: str, text: str | None = None) -> etree._Element:
    el = etree.SubElement(parent, _q(local))
    if text is not None:
        el.text = text
    return el


def _serialize(root: etree._Element) -> bytes:
    etree.indent(root, space="  ")
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8") + b"\n"


def _need(fields: dict, name: str, srv: str):
    if fields.get(name) is None:
        raise ValueError("SR %s needs %s" % (srv, name))
    return fields[name]


def _hex_field(fields: dict, name: str, digits: int, srv: str, optional: bool = False):
    v = fields.get(name)
    if v is None:
        if optional:
            return None
        raise ValueError("SR %s needs %s" % (srv, name))
    if isinstance(v, int):
        v = "%0*X" % (digits, v)
    if isinstance(v, (bytes, bytearray)):
        v = bytes(v).hex()
    v = str(v).upper()
    if not re.fullmatch(r"[0-9A-F]{%d}" % digits, v):
        raise ValueError("%s %r is not %d hex digits" % (name, v, digits))
    return v


def _eui_field(v, name: str) -> str:
    if isinstance(v, str):
        v = eui_arg(v)
    if not isinstance(v, (bytes, bytearray)) or len(v) != 8:
        raise ValueError("%s must be an 8-byte EUI-64" % name)
    return eui_text(bytes(v))


def build_request(srv: str, originator: bytes, target: bytes, counter: int, *,
                  command_variant: int | None = None, **fields: Any) -> bytes:
    """An unsigned DUIS request shaped as the public template for `srv` (element order,
    namespaces, schemaVersion), with the fields `parse_request` gives back (module
    docstring). `command_variant` defaults to the one the DCC accepts for the SRV (and may
    be set to test refusals). ValueError for a missing or ill-formed field, naming it."""
    svc = SERVICES.get(srv)
    if svc is None:
        raise ValueError("unknown Service Reference Variant %r (known: %s)"
                         % (srv, ", ".join(SERVICES)))
    if not 0 <= int(counter) <= _COUNTER_MAX:
        raise ValueError("counter %d is outside 0 .. 2**64-1" % counter)
    rid = RequestID(bytes(eui_arg(originator) if isinstance(originator, str) else originator),
                    bytes(eui_arg(target) if isinstance(target, str) else target), int(counter))
    root = etree.Element(_q("Request"), nsmap=_NSMAP_REQUEST)
    root.set("schemaVersion", SCHEMA_VERSION)
    header = _sub(root, "Header")
    _sub(header, "RequestID", str(rid))
    _sub(header, "CommandVariant", str(svc.cv if command_variant is None else command_variant))
    _sub(header, "ServiceReference", svc.sr)
    _sub(header, "ServiceReferenceVariant", svc.srv)
    body = _sub(_sub(root, "Body"), svc.body)
    known: set[str] = set()
    if srv in ("11.1", "11.4"):
        known = {"firmware_image", "firmware_version", "device_ids"}
        image = _need(fields, "firmware_image", srv)
        if not isinstance(image, (bytes, bytearray)) or not image:
            raise ValueError("firmware_image must be the OTA file's bytes")
        _sub(body, "FirmwareImage", base64.b64encode(bytes(image)).decode("ascii"))
        _sub(body, "FirmwareVersion", _hex_field(fields, "firmware_version", 8, srv))
        ids = _need(fields, "device_ids", srv)
        if isinstance(ids, (bytes, bytearray, str)):
            ids = [ids]
        if not ids:
            raise ValueError("device_ids is empty")
        _sub(body, "DeviceIDList", " ".join(_eui_field(d, "device_ids entry") for d in ids))
    elif srv == "11.3":
        known = {"firmware_hash", "execution_datetime", "cancel"}
        at = fields.get("execution_datetime")
        if fields.get("cancel"):
            at = CANCEL_DATETIME
        if at is not None:
            _sub(body, "ExecutionDateTime", format_datetime(at))
        h = _need(fields, "firmware_hash", srv)
        if isinstance(h, str):
            h = bytes.fromhex(h)
        if len(h) != 32:
            raise ValueError("firmware_hash must be 32 bytes (SHA-256), not %d" % len(h))
        _sub(body, "FirmwareHash", bytes(h).hex().upper())
    elif srv == "8.2":
        known = {"device_id"}
        _sub(body, "DeviceID", _eui_field(_need(fields, "device_id", srv), "device_id"))
    elif srv == "8.4":
        known = {"device_id", "delete", "device_type", "manufacturer", "model",
                 "firmware_version"}
        _sub(body, "DeviceID", _eui_field(_need(fields, "device_id", srv), "device_id"))
        if fields.get("delete"):
            _sub(body, "DeleteDevice")
        else:
            n = 0
            if fields.get("device_type") is not None:
                _sub(body, "DeviceType", str(fields["device_type"]).upper())
                n += 1
            for name, local, digits in (("manufacturer", "DeviceManufacturer", 4),
                                        ("model", "DeviceModel", 8),
                                        ("firmware_version", "FirmwareVersion", 8)):
                v = _hex_field(fields, name, digits, srv, optional=True)
                if v is not None:
                    _sub(body, local, v)
                    n += 1
            if not n:
                raise ValueError("SR 8.4 needs delete=True or something to update")
    elif srv in ("8.7.1", "8.7.2", "8.8.1", "8.8.2"):
        known = {"other_device_id"}
        _sub(body, "OtherDeviceID", _eui_field(_need(fields, "other_device_id", srv),
                                               "other_device_id"))
    elif srv == "12.2":
        known = {"device_id", "manufacturer", "model", "device_type", "smets_chts_version",
                 "firmware_version", "esme_variant", "install_code"}
        _sub(body, "DeviceID", _eui_field(_need(fields, "device_id", srv), "device_id"))
        _sub(body, "DeviceManufacturer", _hex_field(fields, "manufacturer", 4, srv))
        _sub(body, "DeviceModel", _hex_field(fields, "model", 8, srv))
        _sub(body, "DeviceType", str(_need(fields, "device_type", srv)).upper())
        _sub(body, "SMETSCHTSVersion", str(_need(fields, "smets_chts_version", srv)))
        _sub(body, "FirmwareVersion", _hex_field(fields, "firmware_version", 8, srv))
        if fields.get("esme_variant") is not None:
            _sub(body, "ESMEVariant", str(fields["esme_variant"]))
        ic = fields.get("install_code")
        if ic is not None:
            _sub(body, "InstallCode", (bytes.fromhex(ic) if isinstance(ic, str) else
                                       bytes(ic)).hex().upper())
    extra = set(k for k, v in fields.items() if v is not None) - known
    if extra:
        raise ValueError("SR %s does not take %s" % (srv, ", ".join(sorted(extra))))
    return _serialize(root)


# --- responses and alerts ------------------------------------------------------------------

_NSMAP_RESPONSE = {"sr": SR_NS, "ra": RA_NS, "ds": DS_NS}


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _response_datetime(at: datetime | None) -> str:
    u = (at or _now()).astimezone(timezone.utc)
    return u.strftime("%Y-%m-%dT%H:%M:%S") + ".%03dZ" % (u.microsecond // 1000)


def _rid_text(rid: RequestID | str | None) -> str | None:
    if rid is None:
        return None
    if isinstance(rid, RequestID):
        return str(rid)
    return str(RequestID.parse(rid))


def _check_code(code: str) -> None:
    if not re.fullmatch(r"[IWE][A-Z]{0,2}[0-9]{1,6}", code or ""):
        raise ValueError("response code %r is not a DUIS-style code (I0, I99, E12, EH1 ...)"
                         % code)


def _response_root(request_id: str | None, response_id: str | None, code: str,
                   at: datetime | None, reason: str | None) -> tuple[etree._Element,
                                                                     etree._Element]:
    _check_code(code)
    root = etree.Element(_q("Response"), nsmap=_NSMAP_RESPONSE)
    root.set("schemaVersion", SCHEMA_VERSION)
    header = _sub(root, "Header")
    if request_id is not None:
        _sub(header, "RequestID", request_id)
    if response_id is not None:
        _sub(header, "ResponseID", response_id)
    _sub(header, "ResponseCode", code)
    _sub(header, "ResponseDateTime", _response_datetime(at))
    if reason:
        r = etree.SubElement(header, "{%s}Reason" % HANOTA_NS, nsmap={"h": HANOTA_NS})
        r.text = reason
    return root, _sub(root, "Body")


def _put(parent: etree._Element, name: str, value: Any, ns: str) -> None:
    """A body value as elements: dict -> children, list -> the element repeated, bytes ->
    base64 text, bool -> true/false, None -> an empty element, else its text."""
    if isinstance(value, list):
        for v in value:
            _put(parent, name, v, ns)
        return
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", str(name)):
        raise ValueError("%r cannot be an XML element name" % (name,))
    el = etree.SubElement(parent, "{%s}%s" % (ns, name))
    if isinstance(value, dict):
        for k, v in value.items():
            _put(el, k, v, ns)
    elif isinstance(value, (bytes, bytearray)):
        el.text = base64.b64encode(bytes(value)).decode("ascii")
    elif isinstance(value, bool):
        el.text = "true" if value else "false"
    elif value is not None:
        el.text = str(value)


def _srv_pair(srv: str) -> tuple[str, str]:
    svc = SERVICES.get(srv)
    return (svc.sr if svc else ".".join(srv.split(".")[:2]), srv)


def acknowledgement(request_id: RequestID | str | None, code: str,
                    reason: str | None = None, *, srv: str | None = None,
                    at: datetime | None = None) -> bytes:
    """The DCC's synchronous answer to a submitted request: I99 (accepted) or the refusal's
    code, with `reason` (as `h:Reason`) for a refusal. As DCC Boxed's acknowledgement has it
    (duis-parser acknowledgement-error.xml): RequestID (when the request got that far), no
    ResponseID, and a ResponseMessage naming the SR when known. A RequestID that does not
    parse (the refusal may be about it) is left out rather than echoed."""
    try:
        rid = _rid_text(request_id)
    except DuisError:
        rid = None
    root, body = _response_root(rid, None, code, at, reason)
    if srv:
        sr, srv = _srv_pair(srv)
        msg = _sub(body, "ResponseMessage")
        _sub(msg, "ServiceReference", sr)
        _sub(msg, "ServiceReferenceVariant", srv)
    return _serialize(root)


def response(request_id: RequestID | str, code: str, srv: str, *, body: dict | None = None,
             gbcs_payload: bytes | None = None, reason: str | None = None,
             at: datetime | None = None) -> bytes:
    """A DUIS response to a request: ResponseID is the RequestID with its ends swapped and
    the same counter; ResponseMessage holds ServiceReference(Variant), then either the
    GBCSPayload (base64 of the whole GBCS message) or `body` (element name -> value, e.g.
    {"DSPInventory": {...}}; see `_put`), in the sr namespace."""
    rid = request_id if isinstance(request_id, RequestID) else RequestID.parse(request_id)
    if body and gbcs_payload is not None:
        raise ValueError("a response carries a GBCSPayload or a body, not both")
    root, b = _response_root(str(rid), str(rid.response_id()), code, at, reason)
    sr, srv = _srv_pair(srv)
    msg = _sub(b, "ResponseMessage")
    _sub(msg, "ServiceReference", sr)
    _sub(msg, "ServiceReferenceVariant", srv)
    if gbcs_payload is not None:
        _sub(msg, "GBCSPayload", base64.b64encode(gbcs_payload).decode("ascii"))
    for k, v in (body or {}).items():
        _put(msg, k, v, SR_NS)
    return _serialize(root)


def future_dated_alert(request_id: RequestID | str, srv: str, alert_code: int,
                       gbcs_payload: bytes, *, at: datetime | None = None) -> bytes:
    """The outcome of a future-dated command (8F66 actioned / 8F67 not actioned), which DUIS
    returns as a response to the original request: ResponseMessage/FutureDatedDeviceAlert-
    Message {FutureDatedAlertCode, GBCSPayload} (duis-parser's body types)."""
    return response(request_id, "I0", srv, at=at, body={"FutureDatedDeviceAlertMessage": {
        "FutureDatedAlertCode": "%04X" % alert_code, "GBCSPayload": bytes(gbcs_payload)}})


def alert(originator: bytes | None = None, recipient: bytes | None = None,
          counter: int | None = None, code: int | str | None = None, *,
          gbcs_payload: bytes | None = None, dcc_alert: dict | None = None,
          detail: dict | None = None, request_id: RequestID | str | None = None,
          srv: str | None = None, body: dict | None = None, alert_code: str | None = None,
          at: datetime | None = None) -> bytes:
    """An alert for a User, as DUIS carries them (duis-parser's body types). Two call forms.

    Addressed (originator, recipient and counter given; the Header's ResponseID is
    `originator:recipient:counter`, the alert's own counter, and ResponseCode I0, as DCC Boxed
    delivers alerts):

    - a device alert, `code` an int (the GBCS alert code, e.g. 0x8F8A, see ALERT_CODES):
      Body/DeviceAlertMessage {AlertCode (4 hex digits), GBCSPayload}; originator = device;
    - a DCC alert, `code` a str (e.g. "N24", see DCC_ALERT_CODES; originator the DCC):
      Body/DCCAlertMessage {DCCAlertCode, DCCAlert} with `dcc_alert` (or `body`) as the
      DCCAlert's children in the ResponseAndAlert (ra) namespace.

    Unaddressed (no originator: one document queued for several Users): a DCC alert whose
    `code` is the ResponseCode (default I0), `alert_code` the DCCAlertCode (default NH1 when
    it reports on `request_id`, else NH3), and `body` (plus `srv` as ServiceReferenceVariant)
    the DCCAlert's children; no ResponseID.

    hanota additions, in its own namespace so DUIS readers skip them: `detail` (h:Detail,
    e.g. a Comms Hub outcome while the HAN has no GBCS payload yet), and a RequestID when the
    alert reports on a request (a firmware distribution outcome for an 11.1)."""
    if originator is None:
        if recipient is not None or counter is not None or gbcs_payload is not None:
            raise ValueError("an unaddressed alert takes no recipient, counter or GBCSPayload")
        response_code = "I0" if code is None else str(code)
        dcc_code = alert_code or ("NH1" if request_id is not None else "NH3")
        children = dict(body or dcc_alert or {})
        if srv is not None:
            children = {"ServiceReferenceVariant": srv, **children}
        root, b = _response_root(_rid_text(request_id), None, response_code, at, None)
        msg = _dcc_alert(b, dcc_code, children)
    else:
        if recipient is None or counter is None or code is None:
            raise ValueError("an addressed alert needs originator, recipient, counter and code")
        rid = RequestID(bytes(originator), bytes(recipient), int(counter))
        root, b = _response_root(_rid_text(request_id), str(rid), "I0", at, None)
        if isinstance(code, int):
            if not 0 <= code <= 0xFFFF:
                raise ValueError("a GBCS alert code is 16 bits, not %#x" % code)
            if body or dcc_alert:
                raise ValueError("a device alert carries a GBCSPayload, not a body")
            msg = _sub(b, "DeviceAlertMessage")
            _sub(msg, "AlertCode", "%04X" % code)
            if gbcs_payload is not None:
                _sub(msg, "GBCSPayload", base64.b64encode(gbcs_payload).decode("ascii"))
        else:
            if gbcs_payload is not None:
                raise ValueError("a DCC alert has no GBCSPayload")
            msg = _dcc_alert(b, code, dict(dcc_alert or body or {}))
    if detail:
        h = etree.SubElement(msg, "{%s}Detail" % HANOTA_NS, nsmap={"h": HANOTA_NS})
        for k, v in detail.items():
            _put(h, k, v, HANOTA_NS)
    return _serialize(root)


def _dcc_alert(body: etree._Element, code: str, children: dict) -> etree._Element:
    if not re.fullmatch(r"[A-Z]{1,2}[0-9]{1,4}", code or ""):
        raise ValueError("DCC alert code %r is not like N24" % code)
    msg = _sub(body, "DCCAlertMessage")
    _sub(msg, "DCCAlertCode", code)
    d = _sub(msg, "DCCAlert")
    for k, v in children.items():
        _put(d, k, v, RA_NS)
    return msg


def _tree(el: etree._Element) -> Any:
    """An element's content as text (leaf) or dict (children; a repeated name becomes a
    list), keys being local names."""
    kids = _elements(el)
    if not kids:
        return (el.text or "").strip()
    out: dict[str, Any] = {}
    for c in kids:
        k, v = _local(c), _tree(c)
        if k in out:
            if not isinstance(out[k], list):
                out[k] = [out[k]]
            out[k].append(v)
        else:
            out[k] = v
    return out


def _b64(text: str | None, what: str) -> bytes | None:
    if text is None:
        return None
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise DuisError(E_MALFORMED, "%s is not base64" % what) from None


def parse_response(xml: bytes) -> dict[str, Any]:
    """A DUIS response, acknowledgement or alert, for Users (tests, demo, report):

    {"kind": "acknowledgement" | "response" | "device_alert" | "dcc_alert" |
             "future_dated_alert",
     "request_id": str | None, "response_id": str | None, "code": str, "meaning": str,
     "datetime": str, "reason": str | None, "service_reference": str | None,
     "service_reference_variant": str | None, "gbcs_payload": bytes | None,
     "alert_code": str | None, "body": dict (the rest of the body, local names),
     "detail": dict | None, "signed": bool}

    DuisError (E_MALFORMED) for a document that is not one. The signature is not checked."""
    root = parse_xml(xml)
    if root.tag != _q("Response"):
        raise DuisError(E_MALFORMED, "root element is %s, not sr:Response" % _name(root))
    header = root.find(_q("Header"))
    body = root.find(_q("Body"))
    if header is None or body is None:
        raise DuisError(E_MALFORMED, "sr:Response needs sr:Header and sr:Body")

    def h(local: str) -> str | None:
        el = header.find(_q(local))
        return None if el is None else (el.text or "").strip()

    code = h("ResponseCode")
    if not code:
        raise DuisError(E_MALFORMED, "Header/ResponseCode is missing")
    reason_el = header.find("{%s}Reason" % HANOTA_NS)
    out: dict[str, Any] = {
        "kind": "response", "request_id": h("RequestID"), "response_id": h("ResponseID"),
        "code": code, "meaning": RESPONSE_CODES.get(code, "unknown code"),
        "datetime": h("ResponseDateTime"),
        "reason": None if reason_el is None else (reason_el.text or "").strip(),
        "service_reference": None, "service_reference_variant": None,
        "gbcs_payload": None, "alert_code": None, "body": {}, "detail": None,
        "signed": root.find("{%s}Signature" % DS_NS) is not None,
    }
    kids = _elements(body)
    msg = kids[0] if kids else None
    if msg is None:
        if out["response_id"] is not None:
            raise DuisError(E_MALFORMED, "Body of a response is empty")
        out["kind"] = "acknowledgement"   # a refusal before the SR was known
        return out
    name = _local(msg)
    rest: dict[str, Any] = {}
    for c in _elements(msg):
        if etree.QName(c).namespace == HANOTA_NS:
            if _local(c) == "Detail":
                out["detail"] = _tree(c) or {}
            continue
        k = _local(c)
        v = _tree(c)
        if k in rest:
            rest[k] = rest[k] if isinstance(rest[k], list) else [rest[k]]
            rest[k].append(v)
        else:
            rest[k] = v
    if name == "ResponseMessage":
        out["service_reference"] = rest.pop("ServiceReference", None)
        out["service_reference_variant"] = rest.pop("ServiceReferenceVariant", None)
        out["gbcs_payload"] = _b64(rest.pop("GBCSPayload", None), "GBCSPayload")
        fd = rest.get("FutureDatedDeviceAlertMessage")
        if isinstance(fd, dict):
            out["kind"] = "future_dated_alert"
            out["alert_code"] = fd.get("FutureDatedAlertCode")
            out["gbcs_payload"] = _b64(fd.get("GBCSPayload"), "GBCSPayload")
        elif out["response_id"] is None:
            out["kind"] = "acknowledgement"
    elif name == "DeviceAlertMessage":
        out["kind"] = "device_alert"
        out["alert_code"] = rest.pop("AlertCode", None)
        out["gbcs_payload"] = _b64(rest.pop("GBCSPayload", None), "GBCSPayload")
    elif name == "DCCAlertMessage":
        out["kind"] = "dcc_alert"
        out["alert_code"] = rest.pop("DCCAlertCode", None)
    else:
        raise DuisError(E_MALFORMED, "Body/%s is not a ResponseMessage, DeviceAlertMessage or "
                        "DCCAlertMessage" % name)
    out["body"] = rest
    return out


def describe(xml: bytes) -> dict[str, Any]:
    """Any DUIS document (a request, or a response/acknowledgement/alert) as plain fields, for
    `hanota duis show`: requests as parse_request reads them (with "document": "request"),
    responses as parse_response does (with "document": "response")."""
    root = parse_xml(xml)
    if root.tag == _q("Response"):
        return {"document": "response", **parse_response(xml)}
    req = parse_request(xml)
    return {"document": "request", "request_id": str(req.request_id),
            "originator": eui_text(req.request_id.originator),
            "target": eui_text(req.request_id.target), "counter": req.request_id.counter,
            "command_variant": req.command_variant,
            "service_reference": req.service_reference,
            "service_reference_variant": req.service_reference_variant,
            "service": req.service.name, "body": req.body, "fields": req.fields,
            "signed": root.find("{%s}Signature" % DS_NS) is not None}
