"""`OtaServer`: owns the transports and the three parts of the server, and dispatches frames.

A link frame goes to `Sessions` (authenticated, JOIN, HELLO); an OTA ZCL frame is queued per
device and handled in that device's worker task, in order: client commands go to `Serving`
(query, blocks, pages, Upgrade End), answers to hub commands to `Commands`. A read of the
Time cluster is answered at once from the hub's clock (`timesrv`).
"""
from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from typing import Any, Callable, Iterable

from hanfw import link as hlink
from hanfw import zcl
from hanfw.zcl import ZclError

from ..linkio import Link, SerialLink, UdpLink
from . import timesrv
from .commands import Commands
from .common import GLOBAL_S2C, QUEUE_LIMIT, S2C_RESPONSE, Guard, ServerError, log
from .policy import Policy, ServedImage
from .sessions import DeviceState, Sessions
from .transfers import Serving, Transfer


class OtaServer:
    """The hub's OTA server. Create, add transports, `await close()` when done.

    block_cap: largest block data served (also bounded by the link frame);
    response_spacing_ms: least gap between block responses to one device;
    page_spacing_ms: least gap between the block responses of a page (the device's own
    response spacing applies when larger); stall_timeout: seconds without a block request
    before a transfer is reported stalled; activation_timeout: seconds after the planned
    activation before a device without an Activation Alert is reported; max_in_flight:
    concurrent transfers (others get WAIT_FOR_DATA for busy_retry_s); request_timeout and
    retries: for hub -> device commands; clock: Unix time source for all timestamps.
    """

    def __init__(self, hub_eui: bytes, policy: Policy, *, block_cap: int = 64,
                 response_spacing_ms: int = 0, page_spacing_ms: int = 0,
                 stall_timeout: float = 30.0, activation_timeout: float = 600.0,
                 max_in_flight: int | None = None, busy_retry_s: int = 10,
                 request_timeout: float = 5.0, retries: int = 2,
                 progress_interval: float = 1.0, watch_interval: float | None = None,
                 clock: Callable[[], float] = time.time):
        if len(hub_eui) != 8:
            raise ServerError("the hub EUI-64 must be 8 bytes", reason="bad-argument")
        if not 1 <= block_cap <= 255:
            raise ServerError("block_cap must be 1..255", reason="bad-argument")
        self.hub_eui = bytes(hub_eui)
        self.policy = policy
        self.clock = clock
        self.watch_interval = watch_interval or min(1.0, stall_timeout / 4)
        self.stats: Counter[str] = Counter()
        self._guard = guard = Guard(self.stats)
        self.sessions = Sessions(self.hub_eui, policy, self.stats, guard, clock)
        self.serving = Serving(self.sessions, policy, self.stats, guard, clock,
                               block_cap=block_cap, response_spacing_ms=response_spacing_ms,
                               page_spacing_ms=page_spacing_ms, stall_timeout=stall_timeout,
                               activation_timeout=activation_timeout,
                               max_in_flight=max_in_flight, busy_retry_s=busy_retry_s,
                               progress_interval=progress_interval)
        self.commands = Commands(self.sessions, self.serving, policy, self.stats, clock,
                                 request_timeout=request_timeout, retries=retries)
        self._links: list[Link] = []
        self._watchdog: asyncio.Task | None = None
        self._closed = False

    # -- what the server knows (for tests and displays; the hub uses the methods below)

    @property
    def devices(self) -> dict[bytes, DeviceState]:
        return self.sessions.devices

    @property
    def transfers(self) -> dict[bytes, Transfer]:
        return self.serving.transfers

    @property
    def in_flight(self) -> set[bytes]:
        return self.serving.in_flight

    def is_known(self, eui: bytes) -> bool:
        """Whether this run has state for eui (heard from, or commanded)."""
        return eui in self.sessions.devices

    def device_counters(self) -> dict[bytes, tuple[int | None, float | None]]:
        """{eui: (last frame counter accepted, last heard Unix time)} of every known device."""
        return {eui: (d.last_counter, d.last_seen) for eui, d in self.sessions.devices.items()}

    def transfer_for(self, eui: bytes) -> Transfer | None:
        """eui's transfer in this run, if any (it stays after completing)."""
        return self.serving.transfers.get(eui)

    def all_transfers(self) -> dict[bytes, Transfer]:
        """Every transfer in this run by device (a copy: safe to change the server meanwhile)."""
        return dict(self.serving.transfers)

    def throttle_left(self, eui: bytes) -> float | None:
        """Seconds eui is still told to wait (<= 0: not throttled); None: not known."""
        dev = self.sessions.devices.get(eui)
        return None if dev is None else dev.throttle_until - self.clock()

    # -- transports and lifetime

    async def listen_udp(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Serve devices on a UDP socket; returns the bound (host, port)."""
        link = await UdpLink.open(host, port, self._on_frame, self._on_bad)
        self._add_link(link)
        return link.local

    async def attach_serial(self, path_or_fd: str | os.PathLike | int,
                            baudrate: int | None = None) -> str:
        """Serve devices on a serial line (device path or open descriptor); returns its name."""
        link = SerialLink.open(path_or_fd, self._on_frame, self._on_bad, baudrate=baudrate)
        self._add_link(link)
        return link.name

    def attach_link(self, make: Callable[[Any, Any], Link]) -> Link:
        """Serve devices on another transport: make(on_frame, on_bad) returns a `Link` that
        calls the server's handlers (the fleet simulator's in-process HAN); returns it."""
        link = make(self._on_frame, self._on_bad)
        self._add_link(link)
        return link

    def _add_link(self, link: Link) -> None:
        if self._closed:
            link.close()
            raise ServerError("the server is closed", reason="closed")
        self._links.append(link)
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    async def close(self) -> None:
        """Stop every task, fail pending commands, close transports and files."""
        self._closed = self.sessions.closed = True
        tasks = [self._watchdog] if self._watchdog else []
        for dev in self.sessions.devices.values():
            tasks += [t for t in (dev.worker, dev.page_task) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.commands.close()
        for link in self._links:
            link.close()
        self._links.clear()
        self.serving.blocks.files.close()

    async def __aenter__(self) -> "OtaServer":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # -- controls

    def throttle(self, eui: bytes, seconds: float) -> None:
        """Answer eui's block and page requests with WAIT_FOR_DATA for the next seconds."""
        self.serving.throttle(self.sessions.known(eui), seconds)

    def forget(self, eui: bytes) -> None:
        """Drop what this run knows of a device (e.g. after its install code changed)."""
        self.sessions.forget(eui)
        self.serving.in_flight.discard(eui)

    def cancel_transfer(self, eui: bytes) -> None:
        """Forget eui's transfer (e.g. its request was superseded): its in-flight slot is
        freed, the image is no longer offered, and its next block request is aborted."""
        self.serving.cancel(eui)

    def check_timeouts(self) -> None:
        """Report stalled transfers and silent activations (the watchdog calls this)."""
        self.serving.check_timeouts()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.watch_interval)
            try:
                self.check_timeouts()
                self.serving.blocks.files.close_idle()
            except Exception:  # a policy bug must not end the watchdog
                log.exception("watchdog")

    # -- hub -> device commands

    async def send_app(self, eui: bytes, cluster: int, payload: bytes) -> None:
        """Send application data on another cluster (a role's data, e.g. a PPMID balance).

        Fire and forget: the link authenticates it; the role acts on it."""
        await self.commands.send_app(eui, cluster, payload)

    async def notify(self, eui: bytes, *, timeout: float | None = None,
                     retries: int | None = None) -> bool:
        """Image Notify (payload type 0, jitter 100), repeated until the device sends a Query
        Next Image. False if it never does: not fatal, a device also queries on its own."""
        return await self.commands.notify(eui, timeout, retries)

    async def activate(self, eui: bytes, image_hash: bytes, execution_time: int = 0,
                       counter: int = 0, *, manufacturer: int | None = None,
                       timeout: float | None = None,
                       retries: int | None = None) -> tuple[int, int, int]:
        """Activate Image (0xF0): returns the device's (code, running version, counter echo).

        execution_time is UTC seconds since 2000 (0 = now); counter is the originator counter.
        A SUCCESS arms the post-activation watchdog (Activation Alert expected).
        """
        return await self.commands.activate(eui, image_hash, execution_time, counter,
                                            manufacturer, timeout, retries)

    async def gbcs(self, eui: bytes, data: bytes, *, manufacturer: int | None = None,
                   timeout: float | None = None,
                   retries: int | None = None) -> tuple[int, bytes]:
        """GBCS Command (0xF3): relays a GBCS message (a CS06 the DCC MAC'd) to the device;
        returns its 0xF4 answer: (reason byte: 0 or 1 + the index in
        hanfw.activation.REFUSALS, its GBCS response, possibly empty)."""
        return await self.commands.gbcs(eui, data, manufacturer, timeout, retries)

    async def read_attributes(self, eui: bytes, attr_ids: Iterable[int], *,
                              timeout: float | None = None,
                              retries: int | None = None) -> list[zcl.AttrRecord]:
        """ZCL Read Attributes of the device's OTA client attributes (e.g. 0x0002 version)."""
        return await self.commands.read_attributes(eui, attr_ids, timeout, retries)

    async def upgrade_end_response(self, eui: bytes, image: ServedImage | None = None,
                                   current_time: int | None = None,
                                   upgrade_time: int | None = None, *,
                                   timeout: float | None = None,
                                   retries: int | None = None) -> tuple[int, int]:
        """Send an unsolicited Upgrade End Response (times from the policy unless given) and
        wait for the device's Default Response. Returns the (current, upgrade) times sent."""
        return await self.commands.upgrade_end_response(eui, image, current_time,
                                                        upgrade_time, timeout, retries)

    # -- receiving link frames

    def _on_bad(self, link: Link, addr: Any, reason: str) -> None:
        if reason in ("serial-closed", "serial-error"):
            self.stats[reason] += 1  # the line, not a frame: nothing was dropped
            log.warning("%s: %s, no longer read", link.name, reason)
        else:
            self.sessions.drop(link, addr, reason)

    def _on_frame(self, frame: bytes, link: Link, addr: Any) -> None:
        if self._closed:
            return
        accepted = self.sessions.accept(frame, link, addr)
        if accepted is None:
            return
        dev, kind, cluster, payload = accepted
        if kind == hlink.KIND_JOIN_REQ:
            self.sessions.join(dev, payload)
        elif kind == hlink.KIND_HELLO:
            self.sessions.hello(dev, payload)
        elif kind != hlink.KIND_DATA:
            self.sessions.drop(link, addr, "kind")
        elif not self.sessions.is_joined(dev):
            self.sessions.drop(link, addr, "not-joined")
        elif cluster == zcl.CLUSTER_TIME:
            timesrv.answer(self.sessions, dev, bytes(payload), self.clock, self.stats)
        elif cluster != zcl.CLUSTER_OTA:
            self.sessions.drop(link, addr, "cluster")
        else:
            self._enqueue(dev, bytes(payload))

    def _enqueue(self, dev: DeviceState, zcl_frame: bytes) -> None:
        if dev.queue is None:
            dev.queue = asyncio.Queue(QUEUE_LIMIT)
            dev.worker = asyncio.get_running_loop().create_task(self._serve_device(dev))
        try:
            dev.queue.put_nowait(zcl_frame)
        except asyncio.QueueFull:
            self.sessions.drop(dev.link, dev.addr, "overload")

    # -- ZCL from devices, in order per device

    async def _serve_device(self, dev: DeviceState) -> None:
        while True:
            frame = await dev.queue.get()
            try:
                await self._handle_zcl(dev, frame)
            except ServerError as e:
                log.warning("%s: %s", hlink.eui_str(dev.eui), e)
            except Exception:
                log.exception("handling a frame from %s", hlink.eui_str(dev.eui))
                self.stats["internal-error"] += 1

    async def _handle_zcl(self, dev: DeviceState, buf: bytes) -> None:
        try:
            fc, mfr, tsn, cmd, off = zcl.parse_header(buf)
        except ZclError:
            self.stats["zcl-malformed"] += 1
            return
        if fc & zcl.FC_SERVER_TO_CLIENT:
            self.stats["zcl-direction"] += 1
            return
        cluster = (fc & zcl.FC_FRAME_TYPE_MASK) == zcl.FC_CLUSTER
        s = self.sessions
        try:
            if not cluster:
                self._global(dev, mfr, tsn, cmd, buf, off)
            elif mfr is not None:
                self._manufacturer(dev, fc, mfr, tsn, cmd, buf, off)
            elif cmd == zcl.CMD_QUERY_NEXT_IMAGE:
                q = zcl.parse_query_next_image(buf, off)
                self.commands.queried(dev.eui, q)  # an Image Notify waiting for it is answered
                self.serving.query(dev, tsn, q)
            elif cmd == zcl.CMD_IMAGE_BLOCK:
                await self.serving.block(dev, tsn, buf, off)
            elif cmd == zcl.CMD_IMAGE_PAGE:
                self.serving.page(dev, tsn, buf, off)
            elif cmd == zcl.CMD_UPGRADE_END:
                self.serving.upgrade_end(dev, tsn, buf, off)
            elif cmd == zcl.CMD_QUERY_SPECIFIC_FILE:
                zcl.parse_query_specific_file(buf, off)
                s.send_zcl(dev, S2C_RESPONSE, tsn, zcl.CMD_QUERY_SPECIFIC_FILE_RESPONSE,
                           zcl.pack_image_available(zcl.NO_IMAGE_AVAILABLE))
            else:
                self.stats["zcl-unsupported"] += 1
                s.default_response(dev, tsn, cmd, zcl.UNSUP_CLUSTER_COMMAND)
        except ZclError as e:
            self.stats["zcl-malformed"] += 1
            s.default_response(dev, tsn, cmd, e.status, mfr)

    def _global(self, dev: DeviceState, mfr: int | None, tsn: int, cmd: int, buf: bytes,
                off: int) -> None:
        if cmd == zcl.GLOBAL_DEFAULT_RESPONSE:
            self.commands.default_response(dev, tsn, zcl.parse_default_response(buf, off))
        elif cmd == zcl.GLOBAL_READ_ATTRIBUTES_RESPONSE:
            self.commands.attributes_response(dev, tsn,
                                              zcl.parse_read_attributes_response(buf, off))
        elif cmd == zcl.GLOBAL_READ_ATTRIBUTES:
            # The server side of the OTA cluster has no attributes here.
            ids = zcl.parse_read_attributes(buf, off)
            recs = [(a, zcl.UNSUPPORTED_ATTRIBUTE, None, None) for a in ids]
            self.sessions.send_zcl(dev, GLOBAL_S2C, tsn, zcl.GLOBAL_READ_ATTRIBUTES_RESPONSE,
                                   zcl.pack_read_attributes_response(recs), mfr)
        else:
            self.stats["zcl-unsupported"] += 1
            self.sessions.default_response(dev, tsn, cmd, zcl.UNSUP_GENERAL_COMMAND, mfr)

    def _manufacturer(self, dev: DeviceState, fc: int, mfr: int, tsn: int, cmd: int,
                      buf: bytes, off: int) -> None:
        guard = self._guard
        if cmd == zcl.CMD_ACTIVATE_IMAGE_RESPONSE:
            r = zcl.parse_activate_image_response(buf, off)
            dev.file_version = r.file_version
            self.commands.activate_response(dev, tsn, r)
            guard(self.policy.on_activate_response, dev.eui, r.code, r.file_version, r.counter)
        elif cmd == zcl.CMD_GBCS_RESPONSE and len(buf) > off:
            # reason u8 || GBCS response or alert (hanfw/activation.py)
            if not self.commands.gbcs_response(dev, tsn, buf[off], bytes(buf[off + 1:])):
                guard(self.policy.on_gbcs_alert, dev.eui, buf[off], bytes(buf[off + 1:]))
        elif cmd == zcl.CMD_ACTIVATION_ALERT:
            a = zcl.parse_activation_alert(buf, off)
            dev.file_version = a.file_version
            dev.alert_deadline = dev.alert_image = None
            guard(self.policy.on_alert, dev.eui, a.file_version, a.previous_version,
                  bool(a.rolled_back), a.reason)
            if not fc & zcl.FC_DISABLE_DEFAULT_RESPONSE:
                self.sessions.default_response(dev, tsn, cmd, zcl.SUCCESS, mfr)
        else:
            self.stats["zcl-unsupported"] += 1
            self.sessions.default_response(dev, tsn, cmd, zcl.UNSUP_MANUF_CLUSTER_COMMAND, mfr)
