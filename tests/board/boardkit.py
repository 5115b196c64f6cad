"""The on-board tier's connection to a board: its REPL through mpremote's SerialTransport.

One `OnBoard` per session. It enters the raw REPL once (soft reset), mounts a small RAM
filesystem at /hbt on the board and puts it first on sys.path, and pushes compiled modules
(the device code from hanota.devcode, the checks from tests/board/mpy/) into it only when a
test needs them. A module's bytes are dropped from the RAM filesystem once it is imported,
so the board's heap holds each module once, and the board's own filesystem (what a deploy
put there) is never touched: this is how MicroPython's run-tests.py runs precompiled tests
on a target, done here in our own code.

A check prints one line `HBT <json>`; `call()` returns that JSON, or fails with the
board's traceback.
"""
from __future__ import annotations

import base64
import json
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from hanota import devcode

HERE = Path(__file__).resolve().parent
CHECKS = HERE / "mpy"
MARK = "HBT "
NOTES = pytest.StashKey[list]()  # lines a test wants printed at the session's end (the free heap)
CHUNK = 3072  # bytes of module per exec: the base64 literal is compiled in the board's heap

# Run once per (re)connection. A Python object with the VFS methods can be mounted; import
# calls stat() then open() and reads the .mpy through readinto (io.IOBase gives the stream).
_SETUP = """\
import sys, io, gc
try:
    from vfs import mount as _hbt_mount
except ImportError:
    from os import mount as _hbt_mount
from binascii import a2b_base64 as _hbt_b64
class _HbtFile(io.IOBase):
    def __init__(self, d):
        self.d = d
        self.p = 0
    def readinto(self, buf):
        n = min(len(buf), len(self.d) - self.p)
        buf[:n] = memoryview(self.d)[self.p:self.p + n]
        self.p += n
        return n
    def ioctl(self, op, arg):
        return 0
class _HbtFs:
    def __init__(self):
        self.files = {}
        self.dirs = {'', '/'}
    def mount(self, ro, mkfs):
        pass
    def umount(self):
        pass
    def chdir(self, p):
        pass
    def getcwd(self):
        return '/'
    def ilistdir(self, p):
        return iter(())
    def statvfs(self, p):
        return (0,) * 10
    def stat(self, p):
        if p in self.files:
            return (0x8000, 0, 0, 0, 0, 0, len(self.files[p]), 0, 0, 0)
        if p in self.dirs:
            return (0x4000, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        raise OSError(2)
    def open(self, p, mode):
        if p not in self.files:
            raise OSError(2)
        return _HbtFile(self.files[p])
    def put(self, p, off, b):
        self.files[p][off:off + len(b)] = b
for _k in list(sys.modules):
    if _k == 'hanfw' or _k.startswith('hanfw.') or _k.startswith('bchk'):
        del sys.modules[_k]
_hbt = _HbtFs()
try:
    _hbt_mount(_hbt, '/hbt')
except OSError:
    pass
if '/hbt' not in sys.path:
    sys.path.insert(0, '/hbt')
_hbt_keep = set(globals())
_hbt_keep.add('_hbt_keep')
gc.collect()
print('HBT-READY', sys.platform)
"""

# Between test modules: forget the modules and globals the checks made, so that the next
# module's checks get the heap back (the device code does not fit a small heap all at once).
_UNLOAD = """for _k in list(sys.modules):
    if _k == 'hanfw' or _k.startswith('hanfw.') or _k.startswith('bchk'):
        del sys.modules[_k]
for _k in list(globals()):
    if _k not in _hbt_keep:
        del globals()[_k]
gc.collect()
print('HBT', gc.mem_free())
"""

_DETECT = """\
k = []
for m in ('esp32', 'nrf'):
    try:
        __import__(m)
        k.append(m)
    except ImportError:
        pass
import sys, gc, os
gc.collect()
import json
u = os.uname() if hasattr(os, 'uname') else None
print('HBT', json.dumps({'modules': k, 'platform': sys.platform, 'machine': u.machine if u else '',
                         'release': u.release if u else '', 'free': gc.mem_free()}))
"""

