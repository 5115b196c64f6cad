"""`esp32` module work-alike for the virtual ESP32: `esp32.Partition` over the emulated flash.

Follows MicroPython's `esp32.Partition` (ports/esp32/esp32_partition.c) and the
ESP-IDF calls behind it (esp_partition_*, esp_ota_*):

* `Partition(label | BOOT | RUNNING, block_size=4096)`, `Partition.find(type, subtype,
  label, block_size)`, `info()`, `readblocks`, `writeblocks` (the plain form erases
  the covered blocks first, the offset form does not), `ioctl` (1 init, 2 deinit,
  3 sync, 4 count, 5 block size, 6 erase one block).
* `set_boot()` validates the image first (``OSError(-5379)``, ESP_ERR_OTA_VALIDATE_FAILED)
  then writes otadata like esp_rewrite_ota_data: the next seq for that slot into the
  *other* copy (erase + write), state NEW.
* `get_next_update()`, `Partition.mark_app_valid_cancel_rollback()` (PENDING_VERIFY or any
  non-VALID active entry -> VALID, rewriting the *same* copy; no flash op when VALID).
* Errors are OSError(-esp_err) with the ESP-IDF name, as check_esp_err raises them.

The flash is the one the bootloader attached (`attach`); a script that imports this
module without the bootloader gets the flash named by env HANOTA_VB_FLASH.
"""
import os

try:
    import espfmt
    import vflash
except ImportError:
    from . import espfmt, vflash

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

_SECTOR = const(4096)
# esp_ota_set_boot_partition validates the image in C, on no heap of the application's:
# the emulation's scratch buffer is taken once, at boot, from the runtime's share (RT_HEAP)
# rather than from the device code's heap at the moment it activates an image.
_CHECK_BUF = bytearray(_SECTOR)
_ESP_FAIL = const(-1)
_ESP_ERR_INVALID_ARG = const(0x102)
_ESP_ERR_INVALID_SIZE = const(0x104)
_ESP_ERR_NOT_FOUND = const(0x105)
_ESP_ERR_OTA_VALIDATE_FAILED = const(0x1503)
_ENOENT = const(2)
_EINVAL = const(22)
_ERR_NAMES = {_ESP_FAIL: "ESP_FAIL", _ESP_ERR_INVALID_ARG: "ESP_ERR_INVALID_ARG",
              _ESP_ERR_INVALID_SIZE: "ESP_ERR_INVALID_SIZE",
              _ESP_ERR_NOT_FOUND: "ESP_ERR_NOT_FOUND",
              _ESP_ERR_OTA_VALIDATE_FAILED: "ESP_ERR_OTA_VALIDATE_FAILED"}

_flash = None
_table = None


def _esp_err(code):
    return OSError(-code, _ERR_NAMES.get(code, "ESP_ERR_0x%x" % code))


def attach(flash, table=None):
    """Use `flash` (a vflash.NorFlash) and its partition table (parsed when None)."""
    global _flash, _table
    _flash = flash
    if table is None:
        table = espfmt.parse_table(flash.read(espfmt.TABLE_OFFSET, espfmt.TABLE_SIZE),
                                   flash.size)
    _table = table


def _chip():
    if _flash is None:
        path = os.getenv("HANOTA_VB_FLASH")
        if not path:
            raise OSError(_ENOENT, "no flash attached (set HANOTA_VB_FLASH)")
        attach(vflash.NorFlash(path, os.getenv("HANOTA_VB_CTL") or None, power_on=False))
    return _flash


def _vb_flash():
    """The emulated chip (vflash.NorFlash) -- virtual board only, for tests and fault injection."""
    return _chip()


def _otadata():
    """(flash address of otadata, [entry0, entry1]) or (None, None) without otadata."""
    flash = _chip()
    parts = espfmt.find(_table, espfmt.TYPE_DATA, espfmt.SUBTYPE_OTADATA)
    if not parts:
        return None, None
    base = parts[0][2]
    return base, [espfmt.parse_ota(flash.read(base, 32)),
                  espfmt.parse_ota(flash.read(base + _SECTOR, 32))]


