# hanota device: AES-128-GCM (NIST SP 800-38D) for the GBCS MAC, which is GCM's tag over
# additional data with an empty plaintext (GMAC). The block cipher is cryptolib's ECB where
# the port has it (unix, ESP32), `cryptography` on the host, else hanfw.aes in plain Python
# (the nRF port has no cryptolib). GHASH is our own: the field multiplication is done on
# MicroPython's big ints, bit by bit (128 shift-and-xor steps per block): a GBCS command
# is about a dozen blocks, so a table would cost more heap than the time it saves.
#
# Only 96-bit IVs (GBCS uses originator id || 00000000), so J0 = IV || 00000001.

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

_R = const(0xE1) << 120  # the GCM reduction constant x^128 = x^7 + x^2 + x + 1, reflected
_ONE_BIT = const(1) << 127


# A function enc(block, out) that AES-128-encrypts one 16-byte block under `key` into out.
def _encryptor(key):
    key = bytes(key)
    if len(key) != 16:
        raise ValueError("AES-128 key must be 16 bytes, got %d" % len(key))
    try:
        from cryptolib import aes
        c = aes(key, 1)

        def enc(block, out):
            c.encrypt(block, out)
        return enc
    except ImportError:
        pass
    try:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
        e = Cipher(algorithms.AES(key), modes.ECB()).encryptor()

        def enc(block, out):
            out[:] = e.update(bytes(block))
        return enc
    except ImportError:
        pass
    from hanfw.aes import Aes128
    a = Aes128(key)
    return a.encrypt


# x * h in GF(2^128) with GCM's bit order (the first bit of a block is the x^0 term).
def _gmul(x, h):
    z = 0
    v = h
    bit = _ONE_BIT
    while bit and x:
        if x & bit:
            z ^= v
            x ^= bit
        if v & 1:
            v = (v >> 1) ^ _R
        else:
            v >>= 1
        bit >>= 1
    return z


class Ghash:
    """GHASH under the hash key h (an int), fed in any pieces; each of AAD and ciphertext is
    zero-padded to a whole block by pad()."""

    def __init__(self, h):
        self._h = h
        self._y = 0
        self._buf = bytearray(16)
        self._n = 0

    def update(self, data):
        buf = self._buf
        n = self._n
        for b in data:
            buf[n] = b
            n += 1
            if n == 16:
                self._y = _gmul(self._y ^ int.from_bytes(buf, "big"), self._h)
                n = 0
        self._n = n

    def pad(self):
        if self._n:
            buf = self._buf
            for i in range(self._n, 16):
                buf[i] = 0
            self._y = _gmul(self._y ^ int.from_bytes(buf, "big"), self._h)
            self._n = 0

    def value(self):
        return self._y


class Gcm:
    """AES-128-GCM under one key. encrypt(iv, aad, plaintext) -> (ciphertext, 16-byte tag);
    gmac(iv, aad_pieces) -> tag for an empty plaintext, the AAD given as a sequence of
    buffers so that a caller need not join a header and a message."""

    def __init__(self, key):
        self._enc = _encryptor(key)
        self._blk = bytearray(16)
        self._out = bytearray(16)
        self._enc(bytes(16), self._out)
        self._h = int.from_bytes(self._out, "big")

    def _tag(self, iv, g, alen, clen):
        g.pad()
        g.update((alen * 8).to_bytes(8, "big") + (clen * 8).to_bytes(8, "big"))
        blk = self._blk
        blk[0:12] = iv
        blk[12:16] = b"\x00\x00\x00\x01"
        self._enc(blk, self._out)
        return (int.from_bytes(self._out, "big") ^ g.value()).to_bytes(16, "big")

    def gmac(self, iv, aad_pieces):
        if len(iv) != 12:
            raise ValueError("GCM IV must be 12 bytes")
        g = Ghash(self._h)
        alen = 0
        for piece in aad_pieces:
            g.update(piece)
            alen += len(piece)
        return self._tag(iv, g, alen, 0)

    def encrypt(self, iv, aad, plaintext):
        if len(iv) != 12:
            raise ValueError("GCM IV must be 12 bytes")
        g = Ghash(self._h)
        g.update(aad)
        g.pad()
        ct = bytearray(len(plaintext))
        blk = self._blk
        out = self._out
        blk[0:12] = iv
        ctr = 2
        for off in range(0, len(plaintext), 16):
            blk[12:16] = ctr.to_bytes(4, "big")
            self._enc(blk, out)
            for i in range(min(16, len(plaintext) - off)):
                ct[off + i] = plaintext[off + i] ^ out[i]
            ctr += 1
        g.update(ct)
        return bytes(ct), self._tag(iv, g, len(aad), len(plaintext))
