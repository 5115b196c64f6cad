# hanfw.zcl: ZCL frames of the Zigbee OTA Upgrade cluster (0x0019), the ZCL global
# commands the OTA client needs (Read Attributes, its Response, Default Response; also
# used on the Time cluster 0x000A for the hub's UTC time) and
# hanota's manufacturer-specific activation commands. Runs under MicroPython and CPython.
#
# All integers are little-endian. A frame is a header (pack_header / parse_header) then one
# command payload (pack_<command> / parse_<command>). A parser reads the payload from
# `offset` to the end of `buf`, returns a namedtuple (absent optional fields are None) and
# raises only ZclError: MALFORMED_COMMAND for truncated or overlong payloads and values the
# command cannot carry, INVALID_FIELD for a defined field with an undefined value.
# EUI-64 values are 8 bytes in wire order (least significant byte first).
#
# Manufacturer-specific commands (cluster-specific frame, manufacturer bit set, the
# manufacturer code of the image in the header):
#   0xF0 Activate Image, hub -> device (server -> client), 40 bytes:
#        image_hash[32]    SHA-256 of the manufacturer image (GBCS Manufacturer Image Hash)
#        execution_time u32  UTC seconds since 2000-01-01; 0 = now
#        counter u32       originator counter, increasing per hub (replay protection)
#   0xF1 Activate Image Response, device -> hub, 9 bytes:
#        code u8           ACTIVATE_*: GBCS CS06 response codes 0..3
#        file_version u32  file version running now
#        counter u32       echo of the command's originator counter
#   0xF2 Activation Alert, device -> hub, 14 bytes:
#        file_version u32  file version running now
#        previous_version u32  file version running before the activation
#        rolled_back u8    1 if the new image was rejected and the previous one runs, else 0
#        reason u8         ALERT_*; codes this side does not know are passed through
#        activation_time u32  UTC seconds since 2000-01-01
#   0xF3 GBCS Command, hub -> device: the GBCS message bytes as the DCC sent them (MAC header,
#        general-signing APDU, signature, MAC); a commissioned HCALCS takes CS06 (and CS08)
#        this way only, and refuses 0xF0 (NOT_AUTHORIZED)
#   0xF4 GBCS Response, device -> hub: reason u8 (0 none, else 1 + its index in
#        hanfw.activation.REFUSALS) || the GBCS response or alert (CS06 response, accepted
#        NULL, 8F66/8F67 alert; empty when the command did not decode)
try:
    from micropython import const
except ImportError:
    def const(x):
        return x

import struct
from collections import namedtuple

CLUSTER_OTA = const(0x0019)
# The Time cluster (ZCL 3.12): the device reads the hub's Time (UTCTime, seconds since
# 2000-01-01 UTC) and TimeStatus with Read Attributes on this cluster (hanfw/clock.py)
CLUSTER_TIME = const(0x000A)
ATTR_TIME = const(0x0000)
ATTR_TIME_STATUS = const(0x0001)  # bitmap8: 0x01 Master, 0x02 Synchronized

# Frame control bits
FC_GLOBAL = const(0x00)
FC_CLUSTER = const(0x01)
FC_FRAME_TYPE_MASK = const(0x03)
FC_MANUFACTURER = const(0x04)
FC_SERVER_TO_CLIENT = const(0x08)
FC_DISABLE_DEFAULT_RESPONSE = const(0x10)

# OTA cluster commands: client -> server (c2s) and server -> client (s2c)
CMD_IMAGE_NOTIFY = const(0x00)                      # s2c
CMD_QUERY_NEXT_IMAGE = const(0x01)                  # c2s
CMD_QUERY_NEXT_IMAGE_RESPONSE = const(0x02)         # s2c
CMD_IMAGE_BLOCK = const(0x03)                       # c2s
CMD_IMAGE_PAGE = const(0x04)                        # c2s
CMD_IMAGE_BLOCK_RESPONSE = const(0x05)              # s2c
CMD_UPGRADE_END = const(0x06)                       # c2s
CMD_UPGRADE_END_RESPONSE = const(0x07)              # s2c
CMD_QUERY_SPECIFIC_FILE = const(0x08)               # c2s
CMD_QUERY_SPECIFIC_FILE_RESPONSE = const(0x09)      # s2c
CMD_ACTIVATE_IMAGE = const(0xF0)                    # s2c, manufacturer-specific
CMD_ACTIVATE_IMAGE_RESPONSE = const(0xF1)           # c2s, manufacturer-specific
CMD_ACTIVATION_ALERT = const(0xF2)                  # c2s, manufacturer-specific
CMD_GBCS = const(0xF3)                              # s2c, manufacturer-specific
CMD_GBCS_RESPONSE = const(0xF4)                     # c2s, manufacturer-specific

