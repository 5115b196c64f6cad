"""Validate a real ESP-IDF app image before `image build` wraps it in an upgrade file.

A device writes the payload of an esp-app upgrade file into an app partition and its
bootloader then runs `esp_image_verify` on it; a payload that fails there costs a
download, a trial boot and a rollback. So the host applies the same checks first,
with esptool's own image classes (`esptool.bin_image.LoadFirmwareImage`, the chip's
memory map and flash tables) doing the parsing:

* the 24-byte header: magic 0xE9, segment count 1..16, SPI mode/size/speed, the chip
  id and chip revision range of the extended header, the hash-appended flag;
* every segment: within the image, a multiple of 4 long, loaded into a region of the
  chip's memory map, and flash-mapped segments at a file offset that matches their
  load address modulo the 64 KiB MMU page; the entry point inside a segment;
* the XOR checksum, the appended SHA-256 (when the flag says so), no trailing bytes;
* the `esp_app_desc_t` (magic 0xABCD5432) at the start of the first (DROM) segment.

A merged full-flash image (second-stage bootloader at 0x1000, partition table at
0x8000, app at 0x10000; what micropython.org's ESP32 `.bin` is) is refused with a
command that takes the app out of it. Each refusal's reason names the field at fault.
"""
from __future__ import annotations

import io
import shlex
import struct
from contextlib import redirect_stdout
from dataclasses import dataclass, field

from esptool.bin_image import LoadFirmwareImage
from esptool.cmds import FLASH_MODES
from esptool.targets import CHIP_DEFS
from esptool.util import FatalError

from .errors import ImageFormatError
from .vboard.rt import espfmt

HEADER_LEN = 24
MAX_SEGMENTS = 16
_NOT_LOADED = 0x10000000  # ESP-IDF loads no segment below this address (padding blocks)
_REV_UNSET = (0, 0xFFFF)  # max_chip_rev_full values that set no upper bound
# Board families (hanfw.otafile.BOARD_FAMILIES) that are ESP chips: family -> esptool chip.
FAMILY_CHIPS = {"esp32": "esp32", "esp32s3": "esp32s3"}


class EspImageError(ImageFormatError):
    """The payload is not a valid ESP-IDF app image; `reason` names the field at fault."""

    reason = "esp-image"


@dataclass
class AppImage:
    """What `check_app` found in a valid app image."""

    chip: str
    size: int
    entry: int
    flash_mode: str
    flash_size: str
    flash_freq: str
    min_rev: int  # chip revision, major * 100 + minor
    max_rev: int | None  # None: no upper bound
    sha256: bytes | None  # the appended SHA-256, None when the flag says there is none
    # (load address, length, file offset of the data, memory region) per segment
    segments: list[tuple[int, int, int, str]] = field(default_factory=list)
    desc: dict = field(default_factory=dict)  # esp_app_desc_t: version, project, idf_ver, ...

    def summary(self) -> dict:
        """JSON-ready: chip, size, entry, flash settings and the app descriptor."""
        return {"chip": self.chip, "size": self.size, "entry": "0x%08x" % self.entry,
                "flash": "%s %s %s" % (self.flash_mode, self.flash_size, self.flash_freq),
                "segments": len(self.segments), "sha256_appended": self.sha256 is not None,
                "version": self.desc.get("version", ""), "project": self.desc.get("project", ""),
                "idf_version": self.desc.get("idf_ver", ""),
                "secure_version": self.desc.get("secure_version", 0),
                "built": " ".join(filter(None, (self.desc.get("date"), self.desc.get("time"))))}


def _fail(reason: str, text: str, *args) -> EspImageError:
    return EspImageError("not a valid ESP-IDF app image (%s): %s" % (reason, text % args),
                         reason=reason)


# ---------------------------------------------------------------- merged flash images

def find_partition_table(data: bytes) -> tuple[int, list] | None:
    """(flash address of the file's first byte, partition entries) if the file holds a
    partition table at flash 0x8000, written from 0x1000 (ESP32) or 0x0 (later chips)."""
    for base in (0x1000, 0x0):
        off = espfmt.TABLE_OFFSET - base
        if data[off:off + 2] != struct.pack("<H", espfmt.PART_MAGIC):
            continue
        try:
            return base, espfmt.parse_table(data[off:off + espfmt.TABLE_SIZE])
        except espfmt.FormatError:
            continue
    return None


def _first_image_end(data: bytes) -> int:
    """Where the image at offset 0 ends (0 if none parses): a merged image's bootloader
    ends before the partition table; an app that merely carries table-like bytes does not."""
    try:
        with redirect_stdout(io.StringIO()):
            img = LoadFirmwareImage("esp32", data)
        return img.data_length + 32 * img.append_digest
    except Exception:  # esptool raises several kinds on what is not an image
        return 0


def boot_app_partition(parts: list) -> tuple | None:
    """The app partition a fresh chip boots: factory if there is one, else ota_0."""
    apps = espfmt.find(parts, espfmt.TYPE_APP, espfmt.SUBTYPE_FACTORY) or espfmt.ota_apps(parts)
    return apps[0] if apps else None


