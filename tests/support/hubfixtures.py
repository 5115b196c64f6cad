"""Test support for the hub layer: an autonomous fake device and a registry/image builder.

`AgentDevice` is the fleet simulator's `SimDevice` (`hanota.fleet.device`: a `FakeDevice`
with an OTA client that runs by itself, as a board would): on Image Notify (or on its own poll
timer) it queries, downloads block by block (resuming from its own offset after any
interruption, without a new query if the hub vanished), checks the file it received (the
descriptor's hash against the payload), sends Upgrade End, then activates at the time the
Upgrade End Response says (or waits for an Activate Image whose hash matches the image it
holds), "reboots" (HELLO with the new version) and sends its Activation Alert. The tests' agent
adds UDP or a serial bus instead of the in-process HAN, keeps what it saw for asserts, GBCS
on the HAN (CS06, future-dated activation by the hub's clock) and behaviours: "ok",
"invalid" (Upgrade End INVALID_IMAGE),
"rollback" (the new image fails its health check: alert rolled_back=1), "no_alert" (it
activates but its alert is never sent), "activation_failure" (it answers every Activate
Image with ACTIVATION_FAILURE).
"""
from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from pathlib import Path

from hanfw import link as hlink
from hanfw import zcl
from hanota import images
from hanota.fleet.device import SimDevice
from hanota.hub import HubOptions, RetryPolicy
from hanota.hub import registry as reg
from hanota.hub.runner import HubRunner
from support.clientkit import State
from support.fakedevice import install_code

SUPPLIER = "SupplierA"
MFR = images.DEFAULT_MANUFACTURER


def eui(n: int) -> bytes:
    """Wire-order EUI-64 of test device n."""
    return bytes([n & 0xFF, n >> 8, 0x00, 0x00, 0x00, 0x5e, 0xa1, 0x70])


def eui_str(n: int) -> str:
    return hlink.eui_str(eui(n))


def fast_options(**kw) -> HubOptions:
    """Hub options with test pacing: everything in fractions of a second."""
    retry = dict(base=0.2, cap=1.0, max_attempts=4, answer_timeout=1.5, stall_window=3.0,
                 activation_timeout=2.0)
    retry.update(kw.pop("retry", {}))
    opts = dict(poll_interval=0.05, progress_interval=0.1, stall_timeout=1.5,
                request_timeout=0.3, request_retries=1, hold_s=1.0, heartbeat_interval=0.2,
                retry=RetryPolicy(**retry))
    opts.update(kw)
    return HubOptions(**opts)


