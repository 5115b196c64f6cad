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