def extract_command(path: str, start: int, length: int, out: str = "app.bin") -> str:
    """A shell command (POSIX tail and head) that copies bytes start..start+length of
    path into out."""
    return "tail -c +%d %s | head -c %d > %s" % (start + 1, shlex.quote(path), length,
                                                 shlex.quote(out))


def _merged_error(data: bytes, path: str, base: int, parts: list, family) -> EspImageError:
    app = boot_app_partition(parts)
    head = ("this is a merged flash image (written at 0x%x: second-stage bootloader, "
            "partition table at 0x8000" % base)
    ota_hint = ("or flash and update with the `.app-bin` file of micropython.org's OTA variant "
                "(the ESP32_GENERIC page, \"Support for OTA\"), which is the bare app")
    if app is None:
        return _fail("merged-image", "%s, and no app partition); %s", head, ota_hint)
    start = app[2] - base
    length = min(app[3], max(0, len(data) - start))
    try:  # the exact length, when a valid app is there
        length = check_app(data[start:start + length], family, trailing_ok=True).size
    except EspImageError:
        pass
    return _fail("merged-image", "%s); the app is at 0x%x (partition %r, file offset 0x%x, "
                 "%d bytes). Take it out with `%s` and build from app.bin, %s",
                 head, app[2], app[4], start, length,
                 extract_command(path, start, length), ota_hint)


# ---------------------------------------------------------------- the header

def _rom(chip_id: int, family: str):
    """The esptool ROM class for the chip this image must be for."""
    if family in FAMILY_CHIPS:
        rom = CHIP_DEFS[FAMILY_CHIPS[family]]
        if chip_id != rom.IMAGE_CHIP_ID:
            named = [r.CHIP_NAME for r in CHIP_DEFS.values() if r.IMAGE_CHIP_ID == chip_id]
            raise _fail("wrong-chip", "the header's chip id is %d (%s); board family %s needs "
                        "chip id %d (%s)", chip_id, named[0] if named else "no known chip",
                        family, rom.IMAGE_CHIP_ID, rom.CHIP_NAME)
        return rom
    if family not in ("any", None):
        raise _fail("wrong-chip", "board family %s is no ESP chip; it cannot run an ESP app image",
                    family)
    for name, rom in CHIP_DEFS.items():
        if name != "esp8266" and rom.IMAGE_CHIP_ID == chip_id:
            return rom
    raise _fail("wrong-chip", "the header's chip id %d is no chip esptool knows", chip_id)


