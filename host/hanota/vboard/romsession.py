"""One esptool connection to the virtual ROM loader: download mode and the commands.

`Session` reads SLIP frames from its socket, answers each request in the dialect the
client speaks (stub or ROM; see `romloader`), and programs the loader's flash. The
loader's server thread runs one session at a time.
"""
from __future__ import annotations

import hashlib
import logging
import selectors
import socket
import struct
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .romchip import Registers
from .romwire import (
    HEADER, SECTOR, SYNC_DATA, SYNC_REPLIES, Closed, Op, Reject, RomError, SlipDecoder,
    checksum, slip_encode,
)

if TYPE_CHECKING:
    from .romloader import RomLoader

log = logging.getLogger("hanota.vboard.romloader")

_SEND_TIMEOUT = 10.0  # a client that stops reading for this long is dropped
_ACK_TIMEOUT = 10.0  # READ_FLASH: longest wait for the client's next ack
_INFLATE_CHUNK = SECTOR  # largest piece of output produced per inflate step
_MD5_CHUNK = 0x10000
_READ_SLOW_BLOCK = 64  # READ_FLASH_SLOW always answers 64 bytes
_MAX_BLOCK = 0x10000


@dataclass
class _Write:
    """An open FLASH_BEGIN / FLASH_DEFL_BEGIN transfer."""

    offset: int
    size: int  # bytes the client declared (ROM deflate: rounded up to its block size)
    block_size: int
    erase_end: int  # end of the erased sectors
    compressed: bool
    next_seq: int = 0
    pos: int = 0  # deflate: flash address of the next inflated byte
    inflater: Any = None  # zlib decompressobj


