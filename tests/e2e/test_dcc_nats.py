"""The WAN on NATS JetStream and several DCC workers sharing one PostgreSQL database.

Each test starts its own nats-server (JetStream, a loopback port chosen at run time; its
store survives a restart) so that streams and consumers of one test never reach another;
PostgreSQL is the session's server with a fresh database per test (tests/conftest.py). Both
skip, saying why, where the server cannot start.

The DCC's end is `NatsWanDcc` over a real `DccStore`, with a stand-in for the DCC service
that records what the hubs send (the service's DUIS logic has its own tests); the Comms
Hub's end is `NatsCommsHubWan` over a real hub database, carrying messages only (`run`
without `work`: what the hub does with them is the websocket WAN's tests' business).
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from hanota.dcc.store import DccStore
from hanota.hub import HubDB

pytestmark = pytest.mark.timeout(120)

nats = pytest.importorskip("nats", reason="nats-py is not installed")
from hanota.dcc import wan_nats  # noqa: E402
from hanota.dcc.wan import ChStore, eui_hex  # noqa: E402


class FakeDcc:
    """The DCC service's WAN calls, straight onto its store (inbound ids recorded once)."""

    def __init__(self, store: DccStore):
        self.store = store
        self.taken: list[tuple[str, int]] = []

    def wan_acked(self, key: bytes, msg_id: int) -> None:
        self.store.wan_acked(key, msg_id)

    def wan_received(self, key: bytes, msg: dict) -> None:
        if self.store.wan_seen(key, msg["id"], msg):
            self.taken.append((key.hex().upper(), msg["id"]))


@pytest.fixture
def natsd():
    """A nats-server of this test's own (tests/conftest.py's nats_server is the session's)."""
    from support.servers import Nats, running

    yield from running(Nats, "nats-server")


def hub_side(tmp_path, name: str, url: str) -> tuple[wan_nats.NatsCommsHubWan, HubDB, str]:
    db = HubDB.open(tmp_path / (name + ".db"))
    eui = eui_hex(db.current_hub()["eui"])
    wan = wan_nats.NatsCommsHubWan(SimpleNamespace(db=db), url, poll=0.05,
                                   backoff=(0.05, 0.3), resend=2.0, ack_wait=2.0)
    wan.store = ChStore(db)
    return wan, db, eui


async def dcc_worker(dcc: FakeDcc, url: str) -> wan_nats.NatsWanDcc:
    """The DCC's end, started and connected to the broker at `url`."""
    worker = wan_nats.NatsWanDcc(dcc, url, poll=0.05, ack_wait=2.0)
    await worker.start()
    await worker.wait_connected()
    return worker


async def stop_both(wan: wan_nats.NatsCommsHubWan, task: asyncio.Task,
                    worker: wan_nats.NatsWanDcc) -> None:
    """Stop the hub's end (`task` runs its `run`) and the DCC's worker."""
    wan._stopping = True
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await worker.stop()


async def acked_then_stop(store: DccStore, hub: str, wan: wan_nats.NatsCommsHubWan,
                          task: asyncio.Task, worker: wan_nats.NatsWanDcc,
                          timeout: float) -> None:
    """Wait until both ends' outboxes are empty (every message acknowledged), then (also on
    a timeout) `stop_both`."""
    try:
        await until(lambda: not store.wan_outbox(hub), timeout, "every message acknowledged")
        await until(lambda: not wan.store.outbox(), timeout, "the hub's messages acknowledged")
    finally:
        await stop_both(wan, task, worker)


