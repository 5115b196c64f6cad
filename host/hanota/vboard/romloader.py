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

This module is the TCP server; `romsession` serves one connection (download mode and
the command handlers), `romchip` emulates the registers esptool reads, and `romwire`
holds the SLIP framing, packet layout, opcodes and error codes.
"""
from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable

from .romchip import CHIPS
from .romsession import Session
from .romwire import SECTOR, Closed, Flash, Op, RomError, SlipDecoder, checksum, slip_encode

__all__ = [
    "SECTOR", "Flash", "Op", "RomError", "RomLoader", "SlipDecoder", "checksum", "slip_encode",
]

log = logging.getLogger("hanota.vboard.romloader")


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
        if chip not in CHIPS:
            raise ValueError(f"unsupported chip {chip!r} (supported: {', '.join(CHIPS)})")
        mac = bytes(mac)
        if len(mac) != 6:
            raise ValueError(f"a MAC address has 6 bytes, not {len(mac)}")
        self.flash = flash
        self.chip = CHIPS[chip]
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
            session = Session(self, conn, peer)
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

        Refuses clients that connect meanwhile; raises Closed when stopping.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = {key.fileobj for key, _ in sel.select(left)}
            if self._wake_r in ready:
                raise Closed("server stopping")
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
