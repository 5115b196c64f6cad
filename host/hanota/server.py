"""The hub's OTA server: the Communications Hub side of the Zigbee OTA cluster (0x0019).

`OtaServer` speaks hanota's authenticated link (`hanfw.link`) over UDP and serial lines
(`hanota.linkio`) to many devices at once, and the OTA cluster (`hanfw.zcl`) on top:

- link: per-device keys from install codes, strictly increasing device counters, JOIN_REQ ->
  JOIN_RSP, HELLO -> HELLO_ACK (a device's per-boot session), DATA -> ZCL. Frames that fail
  authentication, replay a counter, come from unknown devices or are malformed are dropped
  and counted in `stats` by reason; they never disturb other devices.
- OTA server commands: Query Next Image, Image Block / Page Request served statelessly from
  the file at any offset (no image is held in memory per device; a page goes out in
  BUNDLE frames, several block responses per link frame, to a device whose HELLO said it
  takes frames that long), Upgrade End, the
  manufacturer-specific Activation Alert, and the ZCL error replies.
- hub -> device commands as coroutines with timeouts and retries: `notify`, `activate`,
  `read_attributes`, `upgrade_end_response`.
- `transfers` for a status display, and a watchdog that reports a stalled transfer and a
  device that stays silent after activation as two distinct policy events.

What to serve, to whom, and what happens with the outcomes is decided by a `Policy` (the hub
layer subclasses it; the default keeps everything in memory and records events in a list).
Policy hooks are plain (synchronous) methods called from the event loop.
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from hanfw import link as hlink
from hanfw import zcl
from hanfw.zcl import ZclError

from .errors import HanotaError
from .linkio import Link, SerialLink, UdpLink

log = logging.getLogger(__name__)

ZIGBEE_EPOCH = 946684800  # 2000-01-01T00:00:00Z as a Unix time (ZCL UTCTime origin)
UPGRADE_NOW = (0, 0)
UPGRADE_WAIT = (0, zcl.UPGRADE_TIME_WAIT)
COUNTER_RESERVE = 1024  # hub counters persisted ahead of use (one save per this many frames)
_ZCL_ROOM = hlink.MAX_FRAME - hlink.OVERHEAD  # largest ZCL frame in one link frame
_BLOCK_HEAD = zcl.header_size() + zcl.BLOCK_RESPONSE_OVERHEAD  # an Image Block Response less data
_BLOCK_ROOM = min(255, _ZCL_ROOM - _BLOCK_HEAD)
_QUEUE_LIMIT = 64  # ZCL frames waiting per device before further ones are dropped
_OPEN_FILES = 16
_S2C = zcl.FC_CLUSTER | zcl.FC_SERVER_TO_CLIENT
_S2C_RESPONSE = _S2C | zcl.FC_DISABLE_DEFAULT_RESPONSE
_GLOBAL_S2C = zcl.FC_GLOBAL | zcl.FC_SERVER_TO_CLIENT | zcl.FC_DISABLE_DEFAULT_RESPONSE


def zigbee_time(unix_time: float) -> int:
    """ZCL UTCTime: whole seconds since 2000-01-01 UTC."""
    return max(0, int(unix_time) - ZIGBEE_EPOCH)


class ServerError(HanotaError):
    """The OTA server cannot do what was asked (unknown device, no route, closed...)."""

    reason = "server"


class DeviceTimeout(ServerError):
    """A device did not answer a hub command within its timeout and retries."""

    reason = "timeout"


class DeviceStatusError(ServerError):
    """A device answered a hub command with a ZCL error status (`status`)."""

    reason = "device-status"

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------- images and policy

@dataclass(frozen=True)
class ServedImage:
    """An upgrade file the server may serve: its path and the header facts it needs.

    `size` is the OTA total image size (the bytes served); `image_hash` is the Manufacturer
    Image Hash (SHA-256 of the manufacturer image) that activation commands carry.
    """

    path: str
    manufacturer: int
    image_type: int
    file_version: int
    size: int
    image_hash: bytes | None = None
    min_hw: int | None = None
    max_hw: int | None = None
    destination: bytes | None = None

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "ServedImage":
        """Parse an upgrade file (ImageFormatError if it is not one) and describe it."""
        from .images import parse_file
        s = parse_file(path)
        h = s.header
        digest = s.descriptor.image_hash if s.descriptor is not None else s.image_sha256
        return cls(os.fspath(path), h.manufacturer, h.image_type, h.file_version, h.total_size,
                   digest, h.min_hw, h.max_hw, h.destination)

    @property
    def identity(self) -> tuple[int, int, int]:
        return (self.manufacturer, self.image_type, self.file_version)

    def suits(self, eui: bytes, manufacturer: int, image_type: int, hw: int | None) -> bool:
        """Same manufacturer and type, hardware in range (if the image has one), for eui."""
        if (self.manufacturer, self.image_type) != (manufacturer, image_type):
            return False
        if self.destination is not None and self.destination != eui:
            return False
        if self.min_hw is not None and (hw is None or not self.min_hw <= hw <= self.max_hw):
            return False
        return True


class Policy:
    """The hub's decisions and the server's events, as methods to override.

    The default works in memory: devices known by `install_codes` ({eui: install code}),
    images from `images`, joins recorded in `joined`, the hub counter in `counter`, every
    event appended to `events` as a tuple (name, eui, ...).
    """

    def __init__(self, install_codes: dict[bytes, str] | None = None,
                 images: Iterable[ServedImage] = (), *, p2p_available: bool = True):
        self.install_codes = dict(install_codes or {})
        self.images = list(images)
        self.p2p_available = p2p_available
        self.joined: dict[bytes, dict] = {}
        self.upgrade_times: dict[bytes, tuple[int, int]] = {}
        self.counter = 1
        self.events: list[tuple] = []

    # -- link and registry
    def install_code(self, eui: bytes) -> str | None:
        """The device's install code (its link key derives from it); None = unknown device."""
        return self.install_codes.get(eui)

    def is_joined(self, eui: bytes) -> bool:
        """Whether a device joined earlier (asked once per server run, before its first DATA)."""
        return eui in self.joined

    def last_device_counter(self, eui: bytes) -> int | None:
        """The last frame counter accepted from eui before this run (seeds replay checks)."""
        return None

    def next_counter(self) -> int:
        """The first hub frame counter this run may use (never one used before)."""
        return self.counter

    def save_counter(self, n: int) -> None:
        """Persist: counters below n may have been used; a restarted hub starts at n."""
        self.counter = n

    def join(self, eui: bytes, service: int, role: str, manufacturer: int, image_type: int,
             hw_version: int, file_version: int) -> int:
        """A JOIN_* status. Alt HAN devices may not use the ordinary join service."""
        if service == hlink.SERVICE_ORDINARY:
            return hlink.JOIN_ALT_HAN_REFUSED if role == "althan" else hlink.JOIN_OK
        if service == hlink.SERVICE_ALT_HAN_P2P and role == "althan":
            return hlink.JOIN_OK if self.p2p_available else hlink.JOIN_P2P_UNAVAILABLE
        return hlink.JOIN_SERVICE_REFUSED

    def on_joined(self, eui: bytes, role: str, manufacturer: int, image_type: int,
                  hw_version: int, file_version: int) -> None:
        self.joined[eui] = dict(role=role, manufacturer=manufacturer, image_type=image_type,
                                hw_version=hw_version, file_version=file_version)
        self.events.append(("joined", eui, role, file_version))

    def on_hello(self, eui: bytes, file_version: int) -> None:
        """A joined device started a session (after each boot) running file_version."""
        self.events.append(("hello", eui, file_version))

    # -- images
    def offer(self, eui: bytes, manufacturer: int, image_type: int, file_version: int,
              hw_version: int | None) -> ServedImage | None:
        """The image to offer a querying device: compatible, newer, meant for it; or None."""
        best = None
        for img in self.images:
            if img.suits(eui, manufacturer, image_type, hw_version) \
                    and img.file_version > file_version \
                    and (best is None or img.file_version > best.file_version):
                best = img
        return best

    def lookup(self, eui: bytes, manufacturer: int, image_type: int,
               file_version: int) -> ServedImage | None:
        """The exact image a device asks blocks of without a query in this run (a resume)."""
        for img in self.images:
            if img.identity == (manufacturer, image_type, file_version) \
                    and img.destination in (None, eui):
                return img
        return None

    def holds(self, eui: bytes, manufacturer: int, image_type: int, file_version: int) -> bool:
        """Whether the device was left holding this image (distributed for a later Activate
        Image): a repeated Upgrade End for it, its answer lost, is told to go on waiting."""
        return False

    def upgrade_time(self, eui: bytes, image: ServedImage) -> tuple[int, int]:
        """(current_time, upgrade_time) for the Upgrade End Response: (0, 0) now, (0, N) in
        N s, (UTC now, UTC then), or (0, 0xFFFFFFFF) wait for an Activate Image (hcalcs)."""
        if eui in self.upgrade_times:
            return self.upgrade_times[eui]
        role = self.joined.get(eui, {}).get("role")
        return UPGRADE_WAIT if role == "hcalcs" else UPGRADE_NOW

    # -- events
    def on_progress(self, eui: bytes, image: ServedImage, offset: int, size: int) -> None:
        self.events.append(("progress", eui, offset, size))

    def on_upgrade_end(self, eui: bytes, image: ServedImage | None, status: int) -> None:
        """Upgrade End Request; image is None if the device named one the hub cannot find."""
        self.events.append(("upgrade_end", eui, image, status))

    def on_alert(self, eui: bytes, running: int, previous: int, rolled_back: bool,
                 reason: int) -> None:
        self.events.append(("alert", eui, running, previous, rolled_back, reason))

    def on_activate_response(self, eui: bytes, code: int, file_version: int,
                             counter: int) -> None:
        self.events.append(("activate_response", eui, code, file_version, counter))

    def on_stall(self, eui: bytes, image: ServedImage, offset: int) -> None:
        """No block request from a transferring device for stall_timeout seconds."""
        self.events.append(("stall", eui, image, offset))

    def on_activation_timeout(self, eui: bytes, image: ServedImage | None) -> None:
        """No Activation Alert within activation_timeout after the image was to activate."""
        self.events.append(("activation_timeout", eui, image))

    def on_bad_frame(self, peer: str, reason: str) -> None:
        self.events.append(("bad_frame", peer, reason))


