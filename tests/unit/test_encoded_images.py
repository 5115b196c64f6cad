"""Compressed and delta upgrade files (issue 15): the descriptor v2, the segment chain, the
host encoder, and the device decoder (hanfw.delta) under CPython; detools' own applier is
the independent check of every segment's patch."""
from __future__ import annotations

import hashlib
import io
import random
import zlib

import detools
import pytest
from click.testing import CliRunner

from hanfw import delta, otafile
from hanota import images
from hanota.cli import cli
from hanota.errors import ImageFormatError
from support.otabuild import new_key, raw_pub

RNG = random.Random(15)
BASE = bytes(RNG.randrange(256) for _ in range(60_000)) + bytes(20_000)


def _target(base: bytes = BASE) -> bytes:
    """base with scattered byte changes, an insertion, a deletion and a new tail."""
    r = random.Random(7)
    t = bytearray(base)
    for _ in range(40):
        t[r.randrange(len(t))] ^= 0x5A
    t[30_000:30_000] = b"version two " * 50
    del t[50_000:50_700]
    return bytes(t) + bytes(r.randrange(256) for _ in range(3000))


TARGET = _target()


@pytest.fixture(scope="module")
def key():
    return new_key()


def _build(key, encoding, base=None, target=TARGET, **kw) -> bytes:
    return images.build_image(target, key=key, version=2, role="althan", payload_kind=0,
                              encoding=encoding, base=base, **kw)


class _Dev:
    def __init__(self, data: bytes):
        self.data = data
        self.reads = 0

    def readblocks(self, block, buf, offset=0):
        self.reads += 1
        p = block * 4096 + offset
        chunk = self.data[p:p + len(buf)]
        buf[:len(chunk)] = chunk


def _decode(data: bytes, base: bytes | None = None, block: int = 97):
    """Stream a file through the device's parser and decoder in `block`-byte pieces."""
    probe = otafile.parse_stream(data)
    out = bytearray()
    dec = delta.Decoder(probe.descriptor, out.extend, _Dev(base or b""))
    s = otafile.OtaStream(sink=dec.data)
    s.seg_end = dec.end
    for i in range(0, len(data), block):
        s.feed(data[i:i + block])
    s.finish()
    return s, bytes(out)


def test_full_images_keep_descriptor_version_1(key):
    s = otafile.parse_stream(_build(key, "full"))
    assert s.descriptor.version == 1 and not s.descriptor.encoded
    assert [n for t, n, _ in s.elements][0] == otafile.DESCRIPTOR_LEN
    otafile.check_signed(s, [raw_pub(key)])


@pytest.mark.parametrize("encoding", ["zlib", "delta"])
def test_encoded_round_trip_on_the_device_decoder(key, encoding):
    data = _build(key, encoding, BASE if encoding == "delta" else None)
    s, out = _decode(data, BASE)
    d = s.descriptor
    assert d.version == 2 and d.encoding == otafile.ENCODINGS[encoding]
    assert out == TARGET
    assert d.image_hash == hashlib.sha256(TARGET).digest() and d.target_size == len(TARGET)
    assert s.chain_done and s.target_seen == len(TARGET)
    otafile.check_signed(s, [raw_pub(key)], hashlib.sha256(out).digest())
    with pytest.raises(otafile.OtaError) as e:
        otafile.check_signed(s, [raw_pub(key)], hashlib.sha256(out + b"x").digest())
    assert e.value.reason == "payload-hash"
    if encoding == "delta":
        assert d.base_size == len(BASE) and d.base_hash == hashlib.sha256(BASE).digest()
        assert len(data) < len(TARGET) // 5
    else:
        assert len(data) < len(TARGET)


def test_every_delta_segment_is_a_detools_patch_of_its_piece():
    segs = images.encode_segments(TARGET, base=BASE)
    assert len(segs) > 1
    t = 0
    for tlen, payload in segs:
        assert tlen % 4096 == 0 or t + tlen == len(TARGET)
        patch = zlib.decompress(payload)
        to = io.BytesIO()
        detools.apply_patch(io.BytesIO(BASE), io.BytesIO(patch), to)
        assert to.getvalue() == TARGET[t:t + tlen]
        t += tlen
    assert t == len(TARGET)


def test_segments_respect_the_limit_and_window():
    r = random.Random(3)
    noise = bytes(r.randrange(256) for _ in range(3 * 4096 + 5))
    segs = images.encode_segments(noise, window_bits=9)
    assert [n for n, _ in segs] == [4096, 4096, 4101]  # the last piece takes the tail
    for _, p in segs:
        assert len(p) <= images.DEFAULT_SEGMENT_MAX
        assert p[0] >> 4 == 9 - 8  # zlib header: CINFO = window bits - 8


def test_size_codes_match_detools():
    from detools.common import pack_size as dt_pack

    for v in (0, 1, 63, 64, -1, -64, 8191, 1 << 20, -(1 << 30), 123456789):
        assert delta.pack_size(v) == dt_pack(v)
        assert delta.unpack_size(dt_pack(v)) == (v, len(dt_pack(v)))


