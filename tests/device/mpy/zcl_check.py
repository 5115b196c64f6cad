# hanfw.zcl on the real MicroPython: literal fixtures, round trips, errors, zero-copy blocks.
# Prints one line per failure and "zcl_check ok N" at the end; exits 1 on any failure.
import sys

from hanfw import zcl

H = bytes.fromhex
IEEE = H("7766554433221100")
HASH = bytes(range(32))
failures = []
checks = [0]


def check(name, cond):
    checks[0] += 1
    if not cond:
        failures.append(name)
        print("FAIL", name)


def raises(name, status, fn, *args):
    try:
        fn(*args)
    except zcl.ZclError as e:
        check(name, e.status == status and isinstance(e.reason, str))
        return
    except Exception as e:
        check(name + " raised %r" % e, False)
        return
    check(name + " did not raise", False)


# name, parser, payload hex, expected, packer, packer args
FIXTURES = (
    ("notify0", zcl.parse_image_notify, "0064", (0, 100, None, None, None),
     zcl.pack_image_notify, (0, 100)),
    ("notify3", zcl.parse_image_notify, "03013412840004030201", (3, 1, 0x1234, 0x84, 0x01020304),
     zcl.pack_image_notify, (3, 1, 0x1234, 0x84, 0x01020304)),
    ("qnir_hw", zcl.parse_query_next_image, "013412840004030201" "0200",
     (0x1234, 0x84, 0x01020304, 2), zcl.pack_query_next_image, (0x1234, 0x84, 0x01020304, 2)),
    ("qnir_rsp", zcl.parse_query_next_image_response, "003412840005030201" "00100000",
     (0, 0x1234, 0x84, 0x01020305, 4096), zcl.pack_query_next_image_response,
     (0, 0x1234, 0x84, 0x01020305, 4096)),
    ("qnir_rsp_none", zcl.parse_query_next_image_response, "98", (0x98, None, None, None, None),
     zcl.pack_query_next_image_response, (0x98,)),
    ("block_req", zcl.parse_block_request, "02341201000403020140000000" "30fa00",
     (0x1234, 1, 0x01020304, 64, 48, None, 250),
     zcl.pack_block_request, (0x1234, 1, 0x01020304, 64, 48, None, 250)),
    ("block_req_ieee", zcl.parse_block_request,
     "03341201000403020140000000" "30" "7766554433221100" "fa00",
     (0x1234, 1, 0x01020304, 64, 48, IEEE, 250),
     zcl.pack_block_request, (0x1234, 1, 0x01020304, 64, 48, IEEE, 250)),
    ("page_req_ieee", zcl.parse_page_request,
     "01341201000403020100010000" "40" "0004" "3200" "7766554433221100",
     (0x1234, 1, 0x01020304, 256, 64, 1024, 50, IEEE),
     zcl.pack_page_request, (0x1234, 1, 0x01020304, 256, 64, 1024, 50, IEEE)),
    ("block_wait", zcl.parse_block_response, "97" "00000000" "1e000000" "0000",
     (0x97, None, None, None, None, None, 0, 30, 0), zcl.pack_block_wait, (0, 30, 0)),
    ("block_abort", zcl.parse_block_response, "95", (0x95,) + (None,) * 8,
     zcl.pack_block_abort, ()),
    ("upgrade_end", zcl.parse_upgrade_end, "963412010004030201", (0x96, 0x1234, 1, 0x01020304),
     zcl.pack_upgrade_end, (0x96, 0x1234, 1, 0x01020304)),
    ("upgrade_end_rsp", zcl.parse_upgrade_end_response,
     "3412840005030201" "00000000" "ffffffff", (0x1234, 0x84, 0x01020305, 0, 0xFFFFFFFF),
     zcl.pack_upgrade_end_response, (0x1234, 0x84, 0x01020305, 0, 0xFFFFFFFF)),
    ("qdsf", zcl.parse_query_specific_file, "7766554433221100" "34128400050302010200",
     (IEEE, 0x1234, 0x84, 0x01020305, 2),
     zcl.pack_query_specific_file, (IEEE, 0x1234, 0x84, 0x01020305, 2)),
    ("activate", zcl.parse_activate_image, HASH.hex() + "00000000" "07000000", (HASH, 0, 7),
     zcl.pack_activate_image, (HASH, 0, 7)),
    ("activate_rsp", zcl.parse_activate_image_response, "02" "05030201" "07000000",
     (2, 0x01020305, 7), zcl.pack_activate_image_response, (2, 0x01020305, 7)),
    ("alert", zcl.parse_activation_alert, "04030201" "05030201" "01" "01" "80c3c92c",
     (0x01020304, 0x01020305, 1, 1, 0x2CC9C380),
     zcl.pack_activation_alert, (0x01020304, 0x01020305, True, 1, 0x2CC9C380)),
    ("read_attrs", zcl.parse_read_attributes, "02000600", (2, 6),
     zcl.pack_read_attributes, ([2, 6],)),
    ("read_attrs_rsp", zcl.parse_read_attributes_response,
     "0200002305030201" "0600003001" "000000f07766554433221100" "550086",
     [(2, 0, 0x23, 0x01020305), (6, 0, 0x30, 1), (0, 0, 0xF0, IEEE), (0x55, 0x86, None, None)],
     zcl.pack_read_attributes_response,
     ([(2, 0, 0x23, 0x01020305), (6, 0, 0x30, 1), (0, 0, 0xF0, IEEE), (0x55, 0x86, None, None)],)),
    ("default_rsp", zcl.parse_default_response, "0600", (6, 0), zcl.pack_default_response, (6, 0)),
)

