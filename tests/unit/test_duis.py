"""DUIS documents (hanota.dcc.duis): requests parse as the public templates have them, every
refusal is a DuisError with a response code and a reason naming the element, built requests
parse back to the same fields and have the template's shape, and responses/alerts read back."""
from __future__ import annotations

import base64
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st
from lxml import etree

from hanota.dcc import duis
from hanota.dcc.duis import DCC_EUI, DuisError, RequestID
from support.gpl import gpl_path

SUPPLIER = bytes.fromhex("90B3D51F30010000")
ESME = bytes.fromhex("00DB1234567890A0")
PPMID = bytes.fromhex("00DB1234567890A4")
OTHER = bytes.fromhex("00DB12345678909A")
HASH = bytes(range(32))

# The template files for the SRs hanota's DCC serves (names as duis-templates has them).
TEMPLATE_RE = re.compile(r"^(11\.[1-4]_|12\.2_|8\.2_|8\.4_|CS03|CS04|CS06_11\.3|CS08_11\.2|"
                         r"ECS52_11\.2|GCS38_11\.2)")

# One set of fields per SRV, as a User would build them.
FIELDS = {
    "11.1": dict(firmware_image=b"\x1e\xf1\xee\x0b" + bytes(200), firmware_version="0000ACDC",
                 device_ids=[ESME]),
    "11.4": dict(firmware_image=b"\x1e\xf1\xee\x0b" + bytes(100), firmware_version="00000001",
                 device_ids=[PPMID, OTHER]),
    "11.2": {},
    "11.3": dict(firmware_hash=HASH, execution_datetime=None, cancel=False),
    "8.2": dict(device_id=ESME),
    "8.4": dict(device_id=ESME, delete=True),
    "8.7.1": dict(other_device_id=OTHER),
    "8.7.2": dict(other_device_id=OTHER),
    "8.8.1": dict(other_device_id=OTHER),
    "8.8.2": dict(other_device_id=OTHER),
    "12.2": dict(device_id=PPMID, manufacturer="AB01", model="010A030B", device_type="PPMID",
                 smets_chts_version="SMETS V1.58", firmware_version="0002012F",
                 esme_variant=None, install_code=None),
}


def target_for(srv: str) -> bytes:
    return DCC_EUI if duis.SERVICES[srv].non_device else ESME


def build(srv: str, counter: int = 1000, **over) -> bytes:
    f = dict(FIELDS[srv])
    cv = over.pop("command_variant", None)
    f.update(over)
    return duis.build_request(srv, SUPPLIER, target_for(srv), counter, command_variant=cv, **f)


def refused(xml: bytes) -> DuisError:
    with pytest.raises(DuisError) as ei:
        duis.parse_request(xml)
    return ei.value


def element_paths(root: etree._Element) -> list[str]:
    """Every element's path from the root (namespace URI and local name), in document order,
    without the signature."""
    out = []

    def walk(el, path):
        for c in el:
            if not isinstance(c.tag, str) or c.tag == "{%s}Signature" % duis.DS_NS:
                continue
            p = path + "/" + c.tag
            out.append(p)
            walk(c, p)
    walk(root, root.tag)
    return out


# --- RequestID ----------------------------------------------------------------------------

def test_request_id_text_round_trip():
    rid = RequestID(SUPPLIER, ESME, 1000)
    assert str(rid) == "90-B3-D5-1F-30-01-00-00:00-DB-12-34-56-78-90-A0:1000"
    assert RequestID.parse(str(rid)) == rid
    assert RequestID.parse(str(rid).lower()) == rid
    assert rid.response_id() == RequestID(ESME, SUPPLIER, 1000)


@pytest.mark.parametrize("text, words", [
    ("90-B3-D5-1F-30-01-00-00:00-DB-12-34-56-78-90-A0", "originator:target:counter"),
    ("90-B3-D5-1F-30-01-00:00-DB-12-34-56-78-90-A0:1", "originator"),
    ("90B3D51F30010000:00-DB-12-34-56-78-90-A0:1", "originator"),
    ("90-B3-D5-1F-30-01-00-00:00-DB-12-34-56-78-90-AG:1", "target"),
    ("90-B3-D5-1F-30-01-00-00:00-DB-12-34-56-78-90-A0:-1", "counter"),
    ("90-B3-D5-1F-30-01-00-00:00-DB-12-34-56-78-90-A0:1e3", "counter"),
    ("90-B3-D5-1F-30-01-00-00:00-DB-12-34-56-78-90-A0:18446744073709551616", "64 bits"),
    ("a:b:c:d", "originator:target:counter"),
])
def test_request_id_refusals(text, words):
    with pytest.raises(DuisError) as ei:
        RequestID.parse(text)
    assert ei.value.code == duis.E_REQUEST_ID
    assert words in str(ei.value)


