"""GBCS-shaped payloads for the Comms Hub's firmware outcomes (what a DUIS response's
GBCSPayload carries), built from the hub's outcome of a request.

The use cases (docs: /work/shared/reference/gbcs_duis.md sections 5 and 6; field order as
SmartDCCInnovation/gbcs-parser `src/asn1.ts` reads them):

- CCS08 Firmware Transfer Alert (message code 0x0128, an alert from the Comms Hub Function):
  SEQUENCE { alertCode INTEGER (0x8F8A success, 0x8F89 failure), dateTime GeneralizedTime,
  entityId OCTET STRING (the device), firmwareVersion OCTET STRING, responseCode INTEGER
  (0 success, 1 image discarded, 2 hardware version mismatch, 3 file transfer failure) };
- CS06 Activate Firmware response (0x0012): ExecutionOutcome SEQUENCE { responseCode INTEGER
  (0 success, 1 no image held, 2 hash mismatch, 3 activation failure), firmwareVersion };
- CS08 Read PPMID/HCALCS Firmware Version response (0x0129): SEQUENCE { firmwareVersion,
  responseCode INTEGER (0 read success, 1 read failure) };
- CS09 PPMID Firmware Activation Alert (0x012B): SEQUENCE { alertCode 0x8F8B, dateTime,
  firmwareVersion, INTEGER (0 success, 1 failure) }.

Each is wrapped in the general-signing APDU GBCS uses (`DF 09`, CRA flag, originator counter,
originator and recipient system titles, no date-time, other-information = the message code,
the DER payload) **unsigned** (signature length 0) and without the MAC header: hanota's HAN
speaks Zigbee OTA, not GBCS, so there is no device key to sign or MAC with; the next issue
puts GBCS on the HAN. Firmware versions are the 4-byte Zigbee file version, big-endian.
"""
from __future__ import annotations

from datetime import datetime, timezone

CRA_COMMAND, CRA_RESPONSE, CRA_ALERT = 1, 2, 3
MSG_CS06 = 0x0012
MSG_CCS08 = 0x0128
MSG_CS08 = 0x0129
MSG_CS09 = 0x012B
ALERT_TRANSFER_FAILED = 0x8F89
ALERT_TRANSFER_OK = 0x8F8A
ALERT_FIRMWARE_VERSION = 0x8F8B

# hub outcome -> CCS08 response code (distribution)
CCS08_CODES = {"distributed": 0, "activated": 0, "rejected_by_device": 1, "image_mismatch": 1,
               "hw_version_mismatch": 2, "transfer_failed": 3}
# hub outcome -> CS06 response code (activation)
CS06_CODES = {"activated": 0, "no_image_held": 1, "hash_mismatch": 2, "activation_failed": 3,
              "rolled_back": 3}


def der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    if n <= 0xFF:
        return bytes([0x81, n])
    if n <= 0xFFFF:
        return bytes([0x82, n >> 8, n & 0xFF])
    raise ValueError("length %d is too long for a GBCS payload" % n)


def _tlv(tag: int, value: bytes) -> bytes:
    return bytes([tag]) + der_length(len(value)) + value


def der_integer(v: int) -> bytes:
    """Minimal two's complement (1000 -> 02 02 03 E8; 0x8F66 -> 02 03 00 8F 66)."""
    n = max(1, (v.bit_length() + 8) // 8)
    return _tlv(0x02, v.to_bytes(n, "big", signed=True))


def der_octets(b: bytes) -> bytes:
    return _tlv(0x04, bytes(b))


def der_time(t: datetime) -> bytes:
    """GeneralizedTime YYYYMMDDhhmmssZ (UTC)."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return _tlv(0x18, t.astimezone(timezone.utc).strftime("%Y%m%d%H%M%SZ").encode())


def der_sequence(*items: bytes) -> bytes:
    return _tlv(0x30, b"".join(items))


def apdu(cra: int, counter: int, originator: bytes, recipient: bytes, message_code: int,
         payload: bytes) -> bytes:
    """An unsigned general-signing APDU around a DER payload."""
    if len(originator) != 8 or len(recipient) != 8:
        raise ValueError("system titles are EUI-64s (8 bytes)")
    return (b"\xDF\x09" + bytes([cra]) + counter.to_bytes(8, "big")
            + b"\x08" + bytes(originator) + b"\x08" + bytes(recipient)
            + b"\x00"                                       # no date-time
            + b"\x02" + message_code.to_bytes(2, "big")     # other information: message code
            + der_length(len(payload)) + payload
            + b"\x00")                                      # signature length: unsigned


def _version(v: int | None) -> bytes:
    return (v or 0).to_bytes(4, "big")


def for_outcome(outcome: str, sr: str, *, device: bytes, comms_hub: bytes, requester: bytes,
                counter: int, version: int | None, when: datetime) -> tuple[int, bytes] | None:
    """(message code, APDU) for a hub outcome of SR `sr`, or None where GBCS has no
    message for it (superseded, not authorised, unreachable ...: the DCC's own errors)."""
    if sr == "11.2" and outcome in ("version_read", "read_failed"):
        body = der_sequence(der_octets(_version(version)),
                            der_integer(0 if outcome == "version_read" else 1))
        return MSG_CS08, apdu(CRA_RESPONSE, counter, device, requester, MSG_CS08, body)
    if sr == "11.3" and outcome in CS06_CODES:
        body = der_sequence(der_integer(CS06_CODES[outcome]), der_octets(_version(version)))
        return MSG_CS06, apdu(CRA_RESPONSE, counter, device, requester, MSG_CS06, body)
    if sr == "11.4" and outcome in ("activated", "rolled_back"):
        body = der_sequence(der_integer(ALERT_FIRMWARE_VERSION), der_time(when),
                            der_octets(_version(version)),
                            der_integer(0 if outcome == "activated" else 1))
        return MSG_CS09, apdu(CRA_ALERT, counter, device, requester, MSG_CS09, body)
    if sr in ("11.1", "11.4") and outcome in CCS08_CODES:
        code = CCS08_CODES[outcome]
        body = der_sequence(der_integer(ALERT_TRANSFER_OK if code == 0
                                        else ALERT_TRANSFER_FAILED),
                            der_time(when), der_octets(device), der_octets(_version(version)),
                            der_integer(code))
        return MSG_CCS08, apdu(CRA_ALERT, counter, comms_hub, requester, MSG_CCS08, body)
    return None
