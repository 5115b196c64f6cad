"""Issue 12's acceptance with the public DUIS templates, end to end on virtual boards.

The six firmware templates of SmartDCCInnovation/duis-templates (SR 11.1, 11.4, the three
11.3 variants and the CS08 11.2) are POSTed to a running DCC (`DccRunner`) as they are
published: their placeholder signature is refused. Then the same template documents, taken
as they are and changed only where a real User changes them (with lxml on the parsed template,
not rebuilt by hanota's builder: the RequestID, the device IDs, the firmware image and its
hash, the execution time), signed by supplier-a's XML key, run end to end: a PPMID on a
virtual ESP32 and an HCALCS on a virtual nRF52840, both real device code over emulated
flash, behind one Comms Hub (`HubRunner(dcc_url=)`) on the DCC's WAN. The HCALCS is
GBCS-commissioned (deployed with supplier-a's DS certificate and the ACB's KA certificate, its
KA key recorded with `hanota dcc registry set-ka`), so each 11.3 template (CommandVariant 4)
gets the DCC's Pre-Command, which supplier-a signs and returns as CommandVariant 5, and the
board checks the CS06 itself. Every final DUIS response is fetched, its signature verified
with the DCC's certificate, and its code and fields (or the board's GBCS payload) asserted.

The templates are GPL: read locally through `support.gpl` (`make gpl`), never committed; the
module skips, naming `make gpl`, without them.
"""
from __future__ import annotations

import base64
import re
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from lxml import etree

from hanota import deploy, flasher, fwbuild, images
from click.testing import CliRunner

from hanfw import gbcs
from hanota.cli import cli as cli_main
from hanota.dcc import duis, pki, precommand, xmlsig
from hanota.dcc.store import DccStore
from hanota.dcc.wan import eui_hex
from hanota.hub import HubDB
from support.gpl import gpl_path
from support.hubfixtures import fast_options

pytestmark = pytest.mark.timeout(600)

MPAN = "1100000000042"
V1, V2, V3 = 0x00010000, 0x00020000, 0x00030000
SETTINGS = {"query_interval": 1, "health_timeout": 20, "block_timeout_ms": 800}

T_11_1 = "11.1_UPDATE_FIRMWARE_REQUEST_DUIS.XML"
T_11_4 = "11.4_UPDATE_PPMID_FIRMWARE_REQUEST_DUIS.XML"
T_11_3_NOW = "CS06_11.3_IMMEDIATE_SUCCESS_REQUEST_DUIS.XML"
T_11_3_LATER = "CS06_11.3_FUTURE_DATED_SUCCESS_REQUEST_DUIS.XML"
T_11_3_CANCEL = "CS06_11.3_CANCELLATION_SUCCESS_REQUEST_DUIS.XML"
T_11_2 = "CS08_11.2_SUCCESS_REQUEST_DUIS.XML"
TEMPLATES = [T_11_1, T_11_4, T_11_3_NOW, T_11_3_LATER, T_11_3_CANCEL, T_11_2]

SR = duis.SR_NS
NS = {"sr": SR, "ds": duis.DS_NS}
DCC_TEXT = duis.eui_text(duis.DCC_EUI)


def template(name: str) -> bytes:
    return gpl_path("duis-templates", "templates", name).read_bytes()


def outcome(resp: dict) -> dict:
    """The Comms Hub's outcome as the DUIS response body carries it."""
    return resp["body"]["CommsHubOutcome"]


# ---------------------------------------------------------------- a User editing a template

def _one(root: etree._Element, path: str) -> etree._Element:
    found = root.findall(path, NS)
    assert len(found) == 1, "the template has %d %s, not one" % (len(found), path)
    return found[0]


# What a User fills in (everything else stays as the template has it; checked)
USER_FIELDS = {"RequestID", "DeviceIDList", "FirmwareImage", "FirmwareVersion",
               "FirmwareHash", "ExecutionDateTime"}


def _fields(root: etree._Element) -> list[etree._Element]:
    """The document's elements outside ds:Signature, in document order."""
    return list(root.iter("{%s}*" % SR))


