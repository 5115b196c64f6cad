"""The DCC and a Comms Hub as two services over loopback: DUIS over HTTP, the WAN, the HAN.

One event loop holds the DCC's HTTP server (`hanota.dcc.http.DccHttp` over the real `Dcc`,
its SQLite store and a test PKI), a Comms Hub (`hanota.hub.Hub` plus its WAN client
`CommsHubWan`, on its own database) and fake HAN devices (`AgentDevice`: they join, download,
activate and alert by themselves). A Supplier signs DUIS requests with its key from the test
PKI and POSTs them; it gets the synchronous acknowledgement, then the signed DUIS response
for the device's outcome, by GET or pushed to its URL. Ports are chosen at run time.

The last test runs `hanota dcc serve` and `hanota hub serve` as the commands, in child
processes.
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from hanota import images
from hanota.dcc import duis, pki, xmlsig
from hanota.dcc.http import DccHttp
from hanota.dcc.service import Dcc
from hanota.dcc.store import DccStore
from hanota.dcc.wan import CommsHubWan, WanEndpoint, decode, encode, eui_hex, wan_token
from hanota.hub import HubDB
from hanota.hub import registry as reg
from hanota.hub.hub import Hub
from support import otabuild
from support.fakedevice import install_code
from support.hubfixtures import AgentDevice, build_image, eui_str, fast_options

pytestmark = pytest.mark.timeout(120)

MPAN = "1100000000001"


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

    async def wait_response(self, request_id: str, timeout: float = 30.0) -> dict:
        """The final signed DUIS response for request_id (fetched by GET), parsed."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for r in await self.responses():
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

    async def prenotify(self, n: int, role: str = "ppmid") -> str:
        """SR 12.2 for test device n; returns its RequestID text once the CH holds it."""
        xml = self.request("12.2", duis.DCC_EUI, device_id=msb(n), manufacturer="%04X"
                           % images.DEFAULT_MANUFACTURER,
                           model="%08X" % images.ROLE_IMAGE_TYPES[role],
                           device_type={"ppmid": "PPMID", "hcalcs": "HCALCS"}[role],
                           smets_chts_version="V1.0", firmware_version="00000001",
                           install_code=bytes.fromhex(install_code(n)))
        status, ack = await self.post(xml)
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


def run(tmp_path, body, **dcc_kw):
    async def main():
        w = World(tmp_path)
        try:
            await w.start_dcc(**dcc_kw)
            await body(w)
        finally:
            await w.stop()
    asyncio.run(main())


# ---------------------------------------------------------------- end to end

def test_update_firmware_11_4_end_to_end(tmp_path):
    """12.2 puts the PPMID in the CH's device log; a signed 11.4 is acknowledged (I99),
    crosses the WAN, the CH serves it on the HAN, and the Supplier fetches the signed I0
    response saying the firmware was activated."""
    async def body(w: World):
        await w.start_hub()
        await w.prenotify(1)
        dev = await w.device(1)
        data = w.image("ppmid", 0x00000002)
        xml = w.request("11.4", duis.DCC_EUI, firmware_image=data, firmware_version="00000002",
                        device_ids=[msb(1)])
        status, ack = await w.post(xml)
        assert (status, ack["code"]) == (200, "I99"), ack
        resp = await w.wait_response(ack["request_id"])
        assert resp["code"] == "I0", resp
        assert outcome(resp)["Outcome"] == "activated", resp
        assert dev.activated_versions == [2]
        # the CH reported the outcome once, and it was acknowledged
        rows = w.hub.db.all("SELECT body, acked FROM ch_wan_out")
        outcomes = [json.loads(r[0]) for r in rows if json.loads(r[0])["type"] == "outcome"
                    and json.loads(r[0])["request"] == ack["request_id"]]
        assert len(outcomes) == 1 and outcomes[0]["outcome"] == "activated"
        # with its GBCS shape: CS09 PPMID Firmware Activation Alert, unsigned APDU
        g = base64.b64decode(outcomes[0]["gbcs_b64"])
        assert outcomes[0]["gbcs_message_code"] == "012B"
        assert g[:2] == b"\xDF\x09" and g[31:33] == b"\x01\x2B" and g[12:20] == msb(1)
        await w.until(lambda: all(r[1] is not None for r in w.hub.db.all(
            "SELECT body, acked FROM ch_wan_out")), "every CH message acknowledged")
        # the activation alert went to the DCC too, as an alert for the Supplier
        assert any(json.loads(r[0])["type"] == "alert" for r in rows)
    run(tmp_path, body)