# ZCL global commands
GLOBAL_READ_ATTRIBUTES = const(0x00)
GLOBAL_READ_ATTRIBUTES_RESPONSE = const(0x01)
GLOBAL_DEFAULT_RESPONSE = const(0x0B)

# ZCL status codes
SUCCESS = const(0x00)
FAILURE = const(0x01)
NOT_AUTHORIZED = const(0x7E)
RESERVED_FIELD_NOT_ZERO = const(0x7F)
MALFORMED_COMMAND = const(0x80)
UNSUP_CLUSTER_COMMAND = const(0x81)
UNSUP_GENERAL_COMMAND = const(0x82)
UNSUP_MANUF_CLUSTER_COMMAND = const(0x83)
INVALID_FIELD = const(0x85)
UNSUPPORTED_ATTRIBUTE = const(0x86)
INVALID_VALUE = const(0x87)
INSUFFICIENT_SPACE = const(0x89)
INVALID_DATA_TYPE = const(0x8D)
TIMEOUT = const(0x94)
ABORT = const(0x95)
INVALID_IMAGE = const(0x96)
WAIT_FOR_DATA = const(0x97)
NO_IMAGE_AVAILABLE = const(0x98)
REQUIRE_MORE_IMAGE = const(0x99)
NOTIFICATION_PENDING = const(0x9A)
HARDWARE_FAILURE = const(0xC0)
SOFTWARE_FAILURE = const(0xC1)

_STATUS_NAMES = {
    0x00: "SUCCESS", 0x01: "FAILURE", 0x7E: "NOT_AUTHORIZED", 0x7F: "RESERVED_FIELD_NOT_ZERO",
    0x80: "MALFORMED_COMMAND", 0x81: "UNSUP_CLUSTER_COMMAND", 0x82: "UNSUP_GENERAL_COMMAND",
    0x83: "UNSUP_MANUF_CLUSTER_COMMAND", 0x85: "INVALID_FIELD", 0x86: "UNSUPPORTED_ATTRIBUTE",
    0x87: "INVALID_VALUE", 0x89: "INSUFFICIENT_SPACE", 0x8D: "INVALID_DATA_TYPE",
    0x94: "TIMEOUT", 0x95: "ABORT", 0x96: "INVALID_IMAGE", 0x97: "WAIT_FOR_DATA",
    0x98: "NO_IMAGE_AVAILABLE", 0x99: "REQUIRE_MORE_IMAGE", 0x9A: "NOTIFICATION_PENDING",
    0xC0: "HARDWARE_FAILURE", 0xC1: "SOFTWARE_FAILURE",
}

# OTA client attributes
ATTR_UPGRADE_SERVER_ID = const(0x0000)
ATTR_FILE_OFFSET = const(0x0001)
ATTR_CURRENT_FILE_VERSION = const(0x0002)
ATTR_CURRENT_STACK_VERSION = const(0x0003)
ATTR_DOWNLOADED_FILE_VERSION = const(0x0004)
ATTR_DOWNLOADED_STACK_VERSION = const(0x0005)
ATTR_IMAGE_UPGRADE_STATUS = const(0x0006)
ATTR_MANUFACTURER_ID = const(0x0007)
ATTR_IMAGE_TYPE_ID = const(0x0008)
ATTR_MINIMUM_BLOCK_PERIOD = const(0x0009)
ATTR_IMAGE_STAMP = const(0x000A)
ATTR_UPGRADE_ACTIVATION_POLICY = const(0x000B)
ATTR_UPGRADE_TIMEOUT_POLICY = const(0x000C)

# ImageUpgradeStatus values
UPGRADE_NORMAL = const(0)
UPGRADE_DOWNLOAD_IN_PROGRESS = const(1)
UPGRADE_DOWNLOAD_COMPLETE = const(2)
UPGRADE_WAITING_TO_UPGRADE = const(3)
UPGRADE_COUNT_DOWN = const(4)
UPGRADE_WAIT_FOR_MORE = const(5)
UPGRADE_WAITING_EXTERNAL = const(6)