def as_user(doc: bytes, user, *, counter: int, device: bytes, image: bytes | None = None,
            version: int | None = None, image_hash: bytes | None = None,
            at: datetime | None = None) -> bytes:
    """The template document as supplier-a sends it: parsed, the fields a real User fills in
    changed in place, the placeholder signature removed, signed with supplier-a's key.

    RequestID: the originator becomes supplier-a's entity ID, the target the board's EUI,
    unless the template addresses the DCC (11.1 and 11.4 are non-device services), and the
    counter a fresh one. Device IDs (DeviceIDList) become the board's EUI; FirmwareImage our
    signed OTA file in base64 (one line, as the template has it); FirmwareVersion its file
    version; FirmwareHash its Manufacturer Image Hash (upper-case hex, as the template);
    ExecutionDateTime (future-dated only; the cancellation keeps the DUIS cancellation value)
    the given time in the template's own format."""
    root = etree.fromstring(doc, etree.XMLParser(resolve_entities=False, no_network=True))
    rid = _one(root, "sr:Header/sr:RequestID")
    _, target, _ = rid.text.split(":")
    # The CS08 11.2 template's originator is the DCC itself (90-B3-D5-1F-30-00-00-02, DCC
    # Boxed's own entity ID) reading a PPMID's version. A Supplier's 11.2 names the Supplier:
    # the DCC takes a RequestID's originator only from the one who signed it, and only a
    # Responsible Supplier may read a device, so supplier-a writes its own entity ID here as
    # in every other template (whose originator is DCC Boxed's sample Supplier).
    originator = duis.eui_text(user.eui)
    if target != DCC_TEXT:
        target = duis.eui_text(device)
    rid.text = "%s:%s:%d" % (originator, target, counter)
    body = _one(root, "sr:Body")
    for el in body.iter("{%s}DeviceIDList" % SR, "{%s}DeviceID" % SR):
        el.text = duis.eui_text(device)
    if image is not None:
        _one(body, ".//sr:FirmwareImage").text = base64.b64encode(image).decode("ascii")
        _one(body, ".//sr:FirmwareVersion").text = "%08X" % version
    if image_hash is not None:
        el = _one(body, ".//sr:FirmwareHash")
        assert re.fullmatch(r"[0-9A-F]{64}", el.text)
        el.text = image_hash.hex().upper()
    if at is not None:
        el = _one(body, ".//sr:ExecutionDateTime")
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.00Z", el.text), el.text
        el.text = at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + ".00Z"
    ours, theirs = _fields(root), _fields(etree.fromstring(doc))
    assert [e.tag for e in ours] == [e.tag for e in theirs]
    changed = {etree.QName(el).localname for el, was in zip(ours, theirs)
               if (el.text, dict(el.attrib)) != (was.text, dict(was.attrib))}
    assert changed <= USER_FIELDS, changed - USER_FIELDS
    sig = _one(root, "ds:Signature")
    assert xmlsig.PLACEHOLDER in etree.tostring(sig).decode()
    sig.getprevious().tail = sig.tail  # the layout as if it had never been there
    root.remove(sig)
    unsigned = b'<?xml version="1.0" encoding="UTF-8"?>\n' + etree.tostring(root,
                                                                            encoding="UTF-8")
    return xmlsig.sign(unsigned, user.key, user.cert)


class User:
    """supplier-a: its XML signing key and certificate, entity ID and RequestID counter."""

    def __init__(self, pki_dir: Path, name: str = "supplier-a"):
        self.key, self.cert = pki.signing_pair(pki_dir, name + ".xml")
        self.eui = pki.describe(self.cert).entity_id
        self.counter = 5000

    def next(self) -> int:
        self.counter += 1
        return self.counter


def signed_cs06(world, pre_xml: bytes) -> dict:
    """supplier-a's CommandVariant 5: the DCC's Pre-Command (a CS06) signed with its DS key,
    sent with the same RequestID; its acknowledgement (I99)."""
    rid, srv, pre = precommand.from_response(pre_xml)
    ds = pki.load_key((world.pki_dir / "supplier-a.ds.key.pem").read_bytes())
    u = world.user
    ack = world.post(xmlsig.sign(precommand.signed_request(rid, precommand.sign(pre, ds), srv),
                                 u.key, u.cert))
    assert ack["code"] == "I99" and ack["request_id"] == str(rid), ack
    return ack


def gbcs_outcome(resp: dict) -> str:
    """The Comms Hub's outcome of a relayed CS06 (the DUIS response's Reason starts with it;
    its GBCSPayload is the board's own answer)."""
    return (resp["reason"] or "").split(":")[0]