def test_hcalcs_11_1_then_11_3_and_read_version(tmp_path):
    """HCALCS: SR 11.1 distributes (response: distributed), SR 11.3 activates with the
    Manufacturer Image Hash (activated), SR 11.2 reads the version back."""
    async def body(w: World):
        await w.start_hub()
        await w.prenotify(2, "hcalcs")
        dev = await w.device(2, role="hcalcs")
        data = w.image("hcalcs", 0x00000003)
        status, ack = await w.post(w.request("11.1", duis.DCC_EUI, firmware_image=data,
                                             firmware_version="00000003",
                                             device_ids=[msb(2)]))
        assert ack["code"] == "I99", ack
        resp = await w.wait_response(ack["request_id"])
        assert outcome(resp)["Outcome"] == "distributed", resp
        h = dev.held_hash
        assert h is not None
        _, ack = await w.post(w.request("11.3", msb(2), firmware_hash=h))
        assert ack["code"] == "I99", ack
        resp = await w.wait_response(ack["request_id"])
        assert outcome(resp)["Outcome"] == "activated", resp
        _, ack = await w.post(w.request("11.2", msb(2)))
        resp = await w.wait_response(ack["request_id"])
        assert outcome(resp)["Outcome"] == "version_read", resp
        assert outcome(resp)["FirmwareVersion"] == "00000003", resp
    run(tmp_path, body)


# ---------------------------------------------------------------- the WAN

def test_ch_offline_then_back_gets_queued_messages(tmp_path):
    """Requests accepted while the CH is away wait in the DCC's outbox; the CH dials in,
    receives them in order, and they run. A WAN drop mid-way loses nothing either."""
    async def body(w: World):
        w.hub = Hub(w.hub_db, udp=("127.0.0.1", 0), options=fast_options())
        await w.hub.start()
        # the CH's device log from before (the DCC registered the device earlier)
        w.store.add_device(msb(3), "PPMID", MPAN, model="%08X" % images.ROLE_IMAGE_TYPES[
            "ppmid"], manufacturer=images.DEFAULT_MANUFACTURER,
            install_code=install_code(3))
        reg.set_suppliers(w.hub.db, MPAN, [eui_hex(w.user)])
        reg.add_device(w.hub.db, eui_str(3), "ppmid", install_code(3), MPAN)
        dev = await w.device(3)
        data = w.image("ppmid", 0x00000005)
        _, ack = await w.post(w.request("11.4", duis.DCC_EUI, firmware_image=data,
                                        firmware_version="00000005", device_ids=[msb(3)]))
        assert ack["code"] == "I99", ack
        _, ack2 = await w.post(w.request("11.2", msb(3)))
        assert ack2["code"] == "I99", ack2
        await asyncio.sleep(0.3)
        assert len(w.store.wan_outbox(w.hub_eui)) == 2  # nobody to send them to
        await w.start_wan()
        first = await w.wait_response(ack["request_id"])
        assert outcome(first)["Outcome"] == "activated", first
        second = await w.wait_response(ack2["request_id"])
        assert outcome(second)["Outcome"] == "version_read", second
        assert dev.activated_versions == [5]
        assert w.store.wan_outbox(w.hub_eui) == []
        # a drop and a reconnect: no message is applied twice
        n = w.wan.connections
        await w.wan.stop()
        await w.start_wan()
        assert w.wan.connections == 1 and n == 1
        await asyncio.sleep(0.3)
        assert w.hub.db.one("SELECT count(*) FROM requests")[0] == 2
    run(tmp_path, body)


