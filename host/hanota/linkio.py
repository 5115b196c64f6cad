"""Transports that carry link frames (`hanfw.link`) between the hub and devices.

Two kinds, with one interface so the OTA server does not care which a device uses:

- `UdpLink`: one datagram is one frame; a device's address is its (host, port).
- `SerialLink`: a byte stream (a UART or a pseudo-terminal) where each frame travels as
  SLIP(frame + CRC-32); several devices may share one line, so the address is always None.

Both are asyncio-native and never block: received frames go to an `on_frame(frame, link,
addr)` callback, damaged input to `on_bad(link, addr, reason)`, and `send(frame, addr)`
queues a frame (`await drain()` waits until the link can take more, which is how a sender
fills a link without overrunning it). The device-side test client reuses these classes.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import termios
import tty
from typing import Any, Callable

from hanfw import link as hlink

from .errors import HanotaError

FrameHandler = Callable[[bytes, "Link", Any], None]
BadHandler = Callable[["Link", Any, str], None]

# A serial link queues at most this many encoded bytes before drain() makes a sender wait.
_SERIAL_HIGH_WATER = 8192
_SERIAL_LOW_WATER = 2048
_READ_CHUNK = 4096


class LinkIoError(HanotaError):
    """A transport cannot be opened or used (bad path, not a tty, closed)."""

    reason = "link-io"


def _ignore_bad(link: "Link", addr: Any, reason: str) -> None:
    pass


class Link:
    """What the server needs from a transport."""

    name = "link"

    def send(self, frame: bytes, addr: Any) -> None:
        """Queue one frame for addr (never blocks; drops silently once closed)."""
        raise NotImplementedError

    async def drain(self) -> None:
        """Return once the transport's send queue is below its low-water mark."""

    def describe(self, addr: Any) -> str:
        """A short human-readable name of a peer on this link, for logs and reports."""
        return self.name

    def close(self) -> None:
        raise NotImplementedError


# ---------------------------------------------------------------- UDP

UDP_RCVBUF = 4 * 1024 * 1024


