"""Compressed and delta files decoded by hanfw.delta under the real MicroPython (its
deflate.DeflateIO), in a 64 KiB heap: the right target SHA-256, the extra heap it takes with
a 1 KiB window, and the named refusals (wrong base, corrupted patch byte, truncated segment)."""
from __future__ import annotations

import hashlib
import json
import random

import pytest

from hanfw import otafile
from hanota import images
from support.mpy import MPY_TESTS, run_mpy_ok
from support.otabuild import element, header, new_key

SCRIPT = MPY_TESTS / "delta_check.py"
R = random.Random(1515)
# a base with code-like structure (repeats with variations) and a target that edits it
BASE = b"".join(b"def f%05d(x): return x * %d + %d\n" % (i, R.randrange(99), R.randrange(9999))
                for i in range(4000))[:120_000]


def _target() -> bytes:
    t = bytearray(BASE)
    for _ in range(60):
        t[R.randrange(len(t))] = R.randrange(256)
    t[70_000:70_000] = bytes(R.randrange(256) for _ in range(5000))  # new, incompressible
    return bytes(t[:-3000])


TARGET = _target()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("delta")
    key = new_key()
    (d / "base.bin").write_bytes(BASE)
    (d / "other.bin").write_bytes(BASE[:-1] + b"?")
    for enc in ("zlib", "delta"):
        data = images.build_image(TARGET, key=key, version=2, role="althan", payload_kind=0,
                                  encoding=enc, base=BASE if enc == "delta" else None)
        (d / (enc + ".ota")).write_bytes(data)
    return d


def run(path, base="-", block=64, heap="64k"):
    out = run_mpy_ok(SCRIPT, str(path), str(base), str(block), heapsize=heap)
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("enc", ["zlib", "delta"])
def test_decodes_to_the_target_in_a_64k_heap(files, enc):
    base = files / "base.bin" if enc == "delta" else "-"
    got = run(files / (enc + ".ota"), base, block=50)
    assert got.get("sha256") == hashlib.sha256(TARGET).hexdigest(), got
    assert got["target_bytes"] == len(TARGET) and got["segments"] > 1
    # the bound: at most 16 KiB more heap while applying, with a 1 KiB window (the
    # decoder's buffers, DeflateIO's window and state); the module's code comes on top on
    # the unix port, which loads .mpy bytecode into the heap (about 7 KiB)
    assert got["data_heap"] <= 16 * 1024, got
    assert got["extra_heap"] <= 20 * 1024, got
    print("%s: data heap %d, module %d bytes, %d segments"
          % (enc, got["data_heap"], got["module_heap"], got["segments"]))


def test_wrong_base_is_refused_before_decoding(files):
    got = run(files / "delta.ota", files / "other.bin")
    assert got == {"error": "wrong-base"}


def test_corrupted_patch_byte_is_refused(files, tmp_path):
    data = bytearray((files / "delta.ota").read_bytes())
    s = otafile.parse_stream(bytes(data))
    start = next(off for tag, _, off in s.elements if tag == 0) + 6
    data[start + otafile.SEG_HEADER_LEN + 20] ^= 0x10
    p = tmp_path / "bad.ota"
    p.write_bytes(bytes(data))
    got = run(p, files / "base.bin")
    assert got["error"] == "bad-segment" and got["target_bytes"] == 0, got


def test_a_signed_but_undecodable_patch_is_refused(tmp_path):
    """A segment that matches its chain but whose patch is wrong (reads beyond the base):
    the decoder's own check, on MicroPython."""
    import zlib

    from hanfw import delta
    patch = bytes([0]) + delta.pack_size(4096) + b"\0" + delta.pack_size(4096) + bytes(4096) \
        + b"\0\0"
    body, root = images.chain_segments([(4096, zlib.compress(patch))])
    d = otafile.Descriptor(0, 0, 0, bytes(32), encoding=2, window_bits=15, segment_max=4352,
                           target_size=4096, chain=root, base_size=100,
                           base_hash=hashlib.sha256(BASE[:100]).digest())
    els = element(0xF0A0, d.pack()) + element(0, body)
    p = tmp_path / "undecodable.ota"
    p.write_bytes(header(56 + len(els)) + els)
    (tmp_path / "b.bin").write_bytes(BASE[:100])
    got = run(p, tmp_path / "b.bin", heap="256k")
    assert got["error"] == "bad-patch", got


def test_truncated_segment_is_refused(files, tmp_path):
    segs = images.encode_segments(TARGET)
    body, root = images.chain_segments(segs)
    d = otafile.Descriptor(0, 0, 0, hashlib.sha256(TARGET).digest(), encoding=1,
                           window_bits=10, segment_max=max(len(p) for _, p in segs),
                           target_size=len(TARGET), chain=root)
    els = element(0xF0A0, d.pack()) + element(0, body[:-7])
    p = tmp_path / "cut.ota"
    p.write_bytes(header(56 + len(els)) + els)
    got = run(p)
    assert got["error"] == "truncated-segment", got


def test_real_esp32_release_delta_in_a_64k_heap(tmp_path):
    """MicroPython v1.15 -> v1.16 for the ET-Board (the pinned PyPI package the tests use):
    the delta is about a quarter of the target, compressed about 70 %, and both decode under
    the real MicroPython in a 64 KiB heap to the v1.16 app's SHA-256."""
    from support import espapps
    try:
        files = espapps.package_files()
    except RuntimeError as e:
        pytest.skip(str(e))
    old, new = (espapps.take_app(files[r].read_bytes())[1] for r in ("v1.15", "v1.16"))
    key = new_key()
    (tmp_path / "base.bin").write_bytes(old)
    for enc, most in (("delta", 0.26), ("zlib", 0.72)):
        data = images.build_image(new, key=key, version=2, role="althan", payload_kind=0,
                                  encoding=enc, base=old if enc == "delta" else None)
        assert len(data) <= most * len(new), (enc, len(data) / len(new))
        p = tmp_path / (enc + ".ota")
        p.write_bytes(data)
        got = run(p, tmp_path / "base.bin", block=64)
        assert got.get("sha256") == hashlib.sha256(new).hexdigest(), got
        assert got["data_heap"] <= 16 * 1024, got
        print("%s: %.1f %% of the target, data heap %d" % (enc, 100 * len(data) / len(new),
                                                           got["data_heap"]))
