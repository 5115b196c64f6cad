# hanota device (and the host's codec): GBCS messages for firmware (GB Companion
# Specification), decoded and encoded byte-exactly, and checked the way GBCS makes a device
# check them. Reference: /work/shared/reference/gbcs_duis.md sections 5 to 8 (framing, codes,
# hand decodes), checked against the DCC's RTDS 4.5.0 files and the GBCS section 18.4 vectors.
#
# Message layout (big-endian):
#   [MAC header: DD 00 00 00 00 00 00 | ciphered length (1, or 81 nn / 82 nn nn) |
#    security header 11 00000000]                              (commands over the WAN)
#   general-signing APDU: DF 09 | CRA flag | originator counter (8) | 08 originator (8) |
#     08 recipient (8) | date-time (00, or 0C + 12 DLMS bytes) | other-information (length,
#     message code (2) [, supplementary remote party id (8), its counter (8)
#     [, supplementary originator counter (8) [, certificate ...]]]) | content length | DER payload
#   [signature length (00 or 40) | r || s (64)]                (absent in a pre-command)
#   [MAC (12)]                                                 (with the MAC header)
#
# The signature covers the APDU from the byte after DF to the end of the payload; the MAC is
# AES-128-GMAC under a key from ECDH (ACB or peer KA key, device KA key) and the GBCS KDF,
# over 11 00000000 00 (sic: the security header and a zero byte) and the APDU with its
# signature field. Payloads are strict DER (minimal lengths and integers), so that what
# decodes re-encodes to the same bytes: a non-minimal form is refused as malformed.
#
# Decoding works on one buffer (a command is under 200 bytes) with offsets, and copies only
# the fields it returns. The Upgrade Image and the GBCS OTA file are hanfw.gbcsimage's.

import hashlib

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

# CRA flag: command, response, alert.
CRA_COMMAND = const(1)
CRA_RESPONSE = const(2)
CRA_ALERT = const(3)

# Message codes (use cases).
MSG_CS06 = const(0x0012)  # Activate Firmware: command and response
MSG_FD_ALERT = const(0x00CA)  # Future-Dated Firmware Activation Alert (8F66 / 8F67)
MSG_CCS08 = const(0x0128)  # Firmware Transfer Alert (from the Comms Hub Function)
MSG_CS08 = const(0x0129)  # Read PPMID/HCALCS Firmware Version
MSG_CS09 = const(0x012B)  # PPMID Firmware Activation Alert

# Alert codes.
ALERT_FD_ACTIONED = const(0x8F66)  # future-dated HAN command actioned
ALERT_FD_NOT_ACTIONED = const(0x8F67)  # future-dated HAN command not actioned
ALERT_TRANSFER_FAILED = const(0x8F89)
ALERT_TRANSFER_OK = const(0x8F8A)
ALERT_FIRMWARE_VERSION = const(0x8F8B)

# CS06 ExecutionOutcome response codes.
CS06_SUCCESS = const(0)
CS06_NO_IMAGE_HELD = const(1)
CS06_HASH_MISMATCH = const(2)
CS06_ACTIVATION_FAILURE = const(3)
CS06_CODES = ("Success", "No Image Held", "Hash Mismatch", "Activation Failure")
# CS08 response codes.
CS08_CODES = ("Read Success", "Read Failure")
# CCS08 response codes (distribution).
CCS08_CODES = ("Success", "Image Discarded", "Hardware Version Mismatch", "File Transfer Failure")

# A CS06 whose execution date-time is this cancels the pending future-dated one.
CANCEL_TIME = "99991231235959Z"

MESSAGE_NAMES = {
    MSG_CS06: "CS06 Activate Firmware",
    MSG_FD_ALERT: "Future Dated Firmware Activation Alert",
    MSG_CCS08: "CCS08 Firmware Transfer Alert",
    MSG_CS08: "CS08 Read PPMID/HCALCS Firmware Version",
    MSG_CS09: "CS09 PPMID Firmware Activation Alert",
}

