"""The WAN between the DCC and a Comms Hub: the message protocol and both of its ends.

The Comms Hub dials out (as a real CH does over its cellular or mesh WAN): a websocket to the
DCC's HTTP server at `/wan/<hub EUI>` (16 upper-case hex digits, most significant first).
Every message is one JSON object in one text frame.

DCC -> CH: `{"id": n, "type": T, "request": "<RequestID text>", "device": "<EUI hex>", ...}`
with T one of `DCC_TYPES` and per type: update_firmware: `image_b64`, `kind` ("11.1" |
"11.4"), `at` (ISO-8601 UTC or null); activate: `hash` (64 hex digits), `at`;
cancel_activation: (`hash`); read_version; prenotify: `install_code`, `role`, optional
`manufacturer`, `image_type`, `hw_version`, `premises`, `ota_supported`; join: `role`,
`install_code`; unjoin; set_suppliers: `suppliers` (entity IDs as hex), optional `premises`;
gbcs: `gbcs_b64` (a Supplier-signed, ACB-MAC'd CS06, SR 11.3 CV 5: relayed on the HAN in ZCL
0xF3; the device's GBCS answer is the outcome's `gbcs_b64`), `cancel`.

CH -> DCC: `{"ack": n}` once the CH has stored DCC message n durably (in its database, before
acting on it); `{"id": m, "type": "outcome", "request": ..., "device": ..., "outcome": O,
"detail": {...}}` with O one of `hanota.hub.db.OUTCOMES` for the hub's requests (SR 11.1,
11.3, 11.4, 11.2), or `CH_OUTCOMES` for what the CH does at once (prenotified, joined,
join_failed, unjoined, unjoin_failed, cancelled, not_cancelled, applied, refused); a firmware
outcome GBCS has a message for also carries `gbcs_message_code` and `gbcs_b64` (the unsigned
GBCS APDU: CCS08, CS06, CS08 or CS09, see `gbcs.py`), for the response's GBCSPayload; and
`{"id": m, "type": "alert", "alert": A, "device": ..., "request": ... | null, "detail":
{...}}` (A: "activation" for a device's Activation Alert, "trust_centre_swap_out", "gbcs"
for a GBCS alert the device sent, 8F66/8F67 when a future-dated CS06 fell due, with its
bytes as `gbcs_b64` and the SR 11.3 request it answers). The DCC
acknowledges each with `{"ack": m}` after it has stored it.

The first frame on a connection is the CH's `{"hello": "<hub EUI hex>", "replaces":
[EUIs of the hub identities before a Trust Centre Swap-Out]}`.

Authentication (optional; `hanota dcc serve --wan-auth`): the DCC keeps a secret and each
Comms Hub presents `Authorization: Bearer <token>` with token = HMAC-SHA256(secret,
"hanota-wan:" + hub EUI hex), first 32 hex digits (`wan_token`; `hanota dcc wan-token --hub
EUI` prints it for the installer). A token opens only its own hub's path, so a leaked one
cannot read another hub's messages (images, install codes). A hello that says it replaces a
hub must then prove it held that hub's token too: `"proofs": {old EUI: HMAC-SHA256(old
token, "hanota-wan-replace:" + new EUI), first 32 hex digits}` (the CH keeps each token it
used in its database for this); an unproven replacement is refused, so no token can pull
another hub's premises over. Without `--wan-auth` any client may dial any hub's path and
claim any replacement: fine on loopback, not on a network.

Both ends are idempotent on ids: an id received again is acknowledged and not acted on again
(the DCC's store records inbound ids per hub; the CH's `ch_wan_in` table has the id as its
key). Either side resends everything not acknowledged when a connection (re)opens, so a lost
acknowledgement costs a duplicate, never a lost message. The CH reconnects with exponential
backoff (0.2 s doubling to 5 s).
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from ..errors import HanotaError

log = logging.getLogger(__name__)

DCC_TYPES = ("update_firmware", "activate", "cancel_activation", "read_version", "prenotify",
             "join", "unjoin", "set_suppliers", "gbcs")
CH_TYPES = ("outcome", "alert")
CH_OUTCOMES = ("prenotified", "joined", "join_failed", "unjoined", "unjoin_failed",
               "cancelled", "not_cancelled", "applied", "refused")
MAX_MESSAGE = 64 << 20  # an update_firmware carries the whole image, base64
HEARTBEAT = 10.0  # websocket pings, seconds
SWITCH_DRAIN = 5.0  # seconds the old identity waits for its last messages' acks
RESWEEP = 120.0  # seconds between a DCC connection's own looks at its hub's outbox
GAP_WAIT = 120.0  # seconds the DCC's watcher keeps looking for an id missing below the top
MAX_GAPS = 1000  # ids the watcher keeps looking for at most
WAKE_EVENTS = ("outcome", "alert", "swap_out", "gbcs_alert")  # hub events collect() reports


class WanError(HanotaError):
    """A WAN message is malformed or names something the receiving end cannot act on."""

    reason = "wan"


def eui_hex(value: str | bytes) -> str:
    """An EUI-64 as the WAN writes it: 16 upper-case hex digits, most significant first
    (bytes are taken most significant first, as DUIS carries them)."""
    if isinstance(value, (bytes, bytearray)):
        if len(value) != 8:
            raise WanError("an EUI-64 is 8 bytes, not %d" % len(value), reason="bad-eui")
        return bytes(value).hex().upper()
    t = str(value).strip().replace(":", "").replace("-", "").upper()
    if len(t) != 16 or any(c not in "0123456789ABCDEF" for c in t):
        raise WanError("EUI-64 %r: 16 hex digits" % (value,), reason="bad-eui")
    return t


def wan_token(secret: bytes, hub: str | bytes) -> str:
    """The bearer token of one Comms Hub under the DCC's WAN secret."""
    mac = hmac.new(bytes(secret), b"hanota-wan:" + eui_hex(hub).encode(), hashlib.sha256)
    return mac.hexdigest()[:32]