def test_duplicates_are_harmless(tmp_path):
    """A DCC message delivered twice is acknowledged twice and applied once; a CH message
    delivered twice gives the User one response."""
    async def body(w: World):
        w.hub = Hub(w.hub_db, udp=("127.0.0.1", 0), options=fast_options())
        await w.hub.start()
        # DCC -> CH: a fake DCC that sends the same prenotify twice
        acks: list[int] = []
        msg = {"id": 7, "type": "prenotify", "request": "%s:%s:1" % (
            duis.eui_text(w.user), duis.eui_text(duis.DCC_EUI)), "device": eui_hex(msb(4)),
            "install_code": install_code(4), "role": "ppmid", "premises": MPAN}

        async def fake_dcc(request):
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            await ws.send_str(encode(msg))
            await ws.send_str(encode(msg))
            async for m in ws:
                d = decode(m.data)
                if "ack" in d:
                    acks.append(d["ack"])
                    if len(acks) == 2:
                        break
            await ws.close()
            return ws
        app = web.Application()
        app.router.add_get("/wan/{eui}", fake_dcc)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        wan = CommsHubWan(w.hub, "http://127.0.0.1:%d" % port, poll=0.05, backoff=(0.05, 0.3))
        await wan.start()
        try:
            await w.until(lambda: len(acks) == 2, "two acknowledgements")
            await w.until(lambda: wan.store.pending_in() == [], "the message applied")
            assert acks == [7, 7]
            assert reg.device(w.hub.db, eui_str(4)) is not None
            out = [json.loads(r[0]) for r in w.hub.db.all("SELECT body FROM ch_wan_out")]
            assert [o["outcome"] for o in out] == ["prenotified"]  # one outcome, not two
        finally:
            await wan.stop()
            await runner.cleanup()
        # CH -> DCC: the same outcome twice over the DCC's WAN endpoint
        w.store.add_device(msb(4), "PPMID", MPAN, install_code=install_code(4))
        _, ack = await w.post(w.request("11.2", msb(4)))
        rid = ack["request_id"]
        outcome = {"id": 1, "type": "outcome", "request": rid, "device": eui_hex(msb(4)),
                   "outcome": "version_read", "detail": {"version": "00000001"}}
        got: list[int] = []
        async with w.session.ws_connect("%s/wan/%s" % (w.url, w.hub_eui)) as ws:
            await ws.send_str(encode({"hello": w.hub_eui, "replaces": []}))
            await ws.send_str(encode(outcome))
            await ws.send_str(encode(outcome))
            async for m in ws:
                d = decode(m.data)
                if "ack" in d:
                    got.append(d["ack"])
                    if len(got) == 2:
                        break
        assert got == [1, 1]
        finals = [r for r in await w.responses()
                  if duis.parse_response(r["xml"].encode())["request_id"] == rid
                  and duis.parse_response(r["xml"].encode())["kind"] == "response"]
        assert len(finals) == 1
    run(tmp_path, body)


