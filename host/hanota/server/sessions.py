"""Link sessions: per-device keys and counters, JOIN and HELLO, and sending link frames.

`Sessions` holds one `DeviceState` per device heard from (or commanded) in this run: its
link key (from the install code the policy knows), the last frame counter accepted from it
(replays are dropped; `Policy.counter_accepted` persists it before the frame is acted on),
where it was last heard, and what its JOIN and HELLO said. It also owns the hub's own frame
counter, reserved ahead in the policy so that a restarted hub never reuses one.
"""
from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from hanfw import link as hlink
from hanfw import zcl

from ..linkio import Link
from .common import COUNTER_RESERVE, GLOBAL_S2C, Guard, ServerError, log
from .policy import Policy, ServedImage


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
    page_span: tuple[int, int] = (0, 0)  # the file range of the page under way
    rx_frame: int = hlink.MAX_FRAME  # longest frame it takes (its HELLO); above: bundles

    @property
    def peer(self) -> str:
        return self.link.describe(self.addr) if self.link else "-"

    def cancel_page(self) -> None:
        """Stop sending the page under way (a new request, boot or throttle supersedes it)."""
        if self.page_task is not None:
            self.page_task.cancel()
            self.page_task = None


class Sessions:
    """The link layer of the server: who may talk, in which session, and with which counters."""

    def __init__(self, hub_eui: bytes, policy: Policy, stats: Counter[str], guard: Guard,
                 clock: Callable[[], float]):
        self.hub_eui = hub_eui
        self.policy = policy
        self.stats = stats
        self._guard = guard
        self.clock = clock
        self.devices: dict[bytes, DeviceState] = {}
        self.closed = False
        self._counter = policy.next_counter()
        self._counter_limit = self._counter

    # -- devices

    def mac_for(self, eui: bytes) -> hlink.Mac | None:
        """The device's link MAC (None: unknown to the policy); creates its state once."""
        dev = self.devices.get(eui)
        if dev is not None:
            return dev.mac
        code = self._guard(self.policy.install_code, eui)
        if code is None:
            return None
        try:
            mac = hlink.Mac(hlink.link_key(code))
        except hlink.LinkError as e:
            log.error("install code of %s is unusable: %s", hlink.eui_str(eui), e)
            return None
        self.devices[eui] = DeviceState(eui, mac,
                                        self._guard(self.policy.last_device_counter, eui))
        return mac

    def known(self, eui: bytes) -> DeviceState:
        """The device's state; ServerError if the policy does not know it."""
        dev = self.devices.get(eui)
        if dev is None:
            if self.mac_for(eui) is None:
                raise ServerError("unknown device %s" % hlink.eui_str(eui),
                                  reason="unknown-device")
            dev = self.devices[eui]
        return dev

    def route(self, eui: bytes) -> DeviceState:
        """A device the hub can send to now (heard from in this run)."""
        if self.closed:
            raise ServerError("the server is closed", reason="closed")
        dev = self.known(eui)
        if dev.link is None:
            raise ServerError("no route to %s: it has not been heard from" % hlink.eui_str(eui),
                              reason="no-route")
        return dev

    def forget(self, eui: bytes) -> None:
        dev = self.devices.pop(eui, None)
        if dev is not None:
            for t in (dev.worker, dev.page_task):
                if t is not None:
                    t.cancel()

    def is_joined(self, dev: DeviceState) -> bool:
        if dev.joined is None:
            dev.joined = bool(self._guard(self.policy.is_joined, dev.eui, default=False))
        return dev.joined

    # -- receiving

    def drop(self, link: Link, addr: Any, reason: str) -> None:
        """Count a frame that is not acted on, by reason."""
        self.stats[reason] += 1
        self.stats["dropped"] += 1
        self._guard(self.policy.on_bad_frame, link.describe(addr), reason)

    def accept(self, frame: bytes, link: Link, addr: Any):
        """Authenticate a link frame: (device, kind, cluster, payload), or None (dropped)."""
        try:
            kind, src, dst, counter, cluster, payload = hlink.unpack(frame, self.mac_for)
        except hlink.LinkError as e:
            self.drop(link, addr, e.reason)
            return None
        dev = self.devices[src]
        if dst != self.hub_eui and not (
                dst == hlink.BROADCAST and kind in (hlink.KIND_JOIN_REQ, hlink.KIND_HELLO)):
            self.drop(link, addr, "wrong-dst")
            return None
        if dev.last_counter is not None and counter <= dev.last_counter:
            self.drop(link, addr, "replay")
            return None
        # durable before anything the frame asks for happens: a server killed after this
        # point and restarted refuses the frame replayed
        if not self._guard(self.policy.counter_accepted, src, counter, default=False):
            self.drop(link, addr, "counter-unsaved")
            return None
        dev.last_counter = counter
        dev.link, dev.addr, dev.last_seen = link, addr, self.clock()
        self.stats["frames"] += 1
        return dev, kind, cluster, payload

    def join(self, dev: DeviceState, payload: memoryview) -> None:
        try:
            service, role, mfr, itype, hw, ver, nonce = hlink.parse_join_req(bytes(payload))
        except hlink.LinkError:
            self.drop(dev.link, dev.addr, "malformed")
            return
        status = self._guard(self.policy.join, dev.eui, service, role, mfr, itype, hw, ver)
        if status is None:
            return  # the policy failed; the device asks again
        dev.joined = status == hlink.JOIN_OK
        if dev.joined:
            dev.role, dev.manufacturer, dev.image_type = role, mfr, itype
            dev.hw_version, dev.file_version = hw, ver
            self._guard(self.policy.on_joined, dev.eui, role, mfr, itype, hw, ver)
        self.send(dev, hlink.KIND_JOIN_RSP,
                  lambda ctr: hlink.pack_join_rsp(status, self.hub_eui, ctr, nonce))

    def hello(self, dev: DeviceState, payload: memoryview) -> None:
        try:
            nonce, version = hlink.parse_hello(bytes(payload))
        except hlink.LinkError:
            self.drop(dev.link, dev.addr, "malformed")
            return
        if not self.is_joined(dev):
            self.drop(dev.link, dev.addr, "not-joined")
            return
        dev.cancel_page()  # a new boot: whatever was being sent is stale
        dev.file_version = version
        dev.rx_frame = hlink.hello_rx_frame(payload)
        self._guard(self.policy.on_hello, dev.eui, version)
        # The ack's own counter is the baseline: later hub frames to this device exceed it.
        self.send(dev, hlink.KIND_HELLO_ACK, lambda ctr: hlink.pack_hello(nonce, ctr))

    # -- sending

    def next_counter(self) -> int:
        c = self._counter
        if c > 0xFFFFFFFF:
            raise ServerError("the hub frame counter is exhausted", reason="counter")
        if c >= self._counter_limit:
            self._counter_limit = min(c + COUNTER_RESERVE, 1 << 32)
            self.policy.save_counter(self._counter_limit)
        self._counter = c + 1
        return c

    def send(self, dev: DeviceState, kind: int, payload: Callable[[int], bytes] | bytes,
             cluster: int = 0) -> None:
        """One link frame to dev (payload may depend on the frame's counter)."""
        if dev.link is None:
            raise ServerError("no route to %s: it has not been heard from"
                              % hlink.eui_str(dev.eui), reason="no-route")
        ctr = self.next_counter()
        body = payload(ctr) if callable(payload) else payload
        dev.link.send(hlink.pack(dev.mac, kind, self.hub_eui, dev.eui, ctr, cluster, body),
                      dev.addr)

    def send_zcl(self, dev: DeviceState, fc: int, tsn: int, cmd: int, payload: bytes,
                 manufacturer: int | None = None, cluster: int = zcl.CLUSTER_OTA) -> None:
        frame = zcl.pack_header(fc, tsn, cmd, manufacturer) + payload
        self.send(dev, hlink.KIND_DATA, frame, cluster)

    def default_response(self, dev: DeviceState, tsn: int, cmd: int, status: int,
                         manufacturer: int | None = None) -> None:
        self.send_zcl(dev, GLOBAL_S2C, tsn, zcl.GLOBAL_DEFAULT_RESPONSE,
                      zcl.pack_default_response(cmd, status), manufacturer)
