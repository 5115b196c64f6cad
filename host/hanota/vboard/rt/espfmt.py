"""ESP32 flash formats: partition table, otadata, app image (validation), app description.

Shared by the emulated bootloader (`esp32boot`), `esp32.Partition` and the host tools,
so each format is parsed in one place. Runs under MicroPython and CPython.

* Partition table at 0x8000: 32-byte entries ``<HBBLL16sL`` (magic 0x50AA, type,
  subtype, offset, size, label, flags), an MD5 entry (0xEBEB, 14 x 0xFF, MD5 of the
  entries before it), then 0xFF.
* otadata: two 32-byte ``esp_ota_select_entry_t`` (``<L20sLL``: seq, seq_label,
  state, crc) at the start of its two 4 KiB sectors; crc = CRC-32 of the 4 seq bytes
  seeded 0xFFFFFFFF.
* App image: 24-byte header (magic 0xE9), up to 16 segments ``<II`` + data, XOR
  checksum (seed 0xEF) as the last byte of the padding to 16, optional SHA-256.
  `esp_app_desc_t` (magic 0xABCD5432) opens the first segment, at image offset 0x20.
"""
import binascii
import hashlib
import struct

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

try:
    from _vfast import xor8 as _xor8
except Exception:  # CPython, or no viper emitter
    def _xor8(buf, n, acc):
        for i in range(n):
            acc ^= buf[i]
        return acc

TABLE_OFFSET = const(0x8000)
TABLE_SIZE = const(0xC00)
ENTRY = "<HBBLL16sL"
PART_MAGIC = const(0x50AA)
MD5_MAGIC = const(0xEBEB)

TYPE_APP = const(0)
TYPE_DATA = const(1)
SUBTYPE_FACTORY = const(0x00)
SUBTYPE_OTA0 = const(0x10)
SUBTYPE_TEST = const(0x20)
SUBTYPE_OTADATA = const(0x00)
SUBTYPE_ANY = const(0xFF)

OTA_ENTRY = "<L20sLL"
SEQ_NONE = const(0xFFFFFFFF)
NEW = const(0)
PENDING_VERIFY = const(1)
VALID = const(2)
INVALID = const(3)
ABORTED = const(4)
UNDEFINED = const(0xFFFFFFFF)
STATE_NAMES = {0: "NEW", 1: "PENDING_VERIFY", 2: "VALID", 3: "INVALID", 4: "ABORTED",
               0xFFFFFFFF: "UNDEFINED"}

IMAGE_MAGIC = const(0xE9)
CHECKSUM_SEED = const(0xEF)
APP_DESC_MAGIC = const(0xABCD5432)
APP_DESC_OFFSET = const(0x20)
ROMFS_MAGIC = b"\xd2\xcd\x31"
_MMU_PAGE = const(0x10000)


class FormatError(ValueError):
    """A partition table, otadata entry or app image is not valid."""


# -- partition table ----------------------------------------------------------

def parse_table(data, flash_size=None):
    """Entries of a binary partition table as (type, subtype, offset, size, label, flags).

    Checks what the ESP-IDF bootloader checks: every entry's magic, bounds against
    the flash size, the MD5 entry, and the 0xFF end marker.
    """
    parts = []
    md5_seen = False
    n = len(data) // 32
    for i in range(n):
        off = i * 32
        magic, ptype, sub, poff, size, label, flags = struct.unpack_from(ENTRY, data, off)
        if magic == PART_MAGIC:
            if flash_size is not None and poff + size > flash_size:
                raise FormatError("partition %d invalid - offset 0x%x size 0x%x exceeds flash"
                                  " chip size 0x%x" % (i, poff, size, flash_size))
            label = bytes(label)
            z = label.find(b"\x00")
            parts.append((ptype, sub, poff, size, (label if z < 0 else label[:z]).decode(),
                          flags))
        elif magic == MD5_MAGIC:
            if md5_seen:
                raise FormatError("only one MD5 checksum is allowed")
            md5_seen = True
            if hashlib.md5(data[:off]).digest() != bytes(data[off + 16:off + 32]):
                raise FormatError("incorrect checksum (MD5) of the partition table")
        elif magic == 0xFFFF and ptype == 0xFF and sub == 0xFF:
            return parts
        else:
            raise FormatError("partition %d invalid magic number 0x%x" % (i, magic))
    raise FormatError("partition table has no end marker")


