# hanota device: AES-128 encryption of one 16-byte block (FIPS-197), in plain Python.
# For ports without cryptolib (the MicroPython nRF port has none): the Zigbee AES-MMO hash
# (hanfw.mmo: the install-code link key and the OTA integrity code) only ever encrypts,
# one block at a time, with a new key per block. Byte-oriented with two 256-byte tables:
# 32-bit T-tables would make most words bigger than a MicroPython small int (31 bits),
# so every lookup would allocate. All work buffers are made once per Aes128 object.

# S-box, FIPS-197 figure 7 (row = high nibble).
_SBOX = (
    b"\x63\x7c\x77\x7b\xf2\x6b\x6f\xc5\x30\x01\x67\x2b\xfe\xd7\xab\x76"
    b"\xca\x82\xc9\x7d\xfa\x59\x47\xf0\xad\xd4\xa2\xaf\x9c\xa4\x72\xc0"
    b"\xb7\xfd\x93\x26\x36\x3f\xf7\xcc\x34\xa5\xe5\xf1\x71\xd8\x31\x15"
    b"\x04\xc7\x23\xc3\x18\x96\x05\x9a\x07\x12\x80\xe2\xeb\x27\xb2\x75"
    b"\x09\x83\x2c\x1a\x1b\x6e\x5a\xa0\x52\x3b\xd6\xb3\x29\xe3\x2f\x84"
    b"\x53\xd1\x00\xed\x20\xfc\xb1\x5b\x6a\xcb\xbe\x39\x4a\x4c\x58\xcf"
    b"\xd0\xef\xaa\xfb\x43\x4d\x33\x85\x45\xf9\x02\x7f\x50\x3c\x9f\xa8"
    b"\x51\xa3\x40\x8f\x92\x9d\x38\xf5\xbc\xb6\xda\x21\x10\xff\xf3\xd2"
    b"\xcd\x0c\x13\xec\x5f\x97\x44\x17\xc4\xa7\x7e\x3d\x64\x5d\x19\x73"
    b"\x60\x81\x4f\xdc\x22\x2a\x90\x88\x46\xee\xb8\x14\xde\x5e\x0b\xdb"
    b"\xe0\x32\x3a\x0a\x49\x06\x24\x5c\xc2\xd3\xac\x62\x91\x95\xe4\x79"
    b"\xe7\xc8\x37\x6d\x8d\xd5\x4e\xa9\x6c\x56\xf4\xea\x65\x7a\xae\x08"
    b"\xba\x78\x25\x2e\x1c\xa6\xb4\xc6\xe8\xdd\x74\x1f\x4b\xbd\x8b\x8a"
    b"\x70\x3e\xb5\x66\x48\x03\xf6\x0e\x61\x35\x57\xb9\x86\xc1\x1d\x9e"
    b"\xe1\xf8\x98\x11\x69\xd9\x8e\x94\x9b\x1e\x87\xe9\xce\x55\x28\xdf"
    b"\x8c\xa1\x89\x0d\xbf\xe6\x42\x68\x41\x99\x2d\x0f\xb0\x54\xbb\x16"
)
# xtime: multiplication by 2 in GF(2^8) modulo x^8 + x^4 + x^3 + x + 1.
_X2 = bytes(((a << 1) ^ (0x1b if a & 0x80 else 0)) & 0xff for a in range(256))
# Round constants of the key schedule.
_RCON = b"\x01\x02\x04\x08\x10\x20\x40\x80\x1b\x36"
# ShiftRows as a gather: output byte i comes from input byte _SHIFT[i] (column-major state).
_SHIFT = b"\x00\x05\x0a\x0f\x04\x09\x0e\x03\x08\x0d\x02\x07\x0c\x01\x06\x0b"


class Aes128:
    """AES-128 encryption only. set_key(key) then encrypt(block, out), both 16 bytes."""

    def __init__(self, key=None):
        self._rk = bytearray(176)  # 11 round keys
        self._s = bytearray(16)  # the state, and the other half of each round's swap
        self._u = bytearray(16)
        if key is not None:
            self.set_key(key)

    def set_key(self, key):
        if len(key) != 16:
            raise ValueError("AES-128 key must be 16 bytes, got %d" % len(key))
        rk = self._rk
        sb = _SBOX
        rk[0:16] = key
        for i in range(16, 176, 4):
            a = rk[i - 4]
            b = rk[i - 3]
            c = rk[i - 2]
            d = rk[i - 1]
            if not i & 15:  # first word of a round key: RotWord, SubWord, Rcon
                t = a
                a = sb[b] ^ _RCON[(i >> 4) - 1]
                b = sb[c]
                c = sb[d]
                d = sb[t]
            rk[i] = rk[i - 16] ^ a
            rk[i + 1] = rk[i - 15] ^ b
            rk[i + 2] = rk[i - 14] ^ c
            rk[i + 3] = rk[i - 13] ^ d

    def encrypt(self, block, out):
        """Encrypt the 16 bytes of block into out (a 16-byte bytearray; may be block)."""
        if len(block) != 16 or len(out) != 16:
            raise ValueError("AES block and output must be 16 bytes")
        rk = self._rk
        sb = _SBOX
        x2 = _X2
        sh = _SHIFT
        s = self._s
        u = self._u
        for i in range(16):
            s[i] = block[i] ^ rk[i]
        for r in range(16, 160, 16):
            # SubBytes and ShiftRows gathered per column, then MixColumns and AddRoundKey.
            for k in range(0, 16, 4):
                a0 = sb[s[sh[k]]]
                a1 = sb[s[sh[k + 1]]]
                a2 = sb[s[sh[k + 2]]]
                a3 = sb[s[sh[k + 3]]]
                t = a0 ^ a1 ^ a2 ^ a3
                u[k] = a0 ^ t ^ x2[a0 ^ a1] ^ rk[r + k]
                u[k + 1] = a1 ^ t ^ x2[a1 ^ a2] ^ rk[r + k + 1]
                u[k + 2] = a2 ^ t ^ x2[a2 ^ a3] ^ rk[r + k + 2]
                u[k + 3] = a3 ^ t ^ x2[a3 ^ a0] ^ rk[r + k + 3]
            t = s
            s = u
            u = t
        for i in range(16):
            out[i] = sb[s[sh[i]]] ^ rk[160 + i]
