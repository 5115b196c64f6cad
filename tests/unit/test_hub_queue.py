"""The transfer queue on the database alone, with an explicit clock: priority order,
slots in flight, retries with exponential backoff, awake devices, deadlines."""
from __future__ import annotations

import pytest

from hanota.hub import HubDB
from hanota.hub import queue
from hanota.hub import requests as rq
from hanota.hub.queue import RetryPolicy
from support import otabuild
from support.hubfixtures import SUPPLIER, build_image, register

pytestmark = pytest.mark.timeout(30)


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    key = otabuild.new_key()
    d = tmp_path_factory.mktemp("img")
    return {r: build_image(d, key, r, 2, size=300) for r in ("ppmid", "althan", "hcalcs")}


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def db(tmp_path, clock):
    d = HubDB.open(tmp_path / "hub.db", clock=clock)
    yield d
    d.close()


def submit(db, clock, images, n, role, at):
    clock.t = at
    e = register(db, n, role=role, premises="P%d" % n)
    return rq.update_firmware(db, e, images[role], SUPPLIER).id


RETRY = RetryPolicy(base=2.0, cap=10.0, max_attempts=4, answer_timeout=30.0)


def test_priority_order_then_request_time_and_the_in_flight_limit(db, clock, images):
    ids = {"ppmid-1": submit(db, clock, images, 1, "ppmid", 1001),
           "althan": submit(db, clock, images, 2, "althan", 1002),
           "hcalcs": submit(db, clock, images, 3, "hcalcs", 1003),
           "ppmid-4": submit(db, clock, images, 4, "ppmid", 1004),
           "hcalcs-5": submit(db, clock, images, 5, "hcalcs", 1005)}
    clock.t = 1010
    # default priorities: hcalcs 1, then ppmid and althan 2, each by request time
    assert [r["id"] for r in queue.queued_updates(db)] == [
        ids["hcalcs"], ids["hcalcs-5"], ids["ppmid-1"], ids["althan"], ids["ppmid-4"]]
    first = queue.fill_slots(db, 2, RETRY, clock.t)
    assert [r["id"] for r in first] == [ids["hcalcs"], ids["hcalcs-5"]]
    assert all(r["state"] == "notifying" and r["attempts"] == 1 for r in first)
    assert queue.fill_slots(db, 2, RETRY, clock.t) == []  # both slots taken
    promoted = [r["id"] for r in first]
    while True:
        slot = queue.in_slot(db)
        assert len(slot) <= 2
        if not slot:
            break
        db.finish(slot[-1]["id"], "activated", None, 2)  # any one of them ends
        promoted += [r["id"] for r in queue.fill_slots(db, 2, RETRY, clock.t)]
    assert promoted == [ids[k] for k in ("hcalcs", "hcalcs-5", "ppmid-1", "althan", "ppmid-4")]


def test_priorities_are_configurable(db, clock, images):
    a = submit(db, clock, images, 1, "hcalcs", 1001)
    b = submit(db, clock, images, 2, "althan", 1002)
    c = submit(db, clock, images, 3, "ppmid", 1003)
    db.set_priorities({"althan": 0, "ppmid": 1, "hcalcs": 5})
    assert db.priorities() == {"althan": 0, "ppmid": 1, "hcalcs": 5}
    assert [r["id"] for r in queue.queued_updates(db)] == [b, c, a]
    db.set_priorities({"althan": 3, "ppmid": 0})
    assert [r["id"] for r in queue.queued_updates(db)] == [c, b, a]
    db.set_priorities({"ppmid": 3})  # a tie: request time decides
    assert [r["id"] for r in queue.queued_updates(db)] == [b, c, a]


