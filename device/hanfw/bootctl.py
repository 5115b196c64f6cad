# hanota device: boot control for app banks (two ROMFS regions in raw flash).
# A power-safe record of bank states, trial boot, confirm, revert, anti-rollback floor.
#
# The record is kept in two copies, one per 4 KiB sector of the boot-control
# region. Each copy carries a sequence number and a CRC; the valid copy with
# the highest sequence wins, and a new record always goes to the OTHER copy
# (erase, then one write), so a cut or a torn write at any point leaves the
# previous record in charge. (Like ESP-IDF's otadata; see dual_bank.md 2.2.)
#
# Bank states: EMPTY, STAGED (verified, not activated), TRIAL (booted once,
# not confirmed), CONFIRMED, REJECTED. `active` names the bank to boot.
# Activating a STAGED bank makes it active; its first boot turns it TRIAL;
# a boot that finds the active bank in TRIAL rejects it and runs the other.
# The anti-rollback floor rises only at confirm.

import struct
import binascii

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

EMPTY = const(0)
STAGED = const(1)
TRIAL = const(2)
CONFIRMED = const(3)
REJECTED = const(4)
STATE_NAMES = ("EMPTY", "STAGED", "TRIAL", "CONFIRMED", "REJECTED")

# why a bank was rejected (kept for the Activation Alert)
WHY_NONE = const(0)
WHY_UNCONFIRMED = const(1)  # rebooted on trial without a confirm
WHY_BAD_HASH = const(2)  # bank contents do not match the recorded hash
WHY_HEALTH = const(3)  # the health check failed (or the app raised at import)
WHY_REPLACED = const(4)  # invalidated before a new download
WHY_NAMES = ("none", "unconfirmed reboot", "bank hash mismatch", "health check failed", "replaced")

MAGIC = const(0x31434248)  # "HBC1"
_FMT = "<IIBBBBIIIIIII32s32s"
_BODY = const(104)  # struct.calcsize(_FMT), checked by the tests
RECORD_LEN = const(108)  # body + crc32
SECTOR = const(4096)


class BootCtlError(Exception):
    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason


# One decoded record. Per-bank lists: state, version, length, secver, hash.
class Record:
    def __init__(self):
        self.seq = 0
        self.active = 0
        self.state = [EMPTY, EMPTY]
        self.why = WHY_NONE
        self.version = [0, 0]
        self.length = [0, 0]
        self.secver = [0, 0]
        self.floor = 0
        self.hash = [bytes(32), bytes(32)]

    def copy(self):
        r = Record()
        r.seq = self.seq
        r.active = self.active
        r.state = list(self.state)
        r.why = self.why
        r.version = list(self.version)
        r.length = list(self.length)
        r.secver = list(self.secver)
        r.floor = self.floor
        r.hash = list(self.hash)
        return r

    def pack(self):
        body = struct.pack(_FMT, MAGIC, self.seq, self.active, self.state[0], self.state[1], self.why,
                           self.version[0], self.version[1], self.length[0], self.length[1],
                           self.secver[0], self.secver[1], self.floor, self.hash[0], self.hash[1])
        return body + struct.pack("<I", binascii.crc32(body) & 0xFFFFFFFF)

    # A record from raw bytes, or None when the copy is blank, torn or corrupt.
    @staticmethod
    def parse(buf):
        if len(buf) < RECORD_LEN:
            return None
        body = bytes(buf[:_BODY])
        (crc,) = struct.unpack_from("<I", buf, _BODY)
        if crc != binascii.crc32(body) & 0xFFFFFFFF:
            return None
        f = struct.unpack(_FMT, body)
        if f[0] != MAGIC or f[2] > 1 or f[3] > REJECTED or f[4] > REJECTED:
            return None
        r = Record()
        r.seq = f[1]
        r.active = f[2]
        r.state = [f[3], f[4]]
        r.why = f[5]
        r.version = [f[6], f[7]]
        r.length = [f[8], f[9]]
        r.secver = [f[10], f[11]]
        r.floor = f[12]
        r.hash = [f[13], f[14]]
        return r

    def describe(self):
        return "seq %d active %d [%s v%08x, %s v%08x] floor %d" % (
            self.seq, self.active, STATE_NAMES[self.state[0]], self.version[0],
            STATE_NAMES[self.state[1]], self.version[1], self.floor)


# ---------------------------------------------------------------- decisions (pure)

