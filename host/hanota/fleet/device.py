"""The fleet simulator's HAN: devices that run by themselves, on an in-process link.

`HanBus` is one Comms Hub's HAN inside the process: a `hanota.linkio.Link` the hub's
`OtaServer` serves (`OtaServer.attach_link`) whose frames go to the devices by a loop
callback, with no socket and no thread (a fleet of 25,000 devices would otherwise need as
many UDP sockets). The frames are the real link frames (`hanfw.link`: MAC, counters).

`SimDevice` is `hanota.simdevice.FakeDevice` (the project's link and ZCL code on CPython)
with an OTA client that runs by itself, as a board would: it joins with its install code,
says HELLO, and on Image Notify queries, downloads block by block (resuming from its own
offset), checks the file it got (the descriptor's SHA-256 against the image element's),
sends Upgrade End (INVALID_IMAGE when the check fails), activates at the time the Upgrade
End Response gives (PPMID, Alt HAN: SR 11.4) or holds the image until an Activate Image
with its hash (HCALCS: SR 11.1, then 11.3), says HELLO with the new version and sends its
Activation Alert. What it does is counted in a `Counter` its process shares.

The tests' `AgentDevice` (tests/support/hubfixtures.py) is a `SimDevice` too: it keeps what it
saw (`keep_history`), can pace its blocks (`pace`), and changes the Upgrade End status
(`_verdict`), what it records of the answer (`_ended`) and the "reboot" into the new image
(`_boot`), which are the hooks here.
"""
from __future__ import annotations

import asyncio
import io
import time
from collections import Counter
from typing import Any

from hanfw import link as hlink
from hanfw import otafile, zcl

from .. import images
from ..linkio import Link
from ..server import zigbee_time
from ..simdevice import DeviceError, FakeDevice


class HanBus(Link):
    """One hub's in-process HAN (the server's end); a device's address is the device."""

    name = "sim-han"

    def __init__(self, on_frame, on_bad=None):
        self.on_frame = on_frame  # the server's frame handler
        self.loop = asyncio.get_running_loop()
        self.closed = False

    def send(self, frame: bytes, addr: Any) -> None:
        if not self.closed and addr is not None:
            self.loop.call_soon(addr.on_air, bytes(frame))

    def describe(self, addr: Any) -> str:
        return "sim:%s" % (addr.eui_text if addr is not None else "-")

    def close(self) -> None:
        self.closed = True

    def uplink(self, device: "SimDevice") -> "_DeviceEnd":
        return _DeviceEnd(self, device)


class _DeviceEnd(Link):
    """A device's end of the bus: what it sends goes to the server as from `device`."""

    name = "sim-han"

    def __init__(self, bus: HanBus, device: "SimDevice"):
        self.bus, self.device = bus, device

    def send(self, frame: bytes, addr: Any) -> None:
        if not self.bus.closed:
            self.bus.loop.call_soon(self.bus.on_frame, bytes(frame), self.bus, self.device)

    def close(self) -> None:
        pass


