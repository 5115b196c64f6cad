# hanfw.link on the real MicroPython: frames, bundles and HELLO's frame limit.
# Prints one line per failure and "link_check ok N" at the end; exits 1 on any failure.
import sys

from hanfw import link

failures = []
checks = [0]
HUB = b"\xa1" * 8
DEV = b"\x01" * 8


def check(name, cond):
    checks[0] += 1
    if not cond:
        failures.append(name)
        print("FAIL", name)


def malformed(name, payload, words):
    try:
        link.split_bundle(payload)
    except link.LinkError as e:
        check(name, e.reason == "malformed" and words in str(e))
        return
    except Exception as e:
        check(name + " raised %r" % e, False)
        return
    check(name + " did not raise", False)


m = link.Mac(b"k" * 16)
items = [b"\x19\x05\x05" + bytes(14) + b"abc", bytes(255), b"\x18\x01"]
p = link.pack_bundle(items)
check("bundle layout", p[:2] == b"\x14\x00" and p[2:22] == items[0])
check("bundle round trip", [bytes(x) for x in link.split_bundle(p)] == items)
# sixteen full block responses: the longest frame a device takes by default
big = [bytes([i]) * 272 for i in range(16)]
f = link.pack(m, link.KIND_BUNDLE, HUB, DEV, 7, 0x19, link.pack_bundle(big))
check("16 blocks fit RX_FRAME", len(f) <= link.RX_FRAME)
kind, src, dst, ctr, cl, payload = link.unpack(f, lambda s: m, link.RX_FRAME)
got = link.split_bundle(payload)
check("bundle frame", (kind, src, dst, ctr, cl) == (link.KIND_BUNDLE, HUB, DEV, 7, 0x19))
check("bundle items are views", isinstance(got[0], memoryview) and [bytes(x) for x in got] == big)
try:
    link.unpack(f, lambda s: m)
    check("long frame refused by default", False)
except link.LinkError as e:
    check("long frame refused by default", e.reason == "long")
malformed("empty", b"", "empty bundle")
malformed("cut length", b"\x05", "inside an item length")
malformed("empty item", b"\x00\x00", "empty bundle item")
malformed("overrun", b"\x03\x00ab", "overruns")
h = link.pack_hello(b"n" * 8, 0x20000, link.RX_FRAME)
check("hello parse", link.parse_hello(h) == (b"n" * 8, 0x20000))
check("hello frame limit", link.hello_rx_frame(h) == link.RX_FRAME)
check("old hello", link.hello_rx_frame(h[:12]) == link.MAX_FRAME)


# The serial transport: frames come out of the decoder's own buffer, not as copies.
# Bundles and a small frame arrive in 256-byte reads that run one frame into the next;
# 30 bundles decoded with the collector off must not allocate 30 copies of them.
class _Stream:
    def __init__(self, data, times=1):
        self.data = data
        self.left = len(data) * times
        self.pos = 0

    def fileno(self):
        return 0

    def readinto(self, buf):
        n = min(len(buf), len(self.data) - self.pos, self.left)
        for i in range(n):  # byte by byte: the test's stream allocates nothing
            buf[i] = self.data[self.pos + i]
        self.pos = (self.pos + n) % len(self.data)
        self.left -= n
        return n


class _Ready:
    def poll(self, timeout):
        return True


from hanfw import transport  # noqa: E402

del big, got, payload
f = link.pack(m, link.KIND_BUNDLE, HUB, DEV, 7, 0x19, link.pack_bundle([bytes([i]) * 272 for i in range(8)]))
small = link.pack(m, link.KIND_DATA, HUB, DEV, 8, 0x19, b"\xc0\xdb" * 20)
ef = link.slip_encode(f)
t = transport.StreamTransport(_Stream(ef + link.slip_encode(small) + ef))
t.poll = _Ready()
got = []
for _ in range(40):
    fr = t.recv(0)
    if fr is not None:
        check("frame is a view", isinstance(fr, memoryview))
        got.append(bytes(fr))
check("stream frames in order", got == [f, small, f])
del got
t = transport.StreamTransport(_Stream(ef, 30))
t.poll = _Ready()
import gc  # noqa: E402
gc.collect()
gc.disable()
a0 = gc.mem_alloc()
n = 0
for _ in range(30 * 20):
    fr = t.recv(0)
    if fr is not None:
        n += len(fr) == len(f) and fr[0] == link.KIND_BUNDLE
used = gc.mem_alloc() - a0
gc.enable()
check("30 bundles decoded", n == 30)
# a few small objects a frame (its view, the CRC's view): not a copy of its 2.2 KiB
check("no copy per frame (%d bytes for 30)" % used, used < 30 * 256)

if failures:
    print("link_check FAILED", len(failures))
    sys.exit(1)
print("link_check ok", checks[0], link.__file__)
