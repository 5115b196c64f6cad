"""`HubPolicy`: the OTA server's decisions and events, backed by the hub database.

The server (`hanota.server.OtaServer`) asks the policy who a device is, whether it may
join, what to offer it, and when it should activate; it reports progress, Upgrade Ends,
Activation Alerts, Activate Image Responses, stalls and silent activations. This policy
answers from the registry and the request queue, and turns each event into a state change
or an outcome of the request it belongs to (every change is a row in `events`).

Rules it applies:

- HAN join: a device known by its install code; an Alt HAN device on the ordinary join
  service gets JOIN_ALT_HAN_REFUSED; an Alt HAN device joined to an earlier hub (before a
  Trust Centre Swap-Out) gets JOIN_P2P_UNAVAILABLE and its pending requests end
  ota_unavailable_after_tcso; PPMIDs and HCALCS rejoin the new hub.
- An image is offered only for the device's update request holding a transfer slot; a
  device with a queued request that polls while a slot is free, and nothing ranks before
  it, gets the slot there and then. A device resuming blocks without a query is served the
  image of its pending request (told to wait while that request is queued).
- Upgrade End SUCCESS: SR 11.1 -> distributed; SR 11.4 -> activating at the request's time
  (the same Upgrade End again, its answer lost, is answered again and recorded once; after
  SR 11.1, even across a hub restart, the device is told again to hold the image).
  Any other status -> rejected_by_device (its ZCL status name).
- Activation Alert: rolled back -> rolled_back (its reason); running the target -> activated.
- Activate Image Response (matched by its counter = the request id): success -> activating;
  no image held / hash mismatch / activation failure -> that outcome.
Hooks are synchronous and short: one or two small transactions each.
"""
from __future__ import annotations

import logging
import os
import sqlite3
from typing import Any, Coroutine, Protocol

from hanfw import link as hlink
from hanfw import zcl

from ..server import (UPGRADE_NOW, UPGRADE_WAIT, OtaServer, Policy, ServedImage,
                      zigbee_time)
from . import queue
from .db import IN_SLOT, HubDB, eui_text, version_text
from .queue import RetryPolicy
from .registry import TCSO_REASON, tcso_affected
from .requests import iso

log = logging.getLogger(__name__)


class HubSettings(Protocol):
    """The options of the hub that its policy applies (`hanota.hub.hub.HubOptions`)."""

    max_in_flight: int
    retry: RetryPolicy


class HubControl(Protocol):
    """What the policy needs of the running hub (`hanota.hub.hub.Hub`), so that this module
    does not import the hub: the hub owns the policy, the policy only calls back."""

    hub_eui: str
    paused: bool
    options: HubSettings
    server: OtaServer | None

    def wake(self) -> None: ...

    def hold(self, eui: str) -> None: ...

    def unhold(self, eui: str) -> None: ...

    def spawn(self, key: tuple[str, int], coro: Coroutine[Any, Any, None]) -> None: ...

    def fail_attempt(self, request_id: int, reason: str,
                     outcome: str = "transfer_failed") -> str: ...

_ACTIVATE_OUTCOMES = {zcl.ACTIVATE_NO_IMAGE_HELD: "no_image_held",
                      zcl.ACTIVATE_HASH_MISMATCH: "hash_mismatch",
                      zcl.ACTIVATE_FAILURE: "activation_failed"}


