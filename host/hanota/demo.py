"""`hanota demo`: the whole story on virtual boards, end to end, told through DUIS.

The parties are those of GB smart metering, each its own service on loopback ports chosen at
run time:

- a test PKI (`hanota pki init`): two Suppliers and the DCC, each known by the entity ID in its
  certificate, never by a typed name;
- the DCC (`DccRunner`: `hanota dcc serve` on a thread, over its SQLite database) holding the
  registration data (premises with their Responsible Suppliers and Comms Hub, devices
  pre-notified by signed SR 12.2 requests with their install codes) and the Central Products
  List of the story's images;
- a Comms Hub per premises (`HubRunner` with its WAN to the DCC): premises 1 is a
  dual-Supplier premises (supplier-a and supplier-b) with a PPMID, an Alt HAN device and an
  HCALCS; premises 2 (supplier-a only) has the second PPMID. The boards are those of the
  first demo: two PPMIDs on vboard-esp32 (firmware banks), an Alt HAN device and an HCALCS on
  vboard-nrf52840 (app banks), flashed through the ROM loader and deployed through their
  consoles;
- the Suppliers, who build every service request with `duis.build_request`, sign it with
  their XML signing key, POST it to the DCC, check the synchronous answer (I99 accepted, or
  the refusal's code) and read the outcome from the signed DUIS response they fetch, its
  signature verified against the DCC's certificate.

Each check of the story is one row of the table (`Row`): the outcome a User reads in DUIS. The
priority order is shown on premises 1's Comms Hub, which serves three devices one transfer at a
time. At the end: the table and the HTML report, with the DCC's DUIS view.
"""
from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import deploy, flasher, fwbuild, images
from .dcc import duis, pki, xmlsig
from .dcc.http import DccRunner
from .dcc.store import DccStore
from .dcc.wan import eui_hex
from .hub import HubDB, HubOptions
from .hub import registry as reg
from .hub import report as hub_report
from .hub.queue import RetryPolicy
from .hub.runner import HubRunner
from .keys import generate_keys, load_private_key, load_public_key
from .vboard.board import VirtualBoard

V1, V2, V3, V4 = 0x00010000, 0x00020000, 0x00030000, 0x00040000
DEVICE_SETTINGS = {"query_interval": 1, "health_timeout": 8, "block_timeout_ms": 800}
PREMISES_1, PREMISES_2 = "1100000000011", "1100000000022"  # MPANs
ESME_1 = bytes.fromhex("70B3D5FFFE000011")  # premises 1's electricity meter (not a board)
DEVICE_TYPE = {"ppmid": "PPMID", "hcalcs": "HCALCS", "althan": "ALTHAN"}
OUTCOME_TIMEOUT = 120.0


class DemoFailure(AssertionError):
    """An outcome of the demo was not the expected one."""


@dataclass
class Row:
    step: str
    expected: str
    got: str

    @property
    def ok(self) -> bool:
        return self.expected == self.got


@dataclass
class User:
    """A DCC User (a Supplier): its XML signing pair, its entity ID (from its certificate) and
    its RequestID counter, which only rises."""

    name: str
    key: Any
    cert: Any
    eui: bytes = b""
    counter: int = 1000
    seen: int = 0  # the last response sequence number fetched
    finals: dict[str, dict] = field(default_factory=dict)  # RequestID -> its final response

    def __post_init__(self) -> None:
        self.eui = pki.describe(self.cert).entity_id

    def request(self, srv: str, target: bytes, **fields: Any) -> bytes:
        """A DUIS request from this User, signed."""
        self.counter += 1
        return xmlsig.sign(duis.build_request(srv, self.eui, target, self.counter, **fields),
                           self.key, self.cert)


def eui_bytes(text: str) -> bytes:
    """A board's EUI-64 as hanota writes it (aa:bb:..) -> bytes as DUIS writes them."""
    return bytes.fromhex(text.replace(":", ""))


