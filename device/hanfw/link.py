# hanota device: the link that carries ZCL frames between the hub and a device.
# Addressing by EUI-64, a frame counter and a truncated HMAC-SHA256 with a
# per-device link key derived from the install code (Zigbee style: AES-MMO).
#
# Frame (little-endian), the same over UDP (one datagram each) and serial:
#   0  kind u8          DATA 0, JOIN_REQ 1, JOIN_RSP 2, HELLO 3, HELLO_ACK 4
#   1  src EUI-64 (8)   wire order (least significant byte first)
#   9  dst EUI-64 (8)   BROADCAST = ff * 8 before the hub is known
#   17 counter u32      strictly increasing per sender; replays are dropped
#   21 cluster u16      0x0019 (OTA) for DATA
#   23 payload          a ZCL frame for DATA; see pack_join_* below otherwise
#   -8 MAC              HMAC-SHA256(link key, every byte before it)[:8]
# Serial framing (UART / pty): SLIP (END 0xC0, ESC 0xDB) around frame + CRC-32.
#
# BUNDLE (kind 5, hub to device only): several ZCL frames of one cluster in one
# link frame, each as length u16 || ZCL frame, handled in order as if each came
# in its own DATA frame. The hub bundles the Image Block Responses of a page for
# a device whose HELLO said it takes frames longer than MAX_FRAME: one header,
# counter and MAC per bundle instead of per block (48 bytes of headers on every
# 255-byte block cap the payload at 84 % of the link; a bundle of 16 reaches 92 %).

import struct
import hashlib
import binascii

from hanfw import roles  # the role table: JOIN_REQ's role codes

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

KIND_DATA = const(0)
KIND_JOIN_REQ = const(1)
KIND_JOIN_RSP = const(2)
KIND_HELLO = const(3)
KIND_HELLO_ACK = const(4)
KIND_BUNDLE = const(5)

HEADER_LEN = const(23)
MAC_LEN = const(8)
OVERHEAD = const(31)
MAX_FRAME = const(320)  # the largest frame anyone sends unbundled (and the hub accepts)
# The largest frame a device takes by default (its HELLO says so): a bundle of 16
# full Image Block Responses, 31 + 16 * (2 + 17 + 255) = 4415 bytes.
RX_FRAME = const(4480)
BUNDLE_ITEM = const(2)  # length prefix of each frame in a bundle
BROADCAST = b"\xff" * 8

# join services and statuses
SERVICE_ORDINARY = const(0)  # the ordinary HAN join service (PPMID, HCALCS)
SERVICE_ALT_HAN_P2P = const(1)  # point-to-point Alt HAN
JOIN_OK = const(0)
JOIN_UNKNOWN_DEVICE = const(1)  # not in the hub's registry / no install code
JOIN_ALT_HAN_REFUSED = const(2)  # an Alt HAN device may not use the ordinary join service
JOIN_P2P_UNAVAILABLE = const(3)  # no point-to-point pairing on this hub (e.g. after a TCSO)
JOIN_SERVICE_REFUSED = const(4)  # the device refuses the service offered
JOIN_STATUS_NAMES = ("ok", "unknown device", "Alt HAN device refused by the ordinary join service",
                     "point-to-point join unavailable on this hub", "join service refused")

_SLIP_END = const(0xC0)
_SLIP_ESC = const(0xDB)
_SLIP_ESC_END = const(0xDC)
_SLIP_ESC_ESC = const(0xDD)


class LinkError(Exception):
    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason


# Link key from an install code (hex string or bytes ending in its CRC-16),
# as Zigbee does: the AES-MMO hash of the install code.
def link_key(install_code):
    from hanfw.mmo import Mmo
    if isinstance(install_code, str):
        install_code = binascii.unhexlify(install_code.replace(":", "").replace(" ", ""))
    if len(install_code) not in (8, 10, 14, 18):
        raise LinkError("install-code", "install code must be 6, 8, 12 or 16 bytes plus a CRC-16")
    if _crc16_x25(install_code[:-2]) != struct.unpack("<H", install_code[-2:])[0]:
        raise LinkError("install-code", "install code CRC-16 does not match")
    m = Mmo()
    m.update(install_code)
    return m.digest()


# CRC-16/X-25 (as Zigbee install codes use), little-endian in the code.
def _crc16_x25(data):
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
    return crc ^ 0xFFFF


def install_code_with_crc(code):
    return bytes(code) + struct.pack("<H", _crc16_x25(code))


# HMAC-SHA256 with the key pads prepared once (MicroPython has no hmac module).
class Mac:
    def __init__(self, key):
        k = bytes(key)
        if len(k) > 64:
            k = hashlib.sha256(k).digest()
        k = k + bytes(64 - len(k))
        self._ipad = bytes(b ^ 0x36 for b in k)
        self._opad = bytes(b ^ 0x5C for b in k)

    def tag(self, data):
        inner = hashlib.sha256(self._ipad)
        inner.update(data)
        outer = hashlib.sha256(self._opad)
        outer.update(inner.digest())
        return outer.digest()[:MAC_LEN]


