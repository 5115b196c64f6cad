"""hanfw.link: link frames, authentication, replay protection, serial framing."""
import hmac
import hashlib
import random

import pytest
from hypothesis import given, settings, strategies as st

from hanfw import link
from hanfw.link import LinkError

DEV = bytes.fromhex("0807060504030201")  # EUI-64 01:02:03:04:05:06:07:08 in wire order
HUB = bytes.fromhex("a1a2a3a4a5a6a7a8")


def test_install_code_to_link_key_matches_the_zigbee_example():
    # The Zigbee install-code example: code 83FED340 7A939723 A5C639B2 6916D505 + CRC C3B5
    assert link.link_key("83FED3407A939723A5C639B26916D505C3B5").hex() == "66b6900981e1ee3ca4206b6b861c02bb"
    assert link.install_code_with_crc(bytes.fromhex("83FED3407A939723A5C639B26916D505")).hex().endswith("c3b5")


@pytest.mark.parametrize("code", ["83FED3407A939723A5C639B26916D505C3B6", "83FED340", "00" * 20])
def test_bad_install_codes_are_named(code):
    with pytest.raises(LinkError) as ei:
        link.link_key(code)
    assert ei.value.reason == "install-code"


def test_mac_is_truncated_hmac_sha256():
    key = bytes(range(16))
    m = link.Mac(key)
    for n in (0, 1, 63, 64, 65, 300):
        data = bytes(random.Random(n).randrange(256) for _ in range(n))
        assert m.tag(data) == hmac.new(key, data, hashlib.sha256).digest()[:8]


def test_frame_literal_layout_and_round_trip():
    m = link.Mac(b"k" * 16)
    f = link.pack(m, link.KIND_DATA, DEV, HUB, 0x01020304, 0x0019, b"\x19\x03\x00\x00\x64")
    assert f[:23] == bytes.fromhex("00" "0807060504030201" "a1a2a3a4a5a6a7a8" "04030201" "1900")
    assert f[23:28] == b"\x19\x03\x00\x00\x64" and len(f) == 28 + 8
    kind, src, dst, ctr, cl, payload = link.unpack(f, lambda s: m if s == DEV else None)
    assert (kind, src, dst, ctr, cl, bytes(payload)) == (0, DEV, HUB, 0x01020304, 0x19, b"\x19\x03\x00\x00\x64")


@pytest.mark.parametrize("pos", [0, 1, 10, 17, 21, 23, 30, 35])
def test_any_flipped_bit_fails_authentication(pos):
    m = link.Mac(b"k" * 16)
    f = bytearray(link.pack(m, link.KIND_DATA, DEV, HUB, 5, 0x19, b"payload"))
    f[pos] ^= 0x01
    with pytest.raises(LinkError) as ei:
        link.unpack(bytes(f), lambda s: m)
    assert ei.value.reason in ("bad-mac", "kind")


def test_wrong_key_unknown_sender_short_long():
    f = link.pack(link.Mac(b"a" * 16), 0, DEV, HUB, 1, 0x19, b"x")
    with pytest.raises(LinkError) as ei:
        link.unpack(f, lambda s: link.Mac(b"b" * 16))
    assert ei.value.reason == "bad-mac"
    with pytest.raises(LinkError) as ei:
        link.unpack(f, lambda s: None)
    assert ei.value.reason == "unknown-sender"
    with pytest.raises(LinkError) as ei:
        link.unpack(f[:20], lambda s: None)
    assert ei.value.reason == "short"
    with pytest.raises(LinkError) as ei:
        link.unpack(bytes(400), lambda s: None)
    assert ei.value.reason == "long"


def test_replay_window():
    r = link.Replay()
    r.check(DEV, 5)
    r.check(DEV, 6)
    r.check(HUB, 1)
    for old in (6, 5, 0):
        with pytest.raises(LinkError) as ei:
            r.check(DEV, old)
        assert ei.value.reason == "replay"


def test_join_payloads_round_trip():
    p = link.pack_join_req(link.SERVICE_ALT_HAN_P2P, "althan", 0x1234, 0x85, 0x0101, 0x00020000, b"n" * 8)
    assert link.parse_join_req(p) == (1, "althan", 0x1234, 0x85, 0x0101, 0x00020000, b"n" * 8)
    r = link.pack_join_rsp(link.JOIN_ALT_HAN_REFUSED, HUB, 77, b"n" * 8)
    assert link.parse_join_rsp(r) == (2, HUB, 77, b"n" * 8)
    with pytest.raises(LinkError):
        link.parse_join_req(p[:-1])