def pack_table(parts):
    """Binary partition table (0xC00 bytes) from (type, subtype, offset, size, label[, flags])."""
    out = bytearray()
    for p in parts:
        flags = p[5] if len(p) > 5 else 0
        out += struct.pack(ENTRY, PART_MAGIC, p[0], p[1], p[2], p[3], p[4].encode(), flags)
    out += b"\xeb\xeb" + b"\xff" * 14 + hashlib.md5(bytes(out)).digest()
    out += b"\xff" * (TABLE_SIZE - len(out))
    return bytes(out)


def find(parts, ptype, subtype=SUBTYPE_ANY, label=None):
    """Entries matching type (0xFF = any), subtype (0xFF = any) and label (None = any)."""
    return [p for p in parts
            if (ptype == 0xFF or p[0] == ptype) and (subtype == SUBTYPE_ANY or p[1] == subtype)
            and (label is None or p[4] == label)]


def ota_apps(parts):
    """The ota_N app partitions in slot order."""
    apps = [p for p in parts if p[0] == TYPE_APP and SUBTYPE_OTA0 <= p[1] < SUBTYPE_OTA0 + 16]
    apps.sort(key=lambda p: p[1])
    return apps


# -- otadata ------------------------------------------------------------------

def ota_crc(seq):
    """CRC of an otadata entry: CRC-32 of the little-endian seq, seeded 0xFFFFFFFF."""
    return binascii.crc32(struct.pack("<I", seq), 0xFFFFFFFF) & 0xFFFFFFFF


def parse_ota(entry):
    """[seq, seq_label, state, crc] of a 32-byte otadata entry (a list: callers edit it)."""
    return list(struct.unpack_from(OTA_ENTRY, entry, 0))


def pack_ota(e):
    """32 bytes of an otadata entry [seq, label, state, crc]."""
    return struct.pack(OTA_ENTRY, e[0], e[1], e[2], e[3])


def new_ota(seq, state, label=b"\xff" * 20):
    """An otadata entry with a correct crc."""
    return [seq, label, state, ota_crc(seq)]


def ota_invalid(e):
    """ESP-IDF's bootloader_common_ota_select_invalid: empty, INVALID or ABORTED."""
    return e[0] == SEQ_NONE or e[2] == INVALID or e[2] == ABORTED


def ota_valid(e):
    """ESP-IDF's bootloader_common_ota_select_valid: not invalid and the crc matches."""
    return not ota_invalid(e) and e[3] == ota_crc(e[0])


def ota_active(es):
    """Index (0/1) of the active copy: the valid one with the larger seq (0 on a tie), or -1."""
    v0 = ota_valid(es[0])
    v1 = ota_valid(es[1])
    if v0 and v1:
        return 0 if es[0][0] >= es[1][0] else 1
    if v0:
        return 0
    if v1:
        return 1
    return -1


def ota_describe(e):
    """Short text of an entry for boot logs."""
    if e[0] == SEQ_NONE:
        return "empty"
    return "seq=%d state=%s crc=%s" % (e[0], STATE_NAMES.get(e[2], hex(e[2])),
                                        "ok" if e[3] == ota_crc(e[0]) else "BAD")


# -- app image ----------------------------------------------------------------

def _mapped(addr):
    # ESP32 flash-mapped regions: DROM and IROM
    return 0x3F400000 <= addr < 0x3F800000 or 0x400D0000 <= addr < 0x40400000


