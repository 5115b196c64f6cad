"""A hub killed at random points of a campaign and restarted loses nothing and delivers
nothing twice.

`hanota serve` runs as a child process over one database; six devices (five PPMIDs and an
Alt HAN device, images of random sizes) are queued for an update through the CLI and run
their OTA clients on their own, polling Query Next Image as HAN devices do. The hub is
SIGKILLed at K random moments of the campaign and started again on the same database after
a random short pause. A moment is one of: a request leaves the queue (Image Notify), a
download crosses a random offset, a device is about to send its Upgrade End, a device has
just got its Upgrade End Response (the activation is scheduled), the hub has recorded an
Upgrade End but its answer never left, a device reboots into the new image (HELLO), a
device is about to send its Activation Alert, the hub has recorded an Activation Alert but
its answer never left, or a random time after a (re)start. At the end:

- no request is lost: the database holds every request queued, none pending, and each has
  exactly one outcome, the true one (activated);
- nothing is delivered twice: each device downloaded its image once (never going back to
  an earlier offset), had one Upgrade End answered, activated once and sent one Activation
  Alert; the hub recorded one Upgrade End and one outcome per request;
- the restarted hubs never reused a link frame counter (no device dropped a replay);
- `hanota status --json` and `hanota report --json` agree with the devices.

The kill moments are drawn from random.Random(seed) and every assertion names the seed and
the kills made; run a seed again with HANOTA_HUB_KILLS_SEED=<seed>[,<seed>...] (the draws
are the same; the moments they pick depend on how far the campaign has got, so on the
timing of the processes too). CI: 2 seeds x 3 kills; HANOTA_FAULT_FULL=1: 10 seeds x 5.
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections import Counter

import pytest

from hanfw import link as hlink
from hanfw import zcl
from hanota.hub import HubDB
from support import otabuild
from support.fakedevice import install_code
from support.hubfixtures import AgentDevice, build_image, eui_str
from support.servekit import Serve, cli, closing, free_udp_port, serve_log, serves  # noqa: F401

from fault import results

pytestmark = pytest.mark.timeout(150)

if os.environ.get("HANOTA_HUB_KILLS_SEED"):
    SEEDS = [int(s) for s in os.environ["HANOTA_HUB_KILLS_SEED"].split(",")]
else:
    SEEDS = list(range(1, 11)) if results.FULL else [1, 2]
KILLS = 5 if results.FULL else 3
ROLES = ["ppmid"] * 5 + ["althan"]
BLOCK = 64  # the hub's block cap (the devices ask for 64 bytes too)


class Campaign:
    """The hub, the devices, their requests (read from the database) and the kills."""

    def __init__(self, serve: Serve, db: HubDB, devs: list[AgentDevice], sizes: dict):
        self.serve = serve
        self.db = db
        self.devs = devs
        self.sizes = sizes  # image size by device number
        self.kills: list[tuple[str, dict]] = []  # (moment, what was under way) of each kill
        self.armed: tuple | None = None  # (device number, point, moment description)
        self.down = False  # the hub was killed and is not started again yet
        for d in devs:
            d.frame = self._before(d, d.frame)
            for name in ("upgrade_end", "alert"):
                setattr(d, name, self._after(d, name, getattr(d, name)))

    def state(self, d: AgentDevice) -> str:
        return self.db.one("SELECT state FROM requests WHERE eui = ?", (eui_str(d.n),))[0]

    def pending(self) -> int:
        return self.db.one("SELECT count(*) FROM requests WHERE outcome IS NULL")[0]

    def kill(self, what: str) -> None:
        self.serve.kill()
        self.down, self.armed = True, None
        self.kills.append((what, self.snapshot()))

    def snapshot(self) -> dict:
        """What was under way at a kill: request states (the hub's committed view) and what
        the devices were doing."""
        states = Counter(self.state(d) for d in self.devs)
        return {"notifying": states["notifying"],
                "downloading": sum(0 < d.offset < self.sizes[d.n] for d in self.devs),
                # Upgrade End sent or on its way, activation scheduled or the device rebooting
                # into the new image, the request not ended yet
                "activating": sum(self.state(d) != "done" and (
                    d.offset >= self.sizes[d.n] or d.downloads > 0) for d in self.devs),
                "done": states["done"]}

    # An armed moment kills the hub exactly before a device sends a frame of an exchange
    # (every frame it sends, retries too, is built here)...
    def _before(self, d: AgentDevice, frame):
        def build(kind, payload, **kw):
            point = None
            if kind == hlink.KIND_HELLO:
                point = "before hello"
            elif kind == hlink.KIND_DATA and kw.get("cluster", zcl.CLUSTER_OTA) == zcl.CLUSTER_OTA:
                fc, mfr, _, cmd, _ = zcl.parse_header(payload)
                if fc & zcl.FC_FRAME_TYPE_MASK == zcl.FC_CLUSTER:
                    if cmd == zcl.CMD_UPGRADE_END and mfr is None:
                        point = "before upgrade_end"
                    elif cmd == zcl.CMD_ACTIVATION_ALERT and mfr is not None:
                        point = "before alert"
            if point is not None:
                self._at(d, point)
            return frame(kind, payload, **kw)
        return build

    # ... or as the answer of an Upgrade End or Activation Alert exchange arrives; for an
    # "answer lost" moment the device then does not get that answer, exactly as if the hub
    # had died after acting on the frame but before its answer left.
    def _after(self, d: AgentDevice, name: str, exchange):
        async def call(*args, **kw):
            answer = await exchange(*args, **kw)
            self._at(d, "after " + name)
            if self._at(d, name + " answer lost"):
                raise TimeoutError("the hub died before its answer left")
            return answer
        return call

    def _at(self, d: AgentDevice, point: str) -> bool:
        a = self.armed
        if a is not None and a[0] == d.n and a[1] == point:
            self.kill(a[2])
            return True
        return False

    def plan(self, rng: random.Random, left: int):
        """Draw the next of the left kill moments: returns (device, polled), where device
        is the one the moment targets (or None) and polled a (description, predicate) the
        test polls, or None when an exchange of the device is armed instead. The target is
        near the moment but has not reached it yet, so that it is still to come, soon (if
        it ends first after all, the test draws another)."""
        live = [d for d in self.devs if self.state(d) != "done"]
        in_slot = [d for d in live if self.state(d) in ("notifying", "downloading")]
        # near their last steps: past half of their download, or activating
        late = [d for d in live if self.state(d) == "activating"
                or d in in_slot and d.offset >= self.sizes[d.n] / 2]
        early = [d for d in live if d not in late and not d.upgrade_ends]
        targets = {
            # the next request in line is promoted (Image Notify) when a slot frees
            "notify": [d for d in live if self.state(d) == "queued"][:1],
            "download": [d for d in in_slot if d.offset < 0.9 * self.sizes[d.n]],
            "before upgrade_end": [d for d in late if not d.upgrade_ends
                                   and self.state(d) != "activating"],
            "after upgrade_end": [d for d in late if not d.upgrade_ends],
            "upgrade_end answer lost": [d for d in late if not d.upgrade_ends],
            "before hello": [d for d in late if not d.activated_versions],
            "before alert": late,
            # the device's request ends there: only while enough devices that are further
            # from their end are left for the kills after this one
            "alert answer lost": [d for d in late if self.state(d) == "activating"
                                  or d.offset >= 0.75 * self.sizes[d.n]]
                                 if len(early) >= left else [],
            # a random time is still within the campaign while a download is not half done
            "time": [d for d in early if d.offset < self.sizes[d.n] / 2],
        }
        kinds = [k for k, t in targets.items() if t]
        if not kinds:  # the campaign's last steps: at once (the hub has just restarted)
            return None, ("at once, in the campaign's last steps", lambda: True)
        kind = rng.choice(kinds)
        if kind == "time":
            delay = rng.uniform(0.0, 0.5)
            end = time.monotonic() + delay
            return None, ("%.2f s after the hub (re)started" % delay,
                          lambda: time.monotonic() >= end)
        d = rng.choice(targets[kind])
        size = self.sizes[d.n]
        if kind == "notify":
            return d, ("device %d's request leaves the queue (Image Notify)" % d.n,
                       lambda: self.state(d) != "queued")
        if kind == "download":
            at = rng.randrange(max(d.offset, BLOCK), min(d.offset + size // 2, int(0.95 * size)))
            return d, ("device %d's download crosses offset %d of %d" % (d.n, at, size),
                       lambda: d.offset >= at)
        self.armed = (d.n, kind, {
            "before upgrade_end": "device %d is about to send Upgrade End",
            "after upgrade_end": "device %d got its Upgrade End Response (activation "
                                 "scheduled)",
            "upgrade_end answer lost": "the hub recorded device %d's Upgrade End, its "
                                       "answer never left",
            "before hello": "device %d rebooted into the new image (HELLO)",
            "before alert": "device %d is about to send its Activation Alert",
            "alert answer lost": "the hub recorded device %d's Activation Alert, its "
                                 "answer never left"}[kind] % d.n)
        return d, None


@pytest.mark.parametrize("seed", SEEDS)
def test_hub_killed_at_random_points_loses_nothing_delivers_nothing_twice(
        seed, tmp_path, serve_log, serves):
    t0 = time.monotonic()
    rng = random.Random(seed)
    key = otabuild.new_key()
    db = str(tmp_path / "hub.db")
    port = free_udp_port()
    ns = list(range(60, 60 + len(ROLES)))
    cli("registry", "set-suppliers", "--premises", "MPAN-7", "--supplier", "SupplierA",
        "--db", db)
    for n, role in zip(ns, ROLES):
        cli("registry", "add-device", "--device", eui_str(n), "--role", role,
            "--install-code", install_code(n), "--premises", "MPAN-7", "--db", db)
        img = str(build_image(tmp_path, key, role, 2, size=rng.randrange(2000, 6000)))
        assert "queued" in cli("request", "update-firmware", "--device", eui_str(n),
                               "--image", img, "--as-supplier", "SupplierA", "--db", db)

    # three transfers at once, so that kills find several under way
    serve = Serve(db, port, serve_log, max_in_flight=3)
    serves.append(serve)
    # devices poll (Query Next Image every 0.5 s) as HAN devices do: a restarted hub learns
    # a device's address only when it next hears from it
    devs = [AgentDevice(n, role=role, pace=0.02, poll=0.5) for n, role in zip(ns, ROLES)]
    hubdb = HubDB.open(db)
    sizes = {n: hubdb.one("SELECT i.size FROM images i JOIN requests r ON r.image = i.sha256 "
                          "WHERE r.eui = ?", (eui_str(n),))[0] for n in ns}
    c = Campaign(serve, hubdb, devs, sizes)

    def ctx() -> str:
        return "seed %d (replay: HANOTA_HUB_KILLS_SEED=%d), kills %s" % (seed, seed, c.kills)

    async def scenario():
        serve.start()
        for d in devs:
            assert await d.start(("127.0.0.1", port)) == hlink.JOIN_OK, ctx()
        while len(c.kills) < KILLS and c.pending():
            target, polled = c.plan(rng, KILLS - len(c.kills))
            deadline = time.monotonic() + 30
            while not c.down:
                if not c.pending():
                    break  # the campaign ended first (asserted below)
                if polled is not None and polled[1]():
                    c.kill(polled[0])
                    break
                if target is not None and c.state(target) == "done":
                    break  # the target ended before its moment came: draw another
                assert time.monotonic() < deadline, "moment not reached: " + ctx()
                await asyncio.sleep(0.01)
            if not c.down:
                c.armed = None
                continue
            # the devices go on meanwhile, retrying what the dead hub left...
            await asyncio.sleep(rng.uniform(0.05, 0.6))
            # ... and wait while it starts again (this loop is busy), so that the next
            # moment is drawn before the new hub hears from any of them
            serve.start()
            c.down = False
        deadline = time.monotonic() + 60
        while c.pending():
            assert time.monotonic() < deadline, "requests still pending: " + ctx()
            await asyncio.sleep(0.1)

    try:
        asyncio.run(asyncio.wait_for(closing(devs, scenario()), 120))
        assert serve.stop() == 0, ctx()
    finally:
        hubdb.close()
    seconds = time.monotonic() - t0

    hubdb = HubDB.open(db)
    rows = hubdb.all("SELECT * FROM requests ORDER BY id")
    events = {r["id"]: Counter(e[0] for e in hubdb.all(
        "SELECT kind FROM events WHERE request_id = ?", (r["id"],))) for r in rows}
    started = hubdb.one("SELECT count(*) FROM events WHERE kind = 'hub_started'")[0]
    hubdb.close()
    kills = len(c.kills)
    lost = len(ns) - sum(r["outcome"] is not None for r in rows)
    twice = sum(d.downloads > 1 or len(d.activated_versions) > 1 for d in devs)
    under_way = Counter(k for _, s in c.kills for k in ("notifying", "downloading",
                                                         "activating") if s[k])
    results.record("hub-kills", "seed %02d" % seed, campaigns=1, kills=kills,
                   requests=len(rows), activated=sum(r["outcome"] == "activated" for r in rows),
                   delivered_twice=twice, lost=lost,
                   **{"kills while notifying": under_way["notifying"],
                      "kills while downloading": under_way["downloading"],
                      "kills while activating": under_way["activating"]},
                   seconds=round(seconds, 1))

    # every planned kill was made, each while the campaign was under way; one hub start per
    # life, all on the same database
    assert kills == KILLS and all(s["done"] < len(ns) for _, s in c.kills), ctx()
    assert started == kills + 1, ctx()
    # no request lost: every request queued is there, with exactly one outcome, the true one
    assert len(rows) == len(ns) and lost == 0, ctx()
    assert [r["outcome"] for r in rows] == ["activated"] * len(ns), ctx()
    assert [r["result"] for r in rows] == [2] * len(ns), ctx()
    for r in rows:
        # one Upgrade End and one outcome recorded per request, however often it was killed
        assert events[r["id"]]["upgrade_end"] == 1, (r["eui"], events[r["id"]], ctx())
        assert events[r["id"]]["outcome"] == 1, (r["eui"], events[r["id"]], ctx())
    for d in devs:
        size = sizes[d.n]
        # nothing delivered twice: one download, one Upgrade End answered, one activation,
        # one Activation Alert
        assert d.version == 2 and d.activated_versions == [2], (d.n, ctx())
        assert d.downloads == 1 and twice == 0, (d.n, ctx())
        assert [u[0] for u in d.upgrade_ends] == [zcl.SUCCESS], (d.n, d.upgrade_ends, ctx())
        assert d.alerts_sent == [(2, 1, False, zcl.ALERT_NONE)], (d.n, ctx())
        # each (re)start of the download was from where the device had got to
        assert d.resume_offsets[0] == 0 and d.resume_offsets == sorted(d.resume_offsets), \
            (d.n, d.resume_offsets, ctx())
        # The device asks for each block once and keeps what it got, so it should receive
        # exactly the image; the slack of a few blocks per kill allows for a block answered
        # by a hub as it died and asked again of the next one.
        assert size <= d.bytes_received <= size + kills * 3 * BLOCK, \
            (d.n, d.bytes_received, size, ctx())
        # the restarted hubs never reused a frame counter
        assert d.dropped["replay"] == 0, (d.n, d.dropped, ctx())

    # status and report (read from the database only) agree with the devices
    status = json.loads(cli("status", "--json", "--db", db))
    report = json.loads(cli("report", "--json", "--db", db))
    assert status["serve"]["running"] is False and status["pending"] == 0, ctx()
    assert status["outcomes"] == {"activated": len(ns)}, ctx()
    assert report["summary"] == {"activated": len(ns)}, ctx()
    assert len(report["requests"]) == len(ns), ctx()
    by_eui = {x["eui"]: x for x in status["devices"]}
    for d in devs:
        e = eui_str(d.n)
        assert by_eui[e]["running_version"] == d.version, (d.n, ctx())
        assert by_eui[e]["last_outcome"]["outcome"] == "activated", (d.n, ctx())
        assert report["devices"][e]["running_version"] == d.version, (d.n, ctx())
    for r in report["requests"]:
        kinds = Counter(ev["kind"] for ev in r["events"])
        assert kinds["upgrade_end"] == 1 and kinds["outcome"] == 1, (r["eui"], kinds, ctx())
    # no hub bug was logged along the way (a policy or handler exception)
    log = open(serve_log.name).read()
    assert "Traceback" not in log, ctx()
