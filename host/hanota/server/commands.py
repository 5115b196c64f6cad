"""Hub -> device commands: TSNs, Image Notify, Activate Image, Read Attributes, and the
unsolicited Upgrade End Response, each a coroutine with a timeout and retries.

A command waits on a future keyed by (device, TSN); the device's answer (a Default
Response, Read Attributes Response or Activate Image Response) resolves it. Image Notify
instead waits for the device's next Query Next Image.
"""
from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from hanfw import link as hlink
from hanfw import zcl
from hanfw.zcl import ZclError

from .common import (GLOBAL_S2C, S2C, S2C_RESPONSE, DeviceStatusError, DeviceTimeout,
                     ServerError, zigbee_time)
from .policy import Policy, ServedImage
from .sessions import DeviceState, Sessions
from .transfers import Serving


@dataclass(eq=False)
class _Pending:
    expect: str  # "activate", "attributes", "default" or "gbcs"
    command_id: int
    future: asyncio.Future


class Commands:
    """Commands the hub sends to devices, and the answers that complete them."""

    def __init__(self, sessions: Sessions, serving: Serving, policy: Policy,
                 stats: Counter[str], clock: Callable[[], float], *,
                 request_timeout: float, retries: int):
        self.sessions = sessions
        self.serving = serving
        self.policy = policy
        self.stats = stats
        self.clock = clock
        self.request_timeout = request_timeout
        self.retries = retries
        self._pending: dict[tuple[bytes, int], _Pending] = {}
        self._query_waiters: dict[bytes, list[asyncio.Future]] = {}

    def close(self) -> None:
        """Fail every command still waiting (the server closed)."""
        for p in self._pending.values():
            if not p.future.done():
                p.future.set_exception(ServerError("the server closed", reason="closed"))
        for waiters in self._query_waiters.values():
            for f in waiters:
                f.cancel()

    # -- answers from devices

    def queried(self, eui: bytes, q: zcl.QueryNextImage) -> None:
        """A Query Next Image: answers every Image Notify waiting for one."""
        for f in self._query_waiters.get(eui, ()):
            if not f.done():
                f.set_result(q)

    def default_response(self, dev: DeviceState, tsn: int, d: zcl.DefaultResponse) -> None:
        p = self._pending.get((dev.eui, tsn))
        if p is None or p.command_id != d.command_id or p.future.done():
            return
        if p.expect == "default":
            p.future.set_result(d)
        elif d.status != zcl.SUCCESS:
            p.future.set_exception(DeviceStatusError(
                "%s answered command 0x%02X with %s" % (hlink.eui_str(dev.eui), d.command_id,
                                                       zcl.status_name(d.status)), d.status))

    def attributes_response(self, dev: DeviceState, tsn: int, records: list) -> None:
        p = self._pending.get((dev.eui, tsn))
        if p is not None and p.expect == "attributes" and not p.future.done():
            p.future.set_result(records)

    def activate_response(self, dev: DeviceState, tsn: int,
                          r: zcl.ActivateImageResponse) -> None:
        p = self._pending.get((dev.eui, tsn))
        if p is not None and p.expect == "activate" and not p.future.done():
            p.future.set_result(r)

    def gbcs_response(self, dev: DeviceState, tsn: int, reason: int, data: bytes) -> bool:
        """A 0xF4 GBCS Response; False when no GBCS command waits for it (an alert)."""
        p = self._pending.get((dev.eui, tsn))
        if p is not None and p.expect == "gbcs" and not p.future.done():
            p.future.set_result((reason, bytes(data)))
            return True
        return False

    # -- sending

    def _new_tsn(self, dev: DeviceState) -> int:
        for _ in range(256):
            dev.tsn = (dev.tsn + 1) & 0xFF
            if (dev.eui, dev.tsn) not in self._pending:
                return dev.tsn
        raise ServerError("too many commands outstanding to %s" % hlink.eui_str(dev.eui))

    async def _request(self, eui: bytes, expect: str, fc: int, cmd: int, payload: bytes,
                       manufacturer: int | None, timeout: float | None,
                       retries: int | None) -> Any:
        dev = self.sessions.route(eui)
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
                self.sessions.send_zcl(dev, fc, tsn, cmd, payload, manufacturer)
                try:
                    return await asyncio.wait_for(asyncio.shield(fut), timeout)
                except asyncio.TimeoutError:
                    continue
            raise DeviceTimeout("%s did not answer command 0x%02X (%d tries of %.1f s)"
                                % (hlink.eui_str(eui), cmd, retries + 1, timeout))
        finally:
            del self._pending[key]

    async def send_app(self, eui: bytes, cluster: int, payload: bytes) -> None:
        self.sessions.send(self.sessions.route(eui), hlink.KIND_DATA, bytes(payload), cluster)

    async def notify(self, eui: bytes, timeout: float | None, retries: int | None) -> bool:
        dev = self.sessions.route(eui)
        fut = asyncio.get_running_loop().create_future()
        waiters = self._query_waiters.setdefault(eui, [])
        waiters.append(fut)
        timeout = self.request_timeout if timeout is None else timeout
        retries = self.retries if retries is None else retries
        try:
            for _ in range(retries + 1):
                self.sessions.send_zcl(dev, S2C_RESPONSE, self._new_tsn(dev),
                                       zcl.CMD_IMAGE_NOTIFY,
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

    async def activate(self, eui: bytes, image_hash: bytes, execution_time: int, counter: int,
                       manufacturer: int | None, timeout: float | None,
                       retries: int | None) -> tuple[int, int, int]:
        dev = self.sessions.route(eui)
        mfr = manufacturer if manufacturer is not None else dev.manufacturer
        if mfr is None:
            raise ServerError("manufacturer code of %s unknown; pass manufacturer="
                              % hlink.eui_str(eui), reason="bad-argument")
        try:
            payload = zcl.pack_activate_image(image_hash, execution_time, counter)
        except ZclError as e:
            raise ServerError(str(e), reason="bad-argument") from None
        r = await self._request(eui, "activate", S2C_RESPONSE, zcl.CMD_ACTIVATE_IMAGE,
                                payload, mfr, timeout, retries)
        if r.code == zcl.ACTIVATE_SUCCESS:
            t = self.serving.transfers.get(eui)
            img = next((i for i in (dev.offered, getattr(t, "image", None))
                        if i is not None and i.image_hash == bytes(image_hash)), None)
            now_utc = zigbee_time(self.clock())
            self.serving.arm_alert(dev, img, now_utc if execution_time else 0, execution_time)
        return (r.code, r.file_version, r.counter)

    async def gbcs(self, eui: bytes, data: bytes, manufacturer: int | None,
                   timeout: float | None, retries: int | None) -> tuple[int, bytes]:
        """Relay a GBCS command (0xF3, the bytes as the DCC sent them); (reason byte, the
        device's GBCS response) from its 0xF4 (hanfw/activation.py)."""
        dev = self.sessions.route(eui)
        mfr = manufacturer if manufacturer is not None else dev.manufacturer
        if mfr is None:
            raise ServerError("manufacturer code of %s unknown; pass manufacturer="
                              % hlink.eui_str(eui), reason="bad-argument")
        reason, resp = await self._request(eui, "gbcs", S2C_RESPONSE, zcl.CMD_GBCS,
                                           bytes(data), mfr, timeout, retries)
        if reason == 0 and resp:
            from hanfw import gbcs as hgbcs
            try:
                m = hgbcs.decode(resp)
            except hgbcs.GbcsError:
                m = None
            if m is not None and m.kind == "cs06-response" and m.fields["response_code"] == 0:
                # activating now, as after a successful Activate Image: an Activation Alert
                # is expected
                t = self.serving.transfers.get(eui)
                img = next((i for i in (dev.offered, getattr(t, "image", None))
                            if i is not None), None)
                self.serving.arm_alert(dev, img, 0, 0)
        return reason, resp

    async def read_attributes(self, eui: bytes, attr_ids: Iterable[int], timeout: float | None,
                              retries: int | None) -> list[zcl.AttrRecord]:
        ids = list(attr_ids)
        try:
            payload = zcl.pack_read_attributes(ids)
        except ZclError as e:
            raise ServerError(str(e), reason="bad-argument") from None
        return await self._request(eui, "attributes", GLOBAL_S2C,
                                   zcl.GLOBAL_READ_ATTRIBUTES, payload, None, timeout, retries)

    async def upgrade_end_response(self, eui: bytes, image: ServedImage | None,
                                   current_time: int | None, upgrade_time: int | None,
                                   timeout: float | None,
                                   retries: int | None) -> tuple[int, int]:
        dev = self.sessions.route(eui)
        if image is None:
            t = self.serving.transfers.get(eui)
            image = t.image if t is not None else dev.offered
        if image is None:
            raise ServerError("no image known for %s" % hlink.eui_str(eui), reason="no-image")
        if current_time is None or upgrade_time is None:
            current_time, upgrade_time = self.policy.upgrade_time(eui, image)
        d = await self._request(eui, "default", S2C, zcl.CMD_UPGRADE_END_RESPONSE,
                                zcl.pack_upgrade_end_response(*image.identity, current_time,
                                                              upgrade_time),
                                None, timeout, retries)
        if d.status != zcl.SUCCESS:
            raise DeviceStatusError("%s refused the Upgrade End Response: %s"
                                    % (hlink.eui_str(eui), zcl.status_name(d.status)), d.status)
        self.serving.arm_alert(dev, image, current_time, upgrade_time)
        return (current_time, upgrade_time)
