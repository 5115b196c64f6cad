"""What only the virtual board needs of a board: blank chips, flash writes, the partition
table binary, and how to start the board's MicroPython process.

The board facts themselves (board.toml, `Board`, `load_board`, `board_names`, ...) live in
`hanota.boardspec`; they are re-exported here for the virtual board's callers.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from hanota.boardspec import (  # noqa: F401  (re-exported: the virtual board's callers use them)
    BOARDS_ROOT, SECTOR, Board, LayoutError, Region, board_names, boards_root, load_board,
    parse_size, partition_entries)
from hanota.vboard.portspec import runtime_env
from hanota.vboard.rt import espfmt, vflash

RT_DIR = Path(__file__).resolve().parent / "rt"

# Heap the emulation itself holds inside the board process once it has booted (the rt
# modules, the emulated chip's buffers, the port's module copies; not the ROMFS copy nor
# the mounted filesystems, which a real board's heap holds too), by chip: added to the
# board's heap so the device code sees what the board.toml says. Measured, not guessed:
# the boot scripts print it with env HANOTA_VB_HEAP_REPORT=1, and
# tests/device/test_vboard_heap.py holds each figure to within 4 KiB above the
# measurement (64-bit unix port, 2026-12: esp32 63,758 bytes, the bootloader and the
# image checker's modules; nrf52840 37,664 bytes).
RT_HEAP = {"esp32": 64 * 1024, "nrf52840": 38 * 1024}

# The emulated chip erases in the sectors every board.toml is checked against.
if vflash.SECTOR != SECTOR:
    raise ImportError("vflash.SECTOR (%d) differs from boardspec.SECTOR (%d)" % (vflash.SECTOR, SECTOR))


def partition_table(board: Board) -> bytes:
    """The ESP32 partition table binary (0xC00 bytes, with the MD5 entry) of a board."""
    if not board.partitions:
        raise LayoutError("board %s has no partition table" % board.name)
    return espfmt.pack_table(partition_entries(board))


def ctl_path(flash_path: os.PathLike) -> Path:
    """The control sidecar beside a flash file."""
    return Path(str(flash_path) + ".ctl")


def create_flash(board: Board, path: os.PathLike) -> Path:
    """A fresh chip for board: file of flash_size bytes, all 0xFF, and its sidecar."""
    vflash.create(str(path), board.flash_size)
    return Path(path)


def flash_write(path: os.PathLike, offset: int, data: bytes) -> None:
    """Program data at offset through the emulated chip: erase the covered sectors
    (keeping their bytes outside the range), then write them in one operation.
    The ops are counted like any others."""
    flash = vflash.NorFlash(str(path))
    try:
        end = offset + len(data)
        start = offset - offset % vflash.SECTOR
        top = -(-end // vflash.SECTOR) * vflash.SECTOR
        keep_head = flash.read(start, offset - start)
        keep_tail = flash.read(end, top - end)
        flash.erase(start, top - start)
        flash.write(start, keep_head + bytes(data) + keep_tail)
    finally:
        flash.close()


class _FileReader:
    """readinto(addr, buf) over a flash file, without counting (host inspection)."""

    def __init__(self, path: os.PathLike):
        self._f = open(path, "rb")

    def readinto(self, addr: int, buf) -> None:
        self._f.seek(addr)
        self._f.readinto(buf)

    def read(self, addr: int, n: int) -> bytes:
        self._f.seek(addr)
        return self._f.read(n)

    def close(self) -> None:
        self._f.close()


def romfs_size(board: Board, flash_path: os.PathLike) -> int:
    """Bytes of the largest ROMFS the board may copy to its heap at boot.

    ESP32: the ROMFS carried by a valid app image in either OTA slot. nRF: a ROMFS
    image at the start of either app bank. 0 when there is none.
    """
    try:
        r = _FileReader(flash_path)
    except OSError as e:
        raise LayoutError("cannot read flash file %s: %s" % (flash_path, e.strerror)) from None
    best = 0
    try:
        for bank in board.banks:
            if board.bank_kind == "firmware":
                buf = bytearray(vflash.SECTOR)
                try:
                    info = espfmt.check_image(r.readinto, bank.offset, bank.size, buf)
                except espfmt.FormatError:
                    continue
                loc = espfmt.find_romfs(r.readinto, bank.offset, info["segments"], buf)
                n = loc[1] if loc else 0
            else:
                n = espfmt.romfs_length(r.read(bank.offset, 16))
                n = n if n <= bank.size else 0
            best = max(best, n)
    finally:
        r.close()
    return best


def heap_size(board: Board, flash_path: os.PathLike | None = None,
              heap: str | int | None = None) -> int:
    """The -X heapsize for a board process, rounded up to KiB: the device heap
    (board.toml's unless given) + the chip's RT_HEAP + twice the largest ROMFS.

    On a real board the ROMFS is memory-mapped flash and its bytecode runs in place;
    on the unix port the ROMFS is a copy in the heap and importing from it costs about
    as much heap again (bytecode, qstrs, function objects). Adding both keeps the
    configured heap for the application's own data, as on the chip.
    """
    total = parse_size(heap if heap is not None else board.heap) + RT_HEAP[board.chip]
    if flash_path is not None:
        total += 2 * romfs_size(board, flash_path)
    return -(-total // 1024) * 1024


def micropython_cmd() -> str:
    """The `micropython` launcher of this environment."""
    here = Path(sys.executable).with_name("micropython")
    return str(here) if here.exists() else "micropython"


def device_command(board: Board, flash_path: os.PathLike, *, run_main: bool = True,
                   reset_cause: str = "power", eui64: str | None = None,
                   reset_file: os.PathLike | None = None, heap: str | int | None = None,
                   env: dict | None = None) -> tuple[list[str], dict[str, str]]:
    """argv and environment that start the board's MicroPython process (give it a tty).

    reset_cause: "power" | "hard" | "soft" | "wdt" | "deepsleep" (machine.reset_cause;
    "soft" also makes the ESP32 bootloader keep the running slot). reset_file: where the
    process writes "hard" / "soft" / "power" just before it dies (default: beside the
    flash, ``<flash>.reset``; the supervisor reads and deletes it).
    """
    e = dict(os.environ if env is None else env)
    e.update({
        "MICROPYPATH": str(RT_DIR),
        "HANOTA_VB_FLASH": str(flash_path),
        "HANOTA_VB_CTL": str(ctl_path(flash_path)),
        "HANOTA_VB_BOARD": board.name,
        "HANOTA_VB_RESET_CAUSE": reset_cause,
        "HANOTA_VB_MAIN": "1" if run_main else "0",
        "HANOTA_VB_RESET_FILE": str(reset_file or reset_marker(flash_path)),
    })
    if eui64:
        e["HANOTA_VB_EUI64"] = eui64
    e["HANOTA_VB_PORT"] = runtime_env(board)  # the real port's modules and identity (rt/vport.py)
    if board.bank_kind == "app":
        fs = next(r for r in board.regions if r.mount == "/flash")
        unused = board.region("unused")
        e["HANOTA_VB_NRF_FS"] = "%d,%d" % (fs.offset, fs.size)
        e["HANOTA_VB_NRF_UNUSED"] = "%d,%d" % (unused.offset, unused.size)
    argv = [micropython_cmd(), "-X", "heapsize=%d" % heap_size(board, flash_path, heap),
            "-i", str(RT_DIR / board.boot_script)]
    return argv, e


def reset_marker(flash_path: os.PathLike) -> Path:
    """Default file where the board process says why it died (hard / soft / power)."""
    return Path(str(flash_path) + ".reset")