def test_ch_stores_before_it_acks(tmp_path):
    """The CH acknowledges a DCC message only once it is in its database: a message that
    cannot be stored is not acknowledged, and the DCC keeps it for the next connection."""
    async def body(w: World):
        w.hub = Hub(w.hub_db, udp=("127.0.0.1", 0), options=fast_options())
        await w.hub.start()
        w.store.add_device(msb(5), "PPMID", MPAN, install_code=install_code(5))
        await w.start_wan()
        real = w.wan.store.store_in
        from hanota.hub.db import HubError

        def broken(msg):
            raise HubError("disk full", reason="db")
        w.wan.store.store_in = broken
        _, ack = await w.post(w.request("11.2", msb(5)))
        await asyncio.sleep(0.5)
        assert len(w.store.wan_outbox(w.hub_eui)) == 1  # not acknowledged
        assert w.hub.db.one("SELECT count(*) FROM ch_wan_in")[0] == 0
        w.wan.store.store_in = real
        await w.until(lambda: w.store.wan_outbox(w.hub_eui) == [], "the redelivery acked")
        assert w.hub.db.one("SELECT count(*) FROM ch_wan_in")[0] == 1
    run(tmp_path, body)


def test_trust_centre_swap_out_over_the_wan(tmp_path):
    """A Trust Centre Swap-Out on the Comms Hub: the Alt HAN device's pending 11.1 ends
    "OTA unavailable after TCSO" (MP170), which the Supplier gets as the DUIS error; the
    swap-out alert reaches the Suppliers on the old hub's connection; then the CH dials in
    under its new identity, naming the one it replaces."""
    async def body(w: World):
        await w.start_hub()
        xml = w.request("12.2", duis.DCC_EUI, device_id=msb(8), manufacturer="%04X"
                        % images.DEFAULT_MANUFACTURER,
                        model="%08X" % images.ROLE_IMAGE_TYPES["althan"], device_type="ALTHAN",
                        smets_chts_version="V1.0", firmware_version="00000001",
                        install_code=bytes.fromhex(install_code(8)))
        _, ack = await w.post(xml)
        assert ack["code"] == "I0", ack
        await w.until(lambda: reg.device(w.hub.db, eui_str(8)) is not None, "the device log")
        dev = await w.device(8, role="althan")
        assert dev.join_status == 0
        dev.answer_notify = False  # it is not downloading when the hub is swapped out
        data = w.image("althan", 0x00000009)
        _, ack = await w.post(w.request("11.4", duis.DCC_EUI, firmware_image=data,
                                        firmware_version="00000009", device_ids=[msb(8)]))
        assert ack["code"] == "I99", ack
        await w.until(lambda: w.hub.db.one("SELECT count(*) FROM requests WHERE eui = ? "
                                           "AND outcome IS NULL", (eui_str(8),))[0] == 1,
                      "the request on the CH")
        old = w.hub_eui
        swap = reg.swap_out(w.hub.db)  # as `hanota hub swap-out` does
        new = eui_hex(swap["new"])
        resp = await w.wait_response(ack["request_id"])
        assert resp["code"] == duis.E_OTA_UNAVAILABLE, resp
        assert outcome(resp)["Outcome"] == "ota_unavailable_after_tcso"
        alerts = [duis.parse_response(r["xml"].encode()) for r in await w.responses()]
        assert any(a["kind"] == "dcc_alert" and a["alert_code"] == "NH3" for a in alerts), \
            alerts
        await w.until(lambda: w.http.wan.connected == {new}, "the CH back as %s" % new)
        assert old not in w.http.wan.connected
        # its hello named the hub it replaces: the DCC's registration data follows it
        await w.until(lambda: w.store.premises(MPAN)["hub_eui"] == new, "premises moved")
    run(tmp_path, body)


def test_dcc_that_cannot_store_does_not_ack(tmp_path):
    """A CH message the DCC cannot store (its database failing) is not acknowledged: the
    DCC closes the connection, the CH dials again and resends, the User gets one response."""
    from hanota.dcc.store import DccStoreError

    async def body(w: World):
        await w.start_hub()
        w.store.add_device(msb(10), "PPMID", MPAN)  # not in the CH's log: refused there
        real = w.dcc.wan_received
        fails = {"left": 1}

        def flaky(hub, msg):
            if fails["left"]:
                fails["left"] -= 1
                raise DccStoreError("database is locked")
            return real(hub, msg)
        w.dcc.wan_received = flaky
        _, ack = await w.post(w.request("11.2", msb(10)))
        resp = await w.wait_response(ack["request_id"])
        assert outcome(resp)["Outcome"] == "not_authorized"
        assert fails["left"] == 0 and w.wan.connections >= 2
        finals = [r for r in await w.responses()
                  if duis.parse_response(r["xml"].encode())["request_id"] == ack["request_id"]]
        assert len(finals) == 1
    run(tmp_path, body)


