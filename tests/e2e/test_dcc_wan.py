"""The DCC and a Comms Hub as two services over loopback: DUIS over HTTP, the WAN, the HAN.

One event loop holds the DCC's HTTP server (`hanota.dcc.http.DccHttp` over the real `Dcc`,
its SQLite store and a test PKI), a Comms Hub (`hanota.hub.Hub` plus its WAN client
`CommsHubWan`, on its own database) and fake HAN devices (`AgentDevice`: they join, download,
activate and alert by themselves). A Supplier signs DUIS requests with its key from the test
PKI and POSTs them; it gets the synchronous acknowledgement, then the signed DUIS response
for the device's outcome, by GET or pushed to its URL. Ports are chosen at run time. The
world and the command starters are in tests/support/dccworld.py (test_dcc_nats.py runs the
same world over NATS).

The last test runs `hanota dcc serve` and `hanota hub serve` as the commands, in child
processes.
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import time

import aiohttp
import pytest
from aiohttp import web

from hanota import images
from hanota.dcc import duis, xmlsig
from hanota.dcc.store import DccStore
from hanota.dcc.wan import CommsHubWan, WanEndpoint, decode, encode, eui_hex, wan_token
from hanota.hub import registry as reg
from hanota.hub.hub import Hub
from support.dccworld import (HANOTA, MPAN, World, dcc_serve, duis_send, kill_commands, msb,
                              outcome, run, serve_one, start_command, stop_commands)
from support.fakedevice import install_code
from support.hubfixtures import eui_str, fast_options

pytestmark = pytest.mark.timeout(120)


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


async def take_acks(ws, into: list[int], n: int) -> None:
    """Read WAN messages from `ws` until `n` acknowledgements have come, each id into `into`."""
    async for m in ws:
        d = decode(m.data)
        if "ack" in d:
            into.append(d["ack"])
            if len(into) == n:
                break


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
            await take_acks(ws, acks, 2)
            await ws.close()
            return ws
        runner, port = await serve_one("GET", "/wan/{eui}", fake_dcc)
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
            await take_acks(ws, got, 2)
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
        _, ack = await w.post(w.prenotification(msb(8), install_code(8), "althan"))
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
        runner, port = await serve_one("POST", "/duis", endpoint)
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

def test_dcc_serve_and_hub_serve_commands(tmp_path):
    """`hanota dcc serve` and `hanota hub serve --dcc URL` as processes: the CH dials in
    (the DCC's health lists it), and both stop cleanly on SIGTERM."""
    w = World(tmp_path)
    w.store.close()
    env = dict(os.environ, HANOTA_HOME=str(tmp_path / "home"))
    procs = []
    try:
        dcc, url = dcc_serve(["--db", str(tmp_path / "dcc.db"), "--pki", str(w.pki_dir),
                              "--listen", "127.0.0.1:0", "--wan-auth"], tmp_path / "dcc.log",
                             env)
        procs.append(dcc)
        token = subprocess.run([*HANOTA, "dcc", "wan-token", "--hub", w.hub_eui, "--db",
                                str(tmp_path / "dcc.db")], capture_output=True, text=True,
                               env=env, timeout=30, check=True).stdout.strip()
        assert len(token) == 32
        hub = start_command(["hub", "serve", "--dcc", url, "--db", w.hub_db, "--udp",
                             "127.0.0.1:0", "--wan-token", token], tmp_path / "hub.log",
                            "serving on udp", env)
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
            return duis_send(tmp_path, env, url, name, xml, *extra)
        # hanota duis send: a pre-notification answered at once (I0) ...
        r = send("12.2.xml", w.prenotification(msb(11), install_code(11)))
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
        stop_commands(procs)
    finally:
        kill_commands(procs)


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
        ack = post(w.prenotification(eui, res.install_code, firmware_version="%08X" % v1))
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


def test_a_campaigns_messages_share_one_stored_image(db_target):
    """Two update_firmware messages with one image (and one with another) store each image
    once, by SHA-256, their bodies referring to it; the outbox and the publisher's read give
    every message back as queued, image included, also to a store that never saw it queued;
    a message whose image row is missing is an error naming it, not a message without it."""
    import hashlib

    hub_a, hub_b = bytes.fromhex("00DB0000000000A1"), bytes.fromhex("00DB0000000000B2")
    one, other = os.urandom(3000), os.urandom(500)

    def fw(data: bytes) -> dict:
        return {"type": "update_firmware", "kind": "11.4", "role": "ppmid",
                "image_b64": base64.b64encode(data).decode(), "version": "00000002"}
    with DccStore(db_target) as store:
        a = store.wan_queue(hub_a, fw(one))
        b = store.wan_queue(hub_b, fw(one))
        c = store.wan_queue(hub_b, fw(other))
        d = store.wan_queue(hub_b, {"type": "read_version"})
        rows = {r[0]: bytes(r[1]) for r in store.all("SELECT sha256, data FROM wan_images")}
        assert rows == {hashlib.sha256(x).hexdigest(): x for x in (one, other)}
        for mid in (a, b, c):
            raw = json.loads(store.wan_message(mid)["body"])
            assert "image_b64" not in raw and len(raw["image_ref"]) == 64, raw
    with DccStore(db_target) as fresh:  # nothing cached: read back from wan_images
        assert [m["id"] for m in fresh.wan_outbox(hub_b)] == [b, c, d]
        got = {m["id"]: m for m in fresh.wan_outbox(hub_a) + fresh.wan_unpublished(hub_b)}
        assert got[a] == dict(fw(one), id=a) and got[b] == dict(fw(one), id=b)
        assert got[c] == dict(fw(other), id=c) and got[d] == {"type": "read_version", "id": d}
        with fresh.tx() as tx:
            tx.execute("DELETE FROM wan_images WHERE sha256 = ?",
                       (hashlib.sha256(other).hexdigest(),))
    with DccStore(db_target) as broken:
        with pytest.raises(Exception, match="WAN message %d refers to image sha256 %s" % (
                c, hashlib.sha256(other).hexdigest())):
            broken.wan_outbox(hub_b)
