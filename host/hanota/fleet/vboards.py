"""Virtual boards mixed into a simulated fleet (`hanota fleet sim --vboards N`).

A virtual board (`hanota.vboard.VirtualBoard`: the real MicroPython interpreter over emulated
flash) goes into each of the first N premises of the slice, next to that premises' simulated
devices, and is brought up the way a user brings up a board (as `hanota demo` does): started,
flashed through its ROM loader (firmware banks: vboard-esp32), deployed through its console
(`deploy.deploy`: role, pinned key, running version), linked to its premises' Comms Hub (a
UDP socket the hub opens for it, or the board's UART pty) and joined with its install code.

Its identity comes from the plan like every other device's (`FleetPlan.vboard_at`: device
slot 15 of the premises, which simulated devices never take), so `fleet register` /
`fleet sim --register` put it in the DCC's registration data from anywhere, and the hub's
registry holds it before it boots.

The workspace (`<--dir>/vboards/`, made by `prepare` in the parent process before any
premises starts):

- `keys/`: the image signing key pair the boards pin (`hanota keys generate`'s layout),
  made there when missing, or `--vboard-keys DIR`;
- `fw/<kind>/v<version>/`: the firmware the boards run at the start (`--version`);
- `images/<kind>-<role>-v<version + 1>.ota`: an upgrade image for them, the next firmware
  version signed with that key (only when the key directory holds private.pem), which the
  DCC's firmware SRs and campaigns can carry (`--register` also puts it on the DCC's CPL).
"""
from __future__ import annotations

import asyncio
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .plan import FleetPlan, FleetUsageError, Premises, SimDeviceSpec
from .sim import FleetError

DEFAULT_KIND = "vboard-esp32"
DEFAULT_ROLE = "ppmid"
# the device's timers as in the demo: it answers an Image Notify at once, a trial image has
# 30 s to pass its health check
DEVICE_SETTINGS = {"query_interval": 1, "health_timeout": 30, "block_timeout_ms": 800}
JOIN_TIMEOUT = 60.0  # seconds a deployed board has to join its premises' Comms Hub
BRING_UP_AT_ONCE = 4  # boards flashed and deployed at the same time in a process
FDS_PER_VBOARD = 24  # its console ptys and pipes, ROM loader and link sockets, log files


class VBoardError(FleetError):
    """A virtual board of the fleet could not be started, flashed, deployed or joined."""

    reason = "vboard"


@dataclass
class Workspace:
    """What the fleet's virtual boards are made from (all paths absolute)."""

    kind: str
    role: str
    dir: str  # <--dir>/vboards
    keys: str  # the key directory (public.bin, and private.pem when images are made here)
    firmware: dict  # fwbuild.build's output for the running version: kind -> path
    version: int  # the firmware version the boards run at the start
    image: str | None = None  # the upgrade image (version + 1), None without private.pem
    image_version: int | None = None
    image_hash: str | None = None  # its Manufacturer Image Hash (hex), for the CPL
    key_made: bool = False

    @property
    def public(self) -> Path:
        return Path(self.keys) / "public.bin"


def check_kind(kind: str) -> str:
    from ..vboard import layout

    kinds = layout.board_names(virtual=True)
    if kind not in kinds:
        raise FleetUsageError("--vboard-kind %r: one of %s" % (kind, ", ".join(kinds)))
    return kind


def check_keys(keys: str) -> Path:
    """--vboard-keys: a directory with public.bin (FleetUsageError otherwise)."""
    kdir = Path(keys).resolve()
    if not (kdir / "public.bin").is_file():
        raise FleetUsageError("--vboard-keys %s: no public.bin there (give a directory made "
                              "by `hanota keys generate`)" % keys)
    return kdir


