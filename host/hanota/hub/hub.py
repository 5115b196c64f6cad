"""The running Communications Hub: the OTA server plus the scheduler, over the database.

`Hub` owns one `OtaServer` (UDP and/or serial links) with a `HubPolicy`, and a loop that,
every `poll_interval` seconds (or at once when something changed):

- notices a new hub identity (a Trust Centre Swap-Out recorded by `hanota hub swap-out`)
  and restarts the server with it, on the same addresses;
- saves what the server learnt of each device (last frame counter, last seen);
- drops the server's transfer state for images no request wants any more (superseded);
- ends attempts whose deadline passed (no answer to Image Notify, no progress) and reads
  the version back from devices whose Activation Alert never came;
- fills free transfer slots in priority order and sends Image Notify, repeatedly, until the
  device queries (a device may also poll on its own: a missed notify is not fatal);
- runs due activate / read-version commands, retrying unreachable devices with backoff;
- tells devices whose request is queued to wait (WAIT_FOR_DATA) if they ask for blocks.

Everything it decides is in the database, so a hub killed at any moment and started again
resumes: requests that held a slot are notified again (without counting an attempt),
devices resume their downloads from their own offsets (the server is stateless per block
and `HubPolicy.lookup` finds the image), requests already ended are never offered again,
hub frame counters continue above the last reserved one, device counters from the last
accepted ones (each is journaled before its frame is acted on: `hub/counters.py`, so a
replay of a frame accepted just before a SIGKILL is refused). Only one hub may serve a
database at a time (a lock file beside it).
"""
from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from hanfw import link as hlink
from hanfw import zcl

from ..errors import HanotaError
from ..server import OtaServer, ServerError, zigbee_time
from . import queue
from .counters import CounterJournal
from .db import HubDB, HubError, eui_text, version_text
from .policy import HubPolicy
from .queue import RetryPolicy
from .requests import await_outcome

log = logging.getLogger(__name__)

DEFAULT_UDP = ("127.0.0.1", 17719)


@dataclass
class HubOptions:
    """How the hub runs (see `RetryPolicy` for retries and timeouts of requests).

    max_in_flight: transfers at once; block_cap: largest block served; poll_interval: how
    often the database is polled for new requests; progress_interval: seconds between
    progress reports of a transfer; stall_timeout: the server's watchdog for a transfer
    without block requests; request_timeout, request_retries: for each hub -> device
    command (Image Notify, Activate Image, Read Attributes); hold_s: WAIT_FOR_DATA time told
    to a device whose request is queued; priorities: class priority per role, stored in the
    database at start (None: keep the stored ones); activation_lead: a future-dated SR 11.3
    activation is sent to the device this many seconds before its time, and until then
    stays at the hub, where a cancellation can still end it (`queue.commands_due`).
    """

    max_in_flight: int = 1
    block_cap: int = 64
    poll_interval: float = 0.25
    progress_interval: float = 0.5
    response_spacing_ms: int = 0
    stall_timeout: float = 30.0
    request_timeout: float = 5.0
    request_retries: int = 2
    hold_s: float = 2.0
    heartbeat_interval: float = 1.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    priorities: dict[str, int] | None = None
    activation_lead: float = 60.0


