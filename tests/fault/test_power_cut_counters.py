"""Power cuts at every flash operation of the HCALCS's GBCS counter update (hanfw.activation
storing the last accepted originator counter per Supplier, and a pending future-dated
activation, in the state file before it acts): under the real MicroPython with the state file
on littlefs over a RAM block device (as the boards keep it; tests/device/mpy/activation_check.py),
a clean run counts the flash operations of processing one CS06, then a copy of the flash loses
power before each one in turn, is remounted, and the same CS06 is sent again. The count of
accepted replays (the command acted on before the cut and again after) must be 0, and the held
image record must never be lost. Fast (seconds): runs in CI in full."""
from __future__ import annotations

from support.gbcskit import cs06, run_activation_check as run


def test_counter_update_survives_a_cut_at_every_flash_op(tmp_path):
    cases = [{"op": "run", "msg": cs06(3).hex()},  # a counter already stored
             {"op": "sweep", "msg": cs06(4).hex()},  # immediate: counter update, then act
             {"op": "sweep", "msg": cs06(5, at="20270101000000Z").hex()}]  # counter + pending
    got, _ = run(tmp_path, cases)
    print("flash ops, replays accepted, states lost:", got[1:])
    assert got[0] == ["ok", "activate"]
    for n, replays, lost in (map(int, r) for r in got[1:]):
        assert n >= 2, "the update took %d flash operations" % n
        assert (replays, lost) == (0, 0), "%d accepted replays, %d states lost" % (replays, lost)
