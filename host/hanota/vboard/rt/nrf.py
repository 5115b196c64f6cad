"""`nrf` module work-alike for the virtual nRF52840: `nrf.Flash` over the emulated flash.

* `nrf.Flash()` is the filesystem region (LittleFS2, mounted at /flash);
  `nrf.Flash(start=, len=)` any 4 KiB-page-aligned region of the chip (ValueError
  otherwise), as in MicroPython's nrf port.
* Block protocol with 4 KiB blocks: `readblocks(n, buf[, off])`, `writeblocks(n, buf[, off])`
  (the plain form erases the covered pages first, the offset form does not),
  `ioctl(op, arg)` (1 init, 2 deinit, 3 sync, 4 count, 5 block size, 6 erase a page).
* Deviation: the real object also exports the read buffer protocol, so
  ``vfs.VfsRom(nrf.Flash(start=a, len=n))`` maps the region in place. A Python class
  cannot export it, so here `buffer(length=None)` returns a bytearray copy of the
  first `length` bytes of the region (heap!) for VfsRom, `readinto(buf, off=0)`
  reads part of it, and `len()` is its length. Board code should hide the difference.
* `nrf.unused_flash_start()`, `nrf.unused_flash_length()`: the free tail of the
  firmware region.

The layout comes from env HANOTA_VB_NRF_FS and HANOTA_VB_NRF_UNUSED ("start,len",
decimal or 0x-hex), the flash from HANOTA_VB_FLASH (or `attach`).
"""
import os

try:
    import vflash
except ImportError:
    from . import vflash

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

PAGE = const(4096)
_EINVAL = const(22)
_flash = None


def attach(flash):
    """Use `flash` (a vflash.NorFlash) as the chip."""
    global _flash
    _flash = flash


def _chip():
    if _flash is None:
        path = os.getenv("HANOTA_VB_FLASH")
        if not path:
            raise OSError(2, "no flash attached (set HANOTA_VB_FLASH)")
        attach(vflash.NorFlash(path, os.getenv("HANOTA_VB_CTL") or None, power_on=False))
    return _flash


def _vb_flash():
    """The emulated chip (vflash.NorFlash) -- virtual board only, for tests and fault injection."""
    return _chip()


def _region(var):
    v = os.getenv(var)
    if not v:
        raise OSError(2, "env %s is not set" % var)
    a, n = v.split(",")
    return int(a, 0), int(n, 0)


def unused_flash_start():
    return _region("HANOTA_VB_NRF_UNUSED")[0]


def unused_flash_length():
    return _region("HANOTA_VB_NRF_UNUSED")[1]


class Flash:
    """A region of the chip's flash (see the module docstring)."""

    def __init__(self, start=-1, len=-1):
        flash = _chip()
        if start == -1 and len == -1:
            start, len = _region("HANOTA_VB_NRF_FS")
        if not (0 <= start < flash.size and start % PAGE == 0):
            raise ValueError("start")
        if not (0 < len and start + len <= flash.size and len % PAGE == 0):
            raise ValueError("len")
        self.start = start
        self.length = len

    def __len__(self):
        return self.length

    def __repr__(self):
        return "Flash(start=0x%x, len=%d)" % (self.start, self.length)

    def _addr(self, off, n):
        if off < 0 or n < 0 or off + n > self.length:
            raise OSError(_EINVAL)
        return self.start + off

    def readblocks(self, n, buf, off=0):
        _flash.readinto(self._addr(n * PAGE + off, len(buf)), buf)

    def writeblocks(self, n, buf, off=None):
        addr = n * PAGE
        size = len(buf)
        if off is None:
            first = self._addr(addr, size)
            end = first + size
            page = first - first % PAGE
            while page < end:
                _flash.erase(page, PAGE)
                page += PAGE
        else:
            addr += off
        _flash.write(self._addr(addr, size), buf)

    def ioctl(self, op, arg):
        if op in (1, 2, 3):
            return 0
        if op == 4:
            return self.length // PAGE
        if op == 5:
            return PAGE
        if op == 6:
            _flash.erase(self._addr(arg * PAGE, PAGE), PAGE)
            return 0
        return None

    def readinto(self, buf, off=0):
        """Read len(buf) bytes of the region from offset off (read-buffer stand-in)."""
        _flash.readinto(self._addr(off, len(buf)), buf)

    def buffer(self, length=None):
        """A bytearray copy of the region's first `length` bytes (all by default), for VfsRom."""
        if length is None:
            length = self.length
        buf = bytearray(length)
        self.readinto(buf)
        return buf
