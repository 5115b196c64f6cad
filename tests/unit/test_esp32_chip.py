"""The virtual ESP32 chip under CPython: esp32.Partition and the emulated bootloader's rules.

tests/device/test_chip_mpy.py runs the same chip inside the real MicroPython.
"""
import errno
import struct

import pytest

from hanota.romfs import build_romfs
from hanota.vboard import firmware, layout
from hanota.vboard.rt import esp32, esp32boot, espfmt, vflash
from hanota.vboard.rt.esp32 import Partition

BOARD = layout.load_board("vboard-esp32")
OTA_0 = BOARD.region("ota_0")
OTA_1 = BOARD.region("ota_1")
OTADATA = BOARD.region("otadata").offset


@pytest.fixture(scope="module")
def apps():
    return {v: firmware.build_app_image(build_romfs({"fwinfo.py": ("V=%r\n" % v).encode()}), v)
            for v in ("1.0.0", "2.0.0")}


@pytest.fixture
def chip(tmp_path, apps):
    """A chip with v1 installed (ota_0) and v2 downloaded into ota_1, booted once."""
    path = tmp_path / "esp32.bin"
    layout.create_flash(BOARD, path)
    firmware.install_firmware(BOARD, path, apps["1.0.0"])
    layout.flash_write(path, OTA_1.offset, apps["2.0.0"])
    flash = vflash.NorFlash(str(path))
    boot(flash)
    return flash


def boot(flash, cause="hard"):
    """Run the bootloader; attach the chip to esp32 as the started firmware would."""
    booted = esp32boot.bootloader(flash, cause)
    assert booted is not None
    table, entry, _info = booted
    esp32.attach(flash, table)
    return entry[4]


def otadata(flash):
    return [espfmt.parse_ota(flash.read(OTADATA + i * 4096, 32)) for i in (0, 1)]


def flip(flash, addr, mask=0x04):
    """Flip bits of one byte (rewriting its sector, as bit rot would leave it)."""
    base = addr - addr % 4096
    data = bytearray(flash.read(base, 4096))
    data[addr - base] ^= mask
    flash.erase(base, 4096)
    flash.write(base, bytes(data))


def ops(flash):
    return vflash.counters(flash.ctl_path)["ops"]


# -- Partition -------------------------------------------------------------------------

def test_find_and_info(chip):
    assert [p.info()[4] for p in Partition.find()] == ["ota_0", "ota_1"]
    assert [p.info()[4] for p in Partition.find(Partition.TYPE_DATA)] == \
        ["nvs", "otadata", "phy_init", "vfs"]
    assert Partition.find(1, 0)[0].info() == (1, 0, 0xD000, 0x2000, "otadata", False)
    assert Partition.find(Partition.TYPE_DATA, label="vfs")[0].info() == \
        (1, 0x81, 0x310000, 0xF0000, "vfs", False)
    assert Partition.find(Partition.TYPE_APP, 0x11)[0].info()[4] == "ota_1"
    assert Partition("ota_1").info() == (0, 0x11, 0x190000, 0x180000, "ota_1", False)
    assert Partition(Partition.RUNNING).info()[4] == "ota_0"
    assert Partition(Partition.BOOT).info()[4] == "ota_0"
    with pytest.raises(OSError) as e:
        Partition("nope")
    assert e.value.errno == errno.ENOENT


def test_plain_writeblocks_erases_first_offset_form_does_not(chip):
    p = Partition("nvs")
    assert (p.ioctl(4, 0), p.ioctl(5, 0)) == (4, 4096)
    before = ops(chip)
    p.writeblocks(1, b"\x00" * 8192)
    assert ops(chip) - before == 3  # two erases, one write
    p.writeblocks(1, b"\x5a" * 4096)  # over zeros: fine, erased first
    buf = bytearray(4096)
    p.readblocks(1, buf)
    assert buf == b"\x5a" * 4096
    with pytest.raises(OSError) as e:
        p.writeblocks(1, b"\xff" * 16, 0)  # offset form: no erase, NOR rule
    assert e.value.errno == errno.EIO
    assert p.ioctl(6, 1) == 0
    p.writeblocks(1, b"\x11\x22", 100)
    small = bytearray(4)
    p.readblocks(1, small, 99)
    assert small == b"\xff\x11\x22\xff"