class AgentDevice(SimDevice):
    retry_pause = 0.2  # the tests' pacing (the fleet's devices wait longer)
    keep_history = True  # tests assert on what the device saw

    def __init__(self, n: int, *, role: str = "ppmid", version: int = 1, hw: int = 0x0100,
                 behaviour: str = "ok", pace: float = 0.0, max_data: int = 64,
                 poll: float | None = None, give_up: float = 30.0, **kw):
        kw.setdefault("timeout", 0.4)
        kw.setdefault("retries", 3)
        kw.setdefault("manufacturer", MFR)
        super().__init__(eui(n), install_code(n), role, Counter(), version=version, hw=hw,
                         give_up=give_up, max_data=max_data, **kw)
        self.n = n
        self.behaviour = behaviour
        self.pace = pace
        self.poll = poll
        self.server_addr = None
        self.downloads = 0  # complete downloads that passed the device's own check
        self.activated_versions: list[int] = []
        self.alerts_sent: list[tuple] = []
        self.resume_offsets: list[int] = []  # offset at which each download (re)started
        self.upgrade_ends: list[tuple] = []
        self.join_status: int | None = None
        self.gbcs_answers: list[tuple] = []  # (refusal reason or None, GBCS answer)
        self._poller: asyncio.Task | None = None

    # -- lifetime

    async def start(self, server=None, *, join: bool = True) -> int | None:
        """Open UDP to server (or use the serial bus it was attached to), join, HELLO."""
        self.server_addr = server
        if server is not None:
            await self.open_udp(server)
        if join:
            self.join_status = await self.join(self.service)
            if self.join_status != hlink.JOIN_OK:
                return self.join_status
            await self.hello()
        if self.poll:
            self._poller = asyncio.get_running_loop().create_task(self._poll_loop())
            self._tasks.add(self._poller)
        return self.join_status

    async def rejoin(self, service: int | None = None) -> int:
        """Join again from scratch (after a Trust Centre Swap-Out)."""
        self.hub, self.hub_floor = None, None
        self.join_status = await self.join(self.service if service is None else service)
        if self.join_status == hlink.JOIN_OK:
            await self.hello()
        return self.join_status

    @property
    def bytes_received(self) -> int:
        return sum(self.block_sizes)

    @property
    def busy(self) -> bool:
        return self._update is not None and not self._update.done()

    # -- hooks on the fake's frame handling

    def _zcl(self, buf: bytes) -> None:
        fc, mfr, tsn, cmd, off = zcl.parse_header(buf)
        if cmd == zcl.CMD_ACTIVATE_IMAGE and mfr is not None \
                and self.behaviour == "activation_failure":
            a = zcl.parse_activate_image(buf, off)
            self.activations.append(a)
            self.send_zcl(zcl.FC_CLUSTER | zcl.FC_MANUFACTURER | zcl.FC_DISABLE_DEFAULT_RESPONSE,
                          tsn, zcl.CMD_ACTIVATE_IMAGE_RESPONSE,
                          zcl.pack_activate_image_response(zcl.ACTIVATE_FAILURE, self.version,
                                                           a.counter), mfr)
            return
        if cmd == zcl.CMD_GBCS and mfr is not None and self.gbcs_cfg is not None:
            self._gbcs(buf[off:], tsn, mfr)
            return
        super()._zcl(buf)  # Image Notify, Activate Image: the fleet's device's

    # GBCS on the HAN (hanfw/activation.py, the device's own check, run here on CPython):
    # gbcs_cfg is a hanfw.config.Config with a "gbcs" commissioning block
    gbcs_cfg = None
    gbcs_state: dict | None = None
    _fd_task: asyncio.Task | None = None

    def _gbcs(self, data: bytes, tsn: int, mfr: int) -> None:
        from hanfw import activation

        if self.gbcs_state is None:
            self.gbcs_state = State()  # hanfw.state.State in memory
        st = self.gbcs_state
        st.update(held={"version": self.held_version, "length": 0,
                        "hash": self.held_hash.hex()} if self.held_hash else None)
        reason, msg, action = activation.process(self.gbcs_cfg, st, _HeldBank(self),
                                                 bytes(data), self.version)
        self.gbcs_answers.append((reason, msg))
        self._gbcs_send(tsn, reason, msg, mfr)
        if action == "activate":
            self._spawn(self._activate(0.0, self.held_version))
        elif action in ("pending", "cancel") and self._fd_task is not None:
            self._fd_task.cancel()
            self._fd_task = None
        if action == "pending":
            self._fd_task = asyncio.get_running_loop().create_task(self._fd_wait(mfr))
            self._tasks.add(self._fd_task)

    def _gbcs_send(self, tsn: int, reason: str | None, msg, mfr: int) -> None:
        from hanfw import activation

        self.send_zcl(zcl.FC_CLUSTER | zcl.FC_MANUFACTURER | zcl.FC_DISABLE_DEFAULT_RESPONSE,
                      tsn, zcl.CMD_GBCS_RESPONSE,
                      bytes((activation.reason_code(reason),)) + (msg.encode() if msg else b""),
                      mfr)

    async def hub_time(self) -> int:
        """The hub's UTCTime (seconds since 2000-01-01), read from its Time cluster as the
        device's clock (hanfw/clock.py) does."""
        tsn = self._next_tsn()
        fut = asyncio.get_running_loop().create_future()
        self._pending[tsn] = fut
        try:
            self.send_raw(self.frame(hlink.KIND_DATA, zcl.pack_header(
                zcl.FC_GLOBAL, tsn, zcl.GLOBAL_READ_ATTRIBUTES, None)
                + zcl.pack_read_attributes([zcl.ATTR_TIME]), cluster=zcl.CLUSTER_TIME))
            _, recs = await asyncio.wait_for(fut, self.timeout * 5)
        finally:
            self._pending.pop(tsn, None)
        return recs[0].value

    async def _fd_wait(self, mfr: int) -> None:
        """A future-dated CS06 the device accepted: at its time by the hub's clock (read once,
        then ticks elapsed), alert 8F66 and activate, or 8F67 (hanfw.activation.due_alert)."""
        from hanfw import activation

        base = await self.persist(self.hub_time)
        t0 = time.monotonic()
        st = self.gbcs_state
        while True:
            p = st.get("fdact")
            if not p:
                return  # cancelled
            now = base + (time.monotonic() - t0)
            if now >= p["at"]:
                break
            await asyncio.sleep(min(0.2, p["at"] - now))
        st.update(held={"version": self.held_version, "length": 0,
                        "hash": self.held_hash.hex()} if self.held_hash else None)
        alert, go = activation.due_alert(self.gbcs_cfg, st, _HeldBank(self), self.version)
        reason = None if go else "activation-failure"
        self.gbcs_answers.append((reason, alert))
        self._gbcs_send(self._next_tsn(), reason, alert, mfr)
        self._fd_task = None
        if go:
            await self._activate(0.0, self.held_version)

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.poll)
            self.kick()

    # -- the OTA client: the fleet's device's, with these hooks

    async def _fetch(self, avail) -> None:
        self.resume_offsets.append(self.offset)
        self.target = (avail.manufacturer, avail.image_type, avail.file_version)
        await super()._fetch(avail)

    def _verdict(self, good: bool) -> int:
        status = zcl.INVALID_IMAGE if self.behaviour == "invalid" else super()._verdict(good)
        if status == zcl.SUCCESS:
            self.downloads += 1
        return status

    def _ended(self, status: int, cmd: int, rsp) -> None:
        self.upgrade_ends.append((status, cmd, rsp))

    def _boot(self, version: int, previous: int) -> tuple | None:
        self.image, self.offset = None, 0
        if self.behaviour == "rollback":  # the trial boot fails; the old image runs
            args = (previous, version, True, zcl.ALERT_HEALTH_CHECK_FAILED)
        else:
            args = super()._boot(version, previous)
            self.activated_versions.append(version)
        if self.behaviour == "no_alert":
            return None
        self.alerts_sent.append(args)
        return args


