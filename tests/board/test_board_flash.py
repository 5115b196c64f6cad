"""The board's own flash: its real inactive bank written, read back and hashed; boot control on a
scratch region; the free heap reported. Regions come from boards/<kind>/board.toml."""
import hashlib
import random

import pytest

from boardkit import NOTES

SECTOR = 4096
ESP_SCRATCH = "scratch"  # the data partition label the ESP32 boot-control checks use


def _regions_overlap(a0, a1, b0, b1):
    return a0 < b1 and b0 < a1


@pytest.fixture(scope="module")
def bank(board):
    """(board-side expression of the inactive bank's block device, its offset, size, index)."""
    board.need("hanfw.banks", "hanfw.bootctl", "bchk", "bchk_flash")
    if board.kind == "esp32":
        info = board.call("import bchk_flash\n_p, _i, _r = bchk_flash.next_update()\nbchk.out([_i, _r])")
        (_t, _st, addr, size, label, _enc), running = info
        idx = [b.name for b in board.spec.banks].index(label)
        return "_p", addr, size, idx, running[4]
    ctl = board.spec.region("bootctl")
    rec = board.call("import bchk_flash\nbchk.out(bchk_flash.record(bchk_flash.region(%d, %d)))"
                   % (ctl.offset, ctl.size))
    active = rec["active"] if rec else 0
    b = board.spec.banks[1 - active]
    board.run("import bchk_flash\n_p = bchk_flash.region(%d, %d)" % (b.offset, b.size))
    return "_p", b.offset, b.size, 1 - active, board.spec.banks[active].name


def test_inactive_bank_is_the_board_toml_bank_not_running(board, on_board, bank):
    _, addr, size, idx, running = bank
    b = board.spec.banks[idx]
    assert (addr, size) == (b.offset, b.size)
    assert running != b.name and running in [x.name for x in board.spec.banks]
    assert on_board("bchk.out(_p.ioctl(4, 0) * _p.ioctl(5, 0))") == size