class HubPolicy(Policy):
    """A `Policy` over the hub database, for the server of `hub` (its current identity)."""

    def __init__(self, db: HubDB, hub: HubControl):
        super().__init__()
        self.db = db
        self.hub = hub
        self._served: dict[str, ServedImage] = {}

    # -- helpers

    @property
    def hub_eui(self) -> str:
        return self.hub.hub_eui

    def _device(self, eui: bytes) -> sqlite3.Row | None:
        return self.db.one("SELECT * FROM devices WHERE eui = ?", (eui_text(eui),))

    def served(self, sha: str) -> ServedImage | None:
        """The ServedImage of a stored image (cached)."""
        img = self._served.get(sha)
        if img is None:
            r = self.db.one("SELECT * FROM images WHERE sha256 = ?", (sha,))
            if r is None:
                return None
            img = ServedImage(r["path"], r["manufacturer"], r["image_type"], r["file_version"],
                              r["size"], bytes.fromhex(r["image_hash"]) if r["image_hash"]
                              else None, r["min_hw"], r["max_hw"],
                              hlink.eui_from_str(r["destination"]) if r["destination"] else None)
            self._served[sha] = img
        return img

    def pending_update(self, eui: bytes) -> sqlite3.Row | None:
        """The device's update request without an outcome yet (at most one), or None."""
        return self.db.one("SELECT * FROM requests WHERE eui = ? AND kind = 'update' "
                           "AND outcome IS NULL", (eui_text(eui),))

    def _update_for(self, eui: bytes, image: ServedImage | None) -> sqlite3.Row | None:
        """The device's pending update request for exactly this image."""
        row = self.pending_update(eui)
        if row is None or image is None:
            return None
        img = self.served(row["image"])
        return row if img is not None and img.identity == image.identity else None

    def _update_device(self, eui: bytes, **fields) -> None:
        sets = ", ".join("%s = ?" % k for k in fields)
        with self.db.tx() as c:
            c.execute("UPDATE devices SET %s WHERE eui = ?" % sets,
                      (*fields.values(), eui_text(eui)))

    # -- link and registry

    def install_code(self, eui: bytes) -> str | None:
        r = self.db.one("SELECT install_code FROM devices WHERE eui = ?", (eui_text(eui),))
        return r[0] if r is not None else None

    def is_joined(self, eui: bytes) -> bool:
        r = self._device(eui)
        return r is not None and r["joined_hub"] == self.hub_eui

    def counter_accepted(self, eui: bytes, counter: int) -> bool:
        journal = getattr(self.hub, "counters", None)  # the hub's CounterJournal
        return journal.record(eui, counter) if journal is not None else True

    def last_device_counter(self, eui: bytes) -> int | None:
        r = self.db.one("SELECT last_counter FROM devices WHERE eui = ?", (eui_text(eui),))
        return r[0] if r is not None else None

    def next_counter(self) -> int:
        r = self.db.one("SELECT counter FROM hubs WHERE eui = ?", (self.hub_eui,))
        return int(r[0]) if r is not None else 1

    def save_counter(self, n: int) -> None:
        with self.db.tx() as c:
            c.execute("UPDATE hubs SET counter = max(counter, ?) WHERE eui = ?",
                      (n, self.hub_eui))

    def join(self, eui: bytes, service: int, role: str, manufacturer: int, image_type: int,
             hw_version: int, file_version: int) -> int:
        dev = self._device(eui)
        e = eui_text(eui)
        if dev is None:
            status = hlink.JOIN_UNKNOWN_DEVICE
        elif service == hlink.SERVICE_ORDINARY:
            althan = dev["role"] == "althan" or role == "althan"
            status = hlink.JOIN_ALT_HAN_REFUSED if althan else hlink.JOIN_OK
        elif service == hlink.SERVICE_ALT_HAN_P2P and dev["role"] == "althan":
            if tcso_affected(dev, self.hub_eui):
                status = hlink.JOIN_P2P_UNAVAILABLE
            else:
                status = hlink.JOIN_OK
        else:
            status = hlink.JOIN_SERVICE_REFUSED
        with self.db.tx():
            self.db.event("join", e, service="alt_han_p2p" if service else "ordinary",
                          role=role, status=hlink.JOIN_STATUS_NAMES[status]
                          if status < len(hlink.JOIN_STATUS_NAMES) else status)
            if status == hlink.JOIN_P2P_UNAVAILABLE:
                for r in self.db.all("SELECT id FROM requests WHERE eui = ? AND outcome IS NULL",
                                     (e,)):
                    self.db.finish(r[0], "ota_unavailable_after_tcso",
                                   TCSO_REASON % (dev["joined_hub"], self.hub_eui))
        return status

    def on_joined(self, eui: bytes, role: str, manufacturer: int, image_type: int,
                  hw_version: int, file_version: int) -> None:
        with self.db.tx() as c:
            c.execute("UPDATE devices SET joined_hub = ?, running_version = ?, "
                      "hw_version = coalesce(hw_version, ?), last_seen = ? WHERE eui = ?",
                      (self.hub_eui, file_version, hw_version, self.db.now(), eui_text(eui)))
            self.db.event("joined", eui_text(eui), hub=self.hub_eui,
                          version=version_text(file_version))
        self.hub.wake()

    def on_hello(self, eui: bytes, file_version: int) -> None:
        with self.db.tx():
            self._update_device(eui, running_version=file_version, last_seen=self.db.now())
            self.db.event("hello", eui_text(eui), version=version_text(file_version))

    # -- images

    def offer(self, eui: bytes, manufacturer: int, image_type: int, file_version: int,
              hw_version: int | None) -> ServedImage | None:
        e = eui_text(eui)
        dev = self._device(eui)
        if dev is not None and dev["running_version"] != file_version:
            self._update_device(eui, running_version=file_version)
        row = self.pending_update(eui)
        if row is None:
            return None
        if row["state"] == "queued":
            o = self.hub.options
            if self.hub.paused or not queue.try_promote_awake(
                    self.db, row["id"], o.max_in_flight, o.retry, self.db.now()):
                return None
            self.hub.unhold(e)
            row = self.db.request(row["id"])
        img = self.served(row["image"])
        rid = row["id"]
        if img is None or not os.path.exists(img.path):
            self.db.finish(rid, "transfer_failed", "the image is missing from the image store")
            self.hub.wake()
            return None
        if row["state"] == "activating":
            # a device on trial already queries with the new version: that is not yet a
            # confirmed image; the Activation Alert (or the read-back after the activation
            # timeout) decides between activated and rolled back
            return None
        if row["state"] not in IN_SLOT:
            return None
        if (manufacturer, image_type) != (img.manufacturer, img.image_type):
            self.db.finish(rid, "image_mismatch", "device asks for manufacturer 0x%04x image type "
                           "0x%04x; the image is 0x%04x / 0x%04x" % (
                               manufacturer, image_type, img.manufacturer, img.image_type))
        elif img.min_hw is not None and hw_version is not None \
                and not img.min_hw <= hw_version <= img.max_hw:
            self.db.finish(rid, "hw_version_mismatch", "device hardware version 0x%04x is "
                           "outside the image's range 0x%04x..0x%04x"
                           % (hw_version, img.min_hw, img.max_hw))
        elif file_version == img.file_version:
            self.db.finish(rid, "activated", "device already runs the target version",
                           file_version)
        elif file_version > img.file_version:
            self.db.finish(rid, "rejected_by_device", "device runs %s, newer than the image's %s"
                           % (version_text(file_version), version_text(img.file_version)))
        else:
            if row["state"] == "notifying":
                self.db.set_state(rid, "downloading", "offered",
                                  {"version": version_text(img.file_version)},
                                  size=img.size,
                                  deadline=self.db.now() + self.hub.options.retry.stall_window)
            return img
        self.hub.wake()
        return None

    def lookup(self, eui: bytes, manufacturer: int, image_type: int,
               file_version: int) -> ServedImage | None:
        row = self.pending_update(eui)
        if row is None:
            return None
        img = self.served(row["image"])
        if img is None or img.identity != (manufacturer, image_type, file_version) \
                or img.destination not in (None, eui):
            return None
        if row["state"] == "queued":
            self.hub.hold(eui_text(eui))  # resuming on its own while queued: told to wait
        return img

    def holds(self, eui: bytes, manufacturer: int, image_type: int, file_version: int) -> bool:
        for r in self.db.all("SELECT image FROM requests WHERE eui = ? AND kind = 'update' AND "
                             "outcome = 'distributed' ORDER BY id DESC LIMIT 4",
                             (eui_text(eui),)):
            img = self.served(r["image"])
            if img is not None and img.identity == (manufacturer, image_type, file_version):
                return True
        return False

    def upgrade_time(self, eui: bytes, image: ServedImage) -> tuple[int, int]:
        row = self._update_for(eui, image)
        if row is None or row["sr"] == "11.1":
            return UPGRADE_WAIT
        at = row["activate_at"]
        now = self.db.now()
        if at is None or at <= now:
            return UPGRADE_NOW
        return (zigbee_time(now), zigbee_time(at))

    # -- events

    def on_progress(self, eui: bytes, image: ServedImage, offset: int, size: int) -> None:
        row = self._update_for(eui, image)
        if row is None or row["state"] not in IN_SLOT:
            return
        t = self.hub.server.transfer_for(eui) if self.hub.server is not None else None
        rate = t.rate if t is not None else None
        now = self.db.now()
        with self.db.tx():
            fields = dict(offset=offset, size=size, rate=rate,
                          deadline=now + self.hub.options.retry.stall_window)
            if row["state"] == "notifying":
                self.db.set_state(row["id"], "downloading", "resumed_download",
                                  {"offset": offset}, **fields)
            else:
                self.db.update_request(row["id"], **fields)
            # a progress event at each tenth of the file (the request row has every update)
            if not size or (10 * offset) // size != (10 * row["offset"]) // size \
                    or offset >= size:
                self.db.event("progress", eui_text(eui), row["id"], offset=offset, size=size,
                              percent=round(100.0 * offset / size, 1) if size else None,
                              rate=round(rate, 1) if rate else None)

    def on_upgrade_end(self, eui: bytes, image: ServedImage | None, status: int) -> None:
        e = eui_text(eui)
        row = self._update_for(eui, image)
        if row is None:
            self.db.event("upgrade_end", e, status=zcl.status_name(status),
                          version=version_text(image.file_version) if image else None,
                          note="no pending request for this image")
            return
        rid = row["id"]
        if status == zcl.SUCCESS and row["state"] == "activating":
            # the same Upgrade End again: its answer was lost, or a hub killed after recording
            # it never sent one. The server answers it again; it is recorded once.
            return
        with self.db.tx():
            self.db.event("upgrade_end", e, rid, status=zcl.status_name(status),
                          version=version_text(image.file_version))
            if status != zcl.SUCCESS:
                # finished once the device's reason is read (a hub restart meanwhile makes
                # the device reject the image again: the outcome is then recorded anew)
                self.hub.spawn(("rejection", rid), self._rejected(rid, eui, status))
            elif row["sr"] == "11.1":
                self.db.finish(rid, "distributed", "image held by the device; activate it with "
                               "SR 11.3 (Manufacturer Image Hash %s)" % row["image_hash"],
                               image.file_version)
                self._update_device(eui, held_hash=row["image_hash"])
            else:
                now = self.db.now()
                at = max(now, row["activate_at"] or now)
                self.db.set_state(rid, "activating", "activation_scheduled",
                                  {"activate_at": iso(at)}, offset=image.size, size=image.size,
                                  deadline=at + self.hub.options.retry.activation_timeout)
        self.hub.wake()

    async def _rejected(self, rid: int, eui: bytes, status: int) -> None:
        """Record a device's rejection with its reason, read from the OTA cluster's
        manufacturer-specific attribute 0xF000 (hanfw.reasons), when the device answers."""
        from hanfw import reasons
        why = None
        try:
            recs = await self.hub.server.read_attributes(eui, [reasons.ATTR_LAST_REJECTION])
            if recs and recs[0][1] == zcl.SUCCESS:
                why = reasons.name(recs[0][3])
        except Exception as e:  # DeviceTimeout, ServerError: the status alone is still the outcome
            log.info("reason of %s's rejection not read: %s", eui_text(eui), e)
        text = "Upgrade End status %s" % zcl.status_name(status)
        self.db.finish(rid, "rejected_by_device", "%s: %s" % (text, why) if why else text)
        self.hub.wake()

    def on_alert(self, eui: bytes, running: int, previous: int, rolled_back: bool,
                 reason: int) -> None:
        e = eui_text(eui)
        rows = self.db.all("SELECT * FROM requests WHERE eui = ? AND outcome IS NULL "
                           "AND state = 'activating' ORDER BY id", (e,))
        if len(rows) > 1:
            rows = [r for r in rows if r["target_version"] in (running, previous)] or rows
        with self.db.tx():
            self._update_device(eui, running_version=running, held_hash=None,
                                last_seen=self.db.now())
            rid = rows[0]["id"] if rows else None
            self.db.event("alert", e, rid, running=version_text(running),
                          previous=version_text(previous), rolled_back=rolled_back,
                          reason=zcl.alert_reason_name(reason))
            if rid is None:
                return
            target = rows[0]["target_version"]
            if rolled_back:
                self.db.finish(rid, "rolled_back", "%s; the device runs %s again"
                               % (zcl.alert_reason_name(reason), version_text(running)), running)
            elif target is None or running == target:
                self.db.finish(rid, "activated", "Activation Alert: running %s"
                               % version_text(running), running)
            else:
                self.db.finish(rid, "rolled_back", "Activation Alert: the device runs %s, not "
                               "the target %s" % (version_text(running), version_text(target)),
                               running)
        self.hub.wake()

    def on_gbcs_alert(self, eui: bytes, reason: int, data: bytes) -> None:
        """A GBCS message the device sent unasked (8F66/8F67 when a future-dated CS06 fell
        due): kept as a gbcs_alert event with its bytes, on the device's pending SR 11.3
        request (the Comms Hub's WAN carries it to the DCC, which gives it to the User as
        the FutureDatedDeviceAlertMessage). 8F66: the request ends by the Activation Alert
        after the reset (or its timeout); 8F67 (not actioned) ends it now, by its code."""
        from hanfw import activation, gbcs

        e = eui_text(eui)
        detail: dict = {"reason": activation.reason_name(reason), "gbcs": bytes(data).hex()}
        code = None
        try:
            m = gbcs.decode(bytes(data))
            if m.kind == "fd-alert":
                detail["alert_code"] = "%04X" % m.fields["alert_code"]
                code = detail["response_code"] = m.fields["response_code"]
        except gbcs.GbcsError as err:
            detail["malformed"] = str(err)
        with self.db.tx():
            row = self.db.one("SELECT id FROM requests WHERE eui = ? AND kind = 'activate' AND "
                              "outcome IS NULL AND state IN ('activating', 'running')", (e,))
            rid = row[0] if row is not None else None
            self.db.event("gbcs_alert", e, rid, **detail)
            ended = rid is not None and bool(code) and self.db.finish(
                rid, {1: "no_image_held", 2: "hash_mismatch"}.get(code, "activation_failed"),
                "future-dated activation not actioned (alert %s, CS06 response code %d%s)" % (
                    detail["alert_code"], code, ": %s" % detail["reason"]
                    if detail["reason"] else ""))
        if ended:
            self.hub.wake()

    def on_activate_response(self, eui: bytes, code: int, file_version: int,
                             counter: int) -> None:
        self.activate_result(eui_text(eui), counter, code, file_version)

    def activate_result(self, eui: str, request_id: int, code: int, file_version: int) -> None:
        """Apply an Activate Image Response to its request (idempotent)."""
        row = self.db.request(request_id)
        with self.db.tx():
            self._update_device(hlink.eui_from_str(eui), running_version=file_version)
            if row is None or row["eui"] != eui or row["kind"] != "activate" \
                    or row["outcome"] is not None or row["state"] != "running":
                return
            self.db.event("activate_response", eui, request_id,
                          code=zcl.activate_code_name(code), version=version_text(file_version))
            if code == zcl.ACTIVATE_SUCCESS:
                now = self.db.now()
                at = max(now, row["activate_at"] or now)
                self.db.set_state(request_id, "activating", "activation_scheduled",
                                  {"activate_at": iso(at)},
                                  deadline=at + self.hub.options.retry.activation_timeout)
            else:
                self.db.finish(request_id, _ACTIVATE_OUTCOMES.get(code, "activation_failed"),
                               "Activate Image Response %s" % zcl.activate_code_name(code),
                               file_version)
        self.hub.wake()

    def on_stall(self, eui: bytes, image: ServedImage, offset: int) -> None:
        row = self._update_for(eui, image)
        if row is not None and row["state"] in IN_SLOT:
            self.hub.fail_attempt(row["id"], "transfer stalled at offset %d of %d"
                                  % (offset, image.size))

    def on_activation_timeout(self, eui: bytes, image: ServedImage | None) -> None:
        for r in self.db.all("SELECT id FROM requests WHERE eui = ? AND state = 'activating'",
                             (eui_text(eui),)):
            self.db.update_request(r[0], deadline=self.db.now())
        self.hub.wake()

    def on_bad_frame(self, peer: str, reason: str) -> None:
        pass  # counted in the server's stats