# ---------------------------------------------------------------- state

@dataclass(eq=False)
class Transfer:
    """One device's download of one image, for status displays (times from `clock`)."""

    eui: bytes
    image: ServedImage
    started: float
    last_activity: float
    offset: int = 0  # end of the last data served
    bytes_served: int = 0  # including re-served blocks
    state: str = "downloading"  # downloading, stalled, complete, failed
    status: int | None = None  # the Upgrade End Request status, once received
    last_progress: float = -math.inf

    @property
    def size(self) -> int:
        return self.image.size

    @property
    def rate(self) -> float:
        """Bytes served per second since the transfer started."""
        dt = self.last_activity - self.started
        return self.bytes_served / dt if dt > 0 else 0.0


@dataclass(eq=False)
class DeviceState:
    """What the server knows of one device in this run (`OtaServer.devices`)."""

    eui: bytes
    mac: hlink.Mac
    last_counter: int | None = None
    link: Link | None = None
    addr: Any = None
    joined: bool | None = None  # None: not asked yet in this run
    role: str | None = None
    manufacturer: int | None = None
    image_type: int | None = None
    hw_version: int | None = None
    file_version: int | None = None
    last_seen: float | None = None
    offered: ServedImage | None = None
    min_block_period_ms: int = 0
    throttle_until: float = 0.0
    alert_deadline: float | None = None
    alert_image: ServedImage | None = None
    tsn: int = field(default_factory=lambda: random.randrange(256))
    next_send: float = 0.0  # loop time before which no block response goes out
    queue: asyncio.Queue | None = None
    worker: asyncio.Task | None = None
    page_task: asyncio.Task | None = None
    rx_frame: int = hlink.MAX_FRAME  # longest frame it takes (its HELLO); above: bundles

    @property
    def peer(self) -> str:
        return self.link.describe(self.addr) if self.link else "-"


