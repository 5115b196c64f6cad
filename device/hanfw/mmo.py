# hanota device: Zigbee AES-128-MMO hash (the OTA image integrity code, tag 0x0003).
# Hj = AES(key=Hj-1, Mj) xor Mj with H0 = 0; padding per Zigbee (zigbee_ota.md 1.2).

import struct


# The AES-128 block encryption MMO needs, fastest first: cryptolib (C, on the ESP32 and
# unix ports), cryptography (CPython on the host), else hanfw.aes in plain Python (the
# nRF port has no cryptolib). enc(key, block, out) encrypts one 16-byte block into out.
def _aes_encryptor():
    try:
        from cryptolib import aes

        def enc(key, block, out):
            aes(key, 1).encrypt(block, out)
        return enc
    except ImportError:
        pass
    try:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        def enc(key, block, out):
            e = Cipher(algorithms.AES(bytes(key)), modes.ECB()).encryptor()
            out[:] = e.update(bytes(block))
        return enc
    except ImportError:
        pass
    from hanfw.aes import Aes128
    a = Aes128()

    def enc(key, block, out):
        a.set_key(key)
        a.encrypt(block, out)
    return enc


# Zigbee AES-128-MMO hash, fed incrementally (integrity code, tag 0x0003).
class Mmo:
    def __init__(self):
        self._enc = _aes_encryptor()
        self._h = bytearray(16)
        self._blk = bytearray(16)
        self._out = bytearray(16)
        self._fill = 0
        self.length = 0

    def _block(self):
        h = self._h
        out = self._out
        self._enc(h, self._blk, out)
        blk = self._blk
        for i in range(16):
            h[i] = out[i] ^ blk[i]

    def update(self, data):
        mv = memoryview(data)
        n = len(mv)
        self.length += n
        i = 0
        while i < n:
            take = min(16 - self._fill, n - i)
            self._blk[self._fill:self._fill + take] = mv[i:i + take]
            self._fill += take
            i += take
            if self._fill == 16:
                self._block()
                self._fill = 0

    def digest(self):
        bits = self.length * 8
        if bits < 0x10000:
            tail_len, tail = 14, struct.pack(">H", bits)
        else:
            tail_len, tail = 10, struct.pack(">I", bits) + b"\x00\x00"
        pad = bytearray(b"\x80")
        while (self.length + len(pad)) % 16 != tail_len:
            pad.append(0)
        length = self.length
        self.update(pad + tail)
        self.length = length
        return bytes(self._h)
