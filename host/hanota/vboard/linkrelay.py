"""The virtual board's link endpoint: how its device code reaches the hub.

Two kinds, as on real boards:

- `UdpRelay` (vboard-esp32, like an ESP32 on Wi-Fi): the device sends datagrams to the
  relay's port on 127.0.0.1, the relay forwards them to the hub and the hub's replies
  back to the device.
- `UartLink` (vboard-nrf52840, like an nRF52840 on a UART): a byte stream between the
  board's `machine.UART` and a host-side pseudo-terminal that the hub opens.

Both can emulate a slow link: `rate` (bytes per second, each direction) delays every
datagram or chunk by its serialisation time, queued behind the ones before it, and
`latency` (seconds) adds a fixed delay. A relay never drops data on its own; it counts
what it carried. A `UdpRelay` can be told to lose datagrams: every Nth towards the device
(`drop_every`), or each one, both ways, with probability `drop_rate` from a generator seeded
with `drop_seed` (the same seed loses the same datagrams of the same traffic).
"""
from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import random
import select
import socket
import threading
import time
import tty


class _Pacer:
    """Delivery times for a one-way link of `rate` bytes/s and fixed `latency`."""

    def __init__(self, rate: float | None, latency: float):
        self.rate = rate
        self.latency = latency
        self._free_at = 0.0

    def due(self, now: float, nbytes: int) -> float:
        if not self.rate:
            return now + self.latency
        start = max(now, self._free_at)
        self._free_at = start + nbytes / self.rate
        return self._free_at + self.latency


