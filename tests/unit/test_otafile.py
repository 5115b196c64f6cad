"""hanfw.otafile: the Zigbee OTA file format, byte by byte, and the streaming parser."""
import hashlib
import struct

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from hanfw import otafile
from hanfw.otafile import Header, OtaError, OtaStream, parse_stream
from hanota import images
from hanota.keys import raw_point
from support.otabuild import element, header, new_key, unsigned_file

# A header with every optional field, written out byte by byte.
FULL_HEADER = bytes.fromhex(
    "1ef1ee0b"  # file identifier 0x0BEEF11E
    "0001"  # header version 0x0100
    "4500"  # header length 69
    "0700"  # field control: credential, destination, hardware versions
    "3412"  # manufacturer 0x1234
    "8400"  # image type 0x0084
    "04030201"  # file version 0x01020304
    "0200"  # stack version PRO
    + b"hanota".hex() + "00" * 26 +  # header string
    "00100000"  # total image size 4096
    "02"  # security credential version
    "7766554433221100"  # destination 00:11:22:33:44:55:66:77, little-endian
    "0001"  # min hardware 0x0100
    "0002"  # max hardware 0x0200
)

PLAIN_HEADER = bytes.fromhex(
    "1ef1ee0b" "0001" "3800" "0000" "3412" "8600" "ffffff00" "0200"
    + b"x".hex() + "00" * 31 + "78000000")


def test_full_header_packs_to_literal_bytes():
    h = Header(manufacturer=0x1234, image_type=0x0084, file_version=0x01020304, stack_version=2,
               header_string=b"hanota", total_size=4096, security_credential=2,
               destination=bytes.fromhex("7766554433221100"), min_hw=0x0100, max_hw=0x0200)
    assert h.field_control == 0x0007
    assert h.header_length == 69
    assert h.pack() == FULL_HEADER


def test_full_header_parses_every_field():
    h = Header.parse(FULL_HEADER)
    assert (h.header_version, h.field_control, h.manufacturer, h.image_type) == (0x0100, 7, 0x1234, 0x84)
    assert (h.file_version, h.stack_version, h.total_size) == (0x01020304, 2, 4096)
    assert h.header_string_text() == "hanota"
    assert h.security_credential == 2
    assert h.destination == bytes.fromhex("7766554433221100")
    assert (h.min_hw, h.max_hw) == (0x0100, 0x0200)
    assert h.pack() == FULL_HEADER  # byte-exact round trip


def test_plain_header_round_trip():
    h = Header.parse(PLAIN_HEADER)
    assert h.header_length == 56 and h.field_control == 0
    assert h.image_type == 0x0086 and h.file_version == 0x00FFFFFF and h.total_size == 120
    assert h.destination is None and h.min_hw is None and h.security_credential is None
    assert h.pack() == PLAIN_HEADER


@pytest.mark.parametrize("fc,length", [(0, 56), (1, 57), (2, 64), (4, 60), (6, 68), (7, 69)])
def test_header_length_follows_field_control(fc, length):
    assert otafile.header_length_for(fc) == length


def test_element_header_literal():
    assert otafile.pack_element_header(0xF0A1, 72) == bytes.fromhex("a1f048000000")


def test_descriptor_literal_and_round_trip():
    d = otafile.Descriptor(otafile.PAYLOAD_ROMFS, 7, otafile.BOARD_FAMILIES["nrf52840"], bytes(range(32)))
    raw = d.pack()
    assert raw == bytes.fromhex("01" "02" "0300" "07000000") + bytes(range(32))
    back = otafile.Descriptor.parse(raw)
    assert (back.payload_kind, back.security_version, back.board_family, back.image_hash) == \
        (2, 7, 3, bytes(range(32)))


# ------------------------------------------------------------------ streaming

@pytest.fixture(scope="module")
def signed():
    key = new_key()
    payload = bytes((i * 7 + 3) & 0xFF for i in range(3000))
    data = images.build_image(payload, key=key, version=0x00010002, role="hcalcs",
                              min_hw=1, max_hw=9, security_version=4)
    return key, payload, data


@pytest.mark.parametrize("block", [1, 2, 5, 6, 7, 16, 63, 64, 100, 255, 256])
def test_stream_any_block_size_gives_same_facts(signed, block):
    key, payload, data = signed
    got = bytearray()
    s = parse_stream(data, block=block, sink=got.extend)
    assert bytes(got) == payload
    assert s.image_sha256 == hashlib.sha256(payload).digest() == s.descriptor.image_hash
    assert [(t, n) for t, n, _ in s.elements] == [(0xF0A0, 40), (0, 3000), (0xF0A1, 72)]
    sig_elem_offset = s.elements[2][2]
    assert s.signed_digest == hashlib.sha256(data[:sig_elem_offset]).digest()
    assert s.descriptor.security_version == 4
    assert s.header.image_type == 0x0086 and s.header.file_version == 0x00010002
    assert s.received == len(data) == s.header.total_size
    assert s.format == "zigbee" and s.integrity_ok is None


