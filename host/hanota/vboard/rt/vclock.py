"""A virtual board's wrong wall clock: boards have no RTC set at boot.

`apply()` reads env ``HANOTA_VB_CLOCK_OFFSET`` (seconds, from ``hanota vboard start
--clock-offset`` / ``VirtualBoard(clock_offset=...)``) and, when it is set, puts a copy
of the ``time`` module in sys.modules whose ``time``, ``time_ns``, ``gmtime`` and
``localtime`` (those the port has: the nRF port has none of them) are that far off the
host's. ticks_* are left alone: they are a board's monotonic counter, not a clock.
It runs once, before boot.py, after the port's modules are in place, so the copy keeps
whatever the port conformance removed (the import machinery looks a name up in
sys.modules before the built-in modules).
"""
import os
import sys


class _Time:
    """A copy of the time module's attributes (MicroPython cannot make modules)."""

    def __init__(self, real):
        for k in dir(real):
            if not k.startswith("__"):
                setattr(self, k, getattr(real, k))
        self.__name__ = "time"

    def __repr__(self):
        return "<module 'time'>"


def _shifted(real, offset):
    t = _Time(real)
    whole = int(offset)
    if hasattr(real, "time"):
        t.time = lambda: real.time() + offset
    if hasattr(real, "time_ns"):
        t.time_ns = lambda: real.time_ns() + int(offset * 1000000000)
    if hasattr(real, "gmtime"):
        t.gmtime = lambda secs=None: real.gmtime(int(real.time()) + whole if secs is None else secs)
    if hasattr(real, "localtime"):
        t.localtime = lambda secs=None: real.localtime(int(real.time()) + whole
                                                        if secs is None else secs)
    return t


def apply():
    """Offset the board's wall clock by env HANOTA_VB_CLOCK_OFFSET seconds, if set."""
    raw = os.getenv("HANOTA_VB_CLOCK_OFFSET")
    if not raw:
        return
    real = sys.modules.get("time")
    if real is None:
        import time as real
    sys.modules["time"] = _shifted(real, float(raw))
