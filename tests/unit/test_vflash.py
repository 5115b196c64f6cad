"""The emulated NOR flash of the virtual board (CPython side; tests/device covers MicroPython)."""
import errno

import pytest

from hanota.vboard.rt import vflash
from hanota.vboard.rt.vflash import SECTOR, NorFlash, PowerCut

SIZE = 8 * SECTOR

# A fixed sequence of flash ops (kind, address, length or byte) used by the cut tests.
SEQUENCE = [
    ("erase", 0, SECTOR),
    ("write", 0x10, bytes(range(40))),
    ("write", 0x100, b"\x5a" * 32),
    ("erase", SECTOR, 2 * SECTOR),          # two ops
    ("write", SECTOR + 8, b"\xa5" * 64),
    ("write", 0x10, bytes(40)),             # clears more bits: legal
    ("erase", 0, SECTOR),
    ("write", 0x20, b"\x01\x02\x03\x04" * 4),
]


def _ops_of(seq):
    out = []
    for kind, addr, arg in seq:
        if kind == "erase":
            out += [("erase", a, SECTOR) for a in range(addr, addr + arg, SECTOR)]
        else:
            out.append((kind, addr, arg))
    return out


OPS = _ops_of(SEQUENCE)


@pytest.fixture
def chip(tmp_path):
    path = str(tmp_path / "chip.bin")
    vflash.create(path, SIZE)
    return path


def _run(flash, seq=SEQUENCE):
    for kind, addr, arg in seq:
        if kind == "erase":
            flash.erase(addr, arg)
        else:
            flash.write(addr, arg)


def _model(n_ops):
    """The flash contents after the first n_ops single ops of OPS (an independent model)."""
    mem = bytearray(b"\xff" * SIZE)
    for kind, addr, arg in OPS[:n_ops]:
        if kind == "erase":
            mem[addr:addr + SECTOR] = b"\xff" * SECTOR
        else:
            mem[addr:addr + len(arg)] = arg
    return mem


def _file(path):
    with open(path, "rb") as f:
        return f.read()


def test_create_is_blank_with_zero_counters(chip):
    assert _file(chip) == b"\xff" * SIZE
    c = vflash.counters(chip + ".ctl")
    assert (c["ops"], c["erases"], c["writes"], c["cut_at"], c["dead"]) == (0, 0, 0, None, False)
    assert c["wear"] == [0] * 8


def test_write_can_only_clear_bits(chip):
    f = NorFlash(chip)
    f.write(0x40, b"\xf0\x0f")
    f.write(0x40, b"\x80\x01")  # 1 -> 0 only: fine
    assert f.read(0x40, 2) == b"\x80\x01"
    with pytest.raises(OSError) as e:
        f.write(0x40, b"\xc0\x01")  # bit 6 of the first byte would go 0 -> 1
    assert e.value.errno == errno.EIO
    assert "0x40" in str(e.value)
    assert f.read(0x40, 2) == b"\x80\x01"  # nothing written
    c = vflash.counters(chip + ".ctl")
    assert (c["ops"], c["writes"]) == (3, 3)  # the failed write counts


def test_failed_write_writes_nothing_even_where_legal(chip):
    f = NorFlash(chip)
    f.write(0x1000, b"\x00")
    with pytest.raises(OSError):
        f.write(0xFFF, b"\x00\x01\x00")  # bytes 0 and 2 legal, byte 1 not
    assert f.read(0xFFF, 3) == b"\xff\x00\xff"


def test_erase_sets_sectors_to_ff_and_counts_each(chip):
    f = NorFlash(chip)
    f.write(0, bytes(3 * SECTOR))
    f.erase(SECTOR, 2 * SECTOR)
    assert f.read(0, SECTOR) == bytes(SECTOR)
    assert f.read(SECTOR, 2 * SECTOR) == b"\xff" * (2 * SECTOR)
    c = vflash.counters(chip + ".ctl")
    assert (c["ops"], c["erases"], c["writes"]) == (3, 2, 1)
    assert c["wear"][:4] == [0, 1, 1, 0]


@pytest.mark.parametrize("addr,length", [(1, SECTOR), (0, 100), (SIZE, SECTOR), (0, 0)])
def test_bad_erase_is_rejected_without_op(chip, addr, length):
    f = NorFlash(chip)
    with pytest.raises(OSError) as e:
        f.erase(addr, length)
    assert e.value.errno == errno.EINVAL
    assert vflash.counters(chip + ".ctl")["ops"] == 0


def test_access_outside_the_chip_fails(chip):
    f = NorFlash(chip)
    with pytest.raises(OSError):
        f.write(SIZE - 2, b"\x00" * 4)
    with pytest.raises(OSError):
        f.read(SIZE - 2, 4)


def test_op_counter_is_exact_and_persists(chip):
    f = NorFlash(chip)
    _run(f)
    f.close()
    c = vflash.counters(chip + ".ctl")
    assert c["ops"] == len(OPS) == 9
    assert c["erases"] == sum(1 for o in OPS if o[0] == "erase")
    assert c["writes"] == sum(1 for o in OPS if o[0] == "write")
    assert c["wear"][:3] == [2, 1, 1]
    g = NorFlash(chip)
    assert g.ops() == 9
    g.write(0x800, b"\x00")
    assert vflash.counters(chip + ".ctl")["ops"] == 10
    vflash.reset_counters(chip + ".ctl")
    c = vflash.counters(chip + ".ctl")
    assert (c["ops"], c["erases"], c["writes"], c["wear"]) == (0, 0, 0, [0] * 8)