# ---------------------------------------------------------------- HTTP

def test_push_url_delivery_with_retry(tmp_path):
    """Responses are pushed to the User's URL in order; a failing URL is retried with
    backoff until it answers 2xx; nothing is delivered twice or skipped."""
    async def body(w: World):
        got: list[tuple[int, bytes]] = []
        fails = {"left": 2}

        async def endpoint(request):
            if fails["left"]:
                fails["left"] -= 1
                return web.Response(status=503)
            got.append((int(request.headers["X-Hanota-Seq"]), await request.read()))
            return web.Response(status=204)
        app = web.Application()
        app.router.add_post("/duis", endpoint)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        try:
            async with w.session.post(w.url + "/api/v1/subscribe", json={
                    "user": eui_hex(w.user), "url": "http://127.0.0.1:%d/duis" % port}) as r:
                assert r.status == 200
            await w.start_hub()
            await w.prenotify(6)
            await w.device(6)
            for _ in range(2):
                _, ack = await w.post(w.request("11.2", msb(6)))
                await w.wait_response(ack["request_id"])
            want = [(r["seq"], r["xml"].encode()) for r in await w.responses()]
            assert len(want) >= 2
            await w.until(lambda: len(got) >= len(want), "the pushes")
            assert got == want  # in order, each once
            assert fails["left"] == 0
            row = w.store.one("SELECT delivered FROM http_push WHERE user = ?",
                              (eui_hex(w.user),))
            assert row[0] == want[-1][0]
            # a new URL, told where the User is: only what comes after is pushed
            got.clear()
            async with w.session.post(w.url + "/api/v1/subscribe", json={
                    "user": eui_hex(w.user), "url": "http://127.0.0.1:%d/duis" % port,
                    "after": want[-2][0]}) as r:
                assert (await r.json())["delivered"] == want[-2][0]
            await w.until(lambda: len(got) == 1, "the push after the cursor")
            await asyncio.sleep(0.2)
            assert got == want[-1:]
            async with w.session.post(w.url + "/api/v1/subscribe", json={
                    "user": eui_hex(w.user), "url": None, "after": -1}) as r:
                assert r.status == 400
        finally:
            await runner.cleanup()
    run(tmp_path, body)


def test_transport_errors_are_signed_duis_errors(tmp_path):
    """Wrong content type, an oversize body, non-XML: a signed DUIS acknowledgement with the
    malformed-request code and the reason, never a 500. The templates' placeholder signature
    and a replayed counter are the service's refusals, through the same endpoint."""
    async def body(w: World):
        xml = w.request("11.2", msb(9))
        status, ack = await w.post(xml, content_type="application/json")
        assert status == 415 and ack["code"] == duis.E_MALFORMED
        assert "application/xml" in ack["reason"]
        status, ack = await w.post(b"<" + b"a" * 5000 + b"/>")
        assert status == 413 and ack["code"] == duis.E_MALFORMED and "limit" in ack["reason"]
        status, ack = await w.post(b"this is not XML")
        assert status == 400 and ack["code"] == duis.E_MALFORMED
        assert "well-formed" in ack["reason"]
        unsigned = duis.build_request("11.2", w.user, msb(9), 5000)
        status, ack = await w.post(unsigned)
        assert status == 200 and ack["code"].startswith("E"), ack
        signed = w.request("11.2", msb(9))
        await w.post(signed)
        status, ack = await w.post(signed)  # the same counter again
        assert status == 200 and ack["code"].startswith("E") and "counter" in ack["reason"]
        async with w.session.get(w.url + "/api/v1/responses",
                                 params={"user": "nonsense"}) as r:
            assert r.status == 400
        async with w.session.post(w.url + "/api/v1/subscribe", json={
                "user": eui_hex(w.user), "url": "file:///etc/passwd"}) as r:
            assert r.status == 400
    run(tmp_path, body, max_body=4096)