def test_header_is_known_before_the_body(signed):
    _, _, data = signed
    s = OtaStream()
    s.feed(data[:80])
    assert s.header is not None and s.header.image_type == 0x0086
    assert s.image_length < 100


def test_check_signed_accepts_the_signing_key(signed):
    key, _, data = signed
    s = parse_stream(data)
    pub = raw_point(key.public_key())
    assert otafile.check_signed(s, [b"\x04" + bytes(64), pub]) == pub


# ------------------------------------------------------------------ malformed, one test each

def reason_of(data, **kw):
    with pytest.raises(OtaError) as ei:
        parse_stream(data, **kw)
    return ei.value.reason


def test_wrong_magic(signed):
    data = bytearray(signed[2])
    data[0] ^= 0xFF
    assert reason_of(bytes(data)) == "bad-magic"


def test_wrong_header_version(signed):
    data = bytearray(signed[2])
    data[4:6] = b"\x00\x02"
    assert reason_of(bytes(data)) == "bad-header-version"


def test_header_length_disagreeing_with_field_control():
    f = unsigned_file([element(0, b"abc")], fc=4, hlen=56)
    assert reason_of(f) == "header-length"


def test_truncated_header(signed):
    for n in (0, 5, 9, 10, 30, 59):
        with pytest.raises(OtaError) as ei:
            parse_stream(signed[2][:n])
        assert ei.value.reason == "truncated-header", n


def test_truncated_file(signed):
    data = signed[2]
    for n in (75, 1000, len(data) - 1):
        assert reason_of(data[:n]) == "truncated"


def test_total_size_below_header_length():
    f = header(40)
    assert reason_of(f) == "total-size"


def test_sub_element_overrunning_total_size():
    body = struct.pack("<HI", 0, 100) + bytes(50)
    f = header(56 + len(body)) + body
    assert reason_of(f) == "element-overrun"


def test_stray_bytes_too_short_for_an_element():
    f = unsigned_file([element(0, b"abc"), b"\x01\x02\x03"])
    assert reason_of(f) == "element-overrun"


def test_trailing_bytes(signed):
    assert reason_of(signed[2] + b"\x00") == "trailing-bytes"


def test_missing_upgrade_image():
    desc = otafile.Descriptor(0, 0, 0, bytes(32)).pack()
    f = unsigned_file([element(0x0004, b"picture"), element(0xF0A0, desc)])
    assert reason_of(f) == "no-upgrade-image"


def test_no_elements_at_all():
    assert reason_of(header(56)) == "no-upgrade-image"


def test_duplicate_upgrade_image():
    f = unsigned_file([element(0, b"a"), element(0, b"b")])
    assert reason_of(f) == "duplicate-upgrade-image"


def test_signature_not_last(signed):
    _, _, data = signed
    f = unsigned_file([element(0, b"abc"), element(0xF0A1, bytes(72)), element(0x0004, b"x")])
    assert reason_of(f) == "signature-not-last"
    # our own signed file with an element added after the signature, total size fixed up
    extra = element(0xF0B0, b"late")
    grown = bytearray(data + extra)
    grown[52:56] = struct.pack("<I", len(grown))
    assert reason_of(bytes(grown)) == "signature-not-last"


def test_bad_signature_element_length():
    f = unsigned_file([element(0, b"abc"), element(0xF0A1, bytes(71))])
    assert reason_of(f) == "bad-signature-element"


def test_bad_descriptor_length_and_version():
    assert reason_of(unsigned_file([element(0, b"a"), element(0xF0A0, bytes(39))])) == "bad-descriptor"
    bad = bytes([9]) + bytes(39)
    assert reason_of(unsigned_file([element(0, b"a"), element(0xF0A0, bad)])) == "bad-descriptor"


def test_too_big_for_the_bank(signed):
    with pytest.raises(OtaError) as ei:
        parse_stream(signed[2], max_total=1000)
    assert ei.value.reason == "too-big"


# ------------------------------------------------------------------ integrity code (AES-128-MMO)

def mmo_reference(data: bytes) -> bytes:
    """An independent, whole-buffer AES-MMO for cross-checking the streaming one."""
    n = len(data)
    if n * 8 < 0x10000:
        pad = b"\x80" + bytes((14 - (n + 1) % 16) % 16) + struct.pack(">H", n * 8)
    else:
        pad = b"\x80" + bytes((10 - (n + 1) % 16) % 16) + struct.pack(">I", n * 8) + b"\0\0"
    msg = data + pad
    assert len(msg) % 16 == 0
    h = bytes(16)
    for i in range(0, len(msg), 16):
        m = msg[i:i + 16]
        e = Cipher(algorithms.AES(h), modes.ECB()).encryptor().update(m)
        h = bytes(a ^ b for a, b in zip(e, m))
    return h