# Commands a HAN device (HCALCS, PPMID) acts on: CS06 needs the Supplier's signature.
COMMAND_CODES = (MSG_CS06, MSG_CS08)

_MAC_LEN = const(12)
_SIG_LEN = const(64)
_SEC_HEADER = b"\x11\x00\x00\x00\x00"
_MAC_START = b"\xDD\x00\x00\x00\x00\x00\x00"
_KDF_ALG = b"\x60\x85\x74\x06\x08\x03\x00"

# Why a message was refused (GbcsError.reason).
REASONS = ("truncated", "malformed", "not-a-command", "wrong-recipient", "wrong-originator",
           "no-mac", "bad-mac", "unknown-message-code", "unsigned", "bad-signature",
           "counter-mismatch", "replayed-counter", "bad-image")


class GbcsError(ValueError):
    """A message refused; `reason` is one of REASONS, the message says more."""

    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __str__(self):
        return self.message


def _truncated(what):
    return GbcsError("truncated", "message ends inside the %s" % what)


def _malformed(what):
    return GbcsError("malformed", what)


# ---- lengths and DER -----------------------------------------------------------------


# (length, next offset) of a length field at buf[pos]: one byte < 0x80, or 81 nn / 82 nn nn,
# always in the shortest form. Running out of bytes is 'truncated' in the framing, but
# 'malformed' inside a DER payload (der=True), whose container's size is already known.
def _len(buf, pos, end, what, der=False):
    if pos >= end or buf[pos] == 0x81 and pos + 2 > end or buf[pos] == 0x82 and pos + 3 > end:
        if der:
            raise _malformed("%s: length runs past its container" % what)
        raise _truncated(what)
    b = buf[pos]
    if b < 0x80:
        return b, pos + 1
    if b == 0x81:
        n = buf[pos + 1]
        if n < 0x80:
            raise _malformed("%s: length %d not in its shortest form" % (what, n))
        return n, pos + 2
    if b == 0x82:
        n = buf[pos + 1] << 8 | buf[pos + 2]
        if n < 0x100:
            raise _malformed("%s: length %d not in its shortest form" % (what, n))
        return n, pos + 3
    raise _malformed("%s: length byte 0x%02X" % (what, b))


def enc_len(n):
    if n < 0x80:
        return bytes((n,))
    if n < 0x100:
        return bytes((0x81, n))
    if n < 0x10000:
        return bytes((0x82, n >> 8, n & 0xFF))
    raise ValueError("length %d too long for GBCS" % n)


# (value start, value end) of a DER element with the given tag at buf[pos] within [pos, end).
def _tlv(buf, pos, end, tag, what):
    if pos >= end:
        raise _malformed("payload ends before the %s" % what)
    if buf[pos] != tag:
        raise _malformed("%s: tag 0x%02X, expected 0x%02X" % (what, buf[pos], tag))
    n, p = _len(buf, pos + 1, end, what, True)
    if p + n > end:
        raise _malformed("%s: length %d runs past its container" % (what, n))
    return p, p + n


# (non-negative INTEGER value, next offset); minimal two's complement, as DER wants.
def _int(buf, pos, end, what):
    s, e = _tlv(buf, pos, end, 0x02, what)
    if s == e or e - s > 9:
        raise _malformed("%s: INTEGER of %d bytes" % (what, e - s))
    if buf[s] & 0x80:
        raise _malformed("%s: negative INTEGER" % what)
    if e - s > 1 and buf[s] == 0 and not buf[s + 1] & 0x80:
        raise _malformed("%s: INTEGER not minimal" % what)
    return int.from_bytes(bytes(buf[s:e]), "big"), e


def _octets(buf, pos, end, what, size=None):
    s, e = _tlv(buf, pos, end, 0x04, what)
    if size is not None and e - s != size:
        raise _malformed("%s: %d bytes, expected %d" % (what, e - s, size))
    return bytes(buf[s:e]), e