def test_block_size_below_the_sector_keeps_the_neighbours(chip):
    p = Partition("nvs", block_size=512)
    assert p.ioctl(4, 0) == 32
    p.writeblocks(0, b"\x00" * 4096)
    p.writeblocks(3, b"\x33" * 512)  # erases sector 0, rewrites blocks 0-2 and 4-7
    buf = bytearray(4096)
    p.readblocks(0, buf)
    assert buf == b"\x00" * 1536 + b"\x33" * 512 + b"\x00" * 2048
    assert p.ioctl(6, 0) == -errno.EINVAL  # erase needs the native block size


def test_access_outside_a_partition_fails(chip):
    p = Partition("phy_init")
    with pytest.raises(OSError):
        p.readblocks(1, bytearray(16))
    with pytest.raises(OSError):
        p.writeblocks(0, bytearray(8192))


def test_set_boot_writes_the_next_seq_into_the_other_copy(chip):
    e0, e1 = otadata(chip)
    assert (e0[0], e0[2], e1[0]) == (1, espfmt.VALID, espfmt.SEQ_NONE)
    before = ops(chip)
    Partition("ota_1").set_boot()
    assert ops(chip) - before == 2  # erase + write of one otadata sector
    e0, e1 = otadata(chip)
    assert (e0[0], e0[2]) == (1, espfmt.VALID)
    assert (e1[0], e1[2], e1[3]) == (2, espfmt.NEW, espfmt.ota_crc(2))
    assert Partition(Partition.BOOT).info()[4] == "ota_1"
    Partition("ota_0").set_boot()  # back again: seq 3 into copy 0
    e0, e1 = otadata(chip)
    assert (e0[0], e0[2], e1[0]) == (3, espfmt.NEW, 2)
    assert Partition(Partition.BOOT).info()[4] == "ota_0"


def test_set_boot_validates_the_image(chip):
    flip(chip, OTA_1.offset + 0x150)  # a bit inside the ROMFS segment
    with pytest.raises(OSError) as e:
        Partition("ota_1").set_boot()
    assert e.value.args == (-5379, "ESP_ERR_OTA_VALIDATE_FAILED")
    assert otadata(chip)[1][0] == espfmt.SEQ_NONE
    with pytest.raises(OSError) as e:
        Partition("vfs").set_boot()
    assert e.value.errno == -0x102


def test_get_next_update(chip):
    assert Partition(Partition.RUNNING).get_next_update().info()[4] == "ota_1"
    Partition("ota_1").set_boot()
    assert boot(chip) == "ota_1"
    assert Partition(Partition.RUNNING).get_next_update().info()[4] == "ota_0"


def test_mark_valid_rewrites_the_same_copy_once(chip):
    Partition("ota_1").set_boot()
    boot(chip)
    assert otadata(chip)[1][2] == espfmt.PENDING_VERIFY
    before = ops(chip)
    Partition.mark_app_valid_cancel_rollback()
    assert ops(chip) - before == 2
    e0, e1 = otadata(chip)
    assert (e0[0], e0[2], e1[0], e1[2]) == (1, espfmt.VALID, 2, espfmt.VALID)
    Partition.mark_app_valid_cancel_rollback()
    assert ops(chip) - before == 2  # already VALID: no flash op


def test_glenn20_reads_otadata_raw(chip):
    buf = bytearray(4096)
    Partition.find(1, 0)[0].readblocks(0, buf)
    seq, _label, state, crc = struct.unpack("<L20sLL", buf[:32])
    assert (seq, state, crc) == (1, espfmt.VALID, 0x4743989A)


