"""Hub rules at submission and in the database: who may ask, what is refused and why,
supersede, Trust Centre Swap-Out, join decisions, and one outcome per request."""
from __future__ import annotations

import sqlite3
from pathlib import Path
from types import SimpleNamespace

import pytest

from hanfw import link as hlink
from hanota.hub import HubDB, HubError, HubUsageError
from hanota.hub import registry as reg
from hanota.hub import requests as rq
from hanota.hub.hub import HubOptions
from hanota.hub.policy import HubPolicy
from support import otabuild
from support.fakedevice import install_code
from support.hubfixtures import SUPPLIER, build_image, eui, eui_str, register

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def key():
    return otabuild.new_key()


@pytest.fixture
def image(tmp_path, key):
    def make(role="ppmid", version=2, **kw):
        return build_image(tmp_path, key, role, version, size=400, **kw)
    return make


def pending(db: HubDB, e: str) -> list[int]:
    return [r[0] for r in db.all("SELECT id FROM requests WHERE eui = ? AND outcome IS NULL",
                                 (e,))]


# ---------------------------------------------------------------- authorization

def test_either_responsible_supplier_of_dual_supplier_premises_may_ask(db, image):
    e = register(db, 1, suppliers=("Elec Co", "Gas Co"))
    a = rq.update_firmware(db, e, image(), "Elec Co")
    b = rq.update_firmware(db, e, image(version=3), "Gas Co")
    assert a.accepted and b.accepted and b.superseded == [a.id]
    c = rq.update_firmware(db, e, image(version=4), "Third Co")
    assert (c.outcome, c.state) == ("not_authorized", "done")
    assert c.reason == ("Third Co is not a Responsible Supplier of device %s (premises MPAN-1: "
                        "Elec Co and Gas Co)" % e)
    # a refused request is recorded but leaves the pending one alone
    assert pending(db, e) == [b.id] and c.superseded == []
    assert db.request(c.id)["outcome"] == "not_authorized"
    for sub in (rq.read_version(db, e, "Third Co"), rq.read_version(db, e, "Gas Co")):
        assert sub.outcome == ("not_authorized" if sub.id == c.id + 1 else None)


def test_single_supplier_premises_and_unknown_devices(db, image):
    e = register(db, 2, premises="MPRN-7", suppliers=("Gas Co",))
    assert rq.update_firmware(db, e, image(), "Gas Co").accepted
    assert rq.update_firmware(db, e, image(), "Elec Co").outcome == "not_authorized"
    reg.set_suppliers(db, "MPRN-7", ["Elec Co"])  # change of supplier: the new one may ask
    assert rq.update_firmware(db, e, image(version=3), "Elec Co").accepted
    stranger = rq.update_firmware(db, eui(99), image(), "Gas Co")
    assert stranger.outcome == "not_authorized" and "not in the registry" in stranger.reason
    reg.ensure_premises(db, "MPAN-EMPTY")
    reg.add_device(db, eui(3), "ppmid", install_code(3), "MPAN-EMPTY")
    r = rq.read_version(db, eui(3), "Gas Co")
    assert r.outcome == "not_authorized" and "none recorded" in r.reason


def test_device_installed_before_ota_support_is_refused_with_the_reason(db, image):
    e = register(db, 4, ota_supported=False)
    h = register(db, 5, role="hcalcs", ota_supported=False)
    up = rq.update_firmware(db, e, image(), SUPPLIER)
    act = rq.activate(db, h, "00" * 32, SUPPLIER)
    for sub, dev in ((up, e), (act, h)):
        assert sub.outcome == "ota_unsupported"
        assert sub.reason == ("device %s was installed before OTA support: its firmware cannot "
                              "be updated over the air" % dev)
    assert rq.read_version(db, e, SUPPLIER).accepted  # reading the version is still allowed


