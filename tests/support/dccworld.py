"""The DCC and a Comms Hub as two services for end-to-end tests (tests/e2e/test_dcc_wan.py,
test_dcc_nats.py, test_gbcs_wan.py).

`World`: one event loop holding the DCC's HTTP server (`hanota.dcc.http.DccHttp` over the
real `Dcc`, its SQLite store and a test PKI), a Comms Hub (`hanota.hub.Hub` plus its WAN
client `CommsHubWan`, on its own database) and fake HAN devices (`AgentDevice`); a Supplier
signs DUIS requests with its key from the test PKI and POSTs them. `run(tmp_path, body)`
runs `body(world)` with the DCC started.

The commands as child processes: `start_command` (`hanota ...` until its log says it is
ready), `dcc_serve` (also its URL), `duis_send` (`hanota duis send`), `stop_commands`
(SIGTERM, each must exit 0), `kill_commands`. `serve_one`: a one-route HTTP server.
"""
from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from hanota import images
from hanota.dcc import duis, pki, xmlsig
from hanota.dcc.http import DccHttp
from hanota.dcc.service import Dcc
from hanota.dcc.store import DccStore
from hanota.dcc.wan import CommsHubWan, eui_hex
from hanota.hub import HubDB
from hanota.hub import registry as reg
from hanota.hub.hub import Hub
from support import otabuild
from support.fakedevice import install_code
from support.hubfixtures import AgentDevice, build_image, eui_str, fast_options

MPAN = "1100000000001"
DEVICE_TYPES = {"ppmid": "PPMID", "hcalcs": "HCALCS", "althan": "ALTHAN"}  # DUIS DeviceType


def outcome(resp: dict) -> dict:
    """The Comms Hub's outcome as a DUIS response body carries it."""
    return resp["body"]["CommsHubOutcome"]


def msb(n: int) -> bytes:
    """Test device n's EUI-64 as DUIS writes it (most significant byte first)."""
    return bytes.fromhex(eui_str(n).replace(":", ""))


class World:
    """A DCC, a Comms Hub and a Supplier on one loop (see the module docstring)."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.pki_dir = tmp / "pki"
        pki.init(self.pki_dir)
        self.user_key, self.user_cert = pki.signing_pair(self.pki_dir, "supplier-a.xml")
        self.other_key, self.other_cert = pki.signing_pair(self.pki_dir, "supplier-b.xml")
        self.user = pki.describe(self.user_cert).entity_id
        self.other = pki.describe(self.other_cert).entity_id
        self.dcc_cert = pki.signing_pair(self.pki_dir, "dcc.xml")[1]
        self.store = DccStore(tmp / "dcc.db")
        self.dcc = Dcc(self.store, pki.KeyStore(self.pki_dir),
                       pki.signing_pair(self.pki_dir, "dcc.xml"))
        self.hub_db = str(tmp / "hub.db")
        with HubDB.open(self.hub_db) as db:
            self.hub_eui = eui_hex(db.current_hub()["eui"])
        self.store.add_premises(MPAN, [self.user], self.hub_eui)
        self.counter = {self.user: 1000, self.other: 1000}
        self.sign_key = otabuild.new_key()
        self.http: DccHttp | None = None
        self.url = ""
        self.hub: Hub | None = None
        self.wan: CommsHubWan | None = None
        self.devices: list[AgentDevice] = []
        self.session: aiohttp.ClientSession | None = None

    # -- lifetime

    async def start_dcc(self, **kw) -> None:
        self.http = DccHttp(self.dcc, wan_poll=0.05, push_poll=0.05, push_backoff=(0.05, 0.4),
                            **kw)
        host, port = await self.http.start("127.0.0.1", 0)
        self.url = "http://%s:%d" % (host, port)
        self.session = aiohttp.ClientSession()

    async def start_hub(self) -> None:
        self.hub = Hub(self.hub_db, udp=("127.0.0.1", 0), options=fast_options(max_in_flight=2))
        await self.hub.start()
        await self.start_wan()

    async def start_wan(self) -> None:
        self.wan = CommsHubWan(self.hub, self.url, poll=0.05, backoff=(0.05, 0.3))
        await self.wan.start()
        await asyncio.wait_for(self.wan.connected.wait(), 10)

    async def stop(self) -> None:
        for d in self.devices:
            d.close()
        if self.wan is not None:
            await self.wan.stop()
        if self.hub is not None:
            await self.hub.stop()
        if self.session is not None:
            await self.session.close()
        if self.http is not None:
            await self.http.stop()
        self.store.close()

    # -- the Supplier's side

    def request(self, srv: str, target: bytes, *, user: bytes | None = None,
                counter: int | None = None, **fields) -> bytes:
        """A DUIS request signed by supplier-a (or supplier-b when user is theirs)."""
        user = user or self.user
        if counter is None:
            self.counter[user] += 1
            counter = self.counter[user]
        key, cert = (self.user_key, self.user_cert) if user == self.user \
            else (self.other_key, self.other_cert)
        return xmlsig.sign(duis.build_request(srv, user, target, counter, **fields), key, cert)

    async def post(self, xml: bytes, *, content_type: str = "application/xml",
                   path: str = "/api/v1/serviceD") -> tuple[int, dict]:
        async with self.session.post(self.url + path, data=xml,
                                     headers={"Content-Type": content_type}) as r:
            body = await r.read()
            assert r.content_type == "application/xml", (r.status, body[:200])
        xmlsig.verify(body, self.dcc_cert)  # every answer is signed by the DCC
        return r.status, duis.parse_response(body)

    async def responses(self, after: int = 0, user: bytes | None = None) -> list[dict]:
        async with self.session.get(self.url + "/api/v1/responses", params={
                "user": eui_hex(user or self.user), "after": str(after)}) as r:
            assert r.status == 200
            data = await r.json()
        return data["responses"]

    async def wait_response(self, request_id: str, timeout: float = 30.0,
                            user: bytes | None = None) -> dict:
        """The final signed DUIS response for request_id (fetched by GET for `user`, default
        supplier-a), parsed."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for r in await self.responses(user=user):
                xml = r["xml"].encode()
                p = duis.parse_response(xml)
                if p["request_id"] == request_id and p["kind"] == "response":
                    xmlsig.verify(xml, self.dcc_cert)
                    return p
            await asyncio.sleep(0.05)
        raise AssertionError("no response for %s within %g s; DCC requests: %s" % (
            request_id, timeout, self.store.all("SELECT request_id, state, outcome FROM requests")
            and [dict(r) for r in self.store.all("SELECT request_id, state, outcome, reason "
                                                 "FROM requests")]))

    # -- devices

    def prenotification(self, device: bytes, code: str, role: str = "ppmid",
                        firmware_version: str = "00000001") -> bytes:
        """A signed SR 12.2 (Update HAN Device Log: add) for the device with EUI-64 `device`
        (DUIS order) and install code `code` (hex), of hanota's manufacturer and `role`."""
        return self.request("12.2", duis.DCC_EUI, device_id=device,
                            manufacturer="%04X" % images.DEFAULT_MANUFACTURER,
                            model="%08X" % images.ROLE_IMAGE_TYPES[role],
                            device_type=DEVICE_TYPES[role], smets_chts_version="V1.0",
                            firmware_version=firmware_version,
                            install_code=bytes.fromhex(code))

    async def prenotify(self, n: int, role: str = "ppmid") -> str:
        """SR 12.2 for test device n; returns its RequestID text once the CH holds it."""
        status, ack = await self.post(self.prenotification(msb(n), install_code(n), role))
        assert (status, ack["code"]) == (200, "I0"), ack
        await self.until(lambda: reg.device(self.hub.db, eui_str(n)) is not None,
                         "device %d in the CH's device log" % n)
        return ack["request_id"]

    async def device(self, n: int, role: str = "ppmid", **kw) -> AgentDevice:
        d = AgentDevice(n, role=role, **kw)
        self.devices.append(d)
        await d.start(self.hub.udp_address)
        return d

    def image(self, role: str, version: int, size: int = 2000, cpl: bool = True) -> bytes:
        path = build_image(self.tmp, self.sign_key, role, version, size)
        data = path.read_bytes()
        info = images.parse_file(path)
        if cpl:
            self.store.cpl_add(images.DEFAULT_MANUFACTURER, images.ROLE_IMAGE_TYPES[role],
                               version, info.descriptor.image_hash)
        return data

    async def until(self, cond, what: str, timeout: float = 20.0) -> None:
        end = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > end:
                raise AssertionError("timed out waiting for " + what)
            await asyncio.sleep(0.05)