# ZCL data types
TYPE_UINT8 = const(0x20)
TYPE_UINT16 = const(0x21)
TYPE_UINT32 = const(0x23)
TYPE_ENUM8 = const(0x30)
TYPE_BITMAP8 = const(0x18)
TYPE_UTC = const(0xE2)
TYPE_EUI64 = const(0xF0)
_TYPE_FORMATS = {0x20: ("<B", 1), 0x21: ("<H", 2), 0x23: ("<I", 4), 0x30: ("<B", 1),
                 0x18: ("<B", 1), 0xE2: ("<I", 4)}

# Image Notify payload types and optional-field control bits
NOTIFY_JITTER = const(0)
NOTIFY_MANUFACTURER = const(1)
NOTIFY_IMAGE_TYPE = const(2)
NOTIFY_FILE_VERSION = const(3)
_NOTIFY_SIZES = (2, 4, 6, 10)
QUERY_FC_HW_VERSION = const(0x01)
BLOCK_FC_IEEE = const(0x01)
BLOCK_FC_MIN_PERIOD = const(0x02)
PAGE_FC_IEEE = const(0x01)

# Upgrade End Response: upgrade_time meaning "wait for a later activation"
UPGRADE_TIME_WAIT = const(0xFFFFFFFF)
# Image Block Response SUCCESS: bytes before the data (status..data_size)
BLOCK_RESPONSE_OVERHEAD = const(14)

# Activate Image Response codes (GBCS CS06)
ACTIVATE_SUCCESS = const(0)
ACTIVATE_NO_IMAGE_HELD = const(1)
ACTIVATE_HASH_MISMATCH = const(2)
ACTIVATE_FAILURE = const(3)
_ACTIVATE_NAMES = ("SUCCESS", "NO_IMAGE_HELD", "HASH_MISMATCH", "ACTIVATION_FAILURE")

# Activation Alert reasons
ALERT_NONE = const(0)
ALERT_HEALTH_CHECK_FAILED = const(1)
ALERT_IMPORT_ERROR = const(2)
ALERT_UNCONFIRMED_REBOOT = const(3)
ALERT_INVALID_IMAGE = const(4)
_ALERT_NAMES = ("NONE", "HEALTH_CHECK_FAILED", "IMPORT_ERROR", "UNCONFIRMED_REBOOT",
                "INVALID_IMAGE")

ImageNotify = namedtuple("ImageNotify",
                         "payload_type jitter manufacturer image_type file_version")
QueryNextImage = namedtuple("QueryNextImage",
                            "manufacturer image_type file_version hardware_version")
# Query Next Image Response and Query Device Specific File Response
ImageAvailable = namedtuple("ImageAvailable",
                            "status manufacturer image_type file_version image_size")
BlockRequest = namedtuple("BlockRequest", "manufacturer image_type file_version file_offset"
                          " max_data_size ieee min_block_period")
PageRequest = namedtuple("PageRequest", "manufacturer image_type file_version file_offset"
                         " max_data_size page_size response_spacing ieee")
BlockResponse = namedtuple("BlockResponse", "status manufacturer image_type file_version"
                           " file_offset data current_time request_time min_block_period")
UpgradeEnd = namedtuple("UpgradeEnd", "status manufacturer image_type file_version")
UpgradeEndResponse = namedtuple("UpgradeEndResponse",
                                "manufacturer image_type file_version current_time upgrade_time")
QuerySpecificFile = namedtuple("QuerySpecificFile",
                               "ieee manufacturer image_type file_version stack_version")
ActivateImage = namedtuple("ActivateImage", "image_hash execution_time counter")
ActivateImageResponse = namedtuple("ActivateImageResponse", "code file_version counter")
ActivationAlert = namedtuple("ActivationAlert", "file_version previous_version rolled_back"
                             " reason activation_time")
AttrRecord = namedtuple("AttrRecord", "attr_id status type value")
DefaultResponse = namedtuple("DefaultResponse", "command_id status")


# A frame or field that cannot be packed or parsed; .status is the ZCL status to answer with.
class ZclError(ValueError):
    def __init__(self, status, reason):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _name(names, code):
    if 0 <= code < len(names):
        return names[code]
    return "0x%02X" % code


def status_name(code):
    return _STATUS_NAMES.get(code) or "0x%02X" % code


