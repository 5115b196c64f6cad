"""Virtual board layouts (boards/<name>/board.toml), blank chips, and how to start a board.

A board.toml has a ``[board]`` table (name, chip, flash_size, sector_size, bank_kind
"firmware" | "app", link "udp" | "serial", heap, boot_script) and ``[[regions]]``
(name, offset, size; ESP32 partitions also carry type/subtype and go into the
partition table at 0x8000).
"""
from __future__ import annotations

import os
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from hanota.errors import HanotaError
from hanota.vboard.rt import espfmt, vflash

BOARDS_ROOT = Path(__file__).resolve().parents[3] / "boards"
RT_DIR = Path(__file__).resolve().parent / "rt"

# Heap the emulation itself takes inside the board process (the rt modules and their
# buffers), added to the board's heap so the device code sees what the board.toml says.
RT_HEAP = 48 * 1024

_TYPES = {"app": 0x00, "data": 0x01}
_SUBTYPES = {
    "app": {"factory": 0x00, "test": 0x20, **{"ota_%d" % i: 0x10 + i for i in range(16)}},
    "data": {"ota": 0x00, "phy": 0x01, "nvs": 0x02, "coredump": 0x03, "nvs_keys": 0x04,
             "efuse": 0x05, "undefined": 0x06, "esphttpd": 0x80, "fat": 0x81, "spiffs": 0x82,
             "littlefs": 0x83, "romfs": 0x8F},
}


class LayoutError(HanotaError):
    """A board description is missing or inconsistent."""

    reason = "layout"


@dataclass(frozen=True)
class Region:
    """A named range of the flash (an ESP32 partition when type is set)."""

    name: str
    offset: int
    size: int
    type: str | None = None
    subtype: str | None = None
    bank: bool = False
    mount: str | None = None

    @property
    def end(self) -> int:
        return self.offset + self.size


@dataclass(frozen=True)
class Board:
    """A virtual board's description, loaded from its board.toml."""

    name: str
    chip: str
    flash_size: int
    sector_size: int
    bank_kind: str
    link: str
    heap: str
    boot_script: str
    regions: tuple[Region, ...]
    write_offset: int = 0
    path: Path | None = None
    hal: str = ""  # the board folder whose hal.py this board runs (default: its own)

    @property
    def hal_path(self) -> Path:
        """The board support module deployed with the device code."""
        return BOARDS_ROOT / (self.hal or self.name) / "hal.py"

    def region(self, name: str) -> Region:
        """The region called name; LayoutError when there is none."""
        for r in self.regions:
            if r.name == name:
                return r
        raise LayoutError("board %s has no region %r" % (self.name, name))

    @property
    def banks(self) -> tuple[Region, ...]:
        """The two bank regions (ota_0/ota_1, or app_a/app_b) in order."""
        return tuple(r for r in self.regions if r.bank)

    @property
    def partitions(self) -> tuple[Region, ...]:
        """Regions that are entries of the ESP32 partition table."""
        return tuple(r for r in self.regions if r.type is not None)


def board_names() -> list[str]:
    """Names of the boards that have a board.toml."""
    return sorted(p.parent.name for p in BOARDS_ROOT.glob("*/board.toml"))


def load_board(board: str | os.PathLike) -> Board:
    """Load a board by name (boards/<name>/board.toml) or by the path of a board.toml."""
    p = Path(board)
    if not p.suffix == ".toml":
        p = BOARDS_ROOT / str(board) / "board.toml"
    try:
        with open(p, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise LayoutError("no board.toml for board %r (looked at %s)" % (str(board), p)) from None
    except tomllib.TOMLDecodeError as e:
        raise LayoutError("%s: %s" % (p, e)) from None
    try:
        b = data["board"]
        regions = tuple(Region(name=r["name"], offset=r["offset"], size=r["size"],
                               type=r.get("type"), subtype=r.get("subtype"),
                               bank=r.get("bank", False), mount=r.get("mount"))
                        for r in data.get("regions", ()))
        board_obj = Board(name=b["name"], chip=b["chip"], flash_size=b["flash_size"],
                          sector_size=b.get("sector_size", vflash.SECTOR),
                          bank_kind=b["bank_kind"], link=b["link"], heap=b["heap"],
                          boot_script=b.get("boot_script", ""), regions=regions,
                          write_offset=b.get("write_offset", 0), path=p,
                          hal=b.get("hal", ""))
    except KeyError as e:
        raise LayoutError("%s: missing key %s" % (p, e)) from None
    _check(board_obj)
    return board_obj


def _check(b: Board) -> None:
    if b.sector_size != vflash.SECTOR or b.flash_size % b.sector_size:
        raise LayoutError("%s: flash must be whole %d-byte sectors" % (b.name, vflash.SECTOR))
    for r in b.regions:
        if r.offset % b.sector_size or r.size % b.sector_size or r.end > b.flash_size:
            raise LayoutError("%s: region %s is not sector aligned inside the flash"
                              % (b.name, r.name))
    if len(b.banks) != 2:
        raise LayoutError("%s: needs exactly two bank regions" % b.name)
    for r in b.partitions:
        if r.type not in _TYPES or r.subtype not in _SUBTYPES[r.type]:
            raise LayoutError("%s: partition %s has unknown type/subtype %s/%s"
                              % (b.name, r.name, r.type, r.subtype))


def parse_size(text: str | int) -> int:
    """Bytes of a size such as "128K", "1M", 65536."""
    if isinstance(text, int):
        return text
    t = text.strip().upper()
    mult = {"K": 1024, "M": 1024 * 1024}.get(t[-1:], 1)
    try:
        return int(t[:-1] if mult > 1 else t) * mult
    except ValueError:
        raise LayoutError("not a size: %r" % text) from None


def partition_entries(board: Board) -> list[tuple[int, int, int, int, str, int]]:
    """The partition table entries (type, subtype, offset, size, label, flags)."""
    return [(_TYPES[r.type], _SUBTYPES[r.type][r.subtype], r.offset, r.size, r.name, 0)
            for r in board.partitions]


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
    (board.toml's unless given) + RT_HEAP + twice the largest ROMFS.

    On a real board the ROMFS is memory-mapped flash and its bytecode runs in place;
    on the unix port the ROMFS is a copy in the heap and importing from it costs about
    as much heap again (bytecode, qstrs, function objects). Adding both keeps the
    configured heap for the application's own data, as on the chip.
    """
    total = parse_size(heap if heap is not None else board.heap) + RT_HEAP
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
