"""hanfw.bootctl: the two-copy boot-control record for app banks, and its decisions."""
import hashlib
import itertools
import struct

import pytest

from hanfw import bootctl
from hanfw.bootctl import CONFIRMED, EMPTY, REJECTED, STAGED, TRIAL, BootControl, BootCtlError, Record
from support.ramflash import PowerCut, RamNor

H0 = hashlib.sha256(b"bank zero").digest()
H1 = hashlib.sha256(b"bank one").digest()


def fresh():
    dev = RamNor(2)
    bc = BootControl(dev)
    bc.initialise(version=0x100, length=1000, secver=1, digest=H0)
    return dev, bc


def test_record_literal_layout():
    r = Record()
    r.seq, r.active, r.state, r.why = 7, 1, [CONFIRMED, TRIAL], bootctl.WHY_NONE
    r.version, r.length, r.secver, r.floor = [0x100, 0x200], [10, 20], [1, 2], 1
    r.hash = [bytes(32), b"\x11" * 32]
    raw = r.pack()
    assert len(raw) == bootctl.RECORD_LEN == struct.calcsize(bootctl._FMT) + 4
    assert raw[:12] == bytes.fromhex("48424331" "07000000" "01" "03" "02" "00")
    assert raw[12:40] == bytes.fromhex("00010000" "00020000" "0a000000" "14000000" "01000000" "02000000" "01000000")
    back = Record.parse(raw)
    assert back.pack() == raw


@pytest.mark.parametrize("pos", [0, 4, 8, 9, 40, 103, 104, 107])
def test_corrupt_or_torn_record_is_ignored(pos):
    raw = bytearray(Record().pack())
    raw[pos] ^= 0x04
    assert Record.parse(bytes(raw)) is None
    assert Record.parse(bytes(raw[:50])) is None
    assert Record.parse(b"\xff" * 108) is None


def test_newest_copy_wins_and_commits_alternate():
    dev, bc = fresh()
    first = bc.copy_index
    r = bc.current()
    bc.commit(r)
    assert bc.copy_index == 1 - first
    assert bc.current().seq == r.seq
    bc.commit(bc.current())
    assert bc.copy_index == first


def test_full_update_cycle_and_floor_rises_only_at_confirm():
    dev, bc = fresh()
    t = bc.begin_update()
    assert t == 1
    bc.stage(t, version=0x200, length=500, secver=3, digest=H1)
    assert bc.current().floor == 1
    bc.activate()
    r = bc.current()
    assert r.active == 1 and r.state == [CONFIRMED, STAGED] and r.floor == 1
    bank, new, event = bootctl.decide(r, lambda i, rec: True)
    assert (bank, event) == (1, "trial") and new.state[1] == TRIAL
    bc.commit(new)
    assert bc.current().floor == 1
    assert bc.confirm() is True
    r = bc.current()
    assert r.state == [CONFIRMED, CONFIRMED] and r.floor == 3
    assert bootctl.decide(r, lambda i, rec: True) == (1, None, "boot")


def test_unconfirmed_trial_rolls_back_on_next_boot():
    dev, bc = fresh()
    bc.begin_update()
    bc.stage(1, 0x200, 500, 1, H1)
    bc.activate()
    bank, new, _ = bootctl.decide(bc.current(), lambda i, r: True)
    bc.commit(new)
    bank, new, event = bootctl.decide(bc.current(), lambda i, r: True)
    assert (bank, event) == (0, "rollback")
    assert new.state == [CONFIRMED, REJECTED] and new.why == bootctl.WHY_UNCONFIRMED and new.active == 0


def test_health_failure_rejects_now():
    dev, bc = fresh()
    bc.begin_update()
    bc.stage(1, 0x200, 500, 5, H1)
    bc.activate()
    bc.commit(bootctl.decide(bc.current(), lambda i, r: True)[1])
    bc.reject_running()
    r = bc.current()
    assert r.active == 0 and r.state[1] == REJECTED and r.why == bootctl.WHY_HEALTH and r.floor == 1


