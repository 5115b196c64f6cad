# hanota device: decoding compressed and delta upgrade images as they arrive. MIT licence.
#
# An encoded image's body is a chain of segments (hanfw.otafile walks and hash-checks
# them); each segment's payload is one zlib stream, decoded here once the whole segment is
# in (MicroPython's deflate.DeflateIO pulls its input, so a segment is held: at most
# the descriptor's segment_max bytes, 8 KiB by default). For a delta image
# the inflated bytes are a sequential patch (the "sequential" format of detools, without
# compression) of the segment's target piece against the running image (the base):
#   header u8 (0x00: sequential, no compression) | target size (size) | 0 (size: no data
#   format) | record* where record = diff length (size) | diff bytes (added, mod 256, to
#   the base from the base position on; the base position moves on by as many) |
#   extra length (size) | extra bytes (copied) | adjustment (size: moves the base position)
#   size: first byte bit 7 "more", bit 6 sign, bits 0-5 value; then 7 bits a byte.
# Written from that description of the format, not from detools' code. The base is read
# from the running bank through a small window, the target goes to the bank writer; no
# buffer grows with the image. Loaded only when a file needs it (client heap).

import hashlib

from hanfw.otafile import OtaError, ENC_ZLIB, ENC_DELTA

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

try:
    import deflate
except ImportError:  # CPython (host tests, fuzzers): hanfw.hostinflate, over zlib
    deflate = None

SECTOR = const(4096)
WINDOW = const(512)  # base window and work buffer (bytes); divides SECTOR
MAX_WBITS = const(12)  # the longest zlib window a device accepts (4 KiB)
MAX_SEGMENT = const(8192)  # the longest segment payload a device accepts
_PATCH_SEQUENTIAL_NONE = const(0x00)


# ---------------------------------------------------------------- sizes
def pack_size(value):
    # a detools "size": sign and 6 bits first, then 7 bits a byte (low first)
    out = bytearray()
    b = 0
    if value < 0:
        b = 0x40
        value = -value
    b |= value & 0x3F
    value >>= 6
    while value:
        out.append(b | 0x80)
        b = value & 0x7F
        value >>= 7
    out.append(b)
    return bytes(out)


def unpack_size(data, pos=0):
    # (value, next position) from bytes; OtaError("bad-patch") when it runs off the end
    if pos >= len(data):
        raise OtaError("bad-patch", "patch ends inside a size")
    b = data[pos]
    pos += 1
    neg = b & 0x40
    v = b & 0x3F
    shift = 6
    while b & 0x80:
        if pos >= len(data) or shift > 35:
            raise OtaError("bad-patch", "patch size field too long or cut short")
        b = data[pos]
        pos += 1
        v |= (b & 0x7F) << shift
        shift += 7
    return (-v if neg else v), pos


# ---------------------------------------------------------------- inflate
def _inflater(src, wbits):
    if deflate is not None:
        return deflate.DeflateIO(src, deflate.ZLIB, wbits)
    from hanfw.hostinflate import HostInflate
    return HostInflate(src, wbits)


# ---------------------------------------------------------------- patch applier
# Reads a sequential patch from `inp` (readinto), the base through `base` (a Base) and
# writes exactly `tlen` target bytes to write(memoryview). buf: a WINDOW-byte work buffer.
class _Reader:
    def __init__(self, inp, buf):
        self.inp = inp
        self.one = bytearray(1)
        self.buf = buf

    def byte(self):
        try:
            n = self.inp.readinto(self.one)
        except (OSError, EOFError, ValueError):
            raise OtaError("bad-patch", "patch stream is corrupt or cut short")
        if not n:
            raise OtaError("bad-patch", "patch ends early")
        return self.one[0]

    def size(self):
        b = self.byte()
        neg = b & 0x40
        v = b & 0x3F
        shift = 6
        while b & 0x80:
            if shift > 35:
                raise OtaError("bad-patch", "patch size field too long")
            b = self.byte()
            v |= (b & 0x7F) << shift
            shift += 7
        return -v if neg else v

    def fill(self, n):
        # exactly n (<= len(buf)) bytes into buf
        mv = memoryview(self.buf)
        got = 0
        while got < n:
            try:
                k = self.inp.readinto(mv[got:n])
            except (OSError, EOFError, ValueError):
                raise OtaError("bad-patch", "patch stream is corrupt or cut short")
            if not k:
                raise OtaError("bad-patch", "patch data ends early")
            got += k
        return mv[:n]


