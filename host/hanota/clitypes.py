"""What the `hanota` command line and its hub commands share: click parameter types for
integers, file versions and EUI-64s, and the one mapping of domain errors to exit codes.

Exit codes: 0 success; 1 usage (bad arguments, unknown device or request, or a negative
verdict a command reports itself); 2 a failure (device, file format, protocol, hub).
"""
from __future__ import annotations

import functools

import click

from hanfw import link as hlink

from . import images
from .errors import HanotaError
from .hub.db import HubUsageError


def exit_code(e: HanotaError) -> int:
    """The exit code for a domain error: 1 when the request itself is wrong, else 2."""
    return 1 if isinstance(e, HubUsageError) else 2


class DomainExit(click.ClickException):
    """A domain error as click shows it (message on stderr) with its exit code."""

    def __init__(self, e: HanotaError):
        super().__init__(str(e))
        self.exit_code = exit_code(e)


def domain_errors(fn):
    """Decorate a command so that domain errors end it with a message and their exit code
    inside click (so click's runner and `hanota` give the same result)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except HanotaError as e:
            raise DomainExit(e) from None
    return wrapper


class BasedInt(click.ParamType):
    """An integer in decimal or 0x hex (or 0b / 0o); with `bits`, 0 .. 2**bits - 1."""

    name = "integer"

    def __init__(self, bits: int | None = None):
        self.bits = bits

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            n = value
        else:
            try:
                n = int(str(value), 0)
            except ValueError:
                self.fail("%r is not a number (use decimal or 0x hex)" % value, param, ctx)
        if self.bits and not 0 <= n < 1 << self.bits:
            self.fail("%s is out of range for a %d-bit field" % (value, self.bits), param, ctx)
        return n


class Version(click.ParamType):
    """A file version: an integer (0x hex allowed) or a dotted quad a.b.c.d."""

    name = "version"

    def convert(self, value, param, ctx):
        try:
            return images.parse_version(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


class Eui64(click.ParamType):
    """An EUI-64 written most significant byte first (00:11:..:77 or 16 hex digits): its
    wire-order bytes, or with text=True its canonical text (how the hub keeps devices)."""

    name = "eui64"

    def __init__(self, text: bool = False):
        self.text = text

    def convert(self, value, param, ctx):
        try:
            eui = hlink.eui_from_str(value.strip())
        except ValueError as e:
            self.fail(str(e), param, ctx)
        return hlink.eui_str(eui) if self.text else eui


U16 = BasedInt(16)
U32 = BasedInt(32)