def check_image(readinto, base, limit, buf):
    """Validate the app image at flash address `base` within `limit` bytes, streaming.

    `readinto(addr, mv)` fills mv from flash; `buf` is a scratch bytearray (>= 64
    bytes; 4 KiB makes it fast). Checks what esp_image_verify checks: magic, chip,
    segment count and bounds, mapped-segment alignment, the XOR checksum and the
    appended SHA-256. Returns {"size", "segments": [(load_addr, image_offset, len)],
    "entry", "hash"}; raises FormatError with ESP-IDF's wording of the failure.
    """
    mv = memoryview(buf)
    chunk = len(buf)
    if limit < 24:
        raise FormatError("partition too small for an image")
    readinto(base, mv[:24])
    magic, nseg, _mode, _sf, entry = struct.unpack_from("<BBBBI", buf, 0)
    if magic != IMAGE_MAGIC:
        raise FormatError("image at 0x%x has invalid magic byte (0x%02x)" % (base, magic))
    chip_id = struct.unpack_from("<H", buf, 12)[0]
    if chip_id != 0:
        raise FormatError("mismatch chip ID, expected 0, found %d" % chip_id)
    hash_appended = buf[23]
    if hash_appended > 1:
        raise FormatError("invalid hash_appended field 0x%02x" % hash_appended)
    if nseg == 0 or nseg > 16:
        raise FormatError("image at 0x%x has invalid segment count %d" % (base, nseg))
    sha = hashlib.sha256()
    sha.update(mv[:24])
    csum = CHECKSUM_SEED
    pos = 24
    segs = []
    for i in range(nseg):
        if pos + 8 > limit:
            raise FormatError("segment %d header beyond the partition" % i)
        readinto(base + pos, mv[:8])
        sha.update(mv[:8])
        addr, ln = struct.unpack_from("<II", buf, 0)
        pos += 8
        if ln % 4 or pos + ln > limit:
            raise FormatError("Segment %d 0x%x-0x%x invalid: bad length or beyond the partition"
                              % (i, base + pos, base + pos + ln))
        if _mapped(addr) and addr % _MMU_PAGE != (base + pos) % _MMU_PAGE:
            raise FormatError("Segment %d load address 0x%08x, doesn't match data 0x%08x"
                              % (i, addr, base + pos))
        segs.append((addr, pos, ln))
        off = 0
        while off < ln:
            k = ln - off
            if k > chunk:
                k = chunk
            readinto(base + pos + off, mv[:k])
            sha.update(mv[:k])
            csum = _xor8(buf, k, csum)
            off += k
        pos += ln
    pad = 15 - pos % 16
    if pos + pad + 1 > limit:
        raise FormatError("image checksum beyond the partition")
    readinto(base + pos, mv[:pad + 1])
    sha.update(mv[:pad + 1])
    pos += pad + 1
    if buf[pad] != csum:
        raise FormatError("Checksum failed. Calculated 0x%x read 0x%x" % (csum, buf[pad]))
    digest = None
    if hash_appended:
        if pos + 32 > limit:
            raise FormatError("image hash beyond the partition")
        digest = sha.digest()
        readinto(base + pos, mv[:32])
        if bytes(mv[:32]) != digest:
            raise FormatError("Image hash failed - image is corrupt")
        pos += 32
    return {"size": pos, "segments": segs, "entry": entry, "hash": digest}


def _cstr(b):
    b = bytes(b)
    z = b.find(b"\x00")
    return (b if z < 0 else b[:z]).decode()


def parse_app_desc(data):
    """esp_app_desc_t fields from its 256 (or more) bytes, or None if the magic is wrong."""
    if len(data) < 0xB0 or struct.unpack_from("<I", data, 0)[0] != APP_DESC_MAGIC:
        return None
    return {
        "secure_version": struct.unpack_from("<I", data, 4)[0],
        "version": _cstr(data[0x10:0x30]),
        "project": _cstr(data[0x30:0x50]),
        "time": _cstr(data[0x50:0x60]),
        "date": _cstr(data[0x60:0x70]),
        "idf_ver": _cstr(data[0x70:0x90]),
    }


def _varuint(b, i):
    v = 0
    while True:
        c = b[i]
        i += 1
        v = (v << 7) | (c & 0x7F)
        if not c & 0x80:
            return v, i


def romfs_length(head):
    """Total length of the ROMFS image whose first bytes (>= 16) are `head`, or 0."""
    if bytes(head[:3]) != ROMFS_MAGIC:
        return 0
    n, i = _varuint(head, 3)
    return i + n


def find_romfs(readinto, base, segments, buf):
    """(flash address, length) of the ROMFS carried by an image's segments, or None.

    The ROMFS is the data of the segment that starts with the ROMFS magic.
    """
    mv = memoryview(buf)
    for _addr, off, ln in segments:
        if ln < 16:
            continue
        readinto(base + off, mv[:16])
        n = romfs_length(buf)
        if n and n <= ln:
            return base + off, n
    return None
