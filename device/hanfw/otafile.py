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

# descriptor value, version 1 (40 B): format version u8, payload kind u8, board family u16,
# security version u32, SHA-256 of the manufacturer image (32 B). Version 2 (116 B) goes on
# with: encoding u8, window bits u8, longest segment u16, target size u32, chain root (32 B:
# SHA-256 of the first segment), base size u32, base SHA-256 (32 B). In version 2 the 32-byte
# hash is always the *target's* (what lands in the bank: the Manufacturer Image Hash).
# A full image is still written as version 1, so devices that know only version 1 take it.
DESCRIPTOR_VERSION = const(1)
DESCRIPTOR_LEN = const(40)
DESCRIPTOR_V2 = const(2)
DESCRIPTOR_V2_LEN = const(116)
KEY_ID_LEN = const(8)
SIGNATURE_LEN = const(72)  # key id (8) + r||s (64)
SIGNATURE_ELEMENT_LEN = const(78)
INTEGRITY_LEN = const(16)

PAYLOAD_RAW = const(0)
PAYLOAD_ESP_APP = const(1)  # an ESP32 app image for a firmware bank
PAYLOAD_ROMFS = const(2)  # a ROMFS image of compiled modules for an app bank
PAYLOAD_KINDS = {"raw": 0, "esp-app": 1, "romfs": 2}

# how the upgrade image element's body encodes the target (descriptor version 2)
ENC_FULL = const(0)  # the body is the target itself
ENC_ZLIB = const(1)  # segments, each a zlib stream of a piece of the target
ENC_DELTA = const(2)  # segments, each a zlib stream of a sequential patch against the base
ENCODINGS = {"full": 0, "zlib": 1, "delta": 2}

# An encoded body is a chain of segments: target length u32 | payload length u32 |
# SHA-256 of the next segment (32 B; zero in the last) | payload. The descriptor holds the
# SHA-256 of the first segment (header and payload); each segment the hash of the next. The
# signature covers everything before it except the segments' bytes, which it covers through
# that chain: a device that resumes at a segment keeps only the next hash, not a SHA state.
# Every segment's target piece is a whole number of 4 KiB sectors, except the last.
SEG_HEADER_LEN = const(40)
SEG_UNIT = const(4096)

BOARD_ANY = const(0)
BOARD_FAMILIES = {"any": 0, "esp32": 1, "esp32s3": 2, "nrf52840": 3}

_HDR = "<IHHHHHIH32sI"  # the 56 fixed bytes
_ELEM = "<HI"
_DESC = "<BBHI32s"
_DESC2 = "<BBHI32sBBHI32sI32s"
_SEG = "<II32s"
_ZERO32 = bytes(32)

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


# Descriptor sub-element 0xF0A0: what the payload is, its anti-rollback counter, and
# (version 2) how the body is encoded. image_hash is the target's SHA-256.
class Descriptor:
    def __init__(self, payload_kind, security_version, board_family, image_hash,
                 encoding=ENC_FULL, window_bits=0, segment_max=0, target_size=0,
                 chain=_ZERO32, base_size=0, base_hash=_ZERO32, version=None):
        self.payload_kind = payload_kind
        self.security_version = security_version
        self.board_family = board_family
        self.image_hash = bytes(image_hash)
        self.encoding = encoding
        self.window_bits = window_bits
        self.segment_max = segment_max
        self.target_size = target_size
        self.chain = bytes(chain)
        self.base_size = base_size
        self.base_hash = bytes(base_hash)
        if version is None:
            version = DESCRIPTOR_VERSION if encoding == ENC_FULL else DESCRIPTOR_V2
        self.version = version

    @property
    def encoded(self):
        return self.encoding != ENC_FULL

    @property
    def length(self):
        return DESCRIPTOR_LEN if self.version == DESCRIPTOR_VERSION else DESCRIPTOR_V2_LEN

    def pack(self):
        if self.version == DESCRIPTOR_VERSION:
            if self.encoding != ENC_FULL:
                raise OtaError("bad-descriptor", "an encoded image needs descriptor version 2")
            return struct.pack(_DESC, DESCRIPTOR_VERSION, self.payload_kind, self.board_family,
                               self.security_version, self.image_hash)
        return struct.pack(_DESC2, DESCRIPTOR_V2, self.payload_kind, self.board_family,
                           self.security_version, self.image_hash, self.encoding,
                           self.window_bits, self.segment_max, self.target_size, self.chain,
                           self.base_size, self.base_hash)

    @staticmethod
    def parse(buf):
        n = len(buf)
        if n not in (DESCRIPTOR_LEN, DESCRIPTOR_V2_LEN):
            raise OtaError("bad-descriptor", "descriptor is %d bytes, expected %d or %d"
                           % (n, DESCRIPTOR_LEN, DESCRIPTOR_V2_LEN))
        ver = buf[0]
        if n == DESCRIPTOR_LEN:
            if ver != DESCRIPTOR_VERSION:
                raise OtaError("bad-descriptor", "descriptor format version %d is not supported" % ver)
            ver, kind, family, secver, digest = struct.unpack(_DESC, buf)
            return Descriptor(kind, secver, family, digest)
        if ver != DESCRIPTOR_V2:
            raise OtaError("bad-descriptor", "descriptor of %d bytes with format version %d" % (n, ver))
        f = struct.unpack(_DESC2, buf)
        d = Descriptor(f[1], f[3], f[2], f[4], f[5], f[6], f[7], f[8], f[9], f[10], f[11], DESCRIPTOR_V2)
        if d.encoding not in (ENC_FULL, ENC_ZLIB, ENC_DELTA):
            raise OtaError("unsupported-encoding", "encoding %d is not known" % d.encoding)
        if d.encoded and (d.segment_max == 0 or d.target_size == 0):
            raise OtaError("bad-descriptor", "an encoded image without segment limit or target size")
        if d.encoding == ENC_DELTA and d.base_size == 0:
            raise OtaError("bad-descriptor", "a delta image without a base size")
        return d


