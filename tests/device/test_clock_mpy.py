"""hanfw.clock under the real MicroPython unix port, with the nRF port's time module (no
time.time/gmtime): the hub's UTC plus ticks_ms elapsed, across ticks wraparound."""
from support.mpy import MPY_TESTS, run_mpy_ok

CHECK = MPY_TESTS / "clock_check.py"


def test_clock_across_ticks_wraparound_without_time_time():
    out = run_mpy_ok(CHECK, heapsize="256K", timeout=120)
    assert "clock_check ok" in out and "hanfw/clock.mpy" in out