# GeneralizedTime YYYYMMDDhhmmssZ as its text.
def _time(buf, pos, end, what):
    s, e = _tlv(buf, pos, end, 0x18, what)
    t = bytes(buf[s:e])
    if len(t) != 15 or t[14] != 0x5A or not all(0x30 <= c <= 0x39 for c in t[:14]):
        raise _malformed("%s: not a YYYYMMDDhhmmssZ time" % what)
    return t.decode(), e


def _end(pos, end, what):
    if pos != end:
        raise _malformed("%d bytes left over after the %s" % (end - pos, what))


def _tag(tag, value):
    return bytes((tag,)) + enc_len(len(value)) + value


def der_int(v):
    if v < 0:
        raise ValueError("GBCS INTEGERs here are not negative")
    n = 1
    while v >> (8 * n - 1):
        n += 1
    return _tag(0x02, v.to_bytes(n, "big"))


def der_octets(b):
    return _tag(0x04, bytes(b))


def der_time(t):
    t = t.encode() if isinstance(t, str) else bytes(t)
    if len(t) != 15 or t[14] != 0x5A:
        raise ValueError("time must be YYYYMMDDhhmmssZ, got %r" % (t,))
    return _tag(0x18, t)


def der_seq(*items):
    return _tag(0x30, b"".join(items))


DER_NULL = b"\x05\x00"

# ---- payloads --------------------------------------------------------------------------
# kind names, by (message code, CRA flag) and shape:
#   cs06-command    {manufacturer_image_hash, payload_originator_counter, execution_date_time}
#   cs06-accepted   {}  (NULL: a future-dated or cancellation command accepted)
#   cs06-response   {response_code, firmware_version}
#   fd-alert        {alert_code, execution_date_time, payload_originator_counter,
#                    response_code, firmware_version}
#   cs08-command    {}  (NULL)
#   cs08-response   {firmware_version, response_code}
#   ccs08-alert     {alert_code, date_time, entity_id, firmware_version, response_code}
#   cs09-alert      {alert_code, date_time, firmware_version, activation_result}
#   raw             {}  (any other message code: payload kept as bytes)


def _outcome(buf, pos, end, f):
    s, e = _tlv(buf, pos, end, 0x30, "ExecutionOutcome")
    f["response_code"], p = _int(buf, s, e, "responseCode")
    f["firmware_version"], p = _octets(buf, p, e, "firmwareVersion")
    _end(p, e, "ExecutionOutcome")
    return e


# (kind, fields) of a DER payload for this message code and CRA flag.
def decode_payload(code, cra, buf, pos=0, end=None):
    if end is None:
        end = len(buf)
    f = {}
    if (code == MSG_CS06 and cra == CRA_RESPONSE or code == MSG_CS08 and cra == CRA_COMMAND) \
            and bytes(buf[pos:end]) == DER_NULL:
        return ("cs06-accepted" if code == MSG_CS06 else "cs08-command"), f
    if code == MSG_CS06 and cra == CRA_RESPONSE:
        _end(_outcome(buf, pos, end, f), end, "payload")
        return "cs06-response", f
    if code == MSG_CS08 and cra == CRA_COMMAND:
        raise _malformed("CS08 command payload is not NULL")
    s, e = _tlv(buf, pos, end, 0x30, "payload SEQUENCE")
    _end(e, end, "payload")
    if code == MSG_CS06 and cra == CRA_COMMAND:
        f["manufacturer_image_hash"], p = _octets(buf, s, e, "manufacturerImageHash", 32)
        f["payload_originator_counter"], p = _int(buf, p, e, "originatorCounter")
        f["execution_date_time"] = None
        if p < e:
            f["execution_date_time"], p = _time(buf, p, e, "executionDateTime")
        _end(p, e, "CS06 command")
        return "cs06-command", f
    if code == MSG_FD_ALERT and cra == CRA_ALERT:
        f["alert_code"], p = _int(buf, s, e, "alertCode")
        f["execution_date_time"], p = _time(buf, p, e, "executionDateTime")
        f["payload_originator_counter"], p = _int(buf, p, e, "originatorCounter")
        _end(_outcome(buf, p, e, f), e, "activation alert")
        return "fd-alert", f
    if code == MSG_CS08 and cra == CRA_RESPONSE:
        f["firmware_version"], p = _octets(buf, s, e, "firmwareVersion")
        f["response_code"], p = _int(buf, p, e, "responseCode")
        _end(p, e, "CS08 response")
        return "cs08-response", f
    if code == MSG_CCS08 and cra == CRA_ALERT:
        f["alert_code"], p = _int(buf, s, e, "alertCode")
        f["date_time"], p = _time(buf, p, e, "dateTime")
        f["entity_id"], p = _octets(buf, p, e, "entityId", 8)
        f["firmware_version"], p = _octets(buf, p, e, "firmwareVersion")
        f["response_code"], p = _int(buf, p, e, "responseCode")
        _end(p, e, "CCS08 alert")
        return "ccs08-alert", f
    if code == MSG_CS09 and cra == CRA_ALERT:
        f["alert_code"], p = _int(buf, s, e, "alertCode")
        f["date_time"], p = _time(buf, p, e, "dateTime")
        f["firmware_version"], p = _octets(buf, p, e, "firmwareVersion")
        f["activation_result"], p = _int(buf, p, e, "activateImage")
        _end(p, e, "CS09 alert")
        return "cs09-alert", f
    raise _malformed("no payload shape for message code 0x%04X with CRA flag %d" % (code, cra))


