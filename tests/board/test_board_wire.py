"""ZCL and link frames: the host packs (hanfw under CPython), the board parses and re-packs."""
import hashlib
import random

import pytest

from hanfw import link, zcl

IEEE = bytes.fromhex("7766554433221100")
HASH = bytes(range(32))

# name, parser, packer, packer arguments on the host, how the board gets them from its parse
ZCL = [
    ("image_notify", "parse_image_notify", "pack_image_notify", (3, 1, 0x1234, 0x84, 0x01020304), ":"),
    ("query_next_image", "parse_query_next_image", "pack_query_next_image", (0x1234, 0x84, 0x01020304, 2), ":"),
    ("query_next_image_response", "parse_query_next_image_response", "pack_query_next_image_response",
     (0, 0x1234, 0x84, 0x01020305, 4096), ":"),
    ("no_image_available", "parse_query_next_image_response", "pack_query_next_image_response", (0x98,), ":1"),
    ("block_request", "parse_block_request", "pack_block_request", (0x1234, 1, 0x01020304, 64, 48, IEEE, 250), ":"),
    ("page_request", "parse_page_request", "pack_page_request",
     (0x1234, 1, 0x01020304, 256, 64, 1024, 50, IEEE), ":"),
    ("block_response", "parse_block_response", "pack_block_response",
     (0x1234, 1, 0x01020304, 0x200, bytes(range(200))), "1:6"),
    ("block_wait", "parse_block_response", "pack_block_wait", (0, 30, 0), "6:9"),
    ("upgrade_end", "parse_upgrade_end", "pack_upgrade_end", (0x96, 0x1234, 1, 0x01020304), ":"),
    ("upgrade_end_response", "parse_upgrade_end_response", "pack_upgrade_end_response",
     (0x1234, 0x84, 0x01020305, 0, 0xFFFFFFFF), ":"),
    ("query_specific_file", "parse_query_specific_file", "pack_query_specific_file",
     (IEEE, 0x1234, 0x84, 0x01020305, 2), ":"),
    ("activate_image", "parse_activate_image", "pack_activate_image", (HASH, 0, 7), ":"),
    ("activation_alert", "parse_activation_alert", "pack_activation_alert",
     (0x01020304, 0x01020305, True, 1, 0x2CC9C380), ":"),
    ("read_attributes", "parse_read_attributes", "pack_read_attributes", ([2, 6],), "list"),
    ("read_attributes_response", "parse_read_attributes_response", "pack_read_attributes_response",
     ([(2, 0, 0x23, 0x01020305), (6, 0, 0x30, 1), (0, 0, 0xF0, IEEE), (0x55, 0x86, None, None)],), "list"),
    ("default_response", "parse_default_response", "pack_default_response", (6, 0), ":"),
]


def sha(b):
    return hashlib.sha256(b).hexdigest()


def plain(v):
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).hex()
    if isinstance(v, (tuple, list)):
        return [plain(x) for x in v]
    return v


@pytest.mark.parametrize("name,parser,packer,args,spec", ZCL, ids=[z[0] for z in ZCL])
def test_zcl_round_trip(board, on_board, name, parser, packer, args, spec):
    board.need("hanfw.zcl", "bchk", "bchk_wire")
    payload = getattr(zcl, packer)(*args)
    got = on_board("import bchk_wire\nbchk_wire.zcl_rt(%r, %r, %r, %r)" % (parser, packer, payload.hex(), spec))
    assert got["repacked"] == payload.hex()
    assert got["parsed"] == plain(getattr(zcl, parser)(payload))


def test_zcl_header_and_payload_at_an_offset(board, on_board):
    board.need("hanfw.zcl", "bchk", "bchk_wire")
    frame = zcl.pack_header(0x0D, 7, zcl.CMD_ACTIVATE_IMAGE, 0x125D) + zcl.pack_activate_image(HASH, 0, 7)
    got = on_board("import bchk_wire\nbchk_wire.zcl_header(%r)" % frame.hex())
    assert got == {"header": [0x0D, 0x125D, 7, zcl.CMD_ACTIVATE_IMAGE, 5], "repacked": frame[:5].hex()}
    got = on_board("import bchk_wire\nbchk_wire.zcl_rt('parse_activate_image', 'pack_activate_image', %r, ':', 5)"
                   % frame.hex())
    assert got["repacked"] == frame[5:].hex()


@pytest.mark.parametrize("parser,payload", [("parse_image_notify", "0065"), ("parse_query_next_image", "0134"),
                                            ("parse_default_response", "060000")])
def test_zcl_malformed_payload_is_refused_with_its_status(board, on_board, parser, payload):
    board.need("hanfw.zcl", "bchk", "bchk_wire")
    got = on_board("import bchk_wire\nbchk_wire.zcl_rt(%r, 'pack_default_response', %r, ':')" % (parser, payload))
    assert got["status"] == zcl.MALFORMED_COMMAND and got["reason"]