def test_absent_device_backs_off_exponentially_then_fails(db, clock, images):
    rid = submit(db, clock, images, 1, "ppmid", 1000)
    other = submit(db, clock, images, 2, "ppmid", 1001)
    t = 1001.0
    delays = []
    while True:
        clock.t = t
        promoted = queue.fill_slots(db, 1, RETRY, t)
        assert [r["id"] for r in promoted] == [rid]
        assert db.request(rid)["deadline"] == t + RETRY.answer_timeout
        result = queue.attempt_failed(db, rid, "no answer", RETRY, t + 30)
        if result == "failed":
            break
        assert result == "retry"
        row = db.request(rid)
        delays.append(row["next_attempt"] - (t + 30))
        # during its backoff it is not a candidate, and it does not block the other one
        assert [r["id"] for r in queue.candidates(db, t + 30)] == [other]
        assert [r["id"] for r in queue.candidates(db, row["next_attempt"])][0] == rid
        t = row["next_attempt"]
    assert delays == [2.0, 4.0, 8.0]  # base 2 doubled, capped at 10 (not reached)
    r = db.request(rid)
    assert (r["outcome"], r["attempts"]) == ("transfer_failed", 4)
    assert r["reason"] == "no answer (after 4 attempts)"
    assert queue.attempt_failed(db, rid, "late", RETRY, t) == "done"
    assert RetryPolicy(base=2, cap=10).backoff(5) == 10 and RETRY.backoff(1) == 2.0


def test_an_awake_device_gets_a_free_slot_unless_someone_ranks_before_it(db, clock, images):
    first = submit(db, clock, images, 1, "hcalcs", 1001)
    late = submit(db, clock, images, 2, "ppmid", 1002)
    clock.t = 1010
    # `late` polls while `first` (higher priority, eligible) waits: no slot for it
    assert not queue.try_promote_awake(db, late, 1, RETRY, clock.t)
    queue.fill_slots(db, 1, RETRY, clock.t)
    queue.attempt_failed(db, first, "asleep", RETRY, clock.t)  # first backs off 2 s
    # now `late` is awake and nothing eligible ranks before it: it gets the slot at once
    assert queue.try_promote_awake(db, late, 1, RETRY, clock.t)
    assert db.request(late)["state"] == "notifying"
    assert not queue.try_promote_awake(db, first, 1, RETRY, clock.t)  # slot busy
    db.finish(late, "activated")
    # an awake device's own backoff is waived
    assert queue.try_promote_awake(db, first, 1, RETRY, clock.t + 0.5)
    assert db.request(first)["attempts"] == 2


def test_deadlines_and_commands_due(db, clock, images):
    rid = submit(db, clock, images, 1, "ppmid", 1000)
    queue.fill_slots(db, 1, RETRY, 1000)
    assert queue.expired(db, 1029) == [] and [r["id"] for r in queue.expired(db, 1030)] == [rid]
    clock.t = 1000
    e = register(db, 2, premises="P2")
    rv = rq.read_version(db, e, SUPPLIER).id
    assert [r["id"] for r in queue.commands_due(db, 1000)] == [rv]
    queue.attempt_failed(db, rv, "asleep", RETRY, 1000, "device_unreachable")
    assert queue.commands_due(db, 1001) == [] and queue.commands_due(db, 1002)


def test_a_future_dated_activation_waits_at_the_hub_until_its_lead(db, clock, images):
    """SR 11.3 at a future time stays queued at the hub (where the DCC's cancellation can
    still end it) until `activation_lead` seconds before that time; an immediate activation
    and a version read are due at once."""
    later = rq.activate(db, register(db, 3, role="hcalcs", premises="P3"), "ab" * 32,
                        SUPPLIER, at=1100.0).id
    now_ = rq.activate(db, register(db, 4, role="hcalcs", premises="P4"), "cd" * 32,
                       SUPPLIER).id
    rv = rq.read_version(db, register(db, 5, premises="P5"), SUPPLIER).id

    def due(t: float, lead: float) -> list[int]:
        return [r["id"] for r in queue.commands_due(db, t, lead)]
    assert due(1000, 60) == [now_, rv]
    assert due(1039.9, 60) == [now_, rv]
    assert due(1040, 60) == [later, now_, rv]
    assert due(1099, 0) == [now_, rv] and due(1100, 0) == [later, now_, rv]
    assert db.request(later)["state"] == "queued"