def test_a_flipped_byte_in_a_segment_breaks_the_chain(key):
    data = bytearray(_build(key, "delta", BASE))
    s = otafile.parse_stream(bytes(data))
    start = next(off for tag, _, off in s.elements if tag == 0) + 6
    data[start + otafile.SEG_HEADER_LEN + 3] ^= 1
    with pytest.raises(otafile.OtaError) as e:
        _decode(bytes(data), BASE)
    assert e.value.reason == "bad-segment"


def test_a_truncated_segment_is_named(key):
    segs = images.encode_segments(TARGET)
    body, root = images.chain_segments(segs)
    cut = body[:-10]  # the last segment loses its end; the file is otherwise well formed
    d = otafile.Descriptor(0, 0, 0, hashlib.sha256(TARGET).digest(), encoding=1, window_bits=10,
                           segment_max=max(len(p) for _, p in segs), target_size=len(TARGET),
                           chain=root)
    from support.otabuild import element, header
    els = element(0xF0A0, d.pack()) + element(0, cut)
    data = header(56 + len(els)) + els
    with pytest.raises(otafile.OtaError) as e:
        _decode(data)
    assert e.value.reason == "truncated-segment"


def test_the_decoder_refuses_bad_patches():
    d = otafile.Descriptor(0, 0, 0, bytes(32), encoding=2, window_bits=10, segment_max=4300,
                           target_size=100, chain=bytes(32), base_size=len(BASE))
    cases = {
        "reads past the base": bytes([0]) + delta.pack_size(100) + b"\0" + delta.pack_size(100)
        + bytes(100) + b"\0" + b"\0",
        "diff overruns target": bytes([0]) + delta.pack_size(100) + b"\0" + delta.pack_size(101),
        "wrong type": bytes([0x10]) + delta.pack_size(100) + b"\0",
        "ends early": bytes([0]) + delta.pack_size(100) + b"\0" + delta.pack_size(50) + bytes(50),
    }
    for name, patch in cases.items():
        dec = delta.Decoder(d, lambda mv: None, _Dev(BASE[:50]))
        dec.base.size = 50
        dec.data(zlib.compress(patch))
        with pytest.raises(otafile.OtaError) as e:
            dec.end(100)
        assert e.value.reason == "bad-patch", name
    dec = delta.Decoder(d, lambda mv: None, _Dev(BASE))
    dec.data(zlib.compress(b"\0" + delta.pack_size(100) + b"\0")[:-3])
    with pytest.raises(otafile.OtaError) as e:
        dec.end(100)
    assert e.value.reason == "bad-patch"


def test_host_verify_applies_a_delta_to_the_given_base(tmp_path, key):
    path = tmp_path / "d.ota"
    path.write_bytes(_build(key, "delta", BASE))
    keys = [raw_pub(key)]
    r = images.verify_image(path, keys)
    assert r.verdict is images.Verdict.VALID and "not checked" in r.message
    r = images.verify_image(path, keys, base=BASE)
    assert r.verdict is images.Verdict.VALID and "not checked" not in r.message
    r = images.verify_image(path, keys, base=BASE[:-1] + b"x")
    assert r.verdict is images.Verdict.REJECTED and r.reason == "wrong-base"


