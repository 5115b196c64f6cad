# Time hanfw.p256.verify on one known-answer vector, under CPython or MicroPython:
#   .venv/bin/python bench/p256_bench.py
#   MICROPYPATH=device .venv/bin/micropython -X heapsize=64K bench/p256_bench.py
import binascii
import gc
import sys
import time

try:
    ticks_us = time.ticks_us
    ticks_diff = time.ticks_diff
except AttributeError:
    sys.path.insert(0, "device")

    def ticks_us():
        return time.perf_counter_ns() // 1000

    def ticks_diff(a, b):
        return a - b

from hanfw import p256

PUB = binascii.unhexlify(
    "0471c5dac424730f426de4214662f0d5cf46e12796d190470cb44f60defda470cc"
    "29d478625d05a90ab9585d3ed8e06fdf76f007890df3c2e235fefd5025084c70")
DIGEST = binascii.unhexlify("1000f67013503e3d4c6a1ad410bb7dab7e9d1b26b12fbc6c514c161aa2342f1c")
SIG = binascii.unhexlify(
    "740924c95ff8e73f186a099c8dae6757230fe9616465cb935c7ccaa7169a8fd6"
    "7918265d4515126c3877c0bdd049960d781f058f5b7ad0a6a651b4977c1fe3e9")


def main(rounds=20):
    assert p256.verify(PUB, DIGEST, SIG)
    times = []
    for _ in range(rounds):
        gc.collect()
        t0 = ticks_us()
        ok = p256.verify(PUB, DIGEST, SIG)
        times.append(ticks_diff(ticks_us(), t0))
        assert ok
    times.sort()
    print("%s p256.verify: median %.2f ms, min %.2f ms over %d runs" % (
        sys.implementation.name, times[len(times) // 2] / 1000, times[0] / 1000, rounds))


main()