# --- round trips and shapes ----------------------------------------------------------------

@pytest.mark.parametrize("srv", sorted(FIELDS))
def test_built_request_parses_back(srv):
    xml = build(srv)
    req = duis.parse_request(xml)
    assert req.request_id == RequestID(SUPPLIER, target_for(srv), 1000)
    assert req.service_reference_variant == srv
    assert req.service_reference == duis.SERVICES[srv].sr
    assert req.command_variant == duis.SERVICES[srv].cv
    assert req.body == duis.SERVICES[srv].body
    assert req.fields == FIELDS[srv]
    assert req.xml == xml


def test_activate_future_dated_and_cancellation():
    at = datetime(2030, 1, 15, 9, 0, tzinfo=timezone.utc)
    req = duis.parse_request(build("11.3", execution_datetime=at))
    assert req.fields == {"firmware_hash": HASH, "execution_datetime": at, "cancel": False}
    assert b"<sr:ExecutionDateTime>2030-01-15T09:00:00.00Z</sr:ExecutionDateTime>" in \
        build("11.3", execution_datetime=at)
    xml = build("11.3", cancel=True)
    assert b"3000-12-31T00:00:00.00Z" in xml
    req = duis.parse_request(xml)
    assert req.fields["cancel"] is True
    assert req.fields["execution_datetime"] == duis.CANCEL_DATETIME


def test_offsets_become_utc():
    xml = build("11.3", execution_datetime=datetime(2030, 1, 15, 9, tzinfo=timezone.utc))
    xml = xml.replace(b"2030-01-15T09:00:00.00Z", b"2030-01-15T10:30:00+01:30")
    assert duis.parse_request(xml).fields["execution_datetime"] == \
        datetime(2030, 1, 15, 9, 0, tzinfo=timezone.utc)


_eui = st.binary(min_size=8, max_size=8)


@settings(max_examples=60, deadline=None)
@given(originator=_eui, device=_eui, counter=st.integers(0, 2**64 - 1),
       image=st.binary(min_size=1, max_size=300), version=st.integers(0, 2**32 - 1),
       ids=st.lists(_eui, min_size=1, max_size=4), h=st.binary(min_size=32, max_size=32),
       at=st.one_of(st.none(), st.datetimes(min_value=datetime(2000, 1, 1),
                                            max_value=datetime(2999, 1, 1),
                                            timezones=st.just(timezone.utc))))
def test_round_trip_property(originator, device, counter, image, version, ids, h, at):
    if device == DCC_EUI:
        device = ESME
    xml = duis.build_request("11.1", originator, DCC_EUI, counter, firmware_image=image,
                             firmware_version=version, device_ids=ids)
    req = duis.parse_request(xml)
    assert req.request_id == RequestID(originator, DCC_EUI, counter)
    assert req.fields == {"firmware_image": image, "firmware_version": "%08X" % version,
                          "device_ids": ids}
    xml = duis.build_request("11.3", originator, device, counter, firmware_hash=h,
                             execution_datetime=at)
    req = duis.parse_request(xml)
    # DUIS carries hundredths of a second
    want = None if at is None else at.replace(microsecond=at.microsecond // 10000 * 10000)
    assert req.fields == {"firmware_hash": h, "execution_datetime": want,
                          "cancel": want == duis.CANCEL_DATETIME}
    assert req.request_id.target == device


_hex = lambda n: st.binary(min_size=n, max_size=n).map(lambda b: b.hex().upper())  # noqa: E731
_text = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E)
                .filter(lambda c: c not in "<&"), min_size=1, max_size=20)


