# hanota device (and the host's reader and writer): the GBCS Upgrade Image and the GBCS OTA
# file (GB Companion Specification; /work/shared/reference/gbcs_duis.md section 7), apart from
# hanfw.gbcs so that a device checking a command does not load the image reader, nor one
# downloading an image the message codec.
#
# Upgrade Image = Manufacturer Image || Force-Replace (1) || 40 || Supplier r || s (64), the
# signature over the Manufacturer Image alone; its SHA-256 is the Manufacturer Image Hash a
# CS06 names. The GBCS OTA file is the Zigbee OTA header (60 bytes: hardware versions
# present) followed directly by the Upgrade Image, with no sub-element tag (as the DCC's own
# SR 11.1 sample is built). Both are read as streams: only the 66-byte trailer is kept.

import hashlib

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

_SIG_LEN = const(64)


class ImageError(ValueError):
    """An image refused: `reason` is 'bad-image' (not this layout), 'truncated' (not all
    there) or 'bad-signature'; the message says more. (Not hanfw.gbcs.GbcsError, so that
    reading an image does not load the message codec.)"""

    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __str__(self):
        return self.message

TRAILER_LEN = const(66)


class UpgradeImageReader:
    """The Upgrade Image of `length` bytes fed in pieces of any size: hashes the Manufacturer
    Image as it passes (optionally handing it to sink(memoryview)) and keeps only the 66-byte
    trailer. After the last byte: image_hash, force_replace, signature."""

    def __init__(self, length, sink=None):
        if length < TRAILER_LEN + 1:
            raise ImageError("bad-image", "an Upgrade Image of %d bytes has no room for the "
                            "Manufacturer Image and its 66-byte trailer" % length)
        self.length = length
        self.image_len = length - TRAILER_LEN
        self.received = 0
        self._h = hashlib.sha256()
        self._trailer = bytearray(TRAILER_LEN)
        self._sink = sink
        self.image_hash = None
        self.force_replace = None
        self.signature = None

    def feed(self, data):
        mv = memoryview(data)
        if self.received + len(mv) > self.length:
            raise ImageError("bad-image", "more than the %d bytes of the Upgrade Image" % self.length)
        i = 0
        if self.received < self.image_len:
            i = min(len(mv), self.image_len - self.received)
            self._h.update(mv[:i])
            if self._sink is not None:
                self._sink(mv[:i])
            self.received += i
        if i < len(mv):
            t = self.received - self.image_len
            k = len(mv) - i
            self._trailer[t:t + k] = mv[i:]
            self.received += k
        if self.received == self.length:
            self._finish()

    def _finish(self):
        t = self._trailer
        if t[1] != _SIG_LEN:
            raise ImageError("bad-image", "Upgrade Image trailer: signature length 0x%02X, expected 0x40"
                            % t[1])
        self.image_hash = self._h.digest()
        self.force_replace = t[0]
        self.signature = bytes(t[2:])

    @property
    def done(self):
        return self.image_hash is not None

    def check(self, supplier_pub):
        """ImageError 'truncated' if not all here, 'bad-signature' unless the Supplier signed
        the Manufacturer Image."""
        from hanfw import p256
        if not self.done:
            raise ImageError("truncated", "Upgrade Image: %d of %d bytes" % (self.received, self.length))
        if not p256.verify(supplier_pub, self.image_hash, self.signature):
            raise ImageError("bad-signature", "the Supplier's signature over the Manufacturer Image "
                            "does not verify")


def upgrade_image(manufacturer_image, signature, force_replace=0):
    if len(signature) != _SIG_LEN:
        raise ValueError("signature must be 64 bytes r || s")
    return bytes(manufacturer_image) + bytes((force_replace, _SIG_LEN)) + bytes(signature)


class OtaFileReader:
    """A GBCS OTA file fed in pieces: the Zigbee OTA header (read here with struct, without
    hanfw.otafile's parser, which a device checking a GBCS image need not load), then the
    Upgrade Image through UpgradeImageReader (`image`). Header fields as attributes once
    read: header_length, field_control, manufacturer, image_type, file_version,
    header_string, total_size, min_hw, max_hw (None when absent)."""

    def __init__(self, sink=None, max_total=None):
        self._hbuf = bytearray()
        self._sink = sink
        self._max = max_total
        self.header_length = 0
        self.image = None

    def _header(self, b):
        import struct
        magic, ver, hlen, fc, self.manufacturer, self.image_type, self.file_version, \
            self.stack_version, self.header_string, total = struct.unpack_from(_OTA_HDR, b, 0)
        if magic != 0x0BEEF11E or ver != 0x0100:
            raise ImageError("bad-image", "not a Zigbee OTA file (identifier 0x%08X, version "
                            "0x%04X)" % (magic, ver))
        want = 56 + (1 if fc & 1 else 0) + (8 if fc & 2 else 0) + (4 if fc & 4 else 0)
        if hlen != want:
            raise ImageError("bad-image", "OTA header length %d, field control 0x%04X needs %d"
                            % (hlen, fc, want))
        if self._max is not None and total > self._max:
            raise ImageError("bad-image", "OTA file of %d bytes, at most %d" % (total, self._max))
        self.field_control = fc
        self.min_hw = self.max_hw = None
        if fc & 4:
            self.min_hw, self.max_hw = struct.unpack_from("<HH", b, hlen - 4)
        self.total_size = total
        return hlen

    def feed(self, data):
        mv = memoryview(data)
        hbuf = self._hbuf
        if self.image is None and hbuf is not None:
            need = 69 - len(hbuf)  # the longest OTA header
            hbuf.extend(mv[:need])
            mv = mv[need:]
            if len(hbuf) < 10:
                return
            hlen = hbuf[6] | hbuf[7] << 8
            if len(hbuf) < max(hlen, 56):
                return
            self.header_length = self._header(hbuf)
            if self.total_size < hlen:
                raise ImageError("bad-image", "OTA total size %d is less than its header" % self.total_size)
            self.image = UpgradeImageReader(self.total_size - hlen, self._sink)
            rest = hbuf[hlen:]
            self._hbuf = None
            if rest:
                self.image.feed(rest)
        if len(mv) and self.image is not None:
            self.image.feed(mv)

    @property
    def done(self):
        return self.image is not None and self.image.done


_OTA_HDR = "<IHHHHHIH32sI"


def ota_file(header, upgrade):
    """The GBCS OTA file: header (an otafile.Header, total size set here) || Upgrade Image."""
    header.total_size = header.header_length + len(upgrade)
    return header.pack() + bytes(upgrade)
