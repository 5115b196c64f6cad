"""Start-up of the virtual ESP32: ROM, ESP-IDF second-stage bootloader, MicroPython's _boot.py.

Run as ``micropython -X heapsize=H -i esp32boot.py`` with MICROPYPATH = this folder and
env HANOTA_VB_FLASH (flash file), optional HANOTA_VB_CTL (sidecar), HANOTA_VB_RESET_CAUSE
(``power`` default, ``hard``, ``soft``, ...), HANOTA_VB_MAIN (``1`` runs main.py),
HANOTA_VB_RESET_FILE (see machine), HANOTA_VB_EUI64.

1. ROM: the second-stage bootloader image at 0x1000 must start with 0xE9 and validate;
   a blank chip prints ``invalid header: 0xffffffff`` and waits forever (no REPL).
2. Bootloader (ESP-IDF rules, rollback enabled): check the partition table at 0x8000
   (entry magics, bounds, MD5); otadata: every PENDING_VERIFY copy becomes ABORTED;
   the valid copy (seq set, state not INVALID/ABORTED, crc ok) with the larger seq
   wins, slot = (seq - 1) % number of OTA slots; a NEW winner becomes PENDING_VERIFY;
   both copies invalid: factory, else ota_0 (and when both were blank, otadata[0] gets
   seq = slot + 1, VALID, after the image loads). The chosen image is validated
   (magic, chip, segments, checksum, SHA-256); on failure the bootloader walks down to
   the factory app, then up through the OTA slots, then the test app. Each otadata
   change is an erase + write of that copy's sector on the emulated flash.
   The slot that boots is kept in the flash sidecar's retained word (esp32.Partition
   RUNNING). A soft reset skips ROM and bootloader (no output) and restarts the same slot.
3. MicroPython: the ROMFS carried by the app image (the segment that starts with the
   ROMFS magic) is read into a bytearray (heap: the launcher adds its size) and mounted
   at /rom; the host filesystem is unmounted; the "vfs" partition is mounted at / with
   LittleFS2 (made on first boot, like inisetup, with the default boot.py); sys.path
   is the ESP32 port's with ROMFS; the port's modules and identity are applied (env
   HANOTA_VB_PORT, see vport); boot.py and (HANOTA_VB_MAIN=1) main.py run; then
   the REPL starts.
"""
import os
import sys

try:
    import espfmt
    import esp32
    import machine
    import vbrun
    import vflash
    import vport
except ImportError:
    from . import espfmt, esp32, machine, vbrun, vflash, vport  # noqa: F401 (CPython: logic only)

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

BOOTLOADER_OFFSET = const(0x1000)
_FACTORY = const(-1)
_SECTOR = const(4096)
SYS_PATH = ["", "/rom", "/rom/lib", ".frozen", "/lib"]
_RST = {"power": "0x1 (POWERON_RESET)", "hard": "0xc (SW_CPU_RESET)",
        "wdt": "0x7 (TG0WDT_SYS_RESET)", "deepsleep": "0x5 (DEEPSLEEP_RESET)"}
_DEFAULT_BOOT_PY = """\
# This file is executed on every boot (including wake-boot from deepsleep)
#import esp
#esp.osdebug(None)
#import webrepl
#webrepl.start()
"""
_CORRUPT = ("The filesystem appears to be corrupted. If you had important data there, you"
            " may want to make a flash snapshot to try to recover it. Otherwise, perform"
            " factory reprogramming of MicroPython firmware (completely erase flash,"
            " followed by firmware programming).")


def log(level, tag, msg):
    print("%s (0) %s: %s" % (level, tag, msg))


def hang():
    """Wait forever, as a chip stuck in ROM or in a boot loop: no REPL."""
    import time
    while True:
        try:
            time.sleep(3600)
        except KeyboardInterrupt:
            pass


def rom(flash, cause, buf):
    """The ROM stage: True when a second-stage bootloader image is present and valid."""
    print("ets Jul 29 2019 12:21:46\n\nrst:%s,boot:0x13 (SPI_FAST_FLASH_BOOT)"
          % _RST.get(cause, _RST["power"]))
    head = flash.read(BOOTLOADER_OFFSET, 4)
    if head[0] != espfmt.IMAGE_MAGIC:
        print("invalid header: 0x%02x%02x%02x%02x" % (head[3], head[2], head[1], head[0]))
        return False
    try:
        info = espfmt.check_image(flash.readinto, BOOTLOADER_OFFSET,
                                  espfmt.TABLE_OFFSET - BOOTLOADER_OFFSET, buf)
    except espfmt.FormatError as e:
        print("checksum failure: %s" % e)
        return False
    for addr, _off, ln in info["segments"]:
        print("load:0x%08x,len:%d" % (addr, ln))
    print("entry 0x%08x" % info["entry"])
    return True


