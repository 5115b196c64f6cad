"""`machine` for the virtual board (shadows the unix port's builtin `machine`).

Resets end the process at once, as on a chip: the supervisor restarts it through
the bootloader. Before dying the process writes why into the file named by env
``HANOTA_VB_RESET_FILE`` -- ``hard`` (machine.reset), ``soft`` (machine.soft_reset,
or SystemExit out of boot.py/main.py), ``power`` (a flash power cut, see vflash) --
then SIGKILLs itself. The file is written by the shell (`os.system`), so it works
after the bootloader unmounted the host filesystem. Under CPython the resets raise
`Reset` (a BaseException) instead.

`reset_cause()` reports env ``HANOTA_VB_RESET_CAUSE`` (``power``, ``hard``, ``soft``,
``wdt``, ``deepsleep``; default ``power``); `unique_id()` is the 8 bytes of env
``HANOTA_VB_EUI64`` (16 hex digits, separators allowed).
"""
import binascii
import os
import select
import socket  # imported now: boot code hides it from the device code on the nRF (vport)
import sys
import time

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

PWRON_RESET = const(1)
HARD_RESET = const(2)
WDT_RESET = const(3)
DEEPSLEEP_RESET = const(4)
SOFT_RESET = const(5)

try:  # keep what the unix port's own machine module offers
    from umachine import PinBase, Signal, time_pulse_us  # noqa: F401
except ImportError:
    pass

_CAUSES = {"power": PWRON_RESET, "hard": HARD_RESET, "wdt": WDT_RESET,
           "deepsleep": DEEPSLEEP_RESET, "soft": SOFT_RESET}
_MICROPYTHON = sys.implementation.name == "micropython"


class Reset(BaseException):
    """A reset requested under CPython (inside MicroPython the process dies instead)."""


def _die(kind):
    if _MICROPYTHON:
        try:
            sys.stdout.flush()
        except AttributeError:
            pass
        os.system('[ -n "$HANOTA_VB_RESET_FILE" ] && printf %s > "$HANOTA_VB_RESET_FILE";'
                  ' kill -9 $PPID' % kind)
    raise Reset(kind)


def reset():
    """Hard reset: the board restarts through the bootloader."""
    _die("hard")


def soft_reset():
    """Soft reset: the interpreter restarts (the bootloader keeps the running slot)."""
    _die("soft")


def reset_cause():
    return _CAUSES.get(os.getenv("HANOTA_VB_RESET_CAUSE") or "power", PWRON_RESET)


def unique_id():
    """The board's EUI-64 (8 bytes) from env HANOTA_VB_EUI64 (zeros when unset)."""
    s = os.getenv("HANOTA_VB_EUI64") or ""
    h = "".join(c for c in s if c in "0123456789abcdefABCDEF")
    if len(h) != 16:
        return bytes(8)
    return binascii.unhexlify(h)


_freq = 160000000


def freq(hz=None):
    global _freq
    if hz is None:
        return _freq
    _freq = hz


def idle():
    time.sleep(0.001)


def disable_irq():
    return 0


def enable_irq(state=0):
    pass


class UART:
    """The board's UART to the hub (the virtual board's serial link).

    Env ``HANOTA_VB_LINK`` = ``uart:HOST:PORT``: the board process bridges this byte
    stream to the host-side pseudo-terminal the hub opens. Reads never block (like
    ``UART(timeout=0)``): `read`/`readinto` return what has arrived, or None; `any()`
    counts nothing exactly but says whether bytes wait. Pollable with select.poll.
    """

    def __init__(self, id=1, baudrate=115200, **kw):
        spec = os.getenv("HANOTA_VB_LINK") or ""
        kind, _, rest = spec.partition(":")
        if kind != "uart":
            raise OSError(19, "no UART link on this board (HANOTA_VB_LINK=%r)" % spec)
        host, _, port = rest.rpartition(":")
        self._s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._s.connect(socket.getaddrinfo(host, int(port))[0][-1])
        try:
            self._s.setsockopt(6, 1, 1)  # IPPROTO_TCP, TCP_NODELAY: bytes leave at once, as on a UART
        except OSError:
            pass
        self._s.setblocking(False)
        self.baudrate = baudrate

    def init(self, baudrate=115200, **kw):
        self.baudrate = baudrate

    def deinit(self):
        self._s.close()

    def write(self, buf):
        mv = memoryview(buf)
        sent = 0
        while sent < len(mv):
            try:
                sent += self._s.send(mv[sent:])
            except OSError:
                time.sleep_ms(1) if hasattr(time, "sleep_ms") else time.sleep(0.001)
        return sent

    def read(self, n=256):
        try:
            data = self._s.recv(n)
        except OSError:
            return None
        return data or None

    def readinto(self, buf, nbytes=None):
        data = self.read(nbytes or len(buf))
        if not data:
            return None
        buf[:len(data)] = data
        return len(data)

    def any(self):
        p = select.poll()
        p.register(self._s, select.POLLIN)
        return 1 if p.poll(0) else 0

    def ioctl(self, req, arg):
        return self._s.ioctl(req, arg) if hasattr(self._s, "ioctl") else 0

    def fileno(self):
        return self._s.fileno()
