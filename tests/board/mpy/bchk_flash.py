# On-board tier: the board's own flash. The inactive bank (esp32.Partition / nrf.Flash) written,
# read back and hashed with hanfw.banks; hanfw.bootctl on a scratch region.
import gc
from hanfw import banks, bootctl
import bchk

SECTOR = 4096


def region(start, length):
    import nrf
    return nrf.Flash(start=start, len=length)


def next_update():
    # ESP32: the OTA partition esp_ota_get_next_update_partition() names
    import esp32
    p = esp32.Partition(esp32.Partition.RUNNING).get_next_update()
    run = esp32.Partition(esp32.Partition.RUNNING).info()
    return p, p.info(), run


def esp_partition(label):
    import esp32
    found = esp32.Partition.find(esp32.Partition.TYPE_DATA, label=label)
    return found[0] if found else None


def nrf_unused():
    import nrf
    bchk.out([nrf.unused_flash_start(), nrf.unused_flash_length()])


def is_blank(dev, first, count):
    buf = bytearray(SECTOR)
    for n in range(first, first + count):
        dev.readblocks(n, buf, 0)
        for b in buf:
            if b != 0xFF:
                return False
    return True


# The boot-control record of this board (None when its region is blank).
def record(dev):
    r = bootctl.BootControl(dev).load()
    return None if r is None else {"active": r.active, "state": list(r.state), "seq": r.seq,
                                   "version": list(r.version)}


# Write data (a bytearray, whole sectors) at sector `first`, then hash `length` bytes from 0.
def write_sectors(dev, first, data):
    mv = memoryview(data)
    for i in range(0, len(data), SECTOR):
        dev.writeblocks(first + i // SECTOR, mv[i:i + SECTOR])
    gc.collect()


def sha(dev, length, first=0):
    return bchk.hx(banks.region_sha256(dev, length, first))


def erase(dev, first, count):
    for n in range(first, first + count):
        dev.ioctl(6, n)


def rec_facts(r):
    return {"seq": r.seq, "active": r.active, "state": list(r.state), "why": r.why,
            "version": list(r.version), "length": list(r.length), "secver": list(r.secver),
            "floor": r.floor, "hash": [bchk.hx(h) for h in r.hash]}