@pytest.mark.parametrize("size", [0, 1, 13, 14, 15, 16, 100, 8190, 8191, 8192, 9000])
def test_mmo_matches_reference_across_padding_boundaries(size):
    from hanfw.mmo import Mmo
    data = bytes((i * 31) & 0xFF for i in range(size))
    m = Mmo()
    for i in range(0, size, 37):
        m.update(data[i:i + 37])
    assert m.digest() == mmo_reference(data)


def with_integrity(payload: bytes, corrupt: bool = False) -> bytes:
    first = element(0, payload)
    total = 56 + len(first) + 6 + 16
    prefix = header(total) + first + struct.pack("<HI", 3, 16)
    code = mmo_reference(prefix[:-6])
    if corrupt:
        code = bytes([code[0] ^ 1]) + code[1:]
    return prefix + code


def test_integrity_code_verified():
    s = parse_stream(with_integrity(b"hello" * 100))
    assert s.integrity_ok is True
    s.check_integrity()


def test_bad_integrity_code():
    s = parse_stream(with_integrity(b"hello" * 100, corrupt=True))
    assert s.integrity_ok is False
    with pytest.raises(OtaError) as ei:
        s.check_integrity()
    assert ei.value.reason == "integrity-code"


# ------------------------------------------------------------------ the GB flavour

GB_PPMID_HEADER = dict(fc=4, mfr=0x121D, itype=0x0084, fver=0xACDCACDC,
                       string=b"I am a GFI PPMID firmware image ", extra=struct.pack("<HH", 0x1111, 0x1211))


def gb_raw_file(body: bytes) -> bytes:
    return header(60 + len(body), **GB_PPMID_HEADER) + body


def test_gb_raw_flavour_is_read_when_allowed():
    body = bytes([0x5A, 0x17]) + bytes((i * 13) & 0xFF for i in range(233))
    data = gb_raw_file(body)
    got = bytearray()
    for block in (1, 3, 64):
        got.clear()
        s = parse_stream(data, block=block, allow_raw=True, sink=got.extend)
        assert s.format == "gb-raw"
        assert bytes(got) == body and s.image_length == 235
        assert s.header.min_hw == 0x1111 and s.header.max_hw == 0x1211
        assert s.elements == []


def test_gb_raw_flavour_is_not_accepted_by_the_strict_parser():
    body = bytes([0x5A, 0x17]) + bytes(233)
    with pytest.raises(OtaError):
        parse_stream(gb_raw_file(body))


def test_gb_raw_body_shorter_than_an_element_header():
    s = parse_stream(gb_raw_file(b"\x01\x02\x03"), allow_raw=True)
    assert s.format == "gb-raw" and s.image_length == 3


def test_zigbee_file_still_zigbee_with_allow_raw(signed):
    s = parse_stream(signed[2], allow_raw=True)
    assert s.format == "zigbee"


# ------------------------------------------------------------------ foreign files (tests/vectors)

def test_vector_with_integrity_code(vectors_dir):
    path = vectors_dir / "herdsman-integrity-code-1166-012B-24031511.zigbee"
    data = path.read_bytes()
    s = parse_stream(data, block=256, allow_raw=True)
    h = s.header
    assert len(data) == 268720 == h.total_size
    assert (h.header_length, h.field_control, h.manufacturer, h.image_type) == (60, 4, 0x1166, 0x012B)
    assert (h.file_version, h.stack_version, h.header_string_text()) == (0x24031511, 2, "Light")
    assert [(t, n) for t, n, _ in s.elements] == [(0, 268632), (3, 16)]
    assert s.integrity_value.hex() == "cb65ccce17411d7c763adad14668de74"
    assert s.integrity_ok is True
    assert s.sig is None


def test_vector_with_integrity_code_tampered(vectors_dir):
    data = bytearray((vectors_dir / "herdsman-integrity-code-1166-012B-24031511.zigbee").read_bytes())
    data[1000] ^= 0x01
    s = parse_stream(bytes(data))
    assert s.integrity_ok is False


def test_vector_zbminir2(vectors_dir):
    data = (vectors_dir / "herdsman-zbminir2_v1.0.8.ota").read_bytes()
    s = parse_stream(data, block=200)
    h = s.header
    assert len(data) == 277180 == h.total_size
    assert (h.header_length, h.field_control, h.manufacturer, h.image_type) == (56, 0, 0x1286, 0x0008)
    assert (h.file_version, h.header_string_text()) == (0x00001008, "ota-file-test")
    assert [(t, n) for t, n, _ in s.elements] == [(0, 277118)]
    assert s.integrity_ok is None


@pytest.mark.parametrize("name", ["herdsman-integrity-code-1166-012B-24031511.zigbee",
                                  "herdsman-zbminir2_v1.0.8.ota"])
def test_vectors_rejected_as_unsigned(vectors_dir, name):
    s = parse_stream((vectors_dir / name).read_bytes())
    with pytest.raises(OtaError) as ei:
        otafile.check_signed(s, [])
    assert ei.value.reason == "unsigned"
