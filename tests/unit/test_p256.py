"""hanfw.p256 (pure-Python ECDSA P-256 verify) against the `cryptography` package as the oracle."""
import hashlib
import random

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from hanfw import p256

N, P = p256.N, p256.P
CURVE = ec.SECP256R1()
ECDSA = ec.ECDSA(utils.Prehashed(hashes.SHA256()))
# RFC 6979 nonces: the same seed gives the same signatures, so every run sees the same cases.
ECDSA_DET = ec.ECDSA(utils.Prehashed(hashes.SHA256()), deterministic_signing=True)

# Known answer: generated once with `cryptography`, pasted here.
KAT_PUB = bytes.fromhex(
    "0471c5dac424730f426de4214662f0d5cf46e12796d190470cb44f60defda470cc"
    "29d478625d05a90ab9585d3ed8e06fdf76f007890df3c2e235fefd5025084c70")
KAT_DIGEST = bytes.fromhex("1000f67013503e3d4c6a1ad410bb7dab7e9d1b26b12fbc6c514c161aa2342f1c")
KAT_SIG = bytes.fromhex(
    "740924c95ff8e73f186a099c8dae6757230fe9616465cb935c7ccaa7169a8fd6"
    "7918265d4515126c3877c0bdd049960d781f058f5b7ad0a6a651b4977c1fe3e9")
KAT_KEY_ID = bytes.fromhex("d072a12e9e820d38")


def b32(v):
    return v.to_bytes(32, "big")


def point_bytes(x, y, prefix=4):
    return bytes([prefix]) + b32(x) + b32(y)


def public_bytes(key):
    return key.public_key().public_bytes(serialization.Encoding.X962,
                                         serialization.PublicFormat.UncompressedPoint)


def sign(key, digest):
    r, s = utils.decode_dss_signature(key.sign(digest, ECDSA_DET))
    return b32(r) + b32(s)


# cryptography's verdict on (pub, digest, sig) under this module's interface: only a 65-byte
# uncompressed point, a 32-byte digest and a 64-byte r||s can ever verify.
def oracle(pub, digest, sig):
    if len(pub) != 65 or pub[0] != 4 or len(digest) != 32 or len(sig) != 64:
        return False
    try:
        key = ec.EllipticCurvePublicKey.from_encoded_point(CURVE, pub)
    except ValueError:
        return False
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    der = utils.encode_dss_signature(r, s)
    try:
        key.verify(der, digest, ECDSA)
    except InvalidSignature:
        return False
    return True


