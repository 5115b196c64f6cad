# hanota device: the two banks an update is staged in and run from.
# One interface, two kinds:
#   FirmwareBanks: ESP32 app partitions (ota_0 / ota_1) through esp32.Partition,
#     with the ESP-IDF bootloader's rollback; the rules esp_ota_begin would apply
#     are enforced here (no new update while the running image is unconfirmed;
#     the inactive otadata copy is invalidated before the target is erased).
#   AppBanks: two ROMFS regions in raw flash with hanfw.bootctl's record.
# Writes go sector by sector from one preallocated buffer; each sector of the
# target is erased at most once per update (just before it is written).

import struct
import hashlib

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

SECTOR = const(4096)
_OTA_ENTRY = "<I20sII"
_OTA_PENDING_VERIFY = const(1)
_OTA_VALID = const(2)
_OTA_ABORTED = const(4)


class BankError(Exception):
    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason


# Streams bytes into a block device (4 KiB blocks) from block `first` on.
# Resuming at a sector boundary `start` (bytes) leaves what is before it alone.
class BankWriter:
    def __init__(self, dev, nblocks, start=0, first=0, buf=None):
        if start % SECTOR:
            raise BankError("resume-offset", "resume offset %d is not sector aligned" % start)
        self.dev = dev
        self.first = first
        self.nblocks = nblocks
        self.buf = buf if buf is not None else bytearray(SECTOR)
        self.fill = 0
        self.block = start // SECTOR
        self.written = start

    def write(self, data):
        mv = memoryview(data)
        i = 0
        n = len(mv)
        while i < n:
            take = min(SECTOR - self.fill, n - i)
            self.buf[self.fill:self.fill + take] = mv[i:i + take]
            self.fill += take
            i += take
            if self.fill == SECTOR:
                self._flush_sector()

    def _flush_sector(self):
        if self.block >= self.nblocks:
            raise BankError("bank-full", "image does not fit the bank (%d sectors)" % self.nblocks)
        if self.fill < SECTOR:
            for j in range(self.fill, SECTOR):
                self.buf[j] = 0xFF
        b = self.first + self.block
        self.dev.ioctl(6, b)
        self.dev.writeblocks(b, self.buf, 0)
        self.written += self.fill
        self.block += 1
        self.fill = 0

    # Write out a partial last sector (padded with 0xFF).
    def flush(self):
        if self.fill:
            self._flush_sector()

    # Bytes safely in flash (a resume point).
    @property
    def durable(self):
        return self.block * SECTOR


# SHA-256 of the first `length` bytes of a block device region, streamed.
def region_sha256(dev, length, first=0, buf=None):
    h = hashlib.sha256()
    buf = buf if buf is not None else bytearray(SECTOR)
    mv = memoryview(buf)
    done = 0
    b = first
    while done < length:
        dev.readblocks(b, buf, 0)
        take = min(SECTOR, length - done)
        h.update(mv[:take])
        done += take
        b += 1
    return h.digest()


# Feed the first `length` bytes of a region to fn(memoryview) (resume rehash).
def region_feed(dev, length, fn, first=0, buf=None):
    buf = buf if buf is not None else bytearray(SECTOR)
    mv = memoryview(buf)
    done = 0
    b = first
    while done < length:
        dev.readblocks(b, buf, 0)
        take = min(SECTOR, length - done)
        fn(mv[:take])
        done += take
        b += 1


# What both kinds share: the inactive bank as target_dev() -> (block device, sectors),
# written and read through the one preallocated sector buffer.
class _Banks:
    def writer(self, start=0):
        dev, n = self.target_dev()
        return BankWriter(dev, n, start, buf=self.sector)

    def feed_target(self, length, fn):
        dev, _ = self.target_dev()
        region_feed(dev, length, fn, buf=self.sector)

    def target_sha256(self, length):
        dev, _ = self.target_dev()
        return region_sha256(dev, length, buf=self.sector)


