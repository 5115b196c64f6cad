# On-board tier: helpers the checks share. Runs on the board (MicroPython), imported from
# the RAM filesystem at /hbt that tests/board/boardkit.py sets up.
import gc
import json
from binascii import hexlify, unhexlify


def out(obj):
    # the one result line the host parses
    print("HBT", json.dumps(obj))


def hx(b):
    return None if b is None else hexlify(b).decode()


def uh(s):
    # hex text from the host, or a buffer it already put on the board (large inputs)
    return unhexlify(s) if isinstance(s, str) else s


def sha(b):
    # large results go back as their SHA-256: the board's heap need not hold them twice as hex
    import hashlib
    return hexlify(hashlib.sha256(bytes(b)).digest()).decode()


def plain(v):
    # a parsed value as JSON: bytes as hex, tuples as lists
    if isinstance(v, (bytes, bytearray, memoryview)):
        return hexlify(bytes(v)).decode()
    if isinstance(v, (tuple, list)):
        return [plain(x) for x in v]
    return v


def free():
    gc.collect()
    return gc.mem_free()