def test_newer_request_supersedes_the_pending_one(db, image):
    e = register(db, 6)
    subs = [rq.update_firmware(db, e, image(version=v), SUPPLIER) for v in (2, 3, 4)]
    assert [s.superseded for s in subs] == [[], [subs[0].id], [subs[1].id]]
    for old, new in zip(subs, subs[1:]):
        r = db.request(old.id)
        assert (r["outcome"], r["reason"]) == ("superseded", "superseded by request #%d" % new.id)
    assert pending(db, e) == [subs[2].id]
    # kinds are independent: a read-version does not supersede an update
    rv = rq.read_version(db, e, SUPPLIER)
    assert rv.superseded == [] and sorted(pending(db, e)) == [subs[2].id, rv.id]


def test_image_header_checked_against_the_registry(db, image):
    e = register(db, 7, hw_version=0x0300)
    ok = rq.update_firmware(db, e, image(), SUPPLIER)
    hw = rq.update_firmware(db, e, image(version=3, min_hw=0x0100, max_hw=0x01FF), SUPPLIER)
    assert hw.outcome == "hw_version_mismatch"
    assert hw.reason == ("device hardware version 0x0300 is outside the image's range "
                         "0x0100..0x01ff")
    other_type = rq.update_firmware(db, e, image(role="hcalcs"), SUPPLIER)
    assert other_type.outcome == "image_mismatch" and "image type 0x0086" in other_type.reason
    other_dev = rq.update_firmware(db, e, image(version=5, destination=eui(8)), SUPPLIER)
    assert other_dev.outcome == "image_mismatch" and eui_str(8) in other_dev.reason
    mine = rq.update_firmware(db, e, image(version=6, destination=eui(7), min_hw=0x0300,
                                           max_hw=0x0300), SUPPLIER)
    assert mine.accepted
    # refused requests never touched the pending one; the accepted one superseded it
    assert mine.superseded == [ok.id] and pending(db, e) == [mine.id]