def test_wan_tokens(tmp_path, caplog):
    """With a WAN secret, a Comms Hub dials in only with its own token: none, or another
    hub's, is refused (401) and it keeps retrying; its own opens its path."""
    secret = bytes(range(32))

    async def body(w: World):
        w.hub = Hub(w.hub_db, udp=("127.0.0.1", 0), options=fast_options())
        await w.hub.start()
        for token in (None, wan_token(secret, "0011223344556677")):
            w.wan = CommsHubWan(w.hub, w.url, poll=0.05, backoff=(0.05, 0.1), token=token)
            await w.wan.start()
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(w.wan.connected.wait(), 0.6)
            assert w.http.wan.connected == set()
            await w.wan.stop()
            assert "refuses hub %s's WAN token (%s)" % (
                w.hub_eui, "wrong" if token else "none given") in caplog.text
        w.wan = CommsHubWan(w.hub, w.url, poll=0.05, token=wan_token(secret, w.hub_eui))
        await w.wan.start()
        await asyncio.wait_for(w.wan.connected.wait(), 10)
        assert w.http.wan.connected == {w.hub_eui}
        async with w.session.get("%s/wan/%s" % (w.url, w.hub_eui)) as r:
            assert r.status == 401  # no token: not even the upgrade
    run(tmp_path, body, wan_secret=secret)


def test_swap_out_with_tokens_needs_proof(tmp_path):
    """With WAN tokens, a new hub identity moves the premises only by proving it held the
    old hub's token; another hub's unproven claim moves nothing."""
    secret = bytes(range(32, 64))

    async def body(w: World):
        w.hub = Hub(w.hub_db, udp=("127.0.0.1", 0), options=fast_options())
        await w.hub.start()
        w.wan = CommsHubWan(w.hub, w.url, poll=0.05, backoff=(0.05, 0.2),
                            token=wan_token(secret, w.hub_eui))
        await w.wan.start()
        await asyncio.wait_for(w.wan.connected.wait(), 10)
        new = eui_hex(reg.swap_out(w.hub.db)["new"])
        await w.until(lambda: w.http.wan.connected == set(), "the old identity gone")
        await asyncio.sleep(0.3)
        assert w.http.wan.connected == set()  # its old token does not open the new path
        w.wan.token = wan_token(secret, new)  # the installer's token for the new hub
        await w.until(lambda: w.http.wan.connected == {new}, "the new identity")
        await w.until(lambda: w.store.premises(MPAN)["hub_eui"] == new, "premises moved")
        # a third hub with a valid token of its own claims it replaces the new one: refused
        other = "00DB123456789AB0"
        async with w.session.ws_connect("%s/wan/%s" % (w.url, other), headers={
                "Authorization": "Bearer " + wan_token(secret, other)}) as ws:
            await ws.send_str(encode({"hello": other, "replaces": [new],
                                      "proofs": {new: "0" * 32}}))
            await asyncio.sleep(0.3)
        assert w.store.premises(MPAN)["hub_eui"] == new
    run(tmp_path, body, wan_secret=secret)


def test_wan_endpoint_refuses_bad_hub_path(tmp_path):
    async def body(w: World):
        async with w.session.get(w.url + "/wan/not-an-eui") as r:
            assert r.status == 400
        assert isinstance(w.http.wan, WanEndpoint)
    run(tmp_path, body)


# ---------------------------------------------------------------- the commands

