# Test instrumentation (tests/fault): the real vflash module, with every flash
# operation that takes effect appended to the file named by env
# HANOTA_FAULT_TRACE as "op kind addr length" (kind e = erase, w = write).
# Found before the real module because the board is started through the
# wrappers beside this file (sys.path[0] is the running script's folder).
import os

execfile(os.getenv("HANOTA_FAULT_RT") + "/vflash.py")  # noqa: F821 (MicroPython builtin)

_Real = NorFlash  # noqa: F821 (defined by the real module)


class NorFlash(_Real):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._trace = open(os.getenv("HANOTA_FAULT_TRACE"), "ab")
        self._waddr = 0
        self._wlen = 0

    def write(self, addr, data):
        self._waddr = addr
        self._wlen = len(data)
        super().write(addr, data)

    def _count(self, erase, sector):
        super()._count(erase, sector)
        op = struct.unpack_from("<I", self._hdr, 0)[0]  # noqa: F821
        if erase:
            line = "%d e %d 4096\n" % (op, sector * 4096)
        else:
            line = "%d w %d %d\n" % (op, self._waddr, self._wlen)
        self._trace.write(line.encode())