def test_a_tampered_image_never_replaces_a_pending_request(db, image, tmp_path, key):
    """The measured bug: a bit-flipped file that `image verify` calls tampered was accepted
    and superseded a valid pending request. Now the file is checked before anything."""
    from hanota.errors import ImageFormatError

    e = register(db, 13)
    good = rq.update_firmware(db, e, image(), SUPPLIER)
    data = image(version=3).read_bytes()
    n_requests = db.one("SELECT count(*) FROM requests")[0]
    n_images = db.one("SELECT count(*) FROM images")[0]

    def flipped(pos: int) -> Path:
        b = bytearray(data)
        b[pos] ^= 0x01
        p = tmp_path / ("flip-%d.ota" % pos)
        p.write_bytes(bytes(b))
        return p

    # a flip inside the manufacturer image: its hash no longer matches the descriptor
    with pytest.raises(ImageFormatError, match="tampered") as err:
        rq.update_firmware(db, e, flipped(len(data) // 2), SUPPLIER)
    assert err.value.reason == "payload-hash"
    # a flip in the header string or the signature: only the signature tells, with the key
    # the device pins (per submission, or trusted by the hub)
    pub = otabuild.raw_pub(key)
    for pos in (30, len(data) - 10):
        with pytest.raises(ImageFormatError) as err:
            rq.update_firmware(db, e, flipped(pos), SUPPLIER, pubkeys=[pub])
        assert err.value.reason == "bad-signature"
    rq.set_image_keys(db, [pub])
    with pytest.raises(ImageFormatError, match="does not verify"):
        rq.update_firmware(db, e, flipped(30), SUPPLIER)
    # an image signed by a key nobody trusts
    (tmp_path / "s").mkdir()
    stranger = build_image(tmp_path / "s", otabuild.new_key(), "ppmid", 4, size=400)
    with pytest.raises(ImageFormatError) as err:
        rq.update_firmware(db, e, stranger, SUPPLIER)
    assert err.value.reason == "unknown-key"
    # nothing was recorded, stored or superseded: the valid request is still pending
    assert db.one("SELECT count(*) FROM requests")[0] == n_requests
    assert db.one("SELECT count(*) FROM images")[0] == n_images
    assert pending(db, e) == [good.id] and db.request(good.id)["state"] == "queued"
    # and the untampered file, signed by the trusted key, is accepted and supersedes it
    ok = rq.update_firmware(db, e, image(version=3), SUPPLIER)
    assert ok.accepted and ok.superseded == [good.id]


def test_service_request_kinds(db, image):
    p = register(db, 9)
    h = register(db, 10, role="hcalcs")
    a = register(db, 11, role="althan")
    assert rq.update_firmware(db, p, image(), SUPPLIER).sr == "11.4"
    assert rq.update_firmware(db, a, image(role="althan"), SUPPLIER).sr == "11.4"
    sub = rq.update_firmware(db, h, image(role="hcalcs", version=9), SUPPLIER)
    assert sub.sr == "11.1"
    row = db.request(sub.id)
    with pytest.raises(HubUsageError, match="SR 11.3"):
        rq.update_firmware(db, h, image(role="hcalcs"), SUPPLIER, activate_at=1e9)
    with pytest.raises(HubUsageError, match="part of SR 11.4"):
        rq.activate(db, p, "00" * 32, SUPPLIER)
    with pytest.raises(HubUsageError, match="64 hex"):
        rq.activate(db, h, "abc", SUPPLIER)
    act = rq.activate(db, h, row["image_hash"], SUPPLIER, at=2e9)
    assert (act.sr, act.target_version) == ("11.3", 9)
    assert db.request(act.id)["activate_at"] == 2e9
    assert rq.activate(db, h, "11" * 32, SUPPLIER).target_version is None


def test_activation_times():
    now = 1_800_000_000.0
    assert rq.parse_when(None, now) is None and rq.parse_when("now", now) is None
    assert rq.parse_when("+30", now) == now + 30
    assert rq.parse_when("+2m", now) == now + 120 and rq.parse_when("+1h", now) == now + 3600
    assert rq.parse_when("2030-01-31T02:00:00Z", now) == 1896055200.0
    assert rq.parse_when("2030-01-31T03:00:00+01:00", now) == 1896055200.0
    assert rq.parse_when("2030-01-31T02:00:00", now) == 1896055200.0  # UTC unless stated
    with pytest.raises(HubUsageError):
        rq.parse_when("tomorrow", now)


def test_image_store_is_content_addressed(db, image, tmp_path):
    e = register(db, 12)
    src = image()
    a = rq.update_firmware(db, e, src, SUPPLIER)
    src2 = tmp_path / "copy.ota"
    src2.write_bytes(src.read_bytes())
    b = rq.update_firmware(db, e, src2, SUPPLIER)
    ra, rb = db.request(a.id), db.request(b.id)
    assert ra["image"] == rb["image"]
    stored = db.one("SELECT path FROM images WHERE sha256 = ?", (ra["image"],))[0]
    assert stored.endswith(ra["image"] + ".ota") and open(stored, "rb").read() == \
        src.read_bytes()
    assert db.one("SELECT count(*) FROM images")[0] == 1


# ---------------------------------------------------------------- one outcome

def test_exactly_one_outcome_is_enforced_by_code_and_schema(db, image):
    e = register(db, 13)
    rid = rq.update_firmware(db, e, image(), SUPPLIER).id
    assert db.finish(rid, "activated", "first", 2) is True
    assert db.finish(rid, "rolled_back", "second") is False  # the first outcome stands
    assert db.set_state(rid, "queued") is False and db.update_request(rid, offset=5) is False
    assert (db.request(rid)["outcome"], db.request(rid)["reason"]) == ("activated", "first")
    c = db.conn
    with pytest.raises(sqlite3.IntegrityError, match="already has its outcome"):
        c.execute("UPDATE requests SET outcome = 'rolled_back' WHERE id = ?", (rid,))
    with pytest.raises(sqlite3.IntegrityError, match="never deleted"):
        c.execute("DELETE FROM requests WHERE id = ?", (rid,))
    other = rq.update_firmware(db, e, image(version=3), SUPPLIER).id
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):  # done needs an outcome
        c.execute("UPDATE requests SET state = 'done' WHERE id = ?", (other,))
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):  # an outcome needs done
        c.execute("UPDATE requests SET outcome = 'activated', finished = 1 WHERE id = ?",
                  (other,))
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):  # only known outcomes
        c.execute("UPDATE requests SET outcome = 'maybe', state = 'done', finished = 1 "
                  "WHERE id = ?", (other,))
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):  # one pending per kind
        c.execute("INSERT INTO requests (kind, sr, eui, supplier, state, created, updated) "
                  "VALUES ('update', '11.4', ?, 'x', 'queued', 0, 0)", (e,))
    with pytest.raises(ValueError):
        db.finish(other, "maybe")
    assert db.one("SELECT count(*) FROM events WHERE request_id = ? AND kind = 'outcome'",
                  (rid,))[0] == 1


