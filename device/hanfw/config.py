# hanota device: the device configuration, written once at deploy time.
# One JSON file (hanota.json in the filesystem root): identity, pinned keys,
# install code (the link key is derived from it) and link settings.

import json
import binascii

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

FILE_NAME = "hanota.json"
_REQUIRED = ("eui64", "role", "manufacturer", "hw_version", "keys", "install_code")


class ConfigError(Exception):
    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason


class Config:
    pass


def _hex(value, what):
    try:
        return binascii.unhexlify(value.replace(":", ""))
    except (ValueError, TypeError, AttributeError):
        raise ConfigError("malformed", "%s is not hex: %r" % (what, value))


# Check and convert a decoded JSON object; every problem is named.
def from_dict(d):
    from hanfw import p256
    from hanfw.roles import ROLES, row  # the role table
    if not isinstance(d, dict):
        raise ConfigError("malformed", "configuration is not a JSON object")
    missing = [k for k in _REQUIRED if k not in d]
    if missing:
        raise ConfigError("missing-field", "configuration lacks %s" % ", ".join(missing))
    c = Config()
    c.role = d["role"]
    if c.role not in ROLES:
        raise ConfigError("bad-role", "role %r is not one of %s" % (c.role, ", ".join(ROLES)))
    eui = _hex(d["eui64"], "eui64")
    if len(eui) != 8:
        raise ConfigError("bad-eui64", "eui64 must be 8 bytes, got %d" % len(eui))
    c.eui64 = bytes(reversed(eui))  # wire order (least significant byte first)
    c.eui64_text = d["eui64"]
    c.eui64_gbcs = eui  # GBCS order (big-endian, as written): recipient of its GBCS commands
    for k in ("manufacturer", "hw_version"):
        v = d[k]
        if not isinstance(v, int) or not 0 <= v <= 0xFFFF:
            raise ConfigError("bad-" + k, "%s must be a 16-bit integer, got %r" % (k, v))
    c.manufacturer = d["manufacturer"]
    c.hw_version = d["hw_version"]
    c.image_type = d.get("image_type", row(c.role)[2])
    keys = d["keys"]
    if not isinstance(keys, list) or not keys:
        raise ConfigError("no-keys", "keys must list at least one pinned public key")
    c.keys = []
    for i, k in enumerate(keys):
        point = _hex(k, "keys[%d]" % i)
        if not p256.is_valid_point(point):
            raise ConfigError("bad-key", "keys[%d] is not a P-256 public point (65 bytes, 04||X||Y)" % i)
        c.keys.append(point)
    c.install_code = d["install_code"]
    c.hub = d.get("hub")  # "udp:HOST:PORT" / "serial:PATH"; boards may supply their own
    c.hub_eui = None
    c.wifi = d.get("wifi")
    c.max_data = d.get("max_data", 64)
    c.page_size = d.get("page_size", 0)  # 0: Image Block Requests; else Image Page Requests
    c.query_interval = d.get("query_interval", 300)  # seconds between polls of Query Next Image
    c.health_timeout = d.get("health_timeout", 60)  # seconds a trial image has to prove itself
    c.retry_limit = d.get("retry_limit", 8)
    # the wait for an answer until the link's round trip is measured (then RFC 6298's RTO,
    # at least 100 ms and at most 5 times this; hanfw/rtt.py)
    c.block_timeout_ms = d.get("block_timeout_ms", 1500)
    # bytes of a page kept when a block before them is lost, so that only the lost block is
    # asked for again; -1: the page size on a link that carries one block per frame, 0 with
    # bundles (and on a board without the heap: the page again from the lost block)
    c.reorder = d.get("reorder", -1)
    if not isinstance(c.reorder, int) or c.reorder < -1:
        raise ConfigError("bad-reorder", "reorder must be a byte count or -1, got %r" % (c.reorder,))
    c.checkpoint = d.get("checkpoint", 4096)  # bytes of payload between resume points
    # longest link frame taken (bundled block responses); 0: the transport's own limit,
    # 320: no bundles
    # the board family (hanfw.otafile.BOARD_FAMILIES) whose images this device takes;
    # None: any family (a file built for "any" is always taken)
    c.family = d.get("family")
    if c.family is not None:
        from hanfw import otafile
        if c.family not in otafile.BOARD_FAMILIES or c.family == "any":
            raise ConfigError("bad-family", "family %r is not one of %s" % (
                c.family, ", ".join(k for k in otafile.BOARD_FAMILIES if k != "any")))
    c.link_frame = d.get("link_frame", 0)
    if not isinstance(c.link_frame, int) or c.link_frame < 0:
        raise ConfigError("bad-link_frame", "link_frame must be a byte count, got %r" % (c.link_frame,))
    c.gbcs = _gbcs(d["gbcs"]) if d.get("gbcs") is not None else None
    c.raw = d
    return c


# GBCS commissioning (board deploy --supplier-cert): the Supplier's DS key and entity id, the
# ACB's KA key and the device's own KA private key, all hex; None when not commissioned.
def _gbcs(g):
    from hanfw import p256
    if not isinstance(g, dict):
        raise ConfigError("bad-gbcs", "gbcs must be an object")
    out = {}
    for k, n in (("supplier_ds", 65), ("supplier_id", 8), ("acb_ka", 65), ("ka_priv", 32)):
        if k not in g:
            raise ConfigError("bad-gbcs", "gbcs lacks %s" % k)
        v = _hex(g[k], "gbcs." + k)
        if len(v) != n:
            raise ConfigError("bad-gbcs", "gbcs.%s must be %d bytes, got %d" % (k, n, len(v)))
        if n == 65 and not p256.is_valid_point(v):
            raise ConfigError("bad-gbcs", "gbcs.%s is not a P-256 public point" % k)
        out[k] = v
    return out


def load(path):
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        raise ConfigError("missing", "no device configuration at %s: deploy the board first" % path)
    try:
        d = json.loads(text)
    except ValueError:
        raise ConfigError("malformed", "%s is not valid JSON" % path)
    return from_dict(d)