@st.composite
def any_request(draw):
    """A random (srv, originator, target, counter, fields) a User could send."""
    srv = draw(st.sampled_from(sorted(duis.SERVICES)))
    originator = draw(_eui)
    target = DCC_EUI if duis.SERVICES[srv].non_device else \
        draw(_eui.filter(lambda e: e != DCC_EUI))
    counter = draw(st.integers(0, 2**64 - 1))
    types = st.sampled_from(["ESME", "GSME", "PPMID", "HCALCS", "ALTHAN", "IHD"])
    if srv in ("11.1", "11.4"):
        f = dict(firmware_image=draw(st.binary(min_size=1, max_size=200)),
                 firmware_version=draw(_hex(4)),
                 device_ids=draw(st.lists(_eui, min_size=1, max_size=3)))
    elif srv == "11.3":
        f = dict(firmware_hash=draw(st.binary(min_size=32, max_size=32)),
                 execution_datetime=None, cancel=draw(st.booleans()))
        if f["cancel"]:
            f["execution_datetime"] = duis.CANCEL_DATETIME
    elif srv == "11.2":
        f = {}
    elif srv == "8.2":
        f = dict(device_id=draw(_eui))
    elif srv == "8.4":
        if draw(st.booleans()):
            f = dict(device_id=draw(_eui), delete=True)
        else:
            f = dict(device_id=draw(_eui), delete=False, device_type=draw(types),
                     model=draw(_hex(4)))
    elif srv == "12.2":
        f = dict(device_id=draw(_eui), manufacturer=draw(_hex(2)), model=draw(_hex(4)),
                 device_type=draw(types), smets_chts_version=draw(_text),
                 firmware_version=draw(_hex(4)),
                 esme_variant=draw(st.one_of(st.none(), _text)),
                 install_code=draw(st.one_of(st.none(), st.binary(min_size=6, max_size=18))))
    else:
        f = dict(other_device_id=draw(_eui))
    return srv, originator, target, counter, f


@settings(max_examples=150, deadline=None)
@given(any_request())
def test_every_srv_round_trips(r):
    srv, originator, target, counter, f = r
    req = duis.parse_request(duis.build_request(srv, originator, target, counter, **f))
    assert req.request_id == RequestID(originator, target, counter)
    assert req.service_reference_variant == srv
    assert req.fields == f


def test_update_inventory_update_form():
    xml = build("8.4", delete=False, device_type="althan", model="010A030B")
    assert b"<sr:DeleteDevice" not in xml
    req = duis.parse_request(xml)
    assert req.fields == {"device_id": ESME, "delete": False, "device_type": "ALTHAN",
                          "model": "010A030B"}
    e = refused(xml.replace(b"<sr:DeviceType>ALTHAN</sr:DeviceType>", b"<sr:DeleteDevice/>"
                            b"<sr:DeviceType>ALTHAN</sr:DeviceType>"))
    assert "unexpected element Body/UpdateInventory/DeviceType" in str(e)
    e = refused(re.sub(rb"<sr:DeleteDevice/>", b"", build("8.4")))
    assert "neither DeleteDevice nor anything to update" in str(e)
    e = refused(build("8.4").replace(b"<sr:DeleteDevice/>", b"<sr:DeleteDevice>yes</sr:DeleteDevice>"))
    assert "DeleteDevice must be empty" in str(e)


def test_build_refuses_bad_fields():
    with pytest.raises(ValueError, match="firmware_image"):
        duis.build_request("11.1", SUPPLIER, DCC_EUI, 1, firmware_version="00000000",
                           device_ids=[ESME])
    with pytest.raises(ValueError, match="does not take"):
        duis.build_request("8.2", SUPPLIER, DCC_EUI, 1, device_id=ESME, firmware_hash=HASH)
    with pytest.raises(ValueError, match="32 bytes"):
        duis.build_request("11.3", SUPPLIER, ESME, 1, firmware_hash=b"\x00")
    with pytest.raises(ValueError, match="unknown Service Reference Variant"):
        duis.build_request("9.9", SUPPLIER, ESME, 1)


# --- refusals ------------------------------------------------------------------------------

def test_not_xml():
    e = refused(b"<sr:Request")
    assert e.code == duis.E_MALFORMED and "not well-formed" in str(e)
    assert refused(b"").code == duis.E_MALFORMED
    assert refused("text".encode()[:0] + b"\xff\xfe").code == duis.E_MALFORMED


def test_dtd_and_entities_refused():
    xml = build("8.2")
    evil = xml.replace(b"?>\n", b'?>\n<!DOCTYPE r [<!ENTITY x "00-DB-12-34-56-78-90-A0">]>\n',
                       1).replace(b"00-DB-12-34-56-78-90-A0", b"&x;")
    e = refused(evil)
    assert e.code == duis.E_MALFORMED and "DTD" in str(e)
    ext = xml.replace(b"?>\n", b'?>\n<!DOCTYPE r SYSTEM "file:///etc/passwd">\n', 1)
    assert "DTD" in str(refused(ext))


def test_dtd_hidden_in_utf16_refused():
    """The byte check cannot see a UTF-16 DOCTYPE; the parsed document's DTD is refused too."""
    x = ('<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE r [<!ENTITY a "aaaa">'
         '<!ENTITY b "&a;&a;&a;&a;">]><sr:Request xmlns:sr="%s">&b;</sr:Request>' % duis.SR_NS)
    e = refused(x.encode("utf-16"))
    assert e.code == duis.E_MALFORMED and "DTD" in str(e)