for name, parse, hexa, expected, pack, args in FIXTURES:
    raw = H(hexa)
    check(name + " parse", tuple(parse(raw)) == tuple(expected))
    check(name + " pack", pack(*args) == raw)
    frame = zcl.pack_header(0x01, 5, 0, 0x125D) + raw
    check(name + " parse at offset", tuple(parse(frame, 5)) == tuple(expected))

# header and the Z2M Image Notify frame
frame = H("1903000064")
fc, mfr, tsn, cmd, off = zcl.parse_header(frame)
check("z2m header", (fc, mfr, tsn, cmd, off) == (0x19, None, 3, 0, 3))
check("z2m notify", zcl.parse_image_notify(frame, off).jitter == 100)
check("pack header", zcl.pack_header(zcl.frame_control(True, True, True), 3, 0) == H("190300"))
check("mfr header", zcl.pack_header(0x09, 7, 0xF0, 0x125D) == H("0d5d1207f0"))
check("parse mfr header", zcl.parse_header(H("0d5d1207f0")) == (0x0D, 0x125D, 7, 0xF0, 5))

# block response: literal, preallocated frame, view into the input
lit = H("00341201000403020100000000" "03aaaaaa")
check("block pack", zcl.pack_block_response(0x1234, 1, 0x01020304, 0, b"\xaa\xaa\xaa") == lit)
buf = bytearray(64)
mv = memoryview(buf)
h = zcl.pack_header_into(mv, 0, 0x09, 0x22, zcl.CMD_IMAGE_BLOCK_RESPONSE)
src = memoryview(bytearray(b"\x01\x02\x03\x04\x05"))
n = zcl.pack_block_response_into(mv, h, 0x1234, 1, 0x01020304, 0x100, src[1:4])
check("block into", bytes(buf[:h + n]) == H("092205" "00341201000403020100010000" "03020304"))
check("block header only", zcl.pack_block_response_header_into(mv, 3, 0x1234, 1, 0x01020304,
                                                               0x100, 3) == 14)
r = zcl.parse_block_response(buf[:h + n], h)
check("block parse", r[:5] == (0, 0x1234, 1, 0x01020304, 0x100)
      and bytes(r.data) == b"\x02\x03\x04")
inp = bytearray(lit)
r = zcl.parse_block_response(inp)
inp[-1] = 0x55
check("block data is a view", isinstance(r.data, memoryview) and bytes(r.data) == b"\xaa\xaa\x55")

# malformed payloads and refused arguments
M = zcl.MALFORMED_COMMAND
raises("hdr short", M, zcl.parse_header, b"\x19\x03")
raises("hdr frame type", M, zcl.parse_header, H("020100"))
raises("notify type 4", M, zcl.parse_image_notify, H("0464"))
raises("notify jitter 0", M, zcl.parse_image_notify, H("0000"))
raises("notify jitter 101", M, zcl.parse_image_notify, H("0065"))
raises("notify trailing", M, zcl.parse_image_notify, H("006400"))
raises("qnir hw missing", M, zcl.parse_query_next_image, H("013412840004030201"))
raises("block req trailing", M, zcl.parse_block_request, H("0034120100040302014000000030fa00"))
raises("block data short", M, zcl.parse_block_response, lit[:-1])
raises("block data long", M, zcl.parse_block_response, lit + b"\x00")
raises("wait truncated", M, zcl.parse_block_response, H("97000000001e00000000"))
raises("abort trailing", M, zcl.parse_block_response, H("9500"))
raises("activate truncated", M, zcl.parse_activate_image, HASH)
raises("activate code 4", zcl.INVALID_FIELD, zcl.parse_activate_image_response,
       H("040503020107000000"))
raises("alert rolled_back 2", zcl.INVALID_FIELD, zcl.parse_activation_alert,
       H("0403020105030201020180c3c92c"))
raises("read attrs odd", M, zcl.parse_read_attributes, H("020006"))
raises("read rsp type", zcl.INVALID_DATA_TYPE, zcl.parse_read_attributes_response, H("0200004201"))
raises("default trailing", M, zcl.parse_default_response, H("060000"))
raises("offset past end", M, zcl.parse_default_response, H("0600"), 3)
raises("pack jitter", zcl.INVALID_FIELD, zcl.pack_image_notify, 0, 0)
raises("pack data 256", zcl.INVALID_FIELD, zcl.pack_block_response, 1, 2, 3, 0, bytes(256))
raises("pack buffer small", zcl.INSUFFICIENT_SPACE, zcl.pack_block_response_into,
       bytearray(20), 3, 1, 2, 3, 0, bytes(4))

# every truncation of every fixture parses or raises ZclError, never anything else
for name, parse, hexa, expected, pack, args in FIXTURES:
    raw = H(hexa)
    for cut in range(len(raw)):
        try:
            parse(raw[:cut])
            checks[0] += 1
        except zcl.ZclError:
            checks[0] += 1
        except Exception as e:
            check("%s cut %d raised %r" % (name, cut, e), False)

check("status name", zcl.status_name(0x96) == "INVALID_IMAGE" and zcl.status_name(0x42) == "0x42")
check("code names", zcl.activate_code_name(2) == "HASH_MISMATCH"
      and zcl.alert_reason_name(3) == "UNCONFIRMED_REBOOT")

if failures:
    print("zcl_check FAILED %d of %d" % (len(failures), checks[0]))
    sys.exit(1)
print("zcl_check ok %d" % checks[0])
print("zcl loaded from", getattr(zcl, "__file__", "?"))
