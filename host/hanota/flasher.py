"""The flasher: write MicroPython firmware onto real and virtual boards (esptool library for
the ESP32 family; UF2 copy or adafruit-nrfutil DFU for the nRF52840).

Which boards take which tool, the chip and the write offset come from each board.toml
(`hanota.boardspec`). Deploying the device code (mpremote library) lives in `deploy.py`.
"""
from __future__ import annotations

import contextlib
import threading
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import boardspec
from .errors import HanotaError


class FlashError(HanotaError):
    """Flashing a board failed (port, chip, or transfer); the message says which."""

    reason = "flash"


@dataclass(frozen=True)
class ChipInfo:
    esptool_chip: str
    firmware_offset: int  # where MicroPython's .bin goes


def esptool_chip(board: str) -> ChipInfo:
    """esptool's chip name and MicroPython's firmware offset for a board flashed by esptool
    (its board.toml's chip and write_offset); FlashError naming the boards that are."""
    names = boardspec.board_names(flasher="esptool")
    if board not in names:
        raise FlashError("no esptool support for board %r (choose from %s)" % (board, ", ".join(names)))
    spec = boardspec.load_board(board)
    return ChipInfo(spec.chip, spec.write_offset)


def flash_method(board: str) -> str:
    """How firmware reaches the board: "esptool" or "uf2" (FlashError when neither)."""
    try:
        spec = boardspec.load_board(board)
    except boardspec.LayoutError as e:
        raise FlashError(str(e)) from None
    if not spec.flasher:
        raise FlashError("board %r cannot be flashed from the host (choose from %s)"
                         % (board, ", ".join(boardspec.board_names(flasher=True))))
    return spec.flasher


_ESPTOOL_LOCK = threading.Lock()


class _Quiet:
    """An esptool logger that forwards progress and keeps messages for error reports."""

    def __init__(self, progress: Callable[[int, int], None] | None):
        self.progress = progress
        self.lines: list[str] = []

    def install(self):
        from esptool.logger import TemplateLogger

        outer = self

        class Logger(TemplateLogger):
            def print(self, message="", *args, **kwargs):
                outer.lines.append(str(message))

            def note(self, message):
                outer.lines.append("note: %s" % message)

            def warning(self, message):
                outer.lines.append("warning: %s" % message)

            def error(self, message):
                outer.lines.append("error: %s" % message)

            def stage(self, finish=False):
                pass

            def progress_bar(self, cur_iter, total_iters, prefix="", suffix="", bar_length=30):
                if outer.progress:
                    outer.progress(cur_iter, total_iters)

            def set_verbosity(self, verbosity):
                pass

        from esp_pylib.logger import EspLog
        from esptool.logger import _LegacyLoggerAdapter
        self._prev = EspLog.instance
        EspLog.instance = _LegacyLoggerAdapter(Logger())
        return self

    def restore(self):
        from esp_pylib.logger import EspLog
        EspLog.instance = self._prev


def flash_firmware(port: str, firmware: str | os.PathLike | bytes, board: str = "esp32",
                   offset: int | None = None, erase: bool = False, baud: int = 460800,
                   progress: Callable[[int, int], None] | None = None) -> dict:
    """Write a MicroPython firmware image to an ESP32-family board through its ROM loader.

    `port` is a serial device or a pyserial URL (the virtual board's socket://...).
    Erases the whole chip first when `erase`; writes compressed and verifies by MD5.
    Returns facts (chip, offset, size, mac).
    """
    chip = esptool_chip(board)
    if isinstance(firmware, (bytes, bytearray)):
        data = bytes(firmware)
    else:
        try:
            data = Path(firmware).read_bytes()
        except OSError as e:
            raise FlashError("cannot read firmware %s: %s" % (firmware, e.strerror)) from None
    if not data or data[0] != 0xE9:
        raise FlashError("firmware does not start with an ESP image header (0xE9): not a .bin for %s" % board)
    addr = chip.firmware_offset if offset is None else offset
    from esptool import cmds
    from esptool.util import FatalError
    with _ESPTOOL_LOCK:  # esptool's logger is process-wide: one flashing at a time
        return _flash(cmds, FatalError, port, board, chip, addr, data, erase, baud, progress)