# The running image, read at any position through one window of WINDOW bytes.
class Base:
    def __init__(self, dev, size, first=0):
        self.dev = dev
        self.size = size
        self.first = first
        self.win = bytearray(WINDOW)
        self.at = -1  # base offset of the window's first byte (-1: empty)

    def window(self, pos):
        # (memoryview of the window, index of pos in it, bytes available from pos)
        start = pos - pos % WINDOW
        if start != self.at:
            self.dev.readblocks(self.first + start // SECTOR, self.win, start % SECTOR)
            self.at = start
        i = pos - start
        return memoryview(self.win), i, min(WINDOW, self.size - start) - i


def apply_patch(r, base, tlen, write):
    # one segment's sequential patch from the _Reader r; returns when tlen bytes are out
    if r.byte() != _PATCH_SEQUENTIAL_NONE:
        raise OtaError("bad-patch", "not an uncompressed sequential patch")
    if r.size() != tlen:
        raise OtaError("bad-patch", "patch target size differs from the segment's")
    if r.size() != 0:
        raise OtaError("bad-patch", "patch carries a data format, which is not supported")
    bsize = base.size
    to = 0
    fp = 0  # base position
    while to < tlen:
        n = r.size()
        if n < 0 or to + n > tlen:
            raise OtaError("bad-patch", "patch diff of %d bytes at target offset %d overruns %d" % (n, to, tlen))
        if fp < 0 or fp + n > bsize:
            raise OtaError("bad-patch", "patch reads base bytes %d..%d outside the base (%d)" % (fp, fp + n, bsize))
        while n:
            win, i, avail = base.window(fp)
            k = min(n, avail, WINDOW)
            d = r.fill(k)
            for j in range(k):
                d[j] = (d[j] + win[i + j]) & 0xFF
            write(d)
            n -= k
            fp += k
            to += k
        n = r.size()
        if n < 0 or to + n > tlen:
            raise OtaError("bad-patch", "patch extra of %d bytes at target offset %d overruns %d" % (n, to, tlen))
        while n:
            k = min(n, WINDOW)
            write(r.fill(k))
            n -= k
            to += k
        fp += r.size()
    return to


# ---------------------------------------------------------------- one encoded download
# Collects each segment's payload (data), and decodes it into the bank writer once the
# chain has vouched for it (end). Made when the head of an encoded file has qualified.
class Decoder:
    def __init__(self, desc, write, base_dev=None):
        self.encoding = desc.encoding
        self.wbits = desc.window_bits
        self.write = write
        self.max = desc.segment_max
        if deflate is not None:
            import io
            self.src = io.BytesIO(desc.segment_max)  # preallocated: never grows
        else:
            from hanfw.hostinflate import Mem
            self.src = Mem(desc.segment_max)
        self.n = 0  # payload bytes of the segment in hand
        self.work = bytearray(WINDOW)
        self.base = Base(base_dev, desc.base_size) if desc.encoding == ENC_DELTA else None

    def data(self, mv):
        n = len(mv)
        if self.n + n > self.max:
            raise OtaError("bad-segment", "segment payload longer than the descriptor allows")
        self.src.write(mv)
        self.n += n

    def end(self, tlen):
        src = self.src
        src.seek(0)
        try:
            z = _inflater(src, self.wbits)
            if self.encoding == ENC_DELTA:
                out = apply_patch(_Reader(z, self.work), self.base, tlen, self.write)
            else:
                out = _inflate_to(z, self.work, tlen, self.write)
            left = z.readinto(memoryview(self.work)[:1])
        except OtaError:
            raise
        except (OSError, EOFError, ValueError) as e:
            raise OtaError("bad-patch", "segment does not decode: %r" % (e,))
        if out != tlen or left:
            raise OtaError("bad-patch", "segment decodes to more than its %d target bytes" % tlen)
        used = src.tell()
        if used != self.n:
            raise OtaError("bad-patch", "segment's zlib stream takes %d of its %d bytes" % (used, self.n))
        src.seek(0)
        self.n = 0


def _inflate_to(z, work, tlen, write):
    mv = memoryview(work)
    done = 0
    while done < tlen:
        k = z.readinto(mv[:min(WINDOW, tlen - done)])
        if not k:
            raise OtaError("bad-patch", "segment decodes to %d of its %d target bytes" % (done, tlen))
        write(mv[:k])
        done += k
    return done


# SHA-256 of the first `size` bytes of the running image (the wrong-base check).
def base_sha256(dev, size, first=0):
    h = hashlib.sha256()
    buf = bytearray(WINDOW)
    mv = memoryview(buf)
    done = 0
    while done < size:
        k = min(WINDOW, size - done)
        dev.readblocks(first + done // SECTOR, buf, done % SECTOR)
        h.update(mv[:k])
        done += k
    return h.digest()


def check_desc(desc):
    # what this device cannot decode, as a reason, or None
    if desc.encoding not in (ENC_ZLIB, ENC_DELTA):
        return "unsupported-encoding"
    if not 8 <= desc.window_bits <= MAX_WBITS or desc.segment_max > MAX_SEGMENT:
        return "unsupported-encoding"
    return None
