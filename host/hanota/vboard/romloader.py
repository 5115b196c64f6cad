"""The virtual board's ESP32 serial ROM loader, spoken by the unmodified esptool.

A TCP endpoint (`socket://127.0.0.1:PORT`) that answers esptool the way an ESP32 in
download mode does, and programs an emulated NOR flash (any object with `size`,
`read(addr, n)`, `erase(addr, length)` and `write(addr, data)`, such as
`hanota.vboard.rt.vflash.NorFlash`).

Protocol (esptool `loader.py`): SLIP frames (0xC0 delimits, 0xDB 0xDC/0xDD escape);
request `<BBHI` = 0x00, op, data length, checksum (XOR of the payload seeded 0xEF,
checked on *_DATA), then data; response `<BBHI` = 0x01, op, body length, value, then
body = result + status, error + 2 reserved bytes (an ESP32 ROM sends four).

Two dialects share the opcodes, and esptool picks one per connection:

- **Stub.** The loader answers SYNC with value 0, which esptool reads as "the flasher
  stub is already running": it skips the stub upload and speaks the stub dialect
  (16 KiB blocks, compressed writes, ERASE_FLASH/ERASE_REGION, READ_FLASH, raw MD5).
- **ROM** (`esptool --no-stub`, on an explicit `--chip esp32`): 1 KiB blocks, SPI_ATTACH
  with the legacy word, READ_FLASH_SLOW, MD5 as 32 ASCII hex digits.

SYNC cannot say which one follows, so the loader infers the dialect from requests
whose layout differs: SPI_ATTACH (8 bytes ROM, 4 stub), FLASH_BEGIN and
FLASH_DEFL_BEGIN (16 bytes on the ESP32 ROM, 20 from the stub), CHANGE_BAUDRATE (old
rate 0 from the ROM), and stub-only commands. It starts as the stub.

Download mode: a connection enters it with its first SYNC (`on_enter()`; the board
halts its firmware), and leaves it (`on_exit(flash_changed)`; the board boots the
flash) when the client disconnects, when the server stops, or when the client asks the
ROM to run (FLASH_END in the ROM dialect, MEM_END with an entry point); the connection
is then closed. Over `socket://` esptool cannot toggle DTR/RTS, so `--after hard-reset`
sends nothing and the disconnect is the reset; `--after no-reset` cannot be honoured
either. In the stub dialect FLASH_END(reboot) reboots the stub into the ROM loader,
so the board stays in download mode. Requests before the first SYNC get no answer
(the firmware is running and does not speak SLIP).

Flash writes obey NOR rules: FLASH_BEGIN/FLASH_DEFL_BEGIN erase the covered 4 KiB
sectors first (as the ROM does; the stub erases as it goes, with the same result), and
data is programmed a sector at a time. A failing flash gives esptool an error status and
never stops the server: OSError on erase/write -> 0x08, on read -> 0x09; any other
BaseException from the flash (the emulated flash's `PowerCut`) -> 0x06.

One client at a time: while one is connected, further connections are accepted and
closed at once (esptool then fails to connect) and logged.
"""
from __future__ import annotations

import hashlib
import logging
import selectors
import socket
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Protocol

log = logging.getLogger("hanota.vboard.romloader")

SECTOR = 0x1000

_SLIP_END = 0xC0
_SLIP_ESC = 0xDB
_SLIP_ESC_END = 0xDC
_SLIP_ESC_ESC = 0xDD
# Longest request esptool sends is a 16 KiB stub block plus headers; anything much
# longer is noise and is dropped instead of buffered.
_MAX_FRAME = 0x10000

_HEADER = struct.Struct("<BBHI")  # direction, op, data length, checksum/value
assert _HEADER.size == 8
_CHECKSUM_SEED = 0xEF
_SYNC_DATA = b"\x07\x07\x12\x20" + b"\x55" * 32
_SYNC_REPLIES = 8

_SEND_TIMEOUT = 10.0  # a client that stops reading for this long is dropped
_ACK_TIMEOUT = 10.0  # READ_FLASH: longest wait for the client's next ack
_INFLATE_CHUNK = SECTOR  # largest piece of output produced per inflate step
_MD5_CHUNK = 0x10000
_READ_SLOW_BLOCK = 64  # READ_FLASH_SLOW always answers 64 bytes
_MAX_BLOCK = 0x10000


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


