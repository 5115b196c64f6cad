# ECDSA P-256 (secp256r1) signature verification over a SHA-256 digest, in pure MicroPython.
#
# Public keys are 65-byte uncompressed points 0x04 || X || Y, signatures are 64 bytes r || s,
# all big-endian. Only verification lives here: the host signs with `cryptography`.
#
# Points are kept in Jacobian coordinates (X, Y, Z) <-> affine (X/Z^2, Y/Z^3), Z == 0 being the
# point at infinity, so that the scalar multiplication needs no per-step inversion. u1*G + u2*Q
# is computed in one pass (Shamir's trick) over 2-bit windows of both scalars, with a table of
# the 15 points i*G + j*Q (i, j in 0..3) brought to affine form by one shared inversion. The
# final check compares in projective form (X == r*Z^2), so no inversion is needed there either.
try:
    from micropython import const
except ImportError:
    def const(x):
        return x

try:
    import hashlib
except ImportError:  # pragma: no cover - very old MicroPython ports
    import uhashlib as hashlib

_POINT_LEN = const(65)
_DIGEST_LEN = const(32)
_SIG_LEN = const(64)
_KEY_ID_LEN = const(8)
_UNCOMPRESSED = const(4)

# Curve y^2 = x^3 - 3x + B over GF(P), base point G of prime order N (cofactor 1).
P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
GX = 0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296
GY = 0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5

# [G, 2G, 3G] in affine form, filled in on first use (see _g_multiples).
_G_MULTS = None


# The argument as bytes if it is a bytes-like object of exactly `size` bytes, else None.
def _as_bytes(x, size):
    if not isinstance(x, (bytes, bytearray, memoryview)):
        return None
    x = bytes(x)
    if len(x) != size:
        return None
    return x


# (x, y) of a 65-byte uncompressed point on the curve, else None.
def _decode_point(pub):
    pub = _as_bytes(pub, _POINT_LEN)
    if pub is None or pub[0] != _UNCOMPRESSED:
        return None
    x = int.from_bytes(pub[1:33], "big")
    y = int.from_bytes(pub[33:], "big")
    if x >= P or y >= P:
        return None
    if (y * y - (x * x - 3) * x - B) % P:
        return None
    return x, y


# True if `pub` is a 65-byte uncompressed point on P-256 (which, cofactor 1, is a valid key).
def is_valid_point(pub):
    return _decode_point(pub) is not None


# The project's key id: the first 8 bytes of SHA-256 of the 65-byte point. The point itself
# is not checked (see is_valid_point); anything but 65 bytes raises ValueError.
def key_id(pub):
    pub = _as_bytes(pub, _POINT_LEN)
    if pub is None:
        raise ValueError("public key must be 65 bytes")
    return hashlib.sha256(pub).digest()[:_KEY_ID_LEN]


# Jacobian doubling for a = -3 (dbl-2001-b). Infinity (Z == 0) doubles to infinity.
def _dbl(X, Y, Z):
    d = Z * Z % P
    g = Y * Y % P
    be = X * g % P
    al = 3 * (X - d) * (X + d) % P
    X3 = (al * al - 8 * be) % P
    return X3, (al * (4 * be - X3) - 8 * g * g) % P, 2 * Y * Z % P


# Jacobian (X1, Y1, Z1) plus affine (x2, y2): mixed addition, with the doubling and
# opposite-point cases handled.
def _add(X1, Y1, Z1, x2, y2):
    if not Z1:
        return x2, y2, 1
    zz = Z1 * Z1 % P
    h = (x2 * zz - X1) % P
    r = (y2 * (zz * Z1 % P) - Y1) % P
    if not h:
        if r:
            return 0, 1, 0
        return _dbl(X1, Y1, Z1)
    hh = h * h % P
    hhh = h * hh % P
    v = X1 * hh % P
    X3 = (r * r - hhh - 2 * v) % P
    return X3, (r * (v - X3) - Y1 * hhh) % P, Z1 * h % P


