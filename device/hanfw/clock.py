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


# The device's one clock, as module globals and functions (no class, no instance: a
# 64 KiB heap has few bytes to spare). Tests put a ticks source that wraps in ticks/diff/add.
base = None  # UTC (s) at tick `at`; None until the hub sets the time
at = 0
due = None  # the UTC a future-dated activation waits for (kept here by the OTA client)


def set(utc):  # noqa: A001 (the clock's own set; the built-in is not used here)
    global base, at
    base = int(utc)
    at = ticks()


def now():
    """UTC seconds since 2000-01-01, or None when the hub has not set the time."""
    global base, at
    if base is None:
        return None
    ms = diff(ticks(), at)
    # re-anchor after an hour: ticks_diff is only right for spans under half the ticks
    # period (2**30 ms on the boards: about 6.2 days), and a board runs for months
    if ms >= 3600000:
        s = ms // 1000
        base += s
        at = add(at, s * 1000)
        ms -= s * 1000
    return base + ms // 1000
