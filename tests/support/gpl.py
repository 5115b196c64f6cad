"""Reference files from GPL repositories, used to check hanota locally and never committed.

SmartDCCInnovation's DUIS templates, DCC Boxed key store and GBCS parser (with the RTDS data)
are GPL-3.0: hanota may read them to test against, but does not ship them. `make gpl` puts
each at its pinned commit under $HANOTA_GPL_DIR (default: the directory beside the checkout,
`../gpl`). A test that needs one skips, naming the directory and the make target, when it is
absent; the same checks run in CI on requests hanota builds itself.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# name -> (repository, commit); the Makefile's `gpl` target clones exactly these.
REPOS = {
    "duis-templates": ("SmartDCCInnovation/duis-templates",
                       "5de709e35f85d18f5d4cc7cf2704cd93bdb9046f"),
    "dccboxed-keystore": ("SmartDCCInnovation/dccboxed-keystore",
                          "cf55916abd1651d3acb43afc8108142686d6dc1f"),
    "gbcs-parser": ("SmartDCCInnovation/gbcs-parser",
                    "3d104aa16e30535edc88f6a976779bf906324540"),
}


def gpl_dir() -> Path:
    return Path(os.environ.get("HANOTA_GPL_DIR", ROOT.parent / "gpl"))


def gpl_path(name: str, *parts: str) -> Path:
    """The path inside a GPL reference checkout, or skip the test saying how to get it."""
    base = gpl_dir() / name
    path = base.joinpath(*parts)
    if not path.exists():
        repo, commit = REPOS[name]
        pytest.skip(f"{repo} is not at {base} (GPL reference data, not committed): "
                    f"run `make gpl` to fetch it at {commit[:10]}")
    return path