def prepare(workdir: str, plan: FleetPlan, kind: str, keys: str | None = None) -> Workspace:
    """The workspace under `workdir`/vboards: the key pair (made when missing, unless `keys`
    names a key directory), the boards' firmware for plan.version and, with a private key,
    the signed upgrade image for plan.version + 1. The firmware and image are built again
    each run (from the device code as it is now)."""
    from .. import fwbuild, images
    from ..keys import generate_keys, load_private_key, load_public_key
    from hanfw import otafile

    check_kind(kind)
    role = plan.vboard_role
    base = Path(workdir).resolve() / "vboards"
    made = False
    if keys is None:
        kdir = base / "keys"
        if not (kdir / "public.bin").exists():
            generate_keys(kdir)
            made = True
    else:
        kdir = check_keys(keys)
    try:
        load_public_key(kdir / "public.bin")
    except Exception as e:  # noqa: BLE001 - the key file's own error names the problem
        raise FleetUsageError("%s: not a usable public key: %s" % (kdir / "public.bin", e)) \
            from None
    from ..boardspec import load_board
    chip = load_board(kind).chip
    fw = fwbuild.build(kind, "%d.0.0" % plan.version, base / "fw" / kind / ("v%d" % plan.version))
    ws = Workspace(kind=kind, role=role, dir=str(base), keys=str(kdir),
                   firmware={k: str(v) for k, v in fw.items()}, version=plan.version,
                   key_made=made)
    if (kdir / "private.pem").exists() and plan.version < 0xFFFFFFFF:
        nxt = plan.version + 1
        fw2 = fwbuild.build(kind, "%d.0.0" % nxt, base / "fw" / kind / ("v%d" % nxt))
        data = images.build_image(Path(fw2["app"]).read_bytes(),
                                  key=load_private_key(kdir / "private.pem"), version=nxt,
                                  role=role, board_family=otafile.BOARD_FAMILIES.get(chip, 0))
        out = base / "images" / ("%s-%s-v%d.ota" % (kind, role, nxt))
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(out)
        ws.image, ws.image_version = str(out), nxt
        ws.image_hash = images.parse_file(out).descriptor.image_hash.hex()
    return ws


def describe(ws: Workspace) -> list[str]:
    """What the workspace holds, as lines for the user."""
    lines = ["vboards: %s %s boards pin the key %s/public.bin%s; they start on firmware "
             "version %d (%s)" % (ws.kind, ws.role, ws.keys, " (made now)" if ws.key_made
                                  else "", ws.version, Path(ws.firmware["app"]).parent)]
    if ws.image:
        lines.append("vboards: upgrade image %s (version %d, Manufacturer Image Hash %s..): "
                     "send it to them by SR %s or a campaign" % (
                         ws.image, ws.image_version, ws.image_hash[:16],
                         {"hcalcs": "11.1"}.get(ws.role, "11.4")))
    else:
        lines.append("vboards: no private.pem in %s: build their upgrade images yourself "
                     "(hanota image build ... --key <the private key>)" % ws.keys)
    return lines


def add_to_cpl(store: Any, ws: Workspace) -> bool:
    """The workspace's upgrade image on the DCC's Central Products List (False: none)."""
    from .. import images

    if not ws.image:
        return False
    store.cpl_add(images.DEFAULT_MANUFACTURER, images.ROLE_IMAGE_TYPES[ws.role],
                  ws.image_version, bytes.fromhex(ws.image_hash))
    return True


def eui_colons(spec: SimDeviceSpec) -> str:
    """The EUI-64 as a board's configuration writes it (aa:bb:..., most significant first)."""
    return ":".join(spec.eui[i:i + 2] for i in range(0, 16, 2)).lower()


