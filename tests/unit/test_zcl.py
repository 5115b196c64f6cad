"""hanfw.zcl: literal bytes, round trips, malformed payloads, zigpy 2.4.0 cross-checks, fuzz."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hanfw import zcl
from hanfw.zcl import ZclError

H = bytes.fromhex
IEEE = H("7766554433221100")          # EUI-64 00:11:22:33:44:55:66:77 in wire order
HASH = bytes(range(32))


# ---- frame header ----

def test_image_notify_frame_from_z2m():
    frame = H("19 03 00 00 64")
    fc, mfr, tsn, cmd, off = zcl.parse_header(frame)
    assert (fc, mfr, tsn, cmd, off) == (0x19, None, 3, zcl.CMD_IMAGE_NOTIFY, 3)
    assert zcl.parse_image_notify(frame, off) == (0, 100, None, None, None)
    fc = zcl.frame_control(server_to_client=True, disable_default_response=True)
    assert zcl.pack_header(fc, 3, 0) + zcl.pack_image_notify(0, 100) == frame


def test_upgrade_end_request_frame():
    frame = H("01 36 06 96 3412 0100 04030201")
    assert zcl.parse_header(frame) == (0x01, None, 0x36, zcl.CMD_UPGRADE_END, 3)
    assert zcl.parse_upgrade_end(frame, 3) == (zcl.INVALID_IMAGE, 0x1234, 1, 0x01020304)


def test_manufacturer_header():
    fc = zcl.frame_control(server_to_client=True)
    assert fc == 0x09
    hdr = zcl.pack_header(fc, 7, zcl.CMD_ACTIVATE_IMAGE, manufacturer=0x125D)
    assert hdr == H("0d 5d12 07 f0")
    assert zcl.parse_header(hdr) == (0x0D, 0x125D, 7, 0xF0, 5)
    assert zcl.header_size(0x125D) == 5 and zcl.header_size() == 3


def test_global_header():
    fc = zcl.frame_control(cluster=False)
    assert zcl.pack_header(fc, 0x10, zcl.GLOBAL_READ_ATTRIBUTES) == H("00 10 00")
    assert zcl.parse_header(H("18 10 01")) == (0x18, None, 0x10, 1, 3)


# ---- literal fixtures: (parser, payload hex, expected tuple, packer, packer args) ----

FIXTURES = {
    "notify0": (zcl.parse_image_notify, "00 64", (0, 100, None, None, None),
                zcl.pack_image_notify, (0, 100)),
    "notify1": (zcl.parse_image_notify, "01 0a 3412", (1, 10, 0x1234, None, None),
                zcl.pack_image_notify, (1, 10, 0x1234)),
    "notify2": (zcl.parse_image_notify, "02 0a 3412 8400", (2, 10, 0x1234, 0x84, None),
                zcl.pack_image_notify, (2, 10, 0x1234, 0x84)),
    "notify3": (zcl.parse_image_notify, "03 01 3412 8400 04030201",
                (3, 1, 0x1234, 0x84, 0x01020304),
                zcl.pack_image_notify, (3, 1, 0x1234, 0x84, 0x01020304)),
    "qnir": (zcl.parse_query_next_image, "00 3412 8400 04030201",
             (0x1234, 0x84, 0x01020304, None),
             zcl.pack_query_next_image, (0x1234, 0x84, 0x01020304)),
    "qnir_hw": (zcl.parse_query_next_image, "01 3412 8400 04030201 0200",
                (0x1234, 0x84, 0x01020304, 2),
                zcl.pack_query_next_image, (0x1234, 0x84, 0x01020304, 2)),
    "qnir_rsp": (zcl.parse_query_next_image_response, "00 3412 8400 05030201 00100000",
                 (0, 0x1234, 0x84, 0x01020305, 4096),
                 zcl.pack_query_next_image_response, (0, 0x1234, 0x84, 0x01020305, 4096)),
    "qnir_rsp_none": (zcl.parse_query_next_image_response, "98",
                      (zcl.NO_IMAGE_AVAILABLE, None, None, None, None),
                      zcl.pack_query_next_image_response, (zcl.NO_IMAGE_AVAILABLE,)),
    "block_req": (zcl.parse_block_request, "00 3412 0100 04030201 40000000 30",
                  (0x1234, 1, 0x01020304, 64, 48, None, None),
                  zcl.pack_block_request, (0x1234, 1, 0x01020304, 64, 48)),
    "block_req_period": (zcl.parse_block_request, "02 3412 0100 04030201 40000000 30 fa00",
                         (0x1234, 1, 0x01020304, 64, 48, None, 250),
                         zcl.pack_block_request, (0x1234, 1, 0x01020304, 64, 48, None, 250)),
    "block_req_ieee": (zcl.parse_block_request,
                       "01 3412 0100 04030201 40000000 30 %s" % IEEE.hex(),
                       (0x1234, 1, 0x01020304, 64, 48, IEEE, None),
                       zcl.pack_block_request, (0x1234, 1, 0x01020304, 64, 48, IEEE)),
    "block_req_both": (zcl.parse_block_request,
                       "03 3412 0100 04030201 40000000 30 %s fa00" % IEEE.hex(),
                       (0x1234, 1, 0x01020304, 64, 48, IEEE, 250),
                       zcl.pack_block_request, (0x1234, 1, 0x01020304, 64, 48, IEEE, 250)),
    "page_req": (zcl.parse_page_request, "00 3412 0100 04030201 00010000 40 0004 3200",
                 (0x1234, 1, 0x01020304, 256, 64, 1024, 50, None),
                 zcl.pack_page_request, (0x1234, 1, 0x01020304, 256, 64, 1024, 50)),
    "page_req_ieee": (zcl.parse_page_request,
                      "01 3412 0100 04030201 00010000 40 0004 3200 %s" % IEEE.hex(),
                      (0x1234, 1, 0x01020304, 256, 64, 1024, 50, IEEE),
                      zcl.pack_page_request, (0x1234, 1, 0x01020304, 256, 64, 1024, 50, IEEE)),
    "block_wait": (zcl.parse_block_response, "97 00000000 1e000000 0000",
                   (zcl.WAIT_FOR_DATA, None, None, None, None, None, 0, 30, 0),
                   zcl.pack_block_wait, (0, 30, 0)),
    "block_abort": (zcl.parse_block_response, "95",
                    (zcl.ABORT, None, None, None, None, None, None, None, None),
                    zcl.pack_block_abort, ()),
    "block_malformed": (zcl.parse_block_response, "80",
                        (zcl.MALFORMED_COMMAND,) + (None,) * 8,
                        zcl.pack_block_abort, (zcl.MALFORMED_COMMAND,)),
    "upgrade_end": (zcl.parse_upgrade_end, "00 3412 8400 05030201",
                    (0, 0x1234, 0x84, 0x01020305),
                    zcl.pack_upgrade_end, (0, 0x1234, 0x84, 0x01020305)),
    "upgrade_end_rsp": (zcl.parse_upgrade_end_response, "3412 8400 05030201 00000000 ffffffff",
                        (0x1234, 0x84, 0x01020305, 0, zcl.UPGRADE_TIME_WAIT),
                        zcl.pack_upgrade_end_response, (0x1234, 0x84, 0x01020305, 0, 0xFFFFFFFF)),
    "qdsf": (zcl.parse_query_specific_file, "%s 3412 8400 05030201 0200" % IEEE.hex(),
             (IEEE, 0x1234, 0x84, 0x01020305, 2),
             zcl.pack_query_specific_file, (IEEE, 0x1234, 0x84, 0x01020305, 2)),
    "qdsf_rsp": (zcl.parse_query_specific_file_response, "00 3412 8400 05030201 2c010000",
                 (0, 0x1234, 0x84, 0x01020305, 300),
                 zcl.pack_query_specific_file_response, (0, 0x1234, 0x84, 0x01020305, 300)),
    "qdsf_rsp_denied": (zcl.parse_query_specific_file_response, "7e",
                        (zcl.NOT_AUTHORIZED, None, None, None, None),
                        zcl.pack_query_specific_file_response, (zcl.NOT_AUTHORIZED,)),
    "activate": (zcl.parse_activate_image, HASH.hex() + " 00000000 07000000",
                 (HASH, 0, 7), zcl.pack_activate_image, (HASH, 0, 7)),
    "activate_rsp": (zcl.parse_activate_image_response, "02 05030201 07000000",
                     (zcl.ACTIVATE_HASH_MISMATCH, 0x01020305, 7),
                     zcl.pack_activate_image_response, (2, 0x01020305, 7)),
    "alert": (zcl.parse_activation_alert, "04030201 05030201 01 01 80c3c92c",
              (0x01020304, 0x01020305, 1, zcl.ALERT_HEALTH_CHECK_FAILED, 0x2CC9C380),
              zcl.pack_activation_alert, (0x01020304, 0x01020305, True, 1, 0x2CC9C380)),
    "read_attrs": (zcl.parse_read_attributes, "0200 0600", (2, 6),
                   zcl.pack_read_attributes, ([2, 6],)),
    "read_attrs_rsp": (zcl.parse_read_attributes_response,
                       "0200 00 23 05030201  0600 00 30 01  0000 00 f0 %s  0900 00 21 fa00"
                       "  0700 00 20 07  5500 86" % IEEE.hex(),
                       [(2, 0, 0x23, 0x01020305), (6, 0, 0x30, 1), (0, 0, 0xF0, IEEE),
                        (9, 0, 0x21, 250), (7, 0, 0x20, 7), (0x55, zcl.UNSUPPORTED_ATTRIBUTE,
                                                             None, None)],
                       zcl.pack_read_attributes_response,
                       ([(2, 0, 0x23, 0x01020305), (6, 0, 0x30, 1), (0, 0, 0xF0, IEEE),
                         (9, 0, 0x21, 250), (7, 0, 0x20, 7), (0x55, 0x86, None, None)],)),
    "default_rsp": (zcl.parse_default_response, "06 00", (6, 0),
                    zcl.pack_default_response, (6, 0)),
}


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_fixture_parse(name):
    parse, hexa, expected, _, _ = FIXTURES[name]
    assert parse(H(hexa)) == expected


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_fixture_pack(name):
    _, hexa, _, pack, args = FIXTURES[name]
    assert pack(*args) == H(hexa)


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_fixture_parse_after_header(name):
    # the same payload inside a frame, parsed at the header's payload offset
    parse, hexa, expected, _, _ = FIXTURES[name]
    frame = zcl.pack_header(0x05, 9, 0xF0, manufacturer=0x1234) + H(hexa)
    assert parse(frame, zcl.parse_header(frame)[4]) == expected


def test_block_response_success_literal():
    payload = H("00 3412 0100 04030201 00000000 03 aaaaaa")
    r = zcl.parse_block_response(payload)
    assert r[:5] == (zcl.SUCCESS, 0x1234, 1, 0x01020304, 0)
    assert bytes(r.data) == b"\xaa\xaa\xaa"
    assert (r.current_time, r.request_time, r.min_block_period) == (None, None, None)
    assert zcl.pack_block_response(0x1234, 1, 0x01020304, 0, b"\xaa" * 3) == payload


def test_block_response_empty_data():
    payload = H("00 3412 0100 04030201 10000000 00")
    assert zcl.pack_block_response(0x1234, 1, 0x01020304, 16, b"") == payload
    assert bytes(zcl.parse_block_response(payload).data) == b""


def test_block_response_into_preallocated_frame():
    buf = bytearray(80)
    data = memoryview(bytearray(b"\x01\x02\x03\x04\x05"))
    fc = zcl.frame_control(server_to_client=True)
    h = zcl.pack_header_into(buf, 0, fc, 0x22, zcl.CMD_IMAGE_BLOCK_RESPONSE)
    n = zcl.pack_block_response_into(buf, h, 0x1234, 1, 0x01020304, 0x100, data[1:4])
    assert bytes(buf[:h + n]) == H("09 22 05 00 3412 0100 04030201 00010000 03 020304")


def test_block_response_header_only_then_data_in_place():
    buf = bytearray(40)
    buf[5 + zcl.BLOCK_RESPONSE_OVERHEAD:5 + zcl.BLOCK_RESPONSE_OVERHEAD + 2] = b"\xbe\xef"
    assert zcl.pack_block_response_header_into(buf, 5, 0x1234, 1, 7, 2, 2) == 14
    assert bytes(buf[5:21]) == H("00 3412 0100 07000000 02000000 02 beef")


def test_parsed_block_data_is_a_view_not_a_copy():
    buf = bytearray(H("00 3412 0100 04030201 00000000 03 aaaaaa"))
    r = zcl.parse_block_response(buf)
    assert isinstance(r.data, memoryview)
    buf[-1] = 0x55
    assert bytes(r.data) == b"\xaa\xaa\x55"


def test_status_and_code_names():
    assert zcl.status_name(0x96) == "INVALID_IMAGE"
    assert zcl.status_name(zcl.WAIT_FOR_DATA) == "WAIT_FOR_DATA"
    assert zcl.status_name(0x42) == "0x42"
    assert zcl.activate_code_name(zcl.ACTIVATE_NO_IMAGE_HELD) == "NO_IMAGE_HELD"
    assert zcl.activate_code_name(9) == "0x09"
    assert zcl.alert_reason_name(zcl.ALERT_UNCONFIRMED_REBOOT) == "UNCONFIRMED_REBOOT"
    assert zcl.alert_reason_name(200) == "0xC8"


def test_unknown_alert_reason_passes_through():
    payload = zcl.pack_activation_alert(2, 1, False, 0x77, 0)
    assert zcl.parse_activation_alert(payload).reason == 0x77


# ---- malformed payloads: one case each ----

MALFORMED = [
    ("header_empty", zcl.parse_header, "", zcl.MALFORMED_COMMAND),
    ("header_two_bytes", zcl.parse_header, "19 03", zcl.MALFORMED_COMMAND),
    ("header_mfr_truncated", zcl.parse_header, "05 3412 07", zcl.MALFORMED_COMMAND),
    ("header_frame_type_2", zcl.parse_header, "02 01 00", zcl.MALFORMED_COMMAND),
    ("header_frame_type_3", zcl.parse_header, "0b 01 00", zcl.MALFORMED_COMMAND),
    ("notify_empty", zcl.parse_image_notify, "", zcl.MALFORMED_COMMAND),
    ("notify_no_jitter", zcl.parse_image_notify, "00", zcl.MALFORMED_COMMAND),
    ("notify_payload_type_4", zcl.parse_image_notify, "04 64", zcl.MALFORMED_COMMAND),
    ("notify_jitter_0", zcl.parse_image_notify, "00 00", zcl.MALFORMED_COMMAND),
    ("notify_jitter_101", zcl.parse_image_notify, "00 65", zcl.MALFORMED_COMMAND),
    ("notify1_truncated", zcl.parse_image_notify, "01 64 34", zcl.MALFORMED_COMMAND),
    ("notify3_truncated", zcl.parse_image_notify, "03 64 3412 8400 040302", zcl.MALFORMED_COMMAND),
    ("notify0_trailing", zcl.parse_image_notify, "00 64 34", zcl.MALFORMED_COMMAND),
    ("qnir_empty", zcl.parse_query_next_image, "", zcl.MALFORMED_COMMAND),
    ("qnir_truncated", zcl.parse_query_next_image, "00 3412 8400 040302", zcl.MALFORMED_COMMAND),
    ("qnir_hw_missing", zcl.parse_query_next_image, "01 3412 8400 04030201",
     zcl.MALFORMED_COMMAND),
    ("qnir_trailing", zcl.parse_query_next_image, "00 3412 8400 04030201 0200",
     zcl.MALFORMED_COMMAND),
    ("qnir_rsp_empty", zcl.parse_query_next_image_response, "", zcl.MALFORMED_COMMAND),
    ("qnir_rsp_success_truncated", zcl.parse_query_next_image_response,
     "00 3412 8400 05030201", zcl.MALFORMED_COMMAND),
    ("qnir_rsp_success_trailing", zcl.parse_query_next_image_response,
     "00 3412 8400 05030201 00100000 00", zcl.MALFORMED_COMMAND),
    ("qnir_rsp_status_trailing", zcl.parse_query_next_image_response, "98 3412",
     zcl.MALFORMED_COMMAND),
    ("block_req_empty", zcl.parse_block_request, "", zcl.MALFORMED_COMMAND),
    ("block_req_truncated", zcl.parse_block_request, "00 3412 0100 04030201 40000000",
     zcl.MALFORMED_COMMAND),
    ("block_req_ieee_missing", zcl.parse_block_request, "01 3412 0100 04030201 40000000 30",
     zcl.MALFORMED_COMMAND),
    ("block_req_period_missing", zcl.parse_block_request,
     "02 3412 0100 04030201 40000000 30 fa", zcl.MALFORMED_COMMAND),
    ("block_req_trailing", zcl.parse_block_request, "00 3412 0100 04030201 40000000 30 fa00",
     zcl.MALFORMED_COMMAND),
    ("page_req_truncated", zcl.parse_page_request, "00 3412 0100 04030201 00010000 40 0004 32",
     zcl.MALFORMED_COMMAND),
    ("page_req_ieee_missing", zcl.parse_page_request,
     "01 3412 0100 04030201 00010000 40 0004 3200 7766", zcl.MALFORMED_COMMAND),
    ("page_req_trailing", zcl.parse_page_request,
     "00 3412 0100 04030201 00010000 40 0004 3200 00", zcl.MALFORMED_COMMAND),
    ("block_rsp_empty", zcl.parse_block_response, "", zcl.MALFORMED_COMMAND),
    ("block_rsp_header_truncated", zcl.parse_block_response, "00 3412 0100 04030201 00000000",
     zcl.MALFORMED_COMMAND),
    ("block_rsp_data_short", zcl.parse_block_response,
     "00 3412 0100 04030201 00000000 03 aaaa", zcl.MALFORMED_COMMAND),
    ("block_rsp_data_long", zcl.parse_block_response,
     "00 3412 0100 04030201 00000000 03 aaaaaaaa", zcl.MALFORMED_COMMAND),
    ("block_rsp_wait_truncated", zcl.parse_block_response, "97 00000000 1e000000 00",
     zcl.MALFORMED_COMMAND),
    ("block_rsp_wait_trailing", zcl.parse_block_response, "97 00000000 1e000000 0000 00",
     zcl.MALFORMED_COMMAND),
    ("block_rsp_abort_trailing", zcl.parse_block_response, "95 00", zcl.MALFORMED_COMMAND),
    ("upgrade_end_truncated", zcl.parse_upgrade_end, "00 3412 8400 050302",
     zcl.MALFORMED_COMMAND),
    ("upgrade_end_trailing", zcl.parse_upgrade_end, "00 3412 8400 05030201 00",
     zcl.MALFORMED_COMMAND),
    ("upgrade_end_rsp_truncated", zcl.parse_upgrade_end_response,
     "3412 8400 05030201 00000000 ffffff", zcl.MALFORMED_COMMAND),
    ("upgrade_end_rsp_trailing", zcl.parse_upgrade_end_response,
     "3412 8400 05030201 00000000 ffffffff 00", zcl.MALFORMED_COMMAND),
    ("qdsf_truncated", zcl.parse_query_specific_file, "7766554433221100 3412 8400 05030201 02",
     zcl.MALFORMED_COMMAND),
    ("qdsf_trailing", zcl.parse_query_specific_file,
     "7766554433221100 3412 8400 05030201 0200 00", zcl.MALFORMED_COMMAND),
    ("activate_truncated", zcl.parse_activate_image, HASH.hex() + "00000000 070000",
     zcl.MALFORMED_COMMAND),
    ("activate_trailing", zcl.parse_activate_image, HASH.hex() + "00000000 07000000 00",
     zcl.MALFORMED_COMMAND),
    ("activate_rsp_truncated", zcl.parse_activate_image_response, "00 05030201 070000",
     zcl.MALFORMED_COMMAND),
    ("activate_rsp_trailing", zcl.parse_activate_image_response, "00 05030201 07000000 00",
     zcl.MALFORMED_COMMAND),
    ("activate_rsp_code_4", zcl.parse_activate_image_response, "04 05030201 07000000",
     zcl.INVALID_FIELD),
    ("alert_truncated", zcl.parse_activation_alert, "04030201 05030201 01 01 80c3c9",
     zcl.MALFORMED_COMMAND),
    ("alert_trailing", zcl.parse_activation_alert, "04030201 05030201 01 01 80c3c92c 00",
     zcl.MALFORMED_COMMAND),
    ("alert_rolled_back_2", zcl.parse_activation_alert, "04030201 05030201 02 01 80c3c92c",
     zcl.INVALID_FIELD),
    ("read_attrs_empty", zcl.parse_read_attributes, "", zcl.MALFORMED_COMMAND),
    ("read_attrs_odd", zcl.parse_read_attributes, "0200 06", zcl.MALFORMED_COMMAND),
    ("read_rsp_empty", zcl.parse_read_attributes_response, "", zcl.MALFORMED_COMMAND),
    ("read_rsp_record_truncated", zcl.parse_read_attributes_response, "0200 00 23 05030201 0600",
     zcl.MALFORMED_COMMAND),
    ("read_rsp_type_missing", zcl.parse_read_attributes_response, "0200 00",
     zcl.MALFORMED_COMMAND),
    ("read_rsp_u32_truncated", zcl.parse_read_attributes_response, "0200 00 23 050302",
     zcl.MALFORMED_COMMAND),
    ("read_rsp_u16_truncated", zcl.parse_read_attributes_response, "0900 00 21 fa",
     zcl.MALFORMED_COMMAND),
    ("read_rsp_u8_missing", zcl.parse_read_attributes_response, "0700 00 20",
     zcl.MALFORMED_COMMAND),
    ("read_rsp_eui64_truncated", zcl.parse_read_attributes_response, "0000 00 f0 77665544332211",
     zcl.MALFORMED_COMMAND),
    ("read_rsp_unknown_type", zcl.parse_read_attributes_response, "0200 00 42 03 616263",
     zcl.INVALID_DATA_TYPE),
    ("default_rsp_truncated", zcl.parse_default_response, "06", zcl.MALFORMED_COMMAND),
    ("default_rsp_trailing", zcl.parse_default_response, "06 00 00", zcl.MALFORMED_COMMAND),
]


@pytest.mark.parametrize("parse,hexa,status", [m[1:] for m in MALFORMED],
                         ids=[m[0] for m in MALFORMED])
def test_malformed(parse, hexa, status):
    with pytest.raises(ZclError) as exc:
        parse(H(hexa))
    assert exc.value.status == status
    assert isinstance(exc.value.reason, str) and exc.value.reason


def test_offset_past_the_end():
    with pytest.raises(ZclError) as exc:
        zcl.parse_default_response(H("06 00"), 3)
    assert exc.value.status == zcl.MALFORMED_COMMAND


def test_zcl_error_is_a_value_error():
    with pytest.raises(ValueError):
        zcl.parse_upgrade_end(b"")


# ---- arguments the packers refuse: one case each ----

PACK_ERRORS = [
    ("notify_jitter_0", lambda: zcl.pack_image_notify(0, 0)),
    ("notify_type_4", lambda: zcl.pack_image_notify(4, 10, 1, 2, 3)),
    ("notify_field_missing", lambda: zcl.pack_image_notify(2, 10, 0x1234)),
    ("notify_extra_field", lambda: zcl.pack_image_notify(0, 10, 0x1234)),
    ("available_success_without_fields", lambda: zcl.pack_image_available(0)),
    ("available_failure_with_fields", lambda: zcl.pack_image_available(0x98, 1, 2, 3, 4)),
    ("block_req_short_ieee", lambda: zcl.pack_block_request(1, 2, 3, 0, 48, b"\x00" * 7)),
    ("page_req_long_ieee", lambda: zcl.pack_page_request(1, 2, 3, 0, 48, 512, 5, b"\x00" * 9)),
    ("block_rsp_too_much_data", lambda: zcl.pack_block_response(1, 2, 3, 0, bytes(256))),
    ("block_rsp_buffer_small",
     lambda: zcl.pack_block_response_into(bytearray(20), 3, 1, 2, 3, 0, bytes(4))),
    ("block_abort_success", lambda: zcl.pack_block_abort(zcl.SUCCESS)),
    ("block_abort_wait", lambda: zcl.pack_block_abort(zcl.WAIT_FOR_DATA)),
    ("activate_short_hash", lambda: zcl.pack_activate_image(bytes(31), 0, 1)),
    ("activate_rsp_code_4", lambda: zcl.pack_activate_image_response(4, 1, 1)),
    ("qdsf_short_ieee", lambda: zcl.pack_query_specific_file(bytes(4), 1, 2, 3, 2)),
    ("read_attrs_none", lambda: zcl.pack_read_attributes([])),
    ("read_rsp_none", lambda: zcl.pack_read_attributes_response([])),
    ("read_rsp_unknown_type", lambda: zcl.pack_read_attributes_response([(1, 0, 0x42, 1)])),
    ("read_rsp_value_with_failure",
     lambda: zcl.pack_read_attributes_response([(1, 0x86, 0x20, 1)])),
    ("header_mfr_bit_without_code", lambda: zcl.pack_header(0x05, 1, 0xF0)),
]


@pytest.mark.parametrize("call", [p[1] for p in PACK_ERRORS], ids=[p[0] for p in PACK_ERRORS])
def test_pack_refuses(call):
    with pytest.raises(ZclError):
        call()


# ---- cross-checks against zigpy 2.4.0 ----

zigpy_t = pytest.importorskip("zigpy.types")
from zigpy.zcl import foundation  # noqa: E402
from zigpy.zcl.clusters.general import Ota  # noqa: E402

EUI = zigpy_t.EUI64.deserialize(IEEE)[0]
S, C = Ota.ServerCommandDefs, Ota.ClientCommandDefs

# (zigpy command def, zigpy kwargs, our packer, its args, our parser, our expected tuple)
CROSS = {
    "notify0": (C.image_notify, dict(payload_type=0, query_jitter=100),
                zcl.pack_image_notify, (0, 100), zcl.parse_image_notify,
                (0, 100, None, None, None)),
    "notify1": (C.image_notify, dict(payload_type=1, query_jitter=5, manufacturer_code=0x125D),
                zcl.pack_image_notify, (1, 5, 0x125D), zcl.parse_image_notify,
                (1, 5, 0x125D, None, None)),
    "notify2": (C.image_notify, dict(payload_type=2, query_jitter=50, manufacturer_code=0x125D,
                                     image_type=0x85),
                zcl.pack_image_notify, (2, 50, 0x125D, 0x85), zcl.parse_image_notify,
                (2, 50, 0x125D, 0x85, None)),
    "notify3": (C.image_notify, dict(payload_type=3, query_jitter=1, manufacturer_code=0x125D,
                                     image_type=0x85, new_file_version=0xACDCACDC),
                zcl.pack_image_notify, (3, 1, 0x125D, 0x85, 0xACDCACDC), zcl.parse_image_notify,
                (3, 1, 0x125D, 0x85, 0xACDCACDC)),
    "qnir": (S.query_next_image, dict(field_control=0, manufacturer_code=0x125D,
                                      image_type=0x84, current_file_version=0x10),
             zcl.pack_query_next_image, (0x125D, 0x84, 0x10), zcl.parse_query_next_image,
             (0x125D, 0x84, 0x10, None)),
    "qnir_hw": (S.query_next_image, dict(field_control=1, manufacturer_code=0x125D,
                                         image_type=0x84, current_file_version=0x10,
                                         hardware_version=0x1111),
                zcl.pack_query_next_image, (0x125D, 0x84, 0x10, 0x1111),
                zcl.parse_query_next_image, (0x125D, 0x84, 0x10, 0x1111)),
    "qnir_rsp": (C.query_next_image_response,
                 dict(status=foundation.Status.SUCCESS, manufacturer_code=0x125D,
                      image_type=0x84, file_version=0x11, image_size=70000),
                 zcl.pack_query_next_image_response, (0, 0x125D, 0x84, 0x11, 70000),
                 zcl.parse_query_next_image_response, (0, 0x125D, 0x84, 0x11, 70000)),
    "qnir_rsp_none": (C.query_next_image_response,
                      dict(status=foundation.Status.NO_IMAGE_AVAILABLE),
                      zcl.pack_query_next_image_response, (0x98,),
                      zcl.parse_query_next_image_response, (0x98, None, None, None, None)),
    "block": (S.image_block, dict(field_control=0, manufacturer_code=0x125D, image_type=0x84,
                                  file_version=0x11, file_offset=4000, maximum_data_size=40),
              zcl.pack_block_request, (0x125D, 0x84, 0x11, 4000, 40), zcl.parse_block_request,
              (0x125D, 0x84, 0x11, 4000, 40, None, None)),
    "block_ieee_period": (S.image_block,
                          dict(field_control=3, manufacturer_code=0x125D, image_type=0x84,
                               file_version=0x11, file_offset=4000, maximum_data_size=40,
                               request_node_addr=EUI, minimum_block_period=1000),
                          zcl.pack_block_request, (0x125D, 0x84, 0x11, 4000, 40, IEEE, 1000),
                          zcl.parse_block_request, (0x125D, 0x84, 0x11, 4000, 40, IEEE, 1000)),
    "block_ieee": (S.image_block, dict(field_control=1, manufacturer_code=1, image_type=2,
                                       file_version=3, file_offset=0, maximum_data_size=64,
                                       request_node_addr=EUI),
                   zcl.pack_block_request, (1, 2, 3, 0, 64, IEEE), zcl.parse_block_request,
                   (1, 2, 3, 0, 64, IEEE, None)),
    "page": (S.image_page, dict(field_control=0, manufacturer_code=1, image_type=2,
                                file_version=3, file_offset=1024, maximum_data_size=64,
                                page_size=1024, response_spacing=50),
             zcl.pack_page_request, (1, 2, 3, 1024, 64, 1024, 50), zcl.parse_page_request,
             (1, 2, 3, 1024, 64, 1024, 50, None)),
    "page_ieee": (S.image_page, dict(field_control=1, manufacturer_code=1, image_type=2,
                                     file_version=3, file_offset=1024, maximum_data_size=64,
                                     page_size=1024, response_spacing=50,
                                     request_node_addr=EUI),
                  zcl.pack_page_request, (1, 2, 3, 1024, 64, 1024, 50, IEEE),
                  zcl.parse_page_request, (1, 2, 3, 1024, 64, 1024, 50, IEEE)),
    "block_rsp": (C.image_block_response,
                  dict(status=foundation.Status.SUCCESS, manufacturer_code=0x125D,
                       image_type=0x84, file_version=0x11, file_offset=80, image_data=b"xyz!"),
                  zcl.pack_block_response, (0x125D, 0x84, 0x11, 80, b"xyz!"),
                  zcl.parse_block_response,
                  (0, 0x125D, 0x84, 0x11, 80, b"xyz!", None, None, None)),
    "block_rsp_wait": (C.image_block_response,
                       dict(status=foundation.Status.WAIT_FOR_DATA, current_time=700000000,
                            request_time=700000030, minimum_block_period=250),
                       zcl.pack_block_wait, (700000000, 700000030, 250),
                       zcl.parse_block_response,
                       (0x97, None, None, None, None, None, 700000000, 700000030, 250)),
    "block_rsp_abort": (C.image_block_response, dict(status=foundation.Status.ABORT),
                        zcl.pack_block_abort, (), zcl.parse_block_response,
                        (0x95,) + (None,) * 8),
    "upgrade_end": (S.upgrade_end, dict(status=foundation.Status.INVALID_IMAGE,
                                        manufacturer_code=0x125D, image_type=0x84,
                                        file_version=0x11),
                    zcl.pack_upgrade_end, (0x96, 0x125D, 0x84, 0x11), zcl.parse_upgrade_end,
                    (0x96, 0x125D, 0x84, 0x11)),
    "upgrade_end_rsp": (C.upgrade_end_response,
                        dict(manufacturer_code=0x125D, image_type=0x84, file_version=0x11,
                             current_time=0, upgrade_time=0xFFFFFFFF),
                        zcl.pack_upgrade_end_response, (0x125D, 0x84, 0x11, 0, 0xFFFFFFFF),
                        zcl.parse_upgrade_end_response, (0x125D, 0x84, 0x11, 0, 0xFFFFFFFF)),
    "qdsf": (S.query_specific_file, dict(request_node_addr=EUI, manufacturer_code=0x125D,
                                         image_type=0x84, file_version=0x11,
                                         current_zigbee_stack_version=2),
             zcl.pack_query_specific_file, (IEEE, 0x125D, 0x84, 0x11, 2),
             zcl.parse_query_specific_file, (IEEE, 0x125D, 0x84, 0x11, 2)),
    "qdsf_rsp": (C.query_specific_file_response,
                 dict(status=foundation.Status.SUCCESS, manufacturer_code=0x125D,
                      image_type=0x84, file_version=0x12, image_size=123456),
                 zcl.pack_query_specific_file_response, (0, 0x125D, 0x84, 0x12, 123456),
                 zcl.parse_query_specific_file_response, (0, 0x125D, 0x84, 0x12, 123456)),
    "qdsf_rsp_none": (C.query_specific_file_response,
                      dict(status=foundation.Status.NO_IMAGE_AVAILABLE),
                      zcl.pack_query_specific_file_response, (0x98,),
                      zcl.parse_query_specific_file_response, (0x98, None, None, None, None)),
}


def _plain(value):
    # zigpy field values as ours: ints, and bytes in wire order for EUI-64 / LVBytes
    if isinstance(value, zigpy_t.EUI64):
        return value.serialize()
    if isinstance(value, (bytes, memoryview)):
        return bytes(value)
    return value if value is None else int(value)


@pytest.mark.parametrize("name", sorted(CROSS))
def test_zigpy_serializes_what_we_pack(name):
    cmd, kw, pack, args, _, _ = CROSS[name]
    assert pack(*args) == cmd.schema(**kw).serialize()


@pytest.mark.parametrize("name", sorted(CROSS))
def test_we_parse_what_zigpy_serializes(name):
    cmd, kw, _, _, parse, expected = CROSS[name]
    got = parse(cmd.schema(**kw).serialize())
    assert tuple(_plain(v) for v in got) == expected


@pytest.mark.parametrize("name", sorted(CROSS))
def test_zigpy_parses_what_we_pack(name):
    cmd, kw, pack, args, _, _ = CROSS[name]
    obj, rest = cmd.schema.deserialize(pack(*args))
    assert rest == b""
    assert {k: _plain(v) for k, v in obj.as_dict().items() if v is not None} == \
        {k: _plain(v) for k, v in kw.items()}


def test_zigpy_header_cross_check():
    for cluster in (False, True):
        for s2c in (False, True):
            for ddr in (False, True):
                for mfr in (None, 0x125D):
                    fc = foundation.FrameControl(
                        frame_type=foundation.FrameType(int(cluster)),
                        is_manufacturer_specific=mfr is not None,
                        direction=foundation.Direction(int(s2c)),
                        disable_default_response=ddr, reserved=0)
                    hdr = foundation.ZCLHeader(frame_control=fc, manufacturer=mfr, tsn=0x42,
                                               command_id=0xF1)
                    raw = hdr.serialize()
                    ours = zcl.frame_control(cluster, s2c, ddr)
                    assert zcl.pack_header(ours, 0x42, 0xF1, mfr) == raw
                    assert zcl.parse_header(raw) == (raw[0], mfr, 0x42, 0xF1, len(raw))
                    back = foundation.ZCLHeader.deserialize(raw + b"\x00")[0].frame_control
                    assert (back.is_cluster, bool(back.direction), back.disable_default_response,
                            back.is_manufacturer_specific) == (cluster, s2c, ddr, mfr is not None)


def test_zigpy_global_commands_cross_check():
    gc = foundation.GENERAL_COMMANDS
    ra = gc[foundation.GeneralCommand.Read_Attributes].schema(attribute_ids=[2, 6, 0])
    assert zcl.pack_read_attributes([2, 6, 0]) == ra.serialize()
    assert zcl.parse_read_attributes(ra.serialize()) == (2, 6, 0)
    recs = [foundation.ReadAttributeRecord(
                attrid=2, status=foundation.Status.SUCCESS,
                value=foundation.TypeValue(type=0x23, value=zigpy_t.uint32_t(0x01020305))),
            foundation.ReadAttributeRecord(
                attrid=0, status=foundation.Status.SUCCESS,
                value=foundation.TypeValue(type=0xF0, value=EUI)),
            foundation.ReadAttributeRecord(
                attrid=6, status=foundation.Status.SUCCESS,
                value=foundation.TypeValue(type=0x30, value=zigpy_t.enum8(3))),
            foundation.ReadAttributeRecord(
                attrid=9, status=foundation.Status.SUCCESS,
                value=foundation.TypeValue(type=0x21, value=zigpy_t.uint16_t(250))),
            foundation.ReadAttributeRecord(attrid=0x55,
                                           status=foundation.Status.UNSUPPORTED_ATTRIBUTE)]
    raw = gc[foundation.GeneralCommand.Read_Attributes_rsp].schema(status_records=recs).serialize()
    ours = [(2, 0, 0x23, 0x01020305), (0, 0, 0xF0, IEEE), (6, 0, 0x30, 3), (9, 0, 0x21, 250),
            (0x55, 0x86, None, None)]
    assert zcl.pack_read_attributes_response(ours) == raw
    assert zcl.parse_read_attributes_response(raw) == ours
    dr = gc[foundation.GeneralCommand.Default_Response].schema(
        command_id=6, status=foundation.Status.SUCCESS)
    assert zcl.pack_default_response(6, 0) == dr.serialize()


def test_status_codes_match_zigpy():
    for name in ("SUCCESS", "FAILURE", "NOT_AUTHORIZED", "RESERVED_FIELD_NOT_ZERO",
                 "MALFORMED_COMMAND", "UNSUP_CLUSTER_COMMAND", "UNSUP_GENERAL_COMMAND",
                 "UNSUP_MANUF_CLUSTER_COMMAND", "INVALID_FIELD", "UNSUPPORTED_ATTRIBUTE",
                 "INVALID_VALUE", "INSUFFICIENT_SPACE", "INVALID_DATA_TYPE", "TIMEOUT", "ABORT",
                 "INVALID_IMAGE", "WAIT_FOR_DATA", "NO_IMAGE_AVAILABLE", "REQUIRE_MORE_IMAGE",
                 "NOTIFICATION_PENDING", "HARDWARE_FAILURE", "SOFTWARE_FAILURE"):
        assert getattr(zcl, name) == foundation.Status[name]
        assert zcl.status_name(getattr(zcl, name)) == name


def test_attribute_ids_match_zigpy():
    a = Ota.AttributeDefs
    pairs = [(zcl.ATTR_UPGRADE_SERVER_ID, a.upgrade_server_id),
             (zcl.ATTR_FILE_OFFSET, a.file_offset),
             (zcl.ATTR_CURRENT_FILE_VERSION, a.current_file_version),
             (zcl.ATTR_CURRENT_STACK_VERSION, a.current_zigbee_stack_version),
             (zcl.ATTR_DOWNLOADED_FILE_VERSION, a.downloaded_file_version),
             (zcl.ATTR_DOWNLOADED_STACK_VERSION, a.downloaded_zigbee_stack_version),
             (zcl.ATTR_IMAGE_UPGRADE_STATUS, a.image_upgrade_status),
             (zcl.ATTR_MANUFACTURER_ID, a.manufacturer_id),
             (zcl.ATTR_IMAGE_TYPE_ID, a.image_type_id),
             (zcl.ATTR_MINIMUM_BLOCK_PERIOD, a.minimum_block_req_delay),
             (zcl.ATTR_IMAGE_STAMP, a.image_stamp),
             (zcl.ATTR_UPGRADE_ACTIVATION_POLICY, a.upgrade_activation_policy),
             (zcl.ATTR_UPGRADE_TIMEOUT_POLICY, a.upgrade_timeout_policy)]
    for ours, theirs in pairs:
        assert ours == theirs.id
    statuses = [int(v) for v in Ota.ImageUpgradeStatus]
    assert statuses == [zcl.UPGRADE_NORMAL, zcl.UPGRADE_DOWNLOAD_IN_PROGRESS,
                        zcl.UPGRADE_DOWNLOAD_COMPLETE, zcl.UPGRADE_WAITING_TO_UPGRADE,
                        zcl.UPGRADE_COUNT_DOWN, zcl.UPGRADE_WAIT_FOR_MORE,
                        zcl.UPGRADE_WAITING_EXTERNAL]
    assert zcl.CLUSTER_OTA == Ota.cluster_id
    for name, cmd in (("CMD_IMAGE_NOTIFY", C.image_notify),
                      ("CMD_QUERY_NEXT_IMAGE", S.query_next_image),
                      ("CMD_QUERY_NEXT_IMAGE_RESPONSE", C.query_next_image_response),
                      ("CMD_IMAGE_BLOCK", S.image_block), ("CMD_IMAGE_PAGE", S.image_page),
                      ("CMD_IMAGE_BLOCK_RESPONSE", C.image_block_response),
                      ("CMD_UPGRADE_END", S.upgrade_end),
                      ("CMD_UPGRADE_END_RESPONSE", C.upgrade_end_response),
                      ("CMD_QUERY_SPECIFIC_FILE", S.query_specific_file),
                      ("CMD_QUERY_SPECIFIC_FILE_RESPONSE", C.query_specific_file_response)):
        assert getattr(zcl, name) == cmd.id


# ---- fuzz: any bytes into any parser raise nothing but ZclError; accepted input re-packs ----

def _repack_notify(r):
    return zcl.pack_image_notify(*r)


REPACK = {
    zcl.parse_image_notify: _repack_notify,
    zcl.parse_image_available: lambda r: zcl.pack_image_available(*r),
    zcl.parse_block_response: lambda r: (
        zcl.pack_block_response(*r[1:6]) if r.status == 0 else
        zcl.pack_block_wait(*r[6:]) if r.status == zcl.WAIT_FOR_DATA else
        zcl.pack_block_abort(r.status)),
    zcl.parse_upgrade_end: lambda r: zcl.pack_upgrade_end(*r),
    zcl.parse_upgrade_end_response: lambda r: zcl.pack_upgrade_end_response(*r),
    zcl.parse_query_specific_file: lambda r: zcl.pack_query_specific_file(*r),
    zcl.parse_activate_image: lambda r: zcl.pack_activate_image(*r),
    zcl.parse_activate_image_response: lambda r: zcl.pack_activate_image_response(*r),
    zcl.parse_activation_alert: lambda r: zcl.pack_activation_alert(*r),
    zcl.parse_read_attributes: lambda r: zcl.pack_read_attributes(r),
    zcl.parse_read_attributes_response: lambda r: zcl.pack_read_attributes_response(r),
    zcl.parse_default_response: lambda r: zcl.pack_default_response(*r),
    # field-control commands re-pack exactly when no reserved control bit is set
    zcl.parse_query_next_image: lambda r: zcl.pack_query_next_image(*r),
    zcl.parse_block_request: lambda r: zcl.pack_block_request(*r),
    zcl.parse_page_request: lambda r: zcl.pack_page_request(*r),
}
FC_KNOWN = {zcl.parse_query_next_image: 0x01, zcl.parse_block_request: 0x03,
            zcl.parse_page_request: 0x01}
PARSERS = list(REPACK) + [zcl.parse_header]
SEEDS = {parse: [] for parse in PARSERS}
for _parse, _hexa, _, _, _ in FIXTURES.values():
    SEEDS[_parse].append(H(_hexa))
for _cmd, _kw, _, _, _parse, _ in CROSS.values():
    SEEDS[_parse].append(_cmd.schema(**_kw).serialize())
SEEDS[zcl.parse_header] = [H("19 03 00"), H("0d 5d12 07 f0")]


# a valid payload with a few bytes replaced, then cut short or extended
def _mutate(args):
    base, edits, cut, tail = args
    b = bytearray(base)
    for pos, value in edits:
        if b:
            b[pos % len(b)] = value
    return bytes(b[:len(b) + cut] if cut < 0 else b + tail[:cut])


def _inputs(parse):
    mutated = st.tuples(st.sampled_from(SEEDS[parse]),
                        st.lists(st.tuples(st.integers(0, 63), st.integers(0, 255)), max_size=3),
                        st.integers(-3, 3), st.binary(min_size=3, max_size=3)).map(_mutate)
    return st.one_of(st.binary(max_size=48), mutated)


@pytest.mark.parametrize("parse", PARSERS, ids=[p.__name__ for p in PARSERS])
@settings(max_examples=400, deadline=None)
@given(data=st.data(), prefix=st.binary(max_size=6))
def test_fuzz_parsers(parse, data, prefix):
    payload = data.draw(_inputs(parse))
    try:
        if parse is zcl.parse_header:
            r = parse(payload)
        else:
            r = parse(prefix + payload, len(prefix))
    except ZclError as e:
        assert isinstance(e.status, int) and isinstance(e.reason, str) and e.reason
        return
    if parse is zcl.parse_header or parse in FC_KNOWN and payload[0] & ~FC_KNOWN[parse]:
        return
    assert REPACK[parse](r) == payload
