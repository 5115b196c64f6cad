"""Wire format of the ESP32 serial ROM loader (esptool `loader.py`), for `romloader`.

SLIP frames (0xC0 delimits, 0xDB 0xDC/0xDD escape); request `<BBHI` = 0x00, op, data
length, checksum (XOR of the payload seeded 0xEF, checked on *_DATA), then data;
response `<BBHI` = 0x01, op, body length, value, then body = result + status, error + 2
reserved bytes. Also the opcodes, error codes and the exceptions that end a request or
a session.
"""
from __future__ import annotations

import struct
from enum import IntEnum
from typing import Protocol

SECTOR = 0x1000

_SLIP_END = 0xC0
_SLIP_ESC = 0xDB
_SLIP_ESC_END = 0xDC
_SLIP_ESC_ESC = 0xDD
# Longest request esptool sends is a 16 KiB stub block plus headers; anything much
# longer is noise and is dropped instead of buffered.
MAX_FRAME = 0x10000

HEADER = struct.Struct("<BBHI")  # direction, op, data length, checksum/value
assert HEADER.size == 8
_CHECKSUM_SEED = 0xEF
SYNC_DATA = b"\x07\x07\x12\x20" + b"\x55" * 32
SYNC_REPLIES = 8


class Op(IntEnum):
    """Loader opcodes (esptool `ESPLoader.ESP_CMDS`) that this loader understands."""

    FLASH_BEGIN = 0x02
    FLASH_DATA = 0x03
    FLASH_END = 0x04
    MEM_BEGIN = 0x05
    MEM_END = 0x06
    MEM_DATA = 0x07
    SYNC = 0x08
    WRITE_REG = 0x09
    READ_REG = 0x0A
    SPI_SET_PARAMS = 0x0B
    SPI_ATTACH = 0x0D
    READ_FLASH_SLOW = 0x0E
    CHANGE_BAUDRATE = 0x0F
    FLASH_DEFL_BEGIN = 0x10
    FLASH_DEFL_DATA = 0x11
    FLASH_DEFL_END = 0x12
    SPI_FLASH_MD5 = 0x13
    GET_SECURITY_INFO = 0x14
    ERASE_FLASH = 0xD0
    ERASE_REGION = 0xD1
    READ_FLASH = 0xD2


class RomError(IntEnum):
    """Error byte of a failed response (ROM codes; esptool prints them as 0x01NN)."""

    INVALID = 0x05  # malformed or unsupported request
    FAILED = 0x06  # well-formed, but could not be carried out (also: flash power cut)
    CHECKSUM = 0x07  # *_DATA payload checksum mismatch
    FLASH_WRITE = 0x08
    FLASH_READ = 0x09
    READ_LENGTH = 0x0A  # read or hash outside the flash
    DEFLATE = 0x0B  # corrupt zlib stream


class Flash(Protocol):
    """What the loader needs from the emulated flash (`vflash.NorFlash` fits)."""

    size: int

    def read(self, addr: int, n: int) -> bytes: ...

    def erase(self, addr: int, length: int = SECTOR) -> None: ...

    def write(self, addr: int, data: bytes) -> None: ...


class Reject(Exception):
    """A request fails with `error`; `unsupported` answers as for an unknown command."""

    def __init__(self, error: RomError, why: str, unsupported: bool = False):
        super().__init__(why)
        self.error = error
        self.unsupported = unsupported


class Closed(Exception):
    """The client went away or the server is stopping: the session ends."""


def slip_encode(packet: bytes) -> bytes:
    """One SLIP frame holding `packet`."""
    body = packet.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc")
    return b"\xc0" + body + b"\xc0"


class SlipDecoder:
    """Incremental SLIP decoder: feed() bytes, get the complete frames.

    Every 0xC0 ends the bytes before it; non-empty runs are frames, except the run
    before the first 0xC0 (line noise before the client started talking). Frames with a
    bad escape or longer than `max_frame` are dropped (and counted in `dropped`).
    """

    def __init__(self, max_frame: int = MAX_FRAME):
        self._max = max_frame
        self._buf = bytearray()
        self._synced = False  # an 0xC0 has been seen
        self._overflow = False
        self.dropped = 0

    def feed(self, data: bytes) -> list[bytes]:
        frames: list[bytes] = []
        for i, part in enumerate(data.split(b"\xc0")):
            if i:
                self._end_frame(frames)
            if self._synced and not self._overflow:
                self._buf += part
                if len(self._buf) > self._max:
                    self._buf.clear()
                    self._overflow = True
        return frames

    def _end_frame(self, frames: list[bytes]) -> None:
        raw = bytes(self._buf)
        bad = self._overflow
        self._buf.clear()
        self._overflow = False
        if not self._synced:
            self._synced = True
            return
        if not raw and not bad:
            return
        frame = None if bad else self._unescape(raw)
        if frame is None:
            self.dropped += 1
        else:
            frames.append(frame)

    @staticmethod
    def _unescape(raw: bytes) -> bytes | None:
        first, *rest = raw.split(b"\xdb")
        out = [first]
        for part in rest:
            if part[:1] == b"\xdc":
                out.append(b"\xc0")
            elif part[:1] == b"\xdd":
                out.append(b"\xdb")
            else:
                return None
            out.append(part[1:])
        return b"".join(out)


def checksum(data: bytes) -> int:
    """The loader's *_DATA checksum: XOR of all bytes, seeded 0xEF."""
    state = _CHECKSUM_SEED
    for b in data:
        state ^= b
    return state