def activate_code_name(code):
    return _name(_ACTIVATE_NAMES, code)


def alert_reason_name(code):
    return _name(_ALERT_NAMES, code)


# Raise unless at least n bytes follow off.
def _need(buf, off, n, what):
    if off < 0 or len(buf) - off < n:
        raise ZclError(MALFORMED_COMMAND, what + ": truncated")


# Raise unless exactly n bytes follow off.
def _exact(buf, off, n, what):
    _need(buf, off, n, what)
    if len(buf) - off > n:
        raise ZclError(MALFORMED_COMMAND, what + ": trailing bytes")


def _eui64(value, what):
    if value is None or len(value) != 8:
        raise ZclError(INVALID_FIELD, what + ": EUI-64 must be 8 bytes")
    return bytes(value)


# ---- frame header ----

def frame_control(cluster=True, server_to_client=False, disable_default_response=False):
    fc = FC_CLUSTER if cluster else FC_GLOBAL
    if server_to_client:
        fc |= FC_SERVER_TO_CLIENT
    if disable_default_response:
        fc |= FC_DISABLE_DEFAULT_RESPONSE
    return fc


def header_size(manufacturer=None):
    return 3 if manufacturer is None else 5


# Write a header at buf[offset:]; a manufacturer code sets the manufacturer bit. Returns its size.
def pack_header_into(buf, offset, frame_control, tsn, command_id, manufacturer=None):
    if manufacturer is None:
        if frame_control & FC_MANUFACTURER:
            raise ZclError(INVALID_FIELD, "header: manufacturer bit without a manufacturer code")
        struct.pack_into("<BBB", buf, offset, frame_control, tsn, command_id)
        return 3
    struct.pack_into("<BHBB", buf, offset, frame_control | FC_MANUFACTURER, manufacturer, tsn,
                     command_id)
    return 5


def pack_header(frame_control, tsn, command_id, manufacturer=None):
    b = bytearray(header_size(manufacturer))
    pack_header_into(b, 0, frame_control, tsn, command_id, manufacturer)
    return bytes(b)


# -> (frame_control, manufacturer or None, tsn, command_id, payload_offset)
def parse_header(buf):
    _need(buf, 0, 3, "header")
    fc = buf[0]
    if (fc & FC_FRAME_TYPE_MASK) > FC_CLUSTER:
        raise ZclError(MALFORMED_COMMAND, "header: reserved frame type")
    if fc & FC_MANUFACTURER:
        _need(buf, 0, 5, "header")
        mfr, tsn, cmd = struct.unpack_from("<HBB", buf, 1)
        return fc, mfr, tsn, cmd, 5
    return fc, None, buf[1], buf[2], 3


# ---- OTA cluster commands ----

def pack_image_notify(payload_type, jitter, manufacturer=None, image_type=None,
                      file_version=None):
    if not 0 <= payload_type <= 3:
        raise ZclError(INVALID_FIELD, "image notify: payload type must be 0..3")
    if not 1 <= jitter <= 100:
        raise ZclError(INVALID_FIELD, "image notify: jitter must be 1..100")
    fields = (manufacturer, image_type, file_version)
    for i in range(3):
        if (fields[i] is None) == (i < payload_type):
            raise ZclError(INVALID_FIELD, "image notify: fields disagree with payload type")
    return struct.pack("<BBHHI"[:payload_type + 3], payload_type, jitter, *fields[:payload_type])


def parse_image_notify(buf, offset=0):
    _need(buf, offset, 2, "image notify")
    pt = buf[offset]
    jitter = buf[offset + 1]
    if pt > 3:
        raise ZclError(MALFORMED_COMMAND, "image notify: invalid payload type")
    if not 1 <= jitter <= 100:
        raise ZclError(MALFORMED_COMMAND, "image notify: jitter outside 1..100")
    _exact(buf, offset, _NOTIFY_SIZES[pt], "image notify")
    f = [None, None, None]
    f[:pt] = struct.unpack_from("<HHI"[:pt + 1], buf, offset + 2)
    return ImageNotify(pt, jitter, f[0], f[1], f[2])


def pack_query_next_image(manufacturer, image_type, file_version, hardware_version=None):
    if hardware_version is None:
        return struct.pack("<BHHI", 0, manufacturer, image_type, file_version)
    return struct.pack("<BHHIH", QUERY_FC_HW_VERSION, manufacturer, image_type, file_version,
                       hardware_version)


