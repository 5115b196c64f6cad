"""The WAN's idle behaviour: the DCC finds new messages for its connected Comms Hubs with one
watcher per endpoint (not a query per connection per poll), and a Comms Hub whose loops only
run when woken (`quiet`) still reports at once.

- a message queued in the DCC's database by another connection (another process: a worker,
  `hanota dcc submit`) reaches a connected hub without notify();
- an id committed after a higher one (out of order: a watermark gap) is still delivered;
- only the hubs with something new are woken;
- a Comms Hub with a quiet pass of an hour still gets a firmware request through end to end.
"""
from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from hanota.dcc import duis
from hanota.dcc.store import DccStore
from hanota.dcc.wan import CommsHubWan, decode, encode
from support.dccworld import World, msb, outcome, run

pytestmark = pytest.mark.timeout(120)

HUB_A = "00DB0000000000A1"
HUB_B = "00DB0000000000B2"


class FakeHub:
    """A bare websocket client on a hub's WAN path: what the DCC sends it, by id."""

    def __init__(self, session: aiohttp.ClientSession, url: str, hub: str):
        self.session, self.url, self.hub = session, url, hub
        self.got: list[dict] = []
        self.ws = None
        self.task: asyncio.Task | None = None

    async def connect(self) -> None:
        self.ws = await self.session.ws_connect("%s/wan/%s" % (self.url, self.hub))
        await self.ws.send_str(encode({"hello": self.hub, "replaces": []}))
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for m in self.ws:
            msg = decode(m.data)
            if "id" in msg:
                self.got.append(msg)
                await self.ws.send_str(encode({"ack": msg["id"]}))

    def ids(self) -> list[int]:
        return [m["id"] for m in self.got]

    async def close(self) -> None:
        await self.ws.close()
        await asyncio.gather(self.task, return_exceptions=True)


def other_process_store(w: World) -> DccStore:
    """A second connection to the DCC's database, as another process has: what it queues
    the DCC's endpoint is not told of (no notify())."""
    return DccStore(w.tmp / "dcc.db")


def insert_with_id(store: DccStore, mid: int, hub: str, body: dict) -> None:
    """A message row with a chosen id: how an id taken earlier but committed later (another
    worker's transaction on PostgreSQL) looks to the watcher."""
    with store.tx() as c:
        c.execute("INSERT INTO wan_out (id, hub_eui, body, created) VALUES (?, ?, ?, 0)",
                  (mid, hub, json.dumps(dict(body, id=mid), sort_keys=True)))


async def connected(w: World, *hubs: str) -> None:
    await w.until(lambda: all(h in w.http.wan.connected for h in hubs), "hubs connected")


def test_message_from_another_process_reaches_a_connected_hub(tmp_path):
    """Queued by another connection, without notify(): the watcher finds it; the hub's own
    connection never polls (resweep of an hour), so only the watcher can have sent it."""
    async def body(w: World):
        w.http.wan.resweep = 3600.0
        a = FakeHub(w.session, w.url, HUB_A)
        b = FakeHub(w.session, w.url, HUB_B)
        await a.connect()
        await b.connect()
        await connected(w, HUB_A, HUB_B)
        other = other_process_store(w)
        try:
            mid = other.wan_queue(bytes.fromhex(HUB_A), {"type": "read_version",
                                                        "request": "r1", "device": HUB_A})
            await w.until(lambda: mid in a.ids(), "hub A got the message")
            assert b.got == []
            # and it was acknowledged in the DCC's database
            await w.until(lambda: other.wan_outbox(bytes.fromhex(HUB_A)) == [], "acked")
            # a second one, later, also arrives (the watermark moved on)
            mid2 = other.wan_queue(bytes.fromhex(HUB_A), {"type": "read_version",
                                                         "request": "r2", "device": HUB_A})
            await w.until(lambda: mid2 in a.ids(), "hub A got the second message")
            assert a.ids() == [mid, mid2] and b.got == []
        finally:
            other.close()
            await a.close()
            await b.close()
    run(tmp_path, body)


def test_an_id_committed_out_of_order_is_still_delivered(tmp_path):
    """Id n+2 commits first (the watermark passes n+1), then n+1: the watcher still delivers
    n+1 (it keeps looking for the gap), without the hub reconnecting."""
    async def body(w: World):
        w.http.wan.resweep = 3600.0
        a = FakeHub(w.session, w.url, HUB_A)
        await a.connect()
        await connected(w, HUB_A)
        other = other_process_store(w)
        try:
            first = other.wan_queue(bytes.fromhex(HUB_A), {"type": "read_version",
                                                          "request": "r1", "device": HUB_A})
            await w.until(lambda: first in a.ids(), "the first message")
            insert_with_id(other, first + 2, HUB_A, {"type": "read_version", "request": "r3",
                                                     "device": HUB_A})
            await w.until(lambda: first + 2 in a.ids(), "the later id")
            assert first + 1 in w.http.wan._gaps  # the watcher knows it is missing
            insert_with_id(other, first + 1, HUB_A, {"type": "read_version", "request": "r2",
                                                     "device": HUB_A})
            await w.until(lambda: first + 1 in a.ids(), "the id committed out of order")
            assert sorted(a.ids()) == [first, first + 1, first + 2]
            assert w.http.wan._gaps == {}
            await w.until(lambda: other.wan_outbox(bytes.fromhex(HUB_A)) == [], "all acked")
        finally:
            other.close()
            await a.close()
    run(tmp_path, body)


