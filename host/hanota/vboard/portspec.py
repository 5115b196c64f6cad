"""The MicroPython port a board runs: the ``[port]`` table of its board.toml.

A real board's table lists what its stock firmware offers (`platform` = sys.platform;
`sysname`, `release`, `machine` = os.uname(); `modules` that import, `absent` modules that
do not, `absent_attrs` such as "machine.WDT", `not_emulated` modules the real port has and
the virtual board does not). A virtual board's table is ``board = "<real board>"``: it takes
that board's facts, and the boot script (rt/vport.py) makes the unix port look like them.
"""
from __future__ import annotations

import json
import tomllib
from pathlib import Path

from ..boardspec import Board, LayoutError, boards_root

_LISTS = ("modules", "absent", "absent_attrs", "not_emulated")
_STRINGS = ("platform", "sysname", "release", "machine")


def _table(path: Path) -> dict:
    with open(path, "rb") as f:
        return tomllib.load(f).get("port") or {}


def port_facts(board: Board) -> dict:
    """The [port] facts of `board` (following ``board = ...``); LayoutError when missing or malformed."""
    path = board.path or boards_root() / board.name / "board.toml"
    t = _table(path)
    if "board" in t:
        ref = boards_root() / str(t["board"]) / "board.toml"
        if not ref.exists():
            raise LayoutError("%s: [port] board = %r has no board.toml" % (path, t["board"]))
        path, t = ref, _table(ref)
    if not t:
        raise LayoutError("%s: no [port] table (the port's platform and modules)" % path)
    for k in _STRINGS:
        if not isinstance(t.get(k), str) or not t[k]:
            raise LayoutError("%s: [port] needs the string %s" % (path, k))
    for k in _LISTS:
        v = t.get(k, [])
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise LayoutError("%s: [port] %s must be a list of names" % (path, k))
    both = set(t.get("modules", [])) & set(t.get("absent", []))
    if both:
        raise LayoutError("%s: [port] lists %s as both present and absent" % (path, sorted(both)))
    bad = [a for a in t.get("absent_attrs", []) if a.count(".") != 1]
    if bad:
        raise LayoutError("%s: [port] absent_attrs must be module.name: %s" % (path, bad))
    return {k: t[k] for k in _STRINGS} | {k: list(t.get(k, [])) for k in _LISTS}


def runtime_env(board: Board) -> str:
    """HANOTA_VB_PORT for the board process: what rt/vport.py applies (JSON); "" without [port]."""
    try:
        f = port_facts(board)
    except LayoutError:
        if "port" not in _table(board.path or boards_root() / board.name / "board.toml"):
            return ""  # a board without port facts runs the plain unix port
        raise
    return json.dumps({"platform": f["platform"], "sysname": f["sysname"], "release": f["release"],
                       "version": "v" + f["release"], "machine": f["machine"],
                       "absent": f["absent"], "absent_attrs": f["absent_attrs"]},
                      separators=(",", ":"))
