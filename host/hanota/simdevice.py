"""A simulated HAN device: CPython asyncio, the device side of the link and ZCL only.

It speaks the device side with the project's own wire code (`hanfw.link`, `hanfw.zcl`):
joins, opens a session (HELLO), queries, downloads an image by blocks or pages (honouring
WAIT_FOR_DATA, resuming from any offset), sends Upgrade End and Activation Alerts, and
answers Image Notify, Activate Image, Read Attributes and pushed Upgrade End Responses.
It checks the hub's frames as a device must: MAC, destination, hub counters increasing
(baseline from HELLO_ACK). It has no flash and verifies nothing about the image itself.

It is light enough for hundreds to run in one process: the benchmarks load a hub with it
(`bench/hub.py`), and the tests use it as the device opposite the hub's OTA server
(`FakeDevice`; `FakeBus` puts several on one serial line; `install_code(n)` gives device
n a valid install code). For the device code itself, see the virtual boards
(`hanota.vboard`).
"""
from __future__ import annotations

import asyncio
import os
import struct
from collections import Counter

from hanfw import link as hlink
from hanfw import zcl
from hanota.linkio import SerialLink, UdpLink

C2S = zcl.FC_CLUSTER  # cluster-specific, client -> server, default response wanted
C2S_MFR = zcl.FC_CLUSTER | zcl.FC_MANUFACTURER


class DeviceError(Exception):
    """The server answered with a status the device cannot go on with."""

    def __init__(self, status: int, what: str):
        super().__init__("%s: %s" % (what, zcl.status_name(status)))
        self.status = status


class FakeBus:
    """One serial line shared by several fake devices (frames routed by destination EUI)."""

    def __init__(self, fd: int):
        self.devices: dict[bytes, FakeDevice] = {}
        self.link = SerialLink(fd, self._on_frame)

    def attach(self, dev: "FakeDevice") -> None:
        self.devices[dev.eui] = dev
        dev.link, dev.addr = self.link, None

    def _on_frame(self, frame: bytes, link, addr) -> None:
        dev = self.devices.get(bytes(frame[9:17]))
        if dev is not None:
            dev._on_frame(frame, link, addr)

    def close(self) -> None:
        self.link.close()


