# hanota device: the Zigbee OTA upgrade file (header, sub-elements, streaming parser)
# and hanota's signed flavour (descriptor 0xF0A0, signature 0xF0A1). MIT licence.
#
# File layout (little-endian; reference zigbee_ota.md section 1):
#   header (56..69 B) | element* where element = tag:u16 | length:u32 | value
# hanota's own files carry, in this order:
#   0xF0A0 descriptor | 0x0000 upgrade image (the manufacturer image) | 0xF0A1 signature
# (descriptor first, so a device can check the security version before the body)
# The signature covers SHA-256 of every byte of the file before the 0xF0A1 element.

import hashlib
import struct

from hanfw.mmo import Mmo

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

MAGIC = const(0x0BEEF11E)
HEADER_VERSION = const(0x0100)
BASE_HEADER_LEN = const(56)
MAX_HEADER_LEN = const(69)
ELEMENT_HEADER_LEN = const(6)

FC_SECURITY_CREDENTIAL = const(0x01)
FC_DESTINATION = const(0x02)
FC_HW_VERSIONS = const(0x04)

TAG_UPGRADE_IMAGE = const(0x0000)
TAG_INTEGRITY_CODE = const(0x0003)
TAG_DESCRIPTOR = const(0xF0A0)
TAG_SIGNATURE = const(0xF0A1)

# descriptor value: format version u8, payload kind u8, board family u16,
# security version u32, SHA-256 of the manufacturer image (32 B)
DESCRIPTOR_VERSION = const(1)
DESCRIPTOR_LEN = const(40)
KEY_ID_LEN = const(8)
SIGNATURE_LEN = const(72)  # key id (8) + r||s (64)
SIGNATURE_ELEMENT_LEN = const(78)
INTEGRITY_LEN = const(16)

PAYLOAD_RAW = const(0)
PAYLOAD_ESP_APP = const(1)  # an ESP32 app image for a firmware bank
PAYLOAD_ROMFS = const(2)  # a ROMFS image of compiled modules for an app bank
PAYLOAD_KINDS = {"raw": 0, "esp-app": 1, "romfs": 2}

BOARD_ANY = const(0)
BOARD_FAMILIES = {"any": 0, "esp32": 1, "esp32s3": 2, "nrf52840": 3}

_HDR = "<IHHHHHIH32sI"  # the 56 fixed bytes
_ELEM = "<HI"
_DESC = "<BBHI32s"

# parser states
_S_HEADER = const(0)
_S_ELEM_HDR = const(1)
_S_ELEM_BODY = const(2)
_S_RAW = const(3)
_S_DONE = const(4)

# what an element's value is used for while streaming
_USE_SKIP = const(0)
_USE_IMAGE = const(1)
_USE_KEEP = const(2)


# A malformed or unacceptable file. `reason` is a short stable name (used in
# reports and mapped to ZCL statuses by the client); the message says more.
class OtaError(ValueError):
    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __str__(self):
        return self.message


def header_length_for(field_control):
    n = BASE_HEADER_LEN
    if field_control & FC_SECURITY_CREDENTIAL:
        n += 1
    if field_control & FC_DESTINATION:
        n += 8
    if field_control & FC_HW_VERSIONS:
        n += 4
    return n