def test_oversized_document_refused():
    e = refused(b" " * (duis.MAX_REQUEST_BYTES + 1))
    assert e.code == duis.E_MALFORMED and "limit" in str(e)


def test_wrong_root_and_namespace():
    xml = build("8.2")
    assert "root element" in str(refused(xml.replace(b"sr:Request", b"sr:Requestx")))
    other = xml.replace(duis.SR_NS.encode(), b"http://example.com/other")
    assert "root element" in str(refused(other))


def test_missing_elements_named():
    xml = build("8.2")
    e = refused(re.sub(rb"<sr:CommandVariant>.*?</sr:CommandVariant>\s*", b"", xml))
    assert e.code == duis.E_MALFORMED and "Header/CommandVariant is missing" in str(e)
    e = refused(re.sub(rb"<sr:DeviceID>.*?</sr:DeviceID>\s*", b"", xml))
    assert "Body/ReadInventory/DeviceID is missing" in str(e)
    assert e.request_id == str(RequestID(SUPPLIER, DCC_EUI, 1000)) and e.srv == "8.2"
    e = refused(re.sub(rb"<sr:Body>.*?</sr:Body>\s*", b"", xml, flags=re.S))
    assert "sr:Header, sr:Body" in str(e)


def test_unexpected_and_foreign_elements():
    xml = build("8.2")
    e = refused(xml.replace(b"</sr:ReadInventory>", b"<sr:Extra>1</sr:Extra></sr:ReadInventory>"))
    assert "unexpected element Body/ReadInventory/Extra" in str(e)
    e = refused(xml.replace(b"</sr:ReadInventory>",
                            b'<x:Extra xmlns:x="urn:x">1</x:Extra></sr:ReadInventory>'))
    assert "not in the DUIS namespace" in str(e)
    e = refused(xml.replace(b"<sr:ReadInventory>", b"<sr:ReadInventoryX>")
                .replace(b"</sr:ReadInventory>", b"</sr:ReadInventoryX>"))
    assert "Body/ReadInventory is missing (found ReadInventoryX)" in str(e)


def test_stray_text_refused():
    e = refused(build("8.2").replace(b"<sr:DeviceID>", b"junk<sr:DeviceID>"))
    assert "Body/ReadInventory holds stray text 'junk'" in str(e)
    e = refused(build("8.2").replace(b"</sr:RequestID>", b"</sr:RequestID>x"))
    assert "Header holds stray text" in str(e)
    e = refused(build("8.2").replace(b"</sr:Header>", b"</sr:Header>y"))
    assert "sr:Request holds stray text" in str(e)


def test_bad_eui_named():
    xml = build("8.7.1").replace(b"00-DB-12-34-56-78-90-9A", b"00-DB-12-34-56-78-90")
    e = refused(xml)
    assert e.code == duis.E_MALFORMED
    assert "Body/JoinServiceCritical/OtherDeviceID" in str(e) and "EUI-64" in str(e)
    xml = build("11.1").replace(b"00-DB-12-34-56-78-90-A0", b"00-DB-12-34-56-78-90-ZZ")
    assert "DeviceIDList" in str(refused(xml))


def test_bad_hash_named():
    xml = build("11.3")
    e = refused(xml.replace(HASH.hex().upper().encode(), HASH.hex().upper().encode()[:-2]))
    assert e.code == duis.E_MALFORMED
    assert "Body/ActivateFirmware/FirmwareHash" in str(e) and "64 hex digits" in str(e)


def test_bad_datetime_named():
    xml = build("11.3", execution_datetime=datetime(2030, 1, 1, tzinfo=timezone.utc))
    e = refused(xml.replace(b"2030-01-01T00:00:00.00Z", b"2030-01-01T00:00:00"))
    assert "ExecutionDateTime" in str(e) and "time zone" in str(e)
    e = refused(xml.replace(b"2030-01-01T00:00:00.00Z", b"2030-02-30T00:00:00Z"))
    assert "ExecutionDateTime" in str(e)


def test_bad_image_and_version():
    xml = build("11.1")
    img = base64.b64encode(FIELDS["11.1"]["firmware_image"])
    assert "FirmwareImage is not base64" in str(refused(xml.replace(img, b"!!" + img)))
    assert "FirmwareVersion" in str(refused(xml.replace(b"0000ACDC", b"ACDC")))