@dataclass(frozen=True)
class _Chip:
    """Register map of one chip model, as far as esptool reads it."""

    name: str
    magic_reg: int
    magic: int
    efuse_base: int
    efuse_words: tuple[int, ...]  # words 0..n; words 1/2 are replaced by the MAC
    uart_clkdiv_reg: int
    xtal_hz: int
    fixed_regs: dict[int, int]
    spi_base: int


# ESP32-D0WD-V3 rev v3.0, 40 MHz crystal, no security eFuses burnt:
#  word3: package 1 (bits 9-11), rev bit0 (15), CPU rated 240 MHz (13);
#  word4: CK8M calibration 80 (bits 0-7); word5: rev bit1 (20), default SPI pads.
# RTCCALICFG1 (0x3FF5F06C) with CK8M 80 gives the ROM-calibrated 40 MHz crystal
# (1280 * 15625 * 80 / 40), APB_CTL_DATE bit 31 is rev bit2, GPIO_STRAP 0x13 is
# "download boot".
_ESP32 = _Chip(
    name="ESP32",
    magic_reg=0x40001000,
    magic=0x00F01D83,
    efuse_base=0x3FF5A000,
    efuse_words=(0, 0, 0, 0x0000A200, 0x00000050, 0x00100000, 0, 0),
    uart_clkdiv_reg=0x3FF40014,
    xtal_hz=40_000_000,
    fixed_regs={0x3FF5F06C: 1280 << 7, 0x3FF6607C: 0x80000000, 0x3FF44038: 0x13},
    spi_base=0x3FF42000,
)
_CHIPS = {"esp32": _ESP32}

# SPI0 controller (offsets from spi_base) and the flash behind it.
_SPI_CMD, _SPI_ADDR, _SPI_USR, _SPI_USR2 = 0x00, 0x04, 0x1C, 0x24
_SPI_MISO_DLEN, _SPI_W0 = 0x2C, 0x80
_SPI_CMD_USR = 1 << 18
_SPI_USR_MISO = 1 << 28
_FLASH_RDID, _FLASH_RDSFDP = 0x9F, 0x5A
_WINBOND = 0xEF
_SFDP = b"SFDP\x06\x01\x00\xff" + b"\x00\x06\x01\x10\x30\x00\x00\xff"


class _Reject(Exception):
    """A request fails with `error`; `unsupported` answers as for an unknown command."""

    def __init__(self, error: RomError, why: str, unsupported: bool = False):
        super().__init__(why)
        self.error = error
        self.unsupported = unsupported


class _Closed(Exception):
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

    def __init__(self, max_frame: int = _MAX_FRAME):
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