class _Files:
    """An LRU of open upgrade files; reads are positional, so any offset, any device."""

    def __init__(self, limit: int = _OPEN_FILES):
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._limit = limit

    def read(self, path: str, offset: int, n: int) -> bytes:
        fd = self._fds.get(path)
        if fd is None:
            fd = os.open(path, os.O_RDONLY)
            self._fds[path] = fd
            while len(self._fds) > self._limit:
                os.close(self._fds.popitem(last=False)[1])
        else:
            self._fds.move_to_end(path)
        return os.pread(fd, n, offset)

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.popitem()[1])


@dataclass(eq=False)
class _Pending:
    expect: str  # "activate", "attributes" or "default"
    command_id: int
    future: asyncio.Future


# ---------------------------------------------------------------- the server

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
        self.block_cap = block_cap
        self.response_spacing_ms = response_spacing_ms
        self.page_spacing_ms = page_spacing_ms
        self.stall_timeout = stall_timeout
        self.activation_timeout = activation_timeout
        self.max_in_flight = max_in_flight
        self.busy_retry_s = busy_retry_s
        self.request_timeout = request_timeout
        self.retries = retries
        self.progress_interval = progress_interval
        self.watch_interval = watch_interval or min(1.0, stall_timeout / 4)
        self.clock = clock
        self.stats: Counter[str] = Counter()
        self.devices: dict[bytes, DeviceState] = {}
        self.transfers: dict[bytes, Transfer] = {}
        self.in_flight: set[bytes] = set()
        self._links: list[Link] = []
        self._files = _Files()
        self._pending: dict[tuple[bytes, int], _Pending] = {}
        self._query_waiters: dict[bytes, list[asyncio.Future]] = {}
        self._watchdog: asyncio.Task | None = None
        self._closed = False
        self._counter = policy.next_counter()
        self._counter_limit = self._counter

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

    def _add_link(self, link: Link) -> None:
        if self._closed:
            link.close()
            raise ServerError("the server is closed", reason="closed")
        self._links.append(link)
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    async def close(self) -> None:
        """Stop every task, fail pending commands, close transports and files."""
        self._closed = True
        tasks = [self._watchdog] if self._watchdog else []
        for dev in self.devices.values():
            tasks += [t for t in (dev.worker, dev.page_task) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for p in self._pending.values():
            if not p.future.done():
                p.future.set_exception(ServerError("the server closed", reason="closed"))
        for waiters in self._query_waiters.values():
            for f in waiters:
                f.cancel()
        for link in self._links:
            link.close()
        self._links.clear()
        self._files.close()

    async def __aenter__(self) -> "OtaServer":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # -- controls

    def throttle(self, eui: bytes, seconds: float) -> None:
        """Answer eui's block and page requests with WAIT_FOR_DATA for the next seconds."""
        dev = self._known(eui)
        dev.throttle_until = self.clock() + seconds if seconds > 0 else 0.0
        self._cancel_page(dev)

    def forget(self, eui: bytes) -> None:
        """Drop what this run knows of a device (e.g. after its install code changed)."""
        dev = self.devices.pop(eui, None)
        if dev is not None:
            for t in (dev.worker, dev.page_task):
                if t is not None:
                    t.cancel()
        self.in_flight.discard(eui)

    def check_timeouts(self) -> None:
        """Report stalled transfers and silent activations (the watchdog calls this)."""
        now = self.clock()
        for eui, t in list(self.transfers.items()):
            if t.state == "downloading" and now - t.last_activity > self.stall_timeout:
                t.state = "stalled"
                self.in_flight.discard(eui)
                dev = self.devices.get(eui)
                if dev is not None:
                    self._cancel_page(dev)
                self._hook("on_stall", eui, t.image, t.offset)
        for dev in list(self.devices.values()):
            if dev.alert_deadline is not None and now > dev.alert_deadline:
                dev.alert_deadline = None
                self._hook("on_activation_timeout", dev.eui, dev.alert_image)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.watch_interval)
            try:
                self.check_timeouts()
            except Exception:  # a policy bug must not end the watchdog
                log.exception("watchdog")

    # -- receiving link frames

    def _on_bad(self, link: Link, addr: Any, reason: str) -> None:
        if reason in ("serial-closed", "serial-error"):
            self.stats[reason] += 1  # the line, not a frame: nothing was dropped
            log.warning("%s: %s, no longer read", link.name, reason)
        else:
            self._drop(link, addr, reason)

    def _drop(self, link: Link, addr: Any, reason: str) -> None:
        self.stats[reason] += 1
        self.stats["dropped"] += 1
        self._hook("on_bad_frame", link.describe(addr), reason)

    def _mac_for(self, eui: bytes) -> hlink.Mac | None:
        dev = self.devices.get(eui)
        if dev is not None:
            return dev.mac
        code = self._hook("install_code", eui)
        if code is None:
            return None
        try:
            mac = hlink.Mac(hlink.link_key(code))
        except hlink.LinkError as e:
            log.error("install code of %s is unusable: %s", hlink.eui_str(eui), e)
            return None
        self.devices[eui] = DeviceState(eui, mac, self._hook("last_device_counter", eui))
        return mac

    def _on_frame(self, frame: bytes, link: Link, addr: Any) -> None:
        if self._closed:
            return
        try:
            kind, src, dst, counter, cluster, payload = hlink.unpack(frame, self._mac_for)
        except hlink.LinkError as e:
            self._drop(link, addr, e.reason)
            return
        dev = self.devices[src]
        if dst != self.hub_eui and not (
                dst == hlink.BROADCAST and kind in (hlink.KIND_JOIN_REQ, hlink.KIND_HELLO)):
            self._drop(link, addr, "wrong-dst")
            return
        if dev.last_counter is not None and counter <= dev.last_counter:
            self._drop(link, addr, "replay")
            return
        dev.last_counter = counter
        dev.link, dev.addr, dev.last_seen = link, addr, self.clock()
        self.stats["frames"] += 1
        if kind == hlink.KIND_JOIN_REQ:
            self._join(dev, payload)
        elif kind == hlink.KIND_HELLO:
            self._hello(dev, payload)
        elif kind != hlink.KIND_DATA:
            self._drop(link, addr, "kind")
        elif not self._is_joined(dev):
            self._drop(link, addr, "not-joined")
        elif cluster != zcl.CLUSTER_OTA:
            self._drop(link, addr, "cluster")
        else:
            self._enqueue(dev, bytes(payload))

    def _is_joined(self, dev: DeviceState) -> bool:
        if dev.joined is None:
            dev.joined = bool(self._hook("is_joined", dev.eui, default=False))
        return dev.joined

    def _join(self, dev: DeviceState, payload: memoryview) -> None:
        try:
            service, role, mfr, itype, hw, ver, nonce = hlink.parse_join_req(bytes(payload))
        except hlink.LinkError:
            self._drop(dev.link, dev.addr, "malformed")
            return
        status = self._hook("join", dev.eui, service, role, mfr, itype, hw, ver)
        if status is None:
            return  # the policy failed; the device asks again
        dev.joined = status == hlink.JOIN_OK
        if dev.joined:
            dev.role, dev.manufacturer, dev.image_type = role, mfr, itype
            dev.hw_version, dev.file_version = hw, ver
            self._hook("on_joined", dev.eui, role, mfr, itype, hw, ver)
        self._send(dev, hlink.KIND_JOIN_RSP,
                   lambda ctr: hlink.pack_join_rsp(status, self.hub_eui, ctr, nonce))

    def _hello(self, dev: DeviceState, payload: memoryview) -> None:
        try:
            nonce, version = hlink.parse_hello(bytes(payload))
        except hlink.LinkError:
            self._drop(dev.link, dev.addr, "malformed")
            return
        if not self._is_joined(dev):
            self._drop(dev.link, dev.addr, "not-joined")
            return
        self._cancel_page(dev)  # a new boot: whatever was being sent is stale
        dev.file_version = version
        dev.rx_frame = hlink.hello_rx_frame(payload)
        self._hook("on_hello", dev.eui, version)
        # The ack's own counter is the baseline: later hub frames to this device exceed it.
        self._send(dev, hlink.KIND_HELLO_ACK, lambda ctr: hlink.pack_hello(nonce, ctr))

    def _enqueue(self, dev: DeviceState, zcl_frame: bytes) -> None:
        if dev.queue is None:
            dev.queue = asyncio.Queue(_QUEUE_LIMIT)
            dev.worker = asyncio.get_running_loop().create_task(self._serve_device(dev))
        try:
            dev.queue.put_nowait(zcl_frame)
        except asyncio.QueueFull:
            self._drop(dev.link, dev.addr, "overload")

    # -- sending

    def _next_counter(self) -> int:
        c = self._counter
        if c > 0xFFFFFFFF:
            raise ServerError("the hub frame counter is exhausted", reason="counter")
        if c >= self._counter_limit:
            self._counter_limit = min(c + COUNTER_RESERVE, 1 << 32)
            self.policy.save_counter(self._counter_limit)
        self._counter = c + 1
        return c

    def _send(self, dev: DeviceState, kind: int, payload: Callable[[int], bytes] | bytes,
              cluster: int = 0) -> None:
        if dev.link is None:
            raise ServerError("no route to %s: it has not been heard from"
                              % hlink.eui_str(dev.eui), reason="no-route")
        ctr = self._next_counter()
        body = payload(ctr) if callable(payload) else payload
        dev.link.send(hlink.pack(dev.mac, kind, self.hub_eui, dev.eui, ctr, cluster, body),
                      dev.addr)

    def _send_zcl(self, dev: DeviceState, fc: int, tsn: int, cmd: int, payload: bytes,
                  manufacturer: int | None = None) -> None:
        frame = zcl.pack_header(fc, tsn, cmd, manufacturer) + payload
        self._send(dev, hlink.KIND_DATA, frame, zcl.CLUSTER_OTA)

    def _default_response(self, dev: DeviceState, tsn: int, cmd: int, status: int,
                          manufacturer: int | None = None) -> None:
        self._send_zcl(dev, _GLOBAL_S2C, tsn, zcl.GLOBAL_DEFAULT_RESPONSE,
                       zcl.pack_default_response(cmd, status), manufacturer)

    def _block_status(self, dev: DeviceState, tsn: int, status: int) -> None:
        self._send_zcl(dev, _S2C_RESPONSE, tsn, zcl.CMD_IMAGE_BLOCK_RESPONSE,
                       zcl.pack_block_abort(status))

    def _hook(self, name: str, *args: Any, default: Any = None) -> Any:
        try:
            return getattr(self.policy, name)(*args)
        except Exception:
            log.exception("policy.%s failed", name)
            self.stats["policy-error"] += 1
            return default

    # -- ZCL from devices

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
        try:
            if not cluster:
                self._global(dev, fc, mfr, tsn, cmd, buf, off)
            elif mfr is not None:
                self._manufacturer(dev, fc, mfr, tsn, cmd, buf, off)
            elif cmd == zcl.CMD_QUERY_NEXT_IMAGE:
                self._query(dev, tsn, buf, off)
            elif cmd == zcl.CMD_IMAGE_BLOCK:
                await self._block(dev, tsn, buf, off)
            elif cmd == zcl.CMD_IMAGE_PAGE:
                self._page(dev, tsn, buf, off)
            elif cmd == zcl.CMD_UPGRADE_END:
                self._upgrade_end(dev, fc, tsn, buf, off)
            elif cmd == zcl.CMD_QUERY_SPECIFIC_FILE:
                zcl.parse_query_specific_file(buf, off)
                self._send_zcl(dev, _S2C_RESPONSE, tsn, zcl.CMD_QUERY_SPECIFIC_FILE_RESPONSE,
                               zcl.pack_image_available(zcl.NO_IMAGE_AVAILABLE))
            else:
                self.stats["zcl-unsupported"] += 1
                self._default_response(dev, tsn, cmd, zcl.UNSUP_CLUSTER_COMMAND)
        except ZclError as e:
            self.stats["zcl-malformed"] += 1
            self._default_response(dev, tsn, cmd, e.status, mfr)

    def _global(self, dev: DeviceState, fc: int, mfr: int | None, tsn: int, cmd: int,
                buf: bytes, off: int) -> None:
        if cmd == zcl.GLOBAL_DEFAULT_RESPONSE:
            d = zcl.parse_default_response(buf, off)
            p = self._pending.get((dev.eui, tsn))
            if p is None or p.command_id != d.command_id or p.future.done():
                return
            if p.expect == "default":
                p.future.set_result(d)
            elif d.status != zcl.SUCCESS:
                p.future.set_exception(DeviceStatusError(
                    "%s answered command 0x%02X with %s" % (hlink.eui_str(dev.eui), d.command_id,
                                                           zcl.status_name(d.status)), d.status))
        elif cmd == zcl.GLOBAL_READ_ATTRIBUTES_RESPONSE:
            records = zcl.parse_read_attributes_response(buf, off)
            p = self._pending.get((dev.eui, tsn))
            if p is not None and p.expect == "attributes" and not p.future.done():
                p.future.set_result(records)
        elif cmd == zcl.GLOBAL_READ_ATTRIBUTES:
            # The server side of the OTA cluster has no attributes here.
            ids = zcl.parse_read_attributes(buf, off)
            recs = [(a, zcl.UNSUPPORTED_ATTRIBUTE, None, None) for a in ids]
            self._send_zcl(dev, _GLOBAL_S2C, tsn, zcl.GLOBAL_READ_ATTRIBUTES_RESPONSE,
                           zcl.pack_read_attributes_response(recs), mfr)
        else:
            self.stats["zcl-unsupported"] += 1
            self._default_response(dev, tsn, cmd, zcl.UNSUP_GENERAL_COMMAND, mfr)

    def _manufacturer(self, dev: DeviceState, fc: int, mfr: int, tsn: int, cmd: int,
                      buf: bytes, off: int) -> None:
        if cmd == zcl.CMD_ACTIVATE_IMAGE_RESPONSE:
            r = zcl.parse_activate_image_response(buf, off)
            dev.file_version = r.file_version
            p = self._pending.get((dev.eui, tsn))
            if p is not None and p.expect == "activate" and not p.future.done():
                p.future.set_result(r)
            self._hook("on_activate_response", dev.eui, r.code, r.file_version, r.counter)
        elif cmd == zcl.CMD_ACTIVATION_ALERT:
            a = zcl.parse_activation_alert(buf, off)
            dev.file_version = a.file_version
            dev.alert_deadline = dev.alert_image = None
            self._hook("on_alert", dev.eui, a.file_version, a.previous_version,
                       bool(a.rolled_back), a.reason)
            if not fc & zcl.FC_DISABLE_DEFAULT_RESPONSE:
                self._default_response(dev, tsn, cmd, zcl.SUCCESS, mfr)
        else:
            self.stats["zcl-unsupported"] += 1
            self._default_response(dev, tsn, cmd, zcl.UNSUP_MANUF_CLUSTER_COMMAND, mfr)

    def _query(self, dev: DeviceState, tsn: int, buf: bytes, off: int) -> None:
        q = zcl.parse_query_next_image(buf, off)
        dev.manufacturer, dev.image_type = q.manufacturer, q.image_type
        dev.file_version = q.file_version
        if q.hardware_version is not None:
            dev.hw_version = q.hardware_version
        for f in self._query_waiters.get(dev.eui, ()):
            if not f.done():
                f.set_result(q)
        img = self._hook("offer", dev.eui, q.manufacturer, q.image_type, q.file_version,
                         q.hardware_version)
        if img is not None and (img.manufacturer, img.image_type) != (q.manufacturer,
                                                                      q.image_type):
            log.error("policy offered %s to %s, which asked for mfr 0x%04X type 0x%04X",
                      img.path, hlink.eui_str(dev.eui), q.manufacturer, q.image_type)
            img = None
        if img is None:
            rsp = zcl.pack_image_available(zcl.NO_IMAGE_AVAILABLE)
        else:
            dev.offered = img
            rsp = zcl.pack_image_available(zcl.SUCCESS, *img.identity, img.size)
        self._send_zcl(dev, _S2C_RESPONSE, tsn, zcl.CMD_QUERY_NEXT_IMAGE_RESPONSE, rsp)

    def _image_for(self, dev: DeviceState, mfr: int, itype: int, ver: int) -> ServedImage | None:
        ident = (mfr, itype, ver)
        if dev.offered is not None and dev.offered.identity == ident:
            return dev.offered
        t = self.transfers.get(dev.eui)
        if t is not None and t.image.identity == ident:
            return t.image
        img = self._hook("lookup", dev.eui, mfr, itype, ver)
        if img is not None and img.identity == ident:
            dev.offered = img
            return img
        return None

    # Checks shared by block and page requests. Returns the image to serve or None (answered).
    def _admit(self, dev: DeviceState, tsn: int, mfr: int, itype: int, ver: int, offset: int,
               max_data: int) -> ServedImage | None:
        img = self._image_for(dev, mfr, itype, ver)
        if img is None:
            self.stats["unknown-image"] += 1
            self._block_status(dev, tsn, zcl.ABORT)
            return None
        if offset >= img.size or max_data == 0:
            self.stats["past-end"] += 1
            self._block_status(dev, tsn, zcl.MALFORMED_COMMAND)
            return None
        now = self.clock()
        wait = None
        if dev.throttle_until > now:
            wait = max(1, math.ceil(dev.throttle_until - now))
            self.stats["throttled"] += 1
        elif self.max_in_flight is not None and dev.eui not in self.in_flight \
                and len(self.in_flight) >= self.max_in_flight:
            wait = self.busy_retry_s
            self.stats["busy"] += 1
        if wait is not None:
            period = min(0xFFFF, max(dev.min_block_period_ms, self.response_spacing_ms))
            self._send_zcl(dev, _S2C_RESPONSE, tsn, zcl.CMD_IMAGE_BLOCK_RESPONSE,
                           zcl.pack_block_wait(0, wait, period))
            return None
        self._cancel_page(dev)
        t = self.transfers.get(dev.eui)
        if t is None or t.image != img or t.state in ("complete", "failed"):
            t = self.transfers[dev.eui] = Transfer(dev.eui, img, now, now, offset)
        t.state = "downloading"
        t.last_activity = now
        self.in_flight.add(dev.eui)
        return img

    async def _block(self, dev: DeviceState, tsn: int, buf: bytes, off: int) -> None:
        r = zcl.parse_block_request(buf, off)
        if r.min_block_period is not None:
            dev.min_block_period_ms = r.min_block_period
        img = self._admit(dev, tsn, r.manufacturer, r.image_type, r.file_version,
                          r.file_offset, r.max_data_size)
        if img is None:
            return
        loop = asyncio.get_running_loop()
        delay = dev.next_send - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        n = min(r.max_data_size, self.block_cap, _BLOCK_ROOM, img.size - r.file_offset)
        self._send_block(dev, tsn, img, r.file_offset, n)
        gap = max(self.response_spacing_ms, dev.min_block_period_ms)
        dev.next_send = loop.time() + gap / 1000

    def _page(self, dev: DeviceState, tsn: int, buf: bytes, off: int) -> None:
        r = zcl.parse_page_request(buf, off)
        self.stats["pages"] += 1
        if r.page_size == 0:
            raise ZclError(zcl.MALFORMED_COMMAND, "page request: page size 0")
        img = self._admit(dev, tsn, r.manufacturer, r.image_type, r.file_version,
                          r.file_offset, r.max_data_size)
        if img is not None:
            dev.page_task = asyncio.get_running_loop().create_task(
                self._send_page(dev, tsn, img, r))

    async def _send_page(self, dev: DeviceState, tsn: int, img: ServedImage,
                         r: zcl.PageRequest) -> None:
        # Every block response of a page carries the page request's TSN. A device that
        # takes long frames gets them bundled (several per link frame), unless it asked
        # for a spacing between them.
        end = min(r.file_offset + r.page_size, img.size)
        step = min(r.max_data_size, self.block_cap, _BLOCK_ROOM)
        spacing = max(r.response_spacing, self.page_spacing_ms) / 1000
        bundle = dev.rx_frame > hlink.MAX_FRAME and not spacing
        offset = r.file_offset
        try:
            while offset < end:
                await dev.link.drain()
                if bundle:
                    offset, ok = self._send_bundle(dev, tsn, img, offset, end, step)
                else:
                    n = min(step, end - offset)
                    ok = self._send_block(dev, tsn, img, offset, n)
                    offset += n
                if not ok:
                    return
                await asyncio.sleep(spacing)  # 0 still lets other devices' work run
        except ServerError as e:
            log.warning("page to %s: %s", hlink.eui_str(dev.eui), e)

    # One Image Block Response (a ZCL frame), or None if the file cannot supply the block.
    def _block_frame(self, dev: DeviceState, tsn: int, img: ServedImage, offset: int,
                     n: int) -> bytes | None:
        try:
            data = self._files.read(img.path, offset, n)
        except OSError as e:
            data = b""
            log.error("cannot read %s: %s", img.path, e)
        if len(data) != n:
            log.error("%s is shorter than its header says; aborting %s", img.path,
                      hlink.eui_str(dev.eui))
            self.stats["file-error"] += 1
            return None
        b = bytearray(_BLOCK_HEAD + n)
        p = zcl.pack_header_into(b, 0, _S2C_RESPONSE, tsn, zcl.CMD_IMAGE_BLOCK_RESPONSE)
        zcl.pack_block_response_into(b, p, *img.identity, offset, data)
        return bytes(b)

    # Read and send one block; False (after sending ABORT) if the file cannot supply it.
    def _send_block(self, dev: DeviceState, tsn: int, img: ServedImage, offset: int,
                    n: int) -> bool:
        frame = self._block_frame(dev, tsn, img, offset, n)
        if frame is None:
            self._block_status(dev, tsn, zcl.ABORT)
            return False
        self._send(dev, hlink.KIND_DATA, frame, zcl.CLUSTER_OTA)
        self.stats["blocks"] += 1
        self._served(dev, img, offset, n)
        return True

    # As many blocks from offset (up to end) as fit in one of the device's frames, in a
    # BUNDLE; returns (the offset after them, False if the file failed: ABORT was sent).
    def _send_bundle(self, dev: DeviceState, tsn: int, img: ServedImage, offset: int,
                     end: int, step: int) -> tuple[int, bool]:
        room = dev.rx_frame - hlink.OVERHEAD
        start, used, items, ok = offset, 0, [], True
        while offset < end:
            n = min(step, end - offset)
            if items and used + hlink.BUNDLE_ITEM + _BLOCK_HEAD + n > room:
                break
            frame = self._block_frame(dev, tsn, img, offset, n)
            if frame is None:
                ok = False
                break
            items.append(frame)
            used += hlink.BUNDLE_ITEM + len(frame)
            offset += n
        if len(items) == 1:
            self._send(dev, hlink.KIND_DATA, items[0], zcl.CLUSTER_OTA)
        elif items:
            self._send(dev, hlink.KIND_BUNDLE, hlink.pack_bundle(items), zcl.CLUSTER_OTA)
            self.stats["bundles"] += 1
        self.stats["blocks"] += len(items)
        if items:
            self._served(dev, img, start, offset - start)
        if not ok:
            self._block_status(dev, tsn, zcl.ABORT)
        return offset, ok

    def _served(self, dev: DeviceState, img: ServedImage, offset: int, n: int) -> None:
        t = self.transfers.get(dev.eui)
        if t is not None and t.image == img:
            now = self.clock()
            t.offset = offset + n
            t.bytes_served += n
            t.last_activity = now
            if t.offset >= img.size or now - t.last_progress >= self.progress_interval:
                t.last_progress = now
                self._hook("on_progress", dev.eui, img, t.offset, img.size)

    def _cancel_page(self, dev: DeviceState) -> None:
        if dev.page_task is not None:
            dev.page_task.cancel()
            dev.page_task = None

    def _upgrade_end(self, dev: DeviceState, fc: int, tsn: int, buf: bytes, off: int) -> None:
        r = zcl.parse_upgrade_end(buf, off)
        img = self._image_for(dev, r.manufacturer, r.image_type, r.file_version)
        self._cancel_page(dev)
        self.in_flight.discard(dev.eui)
        t = self.transfers.get(dev.eui)
        if t is not None and img is not None and t.image == img:
            t.state = "complete" if r.status == zcl.SUCCESS else "failed"
            t.status = r.status
            t.last_activity = self.clock()
        if r.status != zcl.SUCCESS:
            # The device gave up on the image: acknowledge, it starts over when it wants.
            self._hook("on_upgrade_end", dev.eui, img, r.status)
            self._default_response(dev, tsn, zcl.CMD_UPGRADE_END, zcl.SUCCESS)
            return
        if img is None:
            ident = (r.manufacturer, r.image_type, r.file_version)
            if self._hook("holds", dev.eui, *ident, default=False):
                # distributed earlier (the answer lost, a hub restarted since): keep holding
                self.stats["held-again"] += 1
                self._send_zcl(dev, _S2C_RESPONSE, tsn, zcl.CMD_UPGRADE_END_RESPONSE,
                               zcl.pack_upgrade_end_response(*ident, *UPGRADE_WAIT))
                return
            self.stats["unknown-image"] += 1
            self._default_response(dev, tsn, zcl.CMD_UPGRADE_END, zcl.ABORT)
            return
        self._hook("on_upgrade_end", dev.eui, img, zcl.SUCCESS)
        ct, ut = self._hook("upgrade_time", dev.eui, img, default=UPGRADE_WAIT)
        self._send_zcl(dev, _S2C_RESPONSE, tsn, zcl.CMD_UPGRADE_END_RESPONSE,
                       zcl.pack_upgrade_end_response(*img.identity, ct, ut))
        self._arm_alert(dev, img, ct, ut)

    def _arm_alert(self, dev: DeviceState, img: ServedImage | None, current: int,
                   upgrade: int) -> None:
        if upgrade == zcl.UPGRADE_TIME_WAIT:
            return  # activation comes later, by an Activate Image command
        delay = upgrade if current == 0 else max(0, upgrade - current)
        dev.alert_image = img
        dev.alert_deadline = self.clock() + delay + self.activation_timeout

    # -- hub -> device commands

    def _known(self, eui: bytes) -> DeviceState:
        dev = self.devices.get(eui)
        if dev is None:
            if self._mac_for(eui) is None:
                raise ServerError("unknown device %s" % hlink.eui_str(eui),
                                  reason="unknown-device")
            dev = self.devices[eui]
        return dev

    def _route(self, eui: bytes) -> DeviceState:
        if self._closed:
            raise ServerError("the server is closed", reason="closed")
        dev = self._known(eui)
        if dev.link is None:
            raise ServerError("no route to %s: it has not been heard from" % hlink.eui_str(eui),
                              reason="no-route")
        return dev

    def _new_tsn(self, dev: DeviceState) -> int:
        for _ in range(256):
            dev.tsn = (dev.tsn + 1) & 0xFF
            if (dev.eui, dev.tsn) not in self._pending:
                return dev.tsn
        raise ServerError("too many commands outstanding to %s" % hlink.eui_str(dev.eui))

    async def _request(self, eui: bytes, expect: str, fc: int, cmd: int, payload: bytes,
                       manufacturer: int | None, timeout: float | None,
                       retries: int | None) -> Any:
        dev = self._route(eui)
        tsn = self._new_tsn(dev)
        fut = asyncio.get_running_loop().create_future()
        key = (eui, tsn)
        self._pending[key] = _Pending(expect, cmd, fut)
        timeout = self.request_timeout if timeout is None else timeout
        retries = self.retries if retries is None else retries
        try:
            for attempt in range(retries + 1):
                if attempt:
                    self.stats["retries"] += 1
                self._send_zcl(dev, fc, tsn, cmd, payload, manufacturer)
                try:
                    return await asyncio.wait_for(asyncio.shield(fut), timeout)
                except asyncio.TimeoutError:
                    continue
            raise DeviceTimeout("%s did not answer command 0x%02X (%d tries of %.1f s)"
                                % (hlink.eui_str(eui), cmd, retries + 1, timeout))
        finally:
            del self._pending[key]

    def cancel_transfer(self, eui: bytes) -> None:
        """Forget eui's transfer (e.g. its request was superseded): its in-flight slot is
        freed, the image is no longer offered, and its next block request is aborted."""
        t = self.transfers.pop(eui, None)
        self.in_flight.discard(eui)
        dev = self.devices.get(eui)
        if dev is not None:
            self._cancel_page(dev)
            if t is not None and dev.offered is not None and dev.offered.identity == t.image.identity:
                dev.offered = None

    async def send_app(self, eui: bytes, cluster: int, payload: bytes) -> None:
        """Send application data on another cluster (a role's data, e.g. a PPMID balance).

        Fire and forget: the link authenticates it; the role acts on it."""
        self._send(self._route(eui), hlink.KIND_DATA, bytes(payload), cluster)

    async def notify(self, eui: bytes, *, timeout: float | None = None,
                     retries: int | None = None) -> bool:
        """Image Notify (payload type 0, jitter 100), repeated until the device sends a Query
        Next Image. False if it never does: not fatal, a device also queries on its own."""
        dev = self._route(eui)
        fut = asyncio.get_running_loop().create_future()
        waiters = self._query_waiters.setdefault(eui, [])
        waiters.append(fut)
        timeout = self.request_timeout if timeout is None else timeout
        retries = self.retries if retries is None else retries
        try:
            for _ in range(retries + 1):
                self._send_zcl(dev, _S2C_RESPONSE, self._new_tsn(dev), zcl.CMD_IMAGE_NOTIFY,
                               zcl.pack_image_notify(zcl.NOTIFY_JITTER, 100))
                try:
                    await asyncio.wait_for(asyncio.shield(fut), timeout)
                    return True
                except asyncio.TimeoutError:
                    continue
            return False
        finally:
            waiters.remove(fut)
            if not waiters:
                del self._query_waiters[eui]

    async def activate(self, eui: bytes, image_hash: bytes, execution_time: int = 0,
                       counter: int = 0, *, manufacturer: int | None = None,
                       timeout: float | None = None,
                       retries: int | None = None) -> tuple[int, int, int]:
        """Activate Image (0xF0): returns the device's (code, running version, counter echo).

        execution_time is UTC seconds since 2000 (0 = now); counter is the originator counter.
        A SUCCESS arms the post-activation watchdog (Activation Alert expected).
        """
        dev = self._route(eui)
        mfr = manufacturer if manufacturer is not None else dev.manufacturer
        if mfr is None:
            raise ServerError("manufacturer code of %s unknown; pass manufacturer="
                              % hlink.eui_str(eui), reason="bad-argument")
        try:
            payload = zcl.pack_activate_image(image_hash, execution_time, counter)
        except ZclError as e:
            raise ServerError(str(e), reason="bad-argument") from None
        r = await self._request(eui, "activate", _S2C_RESPONSE, zcl.CMD_ACTIVATE_IMAGE,
                                payload, mfr, timeout, retries)
        if r.code == zcl.ACTIVATE_SUCCESS:
            img = next((i for i in (dev.offered, getattr(self.transfers.get(eui), "image", None))
                        if i is not None and i.image_hash == bytes(image_hash)), None)
            now_utc = zigbee_time(self.clock())
            self._arm_alert(dev, img, now_utc if execution_time else 0,
                            execution_time)
        return (r.code, r.file_version, r.counter)

    async def read_attributes(self, eui: bytes, attr_ids: Iterable[int], *,
                              timeout: float | None = None,
                              retries: int | None = None) -> list[zcl.AttrRecord]:
        """ZCL Read Attributes of the device's OTA client attributes (e.g. 0x0002 version)."""
        ids = list(attr_ids)
        try:
            payload = zcl.pack_read_attributes(ids)
        except ZclError as e:
            raise ServerError(str(e), reason="bad-argument") from None
        return await self._request(eui, "attributes", _GLOBAL_S2C,
                                   zcl.GLOBAL_READ_ATTRIBUTES, payload, None, timeout, retries)

    async def upgrade_end_response(self, eui: bytes, image: ServedImage | None = None,
                                   current_time: int | None = None,
                                   upgrade_time: int | None = None, *,
                                   timeout: float | None = None,
                                   retries: int | None = None) -> tuple[int, int]:
        """Send an unsolicited Upgrade End Response (times from the policy unless given) and
        wait for the device's Default Response. Returns the (current, upgrade) times sent."""
        dev = self._route(eui)
        if image is None:
            t = self.transfers.get(eui)
            image = t.image if t is not None else dev.offered
        if image is None:
            raise ServerError("no image known for %s" % hlink.eui_str(eui), reason="no-image")
        if current_time is None or upgrade_time is None:
            current_time, upgrade_time = self.policy.upgrade_time(eui, image)
        d = await self._request(eui, "default", _S2C, zcl.CMD_UPGRADE_END_RESPONSE,
                                zcl.pack_upgrade_end_response(*image.identity, current_time,
                                                              upgrade_time),
                                None, timeout, retries)
        if d.status != zcl.SUCCESS:
            raise DeviceStatusError("%s refused the Upgrade End Response: %s"
                                    % (hlink.eui_str(eui), zcl.status_name(d.status)), d.status)
        self._arm_alert(dev, image, current_time, upgrade_time)
        return (current_time, upgrade_time)