def test_boot_partition_needs_otadata(tmp_path, apps):
    path = tmp_path / "e.bin"
    layout.create_flash(BOARD, path)
    firmware.install_firmware(BOARD, path, apps["1.0.0"])
    esp32.attach(vflash.NorFlash(str(path)))
    with pytest.raises(OSError) as e:
        Partition(Partition.BOOT)  # blank otadata, no factory: esp_ota_get_boot_partition is NULL
    assert e.value.errno == errno.ENOENT


# -- bootloader rules --------------------------------------------------------------------

def test_unconfirmed_boot_is_aborted_on_the_next_reset(chip):
    Partition("ota_1").set_boot()
    assert boot(chip) == "ota_1"
    assert otadata(chip)[1][2] == espfmt.PENDING_VERIFY
    assert boot(chip) == "ota_0"
    assert otadata(chip)[1][2] == espfmt.ABORTED
    assert boot(chip) == "ota_0"


def test_confirmed_boot_stays(chip):
    Partition("ota_1").set_boot()
    boot(chip)
    Partition.mark_app_valid_cancel_rollback()
    for _ in range(3):
        assert boot(chip) == "ota_1"


def test_corrupt_chosen_image_falls_back_to_the_other_slot(chip, capsys):
    Partition("ota_1").set_boot()
    flip(chip, OTA_1.offset + 0x40)  # one bit of the app description, after set_boot
    assert boot(chip) == "ota_0"
    out = capsys.readouterr().out
    assert "Checksum failed" in out and "OTA app partition slot 1 is not bootable" in out
    assert Partition(Partition.RUNNING).info()[4] == "ota_0"
    assert otadata(chip)[1][2] == espfmt.PENDING_VERIFY  # the bootloader tried it


def test_torn_otadata_write_keeps_the_older_copy(chip):
    chip.schedule_cut(chip.ops() + 2, torn=True)  # set_boot's write of otadata[1]
    with pytest.raises(vflash.PowerCut):
        Partition("ota_1").set_boot()
    flash = vflash.NorFlash(chip.path)  # power comes back
    assert boot(flash) == "ota_0"


def test_torn_erase_of_the_active_copy_falls_back_to_the_other(chip):
    Partition("ota_1").set_boot()
    boot(chip)
    Partition.mark_app_valid_cancel_rollback()  # copy 1: seq 2 VALID
    Partition("ota_0").set_boot()  # copy 0: seq 3 NEW
    chip.schedule_cut(chip.ops() + 1, torn=True)  # the bootloader's NEW -> PENDING rewrite
    with pytest.raises(vflash.PowerCut):
        boot(chip)
    flash = vflash.NorFlash(chip.path)
    assert boot(flash) == "ota_1"  # copy 0 lost: silent rollback to the confirmed slot


def test_no_bootable_app(tmp_path, apps, capsys):
    path = tmp_path / "e.bin"
    layout.create_flash(BOARD, path)
    firmware.install_firmware(BOARD, path, apps["1.0.0"])
    flash = vflash.NorFlash(str(path))
    flash.erase(OTA_0.offset, 4096)
    assert esp32boot.bootloader(flash) is None
    assert "No bootable app partitions" in capsys.readouterr().out


def test_blank_chip_has_no_bootloader(tmp_path, capsys):
    path = tmp_path / "e.bin"
    layout.create_flash(BOARD, path)
    assert esp32boot.bootloader(vflash.NorFlash(str(path))) is None
    assert "invalid header: 0xffffffff" in capsys.readouterr().out


def test_damaged_partition_table_stops_the_boot(chip, capsys):
    table = bytearray(chip.read(0x8000, 0x1000))
    chip.erase(0x8000, 0x1000)
    table[0x10] ^= 0x01  # a label byte: the MD5 no longer matches
    chip.write(0x8000, bytes(table))
    assert esp32boot.bootloader(chip) is None
    assert "Failed to verify partition table" in capsys.readouterr().out
