"""Stand-in for the virtual board's bootloader in the console's tests (runs on MicroPython).

Launched as ``micropython -i fakeboot.py``: mounts the folder named by env
HANOTA_FAKEBOOT_DIR as the board's root filesystem (``/``), runs ``/boot.py``, then
``/main.py`` when env HANOTA_VB_MAIN is ``1``, and returns so that the unix port starts
its REPL. Like firmware, an exception in either script (KeyboardInterrupt too) is
printed and start-up goes on to the REPL.

``machine`` is imported before the host filesystem is replaced, so a stand-in
``machine.py`` on MICROPYPATH stays importable afterwards.
"""
import os
import sys
import vfs

try:
    import machine  # noqa: F401 (kept in sys.modules for the REPL)
except ImportError:
    pass


def _exists(name):
    try:
        os.stat(name)
        return True
    except OSError:
        return False


def _run(name):
    if not _exists(name):
        return
    try:
        execfile(name, {"__name__": "__main__"})  # noqa: F821 (MicroPython builtin)
    except SystemExit:
        raise
    except BaseException as e:  # noqa: B036 (firmware prints every exception)
        sys.print_exception(e)


vfs.umount("/")
vfs.mount(vfs.VfsPosix(os.getenv("HANOTA_FAKEBOOT_DIR")), "/")
os.chdir("/")
_run("boot.py")
if os.getenv("HANOTA_VB_MAIN") == "1":
    _run("main.py")
