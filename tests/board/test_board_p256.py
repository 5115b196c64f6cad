"""hanfw.p256 on the board: the known answers of the unit tests, and what must be refused."""
import hashlib
import random

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

# The known answer of tests/unit/test_p256.py, and the r = x(R) - n case of tests/device.
KAT_PUB = bytes.fromhex(
    "0471c5dac424730f426de4214662f0d5cf46e12796d190470cb44f60defda470cc"
    "29d478625d05a90ab9585d3ed8e06fdf76f007890df3c2e235fefd5025084c70")
KAT_DIGEST = bytes.fromhex("1000f67013503e3d4c6a1ad410bb7dab7e9d1b26b12fbc6c514c161aa2342f1c")
KAT_SIG = bytes.fromhex(
    "740924c95ff8e73f186a099c8dae6757230fe9616465cb935c7ccaa7169a8fd6"
    "7918265d4515126c3877c0bdd049960d781f058f5b7ad0a6a651b4977c1fe3e9")
KAT_KEY_ID = "d072a12e9e820d38"
RN_PUB = bytes.fromhex(
    "042a70c66c9f439ebfd19545ff9c63ead1f339ba3f8803fd89800e290a1eef9981"
    "d2304685f29760669ff9ad860a3906c5c051a65edd3fae3cfaecc63a9f264e4f")
RN_DIGEST = bytes.fromhex("b8e3c71f6bf08d62331057ca7d411fab9fb932d4f039772216ff82e389e3995b")
RN_SIG = bytes.fromhex(
    "00000000000000000000000000000000110e27003f9931ee3af27f802dc5fd3d"
    "b35331ceaf2ed9dd87e355b26210b784baa1c6f1404b6eaf162a01dec28753f9")
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def verify_on_board(on_board, need, pub, digest, sig, kind="bytes"):
    need("hanfw.p256", "bchk")
    wrap = {"bytes": "bytes", "bytearray": "bytearray", "memoryview": "memoryview"}[kind]
    return on_board("from hanfw import p256\nimport bchk\n"
                    "bchk.out([p256.verify(%s(bchk.uh('%s')), %s(bchk.uh('%s')), %s(bchk.uh('%s'))),"
                    " p256.is_valid_point(bchk.uh('%s'))])"
                    % (wrap, pub.hex(), wrap, digest.hex(), wrap, sig.hex(), pub.hex()), timeout=120)


def test_known_answer_verifies(on_board, need):
    assert verify_on_board(on_board, need, KAT_PUB, KAT_DIGEST, KAT_SIG) == [True, True]


def test_known_answer_from_bytearray_and_memoryview(on_board, need):
    assert verify_on_board(on_board, need, KAT_PUB, KAT_DIGEST, KAT_SIG, "bytearray") == [True, True]
    assert verify_on_board(on_board, need, KAT_PUB, KAT_DIGEST, KAT_SIG, "memoryview") == [True, True]


def test_r_equal_x_minus_n_verifies(on_board, need):
    assert verify_on_board(on_board, need, RN_PUB, RN_DIGEST, RN_SIG) == [True, True]


def test_key_id_is_the_sha256_prefix(on_board, need):
    need("hanfw.p256", "bchk")
    got = on_board("from hanfw import p256\nimport bchk\nbchk.out(bchk.hx(p256.key_id(bchk.uh('%s'))))"
                   % KAT_PUB.hex())
    assert got == KAT_KEY_ID == hashlib.sha256(KAT_PUB).digest()[:8].hex()


@pytest.mark.parametrize("what", ["digest", "r", "s", "key", "s=0", "r=n", "s=n-s"])
def test_altered_known_answer_is_refused(on_board, need, what):
    pub, digest, sig = KAT_PUB, bytearray(KAT_DIGEST), bytearray(KAT_SIG)
    if what == "digest":
        digest[31] ^= 1
    elif what == "r":
        sig[0] ^= 0x80
    elif what == "s":
        sig[63] ^= 1
    elif what == "key":
        pub = bytes(pub[:64]) + bytes([pub[64] ^ 1])
    elif what == "s=0":
        sig[32:] = bytes(32)
    elif what == "r=n":
        sig[:32] = N.to_bytes(32, "big")
    else:  # the other s of the same (r, s) pair is valid ECDSA; p256 takes it too: compare
        s = int.from_bytes(sig[32:], "big")
        sig[32:] = (N - s).to_bytes(32, "big")
    got = verify_on_board(on_board, need, pub, bytes(digest), bytes(sig))
    if what == "s=n-s":
        assert got == [True, True]  # ECDSA's malleability: (r, n-s) verifies as cryptography says
    elif what == "key":
        assert got == [False, False]  # not on the curve
    else:
        assert got == [False, True]


def test_fresh_keys_agree_with_cryptography(on_board, need):
    rng = random.Random(0xB0A4D)
    need("hanfw.p256", "bchk")
    cases, want = [], []
    for _ in range(3):
        key = ec.derive_private_key(rng.randrange(1, N), ec.SECP256R1())
        pub = key.public_key().public_bytes(serialization.Encoding.X962,
                                            serialization.PublicFormat.UncompressedPoint)
        digest = rng.randbytes(32)
        r, s = utils.decode_dss_signature(key.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256()))))
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        cases.append((pub, digest, sig))
        want.append(True)
        cases.append((pub, digest[::-1], sig))
        want.append(False)
    code = "from hanfw import p256\nimport bchk\nbchk.out([%s])" % ", ".join(
        "p256.verify(bchk.uh('%s'), bchk.uh('%s'), bchk.uh('%s'))" % (p.hex(), d.hex(), s.hex())
        for p, d, s in cases)
    assert on_board(code, timeout=300) == want
