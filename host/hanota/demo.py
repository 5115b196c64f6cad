"""`hanota demo`: the whole story on virtual boards, end to end.

Keys; a hub; four boards (two PPMIDs on vboard-esp32 with firmware banks, an Alt HAN
device and an HCALCS on vboard-nrf52840 with app banks) flashed through the ROM loader
and deployed through their consoles; signed images; service requests from a
dual-Supplier premises and from a stranger; upgrades in priority order; a tampered image
rejected; a broken image rolled back; the HCALCS distributed then activated by hash; a
Trust Centre Swap-Out after which the Alt HAN device is reported unavailable; the table
of outcomes and the HTML report. Every outcome is checked against what was expected.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import deploy, flasher, fwbuild, images
from .hub import HubDB, HubError, HubOptions
from .hub import registry as reg
from .hub import report as hub_report
from .hub import requests as rq
from .hub.queue import RetryPolicy
from .hub.runner import HubRunner
from .errors import ImageFormatError
from .keys import generate_keys, load_private_key, load_public_key
from .vboard.board import VirtualBoard

V1, V2, V3 = 0x00010000, 0x00020000, 0x00030000
DEVICE_SETTINGS = {"query_interval": 1, "health_timeout": 8, "block_timeout_ms": 800}
SUPPLIER_A, SUPPLIER_B, STRANGER = "Octo Energy", "Gas Co", "Rogue Supplies"


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


def _wait(db: HubDB, request_id: int, timeout: float = 120.0):
    # the story tells of a request that times out ("no outcome") and goes on
    try:
        return rq.wait_for_outcome(db, request_id, timeout, poll=0.1)
    except HubError as e:
        if e.reason != "timeout":
            raise
        return db.request(request_id)


def _outcome(row) -> str:
    return row["outcome"] or "no outcome (timed out)"


def run_demo(workdir: Path, say: Callable[[str], None] = print) -> tuple[list[Row], Path]:
    """Run the story in workdir (recreated); returns the outcome rows and the HTML report path."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    demo = _Demo(workdir, say)
    try:
        for step in (demo.keys_and_firmware, demo.start_hub, demo.start_boards, demo.sign_images,
                     demo.service_requests, demo.hcalcs_activation, demo.rollback,
                     demo.read_versions, demo.swap_out):
            step()
        report_path = workdir / "report.html"
        report_path.write_text(hub_report.render_html(hub_report.report_data(demo.db)))
        return demo.rows, report_path
    finally:
        demo.close()


