"""hanfw.link under the real MicroPython unix port: bundles and HELLO's frame limit."""
from support.mpy import MPY_TESTS, run_mpy_ok

CHECK = MPY_TESTS / "link_check.py"


def test_link_compiled_in_64k_heap():
    out = run_mpy_ok(CHECK, heapsize="64K", timeout=120)
    assert "link_check ok" in out and "hanfw/link.mpy" in out
