"""The heap a virtual board's emulation takes is measured, and the launcher charges that much.

A virtual board is MicroPython's unix port plus the emulation (host/hanota/vboard/rt/: the
ROM and bootloader, the emulated flash, the port's module copies). What the emulation holds
once booted is not on a real board, so the launcher adds layout.RT_HEAP[chip] to the heap
the board.toml (or ``heap=``) gives the device code. Too little and the device code runs
in less heap than it is told (the 64 KiB-heap runs would prove nothing); too much and it
runs in more. The boot scripts report what they hold (env HANOTA_VB_HEAP_REPORT=1).
"""
import re
import subprocess

import pytest

from hanota.romfs import build_romfs
from hanota.vboard import firmware, layout
from support.mpy import micropython_cmd

SLACK = 4096  # RT_HEAP may be above the measurement by less than this (rounding, growth)


def bare_interpreter(heapsize: str) -> int:
    """What the unix port holds with nothing imported (the same in a real board's heap)."""
    out = subprocess.run([micropython_cmd(), "-X", heapsize, "-c",
                          "import gc; gc.collect(); print(gc.mem_alloc())"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return int(out)


@pytest.mark.parametrize("kind", ["vboard-esp32", "vboard-nrf52840"])
def test_rt_heap_is_what_the_emulation_holds(tmp_path, kind):
    spec = layout.load_board(kind)
    path = layout.create_flash(spec, tmp_path / "flash.bin")
    if spec.bank_kind == "firmware":
        app = firmware.build_app_image(build_romfs({"x.py": b"X = 1\n"}), "1.0.0")
        firmware.install_firmware(spec, path, app)
    argv, env = layout.device_command(spec, path, run_main=False, heap="64K")
    env["HANOTA_VB_HEAP_REPORT"] = "1"
    r = subprocess.run(argv, env=env, input="", capture_output=True, text=True, timeout=60)
    m = re.search(r"vboard heap: held (\d+) romfs (\d+) own (\d+)", r.stdout)
    assert m, "the boot script printed no heap report:\n%s\n%s" % (r.stdout[-2000:], r.stderr[-2000:])
    held, romfs, own = (int(x) for x in m.groups())
    emulation = held - romfs - own - bare_interpreter(argv[2])
    charged = layout.RT_HEAP[spec.chip]
    assert emulation <= charged, (
        "the %s emulation holds %d bytes of heap but RT_HEAP charges %d: the device code gets "
        "less than its board.toml heap" % (kind, emulation, charged))
    assert charged - emulation < SLACK, (
        "RT_HEAP charges %d for the %s emulation, which holds %d: the device code gets more "
        "than its board.toml heap" % (charged, kind, emulation))