async def until(cond, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("timed out waiting for " + what)
        await asyncio.sleep(0.05)


async def stream_messages(url: str, subject: str) -> list[tuple[str, dict]]:
    """Every message the stream holds on `subject` (wildcards allowed), in stream order, as
    (subject, body), read with an ephemeral consumer."""
    nc, js = await wan_nats.connect(url, "test-reader")
    try:
        sub = await js.pull_subscribe(subject, stream=wan_nats.STREAM)
        out: list[tuple[str, dict]] = []
        while True:
            try:
                msgs = await sub.fetch(1000, timeout=0.5)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                break
            for m in msgs:
                out.append((m.subject, json.loads(m.data)))
                await m.ack()
        return out
    finally:
        await nc.close()


async def stream_bodies(url: str, subject: str) -> list[dict]:
    return [b for _, b in await stream_messages(url, subject)]


def down_ids(bodies: list[dict]) -> list[int]:
    return [b["id"] for b in bodies if "id" in b]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_hub_offline_during_a_burst_gets_everything(backend, natsd, tmp_path, request):
    """The DCC publishes a burst while the Comms Hub is off; when it comes back it receives
    every message once, in order, the DCC sees every one acknowledged, and the hub's own
    messages reach the DCC once each."""
    target = request.getfixturevalue("pg_uri") if backend == "postgresql" \
        else tmp_path / "dcc.db"
    store = DccStore(target)
    dcc = FakeDcc(store)
    wan, db, hub = hub_side(tmp_path, "hub", natsd.url)

    async def main():
        worker = await dcc_worker(dcc, natsd.url)
        ids = [store.wan_queue(hub, {"type": "read_version", "request": "r%d" % i,
                                     "device": "00DB123456789001"}) for i in range(60)]
        worker.notify()
        await until(lambda: worker.published == len(ids), 20, "the burst published")
        assert store.wan_outbox(hub) and len(store.wan_outbox(hub)) == len(ids)  # none acked
        for i in range(5):  # what the hub has to say, queued while it was off
            wan.store.queue({"type": "alert", "alert": "activation", "request": None,
                             "device": "00DB123456789001", "detail": {"n": i}})
        task = asyncio.get_running_loop().create_task(wan.run())  # the hub comes back
        await acked_then_stop(store, hub, wan, task, worker, 30)
        got = [r[0] for r in db.all("SELECT id FROM ch_wan_in ORDER BY rowid")]
        assert got == ids  # each once, in the order the DCC queued them
        assert sorted(i for h, i in dcc.taken if h == hub) == [1, 2, 3, 4, 5]
        assert len(dcc.taken) == 5
        bodies = await stream_bodies(natsd.url, wan_nats.DOWN % hub)
        assert down_ids(bodies) == ids  # the broker holds each message once

    asyncio.run(main())
    store.close()
    db.close()


def test_nats_restarted_mid_run_loses_nothing(natsd, tmp_path, pg_uri):
    """nats-server killed (SIGKILL) in the middle of a run and started again on the same
    store: both directions go on, nothing is lost and nothing is taken twice."""
    store = DccStore(pg_uri)
    dcc = FakeDcc(store)
    wan, db, hub = hub_side(tmp_path, "hub", natsd.url)

    async def main():
        worker = await dcc_worker(dcc, natsd.url)
        task = asyncio.get_running_loop().create_task(wan.run())
        await until(wan.connected.is_set, 10, "the hub's WAN up")
        ids = [store.wan_queue(hub, {"type": "read_version", "request": "a%d" % i,
                                     "device": "00DB123456789001"}) for i in range(30)]
        worker.notify()
        await until(lambda: len(store.wan_outbox(hub)) < 30, 20, "the first messages taken")
        natsd.kill()
        ids += [store.wan_queue(hub, {"type": "read_version", "request": "b%d" % i,
                                      "device": "00DB123456789001"}) for i in range(30)]
        for i in range(10):
            wan.store.queue({"type": "alert", "alert": "activation", "request": None,
                             "device": "00DB123456789001", "detail": {"n": i}})
        await asyncio.sleep(1.0)  # both ends find the broker gone
        natsd.start()
        await acked_then_stop(store, hub, wan, task, worker, 40)
        got = [r[0] for r in db.all("SELECT id FROM ch_wan_in ORDER BY id")]
        assert got == ids
        assert sorted(i for _, i in dcc.taken) == list(range(1, 11))

    asyncio.run(main())
    store.close()
    db.close()


# ---------------------------------------------------------------- hubs sharing a connection

def pooled_hub(tmp_path, name: str, pool: wan_nats.NatsPool) -> tuple[
        wan_nats.NatsCommsHubWan, HubDB, str]:
    """A hub's end on the connection of `pool` (as `hanota fleet sim` runs them)."""
    db = HubDB.open(tmp_path / (name + ".db"))
    eui = eui_hex(db.current_hub()["eui"])
    return pooled_wan(db, pool), db, eui


def pooled_wan(db: HubDB, pool: wan_nats.NatsPool) -> wan_nats.NatsCommsHubWan:
    wan = wan_nats.NatsCommsHubWan(SimpleNamespace(db=db), pool=pool, poll=0.05,
                                   backoff=(0.05, 0.3), resend=1.0, ack_wait=2.0)
    wan.store = ChStore(db)
    return wan


def queue_reads(store: DccStore, hub: str, tag: str, n: int) -> list[int]:
    return [store.wan_queue(hub, {"type": "read_version", "request": "%s%d" % (tag, i),
                                  "device": "00DB123456789001"}) for i in range(n)]


def queue_alerts(wan: wan_nats.NatsCommsHubWan, n: int) -> None:
    for i in range(n):
        wan.store.queue({"type": "alert", "alert": "activation", "request": None,
                         "device": "00DB123456789001", "detail": {"n": i}})


def taken_in(db: HubDB) -> list[int]:
    return [r[0] for r in db.all("SELECT id FROM ch_wan_in ORDER BY rowid")]


async def all_acked(store: DccStore, hubs: list[tuple[wan_nats.NatsCommsHubWan, str]],
                    timeout: float) -> None:
    for wan, hub in hubs:
        await until(lambda: not store.wan_outbox(hub), timeout, "hub %s acked all" % hub)
        await until(lambda: not wan.store.outbox(), timeout, "hub %s's acked" % hub)


async def stop_all(wans: list[wan_nats.NatsCommsHubWan], pool: wan_nats.NatsPool,
                   worker: wan_nats.NatsWanDcc) -> None:
    await asyncio.gather(*(w.stop() for w in wans))
    await pool.close()
    await worker.stop()


def test_two_hubs_on_one_connection_get_only_their_own(natsd, tmp_path):
    """Two Comms Hubs share one NATS connection (`NatsPool`): each one's consumer pushes to
    its own subscription, so each stores exactly its own messages, in order, and the DCC
    takes each hub's messages once, under that hub."""
    store = DccStore(tmp_path / "dcc.db")
    dcc = FakeDcc(store)

    async def main():
        pool = wan_nats.NatsPool(natsd.url)
        (a, db_a, hub_a), (b, db_b, hub_b) = (pooled_hub(tmp_path, n, pool) for n in "ab")
        worker = await dcc_worker(dcc, natsd.url)
        try:
            for w in (a, b):
                w._tasks = [asyncio.get_running_loop().create_task(w.run())]
            await until(lambda: a.connected.is_set() and b.connected.is_set(), 10,
                        "both hubs on the WAN")
            ids_a, ids_b = queue_reads(store, hub_a, "a", 12), queue_reads(store, hub_b, "b", 7)
            queue_alerts(a, 3)
            queue_alerts(b, 2)
            worker.notify()
            await all_acked(store, [(a, hub_a), (b, hub_b)], 20)
            assert taken_in(db_a) == ids_a and taken_in(db_b) == ids_b
            assert sorted(i for h, i in dcc.taken if h == hub_a) == [1, 2, 3]
            assert sorted(i for h, i in dcc.taken if h == hub_b) == [1, 2]
            assert len(dcc.taken) == 5
            assert pool.nc is not None and a.pool is b.pool  # one connection for both
            for hub in (hub_a, hub_b):  # each its own push consumer, bound
                info = await pool.js.consumer_info(wan_nats.STREAM, "ch-" + hub)
                assert info.config.deliver_subject == wan_nats.DELIVER % hub
                assert info.config.filter_subject == wan_nats.DOWN % hub
                assert info.push_bound
        finally:
            await stop_all([a, b], pool, worker)
        db_a.close()
        db_b.close()

    asyncio.run(main())
    store.close()


def test_hub_offline_on_a_shared_connection_gets_what_it_missed(natsd, tmp_path):
    """Hub A stops while hub B stays on the shared connection; the DCC sends to both: B gets
    its messages at once, A's wait in the broker, and when A comes back (a new WAN over
    the same database and connection) it gets each of them once, in order."""
    store = DccStore(tmp_path / "dcc.db")
    dcc = FakeDcc(store)

    async def main():
        pool = wan_nats.NatsPool(natsd.url)
        (a, db_a, hub_a), (b, db_b, hub_b) = (pooled_hub(tmp_path, n, pool) for n in "ab")
        worker = await dcc_worker(dcc, natsd.url)
        wans = [a, b]
        try:
            for w in (a, b):
                w._tasks = [asyncio.get_running_loop().create_task(w.run())]
            await until(lambda: a.connected.is_set() and b.connected.is_set(), 10,
                        "both hubs on the WAN")
            first = queue_reads(store, hub_a, "x", 3)
            worker.notify()
            await until(lambda: taken_in(db_a) == first, 10, "A's first messages")
            await a.stop()  # A goes offline
            missed = queue_reads(store, hub_a, "m", 20)
            ids_b = queue_reads(store, hub_b, "b", 5)
            worker.notify()
            await until(lambda: not store.wan_outbox(hub_b), 10, "B's messages acked")
            assert taken_in(db_b) == ids_b
            await until(lambda: worker.published == 28, 10, "A's messages in the broker")
            await asyncio.sleep(0.5)
            assert taken_in(db_a) == first  # nothing reached A while it was off
            assert len(store.wan_outbox(hub_a)) == 20
            back = pooled_wan(db_a, pool)  # A comes back
            wans.append(back)
            back._tasks = [asyncio.get_running_loop().create_task(back.run())]
            await all_acked(store, [(back, hub_a), (b, hub_b)], 20)
            assert taken_in(db_a) == first + missed
            bodies = await stream_bodies(natsd.url, wan_nats.DOWN % hub_a)
            assert down_ids(bodies) == first + missed  # the broker holds each once
        finally:
            await stop_all(wans, pool, worker)
        db_a.close()
        db_b.close()

    asyncio.run(main())
    store.close()


def test_nats_restart_with_hubs_on_a_shared_connection(natsd, tmp_path):
    """nats-server SIGKILLed and started again while three hubs share one connection: the
    connection reconnects, every hub's consumer resumes without the hub setting up its
    session again, and every message in both directions arrives, none taken twice."""
    store = DccStore(tmp_path / "dcc.db")
    dcc = FakeDcc(store)

    async def main():
        pool = wan_nats.NatsPool(natsd.url)
        hubs = [pooled_hub(tmp_path, n, pool) for n in "abc"]
        wans = [w for w, _, _ in hubs]
        worker = await dcc_worker(dcc, natsd.url)
        try:
            for w in wans:
                w._tasks = [asyncio.get_running_loop().create_task(w.run())]
            await until(lambda: all(w.connected.is_set() for w in wans), 10,
                        "the hubs on the WAN")
            ids = {hub: queue_reads(store, hub, "a", 10) for _, _, hub in hubs}
            worker.notify()
            await until(lambda: sum(len(taken_in(db)) for _, db, _ in hubs) >= 5, 20,
                        "the first messages taken")
            natsd.kill()
            await until(lambda: not any(w.connected.is_set() for w in wans), 10,
                        "the hubs see the broker gone")
            for w, _, hub in hubs:
                ids[hub] += queue_reads(store, hub, "b", 10)
                queue_alerts(w, 4)
            worker.notify()
            await asyncio.sleep(1.0)
            natsd.start()
            await until(lambda: all(w.connected.is_set() for w in wans), 20,
                        "the hubs back on the WAN")
            await all_acked(store, [(w, hub) for w, _, hub in hubs], 40)
            for _, db, hub in hubs:
                assert taken_in(db) == ids[hub]
                assert sorted(i for h, i in dcc.taken if h == hub) == [1, 2, 3, 4]
            assert len(dcc.taken) == 12
            assert pool.reconnects >= 1
            assert [w.connections for w in wans] == [1, 1, 1]  # resumed, not set up again
        finally:
            await stop_all(wans, pool, worker)
        for _, db, _ in hubs:
            db.close()

    asyncio.run(main())
    store.close()


def test_a_pull_consumer_from_before_is_replaced_at_its_ack_floor(natsd, tmp_path):
    """A hub whose durable consumer is still the pull consumer of an earlier hanota (2 of
    its 5 messages taken and acknowledged): the push consumer that replaces it delivers the
    other 3, and nothing acknowledged before comes again."""
    store = DccStore(tmp_path / "dcc.db")
    dcc = FakeDcc(store)
    db = HubDB.open(tmp_path / "hub.db")
    hub = eui_hex(db.current_hub()["eui"])

    async def main():
        worker = await dcc_worker(dcc, natsd.url)
        nc, js = await wan_nats.connect(natsd.url, "old-hub")
        pool = wan_nats.NatsPool(natsd.url)
        wan = None
        try:
            durable = "ch-" + hub
            sub = await js.pull_subscribe(wan_nats.DOWN % hub, durable=durable,
                                          stream=wan_nats.STREAM,
                                          config=wan_nats._consumer_config(
                                              durable, wan_nats.DOWN % hub, 2.0))
            ids = queue_reads(store, hub, "r", 5)
            worker.notify()
            await until(lambda: worker.published == 5, 10, "the messages in the broker")
            for m in await sub.fetch(2, timeout=5):
                await m.ack()
            await nc.flush()
            await nc.close()
            wan = pooled_wan(db, pool)
            wan._tasks = [asyncio.get_running_loop().create_task(wan.run())]
            await until(lambda: taken_in(db) == ids[2:], 20, "the unacknowledged three")
            await asyncio.sleep(0.5)
            assert taken_in(db) == ids[2:]
            info = await pool.js.consumer_info(wan_nats.STREAM, durable)
            assert info.config.deliver_subject == wan_nats.DELIVER % hub
        finally:
            await stop_all([wan] if wan else [], pool, worker)

    asyncio.run(main())
    store.close()
    db.close()


def test_more_hubs_than_the_brokers_default_consumer_limit(natsd):
    """nats-server 2.15 allows a stream 1,000 consumers unless it says otherwise; a stream
    made without a limit (as an earlier hanota did) gets hanota's when a client connects, and
    1,100 Comms Hubs each get their own consumer."""
    from nats.js.api import RetentionPolicy, StorageType, StreamConfig

    async def main():
        old = await nats.connect(natsd.url)
        await old.jetstream().add_stream(StreamConfig(
            name=wan_nats.STREAM, subjects=[wan_nats.SUBJECTS], storage=StorageType.FILE,
            retention=RetentionPolicy.LIMITS))
        await old.close()
        pool = wan_nats.NatsPool(natsd.url)
        try:
            _, js = await pool.connection()
            info = await js.stream_info(wan_nats.STREAM)
            assert info.config.max_consumers == wan_nats.MAX_CONSUMERS
            hubs = ["00DB%012X" % i for i in range(1100)]
            await asyncio.gather(*(pool.ensure_consumer(h, 2.0) for h in hubs))
            info = await js.stream_info(wan_nats.STREAM)
            assert info.state.consumer_count == 1100
        finally:
            await pool.close()

    asyncio.run(main())


def test_leases_split_hubs_between_workers_and_expire(pg_uri):
    """Two workers claim disjoint Comms Hubs; a worker's claims are its own until its lease
    runs out, then another worker takes them over."""
    now = [1000.0]
    a = DccStore(pg_uri, clock=lambda: now[0])
    b = DccStore(pg_uri, clock=lambda: now[0])
    hubs = ["00DB0000000000%02X" % i for i in range(6)]
    for h in hubs:
        a.wan_queue(h, {"type": "read_version", "request": None, "device": None})
    got_a = a.wan_claim_hubs("A", lease=10.0, limit=3)
    got_b = b.wan_claim_hubs("B", lease=10.0, limit=10)
    assert len(got_a) == 3 and set(got_a).isdisjoint(got_b) and set(got_a) | set(got_b) \
        == set(hubs)
    assert set(b.wan_claim_hubs("B", lease=10.0)) == set(got_b)  # B renews its own only
    now[0] += 5.0
    assert set(a.wan_claim_hubs("A", lease=10.0)) == set(got_a)  # A's are still A's
    now[0] += 11.0  # A died: its leases run out
    assert set(b.wan_claim_hubs("B", lease=10.0)) == set(hubs)
    assert a.wan_claim_hubs("A", lease=10.0) == []  # B holds them now
    a.close()
    b.close()


WORKER = r"""
import asyncio, sys
sys.path.insert(0, sys.argv[4])
from hanota.dcc.store import DccStore
from hanota.dcc import wan_nats
from test_dcc_nats import FakeDcc

async def main():
    w = wan_nats.NatsWanDcc(FakeDcc(DccStore(sys.argv[1])), sys.argv[2], worker=sys.argv[3],
                            lease=1.5, poll=0.05, batch=4)
    await w.start()
    await asyncio.Event().wait()

asyncio.run(main())
"""


def test_two_workers_share_the_outbox_and_one_is_killed(natsd, pg_uri, tmp_path):
    """Two `NatsWanDcc` worker processes on one PostgreSQL database publish 24 hubs' messages;
    worker A is SIGKILLed half-way; B takes A's hubs over when their leases run out. Every
    message is published, the broker holds each exactly once and each hub's in id order."""
    store = DccStore(pg_uri)
    hubs = ["00DB00000000A0%02X" % i for i in range(24)]
    ids: dict[str, list[int]] = {h: [] for h in hubs}
    for n in range(25):
        for h in hubs:
            ids[h].append(store.wan_queue(h, {"type": "read_version", "request": "r%d" % n,
                                              "device": None}))
    total = sum(len(v) for v in ids.values())
    here = os.path.dirname(__file__)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [here, os.path.join(here, ".."), os.environ.get("PYTHONPATH", "")]))
    def start(name: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", WORKER, pg_uri, natsd.url, name, here],
                                env=env)

    def held_by(name: str) -> int:
        return store.one("SELECT count(*) FROM wan_leases WHERE worker = ?", (name,))[0]

    procs = {"A": start("A")}
    try:
        def published() -> int:
            return store.one("SELECT count(*) FROM wan_out WHERE published IS NOT NULL")[0]

        # B once A holds hubs (on a busy machine B could otherwise take them all first)
        end = time.monotonic() + 30
        while not held_by("A"):
            assert time.monotonic() < end, "worker A claimed no hub in 30 s"
            time.sleep(0.02)
        procs["B"] = start("B")
        end = time.monotonic() + 30
        while published() < total // 3:
            assert time.monotonic() < end, "the workers published %d of %d" % (
                published(), total)
            time.sleep(0.02)
        held = held_by("A")
        procs["A"].send_signal(signal.SIGKILL)
        procs["A"].wait(10)
        assert held > 0, "worker A held no hub when it was killed"
        end = time.monotonic() + 40
        while published() < total:
            assert time.monotonic() < end, "B finished %d of %d" % (published(), total)
            time.sleep(0.05)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
                p.wait(10)

    async def check():
        held: dict[str, list[int]] = {h: [] for h in hubs}
        for subject, body in await stream_messages(natsd.url, wan_nats.DOWN % "*"):
            held[subject.split(".")[2]].append(body["id"])
        for h in hubs:
            assert held[h] == ids[h], "hub %s: %s" % (h, held[h])

    asyncio.run(check())
    store.close()


