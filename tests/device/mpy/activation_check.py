# Run hanfw.activation under MicroPython over a case file written by
# tests/device/test_activation_mpy.py, with the device's state file (hanfw.state) on littlefs
# (vfs.VfsLfs2) over a RAM block device that counts flash operations (program, erase) and can
# lose power before any one of them.
#
#   micropython activation_check.py CASES.json
#
# CASES: line 1 {"config": {...device configuration...}, "held": {...}, "hash": hex, "state": path
# (optional: the state file on the host's filesystem instead of littlefs on the RAM flash)};
# then one
# JSON object per line:
#   {"op": "run", "msg": hex}      process it on the mounted state: "R <i> <reason|ok> <action>"
#   {"op": "sweep", "msg": hex}    from the state as it is now: a clean run counts the flash ops N
#                                  of processing msg; then for each i in 1..N a copy of the flash
#                                  loses power before op i, is remounted, and the same msg is
#                                  sent again: "R <i> <N> <replays accepted> <states lost>"
# then "H <label> <bytes>" heap figures and "done <count>".
import gc
import json
import sys
import vfs
from binascii import unhexlify

from hanfw import activation
from hanfw.state import State

_BS = 512


class PowerCut(Exception):
    pass


class RamFlash:
    # a block device for littlefs; ops are program and erase; after the cut every op fails
    def __init__(self, data, cut_before=0):
        self.d = data
        self.ops = 0
        self.cut = cut_before
        self.dead = False

    def _op(self):
        if self.dead:
            raise PowerCut()
        self.ops += 1
        if self.ops == self.cut:
            self.dead = True
            raise PowerCut()

    def readblocks(self, n, buf, off=0):
        a = n * _BS + off
        buf[:] = self.d[a:a + len(buf)]

    def writeblocks(self, n, buf, off=0):
        self._op()
        a = n * _BS + off
        self.d[a:a + len(buf)] = buf

    def ioctl(self, op, arg):
        if op == 4:
            return len(self.d) // _BS
        if op == 5:
            return _BS
        if op == 6:
            self._op()
            self.d[arg * _BS:(arg + 1) * _BS] = b"\xff" * _BS
        return 0


class Banks:
    def __init__(self, digest):
        self.digest = digest

    def target_sha256(self, length):
        return self.digest


class Cfg:
    pass


def mount(dev):
    try:
        vfs.umount("/fs")
    except OSError:
        pass
    vfs.mount(vfs.VfsLfs2(dev), "/fs")
    return State("/fs/ota.json")


def process(cfg, st, banks, msg):
    reason, resp, action = activation.process(cfg, st, banks, msg, 1)
    return reason, action


f = open(sys.argv[1])
head = json.loads(f.readline())
# the configuration's commissioning, as hanfw.config reads it (config itself is not imported:
# here the device code is loaded into the heap, on a board it runs from ROM)
g = head["config"]["gbcs"]
cfg = Cfg()
cfg.gbcs = {k: unhexlify(v) for k, v in g.items()}
cfg.eui64_gbcs = unhexlify(head["config"]["eui64"])
banks = Banks(unhexlify(head["hash"]))
flash = None
if head.get("state"):  # no RAM flash (a 64 KiB heap has no room for one): the host's file
    st = State(head["state"])
else:
    flash = RamFlash(bytearray(b"\xff" * (64 * _BS)))
    vfs.VfsLfs2.mkfs(flash)
    st = mount(flash)
st.update(held=head["held"])
head = g = None
gc.collect()
print("H free-before", gc.mem_free())
i = 0
for line in f:
    c = json.loads(line)
    msg = unhexlify(c["msg"])
    if c["op"] == "run":
        gc.collect()
        before = gc.mem_free()
        reason, action = process(cfg, st, banks, msg)
        gc.collect()
        print("H run-retained", before - gc.mem_free())
        print("R", i, reason or "ok", action)
    else:
        base = bytes(flash.d)
        clean = RamFlash(bytearray(base))
        process(cfg, mount(clean), banks, msg)
        n = clean.ops
        replays = lost = 0
        for cut in range(1, n + 1):
            dev = RamFlash(bytearray(base), cut)
            acted = None
            try:
                acted = process(cfg, mount(dev), banks, msg)[1]
            except PowerCut:
                pass
            # power back: the surviving flash, mounted afresh; the same command again
            st2 = mount(RamFlash(dev.d))
            if not st2.get("held"):
                lost += 1
            again = process(cfg, st2, banks, msg)
            if acted is not None and again[1] is not None:
                replays += 1
            gc.collect()
        st = mount(flash)
        print("R", i, n, replays, lost)
    i += 1
print("done", i)
