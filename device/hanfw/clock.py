# hanota device: the device's UTC clock, as the hub gives it (the Zigbee Time
# cluster's UTCTime: whole seconds since 2000-01-01 UTC). A board has no RTC set
# at boot and the nRF port has no time.time() at all, so the clock is the hub's
# time at set() plus the ticks_ms elapsed since.
#
# The port's wall clock (time.time / gmtime, where the port has them) is not used,
# not even before the hub has set the time: after power-on an ESP32 says
# 2000-01-01, a virtual board says whatever its host says, and a wrong time that
# looks right would fire a future-dated activation early. Unset, now() is None: the
# clock says it is not set, and future-dated decisions wait for the hub.

import time

try:
    ticks = time.ticks_ms
    diff = time.ticks_diff
    add = time.ticks_add
except AttributeError:  # CPython: a monotonic clock that never wraps
    def ticks():
        return int(time.monotonic() * 1000)

    def diff(a, b):
        return a - b

    def add(a, b):
        return a + b


class Clock:
    """UTC seconds since 2000: now() is None until the hub has set the time. The ticks
    come from this module's ticks/diff/add (tests put a source that wraps there). No
    __init__ and class defaults: an unset clock costs the heap an empty instance."""

    base = None  # UTC (s) at tick self.at; None until the hub sets the time
    at = 0

    def set(self, utc):
        self.base = int(utc)
        self.at = ticks()

    def now(self):
        """UTC seconds since 2000-01-01, or None when the hub has not set the time."""
        if self.base is None:
            return None
        ms = diff(ticks(), self.at)
        # re-anchor after an hour: ticks_diff is only right for spans under half the ticks
        # period (2**30 ms on the boards: about 6.2 days), and a board runs for months
        if ms >= 3600000:
            s = ms // 1000
            self.base += s
            self.at = add(self.at, s * 1000)
            ms -= s * 1000
        return self.base + ms // 1000