# Build a frame into a new bytes object.
def pack(mac, kind, src, dst, counter, cluster, payload):
    head = struct.pack("<B8s8sIH", kind, src, dst, counter, cluster)
    body = head + bytes(payload)
    return body + mac.tag(body)


# Check a frame's MAC and return (kind, src, dst, counter, cluster, payload mv).
# keys(src) gives the Mac for a sender (or None if unknown); max_frame is the
# longest frame the receiver takes (a device that announced bundles: RX_FRAME).
def unpack(frame, keys, max_frame=MAX_FRAME):
    n = len(frame)
    if n < OVERHEAD:
        raise LinkError("short", "link frame of %d bytes is shorter than %d" % (n, OVERHEAD))
    if n > max_frame:
        raise LinkError("long", "link frame of %d bytes is longer than %d" % (n, max_frame))
    kind, src, dst, counter, cluster = struct.unpack_from("<B8s8sIH", frame, 0)
    if kind > KIND_BUNDLE:
        raise LinkError("kind", "unknown link frame kind %d" % kind)
    mac = keys(src)
    if mac is None:
        raise LinkError("unknown-sender", "frame from unknown device %s" % eui_str(src))
    mv = memoryview(frame)
    if mac.tag(mv[:n - MAC_LEN]) != bytes(mv[n - MAC_LEN:]):
        raise LinkError("bad-mac", "frame from %s fails authentication" % eui_str(src))
    return kind, src, dst, counter, cluster, mv[HEADER_LEN:n - MAC_LEN]


# A bundle's payload -> its ZCL frames (memoryviews into it), in order.
def split_bundle(payload):
    mv = memoryview(payload)
    n = len(mv)
    out = []
    p = 0
    while p < n:
        if p + BUNDLE_ITEM > n:
            raise LinkError("malformed", "bundle ends inside an item length at byte %d" % p)
        k = mv[p] | mv[p + 1] << 8
        p += BUNDLE_ITEM
        if k == 0:
            raise LinkError("malformed", "empty bundle item at byte %d" % (p - BUNDLE_ITEM))
        if p + k > n:
            raise LinkError("malformed", "bundle item of %d bytes at byte %d overruns its %d"
                            % (k, p - BUNDLE_ITEM, n))
        out.append(mv[p:p + k])
        p += k
    if not out:
        raise LinkError("malformed", "empty bundle")
    return out


# A bundle's payload from ZCL frames (the hub's side).
def pack_bundle(frames):
    out = bytearray()
    for f in frames:
        out += struct.pack("<H", len(f))
        out += f
    return bytes(out)


# Replay window: accept only counters above the last one seen from a sender.
class Replay:
    def __init__(self):
        self.last = {}

    def check(self, src, counter):
        prev = self.last.get(src)
        if prev is not None and counter <= prev:
            raise LinkError("replay", "frame counter %d from %s is not above %d" % (counter, eui_str(src), prev))
        self.last[src] = counter


# EUI-64 text <-> bytes, written once (host and device): text is most significant byte
# first ("00:11:22:33:44:55:66:77"), bytes are wire order (least significant first).
def eui_str(eui):
    return ":".join("%02x" % b for b in reversed(bytes(eui)))


def eui_from_str(text):
    # separators ":" or "-" are optional; raises ValueError unless 16 hex digits remain
    digits = text.replace(":", "").replace("-", "")
    if len(digits) != 16:
        raise ValueError("an EUI-64 has 16 hex digits: %r" % text)
    return bytes(reversed(bytes.fromhex(digits)))


# ---- join and hello payloads

# JOIN_REQ: service u8, role u8, manufacturer u16, image type u16, hardware u16,
# file version u32, nonce (8)
_JOIN_REQ = "<BBHHHI8s"
# JOIN_RSP: status u8, hub EUI-64 (8), hub counter u32, nonce (8)
_JOIN_RSP = "<B8sI8s"
# HELLO: nonce (8), file version u32[, largest frame the device takes u16 (bundles)];
# HELLO_ACK: nonce (8), hub counter u32
_HELLO = "<8sI"
_HELLO_LEN = const(12)


def pack_join_req(service, role, manufacturer, image_type, hw_version, file_version, nonce):
    return struct.pack(_JOIN_REQ, service, roles.row(role)[1], manufacturer, image_type, hw_version,
                       file_version, nonce)