def test_slip_round_trip_with_special_bytes_and_noise():
    frames = [bytes([0xC0, 0xDB, 1, 2, 0xC0]), bytes(range(256))[:200], b"\xdb\xdc\xdd"]
    stream = b"\x00garbage" + b"".join(link.slip_encode(f) for f in frames)
    d = link.SlipDecoder()
    for i in range(0, len(stream), 3):
        d.feed(stream[i:i + 3])
    assert [d.pop() for _ in frames] == frames
    assert d.pop() is None


def test_slip_drops_corrupt_and_oversize_frames():
    good = link.slip_encode(b"hello world")
    bad = bytearray(good)
    bad[3] ^= 0xFF
    d = link.SlipDecoder()
    d.feed(bytes(bad) + b"\xc0" + b"x" * 1000 + b"\xc0" + good)
    assert d.pop() == b"hello world" and d.pop() is None
    assert d.bad == 2


def test_feed_frame_stops_at_each_frame_and_gives_a_view_of_its_buffer():
    frames = [b"one" * 50, bytes([0xC0, 0xDB]) * 9, b"three"]
    bad = bytearray(link.slip_encode(b"corrupt"))
    bad[2] ^= 0xFF
    wire = link.slip_encode(frames[0]) + bytes(bad) + b"".join(link.slip_encode(f) for f in frames[1:])
    for step in (1, 7, 256, len(wire)):  # reads of any size, frames running into each other
        d = link.SlipDecoder()
        got = []
        for a in range(0, len(wire), step):
            end = min(a + step, len(wire))
            i = a
            while i < end:
                i = d.feed_frame(wire, i, end)
                if d.frame is not None:
                    assert isinstance(d.frame, memoryview) and d.frame.obj is d._buf
                    got.append(bytes(d.frame))
        assert got == frames, step
        assert d.bad == 1


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_decoders_only_raise_link_errors(data):
    d = link.SlipDecoder()
    d.feed(data)
    m = link.Mac(b"k" * 16)
    try:
        link.unpack(data, lambda s: m)
    except LinkError:
        pass


def test_bundle_round_trip_and_literal_layout():
    items = [b"\x19\x05\x05" + bytes(14) + b"abc", b"\x18\x01", bytes(range(256)) * 2]
    p = link.pack_bundle(items)
    assert p[:2] == (20).to_bytes(2, "little") and p[2:22] == items[0]
    assert [bytes(x) for x in link.split_bundle(p)] == items
    m = link.Mac(b"k" * 16)
    f = link.pack(m, link.KIND_BUNDLE, HUB, DEV, 9, 0x19, p)
    assert f[0] == 5 and len(f) == link.OVERHEAD + len(p)
    # longer than MAX_FRAME: only a receiver that takes long frames accepts it
    with pytest.raises(LinkError) as ei:
        link.unpack(f, lambda s: m)
    assert ei.value.reason == "long"
    kind, _, _, ctr, cl, payload = link.unpack(f, lambda s: m, link.RX_FRAME)
    assert (kind, ctr, cl, [bytes(x) for x in link.split_bundle(payload)]) == (5, 9, 0x19, items)


@pytest.mark.parametrize("payload,why", [
    (b"", "empty bundle"),
    (b"\x05", "inside an item length"),
    (b"\x00\x00", "empty bundle item"),
    (b"\x03\x00ab", "overruns"),
    (b"\x02\x00ab\x09\x00abc", "overruns"),
])
def test_malformed_bundles_are_named(payload, why):
    with pytest.raises(LinkError) as ei:
        link.split_bundle(payload)
    assert ei.value.reason == "malformed" and why in str(ei.value)


def test_hello_says_how_long_a_frame_its_sender_takes():
    old = link.pack_hello(b"n" * 8, 0x20000)
    new = link.pack_hello(b"n" * 8, 0x20000, 4480)
    assert len(old) == 12 and new[:12] == old and new[12:] == (4480).to_bytes(2, "little")
    assert link.parse_hello(old) == link.parse_hello(new) == (b"n" * 8, 0x20000)
    assert link.hello_rx_frame(old) == link.MAX_FRAME
    assert link.hello_rx_frame(new) == 4480
    # a device cannot ask for less than every device takes
    assert link.hello_rx_frame(link.pack_hello(b"n" * 8, 1, 100)) == link.MAX_FRAME
    for bad in (old[:-1], new + b"x"):
        with pytest.raises(LinkError):
            link.parse_hello(bad)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=20))
def test_any_bundle_round_trips(items):
    assert [bytes(x) for x in link.split_bundle(link.pack_bundle(items))] == items


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_bundle_splitter_only_raises_link_errors(data):
    try:
        items = link.split_bundle(data)
    except LinkError as e:
        assert e.reason == "malformed"
    else:
        assert sum(2 + len(x) for x in items) == len(data)