# ---------------------------------------------------------------- the DCC and the Comms Hub

class World:
    """A test PKI, a DCC, one Comms Hub for the premises; boards come later (`boards`)."""

    def __init__(self, tmp: Path):
        from hanota.dcc.http import DccRunner
        from hanota.hub.runner import HubRunner

        self.tmp = tmp
        self.pki_dir = tmp / "pki"
        pki.init(self.pki_dir)
        self.user = User(self.pki_dir)
        self.dcc_cert = pki.signing_pair(self.pki_dir, "dcc.xml")[1]
        self.dcc_db = tmp / "dcc.db"
        hub_db = tmp / "hub.db"
        with HubDB.open(str(hub_db)) as db:
            self.hub_eui = eui_hex(db.current_hub()["eui"])
        with DccStore(self.dcc_db) as store:
            store.add_premises(MPAN, [self.user.eui], self.hub_eui)
        self.dcc = DccRunner(str(self.dcc_db), str(self.pki_dir))
        try:
            # activation_lead: the future-dated 11.3 goes to the board 3 s before its time,
            # after the cancellation has come (a board, once told, keeps the time itself)
            self.hub = HubRunner(str(hub_db), dcc_url=self.dcc.url, options=fast_options(
                request_timeout=2.0, activation_lead=3.0,
                retry={"answer_timeout": 30, "stall_window": 30, "activation_timeout": 60}))
        except BaseException:
            self.dcc.stop()
            raise
        self.wait("the Comms Hub on the WAN", lambda: self.hub.wan.connected.is_set())

    def stop(self) -> None:
        try:
            self.hub.stop()
        finally:
            self.dcc.stop()

    def client(self):
        from hanota.dcc.http import DuisClient
        return DuisClient(self.dcc.url)

    def post(self, xml: bytes) -> dict:
        """POST a request; the synchronous answer, its DCC signature verified."""
        return self.post_signed(xml)[0]

    def post_signed(self, xml: bytes) -> tuple[dict, bytes]:
        """POST a request; (the synchronous answer, the signed document), verified."""
        parsed, signed = self.client().send(xml)
        xmlsig.verify(signed, self.dcc_cert)
        return parsed, signed

    def future_dated_alerts(self, request_id: str) -> list[dict]:
        """The FutureDatedDeviceAlertMessages the User has for request_id, verified."""
        out = []
        for _, xml in self.client().responses(self.user.eui):
            p = duis.parse_response(xml)
            if p["kind"] == "future_dated_alert" and p["request_id"] == request_id:
                xmlsig.verify(xml, self.dcc_cert)
                out.append(p)
        return out

    def final(self, request_id: str, timeout: float = 150) -> dict:
        """The final DUIS response to request_id, fetched, its DCC signature verified."""
        parsed, signed = self.client().wait_response(request_id, timeout)
        assert xmlsig.verify(signed, self.dcc_cert).entity_id == \
            pki.describe(self.dcc_cert).entity_id
        return parsed

    def dcc_request(self, request_id: str) -> dict | None:
        with DccStore(self.dcc_db) as store:
            return store.request_by_text(request_id)

    @staticmethod
    def wait(what: str, cond, timeout: float = 30.0) -> None:
        end = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > end:
                raise AssertionError("timed out waiting for " + what)
            time.sleep(0.05)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    for name in TEMPLATES:  # skip (naming `make gpl`) before starting anything
        template(name)
    w = World(tmp_path_factory.mktemp("duis-templates"))
    yield w
    w.stop()


# ---------------------------------------------------------------- 1. as published: refused

@pytest.mark.parametrize("name", TEMPLATES)
def test_template_as_published_is_refused_for_its_placeholder_signature(world, name):
    """POSTed as it is, each template is refused with the signature refusal code (EH6) and a
    reason naming the placeholder; the answer echoes the template's RequestID and is signed
    by the DCC; nothing is recorded and the counter of the template's originator is not
    taken (an unproven signer must not burn a User's counters)."""
    doc = template(name)
    rid = _one(etree.fromstring(doc), "sr:Header/sr:RequestID").text
    ack = world.post(doc)
    assert ack["code"] == duis.E_SIGNATURE, ack
    assert "placeholder" in ack["reason"] and xmlsig.PLACEHOLDER in ack["reason"], ack
    assert ack["request_id"] == rid, ack
    assert world.dcc_request(rid) is None
    with DccStore(world.dcc_db) as store:
        assert store.last_counter(rid.split(":")[0]) is None


