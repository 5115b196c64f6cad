# hanota device package, CPython only: what hanfw.delta uses where MicroPython's deflate
# module is absent (the host's decoding, unit tests, fuzzers). Never imported on a board,
# so a board's heap holds none of it. MIT licence.
import zlib


class Mem:
    # CPython stand-in for a preallocated io.BytesIO (the segment buffer): write, seek, tell
    def __init__(self, size):
        self.buf = bytearray(size)
        self.pos = 0
        self.end = 0

    def write(self, mv):
        n = len(mv)
        self.buf[self.pos:self.pos + n] = mv
        self.pos += n
        self.end = max(self.end, self.pos)
        return n

    def seek(self, pos):
        self.pos = pos

    def tell(self):
        return self.pos

    def read(self, n):
        n = max(0, min(n, self.end - self.pos))
        out = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return out


class HostInflate:
    # CPython stand-in for deflate.DeflateIO(src, ZLIB, wbits): pulls input as needed and,
    # like DeflateIO, takes nothing after the end of the zlib stream
    def __init__(self, src, wbits):
        import zlib
        self.src = src
        self.z = zlib.decompressobj(wbits)
        self.pend = b""

    def readinto(self, b):
        want = len(b)
        z = self.z
        while len(self.pend) < want and not z.eof:
            data = z.unconsumed_tail or self.src.read(64)
            if not data:
                raise EOFError("zlib stream cut short")
            try:  # never more than asked for: the output is bounded, as DeflateIO's
                self.pend += z.decompress(data, want - len(self.pend))
            except Exception as e:  # zlib.error
                raise ValueError(str(e))
            if z.eof and z.unused_data:
                self.src.seek(self.src.tell() - len(z.unused_data))
        n = min(want, len(self.pend))
        b[:n] = self.pend[:n]
        self.pend = self.pend[n:]
        return n