def parse_query_next_image(buf, offset=0):
    _need(buf, offset, 1, "query next image")
    has_hw = buf[offset] & QUERY_FC_HW_VERSION
    _exact(buf, offset, 11 if has_hw else 9, "query next image")
    mfr, it, ver = struct.unpack_from("<HHI", buf, offset + 1)
    hw = struct.unpack_from("<H", buf, offset + 9)[0] if has_hw else None
    return QueryNextImage(mfr, it, ver, hw)


# Query Next Image Response / Query Device Specific File Response: SUCCESS carries the
# image identity and size, any other status is alone.
def pack_image_available(status, manufacturer=None, image_type=None, file_version=None,
                         image_size=None):
    if status != SUCCESS:
        if manufacturer is None and image_type is None and file_version is None \
                and image_size is None:
            return bytes((status,))
    elif None not in (manufacturer, image_type, file_version, image_size):
        return struct.pack("<BHHII", status, manufacturer, image_type, file_version, image_size)
    raise ZclError(INVALID_FIELD, "image response: fields disagree with status")


def parse_image_available(buf, offset=0):
    _need(buf, offset, 1, "image response")
    st = buf[offset]
    if st != SUCCESS:
        _exact(buf, offset, 1, "image response")
        return ImageAvailable(st, None, None, None, None)
    _exact(buf, offset, 13, "image response")
    mfr, it, ver, size = struct.unpack_from("<HHII", buf, offset + 1)
    return ImageAvailable(st, mfr, it, ver, size)


pack_query_next_image_response = pack_image_available
parse_query_next_image_response = parse_image_available
pack_query_specific_file_response = pack_image_available
parse_query_specific_file_response = parse_image_available


def pack_block_request(manufacturer, image_type, file_version, file_offset, max_data_size,
                       ieee=None, min_block_period=None):
    fc = 0
    tail = b""
    if ieee is not None:
        fc = BLOCK_FC_IEEE
        tail = _eui64(ieee, "block request")
    if min_block_period is not None:
        fc |= BLOCK_FC_MIN_PERIOD
        tail += struct.pack("<H", min_block_period)
    return struct.pack("<BHHIIB", fc, manufacturer, image_type, file_version, file_offset,
                       max_data_size) + tail


def parse_block_request(buf, offset=0):
    _need(buf, offset, 1, "block request")
    fc = buf[offset]
    p = offset + 14
    _exact(buf, offset, 14 + (8 if fc & BLOCK_FC_IEEE else 0)
           + (2 if fc & BLOCK_FC_MIN_PERIOD else 0), "block request")
    mfr, it, ver, fo, mx = struct.unpack_from("<HHIIB", buf, offset + 1)
    ieee = period = None
    if fc & BLOCK_FC_IEEE:
        ieee = bytes(buf[p:p + 8])
        p += 8
    if fc & BLOCK_FC_MIN_PERIOD:
        period = struct.unpack_from("<H", buf, p)[0]
    return BlockRequest(mfr, it, ver, fo, mx, ieee, period)


def pack_page_request(manufacturer, image_type, file_version, file_offset, max_data_size,
                      page_size, response_spacing, ieee=None):
    head = struct.pack("<BHHIIBHH", 0 if ieee is None else PAGE_FC_IEEE, manufacturer,
                       image_type, file_version, file_offset, max_data_size, page_size,
                       response_spacing)
    return head if ieee is None else head + _eui64(ieee, "page request")


def parse_page_request(buf, offset=0):
    _need(buf, offset, 1, "page request")
    has_ieee = buf[offset] & PAGE_FC_IEEE
    _exact(buf, offset, 26 if has_ieee else 18, "page request")
    mfr, it, ver, fo, mx, ps, sp = struct.unpack_from("<HHIIBHH", buf, offset + 1)
    ieee = bytes(buf[offset + 18:offset + 26]) if has_ieee else None
    return PageRequest(mfr, it, ver, fo, mx, ps, sp, ieee)


