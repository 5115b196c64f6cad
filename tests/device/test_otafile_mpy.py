"""The same format and signature checks on the real MicroPython interpreter."""
import json
import random

import pytest

from hanfw import otafile
from hanota import images
from support.mpy import MPY_TESTS, run_mpy_ok
from support.otabuild import element, header, new_key, raw_pub, unsigned_file

SCRIPT = MPY_TESTS / "otafile_check.py"


def cpython_facts(path, raw):
    try:
        s = otafile.parse_stream(path.read_bytes(), allow_raw=raw)
    except otafile.OtaError as e:
        return {"error": e.reason}
    h = s.header
    hx = lambda b: None if b is None else b.hex()  # noqa: E731
    return {
        "format": s.format, "header_length": h.header_length, "field_control": h.field_control,
        "manufacturer": h.manufacturer, "image_type": h.image_type, "file_version": h.file_version,
        "total": h.total_size, "min_hw": h.min_hw, "max_hw": h.max_hw, "destination": hx(h.destination),
        "elements": [[t, n] for t, n, _ in s.elements], "image_sha256": hx(s.image_sha256),
        "signed_digest": hx(s.signed_digest), "integrity_ok": s.integrity_ok,
        "key_id": hx(s.key_id), "received": s.received,
    }


def run_jobs(tmp_path, jobs, heapsize=None):
    manifest = tmp_path / "jobs.txt"
    manifest.write_text("\n".join(" ".join(str(x) for x in j) for j in jobs) + "\n")
    out = run_mpy_ok(SCRIPT, str(manifest), heapsize=heapsize)
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Valid, foreign and malformed files, each with what CPython's parser says of it."""
    d = tmp_path_factory.mktemp("corpus")
    key = new_key()
    files = {}
    payload = bytes(random.Random(5).randrange(256) for _ in range(1500))
    good = images.build_image(payload, key=key, version=9, role="althan", min_hw=1, max_hw=3,
                              destination=bytes(range(8)), security_version=2)
    files["signed"] = good
    bad = bytearray(good)
    bad[0] ^= 1
    files["wrong-magic"] = bytes(bad)
    files["header-length"] = unsigned_file([element(0, b"abc")], fc=4, hlen=56)
    files["truncated-header"] = good[:40]
    files["truncated"] = good[:-1]
    files["trailing"] = good + b"\0"
    files["overrun"] = header(56 + 56) + bytes.fromhex("000064000000") + bytes(50)
    files["no-image"] = unsigned_file([element(4, b"picture")])
    files["sig-not-last"] = unsigned_file([element(0, b"x"), element(0xF0A1, bytes(72)), element(4, b"y")])
    files["gb-raw"] = header(60 + 235, fc=4, extra=bytes(4)) + bytes([0x5A, 0x17]) + bytes(233)
    paths = {}
    for name, data in files.items():
        p = d / (name + ".ota")
        p.write_bytes(data)
        paths[name] = p
    return key, paths


def test_stream_facts_agree_with_cpython_at_many_block_sizes(tmp_path, corpus):
    _, paths = corpus
    jobs, expect = [], []
    for name, p in paths.items():
        raw = name == "gb-raw"
        for block in (1, 7, 64, 256):
            jobs.append(("facts", p, block, int(raw)))
            expect.append((name, block, cpython_facts(p, raw)))
    got = run_jobs(tmp_path, jobs)
    assert len(got) == len(expect)
    for (name, block, want), have in zip(expect, got):
        assert have == want, (name, block)
    reasons = {name: want.get("error") for name, _, want in expect}
    assert reasons["wrong-magic"] == "bad-magic" and reasons["sig-not-last"] == "signature-not-last"
    assert reasons["signed"] is None


def test_vector_integrity_code_under_micropython(tmp_path, vectors_dir):
    p = vectors_dir / "herdsman-integrity-code-1166-012B-24031511.zigbee"
    (got,) = run_jobs(tmp_path, [("facts", p, 256, 0)])
    assert got["integrity_ok"] is True and got["elements"] == [[0, 268632], [3, 16]]
    assert got == cpython_facts(p, False)


def test_signature_checks_under_micropython(tmp_path, corpus):
    key, paths = corpus
    pub = raw_pub(key).hex()
    other = raw_pub(new_key()).hex()
    good = paths["signed"]
    flipped = tmp_path / "flipped.ota"
    data = bytearray(good.read_bytes())
    data[200] ^= 0x10
    flipped.write_bytes(bytes(data))
    got = run_jobs(tmp_path, [("verify", good, 64, pub), ("verify", good, 64, other),
                              ("verify", flipped, 64, pub), ("verify", paths["gb-raw"], 64, pub)])
    assert got[0]["valid"] is True and got[0]["image_bytes"] == 1500
    assert got[1] == {"error": "unknown-key"}
    assert got[2] == {"error": "bad-signature"}
    assert "error" in got[3] and "valid" not in got[3]  # a GB raw file is never accepted


def test_one_mebibyte_image_streams_and_verifies_in_64k_heap(tmp_path):
    key = new_key()
    payload = random.Random(9).randbytes(1 << 20)
    p = tmp_path / "big.ota"
    p.write_bytes(images.build_image(payload, key=key, version=2, role="ppmid"))
    (got,) = run_jobs(tmp_path, [("verify", p, 256, raw_pub(key).hex())], heapsize="64K")
    assert got["valid"] is True and got["image_bytes"] == 1 << 20