class _Relay:
    """A thread that moves data between endpoints through a delivery queue."""

    def __init__(self, rate: float | None, latency: float):
        self._up = _Pacer(rate, latency)
        self._down = _Pacer(rate, latency)
        self._queue: list = []
        self._seq = itertools.count()
        self._stop_r, self._stop_w = os.pipe()
        self._thread: threading.Thread | None = None
        self.carried = {"up": 0, "down": 0}

    def _schedule(self, direction: str, data: bytes, deliver) -> None:
        pacer = self._up if direction == "up" else self._down
        now = time.monotonic()
        heapq.heappush(self._queue, (pacer.due(now, len(data)), next(self._seq), direction, data, deliver))

    def _flush_due(self) -> float | None:
        now = time.monotonic()
        while self._queue and self._queue[0][0] <= now:
            _, _, direction, data, deliver = heapq.heappop(self._queue)
            with contextlib.suppress(OSError):
                deliver(data)
                self.carried[direction] += len(data)
        return max(0.0, self._queue[0][0] - now) if self._queue else None

    def _start_thread(self, name: str) -> None:
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            os.write(self._stop_w, b"x")
            self._thread.join(timeout=5)
            self._thread = None
        for fd in (self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._stop_r = self._stop_w = -1
        self._close()

    def _close(self) -> None:  # pragma: no cover - overridden
        pass

    def _run(self) -> None:  # pragma: no cover - overridden
        pass


class UdpRelay(_Relay):
    """UDP between the device (which sends to `address`) and the hub at `hub`."""

    def __init__(self, hub: tuple[str, int], rate: float | None = None, latency: float = 0.0,
                 drop_every: int = 0, drop_rate: float = 0.0, drop_seed: int = 0):
        super().__init__(rate, latency)
        self.hub = hub
        self.drop_every = drop_every  # lose every Nth datagram towards the device (0: none)
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError("drop_rate must be in [0, 1): %r" % (drop_rate,))
        self.drop_rate = drop_rate  # lose each datagram, either way, with this probability
        self._rng = random.Random(drop_seed)
        self.lost = 0  # datagrams lost, both ways
        self.lost_by = {"up": 0, "down": 0}
        self._down_count = 0
        self._dev = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._dev.bind(("127.0.0.1", 0))
        self._hub_side = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._hub_side.bind(("127.0.0.1", 0))
        for s in (self._dev, self._hub_side):
            _big_receive_buffer(s)
        self._device_addr: tuple[str, int] | None = None

    @property
    def address(self) -> tuple[str, int]:
        """Where the device sends (the board's link endpoint)."""
        return self._dev.getsockname()

    def start(self) -> "UdpRelay":
        self._start_thread("udp-relay:%d" % self.address[1])
        return self

    def _run(self) -> None:
        socks = [self._dev, self._hub_side, self._stop_r]
        while True:
            timeout = self._flush_due()
            ready, _, _ = select.select(socks, [], [], timeout)
            if self._stop_r in ready:
                return
            if self._dev in ready:
                with contextlib.suppress(OSError):
                    data, addr = self._dev.recvfrom(65536)
                    self._device_addr = addr
                    if self._lose("up"):
                        self._schedule("up", data, _lost)  # it took its time on the air
                    else:
                        self._schedule("up", data,
                                       lambda d, hub=self.hub: self._hub_side.sendto(d, hub))
            if self._hub_side in ready:
                with contextlib.suppress(OSError):
                    data, addr = self._hub_side.recvfrom(65536)
                    dev = self._device_addr
                    self._down_count += 1
                    if self.drop_every and self._down_count % self.drop_every == 0:
                        self.lost += 1
                        self.lost_by["down"] += 1
                    elif self._lose("down"):
                        self._schedule("down", data, _lost)
                    elif dev is not None:
                        self._schedule("down", data, lambda d, dev=dev: self._dev.sendto(d, dev))

    def _lose(self, direction: str) -> bool:
        if self.drop_rate and self._rng.random() < self.drop_rate:
            self.lost += 1
            self.lost_by[direction] += 1
            return True
        return False

    def kernel_drops(self) -> dict[str, int] | None:
        """Datagrams the kernel dropped because a socket's receive buffer was full, as Linux
        counts them in /proc/net/udp: at the relay's sockets (its thread fell behind a burst
        on a loaded machine) and at the device's (a board too busy to read its radio). These
        are lost on the emulated link too, besides the seeded drops. None where Linux's
        counts cannot be read."""
        ports = {"device": self._device_addr[1] if self._device_addr else None,
                 "relay-up": self._dev.getsockname()[1],
                 "relay-down": self._hub_side.getsockname()[1]}
        drops = dict.fromkeys(ports, 0)
        try:
            with open("/proc/net/udp") as f:
                next(f)
                for line in f:
                    cols = line.split()
                    addr, port = cols[1].split(":")
                    # 127.0.0.1 or any address, little-endian hex as the kernel shows it
                    if addr not in ("0100007F", "00000000"):
                        continue
                    for k, p in ports.items():
                        if p == int(port, 16):
                            drops[k] += int(cols[-1])
        except (OSError, ValueError, IndexError, StopIteration):
            return None
        return drops

    def _close(self) -> None:
        self._dev.close()
        self._hub_side.close()


_RECEIVE_BUFFER = 4 << 20


def _big_receive_buffer(s: socket.socket) -> None:
    # A hub sends a page's few hundred frames at once; on a loaded machine the relay's
    # thread can fall behind, and a full receive buffer would lose frames the emulated
    # link never chose to lose. Linux caps SO_RCVBUF at net.core.rmem_max; root may go
    # past it (SO_RCVBUFFORCE). What is still lost that way shows in kernel_drops().
    force = getattr(socket, "SO_RCVBUFFORCE", None)
    for opt in ((force,) if force is not None else ()) + (socket.SO_RCVBUF,):
        try:
            s.setsockopt(socket.SOL_SOCKET, opt, _RECEIVE_BUFFER)
            return
        except OSError:
            continue


def _lost(data: bytes) -> None:
    """Delivers nothing: a datagram lost on the emulated air (after its airtime)."""


def _open_pty() -> tuple[int, int, str]:
    master, slave = os.openpty()
    tty.setraw(slave)
    tty.setraw(master)
    os.set_blocking(master, False)
    return master, slave, os.ttyname(slave)


class UartLink(_Relay):
    """A UART-like byte stream between the board (`machine.UART`, which connects to
    `device_address` over loopback TCP) and `host_path`, the pseudo-terminal the hub opens.

    Like a UART, bytes that nobody reads are lost once the far side's buffer is full.
    """

    def __init__(self, rate: float | None = None, latency: float = 0.0, chunk: int = 64):
        super().__init__(rate, latency)
        self._chunk = chunk
        self.dropped = 0
        self._listen = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listen.bind(("127.0.0.1", 0))
        self._listen.listen(1)
        self._dev: socket.socket | None = None
        self._host_m, self._host_s, self.host_path = _open_pty()

    @property
    def device_address(self) -> tuple[str, int]:
        return self._listen.getsockname()

    def start(self) -> "UartLink":
        self._start_thread("uart-link")
        return self

    def _to_device(self, data: bytes) -> None:
        dev = self._dev
        if dev is None:
            self.dropped += len(data)  # the board is off: a UART with nobody listening
            return
        try:
            n = dev.send(data)
        except (BlockingIOError, OSError):
            n = 0
        self.dropped += len(data) - n

    def _to_host(self, data: bytes) -> None:
        try:
            n = os.write(self._host_m, data)
        except BlockingIOError:
            n = 0
        self.dropped += len(data) - n

    def _run(self) -> None:
        while True:
            fds = [self._listen, self._host_m, self._stop_r] + ([self._dev] if self._dev else [])
            timeout = self._flush_due()
            ready, _, _ = select.select(fds, [], [], timeout)
            if self._stop_r in ready:
                return
            if self._listen in ready:
                conn, _ = self._listen.accept()
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a UART has no Nagle
                if self._dev is not None:  # a new board process: the old one is gone
                    with contextlib.suppress(OSError):
                        self._dev.close()
                self._dev = conn
            if self._dev is not None and self._dev in ready:
                try:
                    data = self._dev.recv(self._chunk)
                except (BlockingIOError, OSError):
                    data = b""
                    continue
                if data:
                    self._schedule("up", data, self._to_host)
                else:
                    self._dev.close()
                    self._dev = None
            if self._host_m in ready:
                try:
                    data = os.read(self._host_m, self._chunk)
                except (BlockingIOError, OSError):
                    data = b""
                if data:
                    self._schedule("down", data, self._to_device)

    def _close(self) -> None:
        for s in (self._dev, self._listen):
            if s is not None:
                with contextlib.suppress(OSError):
                    s.close()
        for fd in (self._host_m, self._host_s):
            with contextlib.suppress(OSError):
                os.close(fd)