# The OTA header. Optional fields are None when absent; pack() derives the
# field control bits from them.
class Header:
    def __init__(self, manufacturer=0, image_type=0, file_version=0, stack_version=2,
                 header_string=b"", total_size=0, security_credential=None,
                 destination=None, min_hw=None, max_hw=None, header_version=HEADER_VERSION,
                 field_control=None):
        self.header_version = header_version
        self.manufacturer = manufacturer
        self.image_type = image_type
        self.file_version = file_version
        self.stack_version = stack_version
        self.header_string = header_string
        self.total_size = total_size
        self.security_credential = security_credential
        self.destination = destination
        self.min_hw = min_hw
        self.max_hw = max_hw
        if field_control is None:
            field_control = 0
            if security_credential is not None:
                field_control |= FC_SECURITY_CREDENTIAL
            if destination is not None:
                field_control |= FC_DESTINATION
            if min_hw is not None or max_hw is not None:
                field_control |= FC_HW_VERSIONS
        self.field_control = field_control

    @property
    def header_length(self):
        return header_length_for(self.field_control)

    def pack(self):
        hs = self.header_string
        if isinstance(hs, str):
            hs = hs.encode()
        if len(hs) > 32:
            raise OtaError("header-string", "header string is %d bytes, at most 32" % len(hs))
        fc = self.field_control
        out = bytearray(struct.pack(_HDR, MAGIC, self.header_version, header_length_for(fc), fc,
                                    self.manufacturer, self.image_type, self.file_version,
                                    self.stack_version, hs, self.total_size))
        if fc & FC_SECURITY_CREDENTIAL:
            out.append(self.security_credential)
        if fc & FC_DESTINATION:
            out += self.destination
        if fc & FC_HW_VERSIONS:
            out += struct.pack("<HH", self.min_hw, self.max_hw)
        return bytes(out)

    def header_string_text(self):
        hs = bytes(self.header_string)
        end = hs.find(b"\x00")
        if end >= 0:
            hs = hs[:end]
        try:
            return hs.decode()
        except UnicodeError:
            return hs.decode("latin-1") if hasattr(hs, "decode") else str(hs)

    # Parse and sanity-check a header at the start of buf (at least 10 bytes
    # long; the header length field says how many more are needed).
    @staticmethod
    def parse(buf):
        n = len(buf)
        if n < 10:
            raise OtaError("truncated-header", "file too short for an OTA header (%d bytes)" % n)
        magic, version, hlen, fc = struct.unpack_from("<IHHH", buf, 0)
        if magic != MAGIC:
            raise OtaError("bad-magic", "not a Zigbee OTA file: identifier 0x%08X, expected 0x0BEEF11E" % magic)
        if version != HEADER_VERSION:
            raise OtaError("bad-header-version", "OTA header version 0x%04X, expected 0x0100" % version)
        want = header_length_for(fc)
        if hlen != want:
            raise OtaError("header-length", "header length %d disagrees with field control 0x%04X (which needs %d)"
                           % (hlen, fc, want))
        if n < hlen:
            raise OtaError("truncated-header", "header is %d bytes but only %d are present" % (hlen, n))
        f = struct.unpack_from(_HDR, buf, 0)
        h = Header(manufacturer=f[4], image_type=f[5], file_version=f[6], stack_version=f[7],
                   header_string=bytes(f[8]), total_size=f[9], header_version=version, field_control=fc)
        off = BASE_HEADER_LEN
        if fc & FC_SECURITY_CREDENTIAL:
            h.security_credential = buf[off]
            off += 1
        if fc & FC_DESTINATION:
            h.destination = bytes(buf[off:off + 8])
            off += 8
        if fc & FC_HW_VERSIONS:
            h.min_hw, h.max_hw = struct.unpack_from("<HH", buf, off)
        if h.total_size < hlen:
            raise OtaError("total-size", "total image size %d is smaller than the header (%d)" % (h.total_size, hlen))
        return h


def pack_element_header(tag, length):
    return struct.pack(_ELEM, tag, length)


# Descriptor sub-element 0xF0A0: what the payload is and its anti-rollback counter.
class Descriptor:
    def __init__(self, payload_kind, security_version, board_family, image_hash):
        self.payload_kind = payload_kind
        self.security_version = security_version
        self.board_family = board_family
        self.image_hash = bytes(image_hash)

    def pack(self):
        return struct.pack(_DESC, DESCRIPTOR_VERSION, self.payload_kind, self.board_family,
                           self.security_version, self.image_hash)

    @staticmethod
    def parse(buf):
        if len(buf) != DESCRIPTOR_LEN:
            raise OtaError("bad-descriptor", "descriptor is %d bytes, expected %d" % (len(buf), DESCRIPTOR_LEN))
        ver, kind, family, secver, digest = struct.unpack(_DESC, buf)
        if ver != DESCRIPTOR_VERSION:
            raise OtaError("bad-descriptor", "descriptor format version %d is not supported" % ver)
        return Descriptor(kind, secver, family, digest)