class FirmwareBanks(_Banks):
    kind = "firmware"

    def __init__(self, esp32, state):
        self.esp32 = esp32
        self.state = state
        self.sector = bytearray(SECTOR)  # the one 4 KiB buffer of every bank write and read
        P = esp32.Partition
        self.running = P(P.RUNNING)
        self.label = self.running.info()[4]

    def _target(self):
        return self.running.get_next_update()

    def bank_size(self):
        return self._target().info()[3]

    def target_dev(self):
        t = self._target()
        return t, t.info()[3] // SECTOR

    # otadata copies: [(seq, state, ok)] read raw as ESP-IDF stores them.
    def _otadata(self):
        P = self.esp32.Partition
        part = P.find(P.TYPE_DATA, 0)[0]
        buf = bytearray(32)
        out = []
        for i in (0, 1):
            part.readblocks(i, buf, 0)
            seq, _label, st, crc = struct.unpack(_OTA_ENTRY, buf)
            out.append((seq, st))
        return part, out

    def _slot_index(self):
        # ota_N labels: N is the slot number
        return int(self.label[4:]) if self.label.startswith("ota_") else -1

    def running_ota_state(self):
        part, copies = self._otadata()
        best = None
        for seq, st in copies:
            if seq != 0xFFFFFFFF and st not in (3, _OTA_ABORTED) and (best is None or seq > best[0]):
                best = (seq, st)
        if best is None:
            return None
        n = len(self.esp32.Partition.find(self.esp32.Partition.TYPE_APP))
        slot = (best[0] - 1) % max(n, 1)
        return best[1] if slot == self._slot_index() else None

    def is_trial(self):
        return self.running_ota_state() == _OTA_PENDING_VERIFY

    def running_version(self):
        return self.state.get("versions", {}).get(self.label, 0)

    def floor(self):
        return self.state.get("floor", 0)

    # esp_ota_begin's rules, then the target bank is ours to write.
    def begin(self):
        if self.is_trial():
            raise BankError("unconfirmed", "running image (%s) is on trial: confirm it before a new update" % self.label)
        part, copies = self._otadata()
        valid = [i for i in (0, 1) if copies[i][0] != 0xFFFFFFFF]
        if len(valid) == 2:
            older = 0 if copies[0][0] < copies[1][0] else 1
            part.ioctl(6, older)  # invalidate the inactive otadata copy
        held = self.state.get("held")
        if held:
            self.state.update(held=None)
        t, nblocks = self.target_dev()
        return t.info()[4]

    def stage(self, version, length, secver, digest):
        self.state.update(held={"bank": self._target().info()[4], "version": version, "length": length,
                                "secver": secver, "hash": _hexs(digest)})

    # Make the held image boot next; the caller resets the board.
    # Power-safe order: the state file first says which version the target holds and
    # that it is being activated, then set_boot switches, then the image stops being
    # "held". A cut before the switch leaves the image held (App sees an activation that
    # did not happen); a cut after it boots the new image knowing it is on trial.
    def activate(self):
        held = self.state.get("held")
        if not held:
            raise BankError("no-image", "no image held to activate")
        t = self._target()
        versions = dict(self.state.get("versions", {}))
        versions[held["bank"]] = held["version"]
        self.state.update(versions=versions,
                          activated={"bank": held["bank"], "version": held["version"],
                                     "previous": self.running_version(), "secver": held["secver"]})
        try:
            t.set_boot()
        except OSError as e:
            self.state.update(activated=None)
            raise BankError("activation-failed", "set_boot refused the image: %s" % e)
        self.state.update(held=None)

    def confirm(self):
        P = self.esp32.Partition
        if P(P.BOOT).info()[4] != self.label:
            raise BankError("wrong-slot", "running %s is not the boot slot; not confirming" % self.label)
        P.mark_app_valid_cancel_rollback()
        act = self.state.get("activated") or {}
        if act.get("secver", 0) > self.floor():
            self.state.update(floor=act["secver"])

    def reject_running(self, why):
        # ESP-IDF: the bootloader rolls back an unconfirmed image at the next reset
        pass

    def running_bank(self):
        return self.label


class AppBanks(_Banks):
    kind = "app"

    def __init__(self, bank_devs, bootctl, state):
        self.devs = bank_devs  # [(block device, nblocks), (block device, nblocks)]
        self.sector = bytearray(SECTOR)  # the one 4 KiB buffer of every bank write and read
        self.bc = bootctl
        self.state = state

    def record(self):
        return self.bc.current()

    def bank_size(self):
        r = self.record()
        return self.devs[1 - r.active][1] * SECTOR

    def is_trial(self):
        from hanfw import bootctl
        r = self.record()
        return r.state[r.active] == bootctl.TRIAL

    def running_version(self):
        r = self.record()
        return r.version[r.active]

    def floor(self):
        return self.record().floor

    def running_bank(self):
        return self.record().active

    def begin(self):
        from hanfw.bootctl import BootCtlError
        try:
            return self.bc.begin_update()
        except BootCtlError as e:
            raise BankError(e.reason, str(e))

    def target_dev(self):
        r = self.record()
        return self.devs[1 - r.active]

    def stage(self, version, length, secver, digest):
        r = self.record()
        self.bc.stage(1 - r.active, version, length, secver, digest)
        self.state.update(held={"bank": 1 - r.active, "version": version, "length": length,
                                "secver": secver, "hash": _hexs(digest)})

    # Same power-safe order as FirmwareBanks.activate: state, switch, then not held.
    def activate(self):
        from hanfw.bootctl import BootCtlError, STAGED
        r = self.record()
        t = 1 - r.active
        if r.state[t] != STAGED:
            raise BankError("no-image", "no staged image to activate")
        self.state.update(activated={"bank": t, "version": r.version[t],
                                     "previous": r.version[r.active], "secver": r.secver[t]})
        try:
            self.bc.activate()
        except BootCtlError as e:
            self.state.update(activated=None)
            raise BankError(e.reason, str(e))
        self.state.update(held=None)

    def confirm(self):
        self.bc.confirm()

    def reject_running(self, why):
        self.bc.reject_running(why)


def _hexs(b):
    import binascii
    return binascii.hexlify(b).decode()