class UdpLink(Link, asyncio.DatagramProtocol):
    """A UDP socket; each datagram carries exactly one link frame."""

    def __init__(self, on_frame: FrameHandler, on_bad: BadHandler = _ignore_bad):
        self._on_frame = on_frame
        self._on_bad = on_bad
        self._transport: asyncio.DatagramTransport | None = None
        self._connected = False
        self._writable = asyncio.Event()
        self._writable.set()
        self.local: tuple[str, int] | None = None
        self.name = "udp"

    @classmethod
    async def open(cls, host: str, port: int, on_frame: FrameHandler,
                   on_bad: BadHandler = _ignore_bad,
                   remote: tuple[str, int] | None = None) -> "UdpLink":
        """Bind host:port (0 = any free port); remote connects the socket to one peer."""
        loop = asyncio.get_running_loop()
        link = cls(on_frame, on_bad)
        try:
            if remote is None:
                await loop.create_datagram_endpoint(lambda: link, local_addr=(host, port))
            else:
                await loop.create_datagram_endpoint(lambda: link, local_addr=(host, port),
                                                    remote_addr=remote)
        except OSError as e:
            raise LinkIoError("cannot open UDP %s:%d: %s"
                              % (host, port, e.strerror or e)) from None
        return link

    # asyncio.DatagramProtocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # a burst from hundreds of devices must not overflow the kernel's default
            # receive buffer while the loop is busy (capped by net.core.rmem_max)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)
        self._connected = transport.get_extra_info("peername") is not None
        self.local = transport.get_extra_info("sockname")[:2]
        self.name = "udp:%s:%d" % self.local

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._on_frame(data, self, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a device that went away: nothing to do, it will re-ask.
        pass

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def send(self, frame: bytes, addr: Any) -> None:
        t = self._transport
        if t is None or t.is_closing():
            return
        if self._connected:
            t.sendto(frame)
        else:
            t.sendto(frame, addr)

    async def drain(self) -> None:
        await self._writable.wait()

    def describe(self, addr: Any) -> str:
        return "udp:%s:%d" % tuple(addr[:2]) if addr else self.name

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._writable.set()


# ---------------------------------------------------------------- serial

def _baud_constant(baudrate: int) -> int:
    try:
        return getattr(termios, "B%d" % baudrate)
    except AttributeError:
        raise LinkIoError("unsupported baud rate %d" % baudrate, reason="baudrate") from None


class SerialLink(Link):
    """A SLIP-framed byte stream on a file descriptor (UART or pty), read with add_reader.

    The descriptor is switched to non-blocking mode and, if it is a terminal, to raw mode
    (no echo, no CR/LF translation). A descriptor this class opened itself is closed by
    close(); one handed in stays open (its owner closes it).
    """

    def __init__(self, fd: int, on_frame: FrameHandler, on_bad: BadHandler = _ignore_bad, *,
                 name: str | None = None, owns_fd: bool = False, baudrate: int | None = None):
        self._loop = asyncio.get_running_loop()
        self.fd = fd
        self._owns = owns_fd
        self._on_frame = on_frame
        self._on_bad = on_bad
        self.name = name or "serial:fd%d" % fd
        self._decoder = hlink.SlipDecoder()
        self._out = bytearray()
        self._writer_on = False
        self._drained = asyncio.Event()
        self._drained.set()
        self.closed = False
        os.set_blocking(fd, False)
        if os.isatty(fd):
            tty.setraw(fd)
            if baudrate is not None:
                attrs = termios.tcgetattr(fd)
                attrs[4] = attrs[5] = _baud_constant(baudrate)
                termios.tcsetattr(fd, termios.TCSANOW, attrs)
        self._loop.add_reader(fd, self._readable)

    @classmethod
    def open(cls, path_or_fd: str | os.PathLike | int, on_frame: FrameHandler,
             on_bad: BadHandler = _ignore_bad, baudrate: int | None = None) -> "SerialLink":
        """Open a device path (or adopt an open descriptor) as a serial link."""
        if isinstance(path_or_fd, int):
            return cls(path_or_fd, on_frame, on_bad, baudrate=baudrate)
        path = os.fspath(path_or_fd)
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as e:
            raise LinkIoError("cannot open serial port %s: %s" % (path, e.strerror)) from None
        try:
            return cls(fd, on_frame, on_bad, name="serial:" + path, owns_fd=True,
                       baudrate=baudrate)
        except (OSError, termios.error, LinkIoError) as e:
            os.close(fd)
            if isinstance(e, LinkIoError):
                raise
            raise LinkIoError("cannot set up serial port %s: %s" % (path, e)) from None

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, _READ_CHUNK)
        except BlockingIOError:
            return
        except OSError as e:
            # EIO: the other end of a pty was closed. Stop reading rather than spin.
            self._stop_reading("serial-closed" if e.errno == errno.EIO else "serial-error")
            return
        if not data:
            self._stop_reading("serial-closed")
            return
        bad = self._decoder.bad
        self._decoder.feed(data)
        for _ in range(self._decoder.bad - bad):
            self._on_bad(self, None, "bad-crc")
        while True:
            frame = self._decoder.pop()
            if frame is None:
                break
            self._on_frame(frame, self, None)

    def _stop_reading(self, reason: str) -> None:
        if not self.closed:
            self._loop.remove_reader(self.fd)
            self._on_bad(self, None, reason)

    def send(self, frame: bytes, addr: Any = None) -> None:
        if self.closed:
            return
        self._out += hlink.slip_encode(frame)
        if not self._writer_on:
            self._flush()

    def _flush(self) -> None:
        while self._out:
            try:
                n = os.write(self.fd, self._out)
            except BlockingIOError:
                break
            except OSError:
                # The line is gone; drop what is queued (devices re-request what they miss).
                self._out.clear()
                break
            del self._out[:n]
        if self._out and not self._writer_on:
            self._loop.add_writer(self.fd, self._flush)
            self._writer_on = True
        elif not self._out and self._writer_on:
            self._loop.remove_writer(self.fd)
            self._writer_on = False
        if len(self._out) <= _SERIAL_LOW_WATER:
            self._drained.set()
        elif len(self._out) >= _SERIAL_HIGH_WATER:
            self._drained.clear()

    async def drain(self) -> None:
        if len(self._out) >= _SERIAL_HIGH_WATER:
            self._drained.clear()
        await self._drained.wait()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._loop.remove_reader(self.fd)
        if self._writer_on:
            self._loop.remove_writer(self.fd)
            self._writer_on = False
        self._out.clear()
        self._drained.set()
        if self._owns:
            os.close(self.fd)