# Streaming parser. Feed it the file in blocks of any size; it never holds
# more than one small element value. Upgrade-image bytes go to sink(memoryview)
# as they arrive (the caller writes them to a bank). Attributes once known:
#   header, elements [(tag, length, offset)], descriptor, key_id, sig,
#   signed_digest (SHA-256 of the bytes before the signature element),
#   image_sha256, image_length, integrity_ok (None if no 0x0003 element),
#   format ("zigbee" or "gb-raw"), received.
class OtaStream:
    def __init__(self, sink=None, integrity=True, allow_raw=False, max_total=None):
        self.sink = sink
        self.allow_raw = allow_raw
        self.max_total = max_total
        self.header = None
        self.format = "zigbee"
        self.elements = []
        self.descriptor = None
        self.key_id = None
        self.sig = None
        self.signed_digest = None
        self.image_sha256 = None
        self.image_length = 0
        self.integrity_code = None  # computed AES-MMO of the bytes before 0x0003
        self.integrity_value = None  # the code stored in the file
        self.integrity_ok = None
        self.received = 0
        self._state = _S_HEADER
        self._hbuf = bytearray(MAX_HEADER_LEN)
        self._need = 10  # header bytes needed before the next decision
        self._fill = 0
        self._ebuf = bytearray(ELEMENT_HEADER_LEN)
        self._kbuf = bytearray(SIGNATURE_LEN)
        self._kfill = 0
        self._tag = 0
        self._left = 0
        self._use = _USE_SKIP
        self._sha = hashlib.sha256()
        self._img = hashlib.sha256()
        self._mmo = Mmo() if integrity else None
        self._images = 0

    # total bytes this file should have (known once the header is in)
    @property
    def total(self):
        return self.header.total_size if self.header else None

    @property
    def done(self):
        return self._state == _S_DONE

    def _hash(self, mv):
        if self.signed_digest is None:
            self._sha.update(mv)
        if self._mmo is not None and self.integrity_code is None:
            self._mmo.update(mv)

    def feed(self, data):
        mv = memoryview(data)
        i = 0
        n = len(mv)
        while i < n:
            st = self._state
            if st == _S_DONE:
                raise OtaError("trailing-bytes", "%d bytes after the end of the image (total size %d)"
                               % (n - i, self.header.total_size))
            if st == _S_HEADER:
                i = self._feed_header(mv, i)
            elif st == _S_ELEM_HDR:
                room = self.header.total_size - self.received
                if self._fill + room < ELEMENT_HEADER_LEN:
                    self._short_tail(room)
                    continue
                take = min(ELEMENT_HEADER_LEN - self._fill, n - i)
                self._ebuf[self._fill:self._fill + take] = mv[i:i + take]
                self._fill += take
                i += take
                self.received += take
                if self._fill == ELEMENT_HEADER_LEN:
                    self._element_header()
            else:
                take = min(self._left, n - i)
                chunk = mv[i:i + take]
                i += take
                self.received += take
                self._left -= take
                self._body(chunk)
                if self._left == 0:
                    self._element_end()

    def _feed_header(self, mv, i):
        take = min(self._need - self._fill, len(mv) - i)
        self._hbuf[self._fill:self._fill + take] = mv[i:i + take]
        self._fill += take
        self.received += take
        i += take
        if self._fill < self._need:
            return i
        if self._need == 10:
            # the first 10 bytes give magic, version, header length and field control
            h = memoryview(self._hbuf)[:10]
            magic, version, hlen, fc = struct.unpack_from("<IHHH", h, 0)
            if magic != MAGIC or version != HEADER_VERSION or hlen != header_length_for(fc):
                Header.parse(h)  # raises the named reason
            self._need = hlen
            if self._need > 10:
                return i
        hdr = memoryview(self._hbuf)[:self._fill]
        self.header = Header.parse(hdr)
        if self.max_total is not None and self.header.total_size > self.max_total:
            raise OtaError("too-big", "total image size %d exceeds %d" % (self.header.total_size, self.max_total))
        self._hash(hdr)
        self._fill = 0
        self._state = _S_DONE if self.received >= self.header.total_size else _S_ELEM_HDR
        return i

    # Fewer than 6 bytes remain before the total size: no room for an element.
    def _short_tail(self, room):
        if self.allow_raw and not self.elements and self._fill == 0:
            self._enter_raw(room)
            return
        raise OtaError("element-overrun", "%d bytes before the total size %d cannot hold a sub-element"
                       % (room + self._fill, self.header.total_size))

    def _enter_raw(self, left):
        self.format = "gb-raw"
        self._state = _S_RAW
        self._tag = TAG_UPGRADE_IMAGE
        self._use = _USE_IMAGE
        self._images = 1
        self._left = left

    def _element_header(self):
        self._fill = 0
        tag, length = struct.unpack(_ELEM, self._ebuf)
        start = self.received - ELEMENT_HEADER_LEN
        total = self.header.total_size
        if self.allow_raw and not self.elements and 0x0006 < tag < 0xF000:
            # GB flavour: the manufacturer image follows the header directly,
            # so these 6 bytes were its start, not an element header
            self._enter_raw(total - self.received)
            self._body(memoryview(self._ebuf))
            if self._left == 0:
                self._element_end()
            return
        if self.sig is not None:
            raise OtaError("signature-not-last", "sub-element 0x%04X follows the signature, which must be last" % tag)
        if self.received + length > total:
            raise OtaError("element-overrun", "sub-element 0x%04X at offset %d (%d bytes) runs past the total size %d"
                           % (tag, start, length, total))
        self.elements.append((tag, length, start))
        self._tag = tag
        self._left = length
        self._use = _USE_SKIP
        if tag == TAG_UPGRADE_IMAGE:
            self._images += 1
            if self._images > 1:
                raise OtaError("duplicate-upgrade-image", "more than one upgrade image sub-element")
            self._use = _USE_IMAGE
        elif tag == TAG_SIGNATURE:
            if length != SIGNATURE_LEN:
                raise OtaError("bad-signature-element", "signature element is %d bytes, expected %d" % (length, SIGNATURE_LEN))
            self.signed_digest = self._sha.digest()
            self._use = _USE_KEEP
        elif tag == TAG_DESCRIPTOR:
            if self.descriptor is not None or length != DESCRIPTOR_LEN:
                raise OtaError("bad-descriptor", "descriptor element of %d bytes (expected one of %d)" % (length, DESCRIPTOR_LEN))
            self._use = _USE_KEEP
        elif tag == TAG_INTEGRITY_CODE and self.integrity_code is None:
            if length != INTEGRITY_LEN:
                raise OtaError("bad-integrity-element", "integrity code element is %d bytes, expected 16" % length)
            if self._mmo is not None:
                self.integrity_code = self._mmo.digest()
                self._mmo = None
            else:
                self.integrity_code = b""
            self._use = _USE_KEEP
        if tag != TAG_SIGNATURE:
            self._hash(memoryview(self._ebuf))
        self._state = _S_ELEM_BODY
        if length == 0:
            self._element_end()

    def _body(self, chunk):
        use = self._use
        if use == _USE_KEEP:
            got = self._kfill
            self._kbuf[got:got + len(chunk)] = chunk
            self._kfill = got + len(chunk)
        if self._tag != TAG_SIGNATURE:
            self._hash(chunk)
        if use == _USE_IMAGE:
            self._img.update(chunk)
            self.image_length += len(chunk)
            if self.sink is not None:
                self.sink(chunk)

    def _element_end(self):
        if self._use == _USE_KEEP:
            val = bytes(memoryview(self._kbuf)[:self._kfill])
            self._kfill = 0
            if self._tag == TAG_DESCRIPTOR:
                self.descriptor = Descriptor.parse(val)
            elif self._tag == TAG_SIGNATURE:
                self.key_id = val[:KEY_ID_LEN]
                self.sig = val[KEY_ID_LEN:]
            elif self._tag == TAG_INTEGRITY_CODE:
                if self.integrity_code:
                    self.integrity_ok = self.integrity_code == val
                self.integrity_value = val
        self._use = _USE_SKIP
        if self.received >= self.header.total_size:
            self._state = _S_DONE
        elif self._state != _S_RAW:
            self._state = _S_ELEM_HDR

    # Call after the last block: checks the file ended where it says it does.
    def finish(self):
        if self.header is None:
            raise OtaError("truncated-header", "file ended after %d bytes, inside the OTA header" % self.received)
        if self._state != _S_DONE:
            raise OtaError("truncated", "file ended after %d of %d bytes" % (self.received, self.header.total_size))
        if self._images == 0:
            raise OtaError("no-upgrade-image", "no upgrade image sub-element (tag 0x0000)")
        self.image_sha256 = self._img.digest()
        if self.signed_digest is None:
            self.signed_digest = self._sha.digest()
        return self

    def check_integrity(self):
        if self.integrity_ok is False:
            raise OtaError("integrity-code", "image integrity code (AES-MMO) does not match the file")