class FleetBoard:
    """One premises' virtual board in a fleet process: brought up by `bring_up` (blocking:
    run it in a thread), stopped by `stop` (idempotent, from any thread)."""

    def __init__(self, ws: Workspace, premises: Premises, spec: SimDeviceSpec, dir: Path):
        self.ws = ws
        self.premises = premises
        self.spec = spec
        self.name = "vb-%s" % premises.mpxn
        self.dir = dir
        self.board: Any = None
        self.deployed = False
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    def __str__(self) -> str:
        return "%s (%s %s %s, premises %s)" % (self.name, self.ws.kind, self.ws.role,
                                               self.spec.eui, self.premises.mpxn)

    @property
    def link_kind(self) -> str:
        from ..vboard import layout

        return layout.load_board(self.ws.kind).link

    def start(self, hub_udp: tuple[str, int] | None) -> None:
        """Power on a fresh chip (the previous run's flash is erased), its link towards
        hub_udp (a UDP board) or its UART pty (`board.info.link`)."""
        from ..vboard.board import VirtualBoard

        if self.dir.exists():
            shutil.rmtree(self.dir)
        with self._lock:
            if self._stopping.is_set():
                raise VBoardError("%s: the fleet is stopping" % self)
            kw: dict[str, Any] = {"hub": hub_udp} if hub_udp else {}
            self.board = VirtualBoard(self.dir, board=self.ws.kind, name=self.name,
                                      role=self.ws.role, eui64=eui_colons(self.spec), **kw)
        self.board.start()
        if self._stopping.is_set():  # stopped while it started: stop what it made
            self.board.stop()
            raise VBoardError("%s: the fleet is stopping" % self)

    def flash_and_deploy(self) -> None:
        """As a user does: firmware through the ROM loader (firmware banks), then the device
        code, role, key and version through the console."""
        from .. import deploy, flasher

        b = self.board
        if b.romloader is not None:
            flasher.flash_firmware(b.romloader.url, self.ws.firmware["firmware"],
                                   board=self.ws.kind)
        self._check_stopping()
        b.console.wait_ready(30)
        self._check_stopping()
        app = Path(self.ws.firmware["app"]).read_bytes() if "firmware" not in self.ws.firmware \
            else None
        deploy.deploy(b.console.pty_path, self.ws.kind, self.ws.role, [self.ws.public],
                      eui64=eui_colons(self.spec), install_code=self.spec.install_code,
                      version=self.ws.version, settings=DEVICE_SETTINGS, app_romfs=app)
        self.deployed = True

    def _check_stopping(self) -> None:
        if self._stopping.is_set():
            raise VBoardError("%s: the fleet is stopping" % self)

    def stop(self) -> None:
        with self._lock:
            self._stopping.set()
            b = self.board
        if b is not None:
            b.stop()


async def bring_up(fb: FleetBoard, hub: Any, gate: asyncio.Semaphore) -> None:
    """Start, flash, deploy and join one board to `hub` (a started `Hub` of the fleet);
    VBoardError naming the board and why."""
    from ..hub import registry as reg

    srv = hub.server
    async with gate:
        try:
            udp = None
            if fb.link_kind == "udp":  # Wi-Fi/UDP to the hub: a socket of its own on loopback
                udp = await srv.listen_udp("127.0.0.1", 0)
            await asyncio.to_thread(fb.start, udp)
            if fb.link_kind != "udp":  # a UART to the hub
                await srv.attach_serial(fb.board.info.link)
            await asyncio.to_thread(fb.flash_and_deploy)
        except VBoardError:
            raise
        except Exception as e:  # noqa: BLE001 - every cause becomes the board's error
            raise VBoardError("%s could not be brought up: %s" % (
                fb, str(e).strip() or type(e).__name__)) from None
    wire = fb.spec.eui_wire
    end = time.monotonic() + JOIN_TIMEOUT
    while not joined(srv, wire):
        if time.monotonic() > end:
            dev = reg.device(hub.db, fb.spec.eui)
            raise VBoardError("%s did not join its Comms Hub %s within %.0f s after deploying "
                              "(%s; its console log: %s)" % (
                                  fb, fb.premises.hub_eui, JOIN_TIMEOUT,
                                  "in the hub's registry" if dev is not None
                                  else "NOT in the hub's registry", fb.dir / "events.log"))
        await asyncio.sleep(0.2)


def joined(server: Any, eui_wire: bytes) -> bool:
    dev = server.devices.get(eui_wire)
    return dev is not None and server.sessions.is_joined(dev)
