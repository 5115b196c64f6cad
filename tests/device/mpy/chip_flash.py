# Run flash ops on the emulated NOR flash inside MicroPython (tests/device/test_chip_mpy.py).
# argv: flash path, then ops: E<addr> erase a sector, W<addr>:<len>:<hex byte> write,
# X<addr>:<len>:<hex byte> a write that must fail with EIO.
import sys

import vflash

f = vflash.NorFlash(sys.argv[1])
for i, spec in enumerate(sys.argv[2:]):
    kind = spec[0]
    if kind == "E":
        f.erase(int(spec[1:], 0))
    else:
        addr, n, b = spec[1:].split(":")
        data = bytes([int(b, 16)]) * int(n)
        if kind == "W":
            f.write(int(addr, 0), data)
        else:
            try:
                f.write(int(addr, 0), data)
                print("no error")
            except OSError as e:
                print("EIO" if e.errno == 5 else "errno %d" % e.errno)
    print("done", i + 1)
print("end", f.ops())
