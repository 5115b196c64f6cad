# On-board tier: stream an upgrade file through hanfw.otafile as the device client does
# (no integrity code, the image element hashed into a sink), fed from the host in chunks.
from hanfw import otafile
import bchk

_s = None
_n = [0]


def _sink(mv):
    _n[0] += len(mv)


def start(raw=False):
    global _s
    _n[0] = 0
    _s = otafile.OtaStream(sink=_sink, integrity=False, allow_raw=raw)


# Feed one chunk from the host in pieces of `step` bytes (the radio's block size).
def feed(b, step):
    mv = memoryview(b)
    try:
        for i in range(0, len(mv), step):
            _s.feed(mv[i:i + step])
    except otafile.OtaError as e:
        return e.reason
    return None


def finish(pubs):
    global _s
    try:
        s = _s.finish()
        otafile.check_signed(s, [bchk.uh(p) for p in pubs])
    except otafile.OtaError as e:
        _s = None
        bchk.out({"error": e.reason})
        return
    h = s.header
    _s = None
    bchk.out({"valid": True, "image_bytes": _n[0], "manufacturer": h.manufacturer,
              "image_type": h.image_type, "file_version": h.file_version, "total": h.total_size,
              "elements": [[t, n] for t, n, _ in s.elements], "image_sha256": bchk.hx(s.image_sha256),
              "key_id": bchk.hx(s.key_id), "received": s.received, "free": bchk.free()})