def test_staged_bank_with_bad_hash_is_never_booted():
    dev, bc = fresh()
    bc.begin_update()
    bc.stage(1, 0x200, 500, 1, H1)
    bc.activate()
    bank, new, event = bootctl.decide(bc.current(), lambda i, r: i == 0)
    assert (bank, event) == (0, "rollback") and new.state[1] == REJECTED and new.why == bootctl.WHY_BAD_HASH


def test_confirmed_bank_corrupted_falls_back_to_other_confirmed():
    r = Record()
    r.state = [CONFIRMED, CONFIRMED]
    r.active = 1
    bank, new, event = bootctl.decide(r, lambda i, rec: i == 0)
    assert (bank, event) == (0, "rollback") and new.state[1] == REJECTED and new.active == 0


def test_nothing_bootable_is_reported_not_guessed():
    r = Record()
    r.state = [CONFIRMED, EMPTY]
    bank, new, event = bootctl.decide(r, lambda i, rec: False)
    assert bank == -1 and event == "no-bootable-bank"


def test_begin_refused_while_running_bank_unconfirmed():
    dev, bc = fresh()
    bc.begin_update()
    bc.stage(1, 0x200, 500, 1, H1)
    bc.activate()
    bc.commit(bootctl.decide(bc.current(), lambda i, r: True)[1])
    with pytest.raises(BootCtlError) as ei:
        bc.begin_update()
    assert ei.value.reason == "unconfirmed"


def test_begin_invalidates_target_before_erase():
    dev, bc = fresh()
    bc.begin_update()
    bc.stage(1, 0x200, 500, 1, H1)  # held, not activated (hcalcs)
    assert bc.begin_update() == 1  # a new distribution replaces it
    r = bc.current()
    assert r.state[1] == EMPTY and r.hash[1] == bytes(32)


def test_activate_without_staged_image():
    dev, bc = fresh()
    with pytest.raises(BootCtlError) as ei:
        bc.activate()
    assert ei.value.reason == "no-image"


def test_decide_never_boots_an_unverified_or_non_runnable_bank():
    """Exhaustive over states, active bank and which banks verify."""
    for s0, s1, active, ok0, ok1 in itertools.product(range(5), range(5), (0, 1), (False, True), (False, True)):
        r = Record()
        r.state = [s0, s1]
        r.active = active
        ok = (ok0, ok1)
        bank, new, event = bootctl.decide(r, lambda i, rec: ok[i])
        final = new or r
        if bank >= 0:
            assert ok[bank], (s0, s1, active, ok)
            assert final.active == bank
            assert final.state[bank] in (CONFIRMED, TRIAL)
            if final.state[bank] == TRIAL:
                assert r.state[bank] == STAGED  # only a first boot runs on trial
        else:
            runnable = [i for i in (0, 1) if ok[i] and r.state[i] == CONFIRMED]
            assert not runnable, (s0, s1, active, ok)


@pytest.mark.parametrize("torn", [False, True])
def test_power_cut_at_every_op_of_a_commit_keeps_a_valid_record(torn):
    """Cut before each flash op of activate(): the old or the new record is in charge, never none."""
    dev, bc = fresh()
    bc.begin_update()
    bc.stage(1, 0x200, 500, 1, H1)
    before = bc.current().pack()
    start_ops = dev.ops
    bc.activate()
    total = dev.ops - start_ops
    assert total == 2  # erase + write
    for i in range(1, total + 1):
        dev2, bc2 = fresh()
        bc2.begin_update()
        bc2.stage(1, 0x200, 500, 1, H1)
        dev2.cut_before = dev2.ops + i
        dev2.torn = torn
        with pytest.raises(PowerCut):
            bc2.activate()
        dev2.dead = False
        dev2.cut_before = None
        got = BootControl(dev2).load()
        assert got is not None
        assert got.pack() == before  # the cut op never took effect; the old record rules