class RomLoader:
    """An emulated ESP32 serial loader on a loopback TCP port, programming `flash`.

    `on_enter()` runs when a client's first SYNC arrives (the board enters download
    mode), after the SYNC replies and before any further request is served;
    `on_exit(flash_changed)` when that client leaves download mode (disconnect, run
    request, or `stop()`). Both run on the server thread, once per session; keep
    `on_enter` short (well under esptool's 3 s reply timeout). Exceptions they raise are
    logged and ignored. `flash_changed` is True once an erase or write was attempted.
    """

    def __init__(
        self,
        flash: Flash,
        chip: str = "esp32",
        mac: bytes = bytes(6),
        on_enter: Callable[[], None] | None = None,
        on_exit: Callable[[bool], None] | None = None,
    ):
        if chip not in _CHIPS:
            raise ValueError(f"unsupported chip {chip!r} (supported: {', '.join(_CHIPS)})")
        mac = bytes(mac)
        if len(mac) != 6:
            raise ValueError(f"a MAC address has 6 bytes, not {len(mac)}")
        self.flash = flash
        self.chip = _CHIPS[chip]
        self.mac = mac
        self.on_enter = on_enter
        self.on_exit = on_exit
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None
        self._lock = threading.Lock()
        self._stopped = False

    # -- lifecycle ---------------------------------------------------------------

    def start(self, port: int = 0) -> int:
        """Listen on 127.0.0.1:`port` (0 = any free port) and serve in a thread."""
        with self._lock:
            if self._thread is not None or self._stopped:
                raise RuntimeError("a RomLoader can be started once")
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind(("127.0.0.1", port))
                listener.listen(4)
            except OSError:
                listener.close()
                raise
            self._listener = listener
            self._port = listener.getsockname()[1]
            self._wake_r, self._wake_w = socket.socketpair()
            self._thread = threading.Thread(
                target=self._serve, name=f"romloader:{self._port}", daemon=True
            )
            self._thread.start()
            log.info("ROM loader listening on %s", self.url)
            return self._port

    @property
    def port(self) -> int | None:
        """The TCP port, once started."""
        return self._port

    @property
    def url(self) -> str:
        """The pyserial URL esptool takes as `-p`."""
        if self._port is None:
            raise RuntimeError("the ROM loader is not started")
        return f"socket://127.0.0.1:{self._port}"

    def stop(self, timeout: float = 10.0) -> None:
        """Disconnect any client (ending its session), stop the thread, close sockets."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            thread = self._thread
        if thread is not None:
            try:
                self._wake_w.send(b"x")
            except OSError:
                pass
            if thread is not threading.current_thread():
                thread.join(timeout)
                if thread.is_alive():
                    log.error("ROM loader thread did not stop within %.1f s", timeout)
        for sock in (self._listener, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        log.info("ROM loader on port %s stopped", self._port)

    def __enter__(self) -> "RomLoader":
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- server thread -----------------------------------------------------------

    def _serve(self) -> None:
        try:
            with selectors.DefaultSelector() as sel:
                sel.register(self._listener, selectors.EVENT_READ)
                sel.register(self._wake_r, selectors.EVENT_READ)
                while True:
                    ready = {key.fileobj for key, _ in sel.select()}
                    if self._wake_r in ready:
                        return
                    try:
                        conn, peer = self._listener.accept()
                    except OSError as e:
                        log.warning("accept failed: %s", e)
                        continue
                    self._serve_client(conn, peer)
        except Exception:
            log.exception("ROM loader server thread failed")

    def _serve_client(self, conn: socket.socket, peer) -> None:
        try:
            session = _Session(self, conn, peer)
        except BaseException:
            conn.close()
            raise
        with selectors.DefaultSelector() as sel:
            for sock in (conn, self._listener, self._wake_r):
                sel.register(sock, selectors.EVENT_READ)
            session.selector = sel
            try:
                session.run()
            finally:
                session.close()

    def _wait(self, sel: selectors.BaseSelector, conn: socket.socket,
              timeout: float | None) -> bool:
        """Block until `conn` is readable (True) or `timeout` passes (False).

        Refuses clients that connect meanwhile; raises _Closed when stopping.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = {key.fileobj for key, _ in sel.select(left)}
            if self._wake_r in ready:
                raise _Closed("server stopping")
            if self._listener in ready:
                self._refuse()
            if conn in ready:
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def _refuse(self) -> None:
        try:
            extra, peer = self._listener.accept()
        except OSError:
            return
        log.warning("refused %s:%s: a client is already connected", *peer[:2])
        extra.close()

    def _callback(self, name: str, *args) -> None:
        fn = getattr(self, name)
        if fn is None:
            return
        try:
            fn(*args)
        except Exception:
            log.exception("%s callback failed", name)


