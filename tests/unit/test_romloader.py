"""The virtual board's ESP32 ROM loader, driven only by the real esptool.

Every test talks to `RomLoader` through esptool 5.6: the CLI as a subprocess, or its
library (`esptool.cmds`, and `ESPLoader` methods for single requests). The flash behind
the loader is the virtual board's NOR flash (`hanota.vboard.rt.vflash.NorFlash`).
"""
from __future__ import annotations

import hashlib
import os
import random
import re
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import serial
from esptool import cmds
from esptool.loader import ESPLoader
from esptool.targets import CHIP_DEFS
from esptool.util import FatalError, UnsupportedCommandError

from hanota.vboard.romloader import RomLoader
from hanota.vboard.rt import vflash

ESPTOOL = str(Path(sys.executable).with_name("esptool"))
MAC = bytes.fromhex("240ac4a1b2c3")
MAC_TEXT = "24:0a:c4:a1:b2:c3"
FLASH_SIZE = 4 << 20
SECTOR = 0x1000
APP = 0x10000
CLI_TIMEOUT = 60
WAIT = 10.0


class Board:
    """Stands in for the board process: records the loader's callbacks."""

    def __init__(self):
        self.events: list = []
        self._cond = threading.Condition()

    def on_enter(self):
        with self._cond:
            self.events.append("enter")
            self._cond.notify_all()

    def on_exit(self, flash_changed):
        with self._cond:
            self.events.append(("exit", flash_changed))
            self._cond.notify_all()

    def wait_events(self, n):
        """The events once there are `n` of them (fails after WAIT seconds)."""
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.events) >= n, WAIT), self.events
            return list(self.events)


class FaultyFlash:
    """A NorFlash whose writes corrupt one byte at `corrupt_at`, or fail with OSError."""

    def __init__(self, flash, corrupt_at=None, fail_writes=False):
        self._flash = flash
        self.size = flash.size
        self.corrupt_at = corrupt_at
        self.fail_writes = fail_writes

    def read(self, addr, n):
        return self._flash.read(addr, n)

    def erase(self, addr, length=SECTOR):
        self._flash.erase(addr, length)

    def write(self, addr, data):
        if self.fail_writes:
            raise OSError(5, "simulated flash programming failure")
        at = self.corrupt_at
        if at is not None and addr <= at < addr + len(data):
            data = bytearray(data)
            byte = data[at - addr]
            data[at - addr] = byte & (byte - 1)  # clear one 1-bit: a legal NOR write
        self._flash.write(addr, bytes(data))


def pattern(n, seed):
    """n bytes, half random and half runs, so that they compress but not trivially."""
    rnd = random.Random(seed)
    out = bytearray()
    while len(out) < n:
        out += rnd.randbytes(rnd.randrange(1, 600))
        out += bytes([rnd.randrange(256)]) * rnd.randrange(1, 600)
    return bytes(out[:n])