def encode_payload(kind, f):
    if kind in ("cs06-accepted", "cs08-command"):
        return DER_NULL
    if kind == "cs06-command":
        items = [der_octets(f["manufacturer_image_hash"]), der_int(f["payload_originator_counter"])]
        if f.get("execution_date_time") is not None:
            items.append(der_time(f["execution_date_time"]))
        return der_seq(*items)
    outcome = None
    if "response_code" in f and "firmware_version" in f:
        outcome = der_seq(der_int(f["response_code"]), der_octets(f["firmware_version"]))
    if kind == "cs06-response":
        return outcome
    if kind == "fd-alert":
        return der_seq(der_int(f["alert_code"]), der_time(f["execution_date_time"]),
                       der_int(f["payload_originator_counter"]), outcome)
    if kind == "cs08-response":
        return der_seq(der_octets(f["firmware_version"]), der_int(f["response_code"]))
    if kind == "ccs08-alert":
        return der_seq(der_int(f["alert_code"]), der_time(f["date_time"]),
                       der_octets(f["entity_id"]), der_octets(f["firmware_version"]),
                       der_int(f["response_code"]))
    if kind == "cs09-alert":
        return der_seq(der_int(f["alert_code"]), der_time(f["date_time"]),
                       der_octets(f["firmware_version"]), der_int(f["activation_result"]))
    raise ValueError("unknown payload kind %r" % (kind,))


# ---- the message -----------------------------------------------------------------------


