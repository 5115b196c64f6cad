# Run hanfw.gbcs / gbcsimage / gcm / p256 under MicroPython over cases written by
# tests/device/test_gbcs_mpy.py.
#
#   micropython gbcs_check.py CASES.json MODULE[,MODULE...]
#
# The named hanfw modules are imported first ("H modules <bytes>": the heap they take), as a
# device loads them: the message codec for a command, the image reader for a download.
# CASES holds one JSON dict per line (read one at a time: the heap is small), each with "op"
# and hex fields. For case i this prints "R <i> <answer>" (see each op below),
# "T <label> <milliseconds>" for the timed steps, "H <label> <bytes>" for heap figures and a
# final "done <count>".
import gc
import json
import sys
import time
from binascii import hexlify, unhexlify

gc.collect()
_free0 = gc.mem_free()
M = {}
for _name in sys.argv[2].split(","):
    M[_name] = __import__("hanfw." + _name, None, None, [_name])
gc.collect()
print("H modules", _free0 - gc.mem_free())
gbcs = M.get("gbcs")
gcm = M.get("gcm")
p256 = M.get("p256")


def h(s):
    return unhexlify(s) if s else b""


def x(b):
    return hexlify(b).decode().upper()


def timed(label, fn, *args):
    t = time.ticks_ms()
    r = fn(*args)
    print("T", label, time.ticks_diff(time.ticks_ms(), t))
    return r


def reason_of(fn, *args):
    try:
        fn(*args)
    except ValueError as e:  # GbcsError, gbcsimage.ImageError
        if not hasattr(e, "reason"):
            raise
        return e.reason
    return "ok"


_v = None
c_last = [0]


def run(i, c):
    op = c["op"]
    c_last[0] = c.get("last", 0)
    if op == "gcm":  # -> "<ciphertext or -> <tag, tag_len bytes of it>"
        if c.get("pure"):  # the nRF port's path: no cryptolib, hanfw.aes in plain Python
            from hanfw.aes import Aes128
            real = gcm._encryptor
            gcm._encryptor = lambda key: Aes128(bytes(key)).encrypt
            try:
                g = timed("gcm-pure-aes", gcm.Gcm, h(c["key"]))
            finally:
                gcm._encryptor = real
        else:
            g = gcm.Gcm(h(c["key"]))
        ct, tag = g.encrypt(h(c["iv"]), h(c["aad"]), h(c["pt"]))
        return (x(ct) or "-") + " " + x(tag[:c.get("tag_len", 16)])
    if op == "decode":  # -> "<kind> <message code> <counter> <round trip 0|1>"
        raw = h(c["msg"])
        m = gbcs.decode(raw)
        return "%s %04X %d %d" % (m.kind, m.message_code, m.counter, m.encode() == raw)
    if op == "ecdh":  # -> "<public key of priv> <Z>"
        pub = p256.public_key(h(c["priv"]))
        z = timed("ecdh", p256.ecdh, h(c["priv"]), h(c["peer"]))
        return x(pub) + " " + x(z)
    if op == "mac":  # -> "<kdf other info> <mac key> <mac>" of a received message under Z
        m = gbcs.decode(h(c["msg"]))
        z = h(c["z"])
        mac = timed("gmac", gbcs.compute_mac, z, m, m.raw[m.apdu_start:m.sig_end])
        return "%s %s %s" % (x(gbcs.kdf_other_info(m)), x(gbcs.mac_key(z, m)), x(mac))
    if op == "sign":  # -> the RFC 6979 signature of a pre-command's signed bytes
        m = gbcs.decode(h(c["msg"]))
        return x(timed("ecdsa-sign", gbcs.sign_message, m, h(c["priv"])).signature)
    if op == "sig":  # -> ok / reason
        m = gbcs.decode(h(c["msg"]))
        return timed("ecdsa", reason_of, gbcs.check_signature, m, h(c["pub"]), True)
    if op == "verifier":  # a Verifier for the "check" cases that follow -> time of its ECDH
        global _v
        _v = gbcs.Verifier(h(c["supplier"]), h(c["acb_ka"]), h(c["dev_ka_priv"]), h(c["eui"]),
                           h(c.get("supplier_eui")) or None)
        timed("shared-secret", _v.shared_secret)
        return "ready"
    if op == "check":  # -> "ok:<counter>" or the reason the Verifier refuses the message
        raw = h(c["msg"])
        c = None
        gc.collect()
        free = gc.mem_free()
        t = time.ticks_ms()
        try:
            m = _v.verify(raw, c_last[0])
            out = "ok:%d" % m.counter
            print("T verify-cs06", time.ticks_diff(time.ticks_ms(), t))
            gc.collect()
            print("H verify-cs06-retained", free - gc.mem_free())
        except gbcs.GbcsError as e:
            out = e.reason
        return out
    if op == "sweep":  # every byte flipped, then every truncation -> "<reason>=<count> ..."
        good = bytearray(h(c["msg"]))
        last = c["last"]
        counts = {}
        t = time.ticks_ms()
        for k in range(len(good)):
            good[k] ^= 1
            r = reason_of(_v.verify, good, last)
            good[k] ^= 1
            counts[r] = counts.get(r, 0) + 1
        for k in range(len(good)):
            r = reason_of(_v.verify, memoryview(good)[:k], last)
            counts["cut-" + r] = counts.get("cut-" + r, 0) + 1
        print("T sweep-%d" % (2 * len(good)), time.ticks_diff(time.ticks_ms(), t))
        return " ".join("%s=%d" % kv for kv in sorted(counts.items()))
    if op == "ota":  # -> "<manufacturer image hash> <force replace> <signature check>"
        raw = h(c["file"])
        r = M["gbcsimage"].OtaFileReader()
        step = c["step"]
        for k in range(0, len(raw), step):
            r.feed(raw[k:k + step])
        return "%s %d %s" % (x(r.image.image_hash), r.image.force_replace,
                             timed("image-signature", reason_of, r.image.check, h(c["pub"])))
    raise ValueError("unknown op " + op)


def main(path):
    n = 0
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            c = json.loads(line)
            line = None
            gc.collect()
            print("R", n, run(n, c))
            c = None
            n += 1
    print("done", n)


main(sys.argv[1])
