"""The `hanota dcc`, `hanota pki` and `hanota duis` command groups.

Each group's commands live beside their code (`cli_*.py` modules in this package), which add
themselves to the groups below when imported at the end of this file.
"""
from __future__ import annotations

import click


@click.group()
def dcc() -> None:
    """The DCC: DUIS endpoint, registration data, Central Products List."""


@click.group()
def pki() -> None:
    """An SMKI-like test PKI: root and Organisation certificates, and importing outside ones."""


@click.group()
def duis() -> None:
    """DUIS requests: build, sign, verify."""


@click.group()
def campaign() -> None:
    """Firmware campaigns: one image to many devices in waves, moved on by the DCC's workers,
    each request signed where the Supplier's key is (campaign drive, dcc serve
    --supplier-key)."""


def register(main: click.Group) -> None:
    """Add the groups to the top-level `hanota` command."""
    for group in (dcc, pki, duis, campaign):
        main.add_command(group)


# Command modules (each imports the groups above and decorates its commands onto them):
from . import cli_pki  # noqa: E402,F401
from . import cli_http  # noqa: E402,F401
from . import cli_duis  # noqa: E402,F401
from . import cli_dcc  # noqa: E402,F401
from . import cli_campaign  # noqa: E402,F401