def pack_segment_header(target_len, payload_len, next_hash):
    return struct.pack(_SEG, target_len, payload_len, next_hash)


def _no_segment(target_len):
    pass


# Streaming parser. Feed it the file in blocks of any size; it never holds
# more than one small element value. Upgrade-image bytes go to sink(memoryview)
# as they arrive (the caller writes them to a bank). Attributes once known:
#   header, elements [(tag, length, offset)], descriptor, key_id, sig,
#   signed_digest (SHA-256 of the bytes before the signature element),
#   image_sha256, image_length, integrity_ok (None if no 0x0003 element),
#   format ("zigbee" or "gb-raw"), received.
# An encoded body (descriptor version 2) is walked segment by segment: only segment
# payload bytes go to sink, seg_end(target_len) is called once a segment's SHA-256 has
# matched the chain, and seg_next (file offset of the next segment), seg_expect (its
# hash; None after the last) and target_seen tell a resume record where the walk stands.
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
        self._kbuf = bytearray(DESCRIPTOR_V2_LEN)  # the longest kept value
        self._kfill = 0
        self._tag = 0
        self._left = 0
        self._use = _USE_SKIP
        self._sha = hashlib.sha256()
        self._img = hashlib.sha256()
        self._mmo = Mmo() if integrity else None
        self._images = 0
        self.seg_end = _no_segment  # the decoder's end(target_len), once there is one
        self.chained = False  # the image body is a segment chain (set at its element header)
        self.seg_next = 0
        self.seg_expect = None
        self.segments = 0
        self.target_seen = 0
        self._shdr = bytearray(0)  # a segment header's bytes (40 once the body is chained)
        self._sfill = 0
        self._sleft = 0
        self._stlen = 0
        self._ssha = None

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
            d = self.descriptor
            if d is not None and d.encoded:
                self._chain_begin(d, self.received)
        elif tag == TAG_SIGNATURE:
            if length != SIGNATURE_LEN:
                raise OtaError("bad-signature-element", "signature element is %d bytes, expected %d" % (length, SIGNATURE_LEN))
            self.signed_digest = self._sha.digest()
            self._use = _USE_KEEP
        elif tag == TAG_DESCRIPTOR:
            if self.descriptor is not None or length not in (DESCRIPTOR_LEN, DESCRIPTOR_V2_LEN):
                raise OtaError("bad-descriptor", "descriptor element of %d bytes (expected one of %d or %d)"
                               % (length, DESCRIPTOR_LEN, DESCRIPTOR_V2_LEN))
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
        if use == _USE_IMAGE and self.chained:
            # the signature covers the segments through their hash chain, not directly
            if self._mmo is not None and self.integrity_code is None:
                self._mmo.update(chunk)
            self._img.update(chunk)
            self.image_length += len(chunk)
            self._walk(chunk)
            return
        if self._tag != TAG_SIGNATURE:
            self._hash(chunk)
        if use == _USE_IMAGE:
            self._img.update(chunk)
            self.image_length += len(chunk)
            if self.sink is not None:
                self.sink(chunk)

    # ---- the segment chain of an encoded body
    def _chain_begin(self, d, offset):
        self.chained = True
        self.seg_next = offset
        self.seg_expect = d.chain
        self._shdr = bytearray(SEG_HEADER_LEN)
        self._sfill = 0
        self._sleft = -1  # -1: in a segment header

    # Continue an encoded body from a resume record: the head (header, descriptor and
    # image element header) has been fed; the next segment starts at file offset `offset`
    # with SHA-256 `expect`, after `target` bytes of target (and `segments` segments).
    def resume_chain(self, offset, expect, target, segments):
        if not self.chained or self._state != _S_ELEM_BODY or offset < self.received \
                or offset - self.received > self._left:
            raise OtaError("malformed", "resume offset %d does not fit the file" % offset)
        skip = offset - self.received
        self.received = offset
        self._left -= skip
        self.image_length += skip
        self.seg_next = offset
        self.seg_expect = expect
        self.target_seen = target
        self.segments = segments

    def _walk(self, chunk):
        pos = self.received - len(chunk)  # file offset of chunk[0]
        i = 0
        n = len(chunk)
        while i < n:
            if self.seg_expect is None:
                raise OtaError("bad-segment", "%d bytes after the last segment" % (n - i))
            if self._sleft < 0:
                take = min(SEG_HEADER_LEN - self._sfill, n - i)
                self._shdr[self._sfill:self._sfill + take] = chunk[i:i + take]
                self._sfill += take
                i += take
                if self._sfill == SEG_HEADER_LEN:
                    self._seg_header()
                    if self._sleft == 0:
                        self._seg_done(pos + i)
                continue
            take = min(self._sleft, n - i)
            part = chunk[i:i + take]
            self._ssha.update(part)
            if self.sink is not None:
                self.sink(part)
            i += take
            self._sleft -= take
            if self._sleft == 0:
                self._seg_done(pos + i)

    def _seg_header(self):
        tlen, plen, _nxt = struct.unpack(_SEG, self._shdr)
        d = self.descriptor
        if plen == 0 or plen > d.segment_max:
            raise OtaError("bad-segment", "segment %d has %d payload bytes (the file allows 1..%d)"
                           % (self.segments, plen, d.segment_max))
        if tlen == 0 or self.target_seen + tlen > d.target_size:
            raise OtaError("bad-segment", "segment %d's %d target bytes overrun the target size %d"
                           % (self.segments, tlen, d.target_size))
        if (self.target_seen + tlen) % SEG_UNIT and self.target_seen + tlen != d.target_size:
            raise OtaError("bad-segment", "segment %d ends at target offset %d, not on a 4 KiB boundary"
                           % (self.segments, self.target_seen + tlen))
        self._ssha = hashlib.sha256()
        self._ssha.update(self._shdr)
        self._sleft = plen
        self._stlen = tlen

    def _seg_done(self, end):
        if self._ssha.digest() != self.seg_expect:
            raise OtaError("bad-segment", "segment %d (file offset %d) does not match its hash"
                           % (self.segments, self.seg_next))
        self._ssha = None
        nxt = bytes(self._shdr[8:40])
        tlen = self._stlen
        self.segments += 1
        self.target_seen += tlen
        if nxt == _ZERO32:
            nxt = None
            if self.target_seen != self.descriptor.target_size:
                raise OtaError("bad-segment", "the segments make %d target bytes, the descriptor says %d"
                               % (self.target_seen, self.descriptor.target_size))
        self._sfill = 0
        self._sleft = -1
        self.seg_end(tlen)
        self.seg_next = end
        self.seg_expect = nxt

    @property
    def chain_done(self):
        return self.chained and self.seg_expect is None

    def _element_end(self):
        if self._use == _USE_IMAGE and self.chained and self.seg_expect is not None:
            if self._sleft > 0 or self._sfill:
                raise OtaError("truncated-segment", "the image element ends inside segment %d"
                               % self.segments)
            raise OtaError("truncated-segment", "the image element ends after segment %d, "
                           "before the last segment" % self.segments)
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
# An encoded file (descriptor version 2) is checked up to its segment chain; pass
# target_sha256 (the decoded target's) to check the target too.
def check_signed(stream, keys, target_sha256=None):
    from hanfw import p256
    if stream.sig is None:
        raise OtaError("unsigned", "the image carries no hanota signature (sub-element 0xF0A1)")
    if stream.descriptor is None:
        raise OtaError("bad-descriptor", "signed image has no descriptor (sub-element 0xF0A0)")
    for key in keys:
        if p256.key_id(key) == stream.key_id:
            if not p256.verify(key, stream.signed_digest, stream.sig):
                raise OtaError("bad-signature", "signature does not verify with key %s" % _hex(stream.key_id))
            d = stream.descriptor
            if d.encoded:
                # the segments were checked against the chain as they arrived; the target
                # (decoded) is checked by whoever decoded it: target_sha256
                if not stream.chain_done:
                    raise OtaError("bad-segment", "the segment chain is incomplete")
                if target_sha256 is not None and target_sha256 != d.image_hash:
                    raise OtaError("payload-hash", "decoded image hash does not match the descriptor")
            elif d.image_hash != stream.image_sha256:
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