# Image Block Response SUCCESS, header only: write status..data_size at buf[offset:], for a
# caller that has placed (or will place) data_size bytes at offset + BLOCK_RESPONSE_OVERHEAD.
def pack_block_response_header_into(buf, offset, manufacturer, image_type, file_version,
                                    file_offset, data_size):
    if not 0 <= data_size <= 255:
        raise ZclError(INVALID_FIELD, "block response: data_size must be 0..255")
    if offset < 0 or len(buf) - offset < BLOCK_RESPONSE_OVERHEAD + data_size:
        raise ZclError(INSUFFICIENT_SPACE, "block response: buffer too small")
    struct.pack_into("<BHHIIB", buf, offset, SUCCESS, manufacturer, image_type, file_version,
                     file_offset, data_size)
    return BLOCK_RESPONSE_OVERHEAD


# Image Block Response SUCCESS into buf[offset:], copying data once. Returns the length.
def pack_block_response_into(buf, offset, manufacturer, image_type, file_version, file_offset,
                             data):
    n = len(data)
    p = offset + pack_block_response_header_into(buf, offset, manufacturer, image_type,
                                                 file_version, file_offset, n)
    buf[p:p + n] = data
    return BLOCK_RESPONSE_OVERHEAD + n


def pack_block_response(manufacturer, image_type, file_version, file_offset, data):
    b = bytearray(BLOCK_RESPONSE_OVERHEAD + len(data))
    pack_block_response_into(b, 0, manufacturer, image_type, file_version, file_offset, data)
    return bytes(b)


def pack_block_wait(current_time, request_time, min_block_period):
    return struct.pack("<BIIH", WAIT_FOR_DATA, current_time, request_time, min_block_period)


# Image Block Response carrying a status only (ABORT, or e.g. MALFORMED_COMMAND).
def pack_block_abort(status=ABORT):
    if status == SUCCESS or status == WAIT_FOR_DATA:
        raise ZclError(INVALID_FIELD, "block response: status needs more fields")
    return bytes((status,))


# SUCCESS gives .data as a memoryview into buf; WAIT_FOR_DATA fills the three time fields.
def parse_block_response(buf, offset=0):
    _need(buf, offset, 1, "block response")
    st = buf[offset]
    if st == SUCCESS:
        _need(buf, offset, BLOCK_RESPONSE_OVERHEAD, "block response")
        mfr, it, ver, fo, n = struct.unpack_from("<HHIIB", buf, offset + 1)
        p = offset + BLOCK_RESPONSE_OVERHEAD
        if len(buf) - p != n:
            raise ZclError(MALFORMED_COMMAND, "block response: data_size %d but %d bytes"
                           % (n, len(buf) - p))
        return BlockResponse(st, mfr, it, ver, fo, memoryview(buf)[p:p + n], None, None, None)
    if st == WAIT_FOR_DATA:
        _exact(buf, offset, 11, "block response")
        ct, rt, period = struct.unpack_from("<IIH", buf, offset + 1)
        return BlockResponse(st, None, None, None, None, None, ct, rt, period)
    _exact(buf, offset, 1, "block response")
    return BlockResponse(st, None, None, None, None, None, None, None, None)


def pack_upgrade_end(status, manufacturer, image_type, file_version):
    return struct.pack("<BHHI", status, manufacturer, image_type, file_version)


def parse_upgrade_end(buf, offset=0):
    _exact(buf, offset, 9, "upgrade end")
    return UpgradeEnd(*struct.unpack_from("<BHHI", buf, offset))


def pack_upgrade_end_response(manufacturer, image_type, file_version, current_time,
                              upgrade_time):
    return struct.pack("<HHIII", manufacturer, image_type, file_version, current_time,
                       upgrade_time)


def parse_upgrade_end_response(buf, offset=0):
    _exact(buf, offset, 16, "upgrade end response")
    return UpgradeEndResponse(*struct.unpack_from("<HHIII", buf, offset))


def pack_query_specific_file(ieee, manufacturer, image_type, file_version, stack_version):
    return _eui64(ieee, "query specific file") + struct.pack(
        "<HHIH", manufacturer, image_type, file_version, stack_version)


def parse_query_specific_file(buf, offset=0):
    _exact(buf, offset, 18, "query specific file")
    mfr, it, ver, stack = struct.unpack_from("<HHIH", buf, offset + 8)
    return QuerySpecificFile(bytes(buf[offset:offset + 8]), mfr, it, ver, stack)


# ---- manufacturer-specific commands (payloads in the module header) ----

def pack_activate_image(image_hash, execution_time, counter):
    if len(image_hash) != 32:
        raise ZclError(INVALID_FIELD, "activate image: hash must be 32 bytes")
    return bytes(image_hash) + struct.pack("<II", execution_time, counter)