def flip(data, rng, start=0, end=None):
    data = bytearray(data)
    bit = rng.randrange(start * 8, (end or len(data)) * 8)
    data[bit // 8] ^= 0x80 >> (bit % 8)
    return bytes(data)


# A valid (pub, digest, sig) and its corruptions, each as (label, pub, digest, sig).
def variants(pub, digest, sig, rng):
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    x, y = int.from_bytes(pub[1:33], "big"), int.from_bytes(pub[33:], "big")
    yield "valid", pub, digest, sig
    yield "high-s", pub, digest, b32(r) + b32(N - s)
    yield "flip r", pub, digest, flip(sig, rng, 0, 32)
    yield "flip s", pub, digest, flip(sig, rng, 32, 64)
    yield "flip digest", pub, flip(digest, rng), sig
    yield "flip X", flip(pub, rng, 1, 33), digest, sig
    yield "flip Y", flip(pub, rng, 33, 65), digest, sig
    yield "swap r s", pub, digest, sig[32:] + sig[:32]
    yield "r=0", pub, digest, b32(0) + sig[32:]
    yield "s=0", pub, digest, sig[:32] + b32(0)
    yield "r=n", pub, digest, b32(N) + sig[32:]
    yield "s=n", pub, digest, sig[:32] + b32(N)
    if r + N < 1 << 256:
        yield "r+n", pub, digest, b32(r + N) + sig[32:]
    if s + N < 1 << 256:
        yield "s+n", pub, digest, sig[:32] + b32(s + N)
    yield "y+1 (off curve)", point_bytes(x, (y + 1) % P), digest, sig
    yield "-Q", point_bytes(x, P - y), digest, sig
    yield "prefix", bytes([rng.choice((0, 2, 3, 5, 6, 7, 0x84))]) + pub[1:], digest, sig
    yield "short pub", pub[:-1], digest, sig
    yield "long pub", pub + b"\x00", digest, sig
    yield "raw 64-byte pub", pub[1:], digest, sig
    yield "short digest", pub, digest[:-1], sig
    yield "long digest", pub, digest + b"\x00", sig
    yield "short sig", pub, digest, sig[:-1]
    yield "long sig", pub, digest, sig + b"\x00"
    yield "zero pub", bytes([4]) + bytes(64), digest, sig
    yield "zero sig", pub, digest, bytes(64)
    yield "zero digest", pub, bytes(32), sig


# --- affine reference arithmetic, used only to build inputs that cryptography then judges ---

def _affine_add(a, b):
    if a is None:
        return b
    if b is None:
        return a
    (x1, y1), (x2, y2) = a, b
    if x1 == x2:
        if (y1 + y2) % P == 0:
            return None
        lam = (3 * x1 * x1 - 3) * pow(2 * y1, -1, P) % P
    else:
        lam = (y2 - y1) * pow(x2 - x1, -1, P) % P
    x3 = (lam * lam - x1 - x2) % P
    return x3, (lam * (x1 - x3) - y1) % P


def _affine_mul(k, pt):
    out = None
    for bit in bin(k)[2:]:
        out = _affine_add(out, out)
        if bit == "1":
            out = _affine_add(out, pt)
    return out


def _g_mul(k):
    nums = ec.derive_private_key(k, CURVE).public_key().public_numbers()
    return nums.x, nums.y


def _lift_x(x):
    f = (x * x * x - 3 * x + p256.B) % P
    y = pow(f, (P + 1) // 4, P)  # P = 3 mod 4
    return (x, y) if y * y % P == f else None


# ------------------------------------------------------------------------------------------

def test_curve_constants_match_cryptography():
    assert _g_mul(1) == (p256.GX, p256.GY)
    assert p256.is_valid_point(point_bytes(p256.GX, p256.GY))
    # n*G is the point at infinity: (n-1)*G == -G.
    assert _g_mul(N - 1) == (p256.GX, P - p256.GY)


def test_known_answer():
    assert p256.verify(KAT_PUB, KAT_DIGEST, KAT_SIG) is True
    assert p256.key_id(KAT_PUB) == KAT_KEY_ID
    assert p256.is_valid_point(KAT_PUB)
    assert p256.verify(KAT_PUB, KAT_DIGEST[:-1] + b"\x1d", KAT_SIG) is False
    assert p256.verify(KAT_PUB, KAT_DIGEST, KAT_SIG[:-1] + b"\xe8") is False
    assert oracle(KAT_PUB, KAT_DIGEST, KAT_SIG)


def test_accepts_any_bytes_like():
    assert p256.verify(bytearray(KAT_PUB), memoryview(KAT_DIGEST), bytearray(KAT_SIG)) is True
    assert p256.verify(memoryview(KAT_PUB), bytearray(KAT_DIGEST), memoryview(KAT_SIG)) is True
    assert p256.key_id(bytearray(KAT_PUB)) == KAT_KEY_ID


@pytest.mark.parametrize("bad", [None, 0, 1, "", "04" * 65, KAT_PUB.hex(), list(KAT_PUB),
                                 tuple(KAT_SIG), 3.5, object()])
def test_wrong_types_return_false(bad):
    assert p256.verify(bad, KAT_DIGEST, KAT_SIG) is False
    assert p256.verify(KAT_PUB, bad, KAT_SIG) is False
    assert p256.verify(KAT_PUB, KAT_DIGEST, bad) is False
    assert p256.is_valid_point(bad) is False


def test_key_id_is_sha256_prefix():
    rng = random.Random(7)
    for _ in range(20):
        pub = public_bytes(ec.derive_private_key(rng.randrange(1, N), CURVE))
        assert p256.key_id(pub) == hashlib.sha256(pub).digest()[:8]
    for bad in (KAT_PUB[:-1], KAT_PUB + b"\x00", b"", None):
        with pytest.raises(ValueError):
            p256.key_id(bad)


@pytest.mark.parametrize("chunk", range(4))
def test_agrees_with_cryptography_on_random_cases(chunk):
    rng = random.Random(0x9256 + chunk)
    seen = {}
    checked = 0
    for _ in range(120):
        key = ec.derive_private_key(rng.randrange(1, N), CURVE)
        pub = public_bytes(key)
        digest = rng.randbytes(32)
        sig = sign(key, digest)
        for label, vp, vd, vs in variants(pub, digest, sig, rng):
            want = oracle(vp, vd, vs)
            got = p256.verify(vp, vd, vs)
            assert got is want, (label, vp.hex(), vd.hex(), vs.hex())
            if len(vp) == 65 and vp[0] == 4:
                try:
                    ec.EllipticCurvePublicKey.from_encoded_point(CURVE, vp)
                    loads = True
                except ValueError:
                    loads = False
                assert p256.is_valid_point(vp) is loads, (label, vp.hex())
            seen.setdefault(label, set()).add(want)
            checked += 1
    assert checked >= 3000
    # The mix really holds both verdicts where they are expected.
    assert seen["valid"] == {True} and seen["high-s"] == {True}
    for label in ("flip r", "flip s", "flip digest", "r=0", "s=0", "r=n", "s=n", "-Q", "zero sig"):
        assert seen[label] == {False}, label


# Keys d = 1..4 and n-4..n-1 make Q = +-G, +-2G, +-3G, so entries of the i*G + j*Q table and
# steps of the ladder hit doubling and the point at infinity.
@pytest.mark.parametrize("d", [1, 2, 3, 4, N - 1, N - 2, N - 3, N - 4],
                         ids=["1", "2", "3", "4", "n-1", "n-2", "n-3", "n-4"])
def test_degenerate_keys(d):
    rng = random.Random(d)
    key = ec.derive_private_key(d, CURVE)
    pub = public_bytes(key)
    digests = [bytes(32), b32(N), b"\xff" * 32, b32(1), b32(N - 1)]
    digests += [rng.randbytes(32) for _ in range(10)]
    for digest in digests:
        sig = sign(key, digest)
        for label, vp, vd, vs in variants(pub, digest, sig, rng):
            assert p256.verify(vp, vd, vs) is oracle(vp, vd, vs), (d, label)
        assert p256.verify(pub, digest, sig) is True


# With e = -r*d mod n, u1*G + u2*Q = (e + r*d)/s * G is the point at infinity: never valid.
def test_sum_at_infinity_is_rejected():
    rng = random.Random(11)
    for d in (1, 2, 3, N - 1, rng.randrange(1, N), rng.randrange(1, N)):
        pub = public_bytes(ec.derive_private_key(d, CURVE))
        for _ in range(5):
            r, s = rng.randrange(1, N), rng.randrange(1, N)
            digest = b32(-r * d % N)
            sig = b32(r) + b32(s)
            assert oracle(pub, digest, sig) is False
            assert p256.verify(pub, digest, sig) is False


# The public key Q for which (r, s) with r = x(R) mod n signs digest e, R being any point:
# Q = (R - u1*G) / u2. Lets a test pick R and s, which signing never offers.
def _key_for(pt, s, e):
    w = pow(s, -1, N)
    u1, u2 = e * w % N, pt[0] % N * w % N
    q = _affine_mul(pow(u2, -1, N), _affine_add(pt, _g_mul(N - u1)))
    return point_bytes(*q)


# x(R) in [n, p): a valid signature has r = x(R) - n, and verification must compare against
# r + n. Such R is never met by chance, so build it: pick R, s, e, and solve for the key Q.
def test_x_of_r_above_n():
    rng = random.Random(12)
    found = 0
    x = N
    while found < 4:
        pt = _lift_x(x)
        x += 1 + rng.randrange(1 << 16)
        if pt is None:
            continue
        found += 1
        r = pt[0] - N
        assert 0 < r < N and r + N < P
        s, e = rng.randrange(1, N), rng.randrange(1, N)
        pub, digest, sig = _key_for(pt, s, e), b32(e), b32(r) + b32(s)
        assert oracle(pub, digest, sig) is True
        assert p256.verify(pub, digest, sig) is True
        # r itself must be < n: the unreduced x(R) is out of range.
        assert p256.verify(pub, digest, b32(pt[0]) + b32(s)) is False
        assert p256.verify(pub, digest, b32(r) + b32(N - s)) is True


# r + n and s + n are congruent to valid r and s but out of range: rejected. Needs small r and
# s (so that adding n still fits in 32 bytes): a small x(R) and a chosen s.
def test_scalars_not_reduced_mod_n_are_rejected():
    rng = random.Random(13)
    x = rng.randrange(1 << 200)
    while _lift_x(x) is None:
        x += 1
    pt = _lift_x(x)
    for _ in range(4):
        s, e = rng.randrange(1, 1 << 220), rng.randrange(1, N)
        pub, digest = _key_for(pt, s, e), b32(e)
        for r_, s_, want in ((x, s, True), (x + N, s, False), (x, s + N, False), (x, N - s, True)):
            sig = b32(r_) + b32(s_)
            assert oracle(pub, digest, sig) is want
            assert p256.verify(pub, digest, sig) is want


def test_coordinates_not_below_p_are_rejected():
    # A point with a small x, so that x + p still fits in 32 bytes and is congruent to x.
    x = 0
    while _lift_x(x) is None:
        x += 1
    _, y = _lift_x(x)
    good = point_bytes(x, y)
    assert p256.is_valid_point(good)
    for bad in (point_bytes(x + P, y), point_bytes(x, y, prefix=0)):
        assert not p256.is_valid_point(bad)
        with pytest.raises(ValueError):
            ec.EllipticCurvePublicKey.from_encoded_point(CURVE, bad)
    assert not p256.is_valid_point(bytes([4]) + b"\xff" * 64)
    assert not p256.is_valid_point(point_bytes(P, 0))