# ---------------------------------------------------------------- 2. signed: end to end

class Board:
    """A deployed virtual board, its EUI-64, and its signed version 2 image with that
    image's Manufacturer Image Hash; `upgrade(version)` makes and lists another."""

    def __init__(self, vb, role: str, eui: bytes, app: bytes, key, world: World):
        self.vb, self.role, self.eui, self.app, self.key = vb, role, eui, app, key
        self.world = world
        self.image, self.image_hash = self.upgrade(V2)

    def upgrade(self, version: int) -> tuple[bytes, bytes]:
        """The board's app as a signed OTA file of `version`, on the CPL: (file, hash)."""
        data = images.build_image(self.app, version=version, role=self.role, key=self.key)
        f = self.world.tmp / ("%s-%08x.ota" % (self.role, version))
        f.write_bytes(data)
        h = images.parse_file(f).descriptor.image_hash
        with DccStore(self.world.dcc_db) as store:
            store.cpl_add(images.DEFAULT_MANUFACTURER, images.ROLE_IMAGE_TYPES[self.role],
                          version, h)
        return data, h


@pytest.fixture(scope="module")
def boards(world, request):
    """A PPMID on vboard-esp32 and an HCALCS on vboard-nrf52840 running version 1, deployed
    with the manufacturer's key, pre-notified by SR 12.2 from supplier-a (built by hanota:
    the acceptance is about the firmware templates), with their version 2 images on the CPL."""
    if request.config.getoption("--board"):
        pytest.skip("this test runs on virtual boards only (--board selects a real board)")
    from hanota.keys import generate_keys, load_private_key
    from hanota.vboard.board import VirtualBoard

    tmp = world.tmp
    keys = generate_keys(tmp / "keys")
    key = load_private_key(keys.private)
    made = []
    out = {}
    try:
        for kind, role in (("vboard-esp32", "ppmid"), ("vboard-nrf52840", "hcalcs")):
            v1 = fwbuild.build(kind, "1.0.0", tmp / "fw" / kind / "v1")
            v2 = fwbuild.build(kind, "2.0.0", tmp / "fw" / kind / "v2")
            vb = VirtualBoard(tmp / "boards" / role, board=kind, name=role, role=role,
                              hub=world.hub.address)
            made.append(vb)
            vb.start()
            if kind == "vboard-esp32":
                flasher.flash_firmware(vb.romloader.url, v1["firmware"], board=kind)
            else:
                world.hub.attach_serial(vb.info.link)
            vb.console.wait_ready(20)
            gbcs_certs = {}
            if role == "hcalcs":  # GBCS-commissioned: SR 11.3 goes as the Supplier's CS06
                gbcs_certs = dict(
                    supplier_cert=(world.pki_dir / "supplier-a.ds.cert.pem").read_bytes(),
                    acb_cert=(world.pki_dir / "acb.ka.cert.pem").read_bytes())
            res = deploy.deploy(vb.console.pty_path, kind, role, [keys.public_bin], version=V1,
                                settings=SETTINGS, **gbcs_certs)
            eui = bytes.fromhex(res.eui64.replace(":", ""))
            u = world.user
            ack = world.post(xmlsig.sign(duis.build_request(
                "12.2", u.eui, duis.DCC_EUI, u.next(), device_id=eui,
                manufacturer="%04X" % images.DEFAULT_MANUFACTURER,
                model="%08X" % images.ROLE_IMAGE_TYPES[role],
                device_type=role.upper(), smets_chts_version="V1.0",
                firmware_version="%08X" % V1, install_code=bytes.fromhex(res.install_code)),
                u.key, u.cert))
            assert ack["code"] == "I0", ack
            if res.ka_public:  # the installer records the deploy's KA key with the DCC
                r = CliRunner().invoke(cli_main, ["dcc", "registry", "set-ka", res.eui64,
                                                  "--ka-pub", res.ka_public,
                                                  "--db", str(world.dcc_db)])
                assert r.exit_code == 0, r.output
            out[role] = Board(vb, role, eui, v2["app"].read_bytes(), key, world)
        yield out
    finally:
        for vb in made:
            vb.stop()