class _Session:
    """One client connection: framing, download-mode state and command handlers."""

    def __init__(self, loader: RomLoader, conn: socket.socket, peer):
        self.loader = loader
        self.flash = loader.flash
        self.chip = loader.chip
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
        self.stub = True  # dialect the client speaks (see module docstring)
        self.write: _Write | None = None
        self.after_reply: Callable[[], None] | None = None  # set by a handler
        self.regs = self._initial_regs()
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
        except _Closed as e:
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
                raise _Closed(f"no data for {timeout} s")
            data = self.conn.recv(0x10000)
            if not data:
                raise _Closed("disconnected")
            self.frames.extend(self.decoder.feed(data))
        return self.frames.popleft()

    def _send(self, packet: bytes) -> None:
        self.conn.sendall(slip_encode(packet))

    def _reply(self, op: int, value: int = 0, result: bytes = b"", error: int = 0) -> None:
        body = result + bytes((1 if error else 0, error, 0, 0))
        self._send(_HEADER.pack(0x01, op, len(body), value) + body)

    def _handle(self, frame: bytes) -> None:
        if len(frame) < _HEADER.size:
            log.debug("client %s: short frame %s ignored", self.peer, frame.hex())
            return
        direction, op, length, chk = _HEADER.unpack_from(frame)
        data = frame[_HEADER.size:]
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
                raise _Reject(RomError.INVALID, f"length field {length}, data {len(data)}")
            if handler is None:
                raise _Reject(RomError.INVALID, "unknown command", unsupported=True)
            if op in (Op.FLASH_DATA, Op.FLASH_DEFL_DATA, Op.MEM_DATA):
                if checksum(data[16:]) != chk:
                    raise _Reject(RomError.CHECKSUM, "bad checksum")
            self.after_reply = None
            value, result = handler(data)
        except _Reject as r:
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
            raise _Reject(RomError.INVALID, f"expected {n} bytes of parameters, got {len(data)}")
        return struct.unpack_from(fmt, data)

    def _check_range(self, addr: int, n: int, error: RomError) -> None:
        if addr < 0 or n < 0 or addr + n > self.flash.size:
            raise _Reject(error, f"{addr:#x}+{n:#x} outside the {self.flash.size:#x}-byte flash")

    def _flash_op(self, error: RomError, fn, *args, mutates: bool = True):
        """Run one flash operation, mapping its failures to a response status."""
        self.changed |= mutates
        try:
            return fn(*args)
        except (KeyboardInterrupt, SystemExit, GeneratorExit):
            raise
        except OSError as e:
            raise _Reject(error, f"flash {fn.__name__} failed: {e}") from e
        except BaseException as e:  # the emulated flash's PowerCut
            log.warning("client %s: flash lost power in %s: %r", self.peer, fn.__name__, e)
            raise _Reject(RomError.FAILED, f"power cut during flash {fn.__name__}") from None

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

    def _initial_regs(self) -> dict[int, int]:
        chip = self.chip
        regs = dict(chip.fixed_regs)
        words = list(chip.efuse_words)
        # esptool reads the MAC as bytes 2..7 of (word2, word1) big-endian.
        words[1] = int.from_bytes(self.loader.mac[2:6], "big")
        words[2] = int.from_bytes(self.loader.mac[0:2], "big")
        for i, word in enumerate(words):
            regs[chip.efuse_base + 4 * i] = word
        regs[chip.magic_reg] = chip.magic
        return regs

    def _read_reg(self, data: bytes):
        (addr,) = self._unpack("<I", data)
        if addr == self.chip.uart_clkdiv_reg:
            return round(self.chip.xtal_hz / self.baud), b""
        return self.regs.get(addr, 0), b""

    def _write_reg(self, data: bytes):
        if not data or len(data) % 16:
            raise _Reject(RomError.INVALID, f"WRITE_REG takes 16-byte entries, got {len(data)}")
        for addr, value, mask, _delay in struct.iter_unpack("<IIII", data):
            value = (self.regs.get(addr, 0) & ~mask) | (value & mask)
            if addr == self.chip.spi_base + _SPI_CMD and value & _SPI_CMD_USR:
                self._spi_user_command()
                value &= ~_SPI_CMD_USR  # the command completes at once
            self.regs[addr] = value
        return 0, b""

    def _spi_user_command(self) -> None:
        """Run the SPI flash command set up in the SPI0 registers (RDID, SFDP, RDSR...)."""
        base = self.chip.spi_base
        command = self.regs.get(base + _SPI_USR2, 0) & 0xFF
        if not self.regs.get(base + _SPI_USR, 0) & _SPI_USR_MISO:
            return
        nbytes = min(4, (self.regs.get(base + _SPI_MISO_DLEN, 0) + 8) // 8)
        if command == _FLASH_RDID:
            size_id = max(self.flash.size - 1, 1).bit_length()
            reply = bytes((_WINBOND, 0x40, size_id))
        elif command == _FLASH_RDSFDP:
            at = self.regs.get(base + _SPI_ADDR, 0) >> 8
            reply = _SFDP[at : at + nbytes].ljust(nbytes, b"\xff")
        else:
            reply = b""  # status registers: no protection bits, not busy
        self.regs[base + _SPI_W0] = int.from_bytes(reply[:nbytes].ljust(nbytes, b"\0"), "little")

    # -- commands ------------------------------------------------------------------

    def _sync(self, data: bytes) -> None:
        if data != _SYNC_DATA:
            log.debug("client %s: SYNC with wrong pattern ignored", self.peer)
            return
        # value 0 = "the flasher stub is running": esptool skips the stub upload.
        for _ in range(_SYNC_REPLIES):
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
            raise _Reject(RomError.INVALID, f"SPI_ATTACH with {len(data)} bytes")
        return 0, b""

    def _spi_set_params(self, data: bytes):
        self._unpack("<IIIIII", data)
        return 0, b""

    def _change_baudrate(self, data: bytes):
        new, old = self._unpack("<II", data)
        if new == 0:
            raise _Reject(RomError.INVALID, "baud rate 0")
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
            raise _Reject(RomError.INVALID, "encrypted writes are not emulated")
        if not 0 < block_size <= _MAX_BLOCK:
            raise _Reject(RomError.INVALID, f"block size {block_size:#x}")
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
            raise _Reject(RomError.INVALID, f"block length {length}, payload {len(payload)}")
        w = self.write
        if w is None or w.compressed != compressed:
            raise _Reject(RomError.FAILED, "not in flash download mode")
        if seq != w.next_seq:
            raise _Reject(RomError.FAILED, f"block {seq}, expected {w.next_seq}")
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
            raise _Reject(RomError.DEFLATE, "data after the end of the zlib stream")
        pending = payload
        while True:
            try:
                out = d.decompress(pending, _INFLATE_CHUNK)
            except zlib.error as e:
                raise _Reject(RomError.DEFLATE, f"inflate failed: {e}") from None
            pending = d.unconsumed_tail
            if out:
                if w.pos + len(out) > w.offset + w.size:
                    raise _Reject(RomError.FAILED, "inflated data exceeds the declared size")
                self._program(w.pos, out, w.erase_end)
                w.pos += len(out)
            if d.eof or (not pending and len(out) < _INFLATE_CHUNK):
                return

    def _flash_end(self, data: bytes):
        (no_reboot,) = self._unpack("<I", data)  # esptool sends int(not reboot)
        w, self.write = self.write, None
        if w is not None and w.compressed and w.next_seq and not w.inflater.eof:
            raise _Reject(RomError.DEFLATE, "compressed stream ended early")
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
            raise _Reject(RomError.INVALID, "block length mismatch")
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
            raise _Reject(RomError.INVALID, "erase region not sector aligned")
        self._check_range(offset, size, RomError.INVALID)
        self._erase(offset, offset + size)
        return 0, b""

    def _read_flash_slow(self, data: bytes):
        offset, length = self._unpack("<II", data)
        self._set_dialect(False, "READ_FLASH_SLOW")
        if length > _READ_SLOW_BLOCK:
            raise _Reject(RomError.READ_LENGTH, f"READ_FLASH_SLOW of {length} bytes")
        self._check_range(offset, length, RomError.READ_LENGTH)
        return 0, self._read(offset, length).ljust(_READ_SLOW_BLOCK, b"\0")

    def _read_flash(self, data: bytes):
        offset, length, block_size, in_flight = self._unpack("<IIII", data)
        self._set_dialect(True, "READ_FLASH")
        if not 0 < block_size <= _MAX_BLOCK or in_flight == 0:
            raise _Reject(RomError.INVALID, f"block size {block_size}, {in_flight} in flight")
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
                except _Reject as r:
                    raise _Closed(f"READ_FLASH aborted: {r}") from None
                digest.update(block)
                self._send(block)
                sent += n
            ack = self._next_frame(_ACK_TIMEOUT)
            if len(ack) != 4:
                raise _Closed(f"READ_FLASH: expected a 4-byte ack, got {len(ack)} bytes")
            (acked,) = struct.unpack("<I", ack)
            if acked > sent:
                raise _Closed(f"READ_FLASH: ack for {acked} bytes, only {sent} sent")
        self._send(digest.digest())