# Replace, in place, each Jacobian point of `points` by its affine (x, y), or by None for the
# point at infinity, with a single inversion (Montgomery's trick).
def _to_affine(points):
    acc = 1
    prefix = []
    for X, Y, Z in points:
        prefix.append(acc)
        if Z:
            acc = acc * Z % P
    inv = pow(acc, P - 2, P)
    for k in range(len(points) - 1, -1, -1):
        X, Y, Z = points[k]
        if not Z:
            points[k] = None
            continue
        zi = inv * prefix[k] % P
        inv = inv * Z % P
        zi2 = zi * zi % P
        points[k] = (X * zi2 % P, Y * zi2 % P * zi % P)
    return points


# [G, 2G, 3G] in affine form, computed once.
def _g_multiples():
    global _G_MULTS
    if _G_MULTS is None:
        g2 = _dbl(GX, GY, 1)
        _G_MULTS = [(GX, GY)] + _to_affine([g2, _add(g2[0], g2[1], g2[2], GX, GY)])
    return _G_MULTS


# Table T[4*i + j] = i*G + j*Q (affine, None for infinity) for i, j in 0..3.
def _table(qx, qy):
    g = _g_multiples()
    q2 = _dbl(qx, qy, 1)
    q3 = _add(q2[0], q2[1], q2[2], qx, qy)
    jac = [q2, q3]
    for i in range(3):
        gx, gy = g[i]
        jac.append(_add(qx, qy, 1, gx, gy))
        jac.append(_add(q2[0], q2[1], q2[2], gx, gy))
        jac.append(_add(q3[0], q3[1], q3[2], gx, gy))
    aff = _to_affine(jac)
    t = [None, (qx, qy), aff[0], aff[1]]
    for i in range(3):
        t.append(g[i])
        t.extend(aff[2 + 3 * i:5 + 3 * i])
    return t


# True if `sig` (64 bytes r || s) is a valid ECDSA signature of the 32-byte `digest` by the
# public key `pub` (65 bytes, uncompressed). False, never an exception, for any bad input.
def verify(pub, digest, sig):
    q = _decode_point(pub)
    digest = _as_bytes(digest, _DIGEST_LEN)
    sig = _as_bytes(sig, _SIG_LEN)
    if q is None or digest is None or sig is None:
        return False
    r = int.from_bytes(sig[:32], "big")
    s = int.from_bytes(sig[32:], "big")
    if not (0 < r < N and 0 < s < N):
        return False
    w = pow(s, N - 2, N)
    u1 = int.from_bytes(digest, "big") * w % N
    u2 = r * w % N
    t = _table(q[0], q[1])
    k1 = u1.to_bytes(32, "big")
    k2 = u2.to_bytes(32, "big")
    X, Y, Z = 0, 1, 0
    for k in range(32):
        a = k1[k]
        b = k2[k]
        for sh in (6, 4, 2, 0):
            if Z:
                X, Y, Z = _dbl(X, Y, Z)
                X, Y, Z = _dbl(X, Y, Z)
            pt = t[((a >> sh) & 3) << 2 | ((b >> sh) & 3)]
            if pt is not None:
                X, Y, Z = _add(X, Y, Z, pt[0], pt[1])
    if not Z:
        return False
    # x(R) mod N == r, where x(R) = X/Z^2 is in [0, P): x(R) is r or, when r + N < P, r + N.
    zz = Z * Z % P
    if X == r * zz % P:
        return True
    return r + N < P and X == (r + N) * zz % P