def test_two_workers_push_each_response_once(pg_uri):
    """Two DCC HTTP workers on one PostgreSQL database push a subscribed User's responses:
    the User's lease keeps them to one worker, so each arrives once and in order."""
    from aiohttp import web

    from hanota.dcc.http import DccHttp
    from support.dccworld import serve_one

    user = "90B3D51F30010000"
    store = DccStore(pg_uri)
    for i in range(20):
        store.queue_response(user, b"<r%d/>" % i, "I0")
    got: list[int] = []

    async def main():
        async def take(request):
            got.append(int(request.headers["X-Hanota-Seq"]))
            return web.Response(text="ok")

        runner, port = await serve_one("POST", "/in", take)
        workers = []
        for name in ("A", "B"):
            s = DccStore(pg_uri)
            dcc = SimpleNamespace(store=s, responses=s.responses)
            w = DccHttp(dcc, push_poll=0.02, worker=name)
            workers.append((w, s))
        try:
            for w, _ in workers:
                await w.start("127.0.0.1", 0)
            async with __import__("aiohttp").ClientSession() as session:
                async with session.post("http://%s:%d/api/v1/subscribe" % workers[1][0].address,
                                        json={"user": user, "url": "http://127.0.0.1:%d/in"
                                              % port}) as r:
                    assert r.status == 200, await r.text()
            await until(lambda: len(got) >= 20, 20, "20 responses pushed")
            await asyncio.sleep(0.5)  # time for a second worker's copy, were there one
        finally:
            for w, s in workers:
                await w.stop()
                s.close()
            await runner.cleanup()
        seqs = [seq for seq, _ in store.responses(user)]
        assert got == seqs
        assert sum(w.pushed for w, _ in workers) == 20

    asyncio.run(main())
    store.close()