async def serve_one(method: str, path: str, handler) -> tuple[web.AppRunner, int]:
    """A one-route aiohttp server on a loopback port chosen at run time (a fake DCC, a User's
    push URL); (its runner, to clean up, and the port)."""
    app = web.Application()
    app.router.add_route(method, path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]


def run(tmp_path, body, **dcc_kw):
    async def main():
        w = World(tmp_path)
        try:
            await w.start_dcc(**dcc_kw)
            await body(w)
        finally:
            await w.stop()
    asyncio.run(main())


# ---------------------------------------------------------------- the commands

HANOTA = [sys.executable, "-c", "from hanota.cli import main; main()"]


def start_command(args: list[str], log: Path, ready: str, env: dict) -> subprocess.Popen:
    """`hanota *args` in a child process writing to `log`, once `ready` stands in the log."""
    with open(log, "w") as f:  # the child keeps its own descriptor
        p = subprocess.Popen([*HANOTA, *args], stdout=f, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, env=env)
    end = time.monotonic() + 20
    while ready not in log.read_text():
        assert p.poll() is None, "%s exited: %s" % (args[:2], log.read_text())
        assert time.monotonic() < end, "%s did not start: %s" % (args[:2], log.read_text())
        time.sleep(0.05)
    return p


def dcc_serve(args: list[str], log: Path, env: dict) -> tuple[subprocess.Popen, str]:
    """`hanota dcc serve *args` started; (the process, the URL it says it serves on)."""
    p = start_command(["dcc", "serve", *args], log, "serving on http://", env)
    line = [x for x in log.read_text().splitlines() if "serving on http://" in x][0]
    return p, line.split("serving on ")[1].split(" ")[0]


def duis_send(tmp: Path, env: dict, url: str, name: str, xml: bytes,
              *extra: str) -> subprocess.CompletedProcess:
    """`hanota duis send` of `xml` (written to tmp/name) to the DCC at `url`."""
    f = tmp / name
    f.write_bytes(xml)
    return subprocess.run([*HANOTA, "duis", "send", str(f), "--dcc", url, *extra],
                          capture_output=True, text=True, env=env, timeout=60)


def stop_commands(procs: list[subprocess.Popen]) -> None:
    """SIGTERM each of `procs`, last started first; each must exit 0 within 15 s."""
    for p in reversed(procs):
        p.send_signal(signal.SIGTERM)
        assert p.wait(15) == 0


def kill_commands(procs: list[subprocess.Popen]) -> None:
    """Kill whichever of `procs` still run (a test's cleanup)."""
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(10)
