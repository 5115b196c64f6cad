"""The hub end to end, in-process: `Hub` (real OtaServer over UDP + scheduler + SQLite)
against autonomous fake devices (`support.hubfixtures.AgentDevice`) speaking the real link
and ZCL. Each test checks outcomes in the database against what the devices themselves did.
"""
from __future__ import annotations

import asyncio
import contextlib
import io
import json

import pytest
from rich.console import Console

from hanfw import link as hlink
from hanfw import zcl
from hanota.hub import Hub, HubDB
from hanota.hub import registry as reg
from hanota.hub import report as rep
from hanota.hub.cli import _live_table
from hanota.hub import requests as rq
from hanota.server import zigbee_time
from support import otabuild
from support.hubfixtures import (SUPPLIER, AgentDevice, build_image, eui_str, fast_options,
                                 register)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def key():
    return otabuild.new_key()


def run(coro, timeout: float = 45.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


@contextlib.asynccontextmanager
async def running(db: HubDB, devices=(), join=True, **opts):
    """A started hub on an ephemeral UDP port, and the given devices started against it."""
    hub = Hub(db.path, udp=("127.0.0.1", 0), options=fast_options(**opts))
    await hub.start()
    try:
        for d in devices:
            await d.start(hub.udp_address, join=join)
        yield hub
    finally:
        for d in devices:
            d.close()
        await hub.stop()


async def until(pred, timeout: float = 10.0) -> None:
    """Wait for a device-side condition (the hub may record an outcome before the device
    has processed the hub's answer)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def events(db: HubDB, request_id: int) -> list[str]:
    return [r["kind"] for r in db.all("SELECT kind FROM events WHERE request_id = ? "
                                      "ORDER BY id", (request_id,))]


def outcome(db: HubDB, request_id: int) -> tuple:
    r = db.request(request_id)
    return (r["outcome"], r["reason"], r["result"])


# ---------------------------------------------------------------- SR 11.4

def test_ppmid_full_upgrade_is_activated_and_status_agrees(db, tmp_path, key):
    e = register(db, 1)
    img = build_image(tmp_path, key, "ppmid", 2, size=4000)
    sub = rq.update_firmware(db, e, img, SUPPLIER)
    dev = AgentDevice(1)

    async def main():
        async with running(db, [dev]) as hub:
            row = await hub.wait_outcome(sub.id, 20)
            assert (row["outcome"], row["result"]) == ("activated", 2)
            s = rep.status_data(db, hub.live_transfers())
            console = Console(record=True, width=160, file=io.StringIO())
            console.print(_live_table(hub))  # what serve shows on a terminal
            table = console.export_text()
            assert e in table and "#1 activated" in table and "0x00000002" in table
        return s

    s = run(main())
    size = db.request(sub.id)["size"]
    # the device fetched every byte exactly once, verified it, activated once, alerted once
    assert dev.version == 2 and dev.activated_versions == [2] and dev.downloads == 1
    assert dev.bytes_received == size and dev.resume_offsets == [0]
    assert dev.alerts_sent == [(2, 1, False, zcl.ALERT_NONE)]
    kinds = events(db, sub.id)
    assert kinds[:3] == ["submitted", "queued", "in_flight"]
    assert kinds.index("offered") < kinds.index("upgrade_end") < kinds.index("alert") \
        < kinds.index("outcome")
    d = [x for x in s["devices"] if x["eui"] == e][0]
    assert (d["running_version"], d["joined"], d["pending"]) == (2, True, [])
    assert d["last_outcome"]["outcome"] == "activated"
    assert s["outcomes"] == {"activated": 1} and s["transfers"] == [] and s["queue"] == []


def test_althan_joins_point_to_point_only_and_is_upgraded(db, tmp_path, key):
    e = register(db, 2, role="althan")
    sub = rq.update_firmware(db, e, build_image(tmp_path, key, "althan", 7), SUPPLIER)
    dev = AgentDevice(2, role="althan")

    async def main():
        async with running(db) as hub:
            await dev.open_udp(hub.udp_address)
            # the ordinary join service refuses an Alt HAN device with its own code
            assert await dev.join(hlink.SERVICE_ORDINARY) == hlink.JOIN_ALT_HAN_REFUSED
            assert await dev.join(hlink.SERVICE_ALT_HAN_P2P) == hlink.JOIN_OK
            await dev.hello()
            await hub.wait_outcome(sub.id, 20)
            dev.close()

    run(main())
    assert outcome(db, sub.id)[0] == "activated" and dev.version == 7
    joins = [json.loads(r[0])["status"] for r in db.all(
        "SELECT detail FROM events WHERE kind = 'join' ORDER BY id")]
    assert joins == [hlink.JOIN_STATUS_NAMES[hlink.JOIN_ALT_HAN_REFUSED], "ok"]


def test_rollback_and_invalid_image_outcomes(db, tmp_path, key):
    subs = {}
    devs = [AgentDevice(3, behaviour="rollback"), AgentDevice(4, behaviour="invalid")]
    img = build_image(tmp_path, key, "ppmid", 2)
    for d in devs:
        subs[d.n] = rq.update_firmware(db, register(db, d.n), img, SUPPLIER).id

    async def main():
        async with running(db, devs, max_in_flight=2) as hub:
            for rid in subs.values():
                await hub.wait_outcome(rid, 20)
            await until(lambda: devs[1].upgrade_ends)

    run(main())
    assert outcome(db, subs[3]) == ("rolled_back", "HEALTH_CHECK_FAILED; the device runs "
                                    "0x00000001 again", 1)
    assert outcome(db, subs[4]) == ("rejected_by_device", "Upgrade End status INVALID_IMAGE",
                                    None)
    assert devs[0].version == 1 and devs[1].version == 1
    assert devs[1].upgrade_ends[0][0] == zcl.INVALID_IMAGE
    assert reg.device(db, eui_str(3))["running_version"] == 1


def test_activation_at_a_future_time_uses_utc_upgrade_times(db, tmp_path, key):
    e = register(db, 5)
    now = db.now()
    sub = rq.update_firmware(db, e, build_image(tmp_path, key, "ppmid", 3), SUPPLIER,
                             activate_at=now + 2)
    dev = AgentDevice(5)

    async def main():
        async with running(db, [dev]) as hub:
            await hub.wait_outcome(sub.id, 20)

    run(main())
    assert outcome(db, sub.id)[0] == "activated"
    status, cmd, rsp = dev.upgrade_ends[0]
    # UTC form: (current time, activation time) two seconds apart, not (0, 0)
    assert cmd == zcl.CMD_UPGRADE_END_RESPONSE and rsp.current_time > 0
    assert 1 <= rsp.upgrade_time - rsp.current_time <= 2
    assert rsp.upgrade_time == zigbee_time(now + 2)


def test_missing_alert_is_settled_by_reading_the_version_back(db, tmp_path, key):
    e = register(db, 6)
    sub = rq.update_firmware(db, e, build_image(tmp_path, key, "ppmid", 4), SUPPLIER)
    dev = AgentDevice(6, behaviour="no_alert")

    async def main():
        async with running(db, [dev], retry={"activation_timeout": 0.5}) as hub:
            await hub.wait_outcome(sub.id, 20)

    run(main())
    o, reason, result = outcome(db, sub.id)
    assert (o, result) == ("activated", 4) and "no Activation Alert" in reason
    assert dev.alerts_sent == [] and dev.version == 4


def test_devices_on_a_serial_line(db, tmp_path, key):
    import os
    from support.fakedevice import FakeBus
    img = build_image(tmp_path, key, "ppmid", 2)
    subs = [rq.update_firmware(db, register(db, n), img, SUPPLIER).id for n in (17, 18)]
    master, slave = os.openpty()
    devs = [AgentDevice(17), AgentDevice(18)]

    async def main():
        bus = FakeBus(slave)
        hub = Hub(db.path, udp=None, serial=[master], options=fast_options(max_in_flight=2))
        await hub.start()
        try:
            assert hub.serial_names[0].startswith("serial:")
            for d in devs:
                bus.attach(d)
                await d.start()
            for rid in subs:
                await hub.wait_outcome(rid, 20)
        finally:
            bus.close()
            await hub.stop()

    try:
        run(main())
    finally:
        os.close(master)
        os.close(slave)
    assert [outcome(db, rid)[0] for rid in subs] == ["activated", "activated"]
    assert [d.version for d in devs] == [2, 2]


# ---------------------------------------------------------------- SR 11.1 + 11.3, SR 11.2

def test_hcalcs_distribute_then_activate_right_wrong_and_no_image(db, tmp_path, key):
    a = register(db, 7, role="hcalcs")
    b = register(db, 8, role="hcalcs")
    img = build_image(tmp_path, key, "hcalcs", 5)
    dist = rq.update_firmware(db, a, img, SUPPLIER)
    assert dist.sr == "11.1"
    good_hash = db.request(dist.id)["image_hash"]
    devs = [AgentDevice(7, role="hcalcs"), AgentDevice(8, role="hcalcs")]

    async def main():
        async with running(db, devs) as hub:
            assert (await hub.wait_outcome(dist.id, 20))["outcome"] == "distributed"
            await until(lambda: devs[0].held_hash is not None)
            assert devs[0].held_hash.hex() == good_hash and devs[0].version == 1
            wrong = rq.activate(db, a, "ab" * 32, SUPPLIER)
            assert (await hub.wait_outcome(wrong.id, 10))["outcome"] == "hash_mismatch"
            none = rq.activate(db, b, good_hash, SUPPLIER)
            assert (await hub.wait_outcome(none.id, 10))["outcome"] == "no_image_held"
            right = rq.activate(db, a, good_hash, SUPPLIER)
            assert right.target_version == 5
            row = await hub.wait_outcome(right.id, 10)
            assert (row["outcome"], row["result"]) == ("activated", 5)
            return right.id

    right = run(main())
    # the device was told to wait (upgrade time 0xFFFFFFFF), then activated only once
    assert devs[0].upgrade_ends[0][2].upgrade_time == zcl.UPGRADE_TIME_WAIT
    assert devs[0].activated_versions == [5] and devs[1].activated_versions == []
    assert [a.image_hash.hex() for a in devs[0].activations] == ["ab" * 32, good_hash]
    assert devs[0].activations[1].counter == right  # the originator counter is the request id
    assert reg.device(db, a)["held_hash"] is None


def test_hcalcs_upgrade_end_answer_lost_across_a_hub_restart_keeps_its_image(db, tmp_path, key):
    """SR 11.1: the hub records "distributed" and stops before its answer leaves; the device
    asks again, and the restarted hub (no pending request for the image now) must tell it
    to go on holding the image -- not ABORT, which would make it drop what SR 11.3 needs."""
    e = register(db, 70, role="hcalcs")
    rid = rq.update_firmware(db, e, build_image(tmp_path, key, "hcalcs", 2, size=2000),
                             SUPPLIER).id
    dev = AgentDevice(70, role="hcalcs", poll=0.5)
    first = {"answer": None}
    orig = dev.upgrade_end

    async def main():
        hub = Hub(db.path, udp=("127.0.0.1", 0), options=fast_options())
        await hub.start()
        addr = hub.udp_address

        async def upgrade_end(*a, **kw):
            r = await orig(*a, **kw)
            if first["answer"] is None:
                first["answer"] = r
                await hub.stop()  # recorded; its answer counts as lost
                raise TimeoutError("answer lost")
            return r
        dev.upgrade_end = upgrade_end
        await dev.start(addr)
        while first["answer"] is None:
            await asyncio.sleep(0.05)
        assert outcome(db, rid)[0] == "distributed"
        hub2 = Hub(db.path, udp=addr, options=fast_options())
        await hub2.start()
        try:
            while not dev.upgrade_ends:
                await asyncio.sleep(0.05)
            return dict(hub2.server.stats)
        finally:
            dev.close()
            await hub2.stop()

    stats = run(main())
    status, cmd, rsp = dev.upgrade_ends[0]
    assert (status, cmd) == (zcl.SUCCESS, zcl.CMD_UPGRADE_END_RESPONSE)
    assert rsp.upgrade_time == zcl.UPGRADE_TIME_WAIT and dev.held_hash is not None
    assert stats.get("held-again") == 1 and "unknown-image" not in stats
    assert outcome(db, rid)[0] == "distributed"
    assert events(db, rid).count("upgrade_end") == 1


def test_read_version(db, key):
    e = register(db, 9)
    dev = AgentDevice(9, version=0x01020304)

    async def main():
        async with running(db, [dev]) as hub:
            sub = rq.read_version(db, e, SUPPLIER)
            assert sub.sr == "11.2"
            return await hub.wait_outcome(sub.id, 10)

    row = run(main())
    assert (row["outcome"], row["result"]) == ("version_read", 0x01020304)
    assert reg.device(db, e)["running_version"] == 0x01020304


def test_failure_outcomes_of_commands_and_of_the_device_query(db, tmp_path, key):
    h = register(db, 41, role="hcalcs")
    p = register(db, 42)
    gone = register(db, 43)
    hw = register(db, 44)  # hardware version unknown until the device joins
    hc = AgentDevice(41, role="hcalcs", behaviour="activation_failure")
    pp = AgentDevice(42)
    del pp.attributes[zcl.ATTR_CURRENT_FILE_VERSION]  # a device that cannot report it
    hwdev = AgentDevice(44, hw=0x0100)
    dist = rq.update_firmware(db, h, build_image(tmp_path, key, "hcalcs", 2), SUPPLIER)
    wrong_hw = rq.update_firmware(db, hw, build_image(tmp_path, key, "ppmid", 2,
                                                      min_hw=0x0200, max_hw=0x02ff), SUPPLIER)
    assert wrong_hw.accepted

    async def main():
        retry = {"base": 0.1, "cap": 0.2, "max_attempts": 3}
        async with running(db, [hc, pp, hwdev], retry=retry) as hub:
            await hub.wait_outcome(dist.id, 20)
            await until(lambda: hc.held_hash is not None)
            act = rq.activate(db, h, db.request(dist.id)["image_hash"], SUPPLIER)
            read = rq.read_version(db, p, SUPPLIER)
            unreachable = rq.read_version(db, gone, SUPPLIER)
            for sub in (act, read, unreachable, wrong_hw):
                await hub.wait_outcome(sub.id, 20)
            return act.id, read.id, unreachable.id

    act, read, unreachable = run(main())
    assert outcome(db, act) == ("activation_failed", "Activate Image Response "
                                "ACTIVATION_FAILURE", 1)
    assert outcome(db, read) == ("read_failed", "Read Attributes status UNSUPPORTED_ATTRIBUTE",
                                 None)
    o, reason, _ = outcome(db, unreachable)
    assert o == "device_unreachable" and reason.endswith("(after 3 attempts)")
    assert db.request(unreachable)["attempts"] == 3
    o, reason, _ = outcome(db, wrong_hw.id)
    assert (o, reason) == ("hw_version_mismatch", "device hardware version 0x0100 is outside "
                           "the image's range 0x0200..0x02ff")
    assert hwdev.bytes_received == 0 and hwdev.version == 1  # nothing was transferred


# ---------------------------------------------------------------- retries, supersede

def test_absent_device_is_retried_with_backoff_and_upgraded_when_it_appears(db, tmp_path, key):
    late = register(db, 10)
    gone = register(db, 11)
    img = build_image(tmp_path, key, "ppmid", 2)
    r_late = rq.update_firmware(db, late, img, SUPPLIER).id
    r_gone = rq.update_firmware(db, gone, img, SUPPLIER).id
    dev = AgentDevice(10)

    async def main():
        retry = {"answer_timeout": 0.4, "base": 0.1, "cap": 0.2, "max_attempts": 3}
        async with running(db, retry=retry) as hub:
            while db.request(r_late)["attempts"] < 2:  # it failed at least once, not for good
                await asyncio.sleep(0.05)
            assert db.request(r_late)["outcome"] is None
            await dev.start(hub.udp_address)
            await hub.wait_outcome(r_late, 20)
            await hub.wait_outcome(r_gone, 20)
            dev.close()

    run(main())
    assert outcome(db, r_late)[0] == "activated" and dev.version == 2
    assert db.request(r_late)["attempts"] >= 2 and "retry" in events(db, r_late)
    o, reason, _ = outcome(db, r_gone)
    assert o == "transfer_failed" and "after 3 attempts" in reason
    assert events(db, r_gone).count("retry") == 2
    # the backoff doubled between the retries of the absent device
    delays = [json.loads(r[0])["delay"] for r in db.all(
        "SELECT detail FROM events WHERE request_id = ? AND kind = 'retry' ORDER BY id",
        (r_gone,))]
    assert delays == [0.1, 0.2]


def test_newer_request_supersedes_a_transfer_in_progress(db, tmp_path, key):
    e = register(db, 12)
    v2 = build_image(tmp_path, key, "ppmid", 2, size=8000)
    v3 = build_image(tmp_path, key, "ppmid", 3, size=3000)
    first = rq.update_firmware(db, e, v2, SUPPLIER).id
    dev = AgentDevice(12, pace=0.01)

    async def main():
        async with running(db, [dev]) as hub:
            while dev.offset < 2000:
                await asyncio.sleep(0.02)
            second = rq.update_firmware(db, e, v3, SUPPLIER)
            assert second.superseded == [first]
            await hub.wait_outcome(second.id, 20)
            return second.id

    second = run(main())
    assert outcome(db, first) == ("superseded", "superseded by request #%d" % second, None)
    assert outcome(db, second)[0] == "activated"
    assert dev.version == 3 and dev.activated_versions == [3]
    # v2 was cut off part way (the hub aborted it); v3 came whole
    assert 2000 <= dev.bytes_received - db.request(second)["size"] < 8000


def test_stalled_transfer_is_retried_and_resumes_from_its_offset(db, tmp_path, key):
    e = register(db, 16)
    sub = rq.update_firmware(db, e, build_image(tmp_path, key, "ppmid", 2, size=6000),
                             SUPPLIER)
    dev = AgentDevice(16, pace=0.005)

    async def main():
        async with running(db, [dev], stall_timeout=0.5) as hub:
            while dev.offset < 2000:
                await asyncio.sleep(0.01)
            dev._update.cancel()  # the device goes quiet part way
            stopped_at = dev.offset
            loop = asyncio.get_running_loop()
            give_up = loop.time() + 20
            while "retry" not in events(db, sub.id):
                t = hub.server.transfers.get(dev.eui)
                assert loop.time() < give_up, (
                    "no retry 20 s after the device went quiet at offset %d: request %s, "
                    "events %s, server transfer %s" % (
                        stopped_at, dict(db.request(sub.id)), events(db, sub.id),
                        t and (t.state, t.offset)))
                await asyncio.sleep(0.05)
            dev.kick()  # it wakes up and polls again
            await hub.wait_outcome(sub.id, 20)
            return stopped_at

    stopped_at = run(main())
    row = db.request(sub.id)
    assert (row["outcome"], row["attempts"]) == ("activated", 2)
    assert dev.resume_offsets == [0, stopped_at] and dev.version == 2
    assert row["size"] <= dev.bytes_received <= row["size"] + 64
    reason = json.loads(db.one("SELECT detail FROM events WHERE request_id = ? AND "
                               "kind = 'retry'", (sub.id,))[0])["reason"]
    assert reason.startswith("transfer stalled at offset")


# ---------------------------------------------------------------- TCSO

def test_trust_centre_swap_out_while_serving(db, tmp_path, key):
    p = register(db, 13)
    h = register(db, 14, role="hcalcs")
    a = register(db, 15, role="althan")
    devs = {13: AgentDevice(13), 14: AgentDevice(14, role="hcalcs"),
            15: AgentDevice(15, role="althan")}

    async def main():
        async with running(db, devs.values()) as hub:
            old = hub.hub_eui
            assert all(reg.device(db, x)["joined_hub"] == old for x in (p, h, a))
            # a request for the Alt HAN device is pending when the hub is swapped out
            pending = rq.update_firmware(db, a, build_image(tmp_path, key, "althan", 2),
                                         "Nobody")
            assert pending.outcome == "not_authorized"
            pending = rq.update_firmware(db, a, build_image(tmp_path, key, "althan", 2),
                                         SUPPLIER, activate_at=db.now() + 3600)
            r = reg.swap_out(db)
            assert r["unavailable"] == [pending.id]
            while hub.hub_eui == old:  # the running hub restarts with the new identity
                await asyncio.sleep(0.05)
            assert hub.hub_eui == r["new"]
            # PPMID and HCALCS rejoin the new hub; the Alt HAN device cannot
            assert await devs[13].rejoin() == hlink.JOIN_OK
            assert await devs[14].rejoin() == hlink.JOIN_OK
            assert await devs[15].rejoin() == hlink.JOIN_P2P_UNAVAILABLE
            assert await devs[15].rejoin(hlink.SERVICE_ORDINARY) == hlink.JOIN_ALT_HAN_REFUSED
            new_ppmid = rq.update_firmware(db, p, build_image(tmp_path, key, "ppmid", 2),
                                           SUPPLIER)
            new_althan = rq.update_firmware(db, a, build_image(tmp_path, key, "althan", 3),
                                            SUPPLIER)
            assert new_althan.outcome == "ota_unavailable_after_tcso"
            assert (await hub.wait_outcome(new_ppmid.id, 20))["outcome"] == "activated"
            return pending.id, new_althan.id

    pending, new_althan = run(main())
    for rid in (pending, new_althan):
        o, reason, _ = outcome(db, rid)
        assert o == "ota_unavailable_after_tcso" and "Trust Centre Swap-Out" in reason
    assert devs[13].version == 2 and devs[15].version == 1
    cur = reg.hub_info(db)["eui"]
    assert reg.device(db, p)["joined_hub"] == cur and reg.device(db, h)["joined_hub"] == cur
    assert reg.device(db, a)["joined_hub"] != cur
    assert [d["tcso_affected"] for d in reg.list_devices(db)] == [False, False, True]


# ---------------------------------------------------------------- twenty devices

@pytest.mark.parametrize("max_in_flight", [1, 3])
def test_twenty_devices_through_one_hub(db, tmp_path, key, max_in_flight):
    roles = ["ppmid", "althan"]
    imgs = {r: build_image(tmp_path, key, r, 0x0200, size=2500) for r in roles}
    devs, subs = [], {}
    for n in range(20, 40):
        role = roles[n % 2]
        e = register(db, n, role=role, premises="MPAN-%d" % (n // 2))
        subs[e] = rq.update_firmware(db, e, imgs[role], SUPPLIER).id
        devs.append(AgentDevice(n, role=role, version=0x0100))

    async def main():
        async with running(db, devs, max_in_flight=max_in_flight) as hub:
            await hub.wait_idle(40)
            s = rep.status_data(db, hub.live_transfers())
            for d in devs:  # then read every version back (SR 11.2)
                rq.read_version(db, eui_str(d.n), SUPPLIER)
            await hub.wait_idle(20)
        return s

    s = run(main(), 55)
    r = rep.report_data(db)
    assert r["summary"] == {"activated": 20, "version_read": 20}
    reads = {q["eui"]: q["result"] for q in r["requests"] if q["kind"] == "read_version"}
    r["requests"] = [q for q in r["requests"] if q["kind"] == "update"]
    for d in devs:
        e = eui_str(d.n)
        assert d.version == 0x0200 and d.activated_versions == [0x0200] and d.downloads == 1
        assert d.bytes_received == db.request(subs[e])["size"]  # nothing delivered twice
    # status and report agree with what each device says it runs
    by_dev = {x["eui"]: x for x in s["devices"]}
    by_req = {q["eui"]: q for q in r["requests"]}
    for d in devs:
        e = eui_str(d.n)
        assert by_dev[e]["running_version"] == d.version == by_req[e]["result"] == reads[e]
        assert r["devices"][e]["running_version"] == d.version
    # never more than max_in_flight transfers held a slot at once; slots were given in order
    slot = {}
    most = 0
    order = []
    for ev in db.all("SELECT request_id, kind FROM events WHERE request_id IS NOT NULL "
                     "ORDER BY id"):
        if ev["kind"] == "in_flight":
            slot[ev["request_id"]] = True
            order.append(ev["request_id"])
        elif ev["kind"] in ("activation_scheduled", "outcome", "retry"):
            slot.pop(ev["request_id"], None)
        most = max(most, len(slot))
    assert most == max_in_flight
    assert order == sorted(subs.values())