def test_commands_two_dcc_workers_postgresql_and_nats(tmp_path, pg_uri, natsd):
    """`hanota dcc serve --db postgresql://... --wan nats://...` twice (two workers, one
    database) and `hanota hub serve --wan nats://...`: a pre-notification POSTed to one
    worker reaches the Comms Hub through NATS (the hub registers the device), and a read the
    hub must refuse, POSTed to the other worker, comes back as its one signed final response
    (fetched from the first); both workers and the hub stop cleanly on SIGTERM."""
    from hanota.dcc import xmlsig
    from support.dccworld import (MPAN, World, dcc_serve, duis_send, kill_commands, msb,
                                  start_command, stop_commands)
    from support.fakedevice import install_code

    w = World(tmp_path)
    w.store.close()
    with DccStore(pg_uri) as store:
        store.add_premises(MPAN, [w.user], w.hub_eui)
        store.add_device(msb(12), "PPMID", MPAN)
    env = dict(os.environ, HANOTA_HOME=str(tmp_path / "home"))
    procs = []
    urls = []
    try:
        for name in ("a", "b"):
            p, url = dcc_serve(["--db", pg_uri, "--pki", str(w.pki_dir), "--listen",
                                "127.0.0.1:0", "--wan", natsd.url, "--worker", name],
                               tmp_path / ("dcc-%s.log" % name), env)
            procs.append(p)
            urls.append(url)
        procs.append(start_command(["hub", "serve", "--wan", natsd.url, "--db", w.hub_db,
                                    "--udp", "127.0.0.1:0"], tmp_path / "hub.log",
                                   "serving on udp", env))

        def send(name: str, xml: bytes, url: str, *extra: str) -> subprocess.CompletedProcess:
            return duis_send(tmp_path, env, url, name, xml, *extra)

        r = send("12.2.xml", w.prenotification(msb(11), install_code(11)), urls[0])
        assert r.returncode == 0 and r.stdout.startswith("I0 "), (r.stdout, r.stderr)
        r = send("11.2.xml", w.request("11.2", msb(12)), urls[1], "--wait", "40", "-o",
                 str(tmp_path / "final.xml"))
        lines = r.stdout.splitlines()
        assert r.returncode == 1 and lines[0].startswith("I99 "), (r.stdout, r.stderr)
        assert "not_authorized" in lines[1], r.stdout
        xmlsig.verify((tmp_path / "final.xml").read_bytes(), w.dcc_cert)
        from hanota.hub import registry as reg
        from support.hubfixtures import eui_str
        with HubDB.open(w.hub_db) as db:  # the pre-notification reached the hub
            assert reg.device(db, eui_str(11)) is not None
        with DccStore(pg_uri) as store:
            end = time.monotonic() + 10
            while store.wan_outbox(w.hub_eui):  # every DCC message acknowledged
                assert time.monotonic() < end, store.wan_outbox(w.hub_eui)
                time.sleep(0.1)
            rows = store.all("SELECT outcome FROM requests WHERE srv = '11.2'")
            assert [r[0] for r in rows] == ["not_authorized"]
            assert store.one("SELECT count(*) FROM wan_out WHERE published IS NULL")[0] == 0
        stop_commands(procs)
    finally:
        kill_commands(procs)


