"""The end of a virtual board's startup: run boot.py and main.py like MicroPython's pyexec.

`start(g)` empties the namespace `g` of the startup script (the REPL's globals when
the process runs ``micropython -i <boot script>``), then runs ``boot.py`` when it
exists and ``main.py`` when it exists and env ``HANOTA_VB_MAIN`` is ``1`` (the
supervisor clears it after a raw-REPL soft reset, as firmware skips main.py then),
both in `g`, as firmware runs them in ``__main__``. An exception is printed with its
traceback and startup goes on to the REPL (KeyboardInterrupt too: Ctrl-C stops
main.py and gives the prompt); SystemExit is a soft reset, as on firmware.
"""
import os
import sys

try:
    import machine
    import vclock
except ImportError:
    from . import machine, vclock


def _exists(name):
    try:
        os.stat(name)
        return True
    except OSError:
        return False


def pyexec_file(name, g):
    """Run a script file in g; print an exception; SystemExit soft-resets."""
    try:
        execfile(name, g)  # noqa: F821 (MicroPython builtin)
    except SystemExit:
        machine.soft_reset()
    except BaseException as e:  # noqa: B036 (firmware prints everything, KeyboardInterrupt too)
        sys.print_exception(e)


def heap_report(romfs, own):
    """With env HANOTA_VB_HEAP_REPORT=1, print what the board process holds when the
    emulation has booted: ``vboard heap: held H romfs R own O`` (bytes, after a collection;
    R: the ROMFS copy, O: what a real board's heap holds too, the mounted filesystems).
    H - R - O - the bare interpreter's share is the emulation's, which the launcher adds
    to the board's heap (layout.RT_HEAP); tests/device/test_vboard_heap.py checks it."""
    if os.getenv("HANOTA_VB_HEAP_REPORT") != "1":
        return
    import gc
    gc.collect()
    print("vboard heap: held %d romfs %d own %d" % (gc.mem_alloc(), romfs, own))


def start(g):
    """Clean g (keeping __name__) and run boot.py / main.py in it."""
    for k in list(g):
        if k != "__name__":
            del g[k]
    vclock.apply()  # a wrong wall clock, if the board was started with one
    if _exists("boot.py"):
        pyexec_file("boot.py", g)
    if os.getenv("HANOTA_VB_MAIN") == "1" and _exists("main.py"):
        pyexec_file("main.py", g)