def test_unknown_srv_and_mismatched_sr():
    xml = build("8.2")
    e = refused(xml.replace(b"<sr:ServiceReferenceVariant>8.2<",
                            b"<sr:ServiceReferenceVariant>8.3<"))
    assert e.code == duis.E_UNKNOWN_SERVICE and "'8.3'" in str(e)
    e = refused(xml.replace(b"<sr:ServiceReference>8.2<", b"<sr:ServiceReference>8.4<"))
    assert e.code == duis.E_UNKNOWN_SERVICE and "does not match" in str(e)
    e = refused(build("8.7.1").replace(b"<sr:ServiceReference>8.7<",
                                       b"<sr:ServiceReference>8.7.1<"))
    assert e.code == duis.E_UNKNOWN_SERVICE


@pytest.mark.parametrize("srv, cv, code", [
    ("11.1", 1, "E12"), ("11.1", 4, "E12"), ("12.2", 3, "E12"),
    ("11.3", 1, "E12"), ("11.3", 8, "E12"), ("8.7.1", 2, "E12"),
    ("11.2", 4, "E12"), ("8.7.2", 8, "E12"), ("11.2", 9, "E12"), ("11.2", 0, "E12"),
    ("11.2", 2, "E17"), ("11.2", 3, "E17"), ("11.3", 6, "E17"), ("8.8.1", 7, "E17"),
    ("8.7.1", 5, duis.E_UNSUPPORTED),
])
def test_command_variant_refused(srv, cv, code):
    e = refused(build(srv, command_variant=cv))
    assert e.code == code
    assert "CommandVariant %d" % cv in str(e)


def test_signed_precommand_body_is_required_with_cv5():
    # SR 11.3 CV 5 is read (host/hanota/dcc/precommand.py), with its own body
    e = refused(build("11.3", command_variant=5))
    assert e.code == duis.E_MALFORMED and "SignedPreCommand" in str(e)


def test_target_rules():
    xml = duis.build_request("11.1", SUPPLIER, ESME, 5, **FIELDS["11.1"])
    e = refused(xml)
    assert e.code == duis.E_TARGET and "must be the DCC" in str(e)
    xml = duis.build_request("11.3", SUPPLIER, DCC_EUI, 5, firmware_hash=HASH)
    e = refused(xml)
    assert e.code == duis.E_TARGET and "must be the device" in str(e)


def test_request_id_in_document_refused():
    xml = build("8.2").replace(b":1000<", b":x1000<")
    e = refused(xml)
    assert e.code == duis.E_REQUEST_ID and "counter" in str(e)


def test_bad_device_type_named():
    e = refused(build("12.2", device_type="TOASTER"))
    assert "DevicePrenotification/DeviceType 'TOASTER'" in str(e)


def test_signature_allowed_only_last():
    xml = build("8.2")
    sig = b'<ds:Signature xmlns:ds="%s"/>' % duis.DS_NS.encode()
    ok = xml.replace(b"</sr:Request>", sig + b"</sr:Request>")
    assert duis.parse_request(ok).fields == FIELDS["8.2"]
    bad = xml.replace(b"<sr:Body>", sig + b"<sr:Body>")
    assert refused(bad).code == duis.E_MALFORMED


def test_error_message_carries_code_meaning():
    e = refused(build("11.2", command_variant=2))
    assert str(e).startswith("E17 (")
    assert e.code in duis.RESPONSE_CODES
    for code in duis.HANOTA_RESPONSE_CODES:
        assert code.startswith("EH") and duis.RESPONSE_CODES[code].startswith("(hanota")


# --- the public templates (GPL, local only) --------------------------------------------------

def template_files() -> list[Path]:
    d = gpl_path("duis-templates", "templates")
    files = sorted(p for p in d.glob("*.XML") if TEMPLATE_RE.match(p.name))
    assert len(files) == 20, [p.name for p in files]
    return files


def test_every_template_parses():
    seen = set()
    for p in template_files():
        req = duis.parse_request(p.read_bytes())
        seen.add(req.service_reference_variant)
        assert req.command_variant == req.service.cv, p.name
    assert seen == set(duis.SERVICES)


def test_templates_fields():
    d = gpl_path("duis-templates", "templates")
    req = duis.parse_request((d / "11.1_UPDATE_FIRMWARE_REQUEST_DUIS.XML").read_bytes())
    assert len(req.fields["firmware_image"]) == 361
    assert req.fields["device_ids"] == [ESME]
    req = duis.parse_request((d / "CS06_11.3_CANCELLATION_SUCCESS_REQUEST_DUIS.XML").read_bytes())
    assert req.fields["cancel"] is True
    req = duis.parse_request((d / "CS06_11.3_IMMEDIATE_SUCCESS_REQUEST_DUIS.XML").read_bytes())
    assert req.fields["execution_datetime"] is None and req.fields["cancel"] is False
    req = duis.parse_request((d / "12.2_DEVICE_PRE_NOTIFICATION_REQUEST_DUIS.XML").read_bytes())
    assert req.fields["device_type"] == "ESME" and req.fields["esme_variant"] == "AD"


