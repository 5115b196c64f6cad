# hanfw.aes and hanfw.mmo on the real MicroPython with cryptolib made unavailable (as on the
# nRF port). argv: a cases file (lines "key block expected" in hex) and an OTA file whose
# last element is the 16-byte integrity code (tag 0x0003).
# Prints "FAIL ..." per failure, then "aes_check ok N <path of hanfw.aes>"; exits 1 on failure.
import sys
import builtins
import binascii
import gc

_import = builtins.__import__


def _no_cryptolib(name, *args):
    if name == "cryptolib":
        raise ImportError("no module named 'cryptolib'")
    return _import(name, *args)


builtins.__import__ = _no_cryptolib

from hanfw.aes import Aes128  # noqa: E402
from hanfw import mmo, link  # noqa: E402

failures = []
checks = [0]


def check(name, cond):
    checks[0] += 1
    if not cond:
        failures.append(name)
        print("FAIL", name)


a = Aes128()
out = bytearray(16)
with open(sys.argv[1]) as f:
    for line in f:
        key, block, want = [binascii.unhexlify(x) for x in line.split()]
        a.set_key(key)
        a.encrypt(block, out)
        check("aes " + line.split()[0], out == want)

# A block costs no allocation: the round keys and state live in the object.
gc.collect()
free = gc.mem_free()
for _ in range(50):
    a.set_key(out)
    a.encrypt(out, out)
used = free - gc.mem_free()
check("no allocation per block (%d bytes for 50)" % used, used < 64)

try:
    a.set_key(b"short")
    check("short key refused", False)
except ValueError as e:
    check("short key message", "16 bytes" in str(e))

# The MMO hash of a real file's integrity code, streamed in 256-byte chunks as otafile feeds it.
m = mmo.Mmo()
buf = bytearray(256)
mv = memoryview(buf)
with open(sys.argv[2], "rb") as f:
    f.seek(0, 2)
    left = f.tell() - 22  # everything before the tag 0x0003 element (6-byte header + 16)
    f.seek(0)
    while left:
        n = f.readinto(mv[:min(256, left)])
        m.update(mv[:n])
        left -= n
    f.seek(6, 1)
    code = f.read(16)
check("integrity code", m.digest() == code)
check("plain-Python AES in use", "hanfw.aes" in sys.modules and "cryptolib" not in sys.modules)
check("link key", binascii.hexlify(link.link_key("83FED3407A939723A5C639B26916D505C3B5"))
      == b"66b6900981e1ee3ca4206b6b861c02bb")

if failures:
    print("aes_check FAILED", len(failures))
    sys.exit(1)
print("aes_check ok", checks[0], sys.modules["hanfw.aes"].__file__)