def test_reference_run_matches_model(chip):
    _run(NorFlash(chip))
    assert _file(chip) == _model(len(OPS))


@pytest.mark.parametrize("n", range(1, len(OPS) + 1))
def test_cut_before_op_n_leaves_exactly_ops_before_it(chip, n):
    vflash.schedule_cut(chip + ".ctl", n)
    f = NorFlash(chip)
    with pytest.raises(PowerCut):
        _run(f)
    assert _file(chip) == _model(n - 1)
    c = vflash.counters(chip + ".ctl")
    assert (c["ops"], c["dead"], c["cut_at"], c["last_cut"], c["cuts"]) == (n - 1, True, None, n, 1)
    # after the cut nothing takes effect
    before = _file(chip)
    with pytest.raises(PowerCut):
        f.erase(0, SECTOR)
    with pytest.raises(PowerCut):
        f.write(0, b"\x00")
    with pytest.raises(PowerCut):
        f.read(0, 1)
    assert _file(chip) == before
    assert vflash.counters(chip + ".ctl")["ops"] == n - 1


def test_other_handles_on_a_dead_chip_fail_too(chip):
    vflash.schedule_cut(chip + ".ctl", 1)
    a = NorFlash(chip)
    b = NorFlash(chip, power_on=False)
    with pytest.raises(PowerCut):
        a.erase(0)
    with pytest.raises(PowerCut):
        b.write(0, b"\x00")
    assert _file(chip) == b"\xff" * SIZE


def test_power_on_after_a_cut_boots_from_the_file(chip):
    vflash.schedule_cut(chip + ".ctl", 3)
    with pytest.raises(PowerCut):
        _run(NorFlash(chip))
    f = NorFlash(chip)  # power comes back
    assert not vflash.counters(chip + ".ctl")["dead"]
    assert f.read(0, SIZE) == _model(2)
    f.write(0x200, b"\x00")  # the cut was one-shot
    assert vflash.counters(chip + ".ctl")["ops"] == 3


@pytest.mark.parametrize("n", [i + 1 for i, op in enumerate(OPS) if op[0] == "write"])
def test_torn_write_lands_a_prefix(chip, n):
    vflash.schedule_cut(chip + ".ctl", n, torn=True)
    with pytest.raises(PowerCut):
        _run(NorFlash(chip))
    _, addr, data = OPS[n - 1]
    keep = (len(data) // 2) & ~3
    expected = _model(n - 1)
    expected[addr:addr + keep] = data[:keep]
    assert _file(chip) == expected
    assert 0 < keep < len(data)


def test_torn_erase_erases_the_first_half_of_the_sector(chip):
    f = NorFlash(chip)
    f.write(0, bytes(SECTOR))
    vflash.schedule_cut(chip + ".ctl", 2, torn=True)
    with pytest.raises(PowerCut):
        f.erase(0, SECTOR)
    assert _file(chip)[:SECTOR] == b"\xff" * 2048 + bytes(2048)


def test_torn_erase_of_a_range_stops_at_the_cut_sector(chip):
    f = NorFlash(chip)
    f.write(0, bytes(3 * SECTOR))
    vflash.schedule_cut(chip + ".ctl", 3, torn=True)  # 2nd sector of the erase
    with pytest.raises(PowerCut):
        f.erase(0, 3 * SECTOR)
    data = _file(chip)
    assert data[:SECTOR] == b"\xff" * SECTOR
    assert data[SECTOR:2 * SECTOR] == b"\xff" * 2048 + bytes(2048)
    assert data[2 * SECTOR:3 * SECTOR] == bytes(SECTOR)


def test_torn_illegal_write_lands_nothing(chip):
    f = NorFlash(chip)
    f.write(0, bytes(16))
    vflash.schedule_cut(chip + ".ctl", 2, torn=True)
    with pytest.raises(PowerCut):
        f.write(0, b"\xff" * 16)
    assert _file(chip)[:16] == bytes(16)


def test_clear_cut_disarms(chip):
    vflash.schedule_cut(chip + ".ctl", 1, torn=True)
    assert vflash.counters(chip + ".ctl")["cut_at"] == 1
    vflash.clear_cut(chip + ".ctl")
    c = vflash.counters(chip + ".ctl")
    assert (c["cut_at"], c["torn"]) == (None, False)
    NorFlash(chip).erase(0)


def test_schedule_cut_through_an_open_chip(chip):
    f = NorFlash(chip)
    f.write(0, b"\x00")
    f.schedule_cut(f.ops() + 2)
    f.write(1, b"\x00")
    with pytest.raises(PowerCut):
        f.write(2, b"\x00")
    assert _file(chip)[:3] == b"\x00\x00\xff"


def test_retained_word_survives_reopen(chip):
    f = NorFlash(chip)
    assert f.retained() is None
    f.set_retained(0x190000)
    assert NorFlash(chip).retained() == 0x190000
    assert vflash.counters(chip + ".ctl")["retained"] == 0x190000


def test_sidecar_for_another_chip_is_refused(tmp_path):
    a = str(tmp_path / "a.bin")
    vflash.create(a, SIZE)
    vflash.create(str(tmp_path / "b.bin"), 2 * SIZE, ctl_path=str(tmp_path / "b.ctl"))
    with pytest.raises(OSError):
        NorFlash(str(tmp_path / "b.bin"), ctl_path=a + ".ctl")