def parse_activate_image(buf, offset=0):
    _exact(buf, offset, 40, "activate image")
    t, c = struct.unpack_from("<II", buf, offset + 32)
    return ActivateImage(bytes(buf[offset:offset + 32]), t, c)


def pack_activate_image_response(code, file_version, counter):
    if not 0 <= code <= ACTIVATE_FAILURE:
        raise ZclError(INVALID_FIELD, "activate image response: code must be 0..3")
    return struct.pack("<BII", code, file_version, counter)


def parse_activate_image_response(buf, offset=0):
    _exact(buf, offset, 9, "activate image response")
    r = ActivateImageResponse(*struct.unpack_from("<BII", buf, offset))
    if r.code > ACTIVATE_FAILURE:
        raise ZclError(INVALID_FIELD, "activate image response: unknown code")
    return r


def pack_activation_alert(file_version, previous_version, rolled_back, reason,
                          activation_time):
    return struct.pack("<IIBBI", file_version, previous_version, 1 if rolled_back else 0,
                       reason, activation_time)


def parse_activation_alert(buf, offset=0):
    _exact(buf, offset, 14, "activation alert")
    r = ActivationAlert(*struct.unpack_from("<IIBBI", buf, offset))
    if r.rolled_back > 1:
        raise ZclError(INVALID_FIELD, "activation alert: rolled_back must be 0 or 1")
    return r


# ---- ZCL global commands ----

def pack_read_attributes(attr_ids):
    if not attr_ids:
        raise ZclError(INVALID_FIELD, "read attributes: no attribute")
    return struct.pack("<%dH" % len(attr_ids), *attr_ids)


# -> tuple of attribute ids
def parse_read_attributes(buf, offset=0):
    n = len(buf) - offset
    if offset < 0 or n < 2:
        raise ZclError(MALFORMED_COMMAND, "read attributes: truncated")
    if n & 1:
        raise ZclError(MALFORMED_COMMAND, "read attributes: odd length")
    return struct.unpack_from("<%dH" % (n // 2), buf, offset)


# records: (attr_id, status, type, value); type and value only with SUCCESS (else None).
def pack_read_attributes_response(records):
    if not records:
        raise ZclError(INVALID_FIELD, "read attributes response: no record")
    out = bytearray()
    for attr_id, status, typ, value in records:
        out += struct.pack("<HB", attr_id, status)
        if status != SUCCESS:
            if typ is not None or value is not None:
                raise ZclError(INVALID_FIELD, "read attributes response: value with a failure")
        elif typ == TYPE_EUI64:
            out.append(typ)
            out += _eui64(value, "read attributes response")
        elif typ in _TYPE_FORMATS:
            out.append(typ)
            out += struct.pack(_TYPE_FORMATS[typ][0], value)
        else:
            raise ZclError(INVALID_DATA_TYPE, "read attributes response: unsupported type")
    return bytes(out)


# -> list of AttrRecord(attr_id, status, type, value); EUI-64 values as 8 bytes.
def parse_read_attributes_response(buf, offset=0):
    what = "read attributes response"
    _need(buf, offset, 3, what)
    out = []
    p = offset
    while p < len(buf):
        _need(buf, p, 3, what)
        attr_id, status = struct.unpack_from("<HB", buf, p)
        p += 3
        if status != SUCCESS:
            out.append(AttrRecord(attr_id, status, None, None))
            continue
        _need(buf, p, 1, what)
        typ = buf[p]
        p += 1
        if typ == TYPE_EUI64:
            _need(buf, p, 8, what)
            value = bytes(buf[p:p + 8])
            p += 8
        elif typ in _TYPE_FORMATS:
            fmt, size = _TYPE_FORMATS[typ]
            _need(buf, p, size, what)
            value = struct.unpack_from(fmt, buf, p)[0]
            p += size
        else:
            raise ZclError(INVALID_DATA_TYPE, what + ": unsupported type 0x%02X" % typ)
        out.append(AttrRecord(attr_id, status, typ, value))
    return out


def pack_default_response(command_id, status):
    return struct.pack("<BB", command_id, status)


def parse_default_response(buf, offset=0):
    _exact(buf, offset, 2, "default response")
    return DefaultResponse(buf[offset], buf[offset + 1])