def replace_proof(old_token: str, new_hub: str | bytes) -> str:
    """What a hub holding `old_token` says to show it replaces that hub (see above)."""
    mac = hmac.new(old_token.encode(), b"hanota-wan-replace:" + eui_hex(new_hub).encode(),
                   hashlib.sha256)
    return mac.hexdigest()[:32]


def encode(msg: dict) -> str:
    return json.dumps(msg, sort_keys=True, separators=(",", ":"))


def decode(text: str | bytes) -> dict:
    """One WAN frame as a dict; WanError naming what is wrong."""
    try:
        msg = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise WanError("a WAN frame is not JSON: %s" % e, reason="bad-wan-message") from None
    if not isinstance(msg, dict):
        raise WanError("a WAN frame is a JSON object, not %s" % type(msg).__name__,
                       reason="bad-wan-message")
    if "ack" in msg and not _is_id(msg["ack"]):
        raise WanError("ack %r is not a message id" % (msg["ack"],), reason="bad-wan-message")
    if "id" in msg and not _is_id(msg["id"]):
        raise WanError("id %r is not a message id" % (msg["id"],), reason="bad-wan-message")
    return msg


def _is_id(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


# ==================================================================== the DCC's end

class WanEndpoint:
    """The DCC's end: one websocket per Comms Hub, over the DCC service (`Dcc`: its
    `wan_outbox`, `wan_acked`, `wan_received`, all keyed by the hub's EUI as 8 bytes).

    `handle` is the aiohttp handler of `/wan/{eui}`. `notify(hub)` (or `notify()` for all)
    makes the connections look for new outbox messages now (after a submission). Messages
    queued by another process (another worker, `hanota dcc submit`) are found by ONE watcher
    per endpoint: every `poll` seconds a single query for the messages with ids above the
    highest it has seen (and for ids it found missing below that, which a transaction that
    took its id earlier may still commit: they are looked for again for `gap_wait` seconds),
    which wakes only the connections of hubs with something new. A connection's sender
    otherwise sleeps on its event, looking at its hub's outbox by itself only every `resweep`
    seconds (belt and braces). A new connection sends every unacknowledged message at once.
    `heartbeat`: seconds between the websocket pings that find dead connections (None or 0:
    none; a hub's own pings keep its connection checked too)."""

    def __init__(self, dcc: Any, *, poll: float = 0.5, secret: bytes | None = None,
                 heartbeat: float | None = HEARTBEAT, resweep: float = RESWEEP,
                 gap_wait: float = GAP_WAIT):
        self.dcc = dcc
        self.poll = poll
        self.secret = secret  # None: no authentication of the hubs
        self.heartbeat = heartbeat or None
        self.resweep = max(resweep, poll)
        self.gap_wait = gap_wait
        self._wake: dict[str, asyncio.Event] = {}
        self._conns: dict[str, Any] = {}
        self._sent: dict[str, set[int]] = {}  # per connected hub: ids sent, not acked
        self._rewind: dict[str, int] = {}  # hub -> look from this id up (an id below the top)
        self.connected: set[str] = set()
        self.on_received: Any = None  # called after a CH message is taken (push responses)
        self._replacements: set[tuple[str, str]] = set()  # swap-outs already reported
        store = getattr(dcc, "store", None)
        self._new = getattr(store, "wan_new", None)  # None: each connection polls (old way)
        self._seen: int | None = None  # the watcher's watermark (None: not started)
        self._gaps: dict[int, float] = {}  # ids missing below the watermark -> when found
        self._watcher: asyncio.Task | None = None
        self.watch_passes = 0  # how many queries the watcher made (tests, benchmarks)

    def notify(self, hub: str | None = None) -> None:
        for h, ev in list(self._wake.items()):
            if hub is None or h == hub:
                ev.set()

    async def close(self) -> None:
        """Stop the watcher (the server's shutdown closes the connections)."""
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
            self._watcher = None

    # -- the watcher: which connected hubs have new messages, one query per poll

    def _top(self) -> int:
        return int(self.dcc.store.one("SELECT coalesce(max(id), 0) FROM wan_out")[0])

    def _start_watcher(self) -> None:
        """Start the watcher with a hub's first connection. Its watermark is read before
        that connection's sender reads the outbox, so nothing falls between the two."""
        if self._new is None or (self._watcher is not None and not self._watcher.done()):
            return
        if self._seen is None:
            try:
                self._seen = self._top()
            except HanotaError as e:  # the watcher's first pass tries again
                log.warning("WAN watcher: %s", e)
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while self._conns:
            try:
                self.watch_once()
            except HanotaError as e:  # the database away: the next pass tries again
                log.warning("WAN watcher: %s", e)
            except Exception:  # a bug must not stop the deliveries; it is logged
                log.exception("WAN watcher")
            await asyncio.sleep(self.poll)
        self._watcher = None

    def watch_once(self, now: float | None = None) -> set[str]:
        """One pass of the watcher: wake the connected hubs with messages above what was
        sent on their connection; the hubs woken."""
        now = asyncio.get_running_loop().time() if now is None else now
        if self._seen is None:
            self._seen = self._top()
            return set()
        rows = self._new(self._seen, self._gaps.keys())
        self.watch_passes += 1
        woken: set[str] = set()
        ids = set()
        for mid, hub, acked in rows:
            ids.add(mid)
            self._gaps.pop(mid, None)
            sent = self._sent.get(hub)
            if acked or sent is None or mid in sent:
                continue  # done, no connection here, or already on its way
            # the sender looks from below this id (it may be below what it sent already)
            self._rewind[hub] = min(self._rewind.get(hub, mid), mid)
            woken.add(hub)
            self._wake[hub].set()
        top = max(ids, default=self._seen)
        if top > self._seen:  # the ids skipped below the new top (the last MAX_GAPS only)
            for mid in range(max(self._seen + 1, top - len(ids) - MAX_GAPS), top):
                if mid not in ids:
                    self._gaps[mid] = now
            self._seen = top
        for mid, since in list(self._gaps.items()):
            if now - since > self.gap_wait:  # rolled back, never to come
                del self._gaps[mid]
        if len(self._gaps) > MAX_GAPS:  # the oldest give way; `resweep` still finds them
            for mid in sorted(self._gaps)[:len(self._gaps) - MAX_GAPS]:
                del self._gaps[mid]
        return woken

    async def handle(self, request):
        from aiohttp import WSMsgType, web

        try:
            hub = eui_hex(request.match_info["eui"])
        except WanError as e:
            raise web.HTTPBadRequest(text=str(e)) from None
        if self.secret is not None:
            got = request.headers.get("Authorization", "")
            want = "Bearer " + wan_token(self.secret, hub)
            if not hmac.compare_digest(got.encode(), want.encode()):
                log.warning("Comms Hub %s: refused, %s", hub, "wrong token" if got
                            else "no token")
                raise web.HTTPUnauthorized(text="the WAN path of hub %s needs its token "
                                           "(hanota dcc wan-token --hub %s)" % (hub, hub))
        ws = web.WebSocketResponse(heartbeat=self.heartbeat, max_msg_size=MAX_MESSAGE)
        await ws.prepare(request)
        old = self._conns.get(hub)
        if old is not None:  # the hub reconnected: its old connection is dead
            await old.close(message=b"replaced by a new connection")
        self._conns[hub] = ws
        wake = self._wake[hub] = asyncio.Event()
        key = bytes.fromhex(hub)
        self.connected.add(hub)
        self._sent[hub] = set()
        self._rewind.pop(hub, None)
        self._start_watcher()
        log.info("Comms Hub %s connected", hub)
        sender = asyncio.get_running_loop().create_task(self._send(ws, hub, key, wake))
        try:
            async for m in ws:
                if m.type != WSMsgType.TEXT:
                    continue
                try:
                    msg = decode(m.data)
                except WanError as e:
                    log.warning("Comms Hub %s: %s", hub, e)
                    continue
                if "hello" in msg:
                    self._hello(hub, msg)
                elif "ack" in msg:
                    self.dcc.wan_acked(key, msg["ack"])
                    if self._conns.get(hub) is ws:
                        self._sent[hub].discard(msg["ack"])
                elif "id" in msg:
                    try:
                        self.dcc.wan_received(key, msg)
                    except HanotaError as e:
                        if getattr(e, "reason", "") == "bad-wan-message":
                            # it can never be taken: acknowledged so that it is not resent
                            # forever, and said loudly
                            log.error("Comms Hub %s message %s dropped: %s", hub, msg["id"], e)
                        else:
                            # not stored (the database): no ack; the connection is closed so
                            # that the CH reconnects and sends it again
                            log.error("Comms Hub %s message %s not taken: %s", hub,
                                      msg["id"], e)
                            await ws.close()
                            break
                    await ws.send_str(encode({"ack": msg["id"]}))
                    if self.on_received is not None:
                        self.on_received()
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            if self._conns.get(hub) is ws:
                del self._conns[hub]
                self._wake.pop(hub, None)
                self._sent.pop(hub, None)
                self._rewind.pop(hub, None)
                self.connected.discard(hub)
            log.info("Comms Hub %s disconnected", hub)
        return ws

    def _hello(self, hub: str, msg: dict) -> None:
        replaces = [h for h in (msg.get("replaces") or []) if isinstance(h, str)]
        hook = getattr(self.dcc, "wan_hub_replaced", None)
        proofs = msg.get("proofs") if isinstance(msg.get("proofs"), dict) else {}
        for old in replaces:
            if (old, hub) in self._replacements:
                continue
            if self.secret is not None:
                try:
                    want = replace_proof(wan_token(self.secret, old), hub)
                except WanError:
                    continue
                if not hmac.compare_digest(str(proofs.get(old, "")).encode(), want.encode()):
                    log.warning("Comms Hub %s says it replaces %s without proof of that hub's "
                                "token: refused", hub, old)
                    continue
            if hook is not None:
                try:
                    hook(bytes.fromhex(eui_hex(old)), bytes.fromhex(hub))
                except (HanotaError, ValueError) as e:  # tried again at its next hello
                    log.error("Comms Hub %s replacing %s: %s", hub, old, e)
                    continue
                self._replacements.add((old, hub))
            else:
                self._replacements.add((old, hub))
                log.warning("Comms Hub %s replaces %s (Trust Centre Swap-Out); this DCC does "
                            "not move registrations by itself", hub, old)

    async def _send(self, ws, hub: str, key: bytes, wake: asyncio.Event) -> None:
        sent = 0  # on a new connection every unacknowledged message goes again
        # woken by notify() or the watcher; without a watcher it looks every poll
        idle = self.poll if self._new is None else self.resweep
        ids = self._sent.get(hub, set())  # sent on this connection, not acknowledged
        swept = False  # a pass on its own: the whole outbox (what is not on its way yet)
        try:
            while not ws.closed:
                wake.clear()
                after = 0 if swept else sent
                if self._conns.get(hub) is ws and hub in self._rewind:
                    after = min(after, self._rewind.pop(hub) - 1)
                for msg in self.dcc.wan_outbox(key, after=after):
                    mid = int(msg["id"])
                    if mid in ids:
                        continue
                    ids.add(mid)
                    await ws.send_str(encode(msg))
                    sent = max(sent, mid)
                try:
                    await asyncio.wait_for(wake.wait(), idle)
                    swept = False
                except asyncio.TimeoutError:
                    swept = self._new is not None
        except (ConnectionError, RuntimeError) as e:  # closing under us
            log.info("Comms Hub %s: sending stopped: %s", hub, e)


# ==================================================================== the Comms Hub's end

_CH_SCHEMA = """
CREATE TABLE IF NOT EXISTS ch_wan_in (
    id INTEGER PRIMARY KEY,             -- the DCC's message id
    body TEXT NOT NULL,
    received REAL NOT NULL,
    done REAL,
    result TEXT
);
CREATE TABLE IF NOT EXISTS ch_wan_requests (
    hub_request INTEGER PRIMARY KEY REFERENCES requests (id),
    dcc_request TEXT NOT NULL,
    reported REAL
);
CREATE TABLE IF NOT EXISTS ch_wan_out (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    body TEXT NOT NULL,
    created REAL NOT NULL,
    acked REAL
);
"""


class ChStore:
    """The Comms Hub's WAN records, in the hub's own database (so that what it acts on and
    what it reports commit together): messages received (stored before acknowledged), the
    DCC request behind each hub request, and the outbox of outcomes and alerts."""

    def __init__(self, db):
        self.db = db
        self.on_queue: Any = None  # called when an outbox message is queued
        with db.tx() as c:
            for stmt in _CH_SCHEMA.split(";"):
                if stmt.strip():
                    c.execute(stmt)

    def store_in(self, msg: dict) -> bool:
        """Keep a DCC message; False if its id was received before."""
        with self.db.tx() as c:
            return c.execute("INSERT OR IGNORE INTO ch_wan_in (id, body, received) "
                             "VALUES (?, ?, ?)", (msg["id"], encode(msg), self.db.now())
                             ).rowcount == 1

    def pending_in(self) -> list[dict]:
        return [json.loads(r[0]) for r in self.db.all(
            "SELECT body FROM ch_wan_in WHERE done IS NULL ORDER BY id")]

    def queue(self, msg: dict) -> int:
        """Append a CH -> DCC message (inside the caller's transaction, if any)."""
        with self.db.tx() as c:
            cur = c.execute("INSERT INTO ch_wan_out (body, created) VALUES ('{}', ?)",
                            (self.db.now(),))
            mid = int(cur.lastrowid)
            body = dict(msg, id=mid)
            c.execute("UPDATE ch_wan_out SET body = ? WHERE id = ?", (encode(body), mid))
        if self.on_queue is not None:
            self.on_queue()
        return mid

    def outbox(self, after: int = 0) -> list[dict]:
        return [json.loads(r[0]) for r in self.db.all(
            "SELECT body FROM ch_wan_out WHERE acked IS NULL AND id > ? ORDER BY id", (after,))]

    def acked(self, mid: int) -> None:
        with self.db.tx() as c:
            c.execute("UPDATE ch_wan_out SET acked = ? WHERE id = ? AND acked IS NULL",
                      (self.db.now(), mid))

    def last_in(self) -> int:
        return int(self.db.one("SELECT coalesce(max(id), 0) FROM ch_wan_in")[0])


def wan_state(db) -> dict[str, Any] | None:
    """What a Comms Hub's database says of its WAN (`hanota hub show`): None if it never had
    one; else the last DCC message id taken, how many are not applied yet, and how many of
    its own outcomes and alerts the DCC has not acknowledged."""
    if db.one("SELECT 1 FROM sqlite_master WHERE name = 'ch_wan_in'") is None:
        return None
    return {"last_dcc_message": int(db.one("SELECT coalesce(max(id), 0) FROM ch_wan_in")[0]),
            "not_applied": int(db.one("SELECT count(*) FROM ch_wan_in WHERE done IS NULL")[0]),
            "unacknowledged": int(db.one("SELECT count(*) FROM ch_wan_out "
                                         "WHERE acked IS NULL")[0]),
            "reported": int(db.one("SELECT count(*) FROM ch_wan_out")[0])}


class CommsHubWan:
    """The Comms Hub's end over a running `hanota.hub.Hub` (on the hub's event loop):

    - `run()` connects to `dcc_url` + `/wan/<hub EUI>`, stores each DCC message then
      acknowledges it, sends its outbox, and reconnects with backoff when the link drops or
      the hub's identity changes (a Trust Centre Swap-Out);
    - `work()` applies stored DCC messages to the hub, in id order, each in one transaction
      with its bookkeeping (`apply`), and turns the hub's outcomes and activation alerts into
      outbox messages (`collect`). It runs whether or not the WAN is up.

    Both run when something wakes them: a DCC message stored, an outcome or alert the hub
    records (`WAKE_EVENTS`, by the hub database's listeners), a message queued in the
    outbox; and otherwise every `quiet` seconds (None: every `poll`, the interactive hub's
    pace; the fleet simulator gives a long one), which also notices what another process
    did to the hub's database (`hanota hub swap-out`). `heartbeat`: seconds between the
    websocket pings that find a dead connection (None or 0: none).
    """

    def __init__(self, hub, dcc_url: str, *, premises: str | None = None,
                 poll: float = 0.2, backoff: tuple[float, float] = (0.2, 5.0),
                 token: str | None = None, quiet: float | None = None,
                 heartbeat: float | None = HEARTBEAT):
        if not dcc_url.startswith(("http://", "https://")):
            raise WanError("the DCC's URL %r: give http://HOST:PORT (hanota dcc serve's "
                           "address)" % dcc_url, reason="usage")
        self.hub = hub
        self.url = dcc_url.rstrip("/")
        self.premises = premises
        self.token = token
        self.poll = poll
        self.quiet = quiet
        self.heartbeat = heartbeat
        self.backoff = backoff
        self.store: ChStore | None = None
        self.connected = asyncio.Event()
        self.connections = 0
        self._wake = asyncio.Event()
        self._out = asyncio.Event()  # an outbox message was queued
        self._tasks: list[asyncio.Task] = []
        self._stopping = False

    # -- lifetime

    async def start(self) -> None:
        """Start after the hub has started (its database is open)."""
        self.store = ChStore(self.hub.db)
        self.store.on_queue = self._out.set
        self.hub.db.listeners.append(self._on_event)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self.run()), loop.create_task(self.work())]

    async def stop(self) -> None:
        self._stopping = True
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        try:
            self.hub.db.listeners.remove(self._on_event)
        except (AttributeError, ValueError):
            pass

    def wake(self) -> None:
        self._wake.set()

    def _on_event(self, ev: dict) -> None:
        """The hub recorded an event: the ones `collect()` reports wake the work loop."""
        if ev.get("kind") in WAKE_EVENTS:
            self._wake.set()

    def _idle(self) -> float:
        """Seconds a loop waits when nothing wakes it."""
        return self.poll if self.quiet is None else max(self.quiet, self.poll)

    # -- the connection

    def _identity(self) -> tuple[str, list[str]]:
        rows = self.hub.db.all("SELECT eui, retired FROM hubs ORDER BY id")
        cur = [eui_hex(r[0]) for r in rows if r[1] is None][0]
        return cur, [eui_hex(r[0]) for r in rows if r[1] is not None]

    async def run(self) -> None:
        import aiohttp

        delay = self.backoff[0]
        refused = None
        async with aiohttp.ClientSession() as session:
            while not self._stopping:
                hub, previous = self._identity()
                try:
                    headers = {"Authorization": "Bearer " + self.token} if self.token else {}
                    async with session.ws_connect("%s/wan/%s" % (self.url, hub),
                                                  heartbeat=self.heartbeat or None,
                                                  headers=headers,
                                                  max_msg_size=MAX_MESSAGE) as ws:
                        delay = self.backoff[0]
                        self.connections += 1
                        self.connected.set()
                        log.info("WAN up: %s/wan/%s", self.url, hub)
                        await ws.send_str(encode(self._hello(hub, previous)))
                        await self._session(ws, hub)
                except aiohttp.WSServerHandshakeError as e:
                    if e.status == 401 and refused != hub:  # said once per identity
                        refused = hub
                        log.warning("the DCC at %s refuses hub %s's WAN token (%s): give "
                                    "--wan-token from hanota dcc wan-token --hub %s (a new "
                                    "hub after a swap-out needs its own)", self.url, hub,
                                    "none given" if not self.token else "wrong", hub)
                    else:
                        log.info("WAN to %s: %s", self.url, e)
                except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
                    # a drop after a working connection is worth a warning; retries are not
                    (log.warning if self.connected.is_set() else log.info)(
                        "WAN to %s: %s; reconnecting", self.url, e)
                except HanotaError as e:  # the hub database, busy or failing: try again
                    log.error("WAN to %s: %s", self.url, e)
                except Exception:  # a bug must not end the WAN for good; it is logged
                    log.exception("WAN to %s", self.url)
                finally:
                    self.connected.clear()
                if not self._stopping:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.backoff[1])

    def _hello(self, hub: str, previous: list[str]) -> dict:
        """The first frame: who this hub is and which it replaces, with the proofs it can
        give (its token is kept per identity so that the next identity can prove it)."""
        hello: dict[str, Any] = {"hello": hub, "replaces": previous}
        if self.token:
            self.hub.db.set_meta("wan.token." + hub, self.token)
            proofs = {}
            for old in previous:
                t = self.hub.db.get_meta("wan.token." + old)
                if t:
                    proofs[old] = replace_proof(t, hub)
            hello["proofs"] = proofs
        return hello

    async def _session(self, ws, hub: str) -> None:
        from aiohttp import WSMsgType

        sender = asyncio.get_running_loop().create_task(self._send(ws, hub))
        try:
            async for m in ws:
                if m.type != WSMsgType.TEXT:
                    continue
                try:
                    msg = decode(m.data)
                except WanError as e:
                    log.warning("DCC: %s", e)
                    continue
                if "ack" in msg:
                    self.store.acked(msg["ack"])
                elif "id" in msg:
                    try:
                        self.store.store_in(msg)
                    except HanotaError as e:
                        log.error("DCC message %s not stored: %s", msg["id"], e)
                        await ws.close()  # unacknowledged: the DCC sends it again
                        return
                    await ws.send_str(encode({"ack": msg["id"]}))
                    self.wake()
                if sender.done():
                    break
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)

    async def _send(self, ws, hub: str) -> None:
        sent = 0
        while not ws.closed:
            # A Trust Centre Swap-Out: what the old hub has to say (the swap-out alert, the
            # requests it ended) goes out on its own connection first, then the hub
            # reconnects under its new identity.
            switching = self._identity()[0] != hub
            if switching:
                self.collect()
            for msg in self.store.outbox(after=sent):
                await ws.send_str(encode(msg))
                sent = max(sent, msg["id"])
            if switching:
                end = asyncio.get_running_loop().time() + SWITCH_DRAIN
                while self.store.outbox() and not ws.closed \
                        and asyncio.get_running_loop().time() < end:
                    await asyncio.sleep(self.poll)
                await ws.close()
                return
            # woken by a queued message (collect, an immediate outcome); else a quiet pass
            try:
                await asyncio.wait_for(self._out.wait(), self._idle())
            except asyncio.TimeoutError:
                pass
            self._out.clear()

    # -- acting on the DCC's messages

    async def work(self) -> None:
        while not self._stopping:
            try:
                self.step()
            except Exception:  # a bug must not stop the WAN; it is logged
                log.exception("WAN work")
            try:
                await asyncio.wait_for(self._wake.wait(), self._idle())
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

    def step(self) -> None:
        """Apply every stored DCC message not yet done, then collect outcomes and alerts."""
        for msg in self.store.pending_in():
            self.apply(msg)
        self.collect()

    def apply(self, msg: dict) -> None:
        """Act on one DCC message, exactly once: the action, its record and any immediate
        outcome commit together. A refusal (bad message, a rule of the hub) is an outcome."""
        from ..hub.db import HubError

        db = self.hub.db
        expires = msg.get("expires")
        if isinstance(expires, (int, float)) and db.now() > expires:
            # the DCC has given it its outcome (no_response) and retries it as a new request:
            # carried out now, the device would act on both
            late = db.now() - expires
            log.warning("DCC message %s (%s, request %s) came %.0f s after its deadline: not "
                        "carried out", msg.get("id"), msg.get("type"), msg.get("request"), late)
            with db.tx() as c:
                self._immediate(msg, "expired", reason="reached the Comms Hub %.0f s after "
                                "its response deadline; not carried out" % late)
                c.execute("UPDATE ch_wan_in SET done = ?, result = ? WHERE id = ?",
                          (db.now(), "expired", msg["id"]))
            self.hub.wake()
            return
        try:
            with db.tx() as c:
                result = _Actions(self, msg).run()
                c.execute("UPDATE ch_wan_in SET done = ?, result = ? WHERE id = ?",
                          (db.now(), result, msg["id"]))
        except (HanotaError, ValueError, KeyError, TypeError) as e:
            if isinstance(e, HubError) and e.reason == "db":
                raise  # the database itself: try again on the next pass
            why = str(e) if isinstance(e, HanotaError) else "malformed %s message: %r" % (
                msg.get("type"), e)
            with db.tx() as c:
                self._immediate(msg, _FAILED.get(msg.get("type"), "refused"), reason=why)
                c.execute("UPDATE ch_wan_in SET done = ?, result = ? WHERE id = ?",
                          (db.now(), "refused", msg["id"]))
        self.hub.wake()

    def _immediate(self, msg: dict, outcome: str, **detail: Any) -> None:
        self.store.queue({"type": "outcome", "request": msg.get("request"),
                          "device": msg.get("device"), "outcome": outcome,
                          "detail": detail})

    def collect(self) -> None:
        """Outcomes of the hub's requests that came from the DCC, and activation alerts, into
        the outbox (each reported once: marked in the same transaction)."""
        db = self.hub.db
        from ..hub.db import version_text

        rows = db.all("SELECT w.dcc_request, r.* FROM ch_wan_requests w JOIN requests r "
                      "ON r.id = w.hub_request WHERE w.reported IS NULL "
                      "AND r.outcome IS NOT NULL ORDER BY r.finished, r.id")
        last = int(db.get_meta("wan.events", "0") or 0)
        events = db.all("SELECT e.*, w.dcc_request FROM events e LEFT JOIN ch_wan_requests w "
                        "ON w.hub_request = e.request_id WHERE e.id > ? "
                        "AND e.kind IN ('alert', 'swap_out', 'gbcs_alert') ORDER BY e.id",
                        (last,))
        top = db.one("SELECT coalesce(max(id), 0) FROM events")[0]
        if not rows and top == last:
            return
        with db.tx() as c:
            for r in rows:
                detail = {"reason": r["reason"], "sr": r["sr"], "hub_request": r["id"]}
                if r["result"] is not None:
                    detail["version"] = "%08X" % r["result"]
                    detail["version_text"] = version_text(r["result"])
                msg = {"type": "outcome", "request": r["dcc_request"],
                       "device": eui_hex(r["eui"]), "outcome": r["outcome"], "detail": detail}
                g = self._gbcs(r)
                resp = db.get_meta("gbcs.resp.%d" % r["id"])
                if resp:  # the device's own GBCS answer to a relayed CS06
                    g = (0x0012, bytes.fromhex(resp))
                if g is not None:
                    msg["gbcs_message_code"] = "%04X" % g[0]
                    msg["gbcs_b64"] = base64.b64encode(g[1]).decode("ascii")
                self.store.queue(msg)
                c.execute("UPDATE ch_wan_requests SET reported = ? WHERE hub_request = ?",
                          (db.now(), r["id"]))
            for e in events:
                d = json.loads(e["detail"])
                if e["kind"] == "alert":
                    self.store.queue({"type": "alert", "alert": "activation",
                                      "device": eui_hex(e["eui"]) if e["eui"] else None,
                                      "request": e["dcc_request"], "detail": d})
                elif e["kind"] == "gbcs_alert":  # the device's own GBCS alert (8F66/8F67)
                    raw = d.pop("gbcs", "")
                    self.store.queue({"type": "alert", "alert": "gbcs",
                                      "device": eui_hex(e["eui"]) if e["eui"] else None,
                                      "request": e["dcc_request"], "detail": d,
                                      "gbcs_b64": base64.b64encode(
                                          bytes.fromhex(raw)).decode("ascii")})
                else:
                    self.store.queue({"type": "alert", "alert": "trust_centre_swap_out",
                                      "device": None, "request": None,
                                      "detail": {"old": eui_hex(d["old"]),
                                                 "new": eui_hex(d["new"])}})
            db.set_meta("wan.events", str(top))

    def _gbcs(self, r) -> tuple[int, bytes] | None:
        """The GBCS-shaped payload of a request's outcome (`gbcs.for_outcome`), or None."""
        from datetime import datetime, timezone

        from . import gbcs

        parts = str(r["dcc_request"]).split(":")
        try:
            requester, counter = bytes.fromhex(eui_hex(parts[0])), int(parts[2])
        except (IndexError, ValueError, WanError):
            return None
        return gbcs.for_outcome(
            r["outcome"], r["sr"], device=bytes.fromhex(eui_hex(r["eui"])),
            comms_hub=bytes.fromhex(eui_hex(self.hub.db.current_hub()["eui"])),
            requester=requester, counter=counter % (1 << 64),
            version=r["result"] if r["result"] is not None else r["target_version"],
            when=datetime.fromtimestamp(r["finished"] or 0, timezone.utc))