def test_ppmid_11_4_template_signed_by_the_supplier_is_activated(world, boards):
    """SR 11.4 from the template, signed by supplier-a: acknowledged (I99), carried to the
    Comms Hub, downloaded by the ESP32 PPMID, activated; the final response is I0 with the
    PPMID Firmware Activation Alert's use case (CS09, success) and the new version."""
    b = boards["ppmid"]
    u = world.user
    xml = as_user(template(T_11_4), u, counter=u.next(), device=b.eui, image=b.image,
                  version=V2)
    ack = world.post(xml)
    assert ack["code"] == "I99", ack
    assert ack["request_id"] == "%s:%s:%d" % (duis.eui_text(u.eui), DCC_TEXT, u.counter)
    resp = world.final(ack["request_id"])
    o = outcome(resp)
    assert resp["code"] == "I0", resp
    assert o["Outcome"] == "activated", resp
    assert o["DeviceID"] == duis.eui_text(b.eui), resp
    assert (o["GBCSUseCase"], str(o["GBCSResponseCode"])) == ("CS09", "0"), resp
    assert o["FirmwareVersion"] == "%08X" % V2, resp


def test_hcalcs_11_1_11_3_and_11_2_templates_signed_by_the_supplier(world, boards):
    """HCALCS on the nRF52840, all from the templates: SR 11.1 distributes (CCS08 success);
    SR 11.3 future-dated a few seconds ahead, then the 11.3 cancellation: both cancelled, and
    the time passes with no activation (11.2 still reads version 1); SR 11.3 immediate
    activates (the board's CS06 response: success, version 2); SR 11.2 reads version 2 (CS08
    success). Each 11.3 by the Pre-Command flow, signed by supplier-a."""
    b = boards["hcalcs"]
    u = world.user

    def run(name: str, **kw) -> dict:
        """The template sent by supplier-a for the HCALCS; its acknowledgement (I99). An
        11.3 template (CommandVariant 4) first gets the DCC's Pre-Command (I0), which
        supplier-a signs and sends back as CommandVariant 5: `signed_cs06`."""
        pre, signed = world.post_signed(as_user(template(name), u, counter=u.next(),
                                                device=b.eui, **kw))
        if name in (T_11_3_NOW, T_11_3_LATER, T_11_3_CANCEL):
            assert pre["code"] == "I0", (name, pre)
            return signed_cs06(world, signed)
        assert pre["code"] == "I99", (name, pre)
        return pre

    # 11.1: distribute
    ack = run(T_11_1, image=b.image, version=V2)
    assert ack["request_id"] == "%s:%s:%d" % (duis.eui_text(u.eui), DCC_TEXT, u.counter)
    resp = world.final(ack["request_id"])
    o = outcome(resp)
    assert resp["code"] == "I0" and o["Outcome"] == "distributed", resp
    assert (o["GBCSUseCase"], str(o["GBCSResponseCode"])) == ("CCS08", "0"), resp
    assert o["DeviceID"] == duis.eui_text(b.eui), resp

    # 11.3 future-dated, then its cancellation before the time comes
    since = time.time()
    at = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=12)
    later = run(T_11_3_LATER, image_hash=b.image_hash, at=at)
    assert later["request_id"] == "%s:%s:%d" % (duis.eui_text(u.eui), duis.eui_text(b.eui),
                                                 u.counter)
    cancel = run(T_11_3_CANCEL, image_hash=b.image_hash)
    resp = world.final(cancel["request_id"], timeout=30)
    # the board's GBCS answer to the cancellation (the future-dated CS06 was still held at the
    # Comms Hub, activation_lead before its time, so the board had none pending)
    assert resp["code"] == "I0" and gbcs_outcome(resp) == "cancelled", resp
    assert gbcs.decode(resp["gbcs_payload"]).kind == "cs06-accepted", resp
    assert "still queued at the Comms Hub, never sent" in resp["reason"], resp
    assert datetime.now(timezone.utc) < at, "the cancellation came too late to mean anything"
    gone = world.final(later["request_id"], timeout=30)
    # the future-dated one never reached the board: the Comms Hub's outcome, no GBCS payload
    assert gone["code"] == "I0" and gone["gbcs_payload"] is None, gone
    assert (outcome(gone)["Outcome"], outcome(gone)["GBCSUseCase"]) == ("cancelled", "CS06")
    while datetime.now(timezone.utc) < at + timedelta(seconds=4):
        time.sleep(0.2)
    ack = run(T_11_2)
    resp = world.final(ack["request_id"])
    assert outcome(resp)["Outcome"] == "version_read", resp
    assert outcome(resp)["FirmwareVersion"] == "%08X" % V1, "activated although cancelled"
    assert not [e for e in list(b.vb.events) if e[0] > since and e[1:] == ("exited", "hard")], \
        "the board reset (activated) although the activation was cancelled"

    # 11.3 immediate: activated; the board's own CS06 response (success, version 2)
    ack = run(T_11_3_NOW, image_hash=b.image_hash)
    resp = world.final(ack["request_id"])
    assert resp["code"] == "I0" and gbcs_outcome(resp) == "activated", resp
    m = gbcs.decode(resp["gbcs_payload"])
    assert (m.kind, m.fields["response_code"]) == ("cs06-response", gbcs.CS06_SUCCESS), resp
    assert m.fields["firmware_version"] == V2.to_bytes(4, "big"), resp
    assert m.originator == b.eui and m.recipient == u.eui

    # 11.2: the new version
    ack = run(T_11_2)
    assert ack["request_id"] == "%s:%s:%d" % (duis.eui_text(u.eui), duis.eui_text(b.eui),
                                               u.counter)
    resp = world.final(ack["request_id"])
    o = outcome(resp)
    assert resp["code"] == "I0" and o["Outcome"] == "version_read", resp
    assert (o["GBCSUseCase"], str(o["GBCSResponseCode"])) == ("CS08", "0"), resp
    assert o["FirmwareVersion"] == "%08X" % V2, resp


