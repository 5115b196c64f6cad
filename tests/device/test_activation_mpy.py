"""hanfw.activation under the real MicroPython: in a small heap a Supplier-signed CS06 is
checked and acted on, and each bad one refused by name (the power cuts of its counter update:
tests/fault/test_power_cut_counters.py)."""
from __future__ import annotations

from support.gbcskit import cs06, run_activation_check as run


def test_checks_and_refusals_in_a_small_heap(tmp_path):
    # 96 KiB: the unix port loads the device code's bytecode into the heap (gbcs alone 27 KiB),
    # where a board runs it from ROM; the 64 KiB board runs are the virtual-board tests
    cases = [cs06(5), cs06(5), cs06(4), cs06(6, key=0x777),
             cs06(6, recipient=bytes.fromhex("00DB1234567890A6")), cs06(6, code=0x00B3),
             cs06(6)[:-1], cs06(7, image=bytes(32)), cs06(8, at="20270101000000Z"),
             cs06(9, at="99991231235959Z")]
    got, heap = run(tmp_path, [{"op": "run", "msg": m.hex()} for m in cases], heapsize="96K", on_host=True)
    assert got == [["ok", "activate"], ["replayed-counter", "None"], ["replayed-counter", "None"],
                   ["bad-signature", "None"], ["wrong-recipient", "None"],
                   ["unknown-message-code", "None"], ["truncated", "None"],
                   ["hash-mismatch", "None"], ["ok", "pending"], ["ok", "cancel"]]
    # the first commands load the crypto modules and p256's tables (kept, as on a board);
    # after that a command, accepted or refused, keeps nothing
    print("heap kept per command:", heap)
    assert max(heap[2:]) < 512, heap
