# On-board tier: ZCL and link frames made on the host, parsed and re-packed on the board.
from hanfw import zcl, link
import bchk


# The packer's arguments from parsed fields: "a:b" a slice, "list" the whole as one list,
# "none" nothing.
def _args(p, spec):
    if spec == "none":
        return ()
    if spec == "list":
        return (list(p),)
    a, b = spec.split(":")
    t = tuple(p)
    return t[int(a) if a else 0:int(b) if b else len(t)]


# Parse a ZCL payload, rebuild it from the parsed fields, report both. ZclError gives its status.
def zcl_rt(parse_name, pack_name, h, argmap, offset=0):
    raw = bchk.uh(h)
    try:
        p = getattr(zcl, parse_name)(raw, offset) if offset else getattr(zcl, parse_name)(raw)
    except zcl.ZclError as e:
        bchk.out({"status": e.status, "reason": e.reason})
        return
    args = _args(p, argmap)
    again = getattr(zcl, pack_name)(*args)
    bchk.out({"parsed": bchk.plain(tuple(p) if not isinstance(p, list) else p), "repacked": bchk.hx(again)})


def zcl_header(h):
    fc, mfr, tsn, cmd, off = zcl.parse_header(bchk.uh(h))
    bchk.out({"header": [fc, mfr, tsn, cmd, off], "repacked": bchk.hx(zcl.pack_header(fc, tsn, cmd, mfr))})


class _Keys:
    def __init__(self, key_hex):
        self.mac = link.Mac(bchk.uh(key_hex))

    def __call__(self, src):
        return self.mac


# Unpack a frame with the link key (MAC checked), re-pack it from its fields.
def frame_rt(frame_hex, key_hex, max_frame):
    keys = _Keys(key_hex)
    try:
        kind, src, dst, ctr, cl, payload = link.unpack(bchk.uh(frame_hex), keys, max_frame)
    except link.LinkError as e:
        bchk.out({"error": e.reason})
        return
    again = link.pack(keys.mac, kind, src, dst, ctr, cl, payload)
    bchk.out({"fields": [kind, bchk.hx(src), bchk.hx(dst), ctr, cl, bchk.sha(payload)],
              "repacked": bchk.sha(again)})


def bundle_rt(payload_hex):
    try:
        items = link.split_bundle(bchk.uh(payload_hex))
    except link.LinkError as e:
        bchk.out({"error": e.reason})
        return
    bchk.out({"items": [bchk.sha(x) for x in items], "repacked": bchk.sha(link.pack_bundle(items))})


def slip_rt(wire_hex):
    d = link.SlipDecoder(link.RX_FRAME + 4)
    d.feed(bchk.uh(wire_hex))
    frames = []
    while True:
        f = d.pop()
        if f is None:
            break
        frames.append(bytes(f))
    bchk.out({"frames": [bchk.hx(f) for f in frames], "bad": d.bad,
              "repacked": [bchk.hx(link.slip_encode(f)) for f in frames]})


def key_of(code_hex):
    try:
        bchk.out({"key": bchk.hx(link.link_key(bchk.uh(code_hex)))})
    except link.LinkError as e:
        bchk.out({"error": e.reason})


def join_rt(req_hex, rsp_hex):
    r = link.parse_join_req(bchk.uh(req_hex))
    s = link.parse_join_rsp(bchk.uh(rsp_hex))
    bchk.out({"req": bchk.plain(r), "rsp": bchk.plain(s),
              "repacked": [bchk.hx(link.pack_join_req(*r)), bchk.hx(link.pack_join_rsp(*s))]})
