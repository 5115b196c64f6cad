"""Board facts: boards/<name>/board.toml, the one place that describes each board.

A board.toml has a ``[board]`` table and ``[[regions]]``:

- ``[board]``: name, chip (the chip family: esp32, esp32s3, nrf52840), virtual, flash_size,
  sector_size, bank_kind "firmware" | "app", link "udp" | "serial", heap, boot_script
  (virtual boards), hal (the board folder whose hal.py it runs), write_offset (where
  MicroPython's firmware is written), flasher "esptool" | "uf2" (how firmware reaches the
  chip; absent when it cannot be flashed from the host), uf2_family (the UF2 family id).
- ``[[regions]]``: name, offset, size; ESP32 partitions also carry type/subtype (they form
  the partition table), app banks ``bank = true``, filesystems ``mount``.

Real-board code (flasher, deploy, image checks, the CLI) reads boards from here without
importing the virtual board package; `hanota.vboard.layout` adds what only the virtual board
needs (blank chips, how to start the board process). The folder of boards is
``$HANOTA_BOARDS`` when set (tests point it at a temporary folder), else the checkout's
``boards/``.
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

import click

from .errors import HanotaError

BOARDS_ROOT = Path(__file__).resolve().parents[2] / "boards"
BOARDS_ENV = "HANOTA_BOARDS"

# Every board here has 4 KiB-sector NOR flash (the virtual chip emulates the same).
SECTOR = 4096

# ESP-IDF partition types and subtypes by name (the partition table's binary codes).
PARTITION_TYPES = {"app": 0x00, "data": 0x01}
PARTITION_SUBTYPES = {
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
    """A board's description, loaded from its board.toml."""

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
    virtual: bool = False
    flasher: str = ""  # "esptool" | "uf2"; "" when the host cannot flash it
    uf2_family: int | None = None

    @property
    def hal_path(self) -> Path:
        """The board support module deployed with the device code."""
        return boards_root() / (self.hal or self.name) / "hal.py"

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


def boards_root() -> Path:
    """The folder of board folders: $HANOTA_BOARDS, else the checkout's boards/."""
    env = os.environ.get(BOARDS_ENV)
    return Path(env) if env else BOARDS_ROOT


def board_names(*, virtual: bool | None = None, flasher: str | bool | None = None) -> list[str]:
    """Names of the boards that have a board.toml, sorted.

    virtual: only virtual (True) or only real (False) boards. flasher: only boards flashed by
    that tool ("esptool", "uf2"), or by any (True). Filtering reads each board.toml.
    """
    names = sorted(p.parent.name for p in boards_root().glob("*/board.toml"))
    if virtual is None and flasher is None:
        return names
    out = []
    for n in names:
        b = load_board(n)
        if virtual is not None and b.virtual != virtual:
            continue
        if flasher is not None and not (b.flasher if flasher is True else b.flasher == flasher):
            continue
        out.append(n)
    return out


def load_board(board: str | os.PathLike) -> Board:
    """Load a board by name (<boards root>/<name>/board.toml) or by the path of a board.toml."""
    p = Path(board)
    if not p.suffix == ".toml":
        p = boards_root() / str(board) / "board.toml"
    try:
        with open(p, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise LayoutError("no board.toml for board %r (looked at %s; known boards: %s)"
                          % (str(board), p, ", ".join(board_names()) or "none")) from None
    except tomllib.TOMLDecodeError as e:
        raise LayoutError("%s: %s" % (p, e)) from None
    try:
        b = data["board"]
        regions = tuple(Region(name=r["name"], offset=r["offset"], size=r["size"],
                               type=r.get("type"), subtype=r.get("subtype"),
                               bank=r.get("bank", False), mount=r.get("mount"))
                        for r in data.get("regions", ()))
        board_obj = Board(name=b["name"], chip=b["chip"], flash_size=b["flash_size"],
                          sector_size=b.get("sector_size", SECTOR),
                          bank_kind=b["bank_kind"], link=b["link"], heap=b["heap"],
                          boot_script=b.get("boot_script", ""), regions=regions,
                          write_offset=b.get("write_offset", 0), path=p,
                          hal=b.get("hal", ""), virtual=b.get("virtual", False),
                          flasher=b.get("flasher", ""), uf2_family=b.get("uf2_family"))
    except KeyError as e:
        raise LayoutError("%s: missing key %s" % (p, e)) from None
    _check(board_obj)
    return board_obj


def _check(b: Board) -> None:
    if b.sector_size != SECTOR or b.flash_size % b.sector_size:
        raise LayoutError("%s: flash must be whole %d-byte sectors" % (b.name, SECTOR))
    for r in b.regions:
        if r.offset % b.sector_size or r.size % b.sector_size or r.end > b.flash_size:
            raise LayoutError("%s: region %s is not sector aligned inside the flash"
                              % (b.name, r.name))
    if len(b.banks) != 2:
        raise LayoutError("%s: needs exactly two bank regions" % b.name)
    for r in b.partitions:
        if r.type not in PARTITION_TYPES or r.subtype not in PARTITION_SUBTYPES[r.type]:
            raise LayoutError("%s: partition %s has unknown type/subtype %s/%s"
                              % (b.name, r.name, r.type, r.subtype))
    if b.flasher not in ("", "esptool", "uf2"):
        raise LayoutError("%s: unknown flasher %r" % (b.name, b.flasher))
    if b.flasher == "uf2" and b.uf2_family is None:
        raise LayoutError("%s: a uf2 board needs uf2_family" % b.name)


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
    return [(PARTITION_TYPES[r.type], PARTITION_SUBTYPES[r.type][r.subtype], r.offset, r.size,
             r.name, 0) for r in board.partitions]


class BoardChoice(click.Choice):
    """A click choice of board names read from the board folders when the command line is
    parsed (not when the CLI module is imported), so a board added as a folder is offered
    without a code change. virtual / flasher filter as in `board_names`."""

    def __init__(self, *, virtual: bool | None = None, flasher: str | bool | None = None):
        self._filters = {"virtual": virtual, "flasher": flasher}
        super().__init__((), case_sensitive=True)

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(board_names(**self._filters))

    @choices.setter
    def choices(self, _value) -> None:
        pass  # click.Choice.__init__ stores its list; ours is always read from the folders