KEY = bytes(range(16, 32))
HUB = b"\xa1" * 8
DEV = bytes.fromhex("0102030405060708")


@pytest.mark.parametrize("kind,length", [(link.KIND_DATA, 40), (link.KIND_HELLO, 0), (link.KIND_BUNDLE, 3000)])
def test_link_frame_round_trip(board, on_board, kind, length):
    board.need("hanfw.link", "bchk", "bchk_wire")
    payload = random.Random(length).randbytes(length)
    if kind == link.KIND_HELLO:
        payload = link.pack_hello(b"n" * 8, 0x20000, link.RX_FRAME)
    frame = link.pack(link.Mac(KEY), kind, HUB, DEV, 0x01020304, 0x19, payload)
    board.put_buffer("_f", frame)
    got = on_board("import bchk_wire\nbchk_wire.frame_rt(_f, %r, %d)\n_f = None" % (KEY.hex(), link.RX_FRAME))
    assert got == {"fields": [kind, HUB.hex(), DEV.hex(), 0x01020304, 0x19, sha(payload)], "repacked": sha(frame)}


@pytest.mark.parametrize("what,reason", [("mac", "bad-mac"), ("key", "bad-mac"), ("long", "long"),
                                         ("short", "short")])
def test_link_frame_refused_with_its_reason(board, on_board, what, reason):
    board.need("hanfw.link", "bchk", "bchk_wire")
    frame = bytearray(link.pack(link.Mac(KEY), link.KIND_DATA, HUB, DEV, 9, 0x19,
                                bytes(400 if what == "long" else 20)))
    key = KEY
    if what == "mac":
        frame[30] ^= 1
    elif what == "key":
        key = bytes(16)
    elif what == "short":
        frame = frame[:30]
    got = on_board("import bchk_wire\nbchk_wire.frame_rt(%r, %r, %d)" % (bytes(frame).hex(), key.hex(), link.MAX_FRAME))
    assert got == {"error": reason}


def test_bundle_of_sixteen_blocks_round_trip(board, on_board):
    board.need("hanfw.link", "bchk", "bchk_wire")
    items = [bytes([i]) * 272 for i in range(16)]
    payload = link.pack_bundle(items)
    board.put_buffer("_f", payload)
    got = on_board("import bchk_wire\nbchk_wire.bundle_rt(_f)\n_f = None")
    assert got == {"items": [sha(x) for x in items], "repacked": sha(payload)}


def test_slip_frames_with_escapes_round_trip(board, on_board):
    board.need("hanfw.link", "bchk", "bchk_wire")
    frames = [bytes([0xC0, 0xDB, 1, 2, 0xC0] * 10), link.pack(link.Mac(KEY), 0, HUB, DEV, 1, 0x19, b"\xc0" * 9)]
    wire = b"".join(link.slip_encode(f) for f in frames)
    corrupt = bytearray(link.slip_encode(b"abcdefgh"))
    corrupt[3] ^= 1
    got = on_board("import bchk_wire\nbchk_wire.slip_rt(%r)" % (wire + bytes(corrupt)).hex())
    assert got == {"frames": [f.hex() for f in frames], "bad": 1,
                   "repacked": [link.slip_encode(f).hex() for f in frames]}


def test_join_request_and_response_round_trip(board, on_board):
    board.need("hanfw.link", "bchk", "bchk_wire")
    req = link.pack_join_req(link.SERVICE_ORDINARY, "ppmid", 0x1234, 0x84, 0x0100, 0x00010002, b"N" * 8)
    rsp = link.pack_join_rsp(link.JOIN_OK, HUB, 77, b"N" * 8)
    got = on_board("import bchk_wire\nbchk_wire.join_rt(%r, %r)" % (req.hex(), rsp.hex()))
    assert got["repacked"] == [req.hex(), rsp.hex()]
    assert got["req"][1] == "ppmid"


def test_link_key_from_install_code_matches_the_host(board, on_board):
    # AES-MMO on the board: cryptolib where the port has it, hanfw's own AES on nRF
    board.need("hanfw.link", "bchk", "bchk_wire")
    code = link.install_code_with_crc(bytes.fromhex("83FED3407A939723A5C639B26916D505"))
    got = on_board("import bchk_wire\nbchk_wire.key_of(%r)" % code.hex(), timeout=120)
    assert got == {"key": link.link_key(code).hex()}
    bad = code[:-1] + bytes([code[-1] ^ 1])
    assert on_board("import bchk_wire\nbchk_wire.key_of(%r)" % bad.hex()) == {"error": "install-code"}