def program(flash, addr, data):
    """Put `data` in the flash directly (test setup): erase its sectors, then write."""
    start = addr - addr % SECTOR
    end = -(-(addr + len(data)) // SECTOR) * SECTOR
    flash.erase(start, end - start)
    flash.write(addr, data)


def loader_threads(port):
    return [t for t in threading.enumerate() if t.name == f"romloader:{port}"]


def socket_fds():
    return {os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
            if os.path.exists(f"/proc/self/fd/{fd}")
            and os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")}


@pytest.fixture
def flash(tmp_path):
    path = str(tmp_path / "flash.bin")
    vflash.create(path, FLASH_SIZE)
    chip = vflash.NorFlash(path)
    yield chip
    chip.close()


@pytest.fixture
def board():
    return Board()


@pytest.fixture
def make_loader(board):
    started = []

    def make(flash):
        loader = RomLoader(flash, mac=MAC, on_enter=board.on_enter, on_exit=board.on_exit)
        loader.start()
        started.append(loader)
        return loader

    yield make
    for loader in started:
        loader.stop()
        assert not loader_threads(loader.port)


@pytest.fixture
def loader(make_loader, flash):
    return make_loader(flash)


def esptool_cli(loader, *args, chip="esp32", options=(), check=True):
    """Run the esptool CLI against the loader; return stdout+stderr."""
    argv = [ESPTOOL, "--chip", chip, "-p", loader.url, "--before", "no-reset",
            "--after", "hard-reset", *options, *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=CLI_TIMEOUT)
    out = proc.stdout + proc.stderr
    if check and proc.returncode != 0:
        pytest.fail(f"esptool {' '.join(args)} failed ({proc.returncode}):\n{out}")
    if not check and proc.returncode == 0:
        pytest.fail(f"esptool {' '.join(args)} should have failed:\n{out}")
    return out


def connect(loader) -> ESPLoader:
    """esptool's library connection, as `esptool --chip auto` makes it."""
    return cmds.detect_chip(loader.url, connect_mode="no-reset", connect_attempts=2)


STUB = ()
ROM = ("--no-stub",)


# -- identity -------------------------------------------------------------------

def test_read_mac_prints_the_configured_mac_in_one_session(loader, board):
    out = esptool_cli(loader, "read-mac")
    assert re.search(rf"MAC:\s+{MAC_TEXT}", out)
    assert "Stub flasher is already running" in out
    assert board.wait_events(2) == ["enter", ("exit", False)]


def test_chip_id_falls_back_to_the_mac(loader):
    out = esptool_cli(loader, "chip-id")
    assert "ESP32 has no chip ID" in out
    assert re.search(rf"MAC:\s+{MAC_TEXT}", out)


def test_chip_auto_detects_an_esp32(loader):
    out = esptool_cli(loader, "read-mac", chip="auto")
    assert "Detecting chip type... ESP32" in out
    assert "Connected to ESP32" in out
    assert "Crystal frequency:  40MHz" in out


@pytest.mark.parametrize("options", [STUB, ROM], ids=["stub", "rom"])
def test_flash_id_detects_a_4mb_winbond_flash(loader, options):
    out = esptool_cli(loader, "flash-id", options=options)
    assert "Manufacturer: ef" in out
    assert "Device: 4016" in out
    assert "Detected flash size: 4MB" in out
    assert "Failed to communicate with the flash chip" not in out


# -- writing --------------------------------------------------------------------

@pytest.mark.parametrize(
    "options, write_args, compressed",
    [(STUB, (), True), (STUB, ("-u",), False), (ROM, (), False), (ROM, ("-z",), True)],
    ids=["stub-deflate", "stub-raw", "rom-raw", "rom-deflate"],
)
def test_write_flash_programs_the_image_and_verifies_it(
    loader, flash, board, tmp_path, options, write_args, compressed
):
    image = pattern(96 * 1024 + 1001, seed=1)  # not a multiple of any block size
    old = pattern(160 * 1024, seed=2)  # programmed data around and under the target
    program(flash, APP - SECTOR, old)
    path = tmp_path / "app.bin"
    path.write_bytes(image)

    out = esptool_cli(loader, "write-flash", *write_args, hex(APP), str(path), options=options)

    assert "Hash of data verified." in out
    assert ("compressed)" in out) == compressed
    assert flash.read(APP, len(image)) == image
    padded_end = APP + -(-len(image) // 4) * 4  # esptool pads to a 4-byte multiple
    assert flash.read(APP + len(image), padded_end - APP - len(image)) == b"\xff" * 3
    erased_end = -(-padded_end // SECTOR) * SECTOR
    assert flash.read(padded_end, erased_end - padded_end) == b"\xff" * (erased_end - padded_end)
    # Neighbouring sectors keep their data.
    assert flash.read(APP - SECTOR, SECTOR) == old[:SECTOR]
    tail = APP - SECTOR + len(old) - erased_end
    assert flash.read(erased_end, tail) == old[-tail:]
    assert board.wait_events(2) == ["enter", ("exit", True)]


def test_write_flash_inflates_a_highly_compressible_image(loader, flash, tmp_path):
    image = bytes(range(256)) * 2048  # 512 KiB that deflate to a few KiB
    path = tmp_path / "big.bin"
    path.write_bytes(image)
    out = esptool_cli(loader, "write-flash", hex(APP), str(path))
    assert "Hash of data verified." in out
    assert flash.read(APP, len(image)) == image


@pytest.mark.parametrize("options", [STUB, ROM], ids=["stub", "rom"])
def test_md5_verify_reports_a_byte_the_flash_got_wrong(make_loader, flash, tmp_path, options):
    image = pattern(64 * 1024, seed=3)
    path = tmp_path / "app.bin"
    path.write_bytes(image)
    corrupt_at = APP + 40000
    while not image[corrupt_at - APP]:  # need a byte with a 1-bit to clear
        corrupt_at += 1
    loader = make_loader(FaultyFlash(flash, corrupt_at=corrupt_at))

    out = esptool_cli(loader, "write-flash", hex(APP), str(path), options=options, check=False)

    assert "MD5 of file does not match data in flash!" in out
    assert flash.read(corrupt_at, 1) != image[corrupt_at - APP : corrupt_at - APP + 1]


def test_a_flash_write_error_is_reported_as_such(make_loader, flash, board, tmp_path):
    path = tmp_path / "app.bin"
    path.write_bytes(pattern(32 * 1024, seed=4))
    loader = make_loader(FaultyFlash(flash, fail_writes=True))

    out = esptool_cli(loader, "write-flash", hex(APP), str(path), check=False)

    assert "Flash write error" in out
    assert board.wait_events(2) == ["enter", ("exit", True)]


def test_a_power_cut_fails_the_write_and_the_loader_keeps_serving(loader, flash, board, tmp_path):
    path = tmp_path / "app.bin"
    path.write_bytes(pattern(64 * 1024, seed=5))
    ops = vflash.counters(flash.ctl_path)["ops"]
    vflash.schedule_cut(flash.ctl_path, before_op=ops + 20)  # during the programming

    out = esptool_cli(loader, "write-flash", hex(APP), str(path), check=False)

    assert "Message is ok, but the running result is wrong" in out  # status 0x0106
    assert vflash.counters(flash.ctl_path)["cuts"] == 1
    assert board.wait_events(2) == ["enter", ("exit", True)]
    # The server survived: a new session is served.
    assert re.search(rf"MAC:\s+{MAC_TEXT}", esptool_cli(loader, "read-mac"))
    assert board.wait_events(4)[2:] == ["enter", ("exit", False)]


# -- erasing and reading ----------------------------------------------------------

def test_erase_flash_leaves_every_byte_erased(loader, flash, board):
    program(flash, 0, pattern(8 * SECTOR, seed=6))
    program(flash, FLASH_SIZE - SECTOR, pattern(SECTOR, seed=7))

    esptool_cli(loader, "erase-flash")

    assert flash.read(0, FLASH_SIZE) == b"\xff" * FLASH_SIZE
    assert board.wait_events(2) == ["enter", ("exit", True)]


@pytest.mark.parametrize("options", [STUB, ROM], ids=["stub", "rom"])
def test_erase_region_erases_only_that_region(loader, flash, options):
    old = pattern(6 * SECTOR, seed=8)
    program(flash, 0x1F000, old)

    esptool_cli(loader, "erase-region", "0x20000", "0x4000", options=options)

    assert flash.read(0x20000, 0x4000) == b"\xff" * 0x4000
    assert flash.read(0x1F000, SECTOR) == old[:SECTOR]
    assert flash.read(0x24000, SECTOR) == old[5 * SECTOR :]


def test_read_flash_returns_what_a_previous_session_wrote(loader, board, tmp_path):
    image = pattern(64 * 1024, seed=9)
    path = tmp_path / "app.bin"
    path.write_bytes(image)
    esptool_cli(loader, "write-flash", hex(APP), str(path))

    out_path = tmp_path / "out.bin"
    out = esptool_cli(loader, "read-flash", hex(APP), str(len(image)), str(out_path),
                      options=("-b", "921600"))

    assert "Changing baud rate to 921600" in out
    assert out_path.read_bytes() == image
    assert board.wait_events(4) == ["enter", ("exit", True), "enter", ("exit", False)]


def test_read_flash_without_the_stub_reads_64_bytes_at_a_time(loader, flash, tmp_path):
    data = pattern(3000, seed=10)  # not a multiple of the ROM's 64-byte block
    program(flash, APP, data)
    out_path = tmp_path / "out.bin"

    out = esptool_cli(loader, "read-flash", hex(APP), str(len(data)), str(out_path),
                      options=(*ROM, "-b", "460800"))

    assert "Changing baud rate to 460800" in out

    assert out_path.read_bytes() == data


# -- leaving download mode --------------------------------------------------------

def test_soft_reset_from_the_rom_leaves_download_mode_once(loader, board):
    out = esptool_cli(loader, "read-mac", options=("--no-stub", "--after", "soft-reset"))
    assert "Soft resetting..." in out
    assert board.wait_events(2) == ["enter", ("exit", False)]


def test_a_run_request_ends_download_mode_before_the_client_disconnects(loader, board):
    with CHIP_DEFS["esp32"](loader.url) as esp:
        esp.connect("no-reset", attempts=2)
        esp.run()  # ROM dialect: FLASH_BEGIN(0, 0) + FLASH_END(run)
        assert board.wait_events(2) == ["enter", ("exit", False)]
        with pytest.raises((FatalError, serial.SerialException)):  # connection closed
            esp.read_reg(ESPLoader.CHIP_DETECT_MAGIC_REG_ADDR)


def test_running_code_loaded_to_ram_leaves_download_mode(loader, board):
    code = pattern(300, seed=15)
    with CHIP_DEFS["esp32"](loader.url) as esp:
        esp.connect("no-reset", attempts=2)
        esp.mem_begin(len(code), 1, esp.ESP_RAM_BLOCK, 0x40080000)
        esp.mem_block(code, 0)
        esp.mem_finish(0)  # no entry point: stays in download mode
        assert esp.read_reg(ESPLoader.CHIP_DETECT_MAGIC_REG_ADDR) == 0x00F01D83
        esp.mem_finish(0x40080000)
        assert board.wait_events(2) == ["enter", ("exit", False)]


# -- esptool as a library -------------------------------------------------------------

def test_cmds_write_read_erase_and_reset(loader, flash, board):
    image = pattern(48 * 1024, seed=11)
    with connect(loader) as esp:
        assert esp.CHIP_NAME == "ESP32" and esp.IS_STUB
        cmds.attach_flash(esp)
        cmds.write_flash(esp, [(APP, image)], no_progress=True)
        assert flash.read(APP, len(image)) == image
        assert cmds.read_flash(esp, APP, len(image), no_progress=True) == image
        cmds.erase_flash(esp)
        assert flash.read(APP, len(image)) == b"\xff" * len(image)
        cmds.reset_chip(esp, "hard-reset")
    assert board.wait_events(2) == ["enter", ("exit", True)]


def test_cmds_connect_esp_rom_dialect(loader, flash, board):
    image = pattern(10 * 1024, seed=12)
    with cmds.connect_esp(
        port=loader.url, chip="esp32", before="no-reset", connect_attempts=2
    ) as esp:
        assert not esp.IS_STUB  # an explicit chip without run_stub stays in the ROM dialect
        cmds.attach_flash(esp)
        cmds.write_flash(esp, [(APP, image)], compress=True, no_progress=True)
        assert flash.read(APP, len(image)) == image
        assert cmds.read_flash(esp, APP, 512, no_progress=True) == image[:512]
        assert esp.flash_md5sum(APP, len(image)) == hashlib.md5(image).hexdigest()
    assert board.wait_events(2) == ["enter", ("exit", True)]


def test_a_block_with_a_bad_checksum_is_rejected_and_not_written(loader, flash):
    block = pattern(SECTOR, seed=13)
    with connect(loader) as esp:
        esp.flash_begin(len(block), APP)
        header = struct.pack("<IIII", len(block), 0, 0, 0)
        with pytest.raises(FatalError, match="Checksum error"):
            esp.check_command("write block", esp.ESP_CMDS["FLASH_DATA"], header + block,
                              chk=esp.checksum(block) ^ 0x01)
        assert flash.read(APP, SECTOR) == b"\xff" * SECTOR
        esp.flash_block(block, 0)  # the transfer is still open: the good block lands
        assert flash.read(APP, SECTOR) == block


def test_an_unknown_command_is_unsupported_and_the_session_goes_on(loader):
    with connect(loader) as esp:
        with pytest.raises(UnsupportedCommandError):
            esp.check_command("probe", 0x7F)
        assert esp.read_reg(ESPLoader.CHIP_DETECT_MAGIC_REG_ADDR) == 0x00F01D83


# -- robustness -----------------------------------------------------------------------

def test_noise_and_malformed_frames_are_ignored(loader, board):
    with CHIP_DEFS["esp32"](loader.url) as esp:
        esp._port.write(b"boot noise \x55\xdb\x00 before any frame")
        esp.connect("no-reset", attempts=2)
        esp._port.write(
            b"\xc0\x00\x0a\xc0"  # too short for a header
            + b"\xc0\x00\x0a\x04\x00\x00\x00\x00\x00\xdb\x00\x00\x00\x00\xc0"  # bad escape
            + b"\xc0\x01\x0a\x04\x00\x00\x00\x00\x00\x00\x10\x00\x40\xc0"  # a response
            + b"\xc0" + b"\x11" * 70000 + b"\xc0"  # longer than any request
        )
        assert esp.read_reg(ESPLoader.CHIP_DETECT_MAGIC_REG_ADDR) == 0x00F01D83
        # A length field that disagrees with the data gets "invalid message".
        esp.write(struct.pack("<BBHI", 0, esp.ESP_CMDS["READ_REG"], 8, 0) + b"\0\x10\0\x40")
        _, status = esp.command()
        assert status[:2] == b"\x01\x05"
        assert esp.read_reg(ESPLoader.CHIP_DETECT_MAGIC_REG_ADDR) == 0x00F01D83
    assert board.wait_events(2) == ["enter", ("exit", False)]


def test_a_client_leaving_mid_transfer_ends_its_session_only(loader, board):
    with connect(loader) as esp:
        esp.flash_begin(64 * 1024, APP)
        esp.flash_block(pattern(esp.FLASH_WRITE_SIZE, seed=14), 0)
    assert board.wait_events(2) == ["enter", ("exit", True)]
    esptool_cli(loader, "read-mac")
    assert board.wait_events(4)[2:] == ["enter", ("exit", False)]


def test_a_second_client_is_refused_while_one_is_connected(loader, board):
    with connect(loader) as esp:
        esptool_cli(loader, "read-mac", options=("--connect-attempts", "1"), check=False)
        assert board.events == ["enter"]
        assert esp.read_reg(ESPLoader.CHIP_DETECT_MAGIC_REG_ADDR) == 0x00F01D83
    assert board.wait_events(2) == ["enter", ("exit", False)]


def test_stop_ends_the_session_and_closes_every_socket(flash, board):
    before = socket_fds()
    loader = RomLoader(flash, mac=MAC, on_enter=board.on_enter, on_exit=board.on_exit)
    port = loader.start()
    with connect(loader):
        loader.stop()
        assert board.events == ["enter", ("exit", False)]
        assert not loader_threads(port)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=WAIT).close()
        loader.stop()  # idempotent
    assert not socket_fds() - before