def _start(args: list[str], log: Path, ready: str, env: dict) -> subprocess.Popen:
    with open(log, "w") as f:  # the child keeps its own descriptor
        p = subprocess.Popen([sys.executable, "-c", "from hanota.cli import main; main()",
                              *args], stdout=f, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, env=env)
    end = time.monotonic() + 20
    while ready not in log.read_text():
        assert p.poll() is None, "%s exited: %s" % (args[:2], log.read_text())
        assert time.monotonic() < end, "%s did not start: %s" % (args[:2], log.read_text())
        time.sleep(0.05)
    return p


def test_dcc_serve_and_hub_serve_commands(tmp_path):
    """`hanota dcc serve` and `hanota hub serve --dcc URL` as processes: the CH dials in
    (the DCC's health lists it), and both stop cleanly on SIGTERM."""
    w = World(tmp_path)
    w.store.close()
    env = dict(os.environ, HANOTA_HOME=str(tmp_path / "home"))
    procs = []
    try:
        dcc = _start(["dcc", "serve", "--db", str(tmp_path / "dcc.db"), "--pki",
                      str(w.pki_dir), "--listen", "127.0.0.1:0", "--wan-auth"],
                     tmp_path / "dcc.log", "serving on http://", env)
        procs.append(dcc)
        line = [x for x in (tmp_path / "dcc.log").read_text().splitlines()
                if "serving on http://" in x][0]
        url = line.split("serving on ")[1].split(" ")[0]
        token = subprocess.run([sys.executable, "-c", "from hanota.cli import main; main()",
                                "dcc", "wan-token", "--hub", w.hub_eui, "--db",
                                str(tmp_path / "dcc.db")], capture_output=True, text=True,
                               env=env, timeout=30, check=True).stdout.strip()
        assert len(token) == 32
        hub = _start(["hub", "serve", "--dcc", url, "--db", w.hub_db, "--udp", "127.0.0.1:0",
                      "--wan-token", token], tmp_path / "hub.log", "serving on udp", env)
        procs.append(hub)

        async def health():
            async with aiohttp.ClientSession() as s:
                end = time.monotonic() + 20
                while time.monotonic() < end:
                    async with s.get(url + "/api/v1/health") as r:
                        data = await r.json()
                    if data["hubs"]:
                        return data["hubs"]
                    await asyncio.sleep(0.1)
            return []
        assert asyncio.run(health()) == [w.hub_eui]

        def send(name: str, xml: bytes, *extra: str) -> subprocess.CompletedProcess:
            f = tmp_path / name
            f.write_bytes(xml)
            return subprocess.run([sys.executable, "-c", "from hanota.cli import main; main()",
                                   "duis", "send", str(f), "--dcc", url, *extra],
                                  capture_output=True, text=True, env=env, timeout=60)
        # hanota duis send: a pre-notification answered at once (I0) ...
        r = send("12.2.xml", w.request("12.2", duis.DCC_EUI, device_id=msb(11),
                                       manufacturer="%04X" % images.DEFAULT_MANUFACTURER,
                                       model="%08X" % images.ROLE_IMAGE_TYPES["ppmid"],
                                       device_type="PPMID", smets_chts_version="V1.0",
                                       firmware_version="00000001",
                                       install_code=bytes.fromhex(install_code(11))))
        assert r.returncode == 0 and r.stdout.startswith("I0 "), (r.stdout, r.stderr)
        # ... a read for a device the Comms Hub does not hold: I99, then its refusal (exit 1)
        with DccStore(tmp_path / "dcc.db") as store:
            store.add_device(msb(12), "PPMID", MPAN)
        r = send("11.2.xml", w.request("11.2", msb(12)), "--wait", "30", "-o",
                 str(tmp_path / "final.xml"))
        lines = r.stdout.splitlines()
        assert r.returncode == 1 and lines[0].startswith("I99 "), (r.stdout, r.stderr)
        assert "not_authorized" in lines[1], r.stdout
        xmlsig.verify((tmp_path / "final.xml").read_bytes(), w.dcc_cert)
        # a placeholder-free but unsigned request: refused at once
        r = send("unsigned.xml", duis.build_request("11.2", w.user, msb(12), 99999))
        assert r.returncode == 1 and r.stdout.startswith("E"), (r.stdout, r.stderr)
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
            assert p.wait(15) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)