class SimDevice(FakeDevice):
    retry_pause = 0.5
    keep_history = False  # keep notifies, activations, pushed answers, block sizes (tests)
    pace = 0.0  # seconds between two blocks

    def __init__(self, eui_wire: bytes, install_code: str, role: str, stats: Counter, *,
                 version: int = 1, give_up: float = 60.0, timeout: float = 2.0,
                 retries: int = 3, max_data: int = 64, **kw):
        kw.setdefault("manufacturer", images.DEFAULT_MANUFACTURER)
        super().__init__(eui_wire, install_code, role=role,
                         image_type=images.ROLE_IMAGE_TYPES[role], version=version,
                         timeout=timeout, retries=retries, **kw)
        self.eui_text = hlink.eui_str(eui_wire)
        self.stats = stats
        self.give_up = give_up
        self.max_data = max_data
        self.service = hlink.SERVICE_ALT_HAN_P2P if role == "althan" else hlink.SERVICE_ORDINARY
        self.held_version: int | None = None
        self.joined = False
        self._update: asyncio.Task | None = None

    # -- the link

    def attach(self, bus: HanBus) -> None:
        self.link, self.addr = bus.uplink(self), None

    def on_air(self, frame: bytes) -> None:
        self._on_frame(frame, self.link, None)

    async def start(self) -> bool:
        """Join (with retries while the hub is away) and say HELLO; True once joined."""
        try:
            status = await self.persist(self.join, self.service)
        except TimeoutError:
            self.stats["join_timeout"] += 1
            return False
        if status != hlink.JOIN_OK:
            self.stats["join_refused"] += 1
            return False
        await self.persist(self.hello)
        self.joined = True
        self.stats["joined"] += 1
        return True

    # -- the device's side of the hub's commands

    def _zcl(self, buf: bytes) -> None:
        fc, mfr, tsn, cmd, off = zcl.parse_header(buf)
        if cmd == zcl.CMD_IMAGE_NOTIFY and mfr is None \
                and fc & zcl.FC_FRAME_TYPE_MASK == zcl.FC_CLUSTER:
            if self.keep_history:
                self.notifies.append(zcl.parse_image_notify(buf, off))
            if self.answer_notify:
                self.kick()
            return
        held = self.held_hash
        super()._zcl(buf)
        if cmd == zcl.CMD_ACTIVATE_IMAGE and mfr is not None:
            a = self.activations[-1] if self.keep_history else self.activations.pop()
            if held is not None and a.image_hash == held:
                delay = a.execution_time - zigbee_time(time.time()) if a.execution_time else 0.0
                self._spawn(self._guarded(self._activate(delay, self.held_version)))
        if not self.keep_history:
            self.pushed.clear()

    def kick(self) -> None:
        """Run the OTA client once (query, download, end) unless it is running."""
        if self._update is None or self._update.done():
            self._update = asyncio.get_running_loop().create_task(self._guarded(self._run()))
            self._tasks.add(self._update)
            self._update.add_done_callback(self._tasks.discard)

    async def _guarded(self, coro) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            self.stats["timeouts"] += 1
        except Exception as e:  # noqa: BLE001 - counted, the device goes on
            self.stats["errors"] += 1
            self.stats["error: %s: %s" % (type(e).__name__, str(e)[:80])] += 1

    # -- the OTA client

    async def _run(self) -> None:
        try:
            avail = await self.query()
        except DeviceError:
            return
        if avail.status != zcl.SUCCESS:
            return
        ident = (avail.manufacturer, avail.image_type, avail.file_version)
        if self.target != ident or self.image is None:
            self.image, self.offset = None, 0
            self.stats["downloads_started"] += 1
        try:
            await self._fetch(avail)
        except DeviceError:  # the hub ended it (superseded, cancelled): drop the partial file
            self.image, self.offset, self.target = None, 0, None
            self.stats["downloads_aborted"] += 1
            return
        finally:
            if not self.keep_history:
                self.block_sizes.clear()
                self.waits.clear()
        await self._end(avail)

    async def _fetch(self, avail) -> None:
        """Download from the device's own offset to the end of the image, block by block."""
        while self.offset < avail.image_size:
            await self.persist(self.download, avail, max_data=self.max_data,
                                stop_at=self.offset + self.max_data)
            if self.pace:
                await asyncio.sleep(self.pace)

    def _verdict(self, good: bool) -> int:
        """The Upgrade End status for a file whose check passed (good) or failed."""
        return zcl.SUCCESS if good else zcl.INVALID_IMAGE

    def _ended(self, status: int, cmd: int, rsp) -> None:
        """The hub's answer to the Upgrade End (a hook: nothing to do here)."""

    async def _end(self, avail) -> None:
        s = otafile.parse_stream(io.BytesIO(bytes(self.image)), block=4096)
        good = s.descriptor is not None and s.descriptor.image_hash == s.image_sha256
        self.stats["verified" if good else "verify_failed"] += 1
        status = self._verdict(good)
        cmd, rsp = await self.persist(self.upgrade_end, status)
        self._ended(status, cmd, rsp)
        image_hash = s.descriptor.image_hash if good else None
        self.image, self.offset = None, 0
        if status != zcl.SUCCESS or cmd != zcl.CMD_UPGRADE_END_RESPONSE:
            self.target = None
            return
        self.held_hash = image_hash
        self.held_version = avail.file_version
        if rsp.upgrade_time == zcl.UPGRADE_TIME_WAIT:
            self.stats["held"] += 1  # until an Activate Image (HCALCS)
            return
        delay = rsp.upgrade_time if rsp.current_time == 0 \
            else rsp.upgrade_time - rsp.current_time
        await self._activate(delay, avail.file_version)

    async def _activate(self, delay: float, version: int) -> None:
        await asyncio.sleep(max(0.0, delay))
        previous = self.version
        self.held_hash, self.target = None, None
        alert = self._boot(version, previous)
        await self.persist(self.hello)  # "rebooted" into the new image
        if alert is not None:
            await self.persist(self.alert, *alert)
            self.stats["alerts"] += 1

    def _boot(self, version: int, previous: int) -> tuple | None:
        """Run the new image; the Activation Alert's arguments (None: no alert is sent)."""
        self.version = version
        self.attributes[zcl.ATTR_CURRENT_FILE_VERSION] = (zcl.TYPE_UINT32, version)
        self.stats["activated"] += 1
        return (version, previous, False, zcl.ALERT_NONE)