# Check hanota's signature and descriptor on a finished stream against the
# pinned keys (a list of 65-byte public points). Returns the matching key.
def check_signed(stream, keys):
    from hanfw import p256
    if stream.sig is None:
        raise OtaError("unsigned", "the image carries no hanota signature (sub-element 0xF0A1)")
    if stream.descriptor is None:
        raise OtaError("bad-descriptor", "signed image has no descriptor (sub-element 0xF0A0)")
    for key in keys:
        if p256.key_id(key) == stream.key_id:
            if not p256.verify(key, stream.signed_digest, stream.sig):
                raise OtaError("bad-signature", "signature does not verify with key %s" % _hex(stream.key_id))
            if stream.descriptor.image_hash != stream.image_sha256:
                raise OtaError("payload-hash", "manufacturer image hash does not match the descriptor")
            return key
    raise OtaError("unknown-key", "image is signed by key %s, which this device does not trust" % _hex(stream.key_id))


def _hex(b):
    import binascii
    return binascii.hexlify(b).decode()


# Parse a whole file from a readable stream (or bytes) in blocks; used by
# the host inspector and tests. Never reads more than `block` at a time.
def parse_stream(f, block=256, sink=None, integrity=True, allow_raw=False, max_total=None):
    s = OtaStream(sink=sink, integrity=integrity, allow_raw=allow_raw, max_total=max_total)
    if isinstance(f, (bytes, bytearray, memoryview)):
        mv = memoryview(f)
        for i in range(0, len(mv), block):
            s.feed(mv[i:i + block])
    else:
        buf = bytearray(block)
        mv = memoryview(buf)
        while True:
            n = f.readinto(buf)
            if not n:
                break
            s.feed(mv[:n])
    return s.finish()