def test_hcalcs_future_dated_11_3_template_activates_at_its_time(world, boards):
    """The FUTURE_DATED template's own success: after a new SR 11.1 (version 3), the 11.3
    future-dated a few seconds ahead is not cancelled; the hub sends it ahead of its time
    (activation_lead), the board accepts the CS06 and activates at that time, by the hub's
    clock, not before: the User gets the board's 8F66 (FutureDatedDeviceAlertMessage) and
    the final response I0; SR 11.2 reads version 3."""
    b = boards["hcalcs"]
    u = world.user
    image, image_hash = b.upgrade(V3)
    ack = world.post(as_user(template(T_11_1), u, counter=u.next(), device=b.eui,
                             image=image, version=V3))
    assert ack["code"] == "I99", ack
    resp = world.final(ack["request_id"])
    assert outcome(resp)["Outcome"] == "distributed", resp
    at = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=8)
    pre, signed = world.post_signed(as_user(template(T_11_3_LATER), u, counter=u.next(),
                                            device=b.eui, image_hash=image_hash, at=at))
    assert pre["code"] == "I0", pre
    ack = signed_cs06(world, signed)
    resp = world.final(ack["request_id"])
    # the board accepted the future-dated CS06 (its NULL response), waited for the time by
    # the hub's clock, alerted 8F66 and activated version 3
    assert resp["code"] == "I0" and gbcs_outcome(resp) == "activated", resp
    assert gbcs.decode(resp["gbcs_payload"]).kind == "cs06-accepted", resp
    World.wait("the 8F66 at the User", lambda: world.future_dated_alerts(ack["request_id"]))
    (fd,) = world.future_dated_alerts(ack["request_id"])
    assert fd["alert_code"] == "8F66", fd
    m = gbcs.decode(fd["gbcs_payload"])
    assert m.kind == "fd-alert" and m.fields["response_code"] == gbcs.CS06_SUCCESS
    assert m.fields["firmware_version"] == V3.to_bytes(4, "big")
    assert m.fields["execution_date_time"] == at.strftime("%Y%m%d%H%M%SZ")
    resets = [e[0] for e in list(b.vb.events) if e[1:] == ("exited", "hard")]
    assert resets and resets[-1] >= at.timestamp() - 0.5, (resets[-1:], at.timestamp())
    ack = world.post(as_user(template(T_11_2), u, counter=u.next(), device=b.eui))
    resp = world.final(ack["request_id"])
    assert outcome(resp)["FirmwareVersion"] == "%08X" % V3, resp