def run_demo(workdir: Path, say: Callable[[str], None] = print) -> tuple[list[Row], Path]:
    """Run the story in workdir (recreated); returns the outcome rows and the HTML report path."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    demo = _Demo(workdir, say)
    try:
        for step in (demo.pki_and_firmware, demo.start_dcc_and_hubs, demo.start_boards,
                     demo.sign_images, demo.service_requests, demo.hcalcs_activation,
                     demo.rollback, demo.read_versions, demo.join_alt_han, demo.swap_out):
            try:
                step()
            except DemoFailure as e:  # the story cannot go on: the table says where it stopped
                demo.expect("the story goes on after step %s" % step.__name__, "yes", str(e))
                break
        return demo.rows, demo.write_reports()
    finally:
        demo.close()


class _Demo:
    """The story's steps, in the order run_demo takes them, and what each leaves for the next
    (the PKI's Users, firmware, the DCC, the Comms Hubs, the boards' EUI-64s, the images)."""

    def __init__(self, workdir: Path, say: Callable[[str], None]):
        self.workdir = workdir
        self.say = say
        self.rows: list[Row] = []
        self.made: list[VirtualBoard] = []
        self.dcc: DccRunner | None = None
        self.store: DccStore | None = None  # the DCC's database, for registration and the CPL
        self.hubs: dict[str, HubRunner] = {}  # premises -> its Comms Hub
        self.dbs: dict[str, HubDB] = {}  # premises -> its Comms Hub's database (to read)
        self.users: dict[str, User] = {}
        self.dcc_cert: Any = None
        self.keys = self.key = None  # the manufacturer's image signing key
        self.fw: dict = {}  # (board kind, 1 or 2) or "broken" -> fwbuild.build() output
        self.devices: dict[str, str] = {}  # board name -> EUI-64 (hanota's text)
        self.img: dict[str, Path] = {}
        self.rid: dict[str, str] = {}  # story name -> RequestID of an accepted request
        self.sent = b""  # the last signed firmware request (replayed once)

    # -- the table

    def expect(self, step: str, want: str, got: str) -> None:
        self.rows.append(Row(step, want, got))
        self.say("  %-4s %-62s %s" % ("ok" if want == got else "FAIL", step, got))

    def close(self) -> None:
        for b in self.made:
            b.stop()
        for h in self.hubs.values():
            h.stop()
        if self.dcc is not None:
            self.dcc.stop()
        for db in self.dbs.values():
            db.close()
        if self.store is not None:
            self.store.close()

    # -- the User's side of DUIS

    def post(self, xml: bytes) -> dict:
        """POST a signed request to the DCC; the synchronous answer, its signature checked."""
        req = urllib.request.Request(self.dcc.url + "/api/v1/serviceD", data=xml,
                                     headers={"Content-Type": "application/xml"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                body = r.read()
        except urllib.error.HTTPError as e:  # a refusal may come with an HTTP error status
            body = e.read()
        xmlsig.verify(body, self.dcc_cert)
        return duis.parse_response(body)

    def submit(self, user: User, xml: bytes, what: str) -> dict:
        ack = self.post(xml)
        self.say("       %s %s: %s %s%s" % (user.name, what, ack["code"], ack["request_id"],
                                            "" if not ack["reason"] else " (%s)" % ack["reason"]))
        return ack

    def fetch(self, user: User) -> None:
        """GET the User's new responses; keep the final ones, each verified as the DCC's."""
        q = urllib.parse.urlencode({"user": eui_hex(user.eui), "after": str(user.seen)})
        with urllib.request.urlopen(self.dcc.url + "/api/v1/responses?" + q, timeout=30) as r:
            items = json.loads(r.read())["responses"]
        for item in items:
            xml = item["xml"].encode()
            xmlsig.verify(xml, self.dcc_cert)
            p = duis.parse_response(xml)
            if p["kind"] == "response" and p["request_id"]:
                user.finals[p["request_id"]] = p
            user.seen = max(user.seen, int(item["seq"]))

    def final(self, user: User, request_id: str, timeout: float = OUTCOME_TIMEOUT) -> dict | None:
        """The final DUIS response to request_id, or None if none came within timeout (the
        story goes on and the row says so)."""
        end = time.monotonic() + timeout
        while request_id not in user.finals and time.monotonic() < end:
            self.fetch(user)
            if request_id not in user.finals:
                time.sleep(0.2)
        return user.finals.get(request_id)

    def outcome(self, user: User, request_id: str, timeout: float = OUTCOME_TIMEOUT) -> str:
        """The Comms Hub's outcome as the final DUIS response carries it."""
        resp = self.final(user, request_id, timeout)
        if resp is None:
            return "no outcome (timed out)"
        ch = resp["body"].get("CommsHubOutcome") or {}
        return ch.get("Outcome") or resp["code"]

    def refusal(self, ack: dict) -> str:
        """A refused request as the User sees it: the response code, and the DCC's name for the
        rule (from its records; refusals of the signature or the header leave none)."""
        row = self.store.request_by_text(ack["request_id"]) if ack["request_id"] else None
        name = (row or {}).get("detail", {}).get("refusal")
        return ack["code"] + (" " + name if name else "")

    def wait(self, what: str, cond: Callable[[], bool], timeout: float = 30.0) -> None:
        end = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > end:
                raise DemoFailure("timed out waiting for " + what)
            time.sleep(0.1)

    # -- the story

    def pki_and_firmware(self) -> None:
        self.say("1. the PKI, the manufacturer's signing key and firmware")
        w = self.workdir
        pki.init(w / "pki")
        for name in ("supplier-a", "supplier-b"):
            self.users[name] = User(name, *pki.signing_pair(w / "pki", name + ".xml"))
        self.dcc_cert = pki.signing_pair(w / "pki", "dcc.xml")[1]
        for u in self.users.values():
            self.say("  %-10s entity ID %s" % (u.name, duis.eui_text(u.eui)))
        self.say("  DCC        entity ID %s"
                 % duis.eui_text(pki.describe(self.dcc_cert).entity_id))
        self.keys = generate_keys(w / "keys")
        self.key = load_private_key(self.keys.private)
        fw = self.fw
        for kind in ("vboard-esp32", "vboard-nrf52840"):
            fw[kind, 1] = fwbuild.build(kind, "1.0.0", w / "fw" / kind / "v1")
            fw[kind, 2] = fwbuild.build(kind, "2.0.0", w / "fw" / kind / "v2")
        fault = b"HEALTH = 'self-test fails (deliberately broken build)'\n"
        fw["broken"] = fwbuild.build("vboard-esp32", "3.0.0-broken", w / "fw" / "broken",
                                     extra={"hanfw/fault.py": fault})
        self.say("  image signing key %s; firmware 1.0.0 and 2.0.0 for both boards, and a broken "
                 "3.0.0" % images.p256.key_id(load_public_key(self.keys.public_bin)).hex())

    def start_dcc_and_hubs(self) -> None:
        self.say("2. the DCC and a Comms Hub per premises")
        w = self.workdir
        self.dcc = DccRunner(str(w / "dcc.db"), str(w / "pki"), wan_poll=0.1, push_poll=0.2)
        self.store = DccStore(w / "dcc.db")
        self.say("  DCC serving DUIS on %s/api/v1/serviceD" % self.dcc.url)
        options = HubOptions(max_in_flight=1, poll_interval=0.1, progress_interval=0.5,
                             stall_timeout=20, request_timeout=2.0, request_retries=2, hold_s=1.0,
                             priorities={"hcalcs": 1, "ppmid": 2, "althan": 3},
                             retry=RetryPolicy(base=1.0, cap=5.0, max_attempts=6,
                                               answer_timeout=30, stall_window=30,
                                               activation_timeout=60))
        for mpxn in (PREMISES_1, PREMISES_2):
            db = self.dbs[mpxn] = HubDB.open(w / ("hub-%s.db" % mpxn))
            self.hubs[mpxn] = HubRunner(db.path, options=options, name="ch-" + mpxn,
                                        dcc_url=self.dcc.url)
            self.say("  premises %s: Comms Hub %s on udp %s:%d (priorities hcalcs=1, ppmid=2, "
                     "althan=3; one transfer at a time)"
                     % ((mpxn, self.hub_eui(mpxn)) + self.hubs[mpxn].address))
        self.wait("both Comms Hubs on the WAN", lambda: all(
            h.wan is not None and h.wan.connected.is_set() for h in self.hubs.values()))

    def hub_eui(self, mpxn: str) -> str:
        return eui_hex(self.dbs[mpxn].current_hub()["eui"])

    def start_boards(self) -> None:
        self.say("3. four boards: start, flash through the ROM loader, deploy through the console;"
                 " pre-notified by SR 12.2")
        plan = [("ppmid-2", "vboard-esp32", "ppmid", PREMISES_2),
                ("ppmid-1", "vboard-esp32", "ppmid", PREMISES_1),
                ("althan-1", "vboard-nrf52840", "althan", PREMISES_1),
                ("hcalcs-1", "vboard-nrf52840", "hcalcs", PREMISES_1)]
        deployed = {}
        for name, kind, role, mpxn in plan:
            hub = self.hubs[mpxn]
            b = VirtualBoard(self.workdir / "boards" / name, board=kind, name=name, role=role,
                             hub=hub.address)
            self.made.append(b)
            b.start()
            if kind == "vboard-esp32":
                flasher.flash_firmware(b.romloader.url, self.fw[kind, 1]["firmware"], board=kind)
            else:
                hub.attach_serial(b.info.link)
            b.console.wait_ready(20)
            res = deploy.deploy(b.console.pty_path, kind, role, [self.keys.public_bin], version=V1,
                                settings=DEVICE_SETTINGS)
            self.devices[name] = res.eui64
            deployed[name] = res
            self.say("  %-9s %-16s %s  premises %s  console %s" % (name, kind, res.eui64, mpxn,
                                                                  b.console.pty_path))
        # The registration data. SR 12.2 names no premises: the DCC takes the one the Supplier
        # is responsible for, so premises 2 (supplier-a) comes first, then premises 1, which
        # supplier-b shares with supplier-a.
        a, b_ = self.users["supplier-a"], self.users["supplier-b"]
        self.store.add_premises(PREMISES_2, [a.eui], self.hub_eui(PREMISES_2))
        self.prenotify(a, "ppmid-2", deployed["ppmid-2"], PREMISES_2)
        self.store.add_premises(PREMISES_1, [a.eui, b_.eui], self.hub_eui(PREMISES_1))
        for name in ("ppmid-1", "althan-1", "hcalcs-1"):
            self.prenotify(b_, name, deployed[name], PREMISES_1)
        ack = self.submit(b_, b_.request("12.2", duis.DCC_EUI, device_id=ESME_1,
                                         manufacturer="1234", model="00000001",
                                         device_type="ESME", smets_chts_version="V4.1",
                                         firmware_version="00000001"), "SR 12.2 ESME")
        if ack["code"] != "I0":
            raise DemoFailure("SR 12.2 for premises 1's ESME: %s %s"
                              % (ack["code"], ack["reason"]))

    def prenotify(self, user: User, name: str, res: Any, mpxn: str) -> None:
        role = res.role
        ack = self.submit(user, user.request(
            "12.2", duis.DCC_EUI, device_id=eui_bytes(res.eui64),
            manufacturer="%04X" % images.DEFAULT_MANUFACTURER,
            model="%08X" % images.ROLE_IMAGE_TYPES[role], device_type=DEVICE_TYPE[role],
            smets_chts_version="V1.0", firmware_version="%08X" % V1,
            install_code=bytes.fromhex(res.install_code)), "SR 12.2 %s" % name)
        if ack["code"] != "I0":
            raise DemoFailure("SR 12.2 for %s: %s %s" % (name, ack["code"], ack["reason"]))
        db = self.dbs[mpxn]
        self.wait("%s in the device log of premises %s's Comms Hub" % (name, mpxn),
                  lambda: reg.device(db, res.eui64) is not None)

    def _image(self, role: str, version: int, payload: dict, name: str, tamper: str = "",
               cpl: bool = True) -> Path:
        data = bytearray(images.build_image(payload["app"].read_bytes(), key=self.key,
                                            version=version, role=role))
        if tamper == "payload":  # the DCC sees it: the payload no longer has the descriptor's hash
            data[len(data) // 2] ^= 0x20
        elif tamper:  # in the signature: only a holder of the signing key's public half can tell
            data[len(data) - 10] ^= 0x20
        p = self.workdir / "images" / name
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(bytes(data))
        if cpl and not tamper:
            # `hanota dcc cpl add`: the manufacturer's image, by its Manufacturer Image Hash
            e = self.store.cpl_add(images.DEFAULT_MANUFACTURER, images.ROLE_IMAGE_TYPES[role],
                                   version, images.parse_file(p).descriptor.image_hash)
            listed = "on the CPL (hash %s..)" % e["image_hash"][:12]
        else:
            listed = "one bit flipped" if tamper else "NOT on the CPL"
        self.say("  %-26s %7d bytes, version 0x%08x, %s" % (name, len(data), version, listed))
        return p

    def sign_images(self) -> None:
        self.say("4. signed images and the Central Products List")
        fw, image = self.fw, self._image
        self.img = {
            "ppmid": image("ppmid", V2, fw["vboard-esp32", 2], "ppmid-v2.ota"),
            "tampered": image("ppmid", V2, fw["vboard-esp32", 2], "ppmid-v2-tampered.ota",
                              "signature"),
            "tampered-payload": image("ppmid", V2, fw["vboard-esp32", 2],
                                      "ppmid-v2-tampered-payload.ota", "payload"),
            "unlisted": image("ppmid", V4, fw["vboard-esp32", 1], "ppmid-v4-unlisted.ota",
                              cpl=False),
            "broken": image("ppmid", V3, fw["broken"], "ppmid-v3-broken.ota"),
            "althan": image("althan", V2, fw["vboard-nrf52840", 2], "althan-v2.ota"),
            "althan3": image("althan", V3, fw["vboard-nrf52840", 2], "althan-v3.ota"),
            "hcalcs": image("hcalcs", V2, fw["vboard-nrf52840", 2], "hcalcs-v2.ota"),
        }

    def update(self, user: User, srv: str, board: str, image: str, what: str) -> dict:
        """SR 11.1 / 11.4 for one board with one of the story's images (the signed request
        stays in `sent` for a replay)."""
        data = self.img[image].read_bytes()
        version = images.parse_file(self.img[image]).header.file_version
        self.sent = user.request(srv, duis.DCC_EUI, firmware_image=data,
                                 firmware_version="%08X" % version,
                                 device_ids=[eui_bytes(self.devices[board])])
        return self.submit(user, self.sent, what)

    def delivered(self) -> bool:
        """Every accepted request's WAN message taken (stored, acknowledged) by its Comms Hub,
        and applied there (the hub's request exists, so it is scheduled by priority)."""
        return all(self.store.wan_outbox(self.hub_eui(m)) == [] and self.dbs[m].one(
            "SELECT count(*) FROM ch_wan_in WHERE done IS NULL")[0] == 0 for m in self.hubs)

    def service_requests(self) -> None:
        self.say("5. service requests (accepted ones wait on the paused Comms Hubs; premises 1's "
                 "hub then delivers by priority)")
        a, b = self.users["supplier-a"], self.users["supplier-b"]
        expect, rid = self.expect, self.rid
        for h in self.hubs.values():
            h.pause()
        captured = b""  # supplier-b's signed SR 11.4 for ppmid-1, replayed below
        for k, who, srv, board, image, what in (
                ("althan", a, "11.4", "althan-1", "althan", "althan-1 v2"),
                ("ppmid-1", b, "11.4", "ppmid-1", "ppmid", "ppmid-1 v2"),
                ("hcalcs", a, "11.1", "hcalcs-1", "hcalcs", "hcalcs-1 v2"),
                ("tampered", a, "11.4", "ppmid-2", "tampered",
                 "ppmid-2 v2 tampered in its signature")):
            ack = self.update(who, srv, board, image, "SR %s %s" % (srv, what))
            expect("SR %s %s accepted" % (srv, what), "I99", ack["code"])
            rid[k] = ack["request_id"]
            if k == "ppmid-1":
                captured = self.sent
        # refusals at submission: nothing reaches a Comms Hub
        ack = self.update(b, "11.4", "ppmid-2", "ppmid", "SR 11.4 ppmid-2 v2")
        expect("SR 11.4 ppmid-2 from supplier-b (not its Supplier) refused", "E4 not-authorised",
               self.refusal(ack))
        ack = self.submit(b, captured, "the SR 11.4 for ppmid-1 again (replayed)")
        expect("SR 11.4 ppmid-1 replayed (same RequestID counter) refused", duis.E_REPLAY,
               self.refusal(ack))
        ack = self.update(a, "11.4", "ppmid-2", "unlisted", "SR 11.4 ppmid-2 v4 (not on the CPL)")
        expect("SR 11.4 ppmid-2 image not on the CPL refused", "%s not-on-cpl" % duis.E_IMAGE,
               self.refusal(ack))
        ack = self.update(a, "11.4", "ppmid-2", "tampered-payload",
                          "SR 11.4 ppmid-2 v2 (payload tampered)")
        expect("SR 11.4 ppmid-2 payload-tampered image refused", "%s bad-image" % duis.E_IMAGE,
               self.refusal(ack))
        pending = [r["request_id"] for r in
                   self.store.pending_requests(eui_hex(self.devices["ppmid-2"]))]
        self.say("       pending at the DCC for ppmid-2: %s" % (", ".join(pending) or "none"))
        expect("  ... ppmid-2's pending request stays", "still pending",
               "still pending" if pending == [rid["tampered"]]
               else "pending: %s" % (pending or "none"))
        self.wait("the Comms Hubs to take the accepted requests", self.delivered)
        for h in self.hubs.values():
            h.resume()
        expect("SR 11.4 ppmid-1 v2 from the second Responsible Supplier", "activated",
               self.outcome(b, rid["ppmid-1"]))
        tampered = self.final(a, rid["tampered"])
        ch = (tampered or {}).get("body", {}).get("CommsHubOutcome") or {}
        expect("SR 11.4 ppmid-2 signature-tampered image", "rejected_by_device",
               ch.get("Outcome") or "no outcome (timed out)")
        expect("  ... with the device's reason", "bad-signature",
               str(ch.get("Reason") or "-").rsplit(": ", 1)[-1])
        expect("SR 11.4 althan-1 v2", "activated", self.outcome(a, rid["althan"]))
        expect("SR 11.1 hcalcs-1 v2 distributed (not activated)", "distributed",
               self.outcome(a, rid["hcalcs"]))
        expect("deliveries in priority order on premises 1's Comms Hub", "hcalcs, ppmid, althan",
               ", ".join(self.delivery_order(PREMISES_1, [rid[k] for k in
                                                          ("althan", "ppmid-1", "hcalcs")])))

    def delivery_order(self, mpxn: str, request_ids: list[str]) -> list[str]:
        """Roles of the Comms Hub's requests for the given DUIS requests, by the time their
        transfer started."""
        rows = self.dbs[mpxn].all(
            "SELECT w.dcc_request, r.started, r.role FROM ch_wan_requests w JOIN requests r "
            "ON r.id = w.hub_request")
        started = sorted((r["started"] if r["started"] is not None else float("inf"), r["role"])
                         for r in rows if r["dcc_request"] in request_ids)
        return [role for _, role in started]

    def hcalcs_activation(self) -> None:
        self.say("6. HCALCS activation by Manufacturer Image Hash (SR 11.3)")
        a, hcalcs = self.users["supplier-a"], eui_bytes(self.devices["hcalcs-1"])
        wrong = self.submit(a, a.request("11.3", hcalcs, firmware_hash=bytes(32)),
                            "SR 11.3 hcalcs-1")
        self.expect("SR 11.3 hcalcs-1 with a wrong hash", "hash_mismatch",
                    self.outcome(a, wrong["request_id"]))
        image_hash = images.parse_file(self.img["hcalcs"]).descriptor.image_hash
        right = self.submit(a, a.request("11.3", hcalcs, firmware_hash=image_hash),
                            "SR 11.3 hcalcs-1")
        self.expect("SR 11.3 hcalcs-1 with the image's hash", "activated",
                    self.outcome(a, right["request_id"]))

    def rollback(self) -> None:
        self.say("7. a broken image is rolled back")
        a = self.users["supplier-a"]
        ack = self.update(a, "11.4", "ppmid-2", "broken", "SR 11.4 ppmid-2 v3")
        self.expect("SR 11.4 ppmid-2 v3 whose self-test fails", "rolled_back",
                    self.outcome(a, ack["request_id"]))

    def read_version(self, user: User, board: str, timeout: float = OUTCOME_TIMEOUT) -> str:
        ack = self.submit(user, user.request("11.2", eui_bytes(self.devices[board])),
                          "SR 11.2 %s" % board)
        resp = self.final(user, ack["request_id"], timeout) if ack["code"] == "I99" else ack
        if resp is None:
            return "no outcome (timed out)"
        ch = resp["body"].get("CommsHubOutcome") or {}
        if ch.get("Outcome") == "version_read" and ch.get("FirmwareVersion"):
            return "0x%08x" % int(ch["FirmwareVersion"], 16)
        return ch.get("Outcome") or resp["code"]

    def read_versions(self) -> None:
        self.say("8. read back the versions (SR 11.2)")
        a = self.users["supplier-a"]
        for name, want in (("ppmid-1", V2), ("ppmid-2", V1), ("althan-1", V2), ("hcalcs-1", V2)):
            self.expect("SR 11.2 %s runs" % name, "0x%08x" % want, self.read_version(a, name))

    def join_alt_han(self) -> None:
        self.say("9. the Join Service for an Alt HAN device (MP170)")
        b = self.users["supplier-b"]
        althan = eui_bytes(self.devices["althan-1"])
        ack = self.submit(b, b.request("8.7.1", ESME_1, other_device_id=althan),
                          "SR 8.7.1 join althan-1 to the ESME")
        self.expect("SR 8.7.1 althan-1 refused (MP170's code)",
                    "%s alt-han-join" % duis.E_ALTHAN_JOIN, self.refusal(ack))

    def swap_out(self) -> None:
        self.say("10. Trust Centre Swap-Out: premises 1's Comms Hub is replaced")
        a = self.users["supplier-a"]
        info = reg.swap_out(self.dbs[PREMISES_1])  # as `hanota hub swap-out` does
        new = eui_hex(info["new"])
        self.say("  new Comms Hub identity %s (was %s)" % (new, eui_hex(info["old"])))
        self.wait("the DCC to move premises 1 to the new Comms Hub",
                  lambda: self.store.premises(PREMISES_1)["hub_eui"] == new, timeout=60)
        self.expect("ppmid-1 rejoined the new Comms Hub (SR 11.2)", "0x%08x" % V2,
                    self.read_version(a, "ppmid-1", timeout=90))
        ack = self.update(a, "11.4", "althan-1", "althan3", "SR 11.4 althan-1 v3")
        self.expect("SR 11.4 althan-1 after the TCSO refused (OTA unavailable)",
                    "%s ota-unavailable" % duis.E_OTA_UNAVAILABLE, self.refusal(ack))

    # -- the end

    def write_reports(self) -> Path:
        """report.html: the DCC's DUIS view and premises 1's Comms Hub; report-<MPxN>.html
        for the other premises."""
        out = self.workdir / "report.html"
        if self.store is None or PREMISES_1 not in self.dbs:
            out.write_text("<!DOCTYPE html><html><body><p>The demo stopped before the DCC and "
                           "its Comms Hubs ran.</p></body></html>")
            return out
        names = {eui_hex(u.eui): u.name for u in self.users.values()}
        duis_view = hub_report.duis_data(self.store, names)
        others = [("premises %s" % mpxn, "report-%s.html" % mpxn) for mpxn in self.dbs
                  if mpxn != PREMISES_1]
        out.write_text(hub_report.render_html(hub_report.report_data(self.dbs[PREMISES_1]),
                                              duis=duis_view, links=others))
        for label, name in others:
            mpxn = label.split()[-1]
            (self.workdir / name).write_text(hub_report.render_html(
                hub_report.report_data(self.dbs[mpxn]),
                links=[("premises %s and the DUIS view" % PREMISES_1, "report.html")]))
        self.say("DUIS view (the DCC's records, in %s): %d requests; codes %s" % (
            out.name, len(duis_view["requests"]),
            ", ".join("%s %d" % kv for kv in duis_view["codes"].items())))
        return out


def check(rows: list[Row]) -> None:
    bad = [r for r in rows if not r.ok]
    if bad:
        raise DemoFailure("; ".join("%s: expected %s, got %s" % (r.step, r.expected, r.got)
                                    for r in bad))
