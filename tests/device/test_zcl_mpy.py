"""hanfw.zcl under the real MicroPython unix port: fixtures, round trips and errors."""
from support.mpy import MPY_TESTS, run_mpy_ok

CHECK = MPY_TESTS / "zcl_check.py"


def test_zcl_compiled_in_64k_heap():
    # as boards run it: zcl precompiled by mpy-cross, heap limited to 64 KiB
    out = run_mpy_ok(CHECK, heapsize="64K", timeout=120)
    assert "zcl_check ok" in out
    assert "hanfw/zcl.mpy" in out


def test_zcl_from_source():
    # compiling zcl.py on the interpreter itself needs more than a 64 KiB heap
    out = run_mpy_ok(CHECK, compiled=False, timeout=120)
    assert "zcl_check ok" in out
    assert "hanfw/zcl.py" in out
