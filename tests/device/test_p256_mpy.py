"""hanfw.p256 under the real MicroPython: every answer compared with `cryptography` on the host."""
import hashlib
import random

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from support.mpy import MPY_TESTS, run_mpy_ok

SCRIPT = MPY_TESTS / "p256_check.py"
CURVE = ec.SECP256R1()
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
ECDSA = ec.ECDSA(utils.Prehashed(hashes.SHA256()))
ECDSA_DET = ec.ECDSA(utils.Prehashed(hashes.SHA256()), deterministic_signing=True)

# Literal cases (pub, digest, sig), all valid: the known answer of tests/unit/test_p256.py, and
# one built so that x(R) lies in [n, p) and r = x(R) - n (only the r + n comparison accepts it).
FIXED = [
    ("0471c5dac424730f426de4214662f0d5cf46e12796d190470cb44f60defda470cc"
     "29d478625d05a90ab9585d3ed8e06fdf76f007890df3c2e235fefd5025084c70",
     "1000f67013503e3d4c6a1ad410bb7dab7e9d1b26b12fbc6c514c161aa2342f1c",
     "740924c95ff8e73f186a099c8dae6757230fe9616465cb935c7ccaa7169a8fd6"
     "7918265d4515126c3877c0bdd049960d781f058f5b7ad0a6a651b4977c1fe3e9"),
    ("042a70c66c9f439ebfd19545ff9c63ead1f339ba3f8803fd89800e290a1eef9981"
     "d2304685f29760669ff9ad860a3906c5c051a65edd3fae3cfaecc63a9f264e4f",
     "b8e3c71f6bf08d62331057ca7d411fab9fb932d4f039772216ff82e389e3995b",
     "00000000000000000000000000000000110e27003f9931ee3af27f802dc5fd3d"
     "b35331ceaf2ed9dd87e355b26210b784baa1c6f1404b6eaf162a01dec28753f9"),
]


def b32(v):
    return v.to_bytes(32, "big")


def load(pub):
    if len(pub) != 65 or pub[0] != 4:
        return None
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(CURVE, pub)
    except ValueError:
        return None


def oracle(pub, digest, sig):
    key = load(pub)
    if key is None or len(digest) != 32 or len(sig) != 64:
        return False
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    der = utils.encode_dss_signature(r, s)
    try:
        key.verify(der, digest, ECDSA)
    except InvalidSignature:
        return False
    return True


# The line p256_check.py must print for a case.
def expected_line(pub, digest, sig):
    kid = hashlib.sha256(pub).digest()[:8].hex() if len(pub) == 65 else "-"
    return "%d %d %s" % (oracle(pub, digest, sig), load(pub) is not None, kid)


def flip(data, rng, start, end):
    data = bytearray(data)
    bit = rng.randrange(start * 8, end * 8)
    data[bit // 8] ^= 0x80 >> (bit % 8)
    return bytes(data)


# A signed case for key d and its corruptions.
def cases_for(d, digest, rng):
    key = ec.derive_private_key(d, CURVE)
    pub = key.public_key().public_bytes(serialization.Encoding.X962,
                                        serialization.PublicFormat.UncompressedPoint)
    r, s = utils.decode_dss_signature(key.sign(digest, ECDSA_DET))
    sig = b32(r) + b32(s)
    return [
        (pub, digest, sig),
        (pub, digest, b32(r) + b32(N - s)),
        (pub, digest, flip(sig, rng, 0, 32)),
        (pub, digest, flip(sig, rng, 32, 64)),
        (pub, flip(digest, rng, 0, 32), sig),
        (flip(pub, rng, 1, 33), digest, sig),
        (flip(pub, rng, 33, 65), digest, sig),
        (pub[:33] + b32(P - int.from_bytes(pub[33:], "big")), digest, sig),
        (pub, digest, b32(0) + b32(s)),
        (pub, digest, b32(r) + b32(0)),
        (pub, digest, b32(N) + b32(s)),
        (pub, digest, b32(r) + b32(N)),
        (bytes([rng.choice((0, 2, 3, 6))]) + pub[1:], digest, sig),
        (pub[:-1], digest, sig),
        (pub, digest + b"\x00", sig),
        (pub, digest, sig[:-1]),
        (pub, digest, bytes(64)),
        (bytes([4]) + bytes(64), digest, sig),
    ]


def run_cases(tmp_path, cases, heapsize=None, types=False):
    path = tmp_path / "p256_cases.txt"
    path.write_text("".join("%s %s %s\n" % (p.hex(), d.hex(), s.hex()) for p, d, s in cases))
    args = [str(path)] + (["types"] if types else [])
    lines = run_mpy_ok(SCRIPT, *args, heapsize=heapsize, timeout=240).splitlines()
    answers = [ln for ln in lines if ln and not ln.startswith(("T ", "done"))]
    assert lines[-1] == "done %d" % len(cases)
    assert len(answers) == len(cases)
    wrong = [(want, got, p.hex(), d.hex(), s.hex())
             for (p, d, s), got in zip(cases, answers)
             for want in [expected_line(p, d, s)] if got != want]
    assert not wrong, "%d of %d answers differ, first: %r" % (len(wrong), len(cases), wrong[0])
    return lines


# Three chunks so that pytest-xdist can spread them; 150 keys x 18 cases each.
@pytest.mark.slow
@pytest.mark.parametrize("chunk", range(3))
def test_agrees_with_cryptography_under_micropython(tmp_path, chunk):
    rng = random.Random(0x256 + chunk)
    cases = []
    for _ in range(150):
        cases += cases_for(rng.randrange(1, N), rng.randbytes(32), rng)
    assert sum(oracle(*c) for c in cases) >= 300  # the mix holds valid cases too
    run_cases(tmp_path, cases)


def test_fixed_and_edge_cases_in_a_64k_heap(tmp_path):
    rng = random.Random(5)
    cases = [tuple(bytes.fromhex(h) for h in case) for case in FIXED]
    for d in (1, 2, 3, N - 1, N - 3):
        cases += cases_for(d, rng.randbytes(32), rng)[:5]
    cases += cases_for(rng.randrange(1, N), bytes(32), rng)[:2]
    cases += cases_for(rng.randrange(1, N), b32(N), rng)[:2]
    assert all(oracle(*c) for c in cases[:2])
    lines = run_cases(tmp_path, cases, heapsize="64K", types=True)
    typed = dict(ln.split()[1:] for ln in lines if ln.startswith("T "))
    assert typed.pop("bytearray") == "True" and typed.pop("memoryview") == "True"
    assert len(typed) == 24 and set(typed.values()) == {"False"}, typed