class _Demo:
    """The story's steps, in the order run_demo takes them, and what each leaves for the next
    (keys, firmware, the hub, the boards' EUI-64s, the images)."""

    def __init__(self, workdir: Path, say: Callable[[str], None]):
        self.workdir = workdir
        self.say = say
        self.rows: list[Row] = []
        self.made: list[VirtualBoard] = []
        self.hub: HubRunner | None = None
        self.db: HubDB | None = None
        self.keys = self.key = None  # generate_keys(): paths; the private key loaded
        self.fw: dict = {}  # (board kind, 1 or 2) or "broken" -> fwbuild.build() output
        self.devices: dict[str, str] = {}  # board name -> EUI-64
        self.img: dict[str, Path] = {}
        self.hc = None  # the HCALCS's distribution request (its image hash activates it)

    def expect(self, step: str, want: str, got: str) -> None:
        self.rows.append(Row(step, want, got))
        self.say("  %-4s %-58s %s" % ("ok" if want == got else "FAIL", step, got))

    def close(self) -> None:
        if self.hub is not None:
            self.hub.stop()
        for b in self.made:
            b.stop()
        if self.db is not None:
            self.db.close()

    def keys_and_firmware(self) -> None:
        self.say("1. keys and firmware")
        w = self.workdir
        self.keys = generate_keys(w / "keys")
        self.key = load_private_key(self.keys.private)
        fw = self.fw
        for kind in ("vboard-esp32", "vboard-nrf52840"):
            fw[kind, 1] = fwbuild.build(kind, "1.0.0", w / "fw" / kind / "v1")
            fw[kind, 2] = fwbuild.build(kind, "2.0.0", w / "fw" / kind / "v2")
        fw["broken"] = fwbuild.build("vboard-esp32", "3.0.0-broken", w / "fw" / "broken",
                                     extra={"hanfw/fault.py": b"HEALTH = 'self-test fails (deliberately broken build)'\n"})
        self.say("  signing key %s; firmware 1.0.0 and 2.0.0 for both boards, and a broken 3.0.0"
                 % images.p256.key_id(load_public_key(self.keys.public_bin)).hex())

    def start_hub(self) -> None:
        self.say("2. the hub (Communications Hub) and its registry")
        self.db = HubDB.open(self.workdir / "hub.db")
        options = HubOptions(max_in_flight=1, poll_interval=0.1, progress_interval=0.5, stall_timeout=20,
                             request_timeout=2.0, request_retries=2, hold_s=1.0,
                             priorities={"hcalcs": 1, "ppmid": 2, "althan": 3},
                             retry=RetryPolicy(base=1.0, cap=5.0, max_attempts=6, answer_timeout=30,
                                               stall_window=30, activation_timeout=60))
        self.hub = HubRunner(self.db.path, options=options, name="demo-hub")
        self.say("  serving on udp %s:%d; priorities hcalcs=1, ppmid=2, althan=3; one transfer at a time"
                 % self.hub.address)

    def start_boards(self) -> None:
        self.say("3. four boards: start, flash through the ROM loader, deploy through the console")
        db = self.db
        plan = [("ppmid-1", "vboard-esp32", "ppmid", "MPAN-1001"), ("ppmid-2", "vboard-esp32", "ppmid", "MPAN-1002"),
                ("althan-1", "vboard-nrf52840", "althan", "MPAN-1003"), ("hcalcs-1", "vboard-nrf52840", "hcalcs", "MPAN-1004")]
        reg.set_suppliers(db, "MPAN-1001", [SUPPLIER_A, SUPPLIER_B])  # dual-Supplier premises
        for mpxn in ("MPAN-1002", "MPAN-1003", "MPAN-1004"):
            reg.set_suppliers(db, mpxn, [SUPPLIER_A])
        for name, kind, role, mpxn in plan:
            b = VirtualBoard(self.workdir / "boards" / name, board=kind, name=name, role=role,
                             hub=self.hub.address)
            self.made.append(b)
            b.start()
            if kind == "vboard-esp32":
                flasher.flash_firmware(b.romloader.url, self.fw[kind, 1]["firmware"], board=kind)
            else:
                self.hub.attach_serial(b.info.link)
            b.console.wait_ready(20)
            res = deploy.deploy(b.console.pty_path, kind, role, [self.keys.public_bin], version=V1,
                                settings=DEVICE_SETTINGS)
            reg.add_device(db, res.eui64, role, res.install_code, mpxn)
            self.devices[name] = res.eui64
            self.say("  %-9s %-16s %s  console %s" % (name, kind, res.eui64, b.console.pty_path))

    def _image(self, role: str, version: int, payload: dict, name: str, tamper: str = "") -> Path:
        data = bytearray(images.build_image(payload["app"].read_bytes(), key=self.key, version=version, role=role))
        if tamper == "payload":  # the hub sees it: the payload no longer has the descriptor's hash
            data[len(data) // 2] ^= 0x20
        elif tamper:  # in the signature: only a holder of the signing key's public half can tell
            data[len(data) - 10] ^= 0x20
        p = self.workdir / "images" / name
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(bytes(data))
        self.say("  %-24s %7d bytes, version 0x%08x%s" % (name, len(data), version, " (one bit flipped)" if tamper else ""))
        return p

    def sign_images(self) -> None:
        self.say("4. signed images")
        fw, image = self.fw, self._image
        self.img = {
            "ppmid": image("ppmid", V2, fw["vboard-esp32", 2], "ppmid-v2.ota"),
            "tampered": image("ppmid", V2, fw["vboard-esp32", 2], "ppmid-v2-tampered.ota", "signature"),
            "tampered-payload": image("ppmid", V2, fw["vboard-esp32", 2], "ppmid-v2-tampered-payload.ota",
                                      "payload"),
            "broken": image("ppmid", V3, fw["broken"], "ppmid-v3-broken.ota"),
            "althan": image("althan", V2, fw["vboard-nrf52840", 2], "althan-v2.ota"),
            "althan3": image("althan", V3, fw["vboard-nrf52840", 2], "althan-v3.ota"),
            "hcalcs": image("hcalcs", V2, fw["vboard-nrf52840", 2], "hcalcs-v2.ota"),
        }

    def service_requests(self) -> None:
        self.say("5. service requests (submitted together while the campaign is paused; delivered by priority)")
        db, devices, img, expect = self.db, self.devices, self.img, self.expect
        self.hub.pause()
        subs = {
            "althan": rq.update_firmware(db, devices["althan-1"], img["althan"], SUPPLIER_A),
            "ppmid-1": rq.update_firmware(db, devices["ppmid-1"], img["ppmid"], SUPPLIER_B),
            "stranger": rq.update_firmware(db, devices["ppmid-1"], img["ppmid"], STRANGER),
            "tampered": rq.update_firmware(db, devices["ppmid-2"], img["tampered"], SUPPLIER_A),
            "hcalcs": rq.update_firmware(db, devices["hcalcs-1"], img["hcalcs"], SUPPLIER_A),
        }
        self.hub.resume()
        try:
            rq.update_firmware(db, devices["ppmid-2"], img["tampered-payload"], SUPPLIER_A)
            refused = "accepted"
        except ImageFormatError as e:
            refused = e.reason
        expect("SR 11.4 ppmid-2 payload-tampered image refused at submission", "payload-hash", refused)
        expect("SR 11.4 ppmid-1 v2 from the second Responsible Supplier", "activated",
               _outcome(_wait(db, subs["ppmid-1"].id)))
        expect("SR 11.4 ppmid-1 from a supplier not responsible for it", "not_authorized",
               _outcome(_wait(db, subs["stranger"].id)))
        tampered = _wait(db, subs["tampered"].id)
        expect("SR 11.4 ppmid-2 tampered image", "rejected_by_device", _outcome(tampered))
        expect("  ... with the device's reason", "bad-signature",
               (tampered["reason"] or "-").rsplit(": ", 1)[-1])
        expect("SR 11.4 althan-1 v2", "activated", _outcome(_wait(db, subs["althan"].id)))
        self.hc = _wait(db, subs["hcalcs"].id)
        expect("SR 11.1 hcalcs-1 v2 distributed (not activated)", "distributed", _outcome(self.hc))
        order = _delivery_order(db, [subs[k].id for k in ("hcalcs", "ppmid-1", "tampered", "althan")])
        expect("deliveries in priority order", "hcalcs, ppmid, ppmid, althan", ", ".join(order))

    def hcalcs_activation(self) -> None:
        self.say("6. HCALCS activation by Manufacturer Image Hash (SR 11.3)")
        db, hcalcs = self.db, self.devices["hcalcs-1"]
        wrong = rq.activate(db, hcalcs, "00" * 32, SUPPLIER_A)
        self.expect("SR 11.3 hcalcs-1 with a wrong hash", "hash_mismatch", _outcome(_wait(db, wrong.id)))
        right = rq.activate(db, hcalcs, self.hc["image_hash"], SUPPLIER_A)
        self.expect("SR 11.3 hcalcs-1 with the image's hash", "activated", _outcome(_wait(db, right.id)))

    def rollback(self) -> None:
        self.say("7. a broken image is rolled back")
        broken = rq.update_firmware(self.db, self.devices["ppmid-2"], self.img["broken"], SUPPLIER_A)
        self.expect("SR 11.4 ppmid-2 v3 whose self-test fails", "rolled_back",
                    _outcome(_wait(self.db, broken.id)))

    def read_versions(self) -> None:
        self.say("8. read back the versions (SR 11.2)")
        for name, want in (("ppmid-1", V2), ("ppmid-2", V1), ("althan-1", V2), ("hcalcs-1", V2)):
            r = _wait(self.db, rq.read_version(self.db, self.devices[name], SUPPLIER_A).id)
            self.expect("SR 11.2 %s runs" % name, "0x%08x" % want,
                        "0x%08x" % r["result"] if r["result"] is not None else _outcome(r))

    def swap_out(self) -> None:
        self.say("9. Trust Centre Swap-Out: the hub is replaced")
        db = self.db
        info = reg.swap_out(db)
        self.say("  new hub identity %s" % info.get("eui", info))
        time.sleep(1)
        r = _wait(db, rq.read_version(db, self.devices["ppmid-1"], SUPPLIER_A).id, timeout=90)
        self.expect("ppmid-1 rejoined the new hub (SR 11.2)", "version_read", _outcome(r))
        late = rq.update_firmware(db, self.devices["althan-1"], self.img["althan3"], SUPPLIER_A)
        self.expect("SR 11.4 althan-1 after the TCSO", "ota_unavailable_after_tcso",
                    _outcome(_wait(db, late.id)))


def _delivery_order(db: HubDB, ids: list[int]) -> list[str]:
    """Roles of the given requests by the time their transfer started."""
    started = []
    for rid in ids:
        row = db.request(rid)
        started.append((row["started"] if row["started"] is not None else float("inf"), row["role"]))
    return [role for _, role in sorted(started)]


def check(rows: list[Row]) -> None:
    bad = [r for r in rows if not r.ok]
    if bad:
        raise DemoFailure("; ".join("%s: expected %s, got %s" % (r.step, r.expected, r.got) for r in bad))