# Decide what to boot. bank_ok(i, rec) checks bank i's contents against the
# record (length + SHA-256). Returns (bank or -1, new record or None, event):
# new record is what must be committed BEFORE running the bank.
def decide(rec, bank_ok):
    new = rec.copy()
    a = rec.active
    st = rec.state[a]
    if st == STAGED:
        if bank_ok(a, rec):
            new.state[a] = TRIAL  # first boot of an activated image
            return a, new, "trial"
        new.state[a] = REJECTED
        new.why = WHY_BAD_HASH
    elif st == TRIAL:
        new.state[a] = REJECTED  # booted on trial before and never confirmed
        new.why = WHY_UNCONFIRMED
    elif st == CONFIRMED:
        if bank_ok(a, rec):
            return a, None, "boot"
        new.state[a] = REJECTED
        new.why = WHY_BAD_HASH
    # the active bank cannot run: the other one may, if confirmed and intact
    b = 1 - a
    if new.state[b] == CONFIRMED and bank_ok(b, rec):
        new.active = b
        return b, new, "rollback"
    return -1, (new if _changed(rec, new) else None), "no-bootable-bank"


def _changed(a, b):
    return a.pack() != b.pack()


# ---------------------------------------------------------------- the two-copy store

# Store over a block device (readblocks(n, buf, off), writeblocks(n, buf, off),
# ioctl(6, n) erase) whose blocks first_block and first_block+1 hold the copies.
class BootControl:
    def __init__(self, dev, first_block=0):
        self.dev = dev
        self.first = first_block
        self._buf = bytearray(RECORD_LEN)
        self.copy_index = -1  # which copy the current record came from

    def _read(self, i):
        self.dev.readblocks(self.first + i, self._buf, 0)
        return Record.parse(self._buf)

    # The newest valid record, or None when both copies are blank or corrupt.
    def load(self):
        best = None
        self.copy_index = -1
        for i in (0, 1):
            r = self._read(i)
            if r is not None and (best is None or r.seq > best.seq):
                best = r
                self.copy_index = i
        return best

    # Write rec (with the next sequence number) into the copy not in charge.
    def commit(self, rec):
        cur = self.load()
        target = 1 - self.copy_index if self.copy_index >= 0 else 0
        rec.seq = (cur.seq + 1) if cur is not None else 1
        data = rec.pack()
        self.dev.ioctl(6, self.first + target)
        self.dev.writeblocks(self.first + target, data, 0)
        self.copy_index = target
        return rec

    # ---- transitions used by the OTA client (each is one commit)

    def current(self):
        r = self.load()
        if r is None:
            raise BootCtlError("no-record", "boot-control region holds no valid record")
        return r

    # Before writing a new image into the inactive bank: refuse while the
    # running bank is unconfirmed, then invalidate the target's record.
    def begin_update(self):
        r = self.current()
        a = r.active
        if r.state[a] != CONFIRMED:
            raise BootCtlError("unconfirmed", "running bank %d is %s: confirm it before a new update"
                               % (a, STATE_NAMES[r.state[a]]))
        t = 1 - a
        if r.state[t] != EMPTY:
            r.state[t] = EMPTY
            r.version[t] = 0
            r.length[t] = 0
            r.secver[t] = 0
            r.hash[t] = bytes(32)
            self.commit(r)
        return t

    # The download into bank t is complete and verified.
    def stage(self, t, version, length, secver, digest):
        r = self.current()
        if t == r.active:
            raise BootCtlError("active-bank", "bank %d is running; cannot stage into it" % t)
        r.state[t] = STAGED
        r.version[t] = version
        r.length[t] = length
        r.secver[t] = secver
        r.hash[t] = bytes(digest)
        self.commit(r)

    # Make the staged bank boot next (on trial).
    def activate(self):
        r = self.current()
        t = 1 - r.active
        if r.state[t] != STAGED:
            raise BootCtlError("no-image", "no staged image to activate (bank %d is %s)"
                               % (t, STATE_NAMES[r.state[t]]))
        r.active = t
        r.why = WHY_NONE
        self.commit(r)
        return t

    # The running trial bank passed its health check.
    def confirm(self):
        r = self.current()
        a = r.active
        if r.state[a] == CONFIRMED:
            return False
        if r.state[a] != TRIAL:
            raise BootCtlError("not-trial", "bank %d is %s, not on trial" % (a, STATE_NAMES[r.state[a]]))
        r.state[a] = CONFIRMED
        if r.secver[a] > r.floor:
            r.floor = r.secver[a]
        self.commit(r)
        return True

    # The running trial bank failed its health check: reject it now.
    def reject_running(self, why=WHY_HEALTH):
        r = self.current()
        a = r.active
        if r.state[a] != TRIAL:
            raise BootCtlError("not-trial", "bank %d is %s, not on trial" % (a, STATE_NAMES[r.state[a]]))
        r.state[a] = REJECTED
        r.why = why
        r.active = 1 - a
        self.commit(r)

    # First install (deploy): bank 0 holds a confirmed image, bank 1 is empty.
    def initialise(self, version, length, secver, digest):
        r = Record()
        r.state = [CONFIRMED, EMPTY]
        r.version[0] = version
        r.length[0] = length
        r.secver[0] = secver
        r.floor = secver
        r.hash[0] = bytes(digest)
        for i in (0, 1):
            self.dev.ioctl(6, self.first + i)
        self.copy_index = -1
        return self.commit(r)
