# Runs under the real MicroPython: streams a compressed or delta OTA file through
# hanfw.otafile and hanfw.delta (the base read from a file through readblocks, the target
# hashed, never kept) and prints one JSON line: the target's SHA-256 or the failure's
# reason, and the heap the decoding took (gc.mem_free after a collection, before the
# decoder was made and at its lowest while segments were decoded).
#   delta_check.py FILE BASE|- BLOCK
import sys
import gc
import json
import hashlib
import binascii

from hanfw import otafile


class FileDev:
    # a block device over a file (4 KiB blocks, readblocks with an offset)
    def __init__(self, path):
        self.f = open(path, "rb")

    def readblocks(self, block, buf, offset=0):
        self.f.seek(block * 4096 + offset)
        n = self.f.readinto(buf)
        for i in range(n or 0, len(buf)):
            buf[i] = 0xFF


def main(path, base, block):
    buf = bytearray(block)
    mv = memoryview(buf)
    h = hashlib.sha256()
    low = [0]
    calls = [0]
    out = [0]

    def write(data):
        h.update(data)
        out[0] += len(data)
        calls[0] += 1
        if calls[0] % 16 == 1:  # the live heap while a segment is being decoded
            gc.collect()
            f = gc.mem_free()
            if low[0] == 0 or f < low[0]:
                low[0] = f

    s = otafile.OtaStream(integrity=False)
    gc.collect()
    free0 = gc.mem_free()  # the parser of every download is there already
    dec = None
    code = [0]
    try:
        with open(path, "rb") as f:
            while True:
                n = f.readinto(buf)
                if not n:
                    break
                if dec is None and s.descriptor is not None:
                    from hanfw import delta  # as the client does: only when a file needs it
                    gc.collect()
                    code[0] = free0 - gc.mem_free()  # the module (in RAM on the unix port)
                    d = s.descriptor
                    if not d.encoded:
                        return {"error": "not-encoded"}
                    dev = FileDev(base) if base != "-" else None
                    if d.encoding == otafile.ENC_DELTA:
                        if delta.base_sha256(dev, d.base_size) != d.base_hash:
                            return {"error": "wrong-base"}
                    dec = delta.Decoder(d, write, dev)
                    s.sink = dec.data
                    s.seg_end = dec.end
                s.feed(mv[:n])
        s.finish()
        if not s.chain_done:
            return {"error": "bad-segment"}
    except otafile.OtaError as e:
        return {"error": e.reason, "message": e.message, "target_bytes": out[0]}
    return {"sha256": binascii.hexlify(h.digest()).decode(), "target_bytes": out[0],
            "segments": s.segments, "free_before": free0, "free_low": low[0],
            "extra_heap": free0 - low[0], "module_heap": code[0],
            "data_heap": free0 - low[0] - code[0]}


print(json.dumps(main(sys.argv[1], sys.argv[2], int(sys.argv[3]))))