class Hub:
    """A running hub over the database at db_path. `await start()`, `await stop()` (or use
    `async with`). udp: (host, port) to serve on (port 0: any; None: no UDP); serial: device
    paths or descriptors of serial lines. on_event(event dict) is called for every event
    this hub records (for log lines)."""

    def __init__(self, db_path: str | os.PathLike | None = None, *,
                 udp: tuple[str, int] | None = DEFAULT_UDP,
                 serial: Iterable[str | os.PathLike | int] = (),
                 options: HubOptions | None = None,
                 on_event: Callable[[dict], None] | None = None,
                 clock: Callable[[], float] = time.time):
        self.db_path = db_path
        self.udp = udp
        self.serial = list(serial)
        self.options = options or HubOptions()
        self.on_event = on_event
        self.clock = clock
        self.db: HubDB | None = None
        self.policy: HubPolicy | None = None
        self.server: OtaServer | None = None
        self.hub_eui: str = ""
        self.udp_address: tuple[str, int] | None = None
        self.serial_names: list[str] = []
        self._lock_fd: int | None = None
        self.counters: CounterJournal | None = None  # device counters, durable before use
        self._loop_task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._tasks: dict[tuple[str, int], asyncio.Task] = {}
        self._seen: dict[bytes, tuple] = {}
        self._last_heartbeat = 0.0
        self._stopping = False
        self.started = False
        self.paused = False  # pause(): no new transfer starts (a campaign on hold)

    # -- lifetime

    async def start(self) -> None:
        """Open the database, take the serve lock, recover, listen, start scheduling."""
        self.db = HubDB.open(self.db_path, clock=self.clock)
        try:
            self._lock()
            self.counters = CounterJournal(str(self.db.path) + ".counters")
            self._persist_devices()  # a crashed run's journal into the database
            if self.on_event is not None:
                self.db.listeners.append(self.on_event)
            if self.options.priorities:
                self.db.set_priorities(self.options.priorities)
            self._recover()
            await self._start_server(self.db.current_hub()["eui"])
        except BaseException:
            if self.counters is not None:
                self.counters.close()
            self._unlock()
            self.db.close()
            raise
        self.started = True
        self._heartbeat(force=True)
        self._loop_task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop scheduling and serving; everything already decided stays in the database."""
        if not self.started:
            return
        self._stopping = True
        tasks = list(self._tasks.values())
        if self._loop_task is not None:
            tasks.append(self._loop_task)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        try:
            self._persist_devices()
            self.db.set_meta("serve", json.dumps({"pid": os.getpid(), "hub": self.hub_eui,
                                                  "at": self.clock(), "stopped": True}))
        except HubError as e:
            log.error("saving state at stop: %s", e)
        if self.server is not None:
            await self.server.close()
        if self.counters is not None:
            self.counters.close()
        self._unlock()
        self.db.close()
        self.started = False

    async def __aenter__(self) -> "Hub":
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    def _lock(self) -> None:
        path = str(self.db.path) + ".serve.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            other = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise HubError("another hub (pid %s) is serving %s" % (other, self.db.path),
                           reason="busy") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _recover(self) -> None:
        """After a stop or a crash: slots are notified again, commands re-run."""
        now = self.clock()
        with self.db.tx():
            for r in queue.in_slot(self.db):
                self.db.set_state(r["id"], "notifying", "hub_restarted",
                                  {"attempt": r["attempts"], "offset": r["offset"]},
                                  deadline=now + self.options.retry.answer_timeout)
            for r in self.db.all("SELECT id FROM requests WHERE state = 'running'"):
                self.db.set_state(r[0], "queued", "hub_restarted", {}, next_attempt=now)

    async def _start_server(self, hub_eui: str) -> None:
        o = self.options
        self.policy = HubPolicy(self.db, self)
        self.hub_eui = hub_eui
        self.server = OtaServer(hlink.eui_from_str(hub_eui), self.policy, block_cap=o.block_cap,
                                response_spacing_ms=o.response_spacing_ms,
                                stall_timeout=o.stall_timeout,
                                activation_timeout=o.retry.activation_timeout,
                                request_timeout=o.request_timeout, retries=o.request_retries,
                                progress_interval=o.progress_interval, clock=self.clock)
        self._seen.clear()
        try:
            if self.udp is not None:
                host, port = self.udp_address or self.udp
                for attempt in range(20):
                    try:
                        self.udp_address = await self.server.listen_udp(host, port)
                        break
                    except HanotaError:
                        # the previous server's socket closes on a later loop turn
                        if attempt == 19 or self.udp_address is None:
                            raise
                        await asyncio.sleep(0.05)
            self.serial_names = [await self.server.attach_serial(s) for s in self.serial]
        except (OSError, HanotaError) as e:
            await self.server.close()
            self.hub_eui = ""  # not serving: the next tick tries again
            raise HubError("cannot serve on %s: %s" % (self.udp or self.serial, e),
                           reason="listen") from None
        self.db.event("hub_started", hub=hub_eui,
                      udp="%s:%d" % self.udp_address if self.udp_address else None,
                      serial=self.serial_names)

    async def _restart_server(self, hub_eui: str) -> None:
        for key in list(self._tasks):
            self._tasks.pop(key).cancel()
        await self.server.close()
        self._recover()
        log.info("new hub identity %s (Trust Centre Swap-Out): restarting the server", hub_eui)
        await self._start_server(hub_eui)

    # -- the scheduling loop

    def pause(self) -> None:
        """Start no new transfers (those under way go on) until resume()."""
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self.wake()

    def wake(self) -> None:
        """Run the scheduling loop now (something changed)."""
        self._wake.set()

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self.tick()
            except HubError as e:
                log.error("hub: %s", e)
            except Exception:  # a bug must not stop the hub; it is logged
                log.exception("hub tick")
            try:
                await asyncio.wait_for(self._wake.wait(), self.pause_s())
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

    def pause_s(self) -> float:
        """Seconds the scheduling loop waits for a wake() after a pass."""
        return self.options.poll_interval

    async def tick(self) -> None:
        """One pass of the scheduler (the loop calls it; tests may too)."""
        cur = self.db.current_hub()["eui"]
        if cur != self.hub_eui:
            await self._restart_server(cur)
        now = self.clock()
        self._persist_devices()
        self._drop_stale_transfers()
        for row in queue.expired(self.db, now):
            self._expired(row)
        for row in () if self.paused else queue.fill_slots(self.db, self.options.max_in_flight,
                                                           self.options.retry, now):
            self.unhold(row["eui"])
        for row in queue.in_slot(self.db):
            if row["state"] == "notifying":
                self.spawn(("notify", row["id"]), self._notify_loop(row["id"], row["eui"]))
        for row in queue.commands_due(self.db, now, self.options.activation_lead):
            if ("command", row["id"]) not in self._tasks \
                    and self.db.set_state(row["id"], "running", "command_sent",
                                          {"attempt": row["attempts"] + 1},
                                          attempts=row["attempts"] + 1,
                                          started=row["started"] or now):
                self.spawn(("command", row["id"]), self._command(self.db.request(row["id"])))
        for row in queue.queued_updates(self.db):
            self.hold(row["eui"])
        self._heartbeat()

    def spawn(self, key: tuple[str, int], coro) -> None:
        """Run coro as the hub's task `key` (one at a time per key; a duplicate is dropped);
        stop() cancels it."""
        if key in self._tasks:
            coro.close()
            return
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks[key] = task
        task.add_done_callback(lambda t: self._tasks.pop(key, None) if self._tasks.get(key)
                               is t else None)

    def _heartbeat(self, force: bool = False) -> None:
        now = self.clock()
        if force or now - self._last_heartbeat >= self.options.heartbeat_interval:
            self._last_heartbeat = now
            self.db.set_meta("serve", json.dumps({
                "pid": os.getpid(), "hub": self.hub_eui, "at": now, "stopped": False,
                "udp": "%s:%d" % self.udp_address if self.udp_address else None,
                "serial": self.serial_names, "max_in_flight": self.options.max_in_flight,
                "every": self.options.heartbeat_interval}))

    def _persist_devices(self) -> None:
        """Fold the counter journal and what the server heard into the devices table, then
        empty the journal (everything in it is now in the database)."""
        journal = self.counters.load() if self.counters is not None else {}
        changes = {eui: (counter, None) for eui, counter in journal.items()}
        if self.server is not None:
            for eui, key in self.server.device_counters().items():
                last_counter, last_seen = key
                if last_counter is not None and self._seen.get(eui) != key:
                    self._seen[eui] = key
                    changes[eui] = (max(last_counter, journal.get(eui, 0)), last_seen)
        if changes:
            with self.db.tx() as c:
                c.executemany("UPDATE devices SET last_counter = max(coalesce(last_counter, 0), "
                              "?), last_seen = coalesce(?, last_seen) WHERE eui = ?",
                              [(n, seen, eui_text(eui)) for eui, (n, seen) in changes.items()])
        if journal:
            self.counters.clear()

    def _drop_stale_transfers(self) -> None:
        """Forget transfers of images no pending request wants (e.g. superseded), so that
        the device's next block request for it is aborted."""
        for eui, t in self.server.all_transfers().items():
            row = self.policy.pending_update(eui)
            img = self.policy.served(row["image"]) if row is not None else None
            if img is not None and img.identity == t.image.identity:
                continue
            self.server.cancel_transfer(eui)
            self.unhold(eui_text(eui))

    def hold(self, eui: str) -> None:
        """Tell a device with a queued request to wait if it asks for blocks."""
        b = hlink.eui_from_str(eui)
        left = self.server.throttle_left(b) if self.server is not None else None
        if left is not None and left < self.options.hold_s / 2:
            self.server.throttle(b, self.options.hold_s)

    def unhold(self, eui: str) -> None:
        b = hlink.eui_from_str(eui)
        if self.server is not None and self.server.is_known(b):
            self.server.throttle(b, 0)

    def fail_attempt(self, request_id: int, reason: str,
                     outcome: str = "transfer_failed") -> str:
        """End a request's current attempt (retry after backoff, or its final outcome)."""
        row = self.db.request(request_id)
        result = queue.attempt_failed(self.db, request_id, reason, self.options.retry,
                                      self.clock(), outcome)
        task = self._tasks.pop(("notify", request_id), None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        if result == "retry" and row is not None and row["kind"] == "update":
            self.hold(row["eui"])
        self.wake()
        return result

    def _expired(self, row) -> None:
        r = self.options.retry
        if row["state"] == "notifying":
            self.fail_attempt(row["id"], "the device did not start the download within %g s "
                              "(Image Notify unanswered, no query)" % r.answer_timeout)
        elif row["state"] == "downloading":
            self.fail_attempt(row["id"], "no download progress for %g s" % r.stall_window)
        elif row["state"] == "activating":
            self.spawn(("readback", row["id"]), self._readback(row["id"]))

    # -- hub -> device work

    async def _notify_loop(self, request_id: int, eui: str) -> None:
        """Image Notify until the device queries (the request leaves 'notifying')."""
        b = hlink.eui_from_str(eui)
        pause = max(0.05, min(1.0, self.options.request_timeout))
        while not self._stopping:
            row = self.db.request(request_id)
            if row is None or row["state"] != "notifying":
                return
            try:
                answered = await self.server.notify(b, timeout=self.options.request_timeout,
                                                    retries=0)
            except ServerError:
                answered = False  # not heard from yet in this run (asleep, or not joined)
            if not answered:
                await asyncio.sleep(pause)
            else:
                await asyncio.sleep(self.options.request_timeout)

    async def _command(self, row) -> None:
        """Run an activate (SR 11.3) or read-version (SR 11.2) request once."""
        b = hlink.eui_from_str(row["eui"])
        o = self.options
        try:
            if row["kind"] == "read_version":
                recs = await self.server.read_attributes(
                    b, [zcl.ATTR_CURRENT_FILE_VERSION], timeout=o.request_timeout,
                    retries=o.request_retries)
                rec = recs[0] if recs else None
                if rec is not None and rec.status == zcl.SUCCESS:
                    with self.db.tx() as c:
                        c.execute("UPDATE devices SET running_version = ? WHERE eui = ?",
                                  (rec.value, row["eui"]))
                        self.db.finish(row["id"], "version_read", "CurrentFileVersion %s"
                                       % version_text(rec.value), rec.value)
                else:
                    self.db.finish(row["id"], "read_failed", "Read Attributes status %s" % (
                        zcl.status_name(rec.status) if rec is not None else "missing"))
            elif self.db.get_meta("gbcs.%d" % row["id"]):
                await self._gbcs(row, b)
            else:
                dev = self.db.one("SELECT manufacturer FROM devices WHERE eui = ?",
                                  (row["eui"],))
                at = row["activate_at"]
                code, version, _ = await self.server.activate(
                    b, bytes.fromhex(row["image_hash"]),
                    zigbee_time(at) if at is not None and at > self.clock() else 0,
                    row["id"], manufacturer=dev["manufacturer"] if dev else None,
                    timeout=o.request_timeout, retries=o.request_retries)
                self.policy.activate_result(row["eui"], row["id"], code, version)
        except ServerError as e:
            if not self._stopping:
                self.fail_attempt(row["id"], "the device did not answer: %s" % e,
                                  "device_unreachable")
        self.wake()

    async def _gbcs(self, row, b: bytes) -> None:
        """SR 11.3 as GBCS (the DCC's CS06, Supplier-signed and ACB-MAC'd): relayed to the
        device (0xF3), whose answer (0xF4) decides: a CS06 response Success or an accepted
        future-dated command waits for the Activation Alert, like Activate Image Success; a
        refusal finishes the request with the device's reason; a cancellation's answer is
        `_gbcs_cancelled`'s. The device's GBCS answer is kept (meta gbcs.resp.<id>) for the
        outcome the Comms Hub reports to the DCC."""
        from hanfw import activation, gbcs

        o = self.options
        dev = self.db.one("SELECT manufacturer FROM devices WHERE eui = ?", (row["eui"],))
        reason, resp = await self.server.gbcs(
            b, bytes.fromhex(self.db.get_meta("gbcs.%d" % row["id"]) or ""),
            manufacturer=dev["manufacturer"] if dev else None, timeout=o.request_timeout,
            retries=o.request_retries)
        self.db.set_meta("gbcs.resp.%d" % row["id"], resp.hex())
        try:
            m = gbcs.decode(resp) if resp else None
        except gbcs.GbcsError:
            m = None
        code = m.fields.get("response_code") if m is not None else None
        version = int.from_bytes(m.fields.get("firmware_version") or b"", "big") \
            if m is not None else 0
        cancel = self.db.get_meta("gbcs.cancel.%d" % row["id"])
        if cancel is not None:
            self._gbcs_cancelled(row, activation.reason_name(reason), json.loads(cancel))
            return
        if reason == 0 and (m is not None and m.kind == "cs06-accepted" or code == 0):
            self.policy.activate_result(row["eui"], row["id"], zcl.ACTIVATE_SUCCESS, version)
            return
        why = activation.reason_name(reason) or "response code %s" % code
        outcome = {1: "no_image_held", 2: "hash_mismatch"}.get(code, "activation_failed")
        self.db.finish(row["id"], outcome, "the device refused the GBCS CS06: %s" % why)

    def _gbcs_cancelled(self, row, why: str | None, cancel: dict) -> None:
        """The device's answer to a CS06 cancellation: it removed its pending future-dated
        activation (cancelled); it had none (no-pending), which is still a cancellation when
        the one this cancellation ended was still queued here, never sent (cancelled), else
        not_cancelled; any other refusal: not_cancelled with the device's reason."""
        ended = ", ".join("#%d" % i for i in cancel.get("ended") or ()) or "none here"
        if why is None:
            self.db.finish(row["id"], "cancelled", "the device removed its pending future-dated "
                           "activation (hub request %s)" % ended)
        elif why == "no-pending" and cancel.get("ended") and not cancel.get("at_device"):
            self.db.finish(row["id"], "cancelled", "the future-dated activation (hub request %s) "
                           "was still queued at the Comms Hub, never sent" % ended)
        else:
            self.db.finish(row["id"], "not_cancelled", "the device did not cancel: %s" % why)

    async def _readback(self, request_id: int) -> None:
        """No Activation Alert in time: read the version to learn what the device runs."""
        row = self.db.request(request_id)
        if row is None or row["state"] != "activating":
            return
        r = self.options.retry
        try:
            recs = await self.server.read_attributes(
                hlink.eui_from_str(row["eui"]), [zcl.ATTR_CURRENT_FILE_VERSION],
                timeout=self.options.request_timeout, retries=self.options.request_retries)
            rec = recs[0]
            if rec.status != zcl.SUCCESS:
                raise ServerError("Read Attributes status %s" % zcl.status_name(rec.status))
        except ServerError as e:
            checks = row["checks"] + 1
            if checks >= r.max_attempts:
                self.db.finish(request_id, "transfer_failed", "no Activation Alert, and the "
                               "device does not report its version (%s; %d tries)"
                               % (e, checks))
            else:
                self.db.update_request(request_id, checks=checks,
                                       deadline=self.clock() + r.backoff(checks))
                self.db.event("readback_retry", row["eui"], request_id, reason=str(e))
            self.wake()
            return
        v = rec.value
        target = row["target_version"]
        with self.db.tx() as c:
            c.execute("UPDATE devices SET running_version = ? WHERE eui = ?", (v, row["eui"]))
            if target is not None and v == target:
                self.db.finish(request_id, "activated", "no Activation Alert; the version read "
                               "back is the target %s" % version_text(v), v)
            else:
                self.db.finish(request_id, "rolled_back", "no Activation Alert; the device runs "
                               "%s, not the target %s" % (version_text(v),
                                                          version_text(target)), v)
        self.wake()

    # -- waiting and display

    async def wait_outcome(self, request_id: int, timeout: float = 60.0):
        """Wait (polling the database) until a request has its outcome; returns its row."""
        return await await_outcome(self.db, request_id, timeout)

    async def wait_idle(self, timeout: float = 60.0) -> None:
        """Wait until every request has its outcome."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.db.one("SELECT count(*) FROM requests WHERE outcome IS NULL")[0]:
            if loop.time() > deadline:
                raise HubError("requests still pending after %g s" % timeout, reason="timeout")
            await asyncio.sleep(0.05)

    def live_transfers(self) -> dict[str, dict]:
        """The server's view of transfers now (offset, size, rate, state) by device EUI."""
        out = {}
        if self.server is not None:
            for eui, t in self.server.all_transfers().items():
                out[eui_text(eui)] = {"offset": t.offset, "size": t.size, "rate": t.rate,
                                      "state": t.state}
        return out