_IMPORTS = re.compile(r"^\s*(?:from\s+(hanfw(?:\.\w+)*)\s+import\s+([\w ,]+)|import\s+(hanfw(?:\.\w+)*))",
                      re.M)


class BoardFailure(AssertionError):
    """A check raised on the board: carries the board's own traceback."""


class OnBoard:
    """A session on the board at `port`; see the module docstring."""

    def __init__(self, port: str, timeout: float = 10.0):
        from mpremote.transport import TransportError
        from mpremote.transport_serial import SerialTransport
        self.port = port
        self._timeout = timeout
        try:
            self.t = SerialTransport(port, timeout=timeout)
        except (TransportError, OSError) as e:
            raise ConnectionError("cannot open the board's serial port %s: %s" % (port, e)) from None
        self.facts: dict = {}
        self.loaded: set[str] = set()
        self._checks_dir = Path(tempfile.mkdtemp(prefix="hbt-checks-"))
        self.reconnect()

    # ---- the REPL

    def reconnect(self) -> None:
        """Soft-reset into the raw REPL and set the RAM filesystem up again (after a reset)."""
        from mpremote.transport import TransportError
        try:
            self.t.enter_raw_repl(soft_reset=True)
        except (TransportError, OSError) as e:
            raise ConnectionError("no MicroPython REPL answers on %s: %s" % (self.port, e)) from None
        self.loaded = set()
        out = self.run(_SETUP)
        if "HBT-READY" not in out:
            raise ConnectionError("the board on %s did not set up the test filesystem: %s" % (self.port, out))
        self.facts = self.call(_DETECT)

    def run(self, code: str, timeout: float = 60) -> str:
        """Execute `code` in the board's raw REPL; its output, or BoardFailure with its traceback."""
        from mpremote.transport import TransportError
        self.reacquire()
        try:
            out, err = self.t.exec_raw(code, timeout=timeout)
        except TransportError as e:
            # a check that hangs, or a board that went away: the next call starts afresh
            self.release()
            raise BoardFailure("the board on %s did not finish a check within %.0f s: %s"
                               % (self.port, timeout, e)) from None
        if err:
            raise BoardFailure("the board raised:\n%s" % err.decode(errors="replace").strip()[-3000:])
        return out.decode(errors="replace")

    def call(self, code: str, timeout: float = 60):
        """Execute a check that prints one `HBT <json>` line; return the parsed JSON."""
        out = self.run("gc.collect()\n" + code, timeout)
        lines = [ln[len(MARK):] for ln in out.splitlines() if ln.startswith(MARK)]
        if not lines:
            raise BoardFailure("the check printed no result line; the board said:\n%s" % out[-2000:])
        return json.loads(lines[-1])

    def release(self, reset: bool = False) -> None:
        """Let go of the port (for a deploy, or to leave the board's app running); `reset` first."""
        if self.t is None:
            return
        if reset:
            try:
                self.t.exec_raw_no_follow("import machine\nmachine.reset()")
            except Exception:  # the board goes away while answering: that is the reset
                pass
        self.close()
        self.t = None

    def reacquire(self) -> None:
        """Open the port again after release() (interrupts the board's app, soft reset)."""
        from mpremote.transport import TransportError
        from mpremote.transport_serial import SerialTransport
        if self.t is not None:
            return
        try:
            self.t = SerialTransport(self.port, timeout=self._timeout)
        except (TransportError, OSError) as e:
            raise ConnectionError("cannot open the board's serial port %s again: %s" % (self.port, e)) from None
        self.reconnect()

    def unload(self) -> int:
        """Drop every module and global the checks loaded; the free heap after."""
        self.loaded = set()
        return int(self.run(_UNLOAD).split("HBT", 1)[1])

    def close(self) -> None:
        shutil.rmtree(self._checks_dir, ignore_errors=True)
        if self.t is None:
            return
        try:
            self.t.exit_raw_repl()
        except Exception:  # the board may be gone: closing must not hide the test result
            pass
        self.t.close()

    # ---- modules

    def need(self, *modules: str) -> None:
        """Import device modules (hanfw.x) or checks (bchk_x) on the board, with their hanfw deps."""
        self.reacquire()  # first: reconnecting forgets what was loaded
        for m in modules:
            self._load(m)

    def _load(self, mod: str) -> None:
        if mod in self.loaded:
            return
        self.loaded.add(mod)  # before deps: a cycle must not recurse
        try:
            self._load_now(mod)
        except BaseException:
            self.loaded.discard(mod)
            raise

    def _load_now(self, mod: str) -> None:
        parts = mod.split(".")
        for i in range(1, len(parts)):  # the package first
            self._load(".".join(parts[:i]))
        src, rel, data = self._module_file(mod)
        for dep in self._deps(src):
            self._load(dep)
        self._push("/" + rel, data)
        self.run("import %s\n_hbt.files.pop(%r)\ngc.collect()" % (mod, "/" + rel))

    def _module_file(self, mod: str) -> tuple[Path, str, bytes]:
        """(source, path in the RAM filesystem, compiled bytes) of a module."""
        if mod.startswith("bchk"):
            src = CHECKS / (mod + ".py")
            out = self._checks_dir / (mod + ".mpy")
            devcode.compile_file(src, out)
            return src, mod + ".mpy", out.read_bytes()
        rel = Path(*mod.split("."))
        tree = devcode.compiled_tree()
        for cand in (rel.with_suffix(".mpy"), rel / "__init__.mpy"):
            if (tree / cand).exists():
                src = devcode.DEVICE_ROOT / cand.with_suffix(".py")
                return src, cand.as_posix(), (tree / cand).read_bytes()
        raise FileNotFoundError("no compiled device module %s in %s" % (mod, tree))

    @staticmethod
    def _deps(src: Path) -> list[str]:
        """hanfw modules `src` imports (also inside functions), parents first."""
        found: list[str] = []
        for m in _IMPORTS.finditer(src.read_text()):
            if m.group(3):
                names = [m.group(3)]
            else:
                base = m.group(1)
                names = [base] + [base + "." + n.strip() for n in m.group(2).split(",")]
            for name in names:
                parts = name.split(".")
                for i in range(1, len(parts) + 1):
                    found.append(".".join(parts[:i]))
        tree = devcode.compiled_tree()
        real = []
        for name in found:
            rel = Path(*name.split("."))
            if ((tree / rel.with_suffix(".mpy")).exists() or (tree / rel / "__init__.mpy").exists()) \
                    and name not in real:
                real.append(name)
        return real

    def _push(self, path: str, data: bytes) -> None:
        parts = path.strip("/").split("/")[:-1]
        dirs = ["/" + "/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        code = ["_hbt.files[%r] = bytearray(%d)" % (path, len(data))]
        code += ["_hbt.dirs.add(%r)" % d for d in dirs]
        self.run("\n".join(code))
        for off in range(0, len(data), CHUNK):
            b64 = base64.b64encode(data[off:off + CHUNK]).decode()
            self.run("_hbt.put(%r, %d, _hbt_b64('%s'))" % (path, off, b64))

    def put_buffer(self, name: str, data: bytes, chunk: int = 2048) -> None:
        """Make a global bytearray `name` on the board holding `data` (sent in chunks)."""
        self.run("%s = bytearray(%d)\ngc.collect()" % (name, len(data)))
        for off in range(0, len(data), chunk):
            b64 = base64.b64encode(data[off:off + chunk]).decode()
            self.run("%s[%d:%d] = _hbt_b64('%s')" % (name, off, off + len(data[off:off + chunk]), b64))
