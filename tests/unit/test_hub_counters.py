"""The hub's device-counter journal (hub/counters.py): each accepted counter is on disk before
the frame is acted on, a torn last record is ignored, and the hub folds it into the database
at start and on every pass (then empties it)."""
from __future__ import annotations

import asyncio
import os

from hanota.hub import HubDB
from hanota.hub.counters import RECORD, CounterJournal
from hanota.hub.hub import Hub
from support.hubfixtures import eui, fast_options, register


def test_records_survive_and_a_torn_one_is_ignored(tmp_path):
    j = CounterJournal(tmp_path / "hub.db.counters")
    assert j.record(eui(1), 5) and j.record(eui(1), 9) and j.record(eui(2), 3)
    assert j.record(eui(1), 7)  # out of order: the highest stands
    j.close()
    with open(tmp_path / "hub.db.counters", "ab") as f:
        f.write(RECORD.pack(eui(2), 99)[:7])  # a write cut short
    j = CounterJournal(tmp_path / "hub.db.counters")
    assert j.load() == {eui(1): 9, eui(2): 3}
    j.clear()
    assert j.load() == {} and os.path.getsize(tmp_path / "hub.db.counters") == 0
    j.close()
    assert not j.record(eui(1), 10)  # closed: the frame must be dropped


def test_hub_folds_a_crashed_runs_journal_in_at_start(tmp_path):
    db_path = tmp_path / "hub.db"
    with HubDB.open(db_path) as db:
        register(db, 3)
    j = CounterJournal(str(db_path) + ".counters")
    j.record(eui(3), 41)  # accepted by a hub that was then SIGKILLed
    j.close()

    async def run():
        hub = Hub(db_path, udp=("127.0.0.1", 0), options=fast_options())
        await hub.start()
        try:
            assert hub.policy.last_device_counter(eui(3)) == 41
            assert hub.counters.load() == {}
            assert hub.policy.counter_accepted(eui(3), 42)
            assert hub.counters.load() == {eui(3): 42}
            await hub.tick()
            assert hub.counters.load() == {}
            assert hub.policy.last_device_counter(eui(3)) == 42
        finally:
            await hub.stop()
    asyncio.run(run())
