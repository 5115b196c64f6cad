"""Transfer serving: Query Next Image, admitting block and page requests, Upgrade End, and
the watchdog of stalled transfers and silent activations.

`Serving` keeps one `Transfer` per device (`transfers`, for status displays) and the set of
devices holding a transfer slot (`in_flight`). It answers a device that must wait (throttled
by the hub, or all slots busy) with WAIT_FOR_DATA, and leaves the block responses themselves
to its `BlockSender`.
"""
from __future__ import annotations

import asyncio
import math
from collections import Counter
from dataclasses import dataclass
from typing import Callable

from hanfw import link as hlink
from hanfw import zcl
from hanfw.zcl import ZclError

from .blocks import BlockSender
from .common import BLOCK_ROOM, S2C_RESPONSE, UPGRADE_WAIT, Guard, log
from .policy import Policy, ServedImage
from .sessions import DeviceState, Sessions


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


class Serving:
    """The OTA server commands of every device's transfer (see `OtaServer` for the options)."""

    def __init__(self, sessions: Sessions, policy: Policy, stats: Counter[str], guard: Guard,
                 clock: Callable[[], float], *, block_cap: int, response_spacing_ms: int,
                 page_spacing_ms: int, stall_timeout: float, activation_timeout: float,
                 max_in_flight: int | None, busy_retry_s: int, progress_interval: float):
        self.sessions = sessions
        self.policy = policy
        self.stats = stats
        self._guard = guard
        self.clock = clock
        self.block_cap = block_cap
        self.response_spacing_ms = response_spacing_ms
        self.stall_timeout = stall_timeout
        self.activation_timeout = activation_timeout
        self.max_in_flight = max_in_flight
        self.busy_retry_s = busy_retry_s
        self.progress_interval = progress_interval
        self.transfers: dict[bytes, Transfer] = {}
        self.in_flight: set[bytes] = set()
        self.blocks = BlockSender(sessions, stats, block_cap, page_spacing_ms, self._served)

    # -- controls

    def throttle(self, dev: DeviceState, seconds: float) -> None:
        dev.throttle_until = self.clock() + seconds if seconds > 0 else 0.0
        dev.cancel_page()

    def cancel(self, eui: bytes) -> None:
        t = self.transfers.pop(eui, None)
        self.in_flight.discard(eui)
        dev = self.sessions.devices.get(eui)
        if dev is not None:
            dev.cancel_page()
            offered = dev.offered
            if t is not None and offered is not None and offered.identity == t.image.identity:
                dev.offered = None

    def check_timeouts(self) -> None:
        now = self.clock()
        for eui, t in list(self.transfers.items()):
            if t.state == "downloading" and now - t.last_activity > self.stall_timeout:
                t.state = "stalled"
                self.in_flight.discard(eui)
                dev = self.sessions.devices.get(eui)
                if dev is not None:
                    dev.cancel_page()
                self._guard(self.policy.on_stall, eui, t.image, t.offset)
        for dev in list(self.sessions.devices.values()):
            if dev.alert_deadline is not None and now > dev.alert_deadline:
                dev.alert_deadline = None
                self._guard(self.policy.on_activation_timeout, dev.eui, dev.alert_image)

    def arm_alert(self, dev: DeviceState, img: ServedImage | None, current: int,
                  upgrade: int) -> None:
        """Expect an Activation Alert by the planned activation plus activation_timeout."""
        if upgrade == zcl.UPGRADE_TIME_WAIT:
            return  # activation comes later, by an Activate Image command
        delay = upgrade if current == 0 else max(0, upgrade - current)
        dev.alert_image = img
        dev.alert_deadline = self.clock() + delay + self.activation_timeout

    # -- requests from devices

    def query(self, dev: DeviceState, tsn: int, q: zcl.QueryNextImage) -> None:
        dev.manufacturer, dev.image_type = q.manufacturer, q.image_type
        dev.file_version = q.file_version
        if q.hardware_version is not None:
            dev.hw_version = q.hardware_version
        img = self._guard(self.policy.offer, dev.eui, q.manufacturer, q.image_type,
                          q.file_version, q.hardware_version)
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
        self.sessions.send_zcl(dev, S2C_RESPONSE, tsn, zcl.CMD_QUERY_NEXT_IMAGE_RESPONSE, rsp)

    def image_for(self, dev: DeviceState, mfr: int, itype: int,
                  ver: int) -> ServedImage | None:
        """The image a device names: the one offered, being transferred, or found by the
        policy (a resume without a query in this run)."""
        ident = (mfr, itype, ver)
        if dev.offered is not None and dev.offered.identity == ident:
            return dev.offered
        t = self.transfers.get(dev.eui)
        if t is not None and t.image.identity == ident:
            return t.image
        img = self._guard(self.policy.lookup, dev.eui, mfr, itype, ver)
        if img is not None and img.identity == ident:
            dev.offered = img
            return img
        return None

    # Checks shared by block and page requests. Returns the image to serve or None (answered).
    def _admit(self, dev: DeviceState, tsn: int, mfr: int, itype: int, ver: int, offset: int,
               max_data: int, keep_page: bool = False) -> ServedImage | None:
        img = self.image_for(dev, mfr, itype, ver)
        if img is None:
            self.stats["unknown-image"] += 1
            self.blocks.status(dev, tsn, zcl.ABORT)
            return None
        if offset >= img.size or max_data == 0:
            self.stats["past-end"] += 1
            self.blocks.status(dev, tsn, zcl.MALFORMED_COMMAND)
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
            self.sessions.send_zcl(dev, S2C_RESPONSE, tsn, zcl.CMD_IMAGE_BLOCK_RESPONSE,
                                   zcl.pack_block_wait(0, wait, period))
            return None
        if not keep_page:
            dev.cancel_page()
        t = self.transfers.get(dev.eui)
        if t is None or t.image != img or t.state in ("complete", "failed"):
            t = self.transfers[dev.eui] = Transfer(dev.eui, img, now, now, offset)
        t.state = "downloading"
        t.last_activity = now
        self.in_flight.add(dev.eui)
        return img

    async def block(self, dev: DeviceState, tsn: int, buf: bytes, off: int) -> None:
        r = zcl.parse_block_request(buf, off)
        self.stats["block-requests"] += 1
        if r.min_block_period is not None:
            dev.min_block_period_ms = r.min_block_period
        # a block the device lost from the page still under way: the page goes on (the
        # device keeps what follows the lost block and asks for that one alone)
        page = dev.page_task
        keep = page is not None and not page.done() and \
            dev.page_span[0] <= r.file_offset < dev.page_span[1]
        img = self._admit(dev, tsn, r.manufacturer, r.image_type, r.file_version,
                          r.file_offset, r.max_data_size, keep_page=keep)
        if img is None:
            return
        loop = asyncio.get_running_loop()
        delay = dev.next_send - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        n = min(r.max_data_size, self.block_cap, BLOCK_ROOM, img.size - r.file_offset)
        self.blocks.send_block(dev, tsn, img, r.file_offset, n)
        gap = max(self.response_spacing_ms, dev.min_block_period_ms)
        dev.next_send = loop.time() + gap / 1000

    def page(self, dev: DeviceState, tsn: int, buf: bytes, off: int) -> None:
        r = zcl.parse_page_request(buf, off)
        self.stats["pages"] += 1
        if r.page_size == 0:
            raise ZclError(zcl.MALFORMED_COMMAND, "page request: page size 0")
        img = self._admit(dev, tsn, r.manufacturer, r.image_type, r.file_version,
                          r.file_offset, r.max_data_size)
        if img is not None:
            dev.page_span = (r.file_offset, r.file_offset + r.page_size)
            dev.page_task = asyncio.get_running_loop().create_task(
                self.blocks.send_page(dev, tsn, img, r))

    def _served(self, dev: DeviceState, img: ServedImage, offset: int, n: int) -> None:
        t = self.transfers.get(dev.eui)
        if t is not None and t.image == img:
            now = self.clock()
            t.offset = offset + n
            t.bytes_served += n
            t.last_activity = now
            if t.offset >= img.size or now - t.last_progress >= self.progress_interval:
                t.last_progress = now
                self._guard(self.policy.on_progress, dev.eui, img, t.offset, img.size)

    def upgrade_end(self, dev: DeviceState, tsn: int, buf: bytes, off: int) -> None:
        r = zcl.parse_upgrade_end(buf, off)
        img = self.image_for(dev, r.manufacturer, r.image_type, r.file_version)
        dev.cancel_page()
        self.in_flight.discard(dev.eui)
        t = self.transfers.get(dev.eui)
        if t is not None and img is not None and t.image == img:
            t.state = "complete" if r.status == zcl.SUCCESS else "failed"
            t.status = r.status
            t.last_activity = self.clock()
        send_zcl = self.sessions.send_zcl
        if r.status != zcl.SUCCESS:
            # The device gave up on the image: acknowledge, it starts over when it wants.
            self._guard(self.policy.on_upgrade_end, dev.eui, img, r.status)
            self.sessions.default_response(dev, tsn, zcl.CMD_UPGRADE_END, zcl.SUCCESS)
            return
        if img is None:
            ident = (r.manufacturer, r.image_type, r.file_version)
            if self._guard(self.policy.holds, dev.eui, *ident, default=False):
                # distributed earlier (the answer lost, a hub restarted since): keep holding
                self.stats["held-again"] += 1
                send_zcl(dev, S2C_RESPONSE, tsn, zcl.CMD_UPGRADE_END_RESPONSE,
                         zcl.pack_upgrade_end_response(*ident, *UPGRADE_WAIT))
                return
            self.stats["unknown-image"] += 1
            self.sessions.default_response(dev, tsn, zcl.CMD_UPGRADE_END, zcl.ABORT)
            return
        self._guard(self.policy.on_upgrade_end, dev.eui, img, zcl.SUCCESS)
        ct, ut = self._guard(self.policy.upgrade_time, dev.eui, img, default=UPGRADE_WAIT)
        send_zcl(dev, S2C_RESPONSE, tsn, zcl.CMD_UPGRADE_END_RESPONSE,
                 zcl.pack_upgrade_end_response(*img.identity, ct, ut))
        self.arm_alert(dev, img, ct, ut)
