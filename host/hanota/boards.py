"""Real and virtual boards: flash MicroPython firmware (esptool library).

Deploying the device code (mpremote library) lives in `deploy.py`.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import HanotaError


class FlashError(HanotaError):
    """Flashing a board failed (port, chip, or transfer); the message says which."""

    reason = "flash"


@dataclass(frozen=True)
class ChipInfo:
    esptool_chip: str
    firmware_offset: int  # where MicroPython's .bin goes


# MicroPython's ESP32 .bin starts with the second-stage bootloader: at 0x1000 on the
# ESP32, at 0 on the S2/S3/C3 (reference host_fleet.md 2.4).
CHIPS = {
    "esp32": ChipInfo("esp32", 0x1000),
    "esp32s3": ChipInfo("esp32s3", 0x0),
    "vboard-esp32": ChipInfo("esp32", 0x1000),
}


class _Quiet:
    """An esptool logger that forwards progress and keeps messages for error reports."""

    def __init__(self, progress: Callable[[int, int], None] | None):
        self.progress = progress
        self.lines: list[str] = []

    def install(self):
        from esptool.logger import TemplateLogger, log

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
        self._prev = EspLog.instance
        log.set_logger(Logger())
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
    if board not in CHIPS:
        raise FlashError("no esptool support for board %r (choose from %s)" % (board, ", ".join(CHIPS)))
    chip = CHIPS[board]
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