def _flash(cmds, FatalError, port, board, chip, addr, data, erase, baud, progress) -> dict:
    logger = _Quiet(progress).install()
    try:
        before = "no-reset" if "://" in port else "default-reset"
        try:
            esp = cmds.connect_esp(port, chip=chip.esptool_chip, before=before, connect_attempts=2)
        except (FatalError, OSError) as e:
            raise FlashError("cannot reach the %s ROM loader on %s: %s" % (board, port, e)) from None
        with contextlib.closing(esp._port) if hasattr(esp, "_port") else contextlib.nullcontext():
            try:
                esp = cmds.run_stub(esp)
                if baud and "://" not in port:
                    esp.change_baud(baud)
                cmds.attach_flash(esp)
                mac = ":".join("%02x" % b for b in esp.read_mac())
                if erase:
                    cmds.erase_flash(esp)
                cmds.write_flash(esp, [(addr, data)], flash_size="keep", compress=True)
                cmds.reset_chip(esp, "hard-reset")
            except FatalError as e:
                raise FlashError("flashing %s on %s failed: %s" % (board, port, e)) from None
    finally:
        logger.restore()
    return {"chip": chip.esptool_chip, "offset": addr, "size": len(data), "mac": mac}


# ---------------------------------------------------------------- nRF52840

_UF2_MAGIC0, _UF2_MAGIC1, _UF2_END = 0x0A324655, 0x9E5D5157, 0x0AB16F30
_UF2_FLAG_FAMILY = 0x00002000


def make_uf2(data: bytes, address: int, family: int | None = None) -> bytes:
    """A UF2 file (512-byte blocks of 256 payload bytes) placing `data` at `address`
    (family: the UF2 family id; default the nrf52840 board's)."""
    import struct
    if family is None:
        family = boardspec.load_board("nrf52840").uf2_family
    blocks = [data[i:i + 256] for i in range(0, len(data), 256)]
    out = bytearray()
    for n, chunk in enumerate(blocks):
        out += struct.pack("<IIIIIIII", _UF2_MAGIC0, _UF2_MAGIC1, _UF2_FLAG_FAMILY, address + 256 * n,
                           256, n, len(blocks), family)
        out += chunk.ljust(476, b"\0")
        out += struct.pack("<I", _UF2_END)
    return bytes(out)


def flash_nrf52840(port: str, firmware: str | os.PathLike, address: int | None = None,
                   board: str = "nrf52840") -> dict:
    """Flash an nRF52840 with the Adafruit bootloader.

    `port` is either the bootloader's UF2 drive (a mounted folder with INFO_UF2.TXT: double-tap
    reset to get it) — the firmware (.uf2, or a raw .bin converted for `address`, default the
    board's write_offset) is copied there — or a serial port, for which `adafruit-nrfutil` does
    a serial DFU of a .zip package.
    """
    import shutil
    import subprocess
    if flash_method(board) != "uf2":
        raise FlashError("board %r is not flashed by UF2 (choose from %s)"
                         % (board, ", ".join(boardspec.board_names(flasher="uf2"))))
    spec = boardspec.load_board(board)
    if address is None:
        address = spec.write_offset
    fw = Path(firmware)
    if not fw.is_file():
        raise FlashError("cannot read firmware %s" % fw)
    drive = Path(port)
    if drive.is_dir():
        info = drive / "INFO_UF2.TXT"
        if not info.exists():
            raise FlashError("%s is not a UF2 bootloader drive (no INFO_UF2.TXT): double-tap reset "
                             "to enter the bootloader, then give the drive's mount point" % drive)
        data = fw.read_bytes()
        if fw.suffix.lower() != ".uf2":
            data = make_uf2(data, address, spec.uf2_family)
        target = drive / (fw.stem + ".uf2")
        target.write_bytes(data)
        return {"method": "uf2", "target": str(target), "size": len(data),
                "board": info.read_text(errors="replace").splitlines()[:2]}
    tool = shutil.which("adafruit-nrfutil")
    if tool is None:
        raise FlashError("%s is not a UF2 drive, and adafruit-nrfutil (serial DFU) is not installed: "
                         "pip install adafruit-nrfutil, or double-tap reset and pass the UF2 drive "
                         "folder as --port" % port)
    if fw.suffix.lower() != ".zip":
        raise FlashError("serial DFU takes a .zip package (adafruit-nrfutil dfu genpkg): %s" % fw)
    r = subprocess.run([tool, "dfu", "serial", "--package", str(fw), "-p", port, "-b", "115200",
                        "--singlebank"], capture_output=True, text=True)
    if r.returncode != 0:
        raise FlashError("adafruit-nrfutil failed on %s: %s" % (port, (r.stderr or r.stdout).strip()[-500:]))
    return {"method": "dfu", "target": port, "size": fw.stat().st_size}
