"""Process trees from /proc (Linux): what a benchmark measures of the servers it starts.

A tree is a process and its living descendants (`fleet sim --procs P`'s children, a
pgserver's postgres backends). CPU is each live process's own time plus what it reaped from
children that ended (so a child reaped by a live process counts once, via its reaper)."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable

TICK = os.sysconf("SC_CLK_TCK")


def stat(pid: int) -> list[str] | None:
    """The fields of /proc/pid/stat after the command name (field 0 is the state), or None
    when the process is gone."""
    try:
        return Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def tree(pid: int) -> list[int]:
    """pid and its living descendants, pid first."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            f = stat(int(d))
            if f is not None:
                kids.setdefault(int(f[1]), []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def _sum(pid: int, fn: Callable[[int], float]) -> float:
    total = 0.0
    for p in tree(pid):
        try:
            total += fn(p)
        except OSError:  # gone meanwhile
            pass
    return total


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of the tree, and of the children its processes reaped."""
    def one(p: int) -> float:
        f = stat(p)
        return 0.0 if f is None else sum(int(x) for x in f[11:15]) / TICK
    return _sum(pid, one)


def _status_kb(p: int, path: str, field: str) -> float:
    m = re.search(r"^%s:\s+(\d+) kB" % field, Path("/proc/%d/%s" % (p, path)).read_text(), re.M)
    return int(m.group(1)) if m else 0.0


def tree_rss_mb(pid: int) -> float:
    """Resident set size of the tree (shared pages counted in each process)."""
    return _sum(pid, lambda p: _status_kb(p, "status", "VmRSS")) / 1024


def tree_pss_mb(pid: int) -> float:
    """Proportional set size of the tree (shared pages split among their users)."""
    return _sum(pid, lambda p: _status_kb(p, "smaps_rollup", "Pss")) / 1024


def tree_fds(pid: int) -> int:
    """Open file descriptors of the tree."""
    return int(_sum(pid, lambda p: len(os.listdir("/proc/%d/fd" % p))))