def test_a_second_hub_on_the_same_database_is_refused(db):
    import asyncio
    from hanota.hub import Hub

    async def main():
        a = Hub(db.path, udp=("127.0.0.1", 0))
        await a.start()
        try:
            with pytest.raises(HubError, match="another hub"):
                await Hub(db.path, udp=("127.0.0.1", 0)).start()
        finally:
            await a.stop()
        b = Hub(db.path, udp=("127.0.0.1", 0))  # free again once the first stopped
        await b.start()
        await b.stop()
    asyncio.run(asyncio.wait_for(main(), 10))


def test_unreadable_database_is_a_hub_error(tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(HubError, match="not a usable hub database"):
        HubDB.open(bad)
    with pytest.raises(HubError, match="no hub database"):
        HubDB.open(tmp_path / "missing.db", create=False)


# ---------------------------------------------------------------- TCSO and joins

class _FakeHub(SimpleNamespace):
    def wake(self):
        pass

    def hold(self, eui):
        pass

    def unhold(self, eui):
        pass


def policy_for(db: HubDB) -> HubPolicy:
    return HubPolicy(db, _FakeHub(hub_eui=db.current_hub()["eui"], options=HubOptions(),
                                  server=None))


def test_swap_out_ends_alt_han_requests_and_requeues_transfers(db, image):
    p = register(db, 20)
    a = register(db, 21, role="althan")
    fresh = register(db, 22, role="althan")  # registered, never joined before the swap
    old = db.current_hub()["eui"]
    pol = policy_for(db)
    for e, role in ((p, "ppmid"), (a, "althan")):
        pol.on_joined(eui(int(e[-2:], 16)), role, 0x1234, 0, 0x100, 1)
    rp = rq.update_firmware(db, p, image(), SUPPLIER).id
    ra = rq.update_firmware(db, a, image(role="althan"), SUPPLIER).id
    rv = rq.read_version(db, a, SUPPLIER).id
    rf = rq.update_firmware(db, fresh, image(role="althan"), SUPPLIER).id
    db.set_state(rp, "downloading", offset=900)
    pol.save_counter(5000)
    r = reg.swap_out(db, "02:00:00:00:00:00:00:99")
    assert (r["old"], r["new"]) == (old, "02:00:00:00:00:00:00:99")
    assert r["unavailable"] == [ra, rv] and r["requeued"] == [rp]
    for rid in (ra, rv):
        o = db.request(rid)
        assert o["outcome"] == "ota_unavailable_after_tcso"
        assert "Trust Centre Swap-Out: hub %s replaced by 02:00:00:00:00:00:00:99" % old \
            in o["reason"]
    assert (db.request(rp)["state"], db.request(rp)["offset"]) == ("queued", 0)
    assert db.request(rf)["outcome"] is None
    info = reg.hub_info(db)
    assert (info["eui"], info["counter"], info["generation"]) == (r["new"], 1, 2)
    assert info["previous"][0]["eui"] == old
    # later requests for the stranded Alt HAN device end the same way at once
    assert rq.update_firmware(db, a, image(role="althan", version=5),
                              SUPPLIER).outcome == "ota_unavailable_after_tcso"
    assert rq.read_version(db, a, SUPPLIER).outcome == "ota_unavailable_after_tcso"
    with pytest.raises(HubUsageError, match="already used"):
        reg.swap_out(db, old)


def test_join_decisions_before_and_after_swap_out(db, image):
    p = register(db, 30)
    h = register(db, 31, role="hcalcs")
    a = register(db, 32, role="althan")
    pol = policy_for(db)
    ORD, P2P = hlink.SERVICE_ORDINARY, hlink.SERVICE_ALT_HAN_P2P
    args = (0x1234, 0x84, 0x100, 1)
    assert pol.join(eui(32), ORD, "althan", *args) == hlink.JOIN_ALT_HAN_REFUSED
    assert pol.join(eui(32), P2P, "althan", *args) == hlink.JOIN_OK
    assert pol.join(eui(30), P2P, "ppmid", *args) == hlink.JOIN_SERVICE_REFUSED
    assert pol.join(eui(30), ORD, "ppmid", *args) == hlink.JOIN_OK
    assert pol.join(eui(99), ORD, "ppmid", *args) == hlink.JOIN_UNKNOWN_DEVICE
    for n, role in ((30, "ppmid"), (31, "hcalcs"), (32, "althan")):
        assert not pol.is_joined(eui(n))
        pol.on_joined(eui(n), role, *args)
        assert pol.is_joined(eui(n))
    assert reg.device(db, p)["hw_version"] == 0x100  # learnt at join
    reg.swap_out(db)
    pol2 = policy_for(db)
    assert not any(pol2.is_joined(eui(n)) for n in (30, 31, 32))
    ra = rq.update_firmware(db, a, image(role="althan"), SUPPLIER)
    assert ra.outcome == "ota_unavailable_after_tcso"
    assert pol2.join(eui(32), P2P, "althan", *args) == hlink.JOIN_P2P_UNAVAILABLE
    assert pol2.join(eui(30), ORD, "ppmid", *args) == hlink.JOIN_OK
    assert pol2.join(eui(31), ORD, "hcalcs", *args) == hlink.JOIN_OK
    pol2.on_joined(eui(30), "ppmid", *args)
    pol2.on_joined(eui(31), "hcalcs", *args)
    assert pol2.is_joined(eui(30)) and pol2.is_joined(eui(31)) and not pol2.is_joined(eui(32))
    # an Alt HAN device commissioned after the swap pairs with the new hub normally
    register(db, 33, role="althan")
    assert pol2.join(eui(33), P2P, "althan", *args) == hlink.JOIN_OK
    statuses = [r[0] for r in db.all("SELECT json_extract(detail, '$.status') FROM events "
                                     "WHERE kind = 'join' AND eui = ? ORDER BY id", (a,))]
    assert statuses[-1] == hlink.JOIN_STATUS_NAMES[hlink.JOIN_P2P_UNAVAILABLE]
    assert h


def test_counters_persist_per_hub_identity(db):
    register(db, 40)
    pol = policy_for(db)
    assert pol.next_counter() == 1
    pol.save_counter(2048)
    pol.save_counter(1024)  # never goes back
    assert policy_for(db).next_counter() == 2048
    db.conn.execute("UPDATE devices SET last_counter = 77 WHERE eui = ?", (eui_str(40),))
    assert pol.last_device_counter(eui(40)) == 77 and pol.last_device_counter(eui(41)) is None
    assert pol.install_code(eui(40)) == install_code(40) and pol.install_code(eui(41)) is None
    reg.swap_out(db)
    assert policy_for(db).next_counter() == 1  # a new hub: a new counter space


def test_registry_validation_and_removal(db, image):
    with pytest.raises(HubUsageError, match="CRC"):
        reg.add_device(db, eui(50), "ppmid", install_code(50)[:-2] + "00", "MPAN-1")
    with pytest.raises(HubUsageError, match="unknown role"):
        reg.add_device(db, eui(50), "ihd", install_code(50), "MPAN-1")
    with pytest.raises(HubUsageError, match="16 hex digits"):
        reg.add_device(db, "12:34", "ppmid", install_code(50), "MPAN-1")
    e = register(db, 50)
    with pytest.raises(HubUsageError, match="already registered"):
        register(db, 50)
    with pytest.raises(HubUsageError, match="two"):
        reg.set_suppliers(db, "MPAN-1", ["A", "B", "C"])
    with pytest.raises(HubUsageError, match="differ"):
        reg.set_suppliers(db, "MPAN-1", ["A", "A"])
    rid = rq.update_firmware(db, e, image(), SUPPLIER).id
    with pytest.raises(HubUsageError, match="pending"):
        reg.remove_device(db, e)
    db.finish(rid, "superseded", "test")
    reg.remove_device(db, e)
    assert reg.device(db, e) is None and db.request(rid)["outcome"] == "superseded"