def read_table(flash):
    """The partition table, or None (logged) when it does not verify."""
    try:
        return espfmt.parse_table(flash.read(espfmt.TABLE_OFFSET, espfmt.TABLE_SIZE),
                                  flash.size)
    except espfmt.FormatError as e:
        log("E", "flash_parts", str(e))
        log("E", "boot", "Failed to verify partition table")
        return None


def _write_otadata(flash, base, i, e):
    flash.erase(base + i * _SECTOR, _SECTOR)
    flash.write(base + i * _SECTOR, espfmt.pack_ota(e))


def select(flash, table):
    """bootloader_utility_get_selected_boot_partition: (start index, otadata blank?)."""
    apps = espfmt.ota_apps(table)
    factory = espfmt.find(table, espfmt.TYPE_APP, espfmt.SUBTYPE_FACTORY)
    otadata = espfmt.find(table, espfmt.TYPE_DATA, espfmt.SUBTYPE_OTADATA)
    if not otadata:
        return _FACTORY, False
    base = otadata[0][2]
    es = [espfmt.parse_ota(flash.read(base, 32)), espfmt.parse_ota(flash.read(base + _SECTOR, 32))]
    for i in (0, 1):
        log("I", "boot", "otadata[%d]: %s" % (i, espfmt.ota_describe(es[i])))
    for i in (0, 1):
        if es[i][2] == espfmt.PENDING_VERIFY:
            es[i][2] = espfmt.ABORTED
            _write_otadata(flash, base, i, es[i])
            log("I", "boot", "otadata[%d] is marked as ABORTED" % i)
    if (espfmt.ota_invalid(es[0]) and espfmt.ota_invalid(es[1])) or not apps:
        if factory:
            log("I", "boot", "Defaulting to factory image")
            return _FACTORY, False
        log("I", "boot", "No factory image, trying OTA 0")

        def blank(e):
            return e[0] == espfmt.SEQ_NONE or e[3] != espfmt.ota_crc(e[0])
        return 0, blank(es[0]) and blank(es[1])
    a = espfmt.ota_active(es)
    if a >= 0:
        idx = (es[a][0] - 1) % len(apps)
        if es[a][2] == espfmt.NEW:
            es[a][2] = espfmt.PENDING_VERIFY
            _write_otadata(flash, base, a, es[a])
            log("I", "boot", "otadata[%d] is selected as new and marked PENDING_VERIFY" % a)
        return idx, False
    if factory:
        log("E", "boot", "ota data partition invalid, falling back to factory")
    else:
        log("E", "boot", "ota data partition invalid and no factory, will try all partitions")
    return _FACTORY, False


def _part(table, idx):
    if idx == _FACTORY:
        f = espfmt.find(table, espfmt.TYPE_APP, espfmt.SUBTYPE_FACTORY)
        return f[0] if f else None
    apps = espfmt.ota_apps(table)
    return apps[idx] if 0 <= idx < len(apps) else None


def _try(flash, e, buf):
    try:
        info = espfmt.check_image(flash.readinto, e[2], e[3], buf)
    except espfmt.FormatError as err:
        log("E", "esp_image", str(err))
        log("E", "boot", "Factory app partition is not bootable" if e[1] == 0 else
            "OTA app partition slot %d is not bootable" % (e[1] - espfmt.SUBTYPE_OTA0))
        return None
    log("I", "boot", "Loaded app from partition at offset 0x%x" % e[2])
    return info


def load(flash, table, start, blank, buf):
    """bootloader_utility_load_boot_image: (partition entry, image info) or (None, None)."""
    n = len(espfmt.ota_apps(table))
    order = list(range(start, _FACTORY - 1, -1)) + list(range(start + 1, n))
    for idx in order:
        e = _part(table, idx)
        if e is None:
            continue
        info = _try(flash, e, buf)
        if info is not None:
            if blank and idx >= 0:
                base = espfmt.find(table, espfmt.TYPE_DATA, espfmt.SUBTYPE_OTADATA)[0][2]
                _write_otadata(flash, base, 0, espfmt.new_ota(idx + 1, espfmt.VALID))
                log("I", "boot", "Set actual ota_seq=%d in otadata[0]" % (idx + 1))
            return e, info
    test = espfmt.find(table, espfmt.TYPE_APP, espfmt.SUBTYPE_TEST)
    if test:
        info = _try(flash, test[0], buf)
        if info is not None:
            return test[0], info
    log("E", "boot", "No bootable app partitions in the partition table")
    return None, None


