"""`hanota dcc serve`: the DCC's DUIS endpoint over HTTP (aiohttp), and the WAN's DCC end.

Modelled on DCC Boxed's service-user interface, as its Node-RED client uses it
(SmartDCCInnovation/dccboxed-nodered-nodes, `src/dccboxed-send.ts` and
`src/dccboxed-config.ts`): a User POSTs a signed DUIS request, `Content-Type:
application/xml`, to `/api/v1/serviceD` (DCC Boxed's "Non-Device Service" path; its
`/api/v1/serviceS` "Send Command Service" and `/api/v1/serviceT` "Transform Service" paths
are accepted too and go to the same checks: hanota's DCC does no GBCS transform), and gets
the synchronous signed answer, `application/xml`: I99 (accepted; the outcome follows
asynchronously), I0 with a body for a DCC-only service, or the refusal with its code.
DCC Boxed then POSTs each asynchronous signed DUIS response or alert to the User's
configured response endpoint, which answers 2xx once it has it; so does this server:

- `POST /api/v1/subscribe` with JSON `{"user": "<entity ID>", "url": "http://..."}` (url
  null: stop pushing; optional `"after": n`: the User has responses up to n already) registers
  the User's push URL. Responses are pushed one at a time, in
  sequence order, `Content-Type: application/xml`, header `X-Hanota-Seq: <n>`; a response is
  delivered when the URL answered 2xx, and the next one is not sent before it (retry with
  exponential backoff, 0.5 s doubling to 60 s). The last delivered sequence number is kept in
  the DCC's database, so a restart neither loses nor repeats one.
- `GET /api/v1/responses?user=<entity ID>&after=<n>`: the User's responses and alerts after
  sequence n, as JSON `{"user": ..., "responses": [{"seq": n, "xml": "<signed DUIS>"}]}`
  (fetching does not count as delivery: a User may fetch and be pushed to both).
- `GET /wan/<hub EUI>`: the websocket a Comms Hub dials (`wan.WanEndpoint`).
- `GET /api/v1/health`: JSON with the connected Comms Hubs.

Transport problems are DUIS errors too, never a 500: a body that is not application/xml
(415), over `max_body` bytes (413), or not well-formed XML (400) gets a signed
acknowledgement with the malformed-request code and the reason.

This is a test DCC: it listens on loopback by default, and like DCC Boxed it does not
authenticate the subscribe and responses calls (the responses are signed, not secret).
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ..errors import HanotaError
from .wan import HEARTBEAT, WanEndpoint, WanError, eui_hex

log = logging.getLogger(__name__)

SUBMIT_PATHS = ("/api/v1/serviceD", "/api/v1/serviceS", "/api/v1/serviceT")
XML_TYPES = ("application/xml", "text/xml")
PUSH_BACKOFF = (0.5, 60.0)
PUSH_TIMEOUT = 10.0

_PUSH_SCHEMA = """
CREATE TABLE IF NOT EXISTS http_push (
    user TEXT PRIMARY KEY,
    url TEXT,
    delivered INTEGER NOT NULL DEFAULT 0,
    updated REAL NOT NULL,
    worker TEXT,
    until REAL
)"""
PUSH_LEASE = 30.0  # seconds a worker holds a User's pushes (several dcc serve workers)


def open_dcc(db_path: str | None, pki_dir: str) -> Any:
    """The DCC service over its database and a PKI directory (`hanota pki init`): the key
    store Users' signatures are checked against, and the DCC's own XML signing pair
    (`dcc.xml`)."""
    from pathlib import Path

    from .pki import KeyStore, signing_pair
    from .service import Dcc
    from .store import DccStore

    if not Path(pki_dir).is_dir():
        raise HanotaError("--pki %s is not a directory (make one with hanota pki init)"
                          % pki_dir, reason="usage")
    signer = signing_pair(pki_dir, "dcc.xml")
    return Dcc(DccStore(db_path), KeyStore(pki_dir), signer)


def wan_secret(store: Any) -> bytes:
    """The DCC's WAN secret (made once, kept in its database): Comms Hub tokens derive from
    it (`wan.wan_token`)."""
    import os as _os

    if not store.get_meta("wan.secret"):
        with store.tx() as c:  # the first of two racing processes wins; both read it back
            c.execute("INSERT OR IGNORE INTO meta VALUES ('wan.secret', ?)",
                      (_os.urandom(32).hex(),))
    return bytes.fromhex(store.get_meta("wan.secret"))


def _max_body_default() -> int:
    try:
        from . import duis
        return int(duis.MAX_REQUEST_BYTES)
    except (ImportError, AttributeError):
        return 16 << 20


class DccHttp:
    """The HTTP face of a `Dcc` (hanota.dcc.service): `app()` is the aiohttp application;
    `start(host, port)` serves it, and runs the push deliveries, until `stop()`."""

    def __init__(self, dcc: Any, *, max_body: int | None = None, wan_poll: float = 0.5,
                 push_poll: float = 1.0, push_backoff: tuple[float, float] = PUSH_BACKOFF,
                 wan_secret: bytes | None = None, wan_url: str | None = None,
                 worker: str | None = None, wan_heartbeat: float | None = HEARTBEAT):
        self.dcc = dcc
        self.max_body = max_body if max_body is not None else _max_body_default()
        self.wan = WanEndpoint(dcc, poll=wan_poll, secret=wan_secret, heartbeat=wan_heartbeat)
        self.wan.on_received = lambda: self._push_wake.set()
        self.nats = None  # the WAN on NATS JetStream (wan_nats.py), with wan_url nats://...
        if wan_url is not None:
            from .wan_nats import NatsWanDcc
            self.nats = NatsWanDcc(dcc, wan_url, worker=worker, poll=wan_poll)
            self.nats.on_received = lambda: self._push_wake.set()
        self.push_poll = push_poll
        self.push_backoff = push_backoff
        self._push_wake = asyncio.Event()
        self._push_task: asyncio.Task | None = None
        self._retry_at: dict[str, tuple[float, float]] = {}  # user -> (when, current delay)
        self.pushed = 0
        self._runner = None
        self.address: tuple[str, int] | None = None
        import os as _os
        import socket as _socket
        self.worker = worker or "%s:%d" % (_socket.gethostname(), _os.getpid())
        store = getattr(dcc, "store", None)
        if store is not None:
            with store.tx() as c:
                c.execute(_PUSH_SCHEMA)
            for col, decl in (("worker", "TEXT"), ("until", "REAL")):  # older databases
                store.add_column("http_push", col, decl)

    # -- lifetime

    def app(self):
        from aiohttp import web

        app = web.Application(client_max_size=self.max_body + 1)
        for path in SUBMIT_PATHS:
            app.router.add_post(path, self.submit)
        app.router.add_get("/api/v1/responses", self.responses)
        app.router.add_post("/api/v1/subscribe", self.subscribe)
        app.router.add_get("/api/v1/health", self.health)
        app.router.add_get("/wan/{eui}", self.wan.handle)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Listen (port 0: any free one); returns the (host, port) bound."""
        from aiohttp import web

        self._runner = web.AppRunner(self.app(), handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        try:
            await site.start()
        except OSError as e:
            await self._runner.cleanup()
            raise HanotaError("cannot listen on %s:%d: %s" % (host, port, e),
                              reason="listen") from None
        sock = site._server.sockets[0]  # the port actually bound (port 0)
        self.address = sock.getsockname()[:2]
        self._push_task = asyncio.get_running_loop().create_task(self._push_loop())
        if self.nats is not None:
            await self.nats.start()
        return self.address

    def _lease(self, user: str) -> bool:
        """Hold (or renew) the right to push this User's responses: one worker at a time
        per User keeps them in order and unrepeated; a dead worker's lease runs out."""
        wall = time.time()
        with self.dcc.store.tx() as c:
            return c.execute("UPDATE http_push SET worker = ?, until = ? WHERE user = ? AND "
                             "(until IS NULL OR until < ? OR worker = ?)",
                             (self.worker, wall + PUSH_LEASE, user, wall, self.worker)
                             ).rowcount == 1

    async def stop(self) -> None:
        if self.nats is not None:
            await self.nats.stop()
        if self._push_task is not None:
            self._push_task.cancel()
            await asyncio.gather(self._push_task, return_exceptions=True)
            self._push_task = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.wan.close()

    # -- DUIS requests

    def _error(self, status: int, reason: str):
        """A signed DUIS acknowledgement refusing a request the DCC could not even read."""
        from aiohttp import web

        from . import duis
        code = getattr(duis, "E_MALFORMED", "EH1")
        xml = duis.acknowledgement(None, code, reason)
        sign = getattr(self.dcc, "_sign", None)
        if sign is None:
            from . import xmlsig
            xml = xmlsig.sign(xml, self.dcc.key, self.dcc.cert)
        else:
            xml = sign(xml)
        log.info("refused an HTTP request: %s", reason)
        return web.Response(status=status, body=xml, content_type="application/xml")

    async def submit(self, request):
        from aiohttp import web

        if request.content_type not in XML_TYPES:
            return self._error(415, "Content-Type %r: a DUIS request is sent as "
                               "application/xml" % (request.content_type or "(none)"))
        if request.content_length is not None and request.content_length > self.max_body:
            return self._error(413, "request body of %d bytes is over the %d-byte limit"
                               % (request.content_length, self.max_body))
        body = bytearray()
        async for chunk in request.content.iter_chunked(1 << 16):
            body += chunk
            if len(body) > self.max_body:
                return self._error(413, "request body is over the %d-byte limit"
                                   % self.max_body)
        from . import duis
        try:
            duis.parse_xml(bytes(body))
        except duis.DuisError as e:
            return self._error(400, "%s" % (e.reason if hasattr(e, "reason") else e))
        reply = self.dcc.submit(bytes(body))
        self.wan.notify()  # an accepted device request is in a hub's outbox now
        if self.nats is not None:
            self.nats.notify()
        self._push_wake.set()
        return web.Response(body=reply, content_type="application/xml")

    # -- asynchronous responses

    def _user(self, text: str | None):
        from aiohttp import web
        try:
            return eui_hex(text or "")
        except WanError:
            raise web.HTTPBadRequest(text="user %r: an entity ID, 16 hex digits (pairs may "
                                     "be separated by '-' or ':')" % (text,)) from None

    async def responses(self, request):
        from aiohttp import web

        user = self._user(request.query.get("user"))
        try:
            after = int(request.query.get("after", "0"))
        except ValueError:
            raise web.HTTPBadRequest(text="after=%r is not a sequence number"
                                     % request.query.get("after")) from None
        out = [{"seq": seq, "xml": bytes(xml).decode("utf-8")}
               for seq, xml in self.dcc.responses(bytes.fromhex(user), after=after)]
        return web.json_response({"user": user, "responses": out})

    async def subscribe(self, request):
        from aiohttp import web

        try:
            data = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(text="subscribe takes JSON {\"user\": ..., \"url\": ...}") \
                from None
        if not isinstance(data, dict):
            raise web.HTTPBadRequest(text="subscribe takes a JSON object")
        user = self._user(data.get("user"))
        url = data.get("url")
        if url is not None and (not isinstance(url, str)
                                or not url.startswith(("http://", "https://"))):
            raise web.HTTPBadRequest(text="url %r: an http:// or https:// URL, or null" % (url,))
        after = data.get("after")
        if after is not None and (not isinstance(after, int) or isinstance(after, bool)
                                  or after < 0):
            raise web.HTTPBadRequest(text="after %r: a response sequence number" % (after,))
        store = self.dcc.store
        with store.tx() as c:
            c.execute("INSERT INTO http_push (user, url, updated) VALUES (?, ?, ?) "
                      "ON CONFLICT (user) DO UPDATE SET url = excluded.url, "
                      "updated = excluded.updated", (user, url, time.time()))
            if after is not None:  # the User has these already: start after them
                c.execute("UPDATE http_push SET delivered = ? WHERE user = ?", (after, user))
        self._retry_at.pop(user, None)
        self._push_wake.set()
        row = store.one("SELECT delivered FROM http_push WHERE user = ?", (user,))
        return web.json_response({"user": user, "url": url, "delivered": row[0]})

    async def health(self, request):
        from aiohttp import web
        return web.json_response({"ok": True, "hubs": sorted(self.wan.connected)})

    # -- pushing

    async def _push_loop(self) -> None:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=PUSH_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                try:
                    await self.push_once(session)
                except Exception:  # a bug must not stop deliveries; it is logged
                    log.exception("push")
                try:
                    await asyncio.wait_for(self._push_wake.wait(), self.push_poll)
                except asyncio.TimeoutError:
                    pass
                self._push_wake.clear()

    async def push_once(self, session) -> None:
        """Deliver what each subscribed User has not had yet, in order, stopping at the first
        failure (that User is tried again after its backoff)."""
        import aiohttp

        store = self.dcc.store
        now = time.monotonic()
        for row in store.all("SELECT user, url, delivered FROM http_push WHERE url IS NOT NULL"):
            user, url, delivered = row[0], row[1], row[2]
            when, delay = self._retry_at.get(user, (0.0, 0.0))
            if now < when:
                continue
            if not self._lease(user):  # another dcc serve worker pushes this User's
                continue
            for seq, xml in self.dcc.responses(bytes.fromhex(user), after=delivered):
                try:
                    async with session.post(url, data=bytes(xml), headers={
                            "Content-Type": "application/xml",
                            "X-Hanota-Seq": str(seq)}) as r:
                        ok = 200 <= r.status < 300
                        why = "HTTP %d" % r.status
                except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
                    ok, why = False, str(e) or type(e).__name__
                if not ok:
                    delay = min(max(delay * 2, self.push_backoff[0]), self.push_backoff[1])
                    self._retry_at[user] = (time.monotonic() + delay, delay)
                    log.info("push to %s for %s (seq %d): %s; again in %.1f s", url, user, seq,
                             why, delay)
                    break
                with store.tx() as c:
                    c.execute("UPDATE http_push SET delivered = max(delivered, ?) "
                              "WHERE user = ?", (seq, user))
                self._retry_at.pop(user, None)
                self.pushed += 1


class DccRunner:
    """`hanota dcc serve` on its own event loop thread, for synchronous callers (the demo,
    tests driving virtual boards): `url` is where it listens (a free loopback port by
    default); `stop()` or the end of a `with` block shuts it down."""

    def __init__(self, db_path: str | None, pki_dir: str, *, host: str = "127.0.0.1",
                 port: int = 0, **http_kw: Any):
        from ..hub.runner import LoopThread

        self._thread = LoopThread("dcc")
        try:
            self.dcc = open_dcc(db_path, pki_dir)
            self.http = self._thread.call(self._make(http_kw))
            h, p = self._thread.call(self.http.start(host, port))
        except BaseException:
            self._thread._abandon()
            raise
        self.url = "http://%s:%d" % (h, p)

    async def _make(self, kw: dict) -> "DccHttp":
        return DccHttp(self.dcc, **kw)  # made on the loop: its events belong to it

    def call(self, coro, timeout: float = 60) -> Any:
        return self._thread.call(coro, timeout)

    def stop(self) -> None:
        if self._thread.loop.is_closed():
            return
        try:
            self._thread.call(self.http.stop(), timeout=20)
        finally:
            self._thread.stop()
            self.dcc.store.close()

    def __enter__(self) -> "DccRunner":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class DuisHttpError(HanotaError):
    """The DCC's HTTP interface could not be reached, or answered something that is not
    DUIS (exit code 2)."""

    reason = "http"


class DuisClient:
    """A User's side of the DCC's HTTP interface, synchronous (urllib): send a signed DUIS
    request, fetch the User's asynchronous responses, wait for a request's final one."""

    def __init__(self, url: str, *, timeout: float = 30.0):
        if not url.startswith(("http://", "https://")):
            raise DuisHttpError("the DCC's URL %r: give http://HOST:PORT (hanota dcc serve "
                                "prints it)" % url, reason="usage")
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _open(self, req) -> tuple[int, str, bytes]:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return r.status, r.headers.get_content_type(), r.read()
        except urllib.error.HTTPError as e:  # a DUIS error may come with a 4xx status
            return e.code, e.headers.get_content_type(), e.read()
        except (urllib.error.URLError, OSError) as e:
            raise DuisHttpError("cannot reach the DCC at %s: %s"
                                % (self.url, getattr(e, "reason", e))) from None

    def send(self, xml: bytes, path: str = SUBMIT_PATHS[0]) -> tuple[dict, bytes]:
        """POST a signed request: (the parsed synchronous answer, its signed XML)."""
        import urllib.request

        from . import duis
        req = urllib.request.Request(self.url + path, data=bytes(xml), method="POST",
                                     headers={"Content-Type": "application/xml"})
        status, ctype, body = self._open(req)
        if ctype not in XML_TYPES:
            raise DuisHttpError("the DCC answered HTTP %d with %s, not a DUIS document: %s"
                                % (status, ctype, body[:200].decode("utf-8", "replace")))
        try:
            return duis.parse_response(body), body
        except duis.DuisError as e:
            raise DuisHttpError("the DCC's answer is not DUIS: %s" % e) from None

    def responses(self, user: bytes | str, after: int = 0) -> list[tuple[int, bytes]]:
        """The User's signed responses and alerts after sequence `after`."""
        import json
        import urllib.parse
        import urllib.request

        q = urllib.parse.urlencode({"user": eui_hex(user), "after": str(after)})
        status, ctype, body = self._open(urllib.request.Request(
            self.url + "/api/v1/responses?" + q))
        if status != 200:
            raise DuisHttpError("GET responses: HTTP %d: %s"
                                % (status, body[:200].decode("utf-8", "replace")))
        return [(int(r["seq"]), r["xml"].encode("utf-8"))
                for r in json.loads(body)["responses"]]

    def wait_response(self, request_id: str, timeout: float, poll: float = 0.2
                      ) -> tuple[dict, bytes]:
        """The final DUIS response to request_id (its originator is the User), polling."""
        from . import duis
        user = request_id.split(":")[0]
        after = 0
        end = time.monotonic() + timeout
        while True:
            for seq, xml in self.responses(user, after):
                after = max(after, seq)
                p = duis.parse_response(xml)
                if p["request_id"] == request_id and p["kind"] == "response":
                    return p, xml
            if time.monotonic() >= end:
                raise DuisHttpError("no response to %s within %g s" % (request_id, timeout),
                                    reason="timeout")
            time.sleep(poll)