def test_built_requests_have_the_template_shape():
    for p in template_files():
        t = duis.parse_request(p.read_bytes())
        rid = t.request_id
        built = duis.build_request(t.service_reference_variant, rid.originator, rid.target,
                                   rid.counter, **t.fields)
        assert element_paths(etree.fromstring(built)) == \
            element_paths(etree.fromstring(p.read_bytes())), p.name
        assert duis.parse_request(built).fields == t.fields, p.name
        root = etree.fromstring(built)
        assert root.get("schemaVersion") == etree.fromstring(p.read_bytes()).get("schemaVersion")


# --- responses, acknowledgements, alerts ------------------------------------------------------

AT = datetime(2026, 12, 4, 18, 0, 0, 123456, tzinfo=timezone.utc)
RID = RequestID(SUPPLIER, ESME, 1000)


def test_acknowledgement_accepted_and_refused():
    ack = duis.parse_response(duis.acknowledgement(RID, "I99", srv="11.3", at=AT))
    assert ack["kind"] == "acknowledgement"
    assert ack["request_id"] == str(RID) and ack["response_id"] is None
    assert ack["code"] == "I99" and ack["reason"] is None
    assert ack["service_reference_variant"] == "11.3"
    assert ack["datetime"] == "2026-12-04T18:00:00.123Z"
    ack = duis.parse_response(duis.acknowledgement(str(RID), "E12", "CommandVariant 1 ..."))
    assert ack["code"] == "E12" and ack["reason"] == "CommandVariant 1 ..."
    assert ack["meaning"] == duis.RESPONSE_CODES["E12"]
    # a refusal about the RequestID itself cannot echo it
    ack = duis.parse_response(duis.acknowledgement("not:a:rid", duis.E_REQUEST_ID, "bad"))
    assert ack["request_id"] is None and ack["code"] == duis.E_REQUEST_ID
    ack = duis.parse_response(duis.acknowledgement(None, duis.E_MALFORMED, "not XML"))
    assert ack["request_id"] is None and ack["reason"] == "not XML"
    with pytest.raises(ValueError):
        duis.acknowledgement(RID, "OK")


def test_acknowledgement_from_a_refusal():
    e = refused(build("11.2", command_variant=2))
    ack = duis.parse_response(duis.acknowledgement(e.request_id, e.code, e.reason, srv=e.srv))
    assert (ack["request_id"], ack["code"], ack["service_reference_variant"]) == \
        (str(RequestID(SUPPLIER, ESME, 1000)), "E17", "11.2")
    assert "local delivery" in ack["reason"]


def test_response_swaps_ends_and_keeps_counter():
    xml = duis.response(RID, "I0", "11.2", gbcs_payload=b"\xdd\x00\x01", at=AT)
    r = duis.parse_response(xml)
    assert r["kind"] == "response"
    assert r["request_id"] == str(RID)
    assert r["response_id"] == "00-DB-12-34-56-78-90-A0:90-B3-D5-1F-30-01-00-00:1000"
    assert r["gbcs_payload"] == b"\xdd\x00\x01"
    assert (r["service_reference"], r["service_reference_variant"]) == ("11.2", "11.2")
    r = duis.parse_response(duis.response(RID, "I0", "8.7.1"))
    assert (r["service_reference"], r["service_reference_variant"]) == ("8.7", "8.7.1")


def test_response_body_round_trip():
    body = {"DSPInventory": {"Device": [{"DeviceID": "00-DB-12-34-56-78-90-A0",
                                         "DeviceType": "ESME"},
                                        {"DeviceID": "00-DB-12-34-56-78-90-A4",
                                         "DeviceType": "PPMID"}]}}
    r = duis.parse_response(duis.response(str(RID), "I0", "8.2", body=body))
    assert r["body"] == body
    r = duis.parse_response(duis.response(RID, "E4", "11.3", reason="not a Responsible Supplier"))
    assert r["code"] == "E4" and r["reason"] == "not a Responsible Supplier"
    with pytest.raises(ValueError, match="not both"):
        duis.response(RID, "I0", "11.2", body={"A": "1"}, gbcs_payload=b"x")
    with pytest.raises(ValueError, match="element name"):
        duis.response(RID, "I0", "11.2", body={"not a name": "1"})


