# Runs under the real MicroPython: streams OTA files through hanfw.otafile and
# prints one JSON line of facts per job. Jobs come from a file, one per line:
#   facts PATH BLOCK RAW(0/1) | verify PATH BLOCK PUBKEY_HEX
import sys
import json
import binascii
from hanfw import otafile


def hx(b):
    return None if b is None else binascii.hexlify(b).decode()


def stream(path, block, raw, sink=None):
    s = otafile.OtaStream(sink=sink, allow_raw=raw)
    buf = bytearray(block)
    mv = memoryview(buf)
    with open(path, "rb") as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            s.feed(mv[:n])
    return s.finish()


def facts(path, block, raw):
    try:
        s = stream(path, block, raw)
    except otafile.OtaError as e:
        return {"error": e.reason}
    h = s.header
    return {
        "format": s.format, "header_length": h.header_length, "field_control": h.field_control,
        "manufacturer": h.manufacturer, "image_type": h.image_type, "file_version": h.file_version,
        "total": h.total_size, "min_hw": h.min_hw, "max_hw": h.max_hw, "destination": hx(h.destination),
        "elements": [[t, n] for t, n, _ in s.elements], "image_sha256": hx(s.image_sha256),
        "signed_digest": hx(s.signed_digest), "integrity_ok": s.integrity_ok,
        "key_id": hx(s.key_id), "received": s.received,
    }


def verify(path, block, pub_hex):
    count = [0]

    def sink(mv):
        count[0] += len(mv)
    try:
        s = stream(path, block, False, sink)
        s.check_integrity()
        otafile.check_signed(s, [binascii.unhexlify(pub_hex)])
    except otafile.OtaError as e:
        return {"error": e.reason}
    import gc
    return {"valid": True, "image_bytes": count[0], "mem_free": gc.mem_free()}


for line in open(sys.argv[1]):
    parts = line.split()
    if not parts:
        continue
    if parts[0] == "facts":
        out = facts(parts[1], int(parts[2]), parts[3] == "1")
    else:
        out = verify(parts[1], int(parts[2]), parts[3])
    print(json.dumps(out))