def test_inactive_bank_written_read_back_and_hashed(board, on_board, bank):
    data = random.Random(0xBA4C).randbytes(16 * SECTOR)
    for i in range(0, len(data), 4 * SECTOR):
        board.put_buffer("_d", data[i:i + 4 * SECTOR])
        on_board("bchk_flash.write_sectors(_p, %d, _d)\n_d = None\nbchk.out(1)" % (i // SECTOR), timeout=120)
    got = on_board("bchk.out(bchk_flash.sha(_p, %d))" % len(data), timeout=120)
    assert got == hashlib.sha256(data).hexdigest()
    # leave no half image behind: the first sector blank again
    assert on_board("bchk_flash.erase(_p, 0, 1)\nbchk.out(bchk_flash.is_blank(_p, 0, 1))") is True


def test_inactive_bank_last_sector_is_in_the_bank(board, on_board, bank):
    _, _, size, _, _ = bank
    last = size // SECTOR - 1
    data = random.Random(3).randbytes(SECTOR)
    board.put_buffer("_d", data)
    got = on_board("bchk_flash.write_sectors(_p, %d, _d)\n_d = None\nbchk.out(bchk_flash.sha(_p, %d, %d))"
                   % (last, SECTOR, last))
    assert got == hashlib.sha256(data).hexdigest()
    assert on_board("bchk_flash.erase(_p, %d, 1)\nbchk.out(bchk_flash.is_blank(_p, %d, 1))" % (last, last))


def test_offset_write_does_not_erase(board, on_board, bank):
    # the offset form writes without erasing: bytes written before in the same sector stay
    got = on_board("bchk_flash.erase(_p, 0, 1)\n_p.writeblocks(0, b'\\x0f' * 16, 0)\n"
                   "_p.writeblocks(0, b'\\x03' * 16, 16)\n_b = bytearray(40)\n_p.readblocks(0, _b, 0)\n"
                   "bchk.out(bchk.hx(_b))\nbchk_flash.erase(_p, 0, 1)")
    assert got == "0f" * 16 + "03" * 16 + "ff" * 8


def test_free_heap_is_reported(board, on_board, need, request):
    need("bchk")
    free = on_board("bchk.out(bchk.free())")
    request.config.stash.setdefault(NOTES, []).append(
        "free heap on the board with the checks loaded: %d bytes (at connect: %d)" % (free, board.facts["free"]))
    assert free > 16 * 1024, "only %d bytes of heap left on the board" % free


# ---------------------------------------------------------------- boot control on scratch

@pytest.fixture(scope="module")
def scratch(board):
    """A board-side block device `_s` of two erased 4 KiB sectors that is not a bank; skip if none."""
    board.need("hanfw.banks", "hanfw.bootctl", "bchk", "bchk_flash")
    if board.kind == "esp32":
        got = board.call("import bchk_flash\n_s = bchk_flash.esp_partition(%r)\nbchk.out(_s is not None)" % ESP_SCRATCH)
        if not got:
            pytest.skip("no scratch partition: the ESP32 partition table has no data partition labelled %r "
                        "(8 KiB) for the boot-control checks" % ESP_SCRATCH)
        yield "esp32 partition %r" % ESP_SCRATCH
        return
    start, length = board.call("import bchk_flash\nbchk_flash.nrf_unused()")
    taken = [r for r in board.spec.regions if r.name not in ("unused", "firmware")]
    free = [a for a in range(start, start + length, SECTOR)
            if not any(_regions_overlap(a, a + SECTOR, r.offset, r.offset + r.size) for r in taken)]
    where = None
    if len(free) >= 2 and free[1] == free[0] + SECTOR:
        where = free[0]
    else:
        ctl = board.spec.region("bootctl")
        board.run("_s = bchk_flash.region(%d, %d)" % (ctl.offset, 2 * SECTOR))
        if board.call("bchk.out(bchk_flash.is_blank(_s, 0, 2))"):
            where = ctl.offset  # nothing deployed: the record's own pages are free; left erased
        else:
            pytest.skip("no scratch region: nrf.unused_flash_start()/length() = 0x%x/0x%x holds only the "
                        "board's boot-control record (board.toml bootctl), which is in use" % (start, length))
    board.run("_s = bchk_flash.region(%d, %d)" % (where, 2 * SECTOR))
    yield "nrf.Flash(start=0x%x, len=0x2000)" % where
    board.run("bchk_flash.erase(_s, 0, 2)")


def boot(on_board, code):
    return on_board("from hanfw import bootctl as _bc\n_c = _bc.BootControl(_s)\n" + code, timeout=120)


DIGEST = hashlib.sha256(b"image").hexdigest()


def test_bootctl_initialise_writes_a_confirmed_record(on_board, scratch):
    got = boot(on_board, "_c.initialise(1, 1000, 2, bchk.uh(%r))\nbchk.out(bchk_flash.rec_facts(_c.load()))" % DIGEST)
    assert got == {"seq": 1, "active": 0, "state": [3, 0], "why": 0, "version": [1, 0], "length": [1000, 0],
                   "secver": [2, 0], "floor": 2, "hash": [DIGEST, "00" * 32]}


def test_bootctl_update_trial_and_confirm(on_board, scratch):
    got = boot(on_board, "_c.initialise(1, 1000, 0, bchk.uh(%r))\n"
                         "_t = _c.begin_update()\n_c.stage(_t, 2, 2000, 5, bchk.uh(%r))\n_c.activate()\n"
                         "_b, _n, _e = _bc.decide(_c.load(), lambda i, r: True)\n_c.commit(_n)\n"
                         "_ok = _c.confirm()\nbchk.out([_t, _b, _e, _ok, bchk_flash.rec_facts(_c.load())])"
                % (DIGEST, DIGEST))
    t, b, event, ok, rec = got
    assert (t, b, event, ok) == (1, 1, "trial", True)
    assert rec["active"] == 1 and rec["state"] == [3, 3] and rec["version"] == [1, 2] and rec["floor"] == 5


def test_bootctl_unconfirmed_trial_rolls_back(on_board, scratch):
    got = boot(on_board, "_c.initialise(1, 1000, 0, bchk.uh(%r))\n"
                         "_t = _c.begin_update()\n_c.stage(_t, 2, 2000, 0, bchk.uh(%r))\n_c.activate()\n"
                         "_b, _n, _e = _bc.decide(_c.load(), lambda i, r: True)\n_c.commit(_n)\n"
                         "_b, _n, _e = _bc.decide(_c.load(), lambda i, r: True)\n_c.commit(_n)\n"
                         "bchk.out([_b, _e, bchk_flash.rec_facts(_c.load())])" % (DIGEST, DIGEST))
    b, event, rec = got
    assert (b, event) == (0, "rollback")
    assert rec["active"] == 0 and rec["state"] == [3, 4] and rec["why"] == 1  # REJECTED, unconfirmed reboot


def test_bootctl_staged_bank_with_a_bad_hash_is_rejected(on_board, scratch):
    got = boot(on_board, "_c.initialise(1, 1000, 0, bchk.uh(%r))\n"
                         "_t = _c.begin_update()\n_c.stage(_t, 2, 2000, 0, bchk.uh(%r))\n_c.activate()\n"
                         "_b, _n, _e = _bc.decide(_c.load(), lambda i, r: i == 0)\n_c.commit(_n)\n"
                         "bchk.out([_b, _e, bchk_flash.rec_facts(_c.load())])" % (DIGEST, DIGEST))
    b, event, rec = got
    assert (b, event) == (0, "rollback") and rec["state"][1] == 4 and rec["why"] == 2


def test_bootctl_torn_newest_copy_leaves_the_previous_record(on_board, scratch):
    # clear bits in the copy just written (a write cut short): the other copy is in charge again
    got = boot(on_board, "_c.initialise(1, 1000, 0, bchk.uh(%r))\n_t = _c.begin_update()\n"
                         "_c.stage(_t, 2, 2000, 0, bchk.uh(%r))\n_i = _c.copy_index\n"
                         "_s.writeblocks(_i, bytes(8), 40)\n_r = _c.load()\n"
                         "bchk.out([_i, _c.copy_index, bchk_flash.rec_facts(_r)])" % (DIGEST, DIGEST))
    torn, now, rec = got
    assert now == 1 - torn
    assert rec["seq"] == 1 and rec["state"] == [3, 0]


def test_bootctl_new_update_refused_while_on_trial(on_board, scratch):
    got = boot(on_board, "_c.initialise(1, 1000, 0, bchk.uh(%r))\n_t = _c.begin_update()\n"
                         "_c.stage(_t, 2, 2000, 0, bchk.uh(%r))\n_c.activate()\n"
                         "_b, _n, _e = _bc.decide(_c.load(), lambda i, r: True)\n_c.commit(_n)\n"
                         "try:\n    _c.begin_update()\n    bchk.out(None)\n"
                         "except _bc.BootCtlError as e:\n    bchk.out(e.reason)" % (DIGEST, DIGEST))
    assert got == "unconfirmed"
