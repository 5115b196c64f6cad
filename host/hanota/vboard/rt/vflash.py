"""Emulated NOR flash: one file per board, with a small binary control sidecar.

Runs inside the virtual board's MicroPython process (the chip) and under CPython
(host tools and tests). The rules are those of a NOR flash chip:

* `erase(addr, length)` sets whole 4 KiB sectors to 0xFF; each sector is one op.
* `write(addr, data)` is one op; it can only clear bits (1 -> 0). A write that
  would need a 0 -> 1 change raises ``OSError(5)`` (EIO) naming the address, as a
  driver that verifies its writes would report; the op counts, nothing is written.
* Every erase and write is counted; the counters and the erase count of every
  sector (wear) live in the sidecar, so they survive process restarts and the
  host can read them while the board runs.

Power cuts. `schedule_cut(ctl, before_op=N)` arms a cut *before* op number N (the
absolute value of the ops counter that op would take). Ops 1..N-1 take effect;
op N and every later op do not, except that with ``torn=True`` op N lands in part:

* a torn write lands its first ``(len(data) // 2) & ~3`` bytes (half, rounded down
  to a 4-byte multiple: a 32-byte otadata entry keeps 16 bytes, a 4-byte write
  keeps nothing) -- provided the write was NOR-legal, else nothing lands;
* a torn erase sets the first half (2048 bytes) of the cut sector to 0xFF.

When the cut fires the sidecar is marked dead (`counters()['dead']`), the cut is
disarmed (one-shot) and `cuts`/`last_cut` record it. Inside MicroPython the process
then dies at once, as the chip would lose power: it writes ``power`` into the file
named by env ``HANOTA_VB_RESET_FILE`` (when set) and SIGKILLs itself. Under CPython
`PowerCut` is raised instead, and the object stays dead (every later call raises
`PowerCut` again). Opening the flash again (`NorFlash(...)`, power on) clears the
dead mark: the board boots again from the file.

Sidecar layout (little-endian u32 words): 0 magic ``HVF1``, 4 ops, 8 erases,
12 writes, 16 cut_at (0 = none), 20 flags (1 torn, 2 dead), 24 cuts, 28 last_cut,
32 retained (a word that survives resets, like RTC memory; the ESP32 bootloader
keeps the running partition there), 36 sector count, 64.. one u32 wear count per
sector.
"""
import os
import struct
import sys

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

SECTOR = const(4096)
_HALF = const(2048)
_MAGIC = b"HVF1"
_CTL_HEADER = const(64)
_O_OPS = const(4)
_O_CUT = const(16)
_O_FLAGS = const(20)
_O_CUTS = const(24)
_O_RETAINED = const(32)
_O_NSECT = const(36)
_F_TORN = const(1)
_F_DEAD = const(2)
_EIO = const(5)
_EINVAL = const(22)
_NONE = const(0xFFFFFFFF)

MICROPYTHON = sys.implementation.name == "micropython"

try:
    from _vfast import nor_violation as _nor_violation
except Exception:  # CPython, or a MicroPython without the viper emitter
    def _nor_violation(old, new, n):
        o = int.from_bytes(bytes(old[:n]), "big")
        w = int.from_bytes(bytes(new[:n]), "big")
        if o & w == w:
            return -1
        for i in range(n):
            if old[i] & new[i] != new[i]:
                return i
        return -1


class PowerCut(BaseException):
    """The flash lost power before an operation (a scheduled cut); CPython only."""


def _die(why):
    """The chip loses power: inside MicroPython kill this process, else raise PowerCut."""
    if MICROPYTHON and NorFlash.kill_on_cut:
        os.system('[ -n "$HANOTA_VB_RESET_FILE" ] && printf power > "$HANOTA_VB_RESET_FILE";'
                  ' kill -9 $PPID')
    raise PowerCut(why)


def _open(path, mode):
    # unbuffered: every write reaches the file at once (a SIGKILL loses nothing)
    return open(path, mode, buffering=0)


