"""Start-up of the virtual nRF52840, as the nrf port's main.c does it.

Run as ``micropython -X heapsize=H -i nrfboot.py`` with MICROPYPATH = this folder and env
HANOTA_VB_FLASH, HANOTA_VB_NRF_FS, HANOTA_VB_NRF_UNUSED (see nrf), and HANOTA_VB_MAIN,
HANOTA_VB_RESET_FILE, HANOTA_VB_RESET_CAUSE, HANOTA_VB_EUI64 as for the ESP32.

There is no second-stage bootloader to emulate: the MicroPython firmware is taken as
present, and app banks are chosen later by the project's own boot.py. The host
filesystem is unmounted; `nrf.Flash()` is mounted at /flash with LittleFS2 (made when
the region holds no filesystem, like the port's _mkfs.py; a damaged filesystem is
reported and left alone); cwd /flash; sys.path as the port's; the nrf port's modules
and identity (env HANOTA_VB_PORT, see vport); boot.py and (HANOTA_VB_MAIN=1) main.py run;
then the REPL starts.
"""
import os
import sys

try:
    import machine  # noqa: F401 (imported while the host filesystem is still mounted)
    import nrf
    import vbrun
    import vflash
    import vport
except ImportError:
    from . import machine, nrf, vbrun, vflash, vport  # noqa: F401

SYS_PATH = ["", ".frozen", "/flash", "/flash/lib"]


def _has_littlefs(bdev):
    head = bytearray(16)
    for block in (0, 1):
        bdev.readblocks(block, head)
        if bytes(head[8:16]) == b"littlefs":
            return True
    return False


def mount_flash():
    """Mount nrf.Flash() at /flash (formatting a blank region); True when mounted."""
    import vfs
    vfs.umount("/")
    bdev = nrf.Flash()
    if not _has_littlefs(bdev):
        vfs.VfsLfs2.mkfs(bdev)
    try:
        vfs.mount(vfs.VfsLfs2(bdev), "/flash")
    except OSError as e:
        print("MPY: can't mount flash:", e)
        return False
    os.chdir("/flash")
    return True


def main():
    import gc
    nrf.attach(vflash.NorFlash(os.getenv("HANOTA_VB_FLASH"), os.getenv("HANOTA_VB_CTL") or None))
    gc.collect()
    own = gc.mem_alloc()
    mount_flash()
    gc.collect()
    own = gc.mem_alloc() - own  # the mounted filesystem: a real board's heap holds it too
    sys.path.clear()
    sys.path.extend(SYS_PATH)
    port = os.getenv("HANOTA_VB_PORT")
    if port:  # from here on, the real port's modules and identity
        import json
        vport.apply(json.loads(port))
    vbrun.heap_report(0, own)
    gc.collect()


if __name__ == "__main__":
    main()
    vbrun.start(globals())