class Session:
    """One client connection: framing, download-mode state and command handlers."""

    def __init__(self, loader: RomLoader, conn: socket.socket, peer):
        self.loader = loader
        self.flash = loader.flash
        self.conn = conn
        self.selector: selectors.BaseSelector | None = None  # set by the server
        self.peer = f"{peer[0]}:{peer[1]}"
        conn.settimeout(_SEND_TIMEOUT)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.decoder = SlipDecoder()
        self.frames: deque[bytes] = deque()
        self.entered = False  # download mode entered (first SYNC seen)
        self.exited = False  # left download mode; the connection ends
        self.changed = False  # an erase or write reached the flash
        self.stub = True  # dialect the client speaks (see the `romloader` docstring)
        self.write: _Write | None = None
        self.after_reply: Callable[[], None] | None = None  # set by a handler
        self.registers = Registers(loader.chip, loader.mac, loader.flash)
        self.baud = 115200
        self.handlers = {
            Op.FLASH_BEGIN: lambda d: self._flash_begin(d, compressed=False),
            Op.FLASH_DATA: lambda d: self._flash_data(d, compressed=False),
            Op.FLASH_END: self._flash_end,
            Op.MEM_BEGIN: self._mem_begin,
            Op.MEM_DATA: self._mem_data,
            Op.MEM_END: self._mem_end,
            Op.WRITE_REG: self._write_reg,
            Op.READ_REG: self._read_reg,
            Op.SPI_SET_PARAMS: self._spi_set_params,
            Op.SPI_ATTACH: self._spi_attach,
            Op.READ_FLASH_SLOW: self._read_flash_slow,
            Op.CHANGE_BAUDRATE: self._change_baudrate,
            Op.FLASH_DEFL_BEGIN: lambda d: self._flash_begin(d, compressed=True),
            Op.FLASH_DEFL_DATA: lambda d: self._flash_data(d, compressed=True),
            Op.FLASH_DEFL_END: self._flash_end,
            Op.SPI_FLASH_MD5: self._md5,
            Op.ERASE_FLASH: self._erase_flash,
            Op.ERASE_REGION: self._erase_region,
            Op.READ_FLASH: self._read_flash,
        }
        log.info("client %s connected", self.peer)

    # -- session loop --------------------------------------------------------------

    def run(self) -> None:
        try:
            while not self.exited:
                self._handle(self._next_frame(None))
        except Closed as e:
            log.info("client %s: %s", self.peer, e)
        except OSError as e:
            log.info("client %s: connection lost (%s)", self.peer, e)

    def close(self) -> None:
        self.conn.close()
        if self.decoder.dropped:
            log.info("client %s: %d malformed SLIP frames dropped",
                     self.peer, self.decoder.dropped)
        if self.entered and not self.exited:
            self._leave("client disconnected")
        log.info("client %s closed", self.peer)

    def _leave(self, why: str) -> None:
        self.exited = True
        log.info("client %s leaves download mode (%s), flash changed: %s",
                 self.peer, why, self.changed)
        self.loader._callback("on_exit", self.changed)

    def _next_frame(self, timeout: float | None) -> bytes:
        while not self.frames:
            if not self.loader._wait(self.selector, self.conn, timeout):
                raise Closed(f"no data for {timeout} s")
            data = self.conn.recv(0x10000)
            if not data:
                raise Closed("disconnected")
            self.frames.extend(self.decoder.feed(data))
        return self.frames.popleft()

    def _send(self, packet: bytes) -> None:
        self.conn.sendall(slip_encode(packet))

    def _reply(self, op: int, value: int = 0, result: bytes = b"", error: int = 0) -> None:
        body = result + bytes((1 if error else 0, error, 0, 0))
        self._send(HEADER.pack(0x01, op, len(body), value) + body)

    def _handle(self, frame: bytes) -> None:
        if len(frame) < HEADER.size:
            log.debug("client %s: short frame %s ignored", self.peer, frame.hex())
            return
        direction, op, length, chk = HEADER.unpack_from(frame)
        data = frame[HEADER.size:]
        if direction != 0x00:
            log.debug("client %s: frame with direction %#x ignored", self.peer, direction)
            return
        if op == Op.SYNC:
            self._sync(data)
            return
        if not self.entered:
            log.debug("client %s: op %#04x before SYNC ignored", self.peer, op)
            return
        handler = self.handlers.get(op)
        try:
            if length != len(data):
                raise Reject(RomError.INVALID, f"length field {length}, data {len(data)}")
            if handler is None:
                raise Reject(RomError.INVALID, "unknown command", unsupported=True)
            if op in (Op.FLASH_DATA, Op.FLASH_DEFL_DATA, Op.MEM_DATA):
                if checksum(data[16:]) != chk:
                    raise Reject(RomError.CHECKSUM, "bad checksum")
            self.after_reply = None
            value, result = handler(data)
        except Reject as r:
            log.info("client %s: op %#04x rejected (error %#04x): %s", self.peer, op, r.error, r)
            # An invalid-message status under another op than the request's makes
            # esptool raise UnsupportedCommandError, which it uses for probing.
            self._reply(0x00 if r.unsupported else op, error=r.error)
            return
        except Exception:
            log.exception("client %s: op %#04x failed", self.peer, op)
            self._reply(op, error=RomError.FAILED)
            return
        self._reply(op, value, result)
        if self.after_reply is not None:
            self.after_reply()

    # -- helpers -------------------------------------------------------------------

    def _set_dialect(self, stub: bool, why: str) -> None:
        if stub != self.stub:
            log.debug("client %s speaks the %s dialect (%s)",
                      self.peer, "stub" if stub else "ROM", why)
        self.stub = stub

    def _unpack(self, fmt: str, data: bytes, *, exact: bool = True) -> tuple:
        n = struct.calcsize(fmt)
        if len(data) < n or (exact and len(data) != n):
            raise Reject(RomError.INVALID, f"expected {n} bytes of parameters, got {len(data)}")
        return struct.unpack_from(fmt, data)

    def _check_range(self, addr: int, n: int, error: RomError) -> None:
        if addr < 0 or n < 0 or addr + n > self.flash.size:
            raise Reject(error, f"{addr:#x}+{n:#x} outside the {self.flash.size:#x}-byte flash")

    def _flash_op(self, error: RomError, fn, *args, mutates: bool = True):
        """Run one flash operation, mapping its failures to a response status."""
        self.changed |= mutates
        try:
            return fn(*args)
        except (KeyboardInterrupt, SystemExit, GeneratorExit):
            raise
        except OSError as e:
            raise Reject(error, f"flash {fn.__name__} failed: {e}") from e
        except BaseException as e:  # the emulated flash's PowerCut
            log.warning("client %s: flash lost power in %s: %r", self.peer, fn.__name__, e)
            raise Reject(RomError.FAILED, f"power cut during flash {fn.__name__}") from None

    def _erase(self, start: int, end: int) -> None:
        """Erase every sector that overlaps [start, end)."""
        first = start - start % SECTOR
        for addr in range(first, end, SECTOR):
            self._flash_op(RomError.FLASH_WRITE, self.flash.erase, addr, SECTOR)

    def _program(self, addr: int, data: bytes, erase_end: int) -> None:
        """Write `data` at `addr`, one sector at a time.

        Bytes past the erased region that are padding (0xFF) are not written, so the
        last padded block of a transfer does not touch the sector after it.
        """
        if addr + len(data) > erase_end:
            keep = max(0, erase_end - addr)
            data = data[: max(keep, len(data.rstrip(b"\xff")))]
        self._check_range(addr, len(data), RomError.FLASH_WRITE)
        view = memoryview(data)
        while view:
            n = min(len(view), SECTOR - addr % SECTOR)
            self._flash_op(RomError.FLASH_WRITE, self.flash.write, addr, bytes(view[:n]))
            addr += n
            view = view[n:]

    def _read(self, addr: int, n: int) -> bytes:
        return self._flash_op(RomError.FLASH_READ, self.flash.read, addr, n, mutates=False)

    # -- registers -----------------------------------------------------------------

    def _read_reg(self, data: bytes):
        (addr,) = self._unpack("<I", data)
        return self.registers.read(addr, self.baud), b""

    def _write_reg(self, data: bytes):
        self.registers.write(data)
        return 0, b""

    # -- commands ------------------------------------------------------------------

    def _sync(self, data: bytes) -> None:
        if data != SYNC_DATA:
            log.debug("client %s: SYNC with wrong pattern ignored", self.peer)
            return
        # value 0 = "the flasher stub is running": esptool skips the stub upload.
        for _ in range(SYNC_REPLIES):
            self._reply(Op.SYNC)
        if not self.entered:
            self.entered = True
            log.info("client %s: SYNC, entering download mode", self.peer)
            self.loader._callback("on_enter")

    def _spi_attach(self, data: bytes):
        if len(data) == 8:
            self._set_dialect(False, "SPI_ATTACH with the ROM's legacy word")
        elif len(data) == 4:
            self._set_dialect(True, "SPI_ATTACH without the ROM's legacy word")
        else:
            raise Reject(RomError.INVALID, f"SPI_ATTACH with {len(data)} bytes")
        return 0, b""

    def _spi_set_params(self, data: bytes):
        self._unpack("<IIIIII", data)
        return 0, b""

    def _change_baudrate(self, data: bytes):
        new, old = self._unpack("<II", data)
        if new == 0:
            raise Reject(RomError.INVALID, "baud rate 0")
        self._set_dialect(old != 0, "CHANGE_BAUDRATE")
        self.baud = new
        return 0, b""

    def _flash_begin(self, data: bytes, compressed: bool):
        if len(data) == 16:  # the ESP32 ROM takes no "encrypted" word
            self._set_dialect(False, "FLASH_BEGIN without the encryption word")
            size, blocks, block_size, offset = struct.unpack("<IIII", data)
            encrypted = 0
        else:
            size, blocks, block_size, offset, encrypted = self._unpack("<IIIII", data)
            self._set_dialect(True, "FLASH_BEGIN with the encryption word")
        if encrypted:
            raise Reject(RomError.INVALID, "encrypted writes are not emulated")
        if not 0 < block_size <= _MAX_BLOCK:
            raise Reject(RomError.INVALID, f"block size {block_size:#x}")
        self._check_range(offset, size, RomError.INVALID)
        self.write = None
        erase_end = -(-(offset + size) // SECTOR) * SECTOR if size else offset
        if size:
            self._erase(offset, erase_end)
        self.write = _Write(offset, size, block_size, erase_end, compressed, pos=offset)
        if compressed:
            self.write.inflater = zlib.decompressobj()
        log.debug(
            "client %s: %sflash begin at %#x, %d bytes, %d blocks of %#x",
            self.peer, "compressed " if compressed else "", offset, size, blocks, block_size,
        )
        return 0, b""

    def _flash_data(self, data: bytes, compressed: bool):
        length, seq, _, _ = self._unpack("<IIII", data, exact=False)
        payload = data[16:]
        if length != len(payload):
            raise Reject(RomError.INVALID, f"block length {length}, payload {len(payload)}")
        w = self.write
        if w is None or w.compressed != compressed:
            raise Reject(RomError.FAILED, "not in flash download mode")
        if seq != w.next_seq:
            raise Reject(RomError.FAILED, f"block {seq}, expected {w.next_seq}")
        if compressed:
            self._inflate(w, payload)
        else:
            self._program(w.offset + seq * w.block_size, payload, w.erase_end)
        w.next_seq += 1
        return 0, b""

    def _inflate(self, w: _Write, payload: bytes) -> None:
        """Feed one compressed block; program the output as it comes, a sector at most."""
        d = w.inflater
        if d.eof:
            raise Reject(RomError.DEFLATE, "data after the end of the zlib stream")
        pending = payload
        while True:
            try:
                out = d.decompress(pending, _INFLATE_CHUNK)
            except zlib.error as e:
                raise Reject(RomError.DEFLATE, f"inflate failed: {e}") from None
            pending = d.unconsumed_tail
            if out:
                if w.pos + len(out) > w.offset + w.size:
                    raise Reject(RomError.FAILED, "inflated data exceeds the declared size")
                self._program(w.pos, out, w.erase_end)
                w.pos += len(out)
            if d.eof or (not pending and len(out) < _INFLATE_CHUNK):
                return

    def _flash_end(self, data: bytes):
        (no_reboot,) = self._unpack("<I", data)  # esptool sends int(not reboot)
        w, self.write = self.write, None
        if w is not None and w.compressed and w.next_seq and not w.inflater.eof:
            raise Reject(RomError.DEFLATE, "compressed stream ended early")
        if not self.stub:
            # The ROM runs the flash (no_reboot=1) or resets (0): download mode ends.
            # The stub stays, or reboots into the ROM loader: download mode goes on.
            why = "run requested" if no_reboot else "reset requested"
            self.after_reply = lambda: self._leave(why)
        return 0, b""

    def _mem_begin(self, data: bytes):
        self._unpack("<IIII", data)
        return 0, b""

    def _mem_data(self, data: bytes):
        length, _seq, _, _ = self._unpack("<IIII", data, exact=False)
        if length != len(data) - 16:
            raise Reject(RomError.INVALID, "block length mismatch")
        return 0, b""  # RAM contents are not emulated

    def _mem_end(self, data: bytes):
        no_entry, entry = self._unpack("<II", data)
        if not no_entry:
            why = f"run from RAM at {entry:#x} requested; the flash boots instead"
            self.after_reply = lambda: self._leave(why)
        return 0, b""

    def _md5(self, data: bytes):
        addr, size, _, _ = self._unpack("<IIII", data)
        self._check_range(addr, size, RomError.READ_LENGTH)
        digest = hashlib.md5()
        for at in range(addr, addr + size, _MD5_CHUNK):
            digest.update(self._read(at, min(_MD5_CHUNK, addr + size - at)))
        if self.stub:
            return 0, digest.digest()
        return 0, digest.hexdigest().encode()

    def _erase_flash(self, data: bytes):
        self._unpack("", data)
        self._set_dialect(True, "ERASE_FLASH")
        self.write = None
        self._erase(0, self.flash.size)
        return 0, b""

    def _erase_region(self, data: bytes):
        offset, size = self._unpack("<II", data)
        self._set_dialect(True, "ERASE_REGION")
        if offset % SECTOR or size % SECTOR:
            raise Reject(RomError.INVALID, "erase region not sector aligned")
        self._check_range(offset, size, RomError.INVALID)
        self._erase(offset, offset + size)
        return 0, b""

    def _read_flash_slow(self, data: bytes):
        offset, length = self._unpack("<II", data)
        self._set_dialect(False, "READ_FLASH_SLOW")
        if length > _READ_SLOW_BLOCK:
            raise Reject(RomError.READ_LENGTH, f"READ_FLASH_SLOW of {length} bytes")
        self._check_range(offset, length, RomError.READ_LENGTH)
        return 0, self._read(offset, length).ljust(_READ_SLOW_BLOCK, b"\0")

    def _read_flash(self, data: bytes):
        offset, length, block_size, in_flight = self._unpack("<IIII", data)
        self._set_dialect(True, "READ_FLASH")
        if not 0 < block_size <= _MAX_BLOCK or in_flight == 0:
            raise Reject(RomError.INVALID, f"block size {block_size}, {in_flight} in flight")
        self._check_range(offset, length, RomError.READ_LENGTH)
        self.after_reply = lambda: self._stream_flash(offset, length, block_size, in_flight)
        return 0, b""

    def _stream_flash(self, offset: int, length: int, block_size: int, in_flight: int) -> None:
        """After READ_FLASH's answer: data frames of `block_size`, at most `in_flight`
        unacknowledged; the client acks each with the total it has (<I); then the MD5.

        A flash failure mid-stream cannot be reported any more: the connection is closed.
        """
        digest = hashlib.md5()
        sent = acked = 0
        while acked < length:
            while sent < length and sent - acked < in_flight * block_size:
                n = min(block_size, length - sent)
                try:
                    block = self._read(offset + sent, n)
                except Reject as r:
                    raise Closed(f"READ_FLASH aborted: {r}") from None
                digest.update(block)
                self._send(block)
                sent += n
            ack = self._next_frame(_ACK_TIMEOUT)
            if len(ack) != 4:
                raise Closed(f"READ_FLASH: expected a 4-byte ack, got {len(ack)} bytes")
            (acked,) = struct.unpack("<I", ack)
            if acked > sent:
                raise Closed(f"READ_FLASH: ack for {acked} bytes, only {sent} sent")
        self._send(digest.digest())