_FAILED = {"prenotify": "refused", "join": "join_failed", "unjoin": "unjoin_failed",
           "cancel_activation": "not_cancelled"}


class _Actions:
    """One DCC message applied to the hub's registry and requests (inside a transaction)."""

    def __init__(self, wan: CommsHubWan, msg: dict):
        self.wan = wan
        self.msg = msg
        self.db = wan.hub.db

    def run(self) -> str:
        kind = self.msg.get("type")
        if kind not in DCC_TYPES:
            raise WanError("unknown message type %r (the CH takes %s)"
                           % (kind, ", ".join(DCC_TYPES)), reason="bad-wan-message")
        return getattr(self, "do_" + kind)()

    # -- helpers

    def _eui(self) -> str:
        from ..hub.db import eui_text

        return eui_text(eui_hex(self.msg["device"]))

    def _supplier(self) -> str:
        """The requesting User's entity ID (the RequestID's originator)."""
        text = str(self.msg.get("request") or "")
        return eui_hex(text.split(":")[0]) if text.count(":") == 2 else "DCC"

    def _premises(self) -> str:
        """Where a device the DCC names goes in the CH's registry: the message's premises,
        else `hanota hub serve --premises`, else the name this CH took the first time
        (CH-<its first EUI>, kept across a swap-out)."""
        name = self.msg.get("premises") or self.wan.premises or self.db.get_meta("wan.premises")
        if not name:
            name = "CH-" + eui_hex(self.db.current_hub()["eui"])
            self.db.set_meta("wan.premises", name)
        return str(name)

    def _mirror_supplier(self, eui: str) -> str:
        """The DCC checked the Responsible Supplier by entity ID; the CH's registry mirrors
        the DCC's word so its own rules (which the CLI's requests use) agree."""
        from ..hub import registry as reg

        who = self._supplier()
        dev = reg.device(self.db, eui)
        if dev is not None:
            have = reg.responsible_suppliers(self.db, eui)
            if who not in have:
                reg.set_suppliers(self.db, dev["mpxn"], [who] + [s for s in have
                                                                 if s != who][:1])
        return who

    def _track(self, sub) -> str:
        with self.db.tx() as c:
            c.execute("INSERT INTO ch_wan_requests (hub_request, dcc_request) VALUES (?, ?)",
                      (sub.id, str(self.msg.get("request"))))
        return "request #%d" % sub.id

    def _at(self, value: Any) -> float | None:
        from ..hub import requests as rq

        return rq.parse_when(value) if value else None

    # -- the message types

    def do_prenotify(self) -> str:
        """The device goes into the CH's device log with its install code (SR 12.2)."""
        from ..hub import registry as reg

        eui = self._eui()
        if reg.device(self.db, eui) is not None:
            self.wan._immediate(self.msg, "prenotified", already=True)
            return "prenotified"
        self._add_device(eui)
        self.wan._immediate(self.msg, "prenotified")
        return "prenotified"

    def do_update_firmware(self) -> str:
        from ..hub import registry as reg
        from ..hub import requests as rq

        eui = self._eui()
        dev = reg.device(self.db, eui)
        # The SR the hub runs follows the device's role (hub/requests.py: 11.1 for devices
        # activated by command, 11.4 for the others), whatever "kind" the DCC wrote.
        who = self._mirror_supplier(eui) if dev is not None else self._supplier()
        data = base64.b64decode(self.msg["image_b64"], validate=True)
        store = self.db.images_dir()
        store.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=store, prefix=".wan-", suffix=".ota")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            sub = rq.update_firmware(self.db, eui, tmp, who, self._at(self.msg.get("at")))
        finally:
            Path(tmp).unlink(missing_ok=True)
        return self._track(sub)

    def do_activate(self) -> str:
        from ..hub import registry as reg
        from ..hub import requests as rq

        eui = self._eui()
        who = self._mirror_supplier(eui) if reg.device(self.db, eui) else self._supplier()
        sub = rq.activate(self.db, eui, str(self.msg["hash"]), who,
                          self._at(self.msg.get("at")))
        return self._track(sub)

    def do_gbcs(self) -> str:
        """A GBCS CS06 (`gbcs_b64`: the Supplier-signed, ACB-MAC'd message, SR 11.3 CV 5):
        an SR 11.3 hub request whose command is these bytes (meta gbcs.<request id>), relayed
        to the device on the HAN (ZCL 0xF3) at its execution time less the hub's lead (the
        device itself waits for the time and alerts 8F66/8F67)."""
        from ..hub import registry as reg
        from ..hub import requests as rq
        from ..hub.db import HubUsageError

        eui = self._eui()
        who = self._mirror_supplier(eui) if reg.device(self.db, eui) else self._supplier()
        try:
            data = base64.b64decode(str(self.msg.get("gbcs_b64") or ""), validate=True)
            sub = rq.activate_gbcs(self.db, eui, data, who)
        except (ValueError, HubUsageError) as e:
            raise WanError("gbcs_b64: %s" % e, reason="bad-wan-message") from None
        return self._track(sub)

    def do_read_version(self) -> str:
        from ..hub import registry as reg
        from ..hub import requests as rq

        eui = self._eui()
        who = self._mirror_supplier(eui) if reg.device(self.db, eui) else self._supplier()
        return self._track(rq.read_version(self.db, eui, who))

    def do_cancel_activation(self) -> str:
        eui = self._eui()
        want = str(self.msg.get("hash") or "").lower()
        rows = [r for r in self.db.all(
            "SELECT * FROM requests WHERE eui = ? AND kind = 'activate' AND outcome IS NULL",
            (eui,)) if not want or r["image_hash"] == want]
        if not rows:
            self.wan._immediate(self.msg, "not_cancelled",
                                reason="device %s has no pending activation%s" % (
                                    eui, " with that hash" if want else ""))
            return "not_cancelled"
        r = rows[0]
        if r["state"] != "queued":
            self.wan._immediate(self.msg, "not_cancelled",
                                reason="the activation (hub request #%d) was already sent to "
                                "the device (state %s)" % (r["id"], r["state"]))
            return "not_cancelled"
        self.db.finish(r["id"], "superseded", "cancelled by %s" % self.msg.get("request"))
        self.wan._immediate(self.msg, "cancelled", hub_request=r["id"])
        return "cancelled"

    def do_join(self) -> str:
        from ..hub import registry as reg
        from ..hub.db import check_install_code

        eui = self._eui()
        dev = reg.device(self.db, eui)
        if dev is None:
            self._add_device(eui)
            dev = reg.device(self.db, eui)
        elif self.msg.get("install_code") and \
                check_install_code(self.msg["install_code"]) != dev["install_code"]:
            with self.db.tx() as c:
                c.execute("UPDATE devices SET install_code = ? WHERE eui = ?",
                          (check_install_code(self.msg["install_code"]), eui))
        if dev["role"] == "althan":
            self.wan._immediate(self.msg, "join_failed", reason="device %s is an Alt HAN "
                                "device: it joins through the Alt HAN equipment, not the "
                                "Join Service" % eui)
            return "join_failed"
        hub = self.db.current_hub()["eui"]
        self.wan._immediate(self.msg, "joined", han_joined=dev["joined_hub"] == hub)
        return "joined"

    def do_unjoin(self) -> str:
        from ..hub import registry as reg

        eui = self._eui()
        if reg.device(self.db, eui) is None:
            self.wan._immediate(self.msg, "unjoin_failed",
                                reason="device %s is not in the Comms Hub's device log" % eui)
            return "unjoin_failed"
        reg.remove_device(self.db, eui)  # HubUsageError while it has pending requests
        self.wan._immediate(self.msg, "unjoined")
        return "unjoined"

    def do_set_suppliers(self) -> str:
        from ..hub import registry as reg

        names = [eui_hex(s) for s in self.msg.get("suppliers") or []]
        mpxn = self._premises()
        if self.msg.get("device"):
            dev = reg.device(self.db, self._eui())
            if dev is not None:
                mpxn = dev["mpxn"]
        reg.set_suppliers(self.db, mpxn, names)
        self.wan._immediate(self.msg, "applied", premises=mpxn, suppliers=names)
        return "applied"

    def _add_device(self, eui: str) -> None:
        from .. import images
        from ..hub import registry as reg

        m = self.msg
        role = str(m.get("role") or "")
        reg.add_device(self.db, eui, role, str(m.get("install_code") or ""), self._premises(),
                       hw_version=_int(m.get("hw_version")),
                       manufacturer=_int(m.get("manufacturer"), images.DEFAULT_MANUFACTURER),
                       image_type=_int(m.get("image_type")),
                       ota_supported=bool(m.get("ota_supported", True)))
        if m.get("suppliers"):
            reg.set_suppliers(self.db, reg.device(self.db, eui)["mpxn"],
                              [eui_hex(s) for s in m["suppliers"]])


def _int(v: Any, default: int | None = None) -> int | None:
    """A number from a WAN message: JSON integers as they are, text as hex (as the DCC's
    registration data keeps manufacturer codes and versions)."""
    if v is None or v == "":
        return default
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    try:
        return int(str(v).strip().lower().removeprefix("0x"), 16)
    except ValueError:
        raise WanError("%r is not a number (JSON integer or hex text)" % (v,),
                       reason="bad-wan-message") from None