class Message:
    """One GBCS message. `signature` is None in a pre-command (no signature-length byte),
    b"" when unsigned (length 00), else the 64-byte r || s. `mac` is the 12-byte MAC when the
    message has the MAC header, else None. `payload` is the DER payload as sent; `kind` and
    `fields` its decoded shape (see decode_payload). After decode, `raw` is the message and
    the offsets name the APDU (apdu_start), the signed bytes [signed_start, signed_end) and
    the end of the signature field (sig_end)."""

    def __init__(self, cra=CRA_COMMAND, counter=0, originator=bytes(8), recipient=bytes(8),
                 message_code=0, kind="raw", fields=None, payload=None, date_time=None,
                 supp_id=None, supp_counter=None, supp_orig_counter=None, certificate=None,
                 signature=None, mac_header=False, mac=None):
        self.cra = cra
        self.counter = counter
        self.originator = originator
        self.recipient = recipient
        self.date_time = date_time
        self.message_code = message_code
        self.supp_id = supp_id
        self.supp_counter = supp_counter
        self.supp_orig_counter = supp_orig_counter
        self.certificate = certificate
        self.kind = kind
        self.fields = fields if fields is not None else {}
        if payload is None and kind != "raw":
            payload = encode_payload(kind, self.fields)
        self.payload = payload if payload is not None else b""
        self.signature = signature
        self.mac_header = mac_header
        self.mac = mac
        self.raw = memoryview(b"")  # the received bytes, once decoded
        self.apdu_start = self.signed_start = self.signed_end = self.sig_end = 0

    def other_info(self):
        o = self.message_code.to_bytes(2, "big")
        if self.supp_id is not None:
            o += bytes(self.supp_id) + self.supp_counter.to_bytes(8, "big")
            if self.supp_orig_counter is not None:
                o += self.supp_orig_counter.to_bytes(8, "big")
                if self.certificate is not None:
                    o += bytes(self.certificate)
        return o

    def precommand(self):
        """The APDU from DF to the end of the payload: what the Supplier signs (after DF)."""
        dt = b"\x00" if self.date_time is None else b"\x0C" + bytes(self.date_time)
        oi = self.other_info()
        return (b"\xDF\x09" + bytes((self.cra,)) + self.counter.to_bytes(8, "big")
                + b"\x08" + bytes(self.originator) + b"\x08" + bytes(self.recipient) + dt
                + enc_len(len(oi)) + oi + enc_len(len(self.payload)) + bytes(self.payload))

    def signed_bytes(self):
        return self.precommand()[1:]

    def apdu(self):
        """The APDU with its signature field (as far as the message has one)."""
        a = self.precommand()
        if self.signature is None:
            return a
        return a + bytes((len(self.signature),)) + bytes(self.signature)

    def encode(self):
        a = self.apdu()
        if not self.mac_header:
            return a
        mac = self.mac if self.mac is not None else bytes(_MAC_LEN)
        if len(mac) != _MAC_LEN:
            raise ValueError("MAC must be %d bytes" % _MAC_LEN)
        return (_MAC_START + enc_len(5 + len(a) + _MAC_LEN) + _SEC_HEADER + a + bytes(mac))

    def describe(self):
        return MESSAGE_NAMES.get(self.message_code, "message code 0x%04X" % self.message_code)


def _need(buf, pos, n, end, what):
    if pos + n > end:
        raise _truncated(what)


