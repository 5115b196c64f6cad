# hanfw.clock on the real MicroPython, on a port without time.time/gmtime/localtime (the
# nRF port): the hub's UTC plus ticks_ms elapsed, across ticks wraparound.
# Prints one line per failure and "clock_check ok N" at the end; exits 1 on any failure.
import sys
import time as real_time


class _NrfTime:
    # the nRF port's time module: ticks and sleeps only (no time/gmtime/localtime/mktime)
    ticks_ms = staticmethod(real_time.ticks_ms)
    ticks_diff = staticmethod(real_time.ticks_diff)
    ticks_add = staticmethod(real_time.ticks_add)
    sleep_ms = staticmethod(real_time.sleep_ms)


sys.modules["time"] = _NrfTime()
from hanfw import clock  # noqa: E402
from hanfw import client  # noqa: E402,F401 (imports on a port without time.time/gmtime)

failures = []
checks = [0]
# ticks_ms's period on the boards (32-bit ports: small ints of 31 bits); the unix port's
# is 2**62, so the boards' ticks_diff/ticks_add are emulated (py/modtime ticks semantics)
PERIOD = 1 << 30
HALF = PERIOD >> 1


def ticks_diff(a, b):
    return ((a - b + HALF) & (PERIOD - 1)) - HALF


def ticks_add(a, b):
    return (a + b) & (PERIOD - 1)


def check(name, cond):
    checks[0] += 1
    if not cond:
        failures.append(name)
        print("FAIL", name)


class Ticks:
    # an injected ticks source: wraps at PERIOD like ticks_ms on the boards
    def __init__(self, start):
        self.t = start
        clock.ticks, clock.diff, clock.add = self, ticks_diff, ticks_add

    def __call__(self):
        return self.t

    def advance(self, ms):
        self.t = ticks_add(self.t, ms)


check("the port has no time.time", not hasattr(sys.modules["time"], "time"))
check("emulated ticks_diff across the wrap", ticks_diff(1, PERIOD - 1) == 2)
check("port's ticks_diff agrees without a wrap", ticks_diff(5000, 3000) == real_time.ticks_diff(5000, 3000))

# unset: no time, not even the host's
c = clock
c.base = None
check("unset clock says so", c.now() is None)

# the real ticks_ms: set, then time passes
c.set(800000000)
real_time.sleep_ms(1100)
check("real ticks: one second later", c.now() == 800000001)

# a wrap just after set: ticks go from PERIOD-500 to 1500
t = Ticks(PERIOD - 500)
c = clock
c.base = None
c.set(700000000)
check("just set", c.now() == 700000000)
t.advance(2000)
check("ticks wrapped", t.t == 1500)
check("2 s later across the wrap", c.now() == 700000002)
t.advance(999)
check("whole seconds (floor)", c.now() == 700000002)
t.advance(1)
check("3 s", c.now() == 700000003)

# 40 days (3+ periods of ticks_ms), read once an hour: re-anchoring keeps ticks_diff in range
t = Ticks(PERIOD - 12345)
c = clock
c.base = None
c.set(1000)
hour = 3600 * 1000
for h in range(40 * 24):
    t.advance(hour)
    if c.now() != 1000 + (h + 1) * 3600:
        check("hour %d after set" % (h + 1), False)
        break
check("40 days", c.now() == 1000 + 40 * 86400)
t.advance(1500)
check("40 days and 1.5 s", c.now() == 1000 + 40 * 86400 + 1)

# without re-anchoring, ticks_diff would go wrong after half a period (6.2 days): one
# read after 5 days, then one after 5 more (10 days since set) is still right
t = Ticks(3)
c = clock
c.base = None
c.set(2000)
t.advance(5 * 86400 * 1000)
check("5 days", c.now() == 2000 + 5 * 86400)
t.advance(5 * 86400 * 1000)
check("10 days", c.now() == 2000 + 10 * 86400)

# set again (a new session): the hub's time wins, backwards too
c.set(500)
check("set again, backwards", c.now() == 500)
t.advance(7000)
check("7 s after set again", c.now() == 507)

if failures:
    print("clock_check FAILED %d of %d" % (len(failures), checks[0]))
    sys.exit(1)
print("clock_check ok %d" % checks[0])
print(clock.__file__ if hasattr(clock, "__file__") else "")