class FakeDevice:
    give_up = 30.0  # persist(): how long a device -> hub exchange is retried (s)
    retry_pause = 0.2  # persist(): the pause between tries (s)

    async def persist(self, fn, *args, **kw):
        """Retry a device -> hub exchange (a coroutine function) while the hub does not
        answer, up to give_up seconds, retry_pause apart; its TimeoutError after that."""
        deadline = asyncio.get_running_loop().time() + self.give_up
        while True:
            try:
                return await fn(*args, **kw)
            except TimeoutError:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(self.retry_pause)

    def __init__(self, eui: bytes, install_code: str, *, role: str = "ppmid",
                 manufacturer: int = 0x1234, image_type: int = 0x0084, version: int = 1,
                 hw: int = 0x0100, counter: int = 1, hub: bytes | None = None,
                 hub_floor: int | None = None, timeout: float = 1.0, retries: int = 5,
                 rx_frame: int = 0):
        self.eui = eui
        self.rx_frame = rx_frame  # announced in HELLO when set: the hub may send bundles
        self.bundles = 0  # BUNDLE frames received
        self.mac = hlink.Mac(hlink.link_key(install_code))
        self.role, self.manufacturer, self.image_type = role, manufacturer, image_type
        self.version, self.hw = version, hw
        self.counter = counter  # next own frame counter (persisted across "reboots")
        self.hub = hub
        self.hub_floor = hub_floor  # hub counters at or below this are replays
        self.timeout, self.retries = timeout, retries
        self.link = None
        self.addr = None
        self.image: bytearray | None = None
        self.offset = 0
        self.target: tuple[int, int, int] | None = None  # identity of the image downloaded
        self.held_hash: bytes | None = None
        self.answer_notify = True
        self.silent = False  # ignore hub commands (to test hub timeouts)
        self.attributes = {zcl.ATTR_CURRENT_FILE_VERSION: (zcl.TYPE_UINT32, version),
                           zcl.ATTR_IMAGE_UPGRADE_STATUS: (zcl.TYPE_ENUM8, 0)}
        self.notifies: list = []
        self.pushed: list = []  # unsolicited Upgrade End Responses
        self.activations: list = []
        self.waits: list = []  # WAIT_FOR_DATA responses seen
        self.block_sizes: list[int] = []
        self.dropped: Counter[str] = Counter()
        self._tsn = 0x40
        self._pending: dict[int, asyncio.Future] = {}
        self._streams: dict[int, asyncio.Queue] = {}
        self._link_waits: dict[tuple[int, bytes], asyncio.Future] = {}
        self._tasks: set[asyncio.Task] = set()

    # -- transport

    async def open_udp(self, server: tuple[str, int]) -> None:
        self.link = await UdpLink.open("127.0.0.1", 0, self._on_frame, remote=server)
        self.addr = server

    def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        if isinstance(self.link, UdpLink):
            self.link.close()

    def frame(self, kind: int, payload: bytes, *, cluster: int = zcl.CLUSTER_OTA,
              counter: int | None = None, dst: bytes | None = None) -> bytes:
        """A link frame from this device (uses up a counter unless one is given)."""
        if counter is None:
            counter = self.counter
            self.counter += 1
        return hlink.pack(self.mac, kind, self.eui, dst or self.hub or hlink.BROADCAST,
                          counter, cluster, payload)

    def send_raw(self, data: bytes) -> None:
        self.link.send(data, self.addr)

    def _on_frame(self, frame: bytes, link, addr) -> None:
        try:
            kind, src, dst, ctr, cluster, payload = hlink.unpack(
                frame, lambda s: self.mac, max(self.rx_frame, hlink.MAX_FRAME))
        except hlink.LinkError as e:
            self.dropped[e.reason] += 1
            return
        if dst != self.eui or (self.hub is not None and src != self.hub):
            self.dropped["address"] += 1
            return
        if self.hub_floor is not None and ctr <= self.hub_floor:
            self.dropped["replay"] += 1
            return
        self.hub_floor = ctr
        payload = bytes(payload)
        if kind == hlink.KIND_JOIN_RSP:
            status, hub, hub_ctr, nonce = hlink.parse_join_rsp(payload)
            self._resolve_link((kind, nonce), (status, hub, hub_ctr))
        elif kind == hlink.KIND_HELLO_ACK:
            nonce, baseline = hlink.parse_hello(payload)
            self._resolve_link((kind, nonce), baseline)
        elif kind == hlink.KIND_DATA and not self.silent:
            self._zcl(payload)
        elif kind == hlink.KIND_BUNDLE and not self.silent:
            self.bundles += 1
            for item in hlink.split_bundle(payload):
                self._zcl(bytes(item))

    def _resolve_link(self, key, value) -> None:
        fut = self._link_waits.get(key)
        if fut is not None and not fut.done():
            fut.set_result(value)

    # -- link sessions

    async def _link_exchange(self, kind: int, rsp_kind: int, payload: bytes, nonce: bytes,
                             dst: bytes) -> object:
        fut = asyncio.get_running_loop().create_future()
        self._link_waits[(rsp_kind, nonce)] = fut
        try:
            for _ in range(self.retries + 1):
                self.send_raw(self.frame(kind, payload, cluster=0, dst=dst))
                try:
                    return await asyncio.wait_for(asyncio.shield(fut), self.timeout)
                except asyncio.TimeoutError:
                    continue
            raise TimeoutError("no answer to link frame kind %d" % kind)
        finally:
            del self._link_waits[(rsp_kind, nonce)]

    async def join(self, service: int = hlink.SERVICE_ORDINARY) -> int:
        nonce = os.urandom(8)
        req = hlink.pack_join_req(service, self.role, self.manufacturer, self.image_type,
                                  self.hw, self.version, nonce)
        status, hub, _ = await self._link_exchange(hlink.KIND_JOIN_REQ, hlink.KIND_JOIN_RSP,
                                                   req, nonce, hlink.BROADCAST)
        if status == hlink.JOIN_OK:
            self.hub = hub
        return status

    async def hello(self) -> int:
        nonce = os.urandom(8)
        baseline = await self._link_exchange(hlink.KIND_HELLO, hlink.KIND_HELLO_ACK,
                                             hlink.pack_hello(nonce, self.version, self.rx_frame),
                                             nonce,
                                             self.hub or hlink.BROADCAST)
        self.hub_floor = baseline
        return baseline

    # -- ZCL

    def _next_tsn(self) -> int:
        self._tsn = (self._tsn + 1) & 0xFF
        return self._tsn

    def send_zcl(self, fc: int, tsn: int, cmd: int, payload: bytes,
                 mfr: int | None = None) -> None:
        self.send_raw(self.frame(hlink.KIND_DATA, zcl.pack_header(fc, tsn, cmd, mfr) + payload))

    async def request(self, fc: int, cmd: int, payload: bytes, mfr: int | None = None, *,
                      timeout: float | None = None, retries: int | None = None) -> tuple:
        """Send a command, return (command_id, parsed response) of the reply with its TSN."""
        tsn = self._next_tsn()
        fut = asyncio.get_running_loop().create_future()
        self._pending[tsn] = fut
        try:
            for _ in range((self.retries if retries is None else retries) + 1):
                self.send_zcl(fc, tsn, cmd, payload, mfr)
                try:
                    return await asyncio.wait_for(asyncio.shield(fut), timeout or self.timeout)
                except asyncio.TimeoutError:
                    continue
            raise TimeoutError("no answer to ZCL command 0x%02X" % cmd)
        finally:
            del self._pending[tsn]

    def _zcl(self, buf: bytes) -> None:
        fc, mfr, tsn, cmd, off = zcl.parse_header(buf)
        if fc & zcl.FC_FRAME_TYPE_MASK == zcl.FC_GLOBAL:
            if cmd == zcl.GLOBAL_READ_ATTRIBUTES:
                self._answer_read(tsn, zcl.parse_read_attributes(buf, off))
                return
            parsed = {zcl.GLOBAL_DEFAULT_RESPONSE: zcl.parse_default_response,
                      zcl.GLOBAL_READ_ATTRIBUTES_RESPONSE: zcl.parse_read_attributes_response}
            self._deliver(tsn, cmd, parsed[cmd](buf, off))
        elif cmd == zcl.CMD_IMAGE_BLOCK_RESPONSE:
            self._deliver(tsn, cmd, zcl.parse_block_response(buf, off))
        elif cmd in (zcl.CMD_QUERY_NEXT_IMAGE_RESPONSE, zcl.CMD_QUERY_SPECIFIC_FILE_RESPONSE):
            self._deliver(tsn, cmd, zcl.parse_image_available(buf, off))
        elif cmd == zcl.CMD_UPGRADE_END_RESPONSE:
            r = zcl.parse_upgrade_end_response(buf, off)
            if tsn in self._pending:
                self._deliver(tsn, cmd, r)
            else:
                self.pushed.append(r)
                if not fc & zcl.FC_DISABLE_DEFAULT_RESPONSE:
                    self.send_zcl(zcl.FC_GLOBAL | zcl.FC_DISABLE_DEFAULT_RESPONSE, tsn,
                                  zcl.GLOBAL_DEFAULT_RESPONSE,
                                  zcl.pack_default_response(cmd, zcl.SUCCESS))
        elif cmd == zcl.CMD_IMAGE_NOTIFY:
            self.notifies.append(zcl.parse_image_notify(buf, off))
            if self.answer_notify:
                self._spawn(self.query())
        elif cmd == zcl.CMD_ACTIVATE_IMAGE and mfr is not None:
            a = zcl.parse_activate_image(buf, off)
            self.activations.append(a)
            if self.held_hash is None:
                code = zcl.ACTIVATE_NO_IMAGE_HELD
            else:
                code = zcl.ACTIVATE_SUCCESS if a.image_hash == self.held_hash \
                    else zcl.ACTIVATE_HASH_MISMATCH
            self.send_zcl(C2S_MFR | zcl.FC_DISABLE_DEFAULT_RESPONSE, tsn,
                          zcl.CMD_ACTIVATE_IMAGE_RESPONSE,
                          zcl.pack_activate_image_response(code, self.version, a.counter), mfr)

    def _deliver(self, tsn: int, cmd: int, parsed) -> None:
        q = self._streams.get(tsn)
        if q is not None:
            q.put_nowait((cmd, parsed))
            return
        fut = self._pending.get(tsn)
        if fut is not None and not fut.done():
            fut.set_result((cmd, parsed))

    def _answer_read(self, tsn: int, ids) -> None:
        recs = []
        for a in ids:
            if a in self.attributes:
                recs.append((a, zcl.SUCCESS) + self.attributes[a])
            else:
                recs.append((a, zcl.UNSUPPORTED_ATTRIBUTE, None, None))
        self.send_zcl(zcl.FC_GLOBAL | zcl.FC_DISABLE_DEFAULT_RESPONSE, tsn,
                      zcl.GLOBAL_READ_ATTRIBUTES_RESPONSE, zcl.pack_read_attributes_response(recs))

    def _spawn(self, coro) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    # -- the OTA client

    async def query(self) -> zcl.ImageAvailable:
        cmd, r = await self.request(C2S, zcl.CMD_QUERY_NEXT_IMAGE,
                                    zcl.pack_query_next_image(self.manufacturer, self.image_type,
                                                              self.version, self.hw))
        if cmd != zcl.CMD_QUERY_NEXT_IMAGE_RESPONSE:
            raise DeviceError(r.status, "query next image")
        return r

    async def download(self, avail: zcl.ImageAvailable, *, pages: bool = False,
                       max_data: int = 64, page_size: int = 1024, spacing_ms: int = 0,
                       min_block_period: int | None = None, offset: int | None = None,
                       stop_at: int | None = None) -> int:
        """Fetch avail's image into self.image from offset (default: where it stopped) up to
        stop_at or the end; returns the offset reached."""
        ident = self.target = (avail.manufacturer, avail.image_type, avail.file_version)
        if self.image is None or len(self.image) != avail.image_size:
            self.image = bytearray(avail.image_size)
        off = self.offset if offset is None else offset
        end = avail.image_size if stop_at is None else min(stop_at, avail.image_size)
        while off < end:
            if pages:
                off = await self._page(ident, off, max_data, min(page_size, end - off),
                                       spacing_ms)
                continue
            cmd, r = await self.request(C2S, zcl.CMD_IMAGE_BLOCK, zcl.pack_block_request(
                *ident, off, min(max_data, end - off), min_block_period=min_block_period))
            off = await self._took(ident, off, max_data, cmd, r)
        self.offset = off
        return off

    # One Image Block Response in answer to a request at off: returns the new offset.
    async def _took(self, ident, off: int, max_data: int, cmd: int, r) -> int:
        if cmd != zcl.CMD_IMAGE_BLOCK_RESPONSE:
            raise DeviceError(r.status, "image block request")
        if r.status == zcl.WAIT_FOR_DATA:
            self.waits.append(r)
            await asyncio.sleep(r.request_time if r.current_time == 0
                                else r.request_time - r.current_time)
            return off
        if r.status != zcl.SUCCESS:
            raise DeviceError(r.status, "image block request")
        if (r.manufacturer, r.image_type, r.file_version) != ident or r.file_offset != off \
                or not 0 < len(r.data) <= max_data:
            raise AssertionError("server sent a block that does not match the request")
        n = len(r.data)
        self.block_sizes.append(n)
        self.image[off:off + n] = r.data
        return off + n

    async def _page(self, ident, off: int, max_data: int, page_size: int,
                    spacing_ms: int) -> int:
        tsn = self._next_tsn()
        q: asyncio.Queue = asyncio.Queue()
        self._streams[tsn] = q
        end = off + page_size
        tries = 0
        try:
            self.send_zcl(C2S, tsn, zcl.CMD_IMAGE_PAGE, zcl.pack_page_request(
                *ident, off, max_data, page_size, spacing_ms))
            while off < end:
                try:
                    cmd, r = await asyncio.wait_for(q.get(), self.timeout)
                except asyncio.TimeoutError:
                    tries += 1
                    if tries > self.retries:
                        raise TimeoutError("page at %d never completed" % off) from None
                    # ask again for the rest of the page, from where it stopped
                    self.send_zcl(C2S, tsn, zcl.CMD_IMAGE_PAGE, zcl.pack_page_request(
                        *ident, off, max_data, end - off, spacing_ms))
                    continue
                if cmd == zcl.CMD_IMAGE_BLOCK_RESPONSE and r.status == zcl.SUCCESS \
                        and r.file_offset != off:
                    continue  # out of order (a lost frame): the re-request will cover it
                new = await self._took(ident, off, max_data, cmd, r)
                if new == off:
                    return off  # waited: request the page again
                off = new
            return off
        finally:
            del self._streams[tsn]

    async def upgrade_end(self, status: int = zcl.SUCCESS, ident=None) -> tuple:
        ident = ident or self.target
        return await self.request(C2S, zcl.CMD_UPGRADE_END, zcl.pack_upgrade_end(status, *ident))

    async def alert(self, running: int, previous: int, rolled_back: bool = False,
                    reason: int = zcl.ALERT_NONE, activation_time: int = 0) -> tuple:
        return await self.request(C2S_MFR, zcl.CMD_ACTIVATION_ALERT, zcl.pack_activation_alert(
            running, previous, rolled_back, reason, activation_time), self.manufacturer)


def install_code(seed: int) -> str:
    """A valid install code (8 bytes + CRC-16) derived from a small number."""
    return hlink.install_code_with_crc(struct.pack("<Q", 0x1122334455660000 + seed)).hex()