def parse_join_req(p):
    if len(p) != struct.calcsize(_JOIN_REQ):
        raise LinkError("malformed", "join request of %d bytes" % len(p))
    f = struct.unpack(_JOIN_REQ, p)
    try:
        role = roles.row(f[1])[0]
    except ValueError:
        raise LinkError("malformed", "join request with unknown role %d" % f[1])
    return (f[0], role) + f[2:]


def pack_join_rsp(status, hub_eui, hub_counter, nonce):
    return struct.pack(_JOIN_RSP, status, hub_eui, hub_counter, nonce)


def parse_join_rsp(p):
    if len(p) != struct.calcsize(_JOIN_RSP):
        raise LinkError("malformed", "join response of %d bytes" % len(p))
    return struct.unpack(_JOIN_RSP, p)


def pack_hello(nonce, value, rx_frame=0):
    if rx_frame:
        return struct.pack(_HELLO + "H", nonce, value, rx_frame)
    return struct.pack(_HELLO, nonce, value)


def parse_hello(p):
    if len(p) not in (_HELLO_LEN, _HELLO_LEN + 2):
        raise LinkError("malformed", "hello of %d bytes" % len(p))
    return struct.unpack_from(_HELLO, p, 0)


# The largest frame a HELLO's sender takes; MAX_FRAME when it does not say.
def hello_rx_frame(p):
    if len(p) == _HELLO_LEN + 2:
        return max(MAX_FRAME, struct.unpack_from("<H", p, _HELLO_LEN)[0])
    return MAX_FRAME


# ---- serial framing: SLIP around frame || CRC-32 (little-endian)

def slip_encode(frame):
    crc = binascii.crc32(frame) & 0xFFFFFFFF
    out = bytearray([_SLIP_END])
    for b in bytes(frame) + struct.pack("<I", crc):
        if b == _SLIP_END:
            out += b"\xdb\xdc"
        elif b == _SLIP_ESC:
            out += b"\xdb\xdd"
        else:
            out.append(b)
    out.append(_SLIP_END)
    return bytes(out)


# Incremental decoder: feed bytes, get whole frames (CRC checked) from pop().
# Bad CRCs and oversize frames are counted and dropped, never raised.
# feed_frame() is the device's way: no copy of a frame at all (a 4.4 KiB bundle copied
# per frame needs a 4.4 KiB piece of a 64 KiB heap every time, which a fragmented heap
# does not have); the frame is a memoryview into the decoder's own buffer.
class SlipDecoder:
    def __init__(self, max_frame=MAX_FRAME + 4):
        self._buf = bytearray(max_frame)
        self._mv = memoryview(self._buf)
        self._n = 0
        self._esc = False
        self._over = False
        self.frames = []
        self.frame = None
        self.bad = 0

    def feed(self, data):
        # every whole frame in data goes to self.frames (copies)
        if self._n < 0:
            self._n = 0
        i = 0
        n = len(data)
        while i < n:
            i = self._run(data, i, n)
            if self._n < 0:  # a frame ended: copy it out, the buffer is needed again
                self.frames.append(bytes(self._mv[:-self._n]))
                self._n = 0

    def feed_frame(self, data, start=0, end=-1):
        # Decode data[start:end] up to the end of the first whole, CRC-checked frame in it
        # and return where it stopped; that frame is then self.frame (else None), a
        # memoryview into the decoder's buffer, valid until the next feed_frame. Nothing
        # is allocated but that one view.
        if self._n < 0:
            self._n = 0
        i = self._run(data, start, len(data) if end < 0 else end)
        self.frame = self._mv[:-self._n] if self._n < 0 else None
        return i

    def _run(self, data, i, n):
        # the byte loop over data[i:n]: stops after the END of a good frame, leaving
        # -(its length) in _n; returns the index it stopped at
        buf = self._buf
        while i < n:
            b = data[i]
            i += 1
            if b == _SLIP_END:
                got = self._n
                over = self._over
                self._n = 0
                self._esc = False
                self._over = False
                if over:
                    self.bad += 1
                elif got:
                    got = self._check(got)
                    if got:
                        self._n = -got
                        return i
                continue
            if self._esc:
                self._esc = False
                if b == _SLIP_ESC_END:
                    b = _SLIP_END
                elif b == _SLIP_ESC_ESC:
                    b = _SLIP_ESC
                else:
                    self._over = True
            elif b == _SLIP_ESC:
                self._esc = True
                continue
            if self._n >= len(buf):
                self._over = True
                continue
            buf[self._n] = b
            self._n += 1
        return i

    def _check(self, n):
        # length of the frame body when its CRC-32 matches, else 0 (counted as bad)
        if n < 5:
            self.bad += 1
            return 0
        (crc,) = struct.unpack_from("<I", self._buf, n - 4)
        if crc != binascii.crc32(self._mv[:n - 4]) & 0xFFFFFFFF:
            self.bad += 1
            return 0
        return n - 4

    def pop(self):
        return self.frames.pop(0) if self.frames else None
