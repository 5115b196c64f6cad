"""Byte loops compiled by MicroPython's viper emitter (imported only under MicroPython).

CPython cannot even define these (the `ptr8` casts), so callers import this module
inside `try` and fall back to plain Python when it fails.
"""
import micropython


@micropython.viper
def nor_violation(old, new, n: int) -> int:
    """Index of the first byte where `new` would need a 0 -> 1 bit change over `old`, or -1."""
    o = ptr8(old)  # noqa: F821 (viper builtin)
    w = ptr8(new)  # noqa: F821
    i = 0
    while i < n:
        if (o[i] & w[i]) != w[i]:
            return i
        i += 1
    return -1


@micropython.viper
def xor8(buf, n: int, acc: int) -> int:
    """XOR of the first n bytes of buf into acc (the ESP image checksum)."""
    b = ptr8(buf)  # noqa: F821
    i = 0
    while i < n:
        acc ^= b[i]
        i += 1
    return acc