def decode(data):
    """Decode a whole GBCS message (bytes-like). GbcsError: 'truncated' when it ends early,
    'malformed' for anything else that is not a GBCS message of this shape. The message's
    `raw` is a view of data, not a copy: do not change data while using it."""
    buf = memoryview(data) if not isinstance(data, memoryview) else data
    n = len(buf)
    pos = 0
    end = n
    m = Message()
    if n and buf[0] == 0xDD:
        _need(buf, 0, 7, n, "MAC header")
        if bytes(buf[0:7]) != _MAC_START:
            raise _malformed("MAC header is not DD followed by six 00 bytes")
        clen, pos = _len(buf, 7, n, "ciphered length")
        if clen < 5 + 1 + _MAC_LEN:
            raise _malformed("ciphered length %d is too short" % clen)
        if pos + clen > n:
            raise _truncated("ciphered content (%d of %d bytes)" % (n - pos, clen))
        if pos + clen < n:
            raise _malformed("%d bytes after the MAC" % (n - pos - clen))
        if bytes(buf[pos:pos + 5]) != _SEC_HEADER:
            raise _malformed("security header is not 11 00000000 (only MAC-only GBCS is known)")
        pos += 5
        end = n - _MAC_LEN
        m.mac_header = True
        m.mac = bytes(buf[end:])
    m.apdu_start = pos
    _need(buf, pos, 3, end, "grouping header")
    if buf[pos] != 0xDF:
        raise _malformed("not a general-signing APDU: tag 0x%02X, expected 0xDF" % buf[pos])
    if buf[pos + 1] != 9:
        raise _malformed("transaction-id length %d, expected 9" % buf[pos + 1])
    m.signed_start = pos + 1
    m.cra = buf[pos + 2]
    if m.cra not in (CRA_COMMAND, CRA_RESPONSE, CRA_ALERT):
        raise _malformed("CRA flag %d is not 1, 2 or 3" % m.cra)
    pos += 3
    _need(buf, pos, 8 + 9 + 9 + 1, end, "grouping header")
    m.counter = int.from_bytes(bytes(buf[pos:pos + 8]), "big")
    pos += 8
    for name in ("originator", "recipient"):
        if buf[pos] != 8:
            raise _malformed("%s system title length %d, expected 8" % (name, buf[pos]))
        setattr(m, name, bytes(buf[pos + 1:pos + 9]))
        pos += 9
    dt = buf[pos]
    if dt == 0x0C:
        _need(buf, pos, 13, end, "date-time")
        m.date_time = bytes(buf[pos + 1:pos + 13])
        pos += 13
    elif dt:
        raise _malformed("date-time length %d, expected 0 or 12" % dt)
    else:
        pos += 1
    olen, pos = _len(buf, pos, end, "other-information length")
    _need(buf, pos, olen, end, "other information")
    if olen < 2 or 2 < olen < 18 or 18 < olen < 26:
        raise _malformed("other-information length %d (2, 18, 26 or more)" % olen)
    m.message_code = buf[pos] << 8 | buf[pos + 1]
    if olen >= 18:
        m.supp_id = bytes(buf[pos + 2:pos + 10])
        m.supp_counter = int.from_bytes(bytes(buf[pos + 10:pos + 18]), "big")
    if olen >= 26:
        m.supp_orig_counter = int.from_bytes(bytes(buf[pos + 18:pos + 26]), "big")
    if olen > 26:
        m.certificate = bytes(buf[pos + 26:pos + olen])
    pos += olen
    clen, pos = _len(buf, pos, end, "content length")
    _need(buf, pos, clen, end, "payload (%d bytes)" % clen)
    m.payload = bytes(buf[pos:pos + clen])
    if m.message_code in MESSAGE_NAMES:
        m.kind, m.fields = decode_payload(m.message_code, m.cra, buf, pos, pos + clen)
    pos += clen
    m.signed_end = pos
    if pos == end:
        if m.mac_header:
            raise _truncated("signature length (a MAC'd message has one)")
        m.signature = None  # a pre-command
    else:
        slen = buf[pos]
        if slen not in (0, _SIG_LEN):
            raise _malformed("signature length %d, expected 0 or 64" % slen)
        _need(buf, pos + 1, slen, end, "signature")
        m.signature = bytes(buf[pos + 1:pos + 1 + slen])
        pos += 1 + slen
        if pos != end:
            raise _malformed("%d bytes after the signature" % (end - pos))
    m.sig_end = pos
    m.raw = buf
    return m


def decode_hex(text):
    """Decode hex text as the RTDS files hold it (whitespace ignored)."""
    from binascii import unhexlify
    t = text.decode() if isinstance(text, (bytes, bytearray)) else text
    return decode(unhexlify("".join(t.split())))


# ---- builders (host and tests; the device answers with these too) ---------------------


def cs06_command(counter, originator, recipient, image_hash, at=None):
    """A CS06 Activate Firmware command (no signature yet: sign signed_bytes(), then set
    .signature; mac_header set, MAC to compute). at: None (now), a YYYYMMDDhhmmssZ time,
    or CANCEL_TIME."""
    f = {"manufacturer_image_hash": bytes(image_hash), "payload_originator_counter": counter,
         "execution_date_time": at}
    if len(f["manufacturer_image_hash"]) != 32:
        raise ValueError("the Manufacturer Image Hash is 32 bytes")
    return Message(CRA_COMMAND, counter, bytes(originator), bytes(recipient), MSG_CS06,
                   "cs06-command", f, mac_header=True)


def cs06_response(command, code=None, firmware_version=b"", date_time=None):
    """The device's answer to a CS06 command: NULL (accepted: future-dated or cancellation)
    when code is None, else ExecutionOutcome {code, firmware version}."""
    if code is None:
        kind, f = "cs06-accepted", {}
    else:
        kind, f = "cs06-response", {"response_code": code,
                                    "firmware_version": bytes(firmware_version)}
    return Message(CRA_RESPONSE, command.counter, command.recipient, command.originator,
                   MSG_CS06, kind, f, date_time=date_time, signature=b"")


