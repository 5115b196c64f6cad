# hanota boot.py: runs first on every boot. On boards with app banks it picks
# the bank to run from the boot-control record (trial, confirm, rollback) and
# mounts it at /app; on firmware-bank boards the chip's bootloader already did.
# Kept tiny and stable: it is not replaced by OTA updates.
import sys

BOOT = None  # ("boot" | "trial" | "rollback" | "no-bootable-bank", bank) for main.py


def _select():
    import json
    try:
        with open("bootcfg.json") as f:
            bc = json.loads(f.read())
    except OSError:
        return None  # firmware banks: nothing to choose here
    import hashlib
    import nrf
    import vfs
    from bootctl import BootControl, decide
    ctl = BootControl(nrf.Flash(start=bc["bootctl"][0], len=bc["bootctl"][1]))
    banks = [nrf.Flash(start=a, len=n) for a, n in bc["banks"]]
    # Stock nRF firmware mounts its ROMFS region -- where bank A lies -- at /rom and appends
    # /rom and /rom/lib to sys.path; bank A is rewritten by updates, so take it away.
    try:
        vfs.umount("/rom")
    except OSError:
        pass
    for p in ("/rom", "/rom/lib"):
        while p in sys.path:
            sys.path.remove(p)
    rec = ctl.load()
    if rec is None:
        print("boot: no valid boot-control record")
        return ("no-bootable-bank", -1)

    def bank_ok(i, r):
        n = r.length[i]
        if not n or n > bc["banks"][i][1]:
            return False
        h = hashlib.sha256()
        buf = bytearray(4096)
        done = 0
        blk = 0
        while done < n:
            banks[i].readblocks(blk, buf, 0)
            take = min(4096, n - done)
            h.update(memoryview(buf)[:take])
            done += take
            blk += 1
        return h.digest() == r.hash[i]

    bank, new, event = decide(rec, bank_ok)
    if new is not None:
        ctl.commit(new)
    print("boot: %s bank %d (%s)" % (event, bank, (new or rec).describe()))
    if bank < 0:
        return (event, bank)
    fl = banks[bank]
    n = (new or rec).length[bank]
    buf = fl.buffer(n) if hasattr(fl, "buffer") else fl
    vfs.mount(vfs.VfsRom(buf), "/app")
    sys.path.insert(1, "/app")
    return (event, bank)


try:
    BOOT = _select()
except Exception as e:  # never stop the board from reaching its REPL
    sys.print_exception(e)
    BOOT = ("error", -1)