def test_future_dated_alert():
    r = duis.parse_response(duis.future_dated_alert(RID, "11.3", 0x8F67, b"\xdf\x09\x03"))
    assert r["kind"] == "future_dated_alert"
    assert r["alert_code"] == "8F67" and r["gbcs_payload"] == b"\xdf\x09\x03"
    assert r["request_id"] == str(RID) and r["service_reference_variant"] == "11.3"


def test_device_alert():
    xml = duis.alert(ESME, SUPPLIER, 2000, 0x8F8A, gbcs_payload=b"\xdf", request_id=RID,
                     detail={"outcome": "distributed", "version": "0000ACDC"}, at=AT)
    r = duis.parse_response(xml)
    assert r["kind"] == "device_alert"
    assert r["alert_code"] == "8F8A" and r["gbcs_payload"] == b"\xdf"
    assert r["response_id"] == "00-DB-12-34-56-78-90-A0:90-B3-D5-1F-30-01-00-00:2000"
    assert r["request_id"] == str(RID) and r["code"] == "I0"
    assert r["detail"] == {"outcome": "distributed", "version": "0000ACDC"}
    assert r["body"] == {}
    with pytest.raises(ValueError, match="16 bits"):
        duis.alert(ESME, SUPPLIER, 1, 0x18F66)
    with pytest.raises(ValueError, match="needs originator"):
        duis.alert(ESME, None, 1, 0x8F66)


def test_dcc_alerts_both_forms():
    r = duis.parse_response(duis.alert(DCC_EUI, SUPPLIER, 3, "N24", dcc_alert={
        "UpdateHANDeviceLogResult": {"UpdateHANDeviceLogServiceRequestID": str(RID)}}))
    assert r["kind"] == "dcc_alert" and r["alert_code"] == "N24"
    assert r["body"] == {"DCCAlert": {"UpdateHANDeviceLogResult": {
        "UpdateHANDeviceLogServiceRequestID": str(RID)}}}
    root = etree.fromstring(duis.alert(DCC_EUI, SUPPLIER, 3, "N24", dcc_alert={"X": "1"}))
    assert root.find(".//{%s}X" % duis.RA_NS) is not None
    # unaddressed: one document for several Users (the service's form)
    r = duis.parse_response(duis.alert(request_id=RID, code="I0", srv="11.1",
                                       body={"outcome": "distributed"}))
    assert (r["kind"], r["alert_code"], r["request_id"], r["response_id"]) == \
        ("dcc_alert", "NH1", str(RID), None)
    assert r["body"]["DCCAlert"] == {"ServiceReferenceVariant": "11.1", "outcome": "distributed"}
    r = duis.parse_response(duis.alert(request_id=None, code="I0", srv=None,
                                       body={"device": "00DB1234567890A0"}))
    assert r["alert_code"] == "NH3" and r["request_id"] is None
    for code in ("N24", "NH1", "NH2", "NH3"):
        assert code in duis.DCC_ALERT_CODES


def test_parse_response_refusals():
    with pytest.raises(DuisError, match="sr:Response"):
        duis.parse_response(build("8.2"))
    xml = duis.response(RID, "I0", "11.2")
    with pytest.raises(DuisError, match="ResponseCode"):
        duis.parse_response(re.sub(rb"<sr:ResponseCode>.*?</sr:ResponseCode>", b"", xml))
    with pytest.raises(DuisError, match="GBCSPayload is not base64"):
        duis.parse_response(duis.response(RID, "I0", "11.2", gbcs_payload=b"x")
                            .replace(b"eA==", b"e!A=="))


def test_signed_documents_still_parse():
    """A request or response signed by xmlsig parses as before (the signature is the root's
    last child); the signature is xmlsig's to check."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    from hanota.dcc import xmlsig
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(7)
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=1))
            .sign(key, hashes.SHA256()))
    signed = xmlsig.sign(build("11.3"), key, cert)
    assert duis.parse_request(signed).fields == FIELDS["11.3"]
    assert duis.describe(signed)["signed"] is True
    r = duis.parse_response(xmlsig.sign(duis.response(RID, "I0", "11.3"), key, cert))
    assert r["signed"] is True and r["code"] == "I0"


def test_dccboxed_samples():
    """DCC Boxed's own documents (GPL, local only): a signed response read back."""
    p = gpl_path("duis-templates", "test", "data", "ECS52_11.2_SUCCESS_RESPONSE_DUIS.XML")
    r = duis.parse_response(p.read_bytes())
    assert (r["kind"], r["code"], r["service_reference_variant"], r["signed"]) == \
        ("response", "I0", "11.2", True)
    assert r["gbcs_payload"][:1] == b"\xdd"
    assert r["response_id"].split(":")[2] == r["request_id"].split(":")[2]