def dlms_date_time(year, month, day, hour=0, minute=0, second=0):
    """The 12-byte DLMS date-time of a grouping header, as the RTDS responses carry it:
    weekday not specified (FF), hundredths 00, deviation not specified (8000), status FF."""
    return (year.to_bytes(2, "big") + bytes((month, day, 0xFF, hour, minute, second, 0))
            + b"\x80\x00\xFF")


def fd_alert(counter, device, supplier, command_counter, at, code, firmware_version):
    """The 0x00CA alert: 8F66 (actioned, code 0) or 8F67 (not actioned) when a future-dated
    CS06 falls due. counter is the device's own originator counter (RTDS: 2000, 2001), not
    the command's, which goes in the payload (command_counter); at is the command's
    execution date-time."""
    f = {"alert_code": ALERT_FD_ACTIONED if code == CS06_SUCCESS else ALERT_FD_NOT_ACTIONED,
         "execution_date_time": at, "payload_originator_counter": command_counter,
         "response_code": code, "firmware_version": bytes(firmware_version)}
    return Message(CRA_ALERT, counter, device, supplier, MSG_FD_ALERT, "fd-alert", f,
                   signature=b"")


def cs08_response(command, firmware_version, ok=True):
    f = {"firmware_version": bytes(firmware_version), "response_code": 0 if ok else 1}
    return Message(CRA_RESPONSE, command.counter, command.recipient, command.originator,
                   MSG_CS08, "cs08-response", f, supp_id=command.supp_id,
                   supp_counter=command.supp_counter, supp_orig_counter=command.supp_orig_counter,
                   signature=b"", mac_header=True)


# ---- crypto: KDF, MAC, signature ------------------------------------------------------


def kdf_other_info(m):
    """GBCS KDF OtherInfo: algorithm id || originator || 09 || CRA || counter || recipient."""
    return (_KDF_ALG + bytes(m.originator) + b"\x09" + bytes((m.cra,))
            + m.counter.to_bytes(8, "big") + bytes(m.recipient))


def mac_key(z, m):
    """The 16-byte AES key: SHA-256(00000001 || Z || OtherInfo), first half (NIST SP 800-56A
    single-step KDF, one round)."""
    h = hashlib.sha256(b"\x00\x00\x00\x01")
    h.update(bytes(z))
    h.update(kdf_other_info(m))
    return h.digest()[:16]


def compute_mac(z, m, apdu=None):
    """The 12-byte GBCS MAC of message m under the ECDH secret z: GMAC with IV = originator ||
    00000000 over 11 00000000 00 || the APDU with its signature field, which is m.apdu()
    (from m's fields) unless given (the device passes the received bytes)."""
    from hanfw.gcm import Gcm
    if apdu is None:
        apdu = m.apdu()
    iv = bytes(m.originator) + b"\x00\x00\x00\x00"
    return Gcm(mac_key(z, m)).gmac(iv, (_SEC_HEADER + b"\x00", apdu))[:_MAC_LEN]


def _eq(a, b):
    # constant-time comparison of two equal-length byte strings
    if len(a) != len(b):
        return False
    d = 0
    for i in range(len(a)):
        d |= a[i] ^ b[i]
    return d == 0


def sign_message(m, priv):
    """Sign m (its fields: the APDU after DF through the payload) with a 32-byte private key,
    RFC 6979 deterministic ECDSA: how a device signs its responses and alerts."""
    from hanfw import p256
    m.signature = p256.sign(priv, hashlib.sha256(m.signed_bytes()).digest())
    return m


def check_signature(m, pub, received=False):
    """GbcsError 'unsigned' or 'bad-signature' unless the Supplier's key pub (65-byte point)
    signed m: over its fields, or (received=True, a decoded message) the bytes received."""
    from hanfw import p256
    if not m.signature:
        raise GbcsError("unsigned", "%s carries no signature" % m.describe())
    if received:
        digest = hashlib.sha256(m.raw[m.signed_start:m.signed_end]).digest()
    else:
        digest = hashlib.sha256(m.signed_bytes()).digest()
    if not p256.verify(pub, digest, m.signature):
        raise GbcsError("bad-signature", "%s: the signature does not verify with the Supplier's key"
                        % m.describe())