class _HeldBank:
    """The fake's bank as hanfw.activation reads it: the SHA-256 of the image it holds."""

    def __init__(self, dev: AgentDevice):
        self.dev = dev

    def target_sha256(self, length):
        return self.dev.held_hash


def build_image(dir: Path, key, role: str, version: int, size: int = 3000, **kw) -> Path:
    """A signed OTA file for role at version with a random payload of size bytes."""
    payload = random.Random(hash((role, version, size))).randbytes(size)
    path = Path(dir) / ("%s-%08x-%d-%d.ota" % (role, version, size, len(kw)))
    path.write_bytes(images.build_image(payload, key=key, version=version, role=role, **kw))
    return path


def register(db, n: int, role: str = "ppmid", premises: str = "MPAN-1",
             suppliers: tuple[str, ...] = (SUPPLIER,), **kw) -> str:
    """Register test device n at premises with its suppliers; returns its EUI text."""
    if suppliers:
        reg.set_suppliers(db, premises, list(suppliers))
    reg.add_device(db, eui(n), role, install_code(n), premises, **kw)
    return eui_str(n)


def wait_outcome(db, request_id: int, timeout: float = 90.0):
    """Request `request_id`'s row once it has an outcome (polling the hub's database from
    another thread); fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while db.request(request_id)["outcome"] is None:
        assert time.monotonic() < deadline, "no outcome for request #%d" % request_id
        time.sleep(0.1)
    return db.request(request_id)


# A `Hub` on its own event loop thread, for tests whose other side is synchronous (virtual
# boards driven through their console): the package's runner, under the tests' old name.
HubInThread = HubRunner
