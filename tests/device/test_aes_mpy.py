"""hanfw.aes and the AES-MMO hash under the real MicroPython, in a 64 KiB heap, without cryptolib."""
import random

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from support.mpy import MPY_TESTS, VECTORS, run_mpy_ok

CHECK = MPY_TESTS / "aes_check.py"
INTEGRITY_FILE = VECTORS / "herdsman-integrity-code-1166-012B-24031511.zigbee"


def test_aes_and_mmo_compiled_in_64k_heap_without_cryptolib(tmp_path):
    rnd = random.Random(11)
    lines = ["000102030405060708090a0b0c0d0e0f 00112233445566778899aabbccddeeff "
             "69c4e0d86a7b0430d8cdb78070b4c55a"]  # FIPS-197 C.1
    for _ in range(200):
        key, block = rnd.randbytes(16), rnd.randbytes(16)
        want = Cipher(algorithms.AES(key), modes.ECB()).encryptor().update(block)
        lines.append("%s %s %s" % (key.hex(), block.hex(), want.hex()))
    cases = tmp_path / "cases.txt"
    cases.write_text("\n".join(lines) + "\n")
    out = run_mpy_ok(CHECK, str(cases), str(INTEGRITY_FILE), heapsize="64K", timeout=300)
    assert "aes_check ok 206 " in out and "hanfw/aes.mpy" in out, out