def test_store_survives_a_postgresql_restart(postgres_server, pg_uri):
    """PostgreSQL SIGKILLed and started again: while it is down the store says so (a
    DccStoreError naming the database, not a driver traceback) and writes nothing half;
    after, the same DccStore object goes on with everything committed before kept."""
    from hanota.dcc.store import DccStoreError

    store = DccStore(pg_uri)
    hub = "00DB0000000000F1"
    first = store.wan_queue(hub, {"type": "read_version", "request": None, "device": None})
    postgres_server.kill()
    try:
        with pytest.raises(DccStoreError, match="DCC database postgresql://"):
            store.wan_queue(hub, {"type": "read_version", "request": None, "device": None})
        with pytest.raises(DccStoreError, match="DCC database postgresql://"):
            store.wan_outbox(hub)
    finally:
        postgres_server.start()
    second = store.wan_queue(hub, {"type": "read_version", "request": None, "device": None})
    assert [m["id"] for m in store.wan_outbox(hub)] == [first, second]
    assert store.take_counter("90B3D51F30010000", 5)
    store.close()


def test_report_dcc_db_on_postgresql(tmp_path, pg_uri):
    """`hanota report --dcc-db postgresql://...` reads the DUIS view from PostgreSQL as from
    SQLite: the same requests and responses, in the same order."""
    from click.testing import CliRunner

    from hanota.cli import cli
    from hanota.hub import report as rep

    views = []
    for target in (tmp_path / "dcc.db", pg_uri):
        with DccStore(target, clock=lambda: 1700000000.0) as s:
            s.add_premises("MPAN-1", ["90B3D51F3001A001"], "00DB1234567800C1")
            rid = s.add_request("90-B3-D5-1F-30-01-A0-01:00-DB-12-34-56-78-90-01:1001",
                                "90B3D51F3001A001", 1001, "11.2", device="00DB123456789001")
            s.queue_response("90B3D51F3001A001", b"<ok/>", "I0", request=rid, final=True)
            s.finish_request(rid, "version_read", "I0")
            s.add_request("90-B3-D5-1F-30-01-A0-01:00-DB-12-34-56-78-90-01:1002",
                          "90B3D51F3001A001", 1002, "11.2", device="00DB123456789001",
                          outcome="refused", code="E4", reason="not responsible")
            views.append(rep.duis_data(s))
    assert views[0] == views[1] and len(views[0]["requests"]) == 2
    HubDB.open(tmp_path / "hub.db").close()
    r = CliRunner().invoke(cli, ["report", "--db", str(tmp_path / "hub.db"), "--dcc-db",
                                 pg_uri, "--json"])
    assert r.exit_code == 0, r.output
    assert [q["code"] for q in json.loads(r.output)["duis"]["requests"]] == ["I0", "E4"]