# --- the CLI -------------------------------------------------------------------------------

def cli(*args: str, input: bytes | None = None) -> tuple[int, str]:
    import click
    from click.testing import CliRunner
    from hanota.dcc import cli_duis  # noqa: F401  (adds the commands to the group)
    from hanota.dcc.cli import duis as group
    g = click.Group("hanota")
    g.add_command(group)
    r = CliRunner().invoke(g, ["duis", *args], input=input, catch_exceptions=False)
    return r.exit_code, r.output


def test_cli_build_and_show(tmp_path):
    out = tmp_path / "a.xml"
    code, _ = cli("build", "11.3", "--from", "90-B3-D5-1F-30-01-00-00", "--to",
                  "00DB1234567890A0", "--counter", "42", "--hash", HASH.hex(), "--at",
                  "2030-01-15T09:00:00Z", "-o", str(out))
    assert code == 0
    req = duis.parse_request(out.read_bytes())
    assert req.request_id == RequestID(SUPPLIER, ESME, 42)
    assert req.fields["execution_datetime"] == datetime(2030, 1, 15, 9, tzinfo=timezone.utc)
    code, text = cli("show", str(out))
    assert code == 0 and "service: Activate Firmware" in text and HASH.hex().upper() in text
    code, text = cli("show", "--json", str(out))
    import json
    info = json.loads(text)
    assert info["valid"] and info["fields"]["firmware_hash"] == HASH.hex().upper()
    assert info["request_id"] == str(RequestID(SUPPLIER, ESME, 42))


def test_cli_build_firmware_takes_the_ota_version(tmp_path):
    image = tmp_path / "fw.zigbee"
    header = bytearray(60)
    header[0:4] = b"\x1e\xf1\xee\x0b"
    header[14:18] = (0xACDCACDC).to_bytes(4, "little")
    image.write_bytes(bytes(header) + b"payload")
    out = tmp_path / "u.xml"
    code, _ = cli("build", "11.1", "--from", "90B3D51F30010000", "--image", str(image),
                  "--device", "00-DB-12-34-56-78-90-A0", "--device", "00DB1234567890A4",
                  "--counter", "9", "-o", str(out))
    assert code == 0
    req = duis.parse_request(out.read_bytes())
    assert req.request_id.target == DCC_EUI
    assert req.fields == {"firmware_image": image.read_bytes(), "firmware_version": "ACDCACDC",
                          "device_ids": [ESME, PPMID]}


def test_cli_show_invalid_exits_1(tmp_path):
    bad = tmp_path / "b.xml"
    bad.write_bytes(build("11.3", command_variant=1))
    code, text = cli("show", str(bad))
    assert code == 1 and "E12" in text and "CommandVariant 1" in text
    code, text = cli("show", "--json", str(bad))
    assert code == 1 and '"code": "E12"' in text


def test_cli_from_certificate(tmp_path):
    """--from takes the entity ID out of the User's certificate (what the DCC checks)."""
    from hanota.dcc import pki
    pki.init(tmp_path / "pki")
    cert = tmp_path / "pki" / "supplier-a.xml.cert.pem"
    entity = pki.describe(pki.load_cert(cert.read_bytes())).entity_id
    out = tmp_path / "r.xml"
    code, _ = cli("build", "8.2", "--from", str(cert), "--device", "00DB1234567890A0",
                  "--counter", "3", "-o", str(out))
    assert code == 0
    assert duis.parse_request(out.read_bytes()).request_id.originator == entity
    code, text = cli("build", "8.2", "--from", str(out), "--device", "00DB1234567890A0")
    assert code != 0 and "no entity ID" in text


def test_cli_build_usage_errors():
    code, text = cli("build", "11.3", "--from", "90B3D51F30010000", "--hash", HASH.hex())
    assert code != 0 and "--to" in text
    code, text = cli("build", "8.2", "--from", "90B3D51F30010000")
    assert code != 0 and "--device" in text
    code, text = cli("build", "8.2", "--from", "90B3D51F3001")
    assert code != 0 and "EUI-64" in text


def test_cli_show_templates_and_responses():
    d = gpl_path("duis-templates", "templates")
    for p in sorted(d.glob("*.XML")):
        if TEMPLATE_RE.match(p.name):
            code, text = cli("show", str(p))
            assert code == 0, (p.name, text)
    p = gpl_path("duis-templates", "test", "data", "ECS52_11.2_SUCCESS_RESPONSE_DUIS.XML")
    code, text = cli("show", str(p))
    assert code == 0 and "code: I0" in text and "kind: response" in text