def test_cli_build_inspect_verify(tmp_path, key):
    runner = CliRunner()
    r = runner.invoke(cli, ["keys", "generate", str(tmp_path / "keys")])
    assert r.exit_code == 0, r.output
    kp = tmp_path / "keys" / "private.pem"
    pub = tmp_path / "keys" / "public.bin"
    old, new = tmp_path / "old.bin", tmp_path / "new.bin"
    old.write_bytes(BASE)
    new.write_bytes(TARGET)
    oldota = tmp_path / "old.ota"
    common = ["--role", "althan", "--key", str(kp), "--payload-kind", "raw"]
    for args, out in ((["--version", "1"], oldota),
                      (["--version", "2", "--compress"], tmp_path / "z.ota"),
                      (["--version", "2", "--delta-from", str(oldota)], tmp_path / "d.ota")):
        src = old if out == oldota else new
        r = runner.invoke(cli, ["image", "build", str(src), *common, *args, "-o", str(out)])
        assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["image", "inspect", "--json", str(tmp_path / "d.ota")])
    import json
    info = json.loads(r.output)
    assert info["encoding"] == "delta" and info["target_size"] == len(TARGET)
    assert info["base_sha256"] == hashlib.sha256(BASE).hexdigest()
    assert info["manufacturer_image_hash"] == hashlib.sha256(TARGET).hexdigest()
    r = runner.invoke(cli, ["image", "verify", str(tmp_path / "d.ota"), "--pubkey", str(pub),
                            "--base", str(old)])
    assert r.exit_code == 0 and "valid" in r.output, r.output
    r = runner.invoke(cli, ["image", "verify", str(tmp_path / "d.ota"), "--pubkey", str(pub),
                            "--base", str(new)])
    assert r.exit_code == 1 and "wrong-base" in r.output, r.output
    r = runner.invoke(cli, ["image", "verify", str(tmp_path / "z.ota"), "--pubkey", str(pub)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["image", "build", str(new), *common, "--version", "3", "--compress",
                            "--delta-from", str(old), "-o", str(tmp_path / "x.ota")])
    assert r.exit_code != 0 and "exclude" in r.output


def test_read_base_refuses_a_delta_file(tmp_path, key):
    p = tmp_path / "d.ota"
    p.write_bytes(_build(key, "delta", BASE))
    with pytest.raises(ImageFormatError) as e:
        images.read_base(p)
    assert e.value.reason == "delta-base"
    p.write_bytes(_build(key, "zlib"))
    assert images.read_base(p) == TARGET


def test_the_hub_takes_encoded_files_and_refuses_a_flipped_segment(tmp_path, key):
    """hub.requests.check_image_file: a compressed or delta file's descriptor hash is the
    target's, not the body's, so it is not compared with the body; the chain still is."""
    from hanota.hub import HubDB
    from hanota.hub.requests import check_image_file

    db = HubDB.open(tmp_path / "hub.db")
    for enc, base in (("zlib", None), ("delta", BASE)):
        p = tmp_path / (enc + ".ota")
        data = _build(key, enc, base)
        p.write_bytes(data)
        check_image_file(db, p, [raw_pub(key)])
        s = otafile.parse_stream(data)
        start = next(off for tag, _, off in s.elements if tag == 0) + 6
        bad = bytearray(data)
        bad[start + otafile.SEG_HEADER_LEN + 1] ^= 4
        p.write_bytes(bytes(bad))
        with pytest.raises(ImageFormatError) as e:
            check_image_file(db, p, [raw_pub(key)])
        assert e.value.reason == "bad-segment"


def test_a_resume_record_that_does_not_fit_starts_over():
    """Download.resume with a record whose segment offset lies outside the file: the
    transfer starts again from 0 instead of stopping the client."""
    from hanfw.download import Download

    class Banks:
        kind = "app"

        def writer(self, start):
            raise AssertionError("no bank write for a bad record")

    d = Download()
    d.start((0x1234, 0x85, 2), 5000)
    d.resume({"id": [0x1234, 0x85, 2], "size": 5000, "head": "00", "poff": 200, "dur": 0,
              "seg": [999999, "00" * 32, 0, 0]}, Banks())
    assert d.offset == 0 and not d.body and d.stream is not None and d.dec is None


def test_the_server_policy_offers_the_smallest_file_the_device_can_apply(tmp_path, key):
    """Full, compressed and delta files of V2: a device on V1 (whose hash the policy knows
    from its V1 file) gets the delta; on an unknown base, or after refusing a delta, the
    compressed file; with no full or compressed file it gets nothing it cannot apply."""
    from hanota.server.policy import Policy, ServedImage

    eui = bytes(range(8))
    other = bytes(range(8, 16))
    paths = {}
    for name, payload, kw in (("v1", BASE, dict(version=1)),
                              ("full", TARGET, dict(encoding="full")),
                              ("zlib", TARGET, dict(encoding="zlib")),
                              ("delta", TARGET, dict(encoding="delta", base=BASE))):
        kw.setdefault("version", 2)
        p = tmp_path / (name + ".ota")
        p.write_bytes(images.build_image(payload, key=key, role="althan", payload_kind=0, **kw))
        paths[name] = ServedImage.from_file(p)
    assert paths["delta"].encoding == otafile.ENC_DELTA
    assert paths["delta"].base_hash == paths["v1"].image_hash == hashlib.sha256(BASE).digest()
    assert paths["zlib"].image_hash == paths["full"].image_hash == hashlib.sha256(TARGET).digest()
    pol = Policy(images=[paths[n] for n in ("v1", "full", "zlib", "delta")])
    m, t = paths["full"].manufacturer, paths["full"].image_type
    assert pol.offer(eui, m, t, 1, None) is paths["delta"]
    assert pol.offer(eui, m, t, 0, None) is paths["zlib"]  # runs a version the hub has no file of
    pol.on_upgrade_end(eui, paths["delta"], zcl_invalid := 0x96)
    assert pol.offer(eui, m, t, 1, None) is paths["zlib"]  # it refused the delta (wrong-base)
    assert pol.offer(other, m, t, 1, None) is paths["delta"]  # others still get it
    only_delta = Policy(images=[paths["delta"]])  # nothing tells it what V1's bytes are
    assert only_delta.offer(eui, m, t, 1, None) is None
    with_v1 = Policy(images=[paths["v1"], paths["delta"]])
    assert with_v1.offer(eui, m, t, 0, None) is paths["v1"]  # the full V1 first, then the delta
    assert with_v1.offer(eui, m, t, 1, None) is paths["delta"]
    assert zcl_invalid == 0x96