def resume(flash, buf):
    """After a soft reset: the slot that was running, silently; None if it is gone."""
    try:
        table = espfmt.parse_table(flash.read(espfmt.TABLE_OFFSET, espfmt.TABLE_SIZE),
                                   flash.size)
    except espfmt.FormatError:
        return None
    run = flash.retained()
    for p in table:
        if p[0] == espfmt.TYPE_APP and p[2] == run:
            try:
                return table, p, espfmt.check_image(flash.readinto, run, p[3], buf)
            except espfmt.FormatError:
                return None
    return None


def bootloader(flash, cause="power"):
    """ROM + second stage: (table, app entry, image info), or None when nothing boots.

    A soft reset restarts the running slot without either (and prints nothing).
    Works under CPython too (no MicroPython start), for tests of the rules.
    """
    buf = bytearray(_SECTOR)
    if cause == "soft":
        booted = resume(flash, buf)
        if booted is not None:
            return booted
    if not rom(flash, cause, buf):
        return None
    log("I", "boot", "hanota virtual ESP32 2nd stage bootloader (ESP-IDF rules, rollback on)")
    table = read_table(flash)
    if table is None:
        return None
    start, blank = select(flash, table)
    entry, info = load(flash, table, start, blank, buf)
    if entry is None:
        return None
    flash.set_retained(entry[2])
    desc = espfmt.parse_app_desc(flash.read(entry[2] + espfmt.APP_DESC_OFFSET, 256)) or {}
    state = _state_of(flash, table, entry)
    log("I", "vboard", "running %s version=%s secure_version=%s otadata=%s"
        % (entry[4], desc.get("version", "?"), desc.get("secure_version", "?"), state))
    return table, entry, info


def _state_of(flash, table, entry):
    otadata = espfmt.find(table, espfmt.TYPE_DATA, espfmt.SUBTYPE_OTADATA)
    if not otadata or entry[1] < espfmt.SUBTYPE_OTA0:
        return "-"
    base = otadata[0][2]
    es = [espfmt.parse_ota(flash.read(base, 32)), espfmt.parse_ota(flash.read(base + _SECTOR, 32))]
    a = espfmt.ota_active(es)
    if a < 0:
        return "none"
    apps = espfmt.ota_apps(table)
    if apps[(es[a][0] - 1) % len(apps)][2] != entry[2]:
        return "other-slot-active"
    return espfmt.STATE_NAMES.get(es[a][2], hex(es[a][2]))


def romfs_image(flash, entry, info):
    """The app's ROMFS as a bytearray (None when the image carries none)."""
    loc = espfmt.find_romfs(flash.readinto, entry[2], info["segments"], bytearray(16))
    if loc is None:
        return None
    buf = bytearray(loc[1])
    flash.readinto(loc[0], buf)
    return buf


def mount_filesystems(flash, romfs):
    """Replace the host filesystem with /rom (ROMFS) and / (LittleFS2 on "vfs")."""
    import vfs
    vfs.umount("/")
    if romfs is not None:
        vfs.mount(vfs.VfsRom(romfs), "/rom")
    parts = esp32.Partition.find(esp32.Partition.TYPE_DATA, label="vfs")
    if not parts:
        return
    bdev = parts[0]
    try:
        fs = vfs.VfsLfs2(bdev)
    except OSError:
        # inisetup: only an erased first block may be formatted
        first = bytearray(_SECTOR)
        bdev.readblocks(0, first)
        if first != b"\xff" * _SECTOR:
            print(_CORRUPT)
            hang()
        print("Performing initial setup")
        vfs.VfsLfs2.mkfs(bdev)
        fs = vfs.VfsLfs2(bdev)
        vfs.mount(fs, "/")
        with open("/boot.py", "w") as f:
            f.write(_DEFAULT_BOOT_PY)
        return
    vfs.mount(fs, "/")


def main():
    """Boot the board; returns when MicroPython should run boot.py/main.py and the REPL."""
    flash = vflash.NorFlash(os.getenv("HANOTA_VB_FLASH"), os.getenv("HANOTA_VB_CTL") or None)
    cause = os.getenv("HANOTA_VB_RESET_CAUSE") or "power"
    booted = bootloader(flash, cause)
    if booted is None:
        hang()
    table, entry, info = booted
    import gc
    esp32.attach(flash, table)
    romfs = romfs_image(flash, entry, info)
    gc.collect()
    own = gc.mem_alloc()
    mount_filesystems(flash, romfs)
    gc.collect()
    own = gc.mem_alloc() - own  # the mounted filesystems: a real board's heap holds them too
    os.chdir("/")
    sys.path.clear()
    sys.path.extend(SYS_PATH)
    port = os.getenv("HANOTA_VB_PORT")
    if port:  # from here on, the real port's modules and identity
        import json
        vport.apply(json.loads(port))
    vbrun.heap_report(len(romfs) if romfs is not None else 0, own)
    gc.collect()


if __name__ == "__main__":
    main()
    vbrun.start(globals())