# ---------------------------------------------------------------- the whole service over NATS

def _nats_world(tmp_path, nats_url: str):
    """support.dccworld's World (a DCC, a Comms Hub with fake HAN devices, a Supplier) with the
    WAN on NATS: the DCC's HTTP server runs a `NatsWanDcc`, the hub a `NatsCommsHubWan`."""
    from support.dccworld import World

    class NatsWorld(World):
        async def start_dcc(self, **kw) -> None:
            await super().start_dcc(wan_url=nats_url, **kw)
            await self.http.nats.wait_connected()

        async def start_wan(self) -> None:
            self.wan = wan_nats.NatsCommsHubWan(self.hub, nats_url, poll=0.05,
                                                backoff=(0.05, 0.3))
            await self.wan.start()
            await asyncio.wait_for(self.wan.connected.wait(), 10)

    return NatsWorld(tmp_path)


def run_over_nats(tmp_path, nats_url: str, body) -> None:
    """`body(world)` in the NATS world with its DCC and Comms Hub started and test device 1
    pre-notified; the world stopped after."""
    async def main():
        w = _nats_world(tmp_path, nats_url)
        try:
            await w.start_dcc()
            await w.start_hub()
            await w.prenotify(1)
            await body(w)
        finally:
            await w.stop()

    asyncio.run(main())


