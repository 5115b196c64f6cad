"""A RAM block device with NOR rules, for unit tests of flash-using device code.

Blocks of 4 KiB; erase sets 0xFF; a write may only clear bits (else OSError(EIO));
ops are counted, and a cut before op N (optionally torn: half the write lands)
raises PowerCut and makes every later op a no-op, like the virtual board's flash.
The block protocol itself is mpykit.BlockDev's (tests/device/mpy, on pytest's pythonpath),
the one the MicroPython scripts' devices use.
"""
from __future__ import annotations

from mpykit import SECTOR, BlockDev


class PowerCut(BaseException):
    pass


class RamNor(BlockDev):
    def __init__(self, blocks: int, cut_before: int | None = None, torn: bool = False):
        super().__init__(blocks)
        self.data = bytearray(b"\xff" * (blocks * SECTOR))
        self.ops = 0
        self.cut_before = cut_before
        self.torn = torn
        self.dead = False

    def _op(self) -> bool:
        """Count an op; True when it must be cut."""
        if self.dead:
            raise PowerCut("flash is dead after a power cut")
        self.ops += 1
        if self.cut_before is not None and self.ops == self.cut_before:
            self.dead = True
            return True
        return False

    def _read(self, a, buf):
        buf[:] = self.data[a:a + len(buf)]

    def _write(self, a, buf):
        buf = bytes(buf)
        cut = self._op()
        old = self.data[a:a + len(buf)]
        if any((o & b) != b for o, b in zip(old, buf)):
            raise OSError(5, "write over unerased bits at 0x%x" % a)
        if cut:
            if self.torn:
                k = (len(buf) // 2) & ~3
                self.data[a:a + k] = buf[:k]
            raise PowerCut("power cut before op %d" % self.ops)
        self.data[a:a + len(buf)] = buf

    def _erase(self, n):
        cut = self._op()
        a = n * SECTOR
        if cut:
            if self.torn:
                self.data[a:a + SECTOR // 2] = b"\xff" * (SECTOR // 2)
            raise PowerCut("power cut before op %d" % self.ops)
        self.data[a:a + SECTOR] = b"\xff" * SECTOR
