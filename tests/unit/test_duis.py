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
from tests.support.gpl import gpl_path

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
    ("11.3", 5, duis.E_UNSUPPORTED),
])
def test_command_variant_refused(srv, cv, code):
    e = refused(build(srv, command_variant=cv))
    assert e.code == code
    assert "CommandVariant %d" % cv in str(e)


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
