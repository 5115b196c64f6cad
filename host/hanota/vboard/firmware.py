"""Virtual firmware for the virtual ESP32: genuine ESP32 app images that carry a ROMFS.

An app image is built with esptool's own image classes (`ESP32FirmwareImage`,
`ELFSection`, the segments elf2image makes from an ELF's sections), so `esptool image-info` and the ESP-IDF rules accept it:

* segment 0 (DROM, 0x3F400020): ``esp_app_desc_t`` -- magic 0xABCD5432, secure_version,
  version, project name, time/date, IDF version, an "ELF" SHA-256 (here the SHA-256 of
  the ROMFS), MMU page size;
* segment 1 (DROM, next 64 KiB page): the ROMFS of the compiled device modules, which the
  emulated bootloader mounts at /rom (the firmware's frozen modules);
* segment 2 (IROM) and two RAM segments: small stand-ins for code and data; the entry
  point is in IRAM.

Flash-mapped segments are placed so that no padding segment is needed (load address
and file offset agree modulo the 64 KiB MMU page). The image ends with the XOR
checksum and the appended SHA-256. Images are reproducible: the same inputs give the
same bytes.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import struct

from esptool.bin_image import ELFSection, ESP32FirmwareImage
from esptool.cmds import merge_bin

from hanota.errors import HanotaError
from hanota.vboard import layout
from hanota.vboard.rt import espfmt

DROM = 0x3F400000
IROM = 0x400D0000
IRAM = 0x40080000
DRAM = 0x3FFB0000
PAGE = 0x10000
IDF_VERSION = "v5.2.2"
BUILD_TIME = "00:00:00"
BUILD_DATE = "Jan  1 2025"
_SEG_HEADER = 8
_IMAGE_HEADER = 24
_FLASH_DIO_4MB_40M = (2, 0x20)  # flash_mode DIO; size 4 MB (high nibble 2), 40 MHz


class FirmwareError(HanotaError):
    """A virtual firmware image is malformed or does not fit."""

    reason = "firmware"


def _cfield(text: str, size: int, what: str) -> bytes:
    raw = text.encode()
    if len(raw) >= size:
        raise FirmwareError("%s %r is longer than %d bytes" % (what, text, size - 1))
    return raw.ljust(size, b"\x00")


def app_desc(version: str, secure_version: int = 0, project: str = "hanota",
             elf_sha256: bytes = bytes(32)) -> bytes:
    """The 256-byte esp_app_desc_t."""
    if not 0 <= secure_version <= 0xFFFFFFFF:
        raise FirmwareError("secure_version out of range: %r" % secure_version)
    desc = struct.pack("<II8s", espfmt.APP_DESC_MAGIC, secure_version, bytes(8))
    desc += _cfield(version, 32, "version") + _cfield(project, 32, "project name")
    desc += _cfield(BUILD_TIME, 16, "time") + _cfield(BUILD_DATE, 16, "date")
    desc += _cfield(IDF_VERSION, 32, "IDF version") + elf_sha256
    desc += struct.pack("<HHB3s", 0, 99, 16, bytes(3))  # min/max efuse rev, log2(MMU page)
    return desc.ljust(256, b"\x00")


def _image() -> ESP32FirmwareImage:
    img = ESP32FirmwareImage()
    img.flash_mode, img.flash_size_freq = _FLASH_DIO_4MB_40M
    img.max_rev_full = 399  # ESP32 v3.99, as ESP-IDF builds set it
    return img


def _pad4(data: bytes) -> bytes:
    return data + b"\x00" * (-len(data) % 4)


def _section(name: str, addr: int, data: bytes) -> ELFSection:
    return ELFSection(name.encode(), addr, _pad4(data), flags=0)


def _place(flash_data: list[tuple[str, int, bytes]]) -> list[ELFSection]:
    """Flash-mapped segments at addresses that line up with their file offsets.

    Each (section name, region base, data) gets the address base + k * 64 KiB + (its data offset % 64 KiB),
    k chosen so it starts a page after the previous segment of the same region. Follows
    esptool's layout, including its ESP32 work-around that extends a mapped segment
    ending less than 0x24 bytes past a page boundary.
    """
    segs = []
    pos = _IMAGE_HEADER
    last_page = {}
    for name, base, data in flash_data:
        data = _pad4(data)
        data_off = pos + _SEG_HEADER
        page = last_page.get(base, -1) + 1
        addr = base + page * PAGE + data_off % PAGE
        end = data_off + len(data)
        last_page[base] = (addr - base + len(data) - 1) // PAGE
        if end % PAGE < 0x24:
            end += 0x24 - end % PAGE
        segs.append(_section(name, addr, data))
        pos = end
    return segs


def build_app_image(romfs: bytes, version: str, secure_version: int = 0,
                    project: str = "hanota") -> bytes:
    """An ESP32 app image (starts 0xE9) whose DROM carries `romfs` and whose
    esp_app_desc_t names version, secure_version and project."""
    if romfs[:3] != espfmt.ROMFS_MAGIC:
        raise FirmwareError("payload is not a ROMFS image (no d2 cd 31 magic)")
    desc = app_desc(version, secure_version, project, hashlib.sha256(romfs).digest())
    code = b"hanota virtual firmware: code runs on the unix port\x00"
    img = _image()
    img.segments = _place([(".flash.appdesc", DROM, desc), (".flash.rodata", DROM, romfs),
                           (".flash.text", IROM, code)])
    img.segments.append(_section(".dram0.data", DRAM, project.encode() + b"\x00"))
    img.segments.append(_section(".iram0.text", IRAM + 0x400, b"\x06\x00\x00" * 4))
    img.entrypoint = IRAM + 0x400
    data = img.save(None)
    n = len(img.segments)
    if data[1] != n:
        raise FirmwareError("esptool added padding segments (%d, expected %d)" % (data[1], n))
    return data


def build_bootloader_image() -> bytes:
    """A small genuine-format second-stage bootloader image (for 0x1000)."""
    desc = struct.pack("<B3sI32s24s16s", 0x50, bytes(3), 1,
                       _cfield(IDF_VERSION, 32, "IDF version"),
                       _cfield("%s %s" % (BUILD_DATE, BUILD_TIME), 24, "date"), bytes(16))
    img = _image()
    img.segments = [_section(".dram0.bootdesc", 0x3FFF0030, desc),
                    _section(".iram_loader.text", 0x40078000,
                             b"hanota virtual 2nd stage bootloader"),
                    _section(".iram0.text", 0x40080400, b"\x06\x00\x00" * 4)]
    img.entrypoint = 0x40080400
    return img.save(None)


def build_flash_image(board: layout.Board, app_image: bytes) -> tuple[int, bytes]:
    """(offset, bytes) of a full flashable image for a fresh chip, like MicroPython's
    ESP32 firmware .bin: bootloader at 0x1000, partition table at 0x8000, app at ota_0,
    merged by esptool and written at 0x1000."""
    check_app_image(app_image)
    slot = board.banks[0]
    if len(app_image) > slot.size:
        raise FirmwareError("app image (%d bytes) does not fit %s (%d bytes)"
                            % (len(app_image), slot.name, slot.size))
    boot = board.region("bootloader")
    table = board.region("partition_table")
    with contextlib.redirect_stdout(io.StringIO()):  # merge_bin prints hints
        merged = merge_bin([(boot.offset, build_bootloader_image()),
                            (table.offset, layout.partition_table(board)),
                            (slot.offset, app_image)],
                           chip=board.chip, target_offset=boot.offset)
    return boot.offset, merged


def install_firmware(board: layout.Board, flash_path: os.PathLike, app_image: bytes) -> None:
    """Write the flashable image of app_image into a chip file (erase + write, counted)."""
    offset, data = build_flash_image(board, app_image)
    layout.flash_write(flash_path, offset, data)


class _Bytes:
    def __init__(self, data: bytes):
        self._mv = memoryview(data)

    def readinto(self, addr: int, buf) -> None:
        n = len(buf)
        if addr + n > len(self._mv):
            raise espfmt.FormatError("image truncated at 0x%x" % addr)
        buf[:] = self._mv[addr:addr + n]


def check_app_image(image: bytes) -> dict:
    """Validate an app image as the bootloader does; its info (size, segments, entry,
    hash) plus "desc" (read_app_desc) and "romfs" ((offset, length) or None)."""
    src = _Bytes(image)
    buf = bytearray(4096)
    try:
        info = espfmt.check_image(src.readinto, 0, len(image), buf)
    except espfmt.FormatError as e:
        raise FirmwareError("invalid app image: %s" % e) from None
    info["desc"] = read_app_desc(image)
    info["romfs"] = espfmt.find_romfs(src.readinto, 0, info["segments"], buf)
    return info


def read_app_desc(image: bytes) -> dict:
    """version, secure_version, project (and time, date, idf_ver) of an app image."""
    if len(image) < espfmt.APP_DESC_OFFSET + 256 or image[0] != espfmt.IMAGE_MAGIC:
        raise FirmwareError("not an ESP32 app image")
    desc = espfmt.parse_app_desc(image[espfmt.APP_DESC_OFFSET:espfmt.APP_DESC_OFFSET + 256])
    if desc is None:
        raise FirmwareError("app image has no esp_app_desc_t (magic 0xABCD5432) at 0x20")
    return desc


def romfs_of(image: bytes) -> bytes:
    """The ROMFS carried by an app image."""
    loc = check_app_image(image)["romfs"]
    if loc is None:
        raise FirmwareError("app image carries no ROMFS")
    return image[loc[0]:loc[0] + loc[1]]
