"""hanfw.aes (AES-128 in plain Python, for ports without cryptolib) against `cryptography`."""
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings, strategies as st

from hanfw import aes, mmo
from hanfw.aes import Aes128

INTEGRITY_FILE = "herdsman-integrity-code-1166-012B-24031511.zigbee"
INTEGRITY_CODE = "cb65ccce17411d7c763adad14668de74"  # tests/vectors/README.md


def reference(key: bytes, block: bytes) -> bytes:
    return Cipher(algorithms.AES(key), modes.ECB()).encryptor().update(block)


def encrypt(key: bytes, block: bytes) -> bytes:
    out = bytearray(16)
    Aes128(key).encrypt(block, out)
    return bytes(out)


@pytest.mark.parametrize("key,block,expected", [
    # FIPS-197 appendix C.1 (AES-128) and appendix B (the cipher example)
    ("000102030405060708090a0b0c0d0e0f", "00112233445566778899aabbccddeeff", "69c4e0d86a7b0430d8cdb78070b4c55a"),
    ("2b7e151628aed2a6abf7158809cf4f3c", "3243f6a8885a308d313198a2e0370734", "3925841d02dc09fbdc118597196a0b32"),
])
def test_fips197_known_answers(key, block, expected):
    assert encrypt(bytes.fromhex(key), bytes.fromhex(block)).hex() == expected


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16))
def test_random_keys_and_blocks_match_cryptography(key, block):
    assert encrypt(key, block) == reference(key, block)


def test_one_object_rekeyed_and_encrypting_in_place():
    a = Aes128()
    for i in range(20):
        key = bytes((i * 37 + j) & 0xFF for j in range(16))
        buf = bytearray((i + j * 11) & 0xFF for j in range(16))
        want = reference(key, bytes(buf))
        a.set_key(key)
        a.encrypt(buf, buf)  # out may be the input block
        assert bytes(buf) == want


@pytest.mark.parametrize("key,block,out", [(15, 16, 16), (17, 16, 16), (16, 15, 16), (16, 16, 17)])
def test_wrong_sizes_are_refused_naming_them(key, block, out):
    a = Aes128()
    with pytest.raises(ValueError, match="16 bytes"):
        a.set_key(bytes(key))
        a.encrypt(bytes(block), bytearray(out))


def plain_python_mmo(monkeypatch):
    """An Mmo whose AES is hanfw.aes: as on a port with neither cryptolib nor cryptography."""
    import builtins
    real = builtins.__import__

    def no_fast_aes(name, *args, **kw):
        if name == "cryptolib" or name.startswith("cryptography"):
            raise ImportError("no module named %r" % name)
        return real(name, *args, **kw)
    monkeypatch.setattr(builtins, "__import__", no_fast_aes)
    m = mmo.Mmo()
    monkeypatch.undo()
    return m


def test_mmo_with_plain_python_aes_gives_the_vectors_integrity_code(monkeypatch, vectors_dir):
    data = (vectors_dir / INTEGRITY_FILE).read_bytes()
    m = plain_python_mmo(monkeypatch)
    assert any(isinstance(c.cell_contents, Aes128) for c in m._enc.__closure__)  # not cryptography
    m.update(data[:-22])  # every byte before the 6-byte header of the 16-byte tag 0x0003 element
    assert m.digest().hex() == INTEGRITY_CODE == data[-16:].hex()


def test_link_key_of_the_zigbee_example_with_plain_python_aes(monkeypatch):
    m = plain_python_mmo(monkeypatch)
    m.update(bytes.fromhex("83FED3407A939723A5C639B26916D505C3B5"))
    assert m.digest().hex() == "66b6900981e1ee3ca4206b6b861c02bb"


def test_module_keeps_its_tables_as_bytes():
    # MicroPython keeps bytes constants compact; a list of ints would cost 4-8 bytes an entry.
    assert all(isinstance(t, bytes) and len(t) == 256 for t in (aes._SBOX, aes._X2))


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=40))
def test_mmo_with_plain_python_aes_matches_mmo_with_cryptography(data, chunk):
    import builtins
    real = builtins.__import__

    def no_fast_aes(name, *args, **kw):
        if name == "cryptolib" or name.startswith("cryptography"):
            raise ImportError("no module named %r" % name)
        return real(name, *args, **kw)
    builtins.__import__ = no_fast_aes
    try:
        plain = mmo.Mmo()
    finally:
        builtins.__import__ = real
    fast = mmo.Mmo()
    for i in range(0, len(data), chunk):
        plain.update(data[i:i + chunk])
    fast.update(data)
    assert plain.digest() == fast.digest()