class NorFlash:
    """A NOR flash chip over the file `path` (size = file size) and its sidecar.

    Duck-typed flash API: `size`, `read`, `readinto`, `erase`, `write`.
    Opening is powering the chip: it clears the dead mark a cut left in the sidecar;
    `power_on=False` leaves it (inspection, or a second handle in the same board).
    """

    kill_on_cut = MICROPYTHON  # a test may set False to see PowerCut inside MicroPython

    def __init__(self, path, ctl_path=None, power_on=True):
        self.path = path
        self.ctl_path = ctl_path or path + ".ctl"
        self._f = _open(path, "r+b")
        self.size = self._f.seek(0, 2)
        self.sectors = self.size // SECTOR
        try:
            os.stat(self.ctl_path)
        except OSError:
            init_ctl(self.ctl_path, self.sectors)
        self._c = _open(self.ctl_path, "r+b")
        self._hdr = bytearray(20)  # ops, erases, writes, cut_at, flags
        self._w = bytearray(16)
        self._scratch = bytearray(SECTOR)
        self._ff = b"\xff" * SECTOR
        self._dead = False
        self._c.readinto(self._w)
        if bytes(self._w[:4]) != _MAGIC:
            raise OSError(_EINVAL, "flash sidecar %s: bad magic" % self.ctl_path)
        self._c.seek(_O_NSECT)
        self._c.readinto(self._w)
        if struct.unpack_from("<I", self._w, 0)[0] != self.sectors:
            raise OSError(_EINVAL, "flash sidecar %s: sector count differs from %s"
                          % (self.ctl_path, path))
        if power_on:
            self._set_word(_O_FLAGS, self._get_word(_O_FLAGS) & ~_F_DEAD)

    def close(self):
        self._f.close()
        self._c.close()

    # -- sidecar words -------------------------------------------------------
    def _get_word(self, off):
        self._c.seek(off)
        self._c.readinto(self._w)
        return struct.unpack_from("<I", self._w, 0)[0]

    def _set_word(self, off, value):
        struct.pack_into("<I", self._w, 0, value)
        self._c.seek(off)
        self._c.write(memoryview(self._w)[:4])

    def ops(self):
        """The ops counter (operations so far; the next one is ops() + 1)."""
        return self._get_word(_O_OPS)

    def schedule_cut(self, before_op, torn=False):
        """Arm a power cut before op number before_op (as the module function, but through
        this open chip: usable inside the board after the host filesystem is unmounted)."""
        if before_op < 1:
            raise ValueError("before_op counts from 1")
        flags = self._get_word(_O_FLAGS) & _F_DEAD
        self._set_word(_O_CUT, before_op)
        self._set_word(_O_FLAGS, flags | (_F_TORN if torn else 0))

    def retained(self):
        """The retained word, or None when unset. Like RTC memory it is only meaningful
        while the board keeps power: the ESP32 bootloader rewrites it at every full boot."""
        v = self._get_word(_O_RETAINED)
        return None if v == _NONE else v

    def set_retained(self, value):
        self._set_word(_O_RETAINED, _NONE if value is None else value)

    # -- accounting ----------------------------------------------------------
    def _begin(self):
        """Read the counters for the next op; return its number, or 0 if it is cut."""
        if self._dead:
            _die("flash is dead (power cut)")
        h = self._hdr
        self._c.seek(_O_OPS)
        self._c.readinto(h)
        n = struct.unpack_from("<I", h, 0)[0] + 1
        cut_at = struct.unpack_from("<I", h, 12)[0]
        if struct.unpack_from("<I", h, 16)[0] & _F_DEAD:
            self._dead = True
            _die("flash is dead (power cut)")
        if cut_at and n >= cut_at:
            return 0
        return n

    def _torn(self):
        return struct.unpack_from("<I", self._hdr, 16)[0] & _F_TORN

    def _cut(self):
        """Record the cut of the op being started and lose power."""
        n = struct.unpack_from("<I", self._hdr, 0)[0] + 1
        cuts = self._get_word(_O_CUTS)
        struct.pack_into("<IIII", self._w, 0, 0, _F_DEAD, cuts + 1, n)
        self._c.seek(_O_CUT)
        self._c.write(self._w)
        self._dead = True
        _die("power cut before flash op %d" % n)

    def _count(self, erase, sector):
        h = self._hdr
        ops, erases, writes = struct.unpack_from("<III", h, 0)
        if erase:
            erases += 1
        else:
            writes += 1
        struct.pack_into("<III", h, 0, ops + 1, erases, writes)
        self._c.seek(_O_OPS)
        self._c.write(memoryview(h)[:12])
        if erase:
            off = _CTL_HEADER + 4 * sector
            self._set_word(off, self._get_word(off) + 1)

    def _bounds(self, addr, n):
        if addr < 0 or n < 0 or addr + n > self.size:
            raise OSError(_EINVAL, "flash access 0x%x+0x%x outside 0x%x bytes" % (addr, n, self.size))

    # -- the flash API -------------------------------------------------------
    def read(self, addr, n):
        """n bytes at addr."""
        if self._dead:
            _die("flash is dead (power cut)")
        self._bounds(addr, n)
        self._f.seek(addr)
        return self._f.read(n)

    def readinto(self, addr, buf):
        """Fill buf with the bytes at addr."""
        if self._dead:
            _die("flash is dead (power cut)")
        self._bounds(addr, len(buf))
        self._f.seek(addr)
        self._f.readinto(buf)

    def erase(self, addr, length=SECTOR):
        """Erase the sectors of [addr, addr+length) to 0xFF; each sector is one op."""
        if addr % SECTOR or length % SECTOR or length <= 0:
            raise OSError(_EINVAL, "flash erase 0x%x+0x%x not sector aligned" % (addr, length))
        self._bounds(addr, length)
        end = addr + length
        while addr < end:
            if not self._begin():
                if self._torn():
                    self._f.seek(addr)
                    self._f.write(memoryview(self._ff)[:_HALF])
                self._cut()
            self._f.seek(addr)
            self._f.write(self._ff)
            self._count(True, addr // SECTOR)
            addr += SECTOR

    def write(self, addr, data):
        """Program data at addr (one op): bits may only go from 1 to 0."""
        n = len(data)
        if n == 0:
            return
        self._bounds(addr, n)
        ok = self._begin()
        bad = self._violation(addr, data, n)
        if not ok:
            if self._torn() and bad < 0:
                keep = (n // 2) & ~3
                if keep:
                    self._f.seek(addr)
                    self._f.write(memoryview(data)[:keep])
            self._cut()
        self._count(False, 0)
        if bad >= 0:
            raise OSError(_EIO, "NOR flash write at 0x%x: byte 0x%x not erased (bits 0 -> 1)"
                          % (addr, addr + bad))
        self._f.seek(addr)
        self._f.write(data)

    def _violation(self, addr, data, n):
        mv = memoryview(data)
        off = 0
        while off < n:
            k = n - off
            if k > SECTOR:
                k = SECTOR
            self._f.seek(addr + off)
            self._f.readinto(memoryview(self._scratch)[:k])
            i = _nor_violation(self._scratch, mv[off:off + k], k)
            if i >= 0:
                return off + i
            off += k
        return -1


# -- host helpers (also usable inside MicroPython) ----------------------------

def init_ctl(ctl_path, nsectors):
    """Write a fresh sidecar: counters zero, no cut, no wear."""
    hdr = bytearray(_CTL_HEADER)
    hdr[0:4] = _MAGIC
    struct.pack_into("<I", hdr, _O_RETAINED, _NONE)
    struct.pack_into("<I", hdr, _O_NSECT, nsectors)
    with _open(ctl_path, "wb") as f:
        f.write(hdr)
        f.write(bytes(4 * nsectors))


def create(path, size, ctl_path=None):
    """Create a blank chip file of `size` bytes (all 0xFF) and its sidecar."""
    if size <= 0 or size % SECTOR:
        raise ValueError("flash size must be a positive multiple of %d" % SECTOR)
    chunk = b"\xff" * 65536
    with _open(path, "wb") as f:
        left = size
        while left:
            k = min(left, len(chunk))
            f.write(chunk[:k] if k < len(chunk) else chunk)
            left -= k
    init_ctl(ctl_path or path + ".ctl", size // SECTOR)


def _patch(ctl_path, off, fmt, *values):
    with _open(ctl_path, "r+b") as f:
        f.seek(off)
        f.write(struct.pack(fmt, *values))


def _load(ctl_path):
    with _open(ctl_path, "rb") as f:
        data = f.read()
    if data[:4] != _MAGIC:
        raise ValueError("%s is not a flash sidecar" % ctl_path)
    return data


def schedule_cut(ctl_path, before_op, torn=False):
    """Arm a power cut before op number `before_op` (absolute, 1-based), torn or clean."""
    if before_op < 1:
        raise ValueError("before_op counts from 1")
    flags = struct.unpack_from("<I", _load(ctl_path), _O_FLAGS)[0] & _F_DEAD
    _patch(ctl_path, _O_CUT, "<II", before_op, flags | (_F_TORN if torn else 0))


def clear_cut(ctl_path):
    """Disarm any scheduled cut and clear the dead mark (power restored)."""
    _patch(ctl_path, _O_CUT, "<II", 0, 0)


def reset_counters(ctl_path):
    """Zero ops, erases, writes, cuts and wear (a scheduled cut stays armed)."""
    n = struct.unpack_from("<I", _load(ctl_path), _O_NSECT)[0]
    _patch(ctl_path, _O_OPS, "<III", 0, 0, 0)
    _patch(ctl_path, _O_CUTS, "<II", 0, 0)
    _patch(ctl_path, _CTL_HEADER, "<%dI" % n, *([0] * n))


def counters(ctl_path):
    """The sidecar as a dict: ops, erases, writes, cut_at (None = not armed), torn,
    dead, cuts, last_cut (op number of the last cut, None if none), retained, wear."""
    data = _load(ctl_path)
    ops, erases, writes, cut_at, flags, cuts, last_cut, retained, n = \
        struct.unpack_from("<9I", data, 4)
    return {
        "ops": ops,
        "erases": erases,
        "writes": writes,
        "cut_at": cut_at or None,
        "torn": bool(flags & _F_TORN),
        "dead": bool(flags & _F_DEAD),
        "cuts": cuts,
        "last_cut": last_cut or None,
        "retained": None if retained == _NONE else retained,
        "wear": list(struct.unpack_from("<%dI" % n, data, _CTL_HEADER)),
    }