# ---------------------------------------------------------------- a virtual board

def test_virtual_board_through_duis(vboards, tmp_path):
    """The real device code on a virtual ESP32 (MicroPython over emulated flash), upgraded
    by a signed 11.4 POSTed to `DccRunner`, carried over the WAN to a `HubRunner` Comms Hub,
    and the signed I0 response fetched by the Supplier."""
    from hanota import deploy, flasher, fwbuild
    from hanota.dcc.http import DccRunner, DuisClient
    from hanota.hub.runner import HubRunner
    from hanota.keys import generate_keys, load_private_key

    v1, v2 = 0x00010000, 0x00020000
    generate_keys(tmp_path / "keys")
    p1 = fwbuild.build("vboard-esp32", "1.0.0", tmp_path / "p1")
    p2 = fwbuild.build("vboard-esp32", "2.0.0", tmp_path / "p2")
    w = World(tmp_path)
    w.store.close()

    def post(xml: bytes) -> dict:
        return DuisClient(dcc.url).send(xml)[0]

    def final(request_id: str) -> dict:
        resp, xml = DuisClient(dcc.url).wait_response(request_id, 100)
        xmlsig.verify(xml, w.dcc_cert)
        return resp

    with DccRunner(str(tmp_path / "dcc.db"), str(w.pki_dir)) as dcc, \
            HubRunner(w.hub_db, dcc_url=dcc.url, options=fast_options(
                request_timeout=2.0, retry={"answer_timeout": 30, "stall_window": 30,
                                            "activation_timeout": 60})) as hub:
        b = vboards("vboard-esp32", hub=hub.address)
        flasher.flash_firmware(b.romloader.url, p1["firmware"], board="vboard-esp32")
        b.console.wait_ready(15)
        res = deploy.deploy(b.console.pty_path, "vboard-esp32", "ppmid",
                            [tmp_path / "keys" / "public.bin"], version=v1,
                            settings={"query_interval": 1, "health_timeout": 20,
                                      "block_timeout_ms": 800})
        eui = bytes.fromhex(res.eui64.replace(":", ""))
        ack = post(w.request("12.2", duis.DCC_EUI, device_id=eui,
                             manufacturer="%04X" % images.DEFAULT_MANUFACTURER,
                             model="%08X" % images.ROLE_IMAGE_TYPES["ppmid"],
                             device_type="PPMID", smets_chts_version="V1.0",
                             firmware_version="%08X" % v1,
                             install_code=bytes.fromhex(res.install_code)))
        assert ack["code"] == "I0", ack
        f = tmp_path / "v2.ota"
        f.write_bytes(images.build_image(p2["app"].read_bytes(), version=v2, role="ppmid",
                                         key=load_private_key(tmp_path / "keys" /
                                                              "private.pem")))
        with DccStore(tmp_path / "dcc.db") as store:
            store.cpl_add(images.DEFAULT_MANUFACTURER, images.ROLE_IMAGE_TYPES["ppmid"], v2,
                          images.parse_file(f).descriptor.image_hash)
        ack = post(w.request("11.4", duis.DCC_EUI, firmware_image=f.read_bytes(),
                             firmware_version="%08X" % v2, device_ids=[eui]))
        assert ack["code"] == "I99", ack
        resp = final(ack["request_id"])
        assert resp["code"] == "I0" and outcome(resp)["Outcome"] == "activated", resp
        assert outcome(resp)["FirmwareVersion"] == "%08X" % v2