class Verifier:
    """A HAN device's check of the commands it is sent. The ECDH secret with the ACB's KA key
    is computed on first use and kept (it depends on the two keys only): a command then costs
    one GMAC and, for CS06, one ECDSA verify.

    supplier_pub: the Supplier's DS key (65 bytes) the device was commissioned with;
    acb_ka_pub: the ACB's KA key (65 bytes); device_ka_priv: the device's KA private key
    (32 bytes); own_eui: the device's EUI-64 (8 bytes); supplier_eui: if given, a CS06 must
    come from it."""

    def __init__(self, supplier_pub, acb_ka_pub, device_ka_priv, own_eui, supplier_eui=None):
        self.supplier_pub = bytes(supplier_pub)
        self.acb_ka_pub = bytes(acb_ka_pub)
        self._ka_priv = bytes(device_ka_priv)
        self.own_eui = bytes(own_eui)
        self.supplier_eui = None if supplier_eui is None else bytes(supplier_eui)
        self._z = None

    def shared_secret(self):
        if self._z is None:
            from hanfw import p256
            self._z = p256.ecdh(self._ka_priv, self.acb_ka_pub)
        return self._z

    def verify(self, data, last_counter):
        """The decoded command if data is a command this device must act on, else GbcsError
        naming why: truncated, malformed, not-a-command, wrong-recipient, no-mac, bad-mac,
        unknown-message-code, wrong-originator, unsigned, bad-signature, counter-mismatch
        (payload counter differs from the header's), replayed-counter (not above
        last_counter, the last one accepted from that originator)."""
        m = decode(data)
        if m.cra != CRA_COMMAND:
            raise GbcsError("not-a-command", "CRA flag %d: a device acts on commands (1) only" % m.cra)
        if not _eq(m.recipient, self.own_eui):
            raise GbcsError("wrong-recipient", "addressed to %s, not to this device (%s)"
                            % (_hex(m.recipient), _hex(self.own_eui)))
        if not m.mac_header:
            raise GbcsError("no-mac", "a command must come inside the MAC header")
        mac = m.mac if m.mac is not None else b""
        if not _eq(compute_mac(self.shared_secret(), m, m.raw[m.apdu_start:m.sig_end]), mac):
            raise GbcsError("bad-mac", "the GBCS MAC does not verify (key agreement with the ACB)")
        if m.message_code not in COMMAND_CODES:
            raise GbcsError("unknown-message-code", "message code 0x%04X is not a command this "
                            "device knows (CS06 0x0012, CS08 0x0129)" % m.message_code)
        if m.message_code == MSG_CS06:
            sup = self.supplier_eui
            if sup is not None and not _eq(m.originator, sup):
                raise GbcsError("wrong-originator", "CS06 from %s, not from the Supplier %s"
                                % (_hex(m.originator), _hex(sup)))
            if m.fields["payload_originator_counter"] != m.counter:
                raise GbcsError("counter-mismatch", "payload counter %d differs from the header's %d"
                                % (m.fields["payload_originator_counter"], m.counter))
        if m.counter <= last_counter:
            raise GbcsError("replayed-counter", "originator counter %d is not above the last "
                            "accepted (%d)" % (m.counter, last_counter))
        if m.message_code == MSG_CS06:
            check_signature(m, self.supplier_pub, True)
        return m


def verify_command(data, supplier_pub, acb_ka_pub, device_ka_priv, own_eui, last_counter,
                   supplier_eui=None):
    """One-shot Verifier(...).verify(data, last_counter) (computes the ECDH secret each time)."""
    return Verifier(supplier_pub, acb_ka_pub, device_ka_priv, own_eui,
                    supplier_eui).verify(data, last_counter)


def _hex(b):
    return "".join("%02X" % x for x in b)