def _write_ota(base, i, e):
    # rewrite_ota_seq / write_otadata: erase that sector, write the 32-byte entry
    _flash.erase(base + i * _SECTOR, _SECTOR)
    _flash.write(base + i * _SECTOR, espfmt.pack_ota(e))


def running_offset():
    """Flash address of the partition the bootloader started (None when unknown)."""
    return _chip().retained()


def _boot_entry():
    # esp_ota_get_boot_partition
    base, es = _otadata()
    if base is None:
        return None
    apps = espfmt.ota_apps(_table)
    factory = espfmt.find(_table, espfmt.TYPE_APP, espfmt.SUBTYPE_FACTORY)
    if (espfmt.ota_invalid(es[0]) and espfmt.ota_invalid(es[1])) or not apps:
        return factory[0] if factory else None
    a = espfmt.ota_active(es)
    if a < 0:
        return factory[0] if factory else None
    return apps[(es[a][0] - 1) % len(apps)]


class Partition:
    """A flash partition (see the module docstring)."""

    BOOT = 0
    RUNNING = 1
    TYPE_APP = 0
    TYPE_DATA = 1

    def __init__(self, id, block_size=4096):
        _chip()
        if isinstance(id, tuple):  # an entry of the table (find, get_next_update)
            entry = id
        elif isinstance(id, str):
            found = espfmt.find(_table, 0xFF, espfmt.SUBTYPE_ANY, id)
            entry = found[0] if found else None
        elif id == Partition.BOOT:
            entry = _boot_entry()
        elif id == Partition.RUNNING:
            off = running_offset()
            found = [p for p in _table if p[2] == off and p[0] == espfmt.TYPE_APP]
            entry = found[0] if found else None
        else:
            raise ValueError("invalid partition id")
        if entry is None:
            raise OSError(_ENOENT, "ENOENT")
        self._set(entry, block_size)

    def _set(self, entry, block_size):
        if block_size < 1:
            raise ValueError("invalid block size")
        self._e = entry
        self._bs = block_size
        self._cache = None

    @staticmethod
    def find(type=0, subtype=0xFF, label=None, block_size=4096):
        """Every partition matching type, subtype (0xFF any) and label (None any)."""
        _chip()
        out = []
        for e in espfmt.find(_table, type, subtype, label):
            out.append(Partition(e, block_size))
        return out

    def info(self):
        """(type, subtype, addr, size, label, encrypted)."""
        e = self._e
        return (e[0], e[1], e[2], e[3], e[4], False)

    def __repr__(self):
        e = self._e
        return ("<Partition type=%d, subtype=%d, address=%d, size=%d, label=%s, encrypted=0>"
                % (e[0], e[1], e[2], e[3], e[4]))

    # -- esp_partition_read/write/erase_range with their argument checks ------
    def _range(self, off, n):
        if off < 0 or off > self._e[3]:
            raise _esp_err(_ESP_ERR_INVALID_ARG)
        if off + n > self._e[3]:
            raise _esp_err(_ESP_ERR_INVALID_SIZE)
        return self._e[2] + off

    def _erase_range(self, off, n):
        if off % _SECTOR:
            raise _esp_err(_ESP_ERR_INVALID_ARG)
        if n % _SECTOR:
            raise _esp_err(_ESP_ERR_INVALID_SIZE)
        if n:
            _flash.erase(self._range(off, n), n)

    def readblocks(self, block_num, buf, offset=0):
        _flash.readinto(self._range(block_num * self._bs + offset, len(buf)), buf)

    def writeblocks(self, block_num, buf, offset=None):
        off = block_num * self._bs
        n = len(buf)
        if offset is None:
            # a simple write: erase first
            if self._bs >= _SECTOR:
                self._erase_range(off, n)
            else:
                self._erase_partial(off, n)
        else:
            off += offset
        _flash.write(self._range(off, n), buf)

    def _erase_partial(self, off, n):
        # block size below the 4 KiB erase unit: keep the bytes of each sector
        # outside [off, off+n), erase the sector, write them back
        if self._cache is None:
            self._cache = bytearray(_SECTOR)
        cache = self._cache
        top = off + n
        addr = off - off % _SECTOR
        o = off % _SECTOR
        while addr < top:
            partial = top < addr + _SECTOR
            if o or partial:
                _flash.readinto(self._range(addr, _SECTOR), cache)
            self._erase_range(addr, _SECTOR)
            if o:
                _flash.write(self._range(addr, o), memoryview(cache)[:o])
            if partial:
                _flash.write(self._range(top, addr + _SECTOR - top),
                             memoryview(cache)[top - addr:])
            o = 0
            addr += _SECTOR

    def ioctl(self, cmd, arg):
        if cmd in (1, 2, 3):
            return 0
        if cmd == 4:
            return self._e[3] // self._bs
        if cmd == 5:
            return self._bs
        if cmd == 6:
            if self._bs != _SECTOR:
                return -_EINVAL
            self._erase_range(arg * _SECTOR, _SECTOR)
            return 0
        return None

    # -- OTA ------------------------------------------------------------------
    def set_boot(self):
        """esp_ota_set_boot_partition: validate the image, then point otadata at this slot."""
        e = self._e
        if e[0] != espfmt.TYPE_APP:
            raise _esp_err(_ESP_ERR_INVALID_ARG)
        try:
            espfmt.check_image(_flash.readinto, e[2], e[3], _CHECK_BUF)
        except espfmt.FormatError:
            raise _esp_err(_ESP_ERR_OTA_VALIDATE_FAILED)
        base, es = _otadata()
        if base is None:
            raise _esp_err(_ESP_ERR_NOT_FOUND)
        if e[1] == espfmt.SUBTYPE_FACTORY:
            _flash.erase(base, 2 * _SECTOR)
            return
        apps = espfmt.ota_apps(_table)
        n = len(apps)
        sub = e[1] - espfmt.SUBTYPE_OTA0
        if sub >= n:
            raise _esp_err(_ESP_ERR_INVALID_ARG)
        a = espfmt.ota_active(es)
        if a >= 0:
            seq = es[a][0]
            i = 0
            while seq > (sub + 1) % n + i * n:
                i += 1
            nxt = 1 - a
            new_seq = (sub + 1) % n + i * n
        else:
            nxt = 0
            new_seq = sub + 1
        ent = es[nxt]
        ent[0] = new_seq
        ent[2] = espfmt.NEW
        ent[3] = espfmt.ota_crc(new_seq)
        _write_ota(base, nxt, ent)

    def get_next_update(self):
        """esp_ota_get_next_update_partition(NULL): the OTA slot after the running one."""
        apps = espfmt.ota_apps(_table)
        if not apps:
            raise OSError(_ENOENT, "ENOENT")
        run = running_offset()
        nxt = False
        for p in apps:
            if nxt:
                return Partition(p)
            if p[2] == run:
                nxt = True
        return Partition(apps[0])

    @staticmethod
    def mark_app_valid_cancel_rollback():
        """esp_ota_mark_app_valid_cancel_rollback: the active otadata entry becomes VALID."""
        base, es = _otadata()
        if base is None:
            raise _esp_err(_ESP_ERR_NOT_FOUND)
        a = espfmt.ota_active(es)
        if a < 0 or not espfmt.ota_apps(_table):
            raise _esp_err(_ESP_FAIL)  # "Running firmware is factory"
        if es[a][2] != espfmt.VALID:
            es[a][2] = espfmt.VALID
            _write_ota(base, a, es[a])