def test_update_firmware_over_nats_end_to_end(tmp_path, natsd):
    """12.2 then a signed 11.4 through a DCC and a Comms Hub whose WAN is NATS: the device is
    upgraded and the Supplier gets the signed I0 response saying it was activated."""
    from support.dccworld import msb, outcome

    from hanota.dcc import duis

    async def body(w):
        dev = await w.device(1)
        data = w.image("ppmid", 0x00000002)
        _, ack = await w.post(w.request("11.4", duis.DCC_EUI, firmware_image=data,
                                        firmware_version="00000002", device_ids=[msb(1)]))
        assert ack["code"] == "I99", ack
        resp = await w.wait_response(ack["request_id"], 60)
        assert resp["code"] == "I0" and outcome(resp)["Outcome"] == "activated", resp
        assert dev.activated_versions == [2]
        await w.until(lambda: not w.store.wan_outbox(w.hub_eui), "DCC messages acked")
    run_over_nats(tmp_path, natsd.url, body)


def test_trust_centre_swap_out_over_nats(tmp_path, natsd):
    """A Trust Centre Swap-Out with the WAN on NATS: the hub's hello under its new identity
    names the one it replaces, the DCC moves the premises, and a request sent after that
    reaches the hub under its new subject."""
    from support.dccworld import MPAN

    from hanota.hub import registry as reg
    from support.hubfixtures import eui_str

    async def body(w):
        old = w.hub_eui
        new = eui_hex(reg.swap_out(w.hub.db)["new"])
        await w.until(lambda: w.store.premises(MPAN)["hub_eui"] == new, "premises moved")
        assert old != new
        await w.prenotify(2)  # a 12.2 after the swap: published on the new subject
        assert reg.device(w.hub.db, eui_str(2)) is not None
        await w.until(lambda: not w.store.wan_outbox(new), "DCC messages acked")
    run_over_nats(tmp_path, natsd.url, body)


def test_an_image_over_max_payload_goes_through_the_object_store(natsd, tmp_path):
    """An update_firmware whose image is larger than the NATS server's max_payload (1 MiB):
    the hub stores the message exactly as the DCC queued it."""
    import base64

    store = DccStore(tmp_path / "dcc.db")
    dcc = FakeDcc(store)
    wan, db, hub = hub_side(tmp_path, "hub", natsd.url)
    image = os.urandom(1536 * 1024)
    msg = {"type": "update_firmware", "request": "r1", "device": "00DB123456789001",
           "kind": "11.4", "at": None, "image_b64": base64.b64encode(image).decode()}

    async def main():
        worker = await dcc_worker(dcc, natsd.url)
        mid = store.wan_queue(hub, msg)
        small = store.wan_queue(hub, {"type": "read_version", "request": "r2",
                                      "device": "00DB123456789001"})
        task = asyncio.get_running_loop().create_task(wan.run())
        try:
            await until(lambda: not store.wan_outbox(hub), 30, "both messages acknowledged")
        finally:
            await stop_both(wan, task, worker)
        rows = db.all("SELECT id, body FROM ch_wan_in ORDER BY id")
        assert [r[0] for r in rows] == [mid, small]
        assert json.loads(rows[0][1]) == dict(msg, id=mid)

    asyncio.run(main())
    store.close()
    db.close()


