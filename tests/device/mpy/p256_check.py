# Run hanfw.p256 under MicroPython over a file of cases written by tests/device/test_p256_mpy.py.
#
#   micropython p256_check.py CASES [types]
#
# CASES has one case per line: "<pub hex> <digest hex> <sig hex>". For each case this prints
# "<verify 0|1> <is_valid_point 0|1> <key_id hex, or - if key_id raised ValueError>", then a
# final "done <count>". With "types", it first prints "T <label> <result>" for inputs that are
# not bytes (judged against the first case), so the host can check the answers.
import sys
from binascii import hexlify, unhexlify

from hanfw import p256


def flag(v):
    return "1" if v else "0"


def check_types(pub, digest, sig):
    for label, bad in (("none", None), ("int", 0), ("str", "04"), ("list", [4] * 65),
                       ("tuple", (4,) * 65), ("float", 1.5)):
        print("T", label + "-pub", p256.verify(bad, digest, sig))
        print("T", label + "-digest", p256.verify(pub, bad, sig))
        print("T", label + "-sig", p256.verify(pub, digest, bad))
        print("T", label + "-point", p256.is_valid_point(bad))
    print("T bytearray", p256.verify(bytearray(pub), bytearray(digest), bytearray(sig)))
    print("T memoryview", p256.verify(memoryview(pub), memoryview(digest), memoryview(sig)))


def main(path, types):
    count = 0
    with open(path) as f:
        for line in f:
            fields = line.split()
            if not fields:
                continue
            pub, digest, sig = [unhexlify(x) for x in fields]
            if types and count == 0:
                check_types(pub, digest, sig)
            try:
                kid = hexlify(p256.key_id(pub)).decode()
            except ValueError:
                kid = "-"
            print(flag(p256.verify(pub, digest, sig)), flag(p256.is_valid_point(pub)), kid)
            count += 1
    print("done", count)


main(sys.argv[1], "types" in sys.argv[2:])