def test_watcher_wakes_only_hubs_with_new_messages(tmp_path):
    """One watcher pass: the hubs with a message above what their connection sent are
    woken, the others not; a gap given up after gap_wait is forgotten."""
    async def body(w: World):
        wan = w.http.wan
        wan.resweep = 3600.0
        a = FakeHub(w.session, w.url, HUB_A)
        b = FakeHub(w.session, w.url, HUB_B)
        await a.connect()
        await b.connect()
        await connected(w, HUB_A, HUB_B)
        wan._watcher.cancel()  # the passes below are this test's own
        await asyncio.gather(wan._watcher, return_exceptions=True)
        other = other_process_store(w)
        try:
            mid = other.wan_queue(bytes.fromhex(HUB_B), {"type": "read_version",
                                                        "request": "r1", "device": HUB_B})
            assert wan.watch_once(now=0.0) == {HUB_B}
            await w.until(lambda: mid in b.ids(), "hub B got it")
            assert wan.watch_once(now=0.0) == set()  # nothing new
            insert_with_id(other, mid + 5, HUB_A, {"type": "read_version", "request": "r2",
                                                   "device": HUB_A})
            assert wan.watch_once(now=1.0) == {HUB_A}
            assert sorted(wan._gaps) == [mid + 1, mid + 2, mid + 3, mid + 4]
            wan.watch_once(now=1.0 + wan.gap_wait + 1)  # never committed: given up
            assert wan._gaps == {}
            await w.until(lambda: mid + 5 in a.ids(), "hub A got it")
            assert a.ids() == [mid + 5] and b.ids() == [mid]
        finally:
            other.close()
            await a.close()
            await b.close()
    run(tmp_path, body)


def test_quiet_comms_hub_reports_at_once(tmp_path):
    """A Comms Hub whose WAN loops pass on their own only once an hour (the fleet's idle
    setting) and without websocket pings: the 11.4 still crosses the WAN, runs on the HAN,
    and its outcome and alert reach the DCC (woken by the DCC message, the hub's events and
    the queued outbox messages, not by a poll)."""
    async def body(w: World):
        from hanota.hub.hub import Hub
        from support.hubfixtures import fast_options

        w.hub = Hub(w.hub_db, udp=("127.0.0.1", 0), options=fast_options(max_in_flight=2))
        await w.hub.start()
        w.wan = CommsHubWan(w.hub, w.url, poll=0.05, backoff=(0.05, 0.3), quiet=3600.0,
                            heartbeat=None)
        await w.wan.start()
        await asyncio.wait_for(w.wan.connected.wait(), 10)
        await asyncio.sleep(0.3)  # the first passes are over: from now on only wakes
        await w.prenotify(1)
        dev = await w.device(1)
        data = w.image("ppmid", 0x00000002)
        xml = w.request("11.4", duis.DCC_EUI, firmware_image=data, firmware_version="00000002",
                        device_ids=[msb(1)])
        status, ack = await w.post(xml)
        assert (status, ack["code"]) == (200, "I99"), ack
        resp = await w.wait_response(ack["request_id"])
        assert outcome(resp)["Outcome"] == "activated", resp
        assert dev.activated_versions == [2]
        await w.until(lambda: all(r[0] is not None for r in w.hub.db.all(
            "SELECT acked FROM ch_wan_out")), "every CH message acknowledged")
    run(tmp_path, body)


def test_store_wan_new_on_sqlite_and_postgresql(db_target):
    """The watcher's query: every message above the watermark (acknowledged or not, with its
    hub), at most `limit` of them, and the missing ids it is asked for again."""
    with DccStore(db_target) as store:
        top = int(store.one("SELECT coalesce(max(id), 0) FROM wan_out")[0])
        a = store.wan_queue(bytes.fromhex(HUB_A), {"type": "read_version"})
        b = store.wan_queue(bytes.fromhex(HUB_B), {"type": "read_version"})
        c = store.wan_queue(bytes.fromhex(HUB_A), {"type": "read_version"})
        assert store.wan_acked(bytes.fromhex(HUB_A), a)
        assert store.wan_new(top) == [(a, HUB_A, True), (b, HUB_B, False),
                                      (c, HUB_A, False)]
        assert store.wan_new(top, limit=1) == [(a, HUB_A, True)]
        assert store.wan_new(c) == []
        assert store.wan_new(c, also=[b, c + 1000]) == [(b, HUB_B, False)]
