# hanota device: why the device rejected an image, as a small code the hub can
# read back (manufacturer-specific attribute 0xF000 of the OTA cluster, uint8)
# after a non-SUCCESS Upgrade End Request. Index = code; 0 = no rejection.

ATTR_LAST_REJECTION = 0xF000

REASONS = (
    "none",
    "wrong-manufacturer",
    "wrong-image-type",
    "hardware-version",
    "wrong-destination",
    "version-not-newer",
    "security-version",
    "too-big",
    "unsigned",
    "unknown-key",
    "bad-signature",
    "payload-hash",
    "bad-descriptor",
    "wrong-payload-kind",
    "wrong-board",
    "malformed",
    "truncated",
    "readback",
    "unconfirmed",
    "transfer-failed",
    "server-abort",
    # compressed and delta images (hanfw.delta)
    "wrong-base",  # a delta against an image other than the running one (before download)
    "bad-segment",  # a segment that does not match its hash in the chain
    "truncated-segment",  # the body ends inside a segment or before the last
    "bad-patch",  # a segment that does not decode (zlib or patch), or to the wrong size
    "unsupported-encoding",  # an encoding, window or segment size this device cannot decode
)


def code(reason):
    try:
        return REASONS.index(reason)
    except ValueError:
        return REASONS.index("malformed")


def name(c):
    return REASONS[c] if 0 <= c < len(REASONS) else "unknown-%d" % c