def _check_header(data: bytes, family: str):
    """Checks the 24 header bytes; returns the chip's ROM class."""
    if len(data) < HEADER_LEN:
        raise _fail("truncated", "%d bytes; the header alone is %d", len(data), HEADER_LEN)
    magic, nseg, mode, size_freq = data[0], data[1], data[2], data[3]
    if magic != espfmt.IMAGE_MAGIC:
        raise _fail("bad-magic", "the first byte is 0x%02x; an app image starts with 0xe9", magic)
    if not 1 <= nseg <= MAX_SEGMENTS:
        raise _fail("bad-segment-count", "the header says %d segments; 1..%d allowed",
                    nseg, MAX_SEGMENTS)
    if data[23] not in (0, 1):
        raise _fail("bad-hash-flag", "the hash-appended byte (offset 23) is 0x%02x; it must "
                    "be 0 or 1", data[23])
    chip_id, _min_rev, min_full, max_full = struct.unpack_from("<HBHH", data, 12)
    rom = _rom(chip_id, family)
    if mode not in FLASH_MODES.values():
        raise _fail("bad-flash-mode", "SPI mode byte %d is none of qio, qout, dio, dout", mode)
    if size_freq & 0xF0 not in rom.FLASH_SIZES.values():
        raise _fail("bad-flash-size", "flash size bits 0x%02x are no %s flash size",
                    size_freq & 0xF0, rom.CHIP_NAME)
    if size_freq & 0x0F not in rom.FLASH_FREQUENCY.values():
        raise _fail("bad-flash-freq", "flash speed bits 0x%x are no %s flash speed",
                    size_freq & 0x0F, rom.CHIP_NAME)
    if max_full not in _REV_UNSET and min_full > max_full:
        raise _fail("bad-chip-revision", "minimum chip revision v%d.%d is above the maximum "
                    "v%d.%d", min_full // 100, min_full % 100, max_full // 100, max_full % 100)
    return rom


def _load(data: bytes, rom):
    """esptool's image object for data; truncation named by where the data ends."""
    try:
        with redirect_stdout(io.StringIO()):  # esptool may log hints
            img = LoadFirmwareImage(rom.CHIP_NAME, data)
    except FatalError as e:
        raise _fail("truncated", "the file (%d bytes) ends inside a segment: %s",
                    len(data), e) from None
    except (TypeError, struct.error):  # esptool read past the end of the header or checksum
        raise _fail("truncated", "the file (%d bytes) ends before the checksum byte",
                    len(data)) from None
    if img.append_digest and len(img.stored_digest) < 32:
        raise _fail("truncated", "the file (%d bytes) ends inside the appended SHA-256",
                    len(data))
    return img


# ---------------------------------------------------------------- segments and digests

def _mapped(rom, addr: int) -> bool:
    return (rom.IROM_MAP_START <= addr < rom.IROM_MAP_END
            or rom.DROM_MAP_START <= addr < rom.DROM_MAP_END)


def _memory(rom, addr: int, length: int) -> str | None:
    """The memory map region holding addr..addr+length, or None."""
    if addr < _NOT_LOADED:
        return "PADDING"
    for start, end, name in rom.MEMORY_MAP:
        if start <= addr and addr + length <= end:
            return name
    return None


def _check_segments(img, rom) -> list[tuple[int, int, int, str]]:
    segs = []
    for i, s in enumerate(img.segments):
        n, data_off = len(s.data), s.file_offs + 8
        where = _memory(rom, s.addr, n)
        if n % 4:
            raise _fail("bad-segment", "segment %d (load 0x%08x) is %d bytes, not a multiple "
                        "of 4", i, s.addr, n)
        if where is None:
            raise _fail("bad-segment", "segment %d loads 0x%08x..0x%08x, outside %s memory",
                        i, s.addr, s.addr + n, rom.CHIP_NAME)
        if _mapped(rom, s.addr) and (s.addr - data_off) % img.IROM_ALIGN:
            raise _fail("bad-segment", "segment %d: load address 0x%08x does not match its file "
                        "offset 0x%x modulo the 64 KiB MMU page", i, s.addr, data_off)
        segs.append((s.addr, n, data_off, where))
    if not any(a <= img.entrypoint < a + n for a, n, _, w in segs if w != "PADDING"):
        raise _fail("bad-entry-point", "the entry point 0x%08x is in none of the segments",
                    img.entrypoint)
    return segs


def _check_digests(img, data: bytes, trailing_ok: bool) -> int:
    """Checksum and SHA-256; returns the image's length."""
    calc = img.calculate_checksum()
    if calc != img.checksum:
        raise _fail("bad-checksum", "the checksum byte is 0x%02x; the segments give 0x%02x "
                    "(a segment's bytes were changed)", img.checksum, calc)
    size = img.data_length + (32 if img.append_digest else 0)
    if img.append_digest and img.stored_digest != img.calc_digest:
        raise _fail("bad-sha256", "the appended SHA-256 %s.. does not match the image's %s..",
                    img.stored_digest[:8].hex(), img.calc_digest[:8].hex())
    if len(data) > size and not trailing_ok:
        raise _fail("trailing-data", "the image ends at %d bytes; %d more follow (cut them "
                    "with `head -c %d`)", size, len(data) - size, size)
    return size


def _app_desc(img, rom) -> dict:
    first = img.segments[0]
    desc = espfmt.parse_app_desc(first.data[:256])
    if not (rom.DROM_MAP_START <= first.addr < rom.DROM_MAP_END) or desc is None:
        raise _fail("no-app-descriptor", "the first segment (load 0x%08x) does not open with "
                    "esp_app_desc_t (magic 0xabcd5432)", first.addr)
    return desc


def check_app(data: bytes, family: str | None = "any", *, path: str = "app.bin",
              trailing_ok: bool = False) -> AppImage:
    """Validate an ESP-IDF app image for board family `family` ("any": the chip its header
    names). Raises EspImageError naming the field at fault; `path` is the name the
    merged-image message's command uses."""
    table = find_partition_table(data)
    if table is not None and _first_image_end(data) <= espfmt.TABLE_OFFSET - table[0]:
        raise _merged_error(data, path, table[0], table[1], family)
    rom = _check_header(data, family)
    img = _load(data, rom)
    segs = _check_segments(img, rom)
    if not any(_mapped(rom, a) for a, _, _, _ in segs):
        if len(data) > img.data_length + 32 * img.append_digest:
            raise _fail("merged-image", "the file starts with ESP-IDF's second-stage bootloader "
                        "(no flash-mapped segment), and more follows: a merged flash image "
                        "without its partition table; build from the app (the `.app-bin` of "
                        "micropython.org's OTA variant)")
        raise _fail("bootloader-image", "this is ESP-IDF's second-stage bootloader (no "
                    "flash-mapped segment), not an app")
    size = _check_digests(img, data, trailing_ok)
    desc = _app_desc(img, rom)
    return AppImage(
        chip=rom.CHIP_NAME, size=size, entry=img.entrypoint,
        flash_mode={v: k for k, v in FLASH_MODES.items()}[img.flash_mode],
        flash_size={v: k for k, v in rom.FLASH_SIZES.items()}[img.flash_size_freq & 0xF0],
        flash_freq={v: k for k, v in rom.FLASH_FREQUENCY.items()}[img.flash_size_freq & 0x0F],
        min_rev=getattr(img, "min_rev_full", 0),
        max_rev=None if getattr(img, "max_rev_full", 0) in _REV_UNSET else img.max_rev_full,
        sha256=img.stored_digest if img.append_digest else None, segments=segs, desc=desc)