def test_a_large_image_is_put_in_the_object_store_once_for_every_hub(natsd, tmp_path):
    """An image of OFFLOAD_AT bytes or more goes by the object store although the message
    would fit: the stream's messages to two hubs refer to one object, and each hub stores
    its message exactly as the DCC queued it."""
    import base64
    import hashlib

    store = DccStore(tmp_path / "dcc.db")
    dcc = FakeDcc(store)
    one, db1, hub1 = hub_side(tmp_path, "hub1", natsd.url)
    two, db2, hub2 = hub_side(tmp_path, "hub2", natsd.url)
    image = os.urandom(wan_nats.OFFLOAD_AT + 1000)
    msg = {"type": "update_firmware", "request": "r1", "device": "00DB123456789001",
           "kind": "11.4", "at": None, "image_b64": base64.b64encode(image).decode()}

    async def main():
        worker = await dcc_worker(dcc, natsd.url)
        ids = [store.wan_queue(hub, dict(msg, request="r" + hub)) for hub in (hub1, hub2)]
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(w.run()) for w in (one, two)]
        try:
            await until(lambda: not store.wan_outbox(hub1) and not store.wan_outbox(hub2), 30,
                        "both messages acknowledged")
        finally:
            for w, t in ((one, tasks[0]), (two, tasks[1])):
                w._stopping = True
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await worker.stop()
        for db, hub, mid in ((db1, hub1, ids[0]), (db2, hub2, ids[1])):
            rows = db.all("SELECT id, body FROM ch_wan_in ORDER BY id")
            assert [(r[0], json.loads(r[1])) for r in rows] == \
                [(mid, dict(msg, request="r" + hub, id=mid))]
        sent = [body for _, body in await stream_messages(natsd.url, wan_nats.SUBJECTS)
                if body.get("type") == "update_firmware"]
        name = "sha256-" + hashlib.sha256(image).hexdigest()
        assert len(sent) == 2 and all(b.get("image_obj") == name and "image_b64" not in b
                                      for b in sent), sent
        nc, js = await wan_nats.connect(natsd.url, "test-reader")
        try:
            obs = await wan_nats.image_store(js)
            assert (await obs.get(name)).data == image
        finally:
            await nc.close()

    asyncio.run(main())
    store.close()
    db1.close()
    db2.close()


def test_an_undecodable_message_is_delivered_again_before_it_is_dropped():
    """A frame that does not decode (e.g. cut short when a slow connection was dropped
    mid-read) is nak'ed for a redelivery, JetStream holding it whole; only after
    BAD_FRAME_TRIES deliveries that all failed is it terminated."""
    class Msg:
        def __init__(self, n: int):
            self.metadata = SimpleNamespace(num_delivered=n)
            self.did: list = []

        async def nak(self, delay=None):
            self.did.append(("nak", delay))

        async def term(self):
            self.did.append(("term",))

    async def main():
        out = []
        for n in range(1, wan_nats.BAD_FRAME_TRIES + 2):
            m = Msg(n)
            await wan_nats.undecodable(m, "test", ValueError("cut short"))
            out.append(m.did)
        return out

    did = asyncio.run(main())
    assert did[:wan_nats.BAD_FRAME_TRIES - 1] == [[("nak", 2.0)]] * (wan_nats.BAD_FRAME_TRIES - 1)
    assert did[wan_nats.BAD_FRAME_TRIES - 1:] == [[("term",)], [("term",)]]


def test_a_redelivery_of_a_message_already_answered_costs_no_round_trip(tmp_path):
    """After a broker restart a process's hubs are sent their unacknowledged messages all at
    once, and what waits for a handling slot longer than ack_wait comes again. A copy of a
    DCC message the hub has stored and answered is acknowledged at once, without a slot and
    without publishing again; a new message, or one whose answer did not reach the broker,
    waits for a slot and is answered."""
    import nats.errors

    wan, db, hub = hub_side(tmp_path, "a", "nats://127.0.0.1:9")

    class Js:
        def __init__(self):
            self.published: list[tuple[str, dict]] = []
            self.fail = False

        async def publish(self, subject, payload, headers=None):
            if self.fail:
                raise nats.errors.TimeoutError()
            self.published.append((subject, json.loads(payload)))

    class Msg:
        def __init__(self, mid: int):
            self.data = json.dumps({"id": mid, "type": "read", "request": "r%d" % mid}).encode()
            self.did: list[str] = []

        async def ack(self):
            self.did.append("ack")

        async def nak(self, delay=None):
            self.did.append("nak")

    js = Js()
    pool = SimpleNamespace(handling=asyncio.Semaphore(wan_nats.HANDLING))

    async def deliver(m, within=None):
        t = asyncio.ensure_future(wan._deliver(pool, js, hub, m))
        done, _ = await asyncio.wait([t], timeout=within if within is not None else 2.0)
        return t, bool(done)

    async def main():
        first = Msg(7)
        _, done = await deliver(first)
        assert done and first.did == ["ack"]
        assert js.published == [(wan_nats.UP % hub, {"ack": 7})]
        for _ in range(wan_nats.HANDLING):  # every slot busy
            await pool.handling.acquire()
        copy = Msg(7)
        _, done = await deliver(copy, 1.0)
        assert done and copy.did == ["ack"]  # at once, no slot
        assert len(js.published) == 1  # and not answered again
        new = Msg(8)
        t, done = await deliver(new, 0.3)
        assert not done and new.did == []  # a new one waits for a slot
        pool.handling.release()
        await asyncio.wait_for(t, 2.0)
        assert new.did == ["ack"] and js.published[-1] == (wan_nats.UP % hub, {"ack": 8})
        js.fail = True  # stored, but its answer does not reach the broker
        lost = Msg(9)
        await asyncio.wait_for(wan._deliver(pool, js, hub, lost), 2.0)
        assert lost.did == []  # unacknowledged: the broker sends it again
        js.fail = False
        again = Msg(9)
        await pool.handling.acquire()
        t, done = await deliver(again, 0.3)
        assert not done  # not settled: it goes the whole way
        pool.handling.release()
        await asyncio.wait_for(t, 2.0)
        assert again.did == ["ack"] and js.published[-1] == (wan_nats.UP % hub, {"ack": 9})
        assert [m["id"] for m in wan.store.pending_in()] == [7, 8, 9]  # each stored once

    asyncio.run(main())
    db.close()