# k*(x, y) for an affine point and 0 < k < N, as affine (x, y), or None for infinity.
# Left to right over 2-bit windows of k with the table [P, 2P, 3P] made affine by one
# inversion, the same building blocks as verify (which it leaves untouched). Not constant
# time: GBCS key agreement on a HAN device, where the private key never leaves the device,
# is computed once per peer key and cached by the caller (hanfw.gbcs).
def _mul(k, x, y):
    p2 = _dbl(x, y, 1)
    t = [None, (x, y)] + _to_affine([p2, _add(p2[0], p2[1], p2[2], x, y)])
    kb = k.to_bytes(32, "big")
    X, Y, Z = 0, 1, 0
    for a in kb:
        for sh in (6, 4, 2, 0):
            if Z:
                X, Y, Z = _dbl(X, Y, Z)
                X, Y, Z = _dbl(X, Y, Z)
            pt = t[(a >> sh) & 3]
            if pt is not None:
                X, Y, Z = _add(X, Y, Z, pt[0], pt[1])
    if not Z:
        return None
    zi = pow(Z, P - 2, P)
    zi2 = zi * zi % P
    return X * zi2 % P, Y * zi2 % P * zi % P


# The private scalar of a 32-byte big-endian key, or ValueError: 0 and >= N are no keys.
def _scalar(priv):
    priv = _as_bytes(priv, 32)
    if priv is None:
        raise ValueError("private key must be 32 bytes")
    d = int.from_bytes(priv, "big")
    if not 0 < d < N:
        raise ValueError("private key out of range")
    return d


# The 65-byte uncompressed public key of a 32-byte private key (ValueError if out of range).
def public_key(priv):
    r = _mul(_scalar(priv), GX, GY)
    if r is None:  # cannot happen for 0 < d < N (G has order N)
        raise ValueError("private key out of range")
    x, y = r
    return b"\x04" + x.to_bytes(32, "big") + y.to_bytes(32, "big")


# ECDH (SEC 1 3.3.1, cofactor 1): the 32-byte X coordinate of priv * pub, the shared secret Z
# GBCS feeds its KDF. ValueError for a private key out of range or a public key that is not a
# point on the curve (an invalid-curve point would leak the key).
def ecdh(priv, pub):
    d = _scalar(priv)
    q = _decode_point(pub)
    if q is None:
        raise ValueError("public key is not a P-256 point")
    r = _mul(d, q[0], q[1])
    if r is None:
        raise ValueError("shared point is infinity")
    return r[0].to_bytes(32, "big")


# HMAC-SHA256 (RFC 2104) from hashlib alone: not every port has the hmac module.
def _hmac(key, data):
    k = key + bytes(64 - len(key))
    h = hashlib.sha256(bytes(b ^ 0x36 for b in k))
    h.update(data)
    o = hashlib.sha256(bytes(b ^ 0x5C for b in k))
    o.update(h.digest())
    return o.digest()


# ECDSA signature (64 bytes r || s) of a 32-byte digest with a 32-byte private key, the
# nonce derived deterministically from both (RFC 6979 with HMAC-SHA256), so a device with a
# weak random source never reuses or leaks a nonce, and the same input gives the same
# signature as any RFC 6979 signer. For a device's GBCS responses and alerts. Not constant
# time (see _mul). ValueError for a key out of range or a digest that is not 32 bytes.
def sign(priv, digest):
    d = _scalar(priv)
    digest = _as_bytes(digest, _DIGEST_LEN)
    if digest is None:
        raise ValueError("digest must be 32 bytes")
    z = int.from_bytes(digest, "big")
    x = d.to_bytes(32, "big")
    h1 = (z % N).to_bytes(32, "big")
    v = b"\x01" * 32
    k = bytes(32)
    k = _hmac(k, v + b"\x00" + x + h1)
    v = _hmac(k, v)
    k = _hmac(k, v + b"\x01" + x + h1)
    v = _hmac(k, v)
    while True:
        v = _hmac(k, v)
        n = int.from_bytes(v, "big")
        if 0 < n < N:
            pt = _mul(n, GX, GY)
            if pt is not None:
                r = pt[0] % N
                if r:
                    s = pow(n, N - 2, N) * (z + r * d) % N
                    if s:
                        return r.to_bytes(32, "big") + s.to_bytes(32, "big")
        k = _hmac(k, v + b"\x00")
        v = _hmac(k, v)
