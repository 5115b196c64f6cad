"""The virtual nRF52840 chip under CPython: nrf.Flash regions over the emulated flash.

tests/device/test_chip_mpy.py boots the same chip inside the real MicroPython.
"""
import errno

import pytest

from hanota.vboard import layout
from hanota.vboard.rt import nrf, vflash

BOARD = layout.load_board("vboard-nrf52840")
FS = BOARD.region("fs")
APP_A = BOARD.region("app_a")
APP_B = BOARD.region("app_b")


@pytest.fixture
def chip(tmp_path, monkeypatch):
    path = tmp_path / "nrf.bin"
    layout.create_flash(BOARD, path)
    _argv, env = layout.device_command(BOARD, path, env={})
    for k in ("HANOTA_VB_NRF_FS", "HANOTA_VB_NRF_UNUSED"):
        monkeypatch.setenv(k, env[k])
    flash = vflash.NorFlash(str(path))
    nrf.attach(flash)
    return flash


def test_layout_is_the_documented_one():
    assert BOARD.flash_size == 0x100000 and BOARD.bank_kind == "app" and BOARD.link == "serial"
    # stock SEEED_XIAO_NRF52 v1.29: app 0x27000..0x74000, ROMFS 0x74000..0xB4000 (the two
    # banks), LittleFS 0xB4000..0xF4000 (FS_SIZE 256k), bootloader from 0xF4000 (docs/ports.md)
    assert (APP_A.offset, APP_A.size, APP_B.offset, APP_B.size) == (0x74000, 0x20000, 0x94000, 0x20000)
    assert (FS.offset, FS.size, FS.mount) == (0xB4000, 0x40000, "/flash")
    ctl = BOARD.region("bootctl")
    assert (ctl.offset, ctl.size) == (0x72000, 0x2000)
    # the virtual board has the real board's layout (plus its "unused" marker)
    real = {(r.name, r.offset, r.size) for r in layout.load_board("nrf52840").regions}
    assert real <= {(r.name, r.offset, r.size) for r in BOARD.regions}
    assert [r.name for r in BOARD.banks] == ["app_a", "app_b"]


def test_default_flash_is_the_filesystem_region(chip):
    f = nrf.Flash()
    assert (f.start, len(f), f.ioctl(4, 0), f.ioctl(5, 0)) == (FS.offset, FS.size, 64, 4096)
    assert (nrf.unused_flash_start(), nrf.unused_flash_length()) == (0x72000, 0x2000)


@pytest.mark.parametrize("start,length", [(0xA4001, 4096), (0xA4000, 100), (0xA4000, 0),
                                          (0xFF000, 0x2000), (-4096, 4096)])
def test_regions_must_be_page_aligned_inside_the_chip(chip, start, length):
    with pytest.raises(ValueError):
        nrf.Flash(start=start, len=length)


def test_block_protocol(chip):
    f = nrf.Flash(start=APP_A.offset, len=APP_A.size)
    f.writeblocks(2, b"\x00" * 8192)  # plain form erases the pages first
    f.writeblocks(2, b"\x42" * 100)
    buf = bytearray(8)
    f.readblocks(2, buf, 96)
    assert buf == b"\x42" * 4 + b"\xff" * 4
    f.readblocks(3, buf)
    assert buf == b"\x00" * 8  # page 3 untouched by the shorter write
    with pytest.raises(OSError) as e:
        f.writeblocks(3, b"\x01", 0)  # offset form: no erase, NOR rule
    assert e.value.errno == errno.EIO
    assert f.ioctl(6, 3) == 0
    f.writeblocks(3, b"\x01\x02", 10)
    f.readblocks(3, buf, 8)
    assert buf == b"\xff\xff\x01\x02\xff\xff\xff\xff"
    with pytest.raises(OSError):
        f.readblocks(32, buf)  # past the region


def test_regions_are_isolated(chip):
    a = nrf.Flash(start=APP_A.offset, len=APP_A.size)
    b = nrf.Flash(start=APP_B.offset, len=APP_B.size)
    a.writeblocks(31, b"\x00" * 4096)  # last page of app_a
    assert b.buffer(4096) == b"\xff" * 4096
    assert chip.read(APP_A.offset + 31 * 4096, 4096) == b"\x00" * 4096


def test_buffer_stand_in(chip):
    f = nrf.Flash(start=APP_B.offset, len=APP_B.size)
    f.writeblocks(0, b"\xd2\xcd\x31\x02\x00\x00")
    assert f.buffer(6) == b"\xd2\xcd\x31\x02\x00\x00"
    assert len(f.buffer()) == APP_B.size
    part = bytearray(3)
    f.readinto(part, 1)
    assert part == b"\xcd\x31\x02"


def test_ops_are_counted_on_the_chip(chip):
    before = vflash.counters(chip.ctl_path)["ops"]
    nrf.Flash().writeblocks(0, b"\x00" * 4096)
    assert vflash.counters(chip.ctl_path)["ops"] - before == 2
