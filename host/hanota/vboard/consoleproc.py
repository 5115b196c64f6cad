"""The board's process under the virtual console: start, end, reset cause, Ctrl-C.

Each start of the board is a MicroPython unix-port process on a pseudo-terminal of its
own (a `Child`). `BoardProcess` starts it with the environment the console promises,
SIGKILLs and reaps it, decides why it ended (the reset cause) and when to start it
again; `send_interrupts` turns each Ctrl-C the board would take as an interrupt into
SIGINT. `console` describes the behaviour as a whole.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
import tty
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from hanota.errors import HanotaError

if TYPE_CHECKING:
    from .consolerepl import RawReentry

log = logging.getLogger("hanota.vboard.console")

SpawnFn = Callable[[str], tuple[list[str], dict[str, str] | None]]

_REAP_TIMEOUT = 5.0
_SIGINT_AGAIN = 0.2  # seconds before another Ctrl-C may signal a board still running code
_FAST_FAILURE = 1.0  # an exit this soon after a start, before the REPL, counts as a failure


class ConsoleError(HanotaError):
    """The console cannot do what was asked (not started, stopped, a boot failed...)."""

    reason = "console"


class ConsoleTimeout(ConsoleError, TimeoutError):
    """The board's REPL did not answer in time."""

    reason = "timeout"


@dataclass
class Child:
    """One run of the board: its process and the master side of its tty."""

    proc: subprocess.Popen
    fd: int
    started: float
    reentry: RawReentry | None = None
    ready: bool = False
    to_board: bytearray = field(default_factory=bytearray)
    sigint_at: float = float("-inf")


def _child_setup() -> None:  # runs in the forked child, before exec
    # SIGINT starts ignored, so the CPython launcher of the `micropython` command installs
    # no handler of its own; MicroPython installs its handler only while it runs code.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The board loses power when its supervisor dies, however it dies (Linux PDEATHSIG).
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def _libc():
    try:
        import ctypes
        return ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
    except OSError:
        return None


_LIBC = _libc()


def _catches_sigint(pid: int) -> bool:
    """Whether the process has a SIGINT handler now (MicroPython: it is running code)."""
    try:
        with open("/proc/%d/status" % pid, "rb") as f:
            for line in f:
                if line.startswith(b"SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (signal.SIGINT - 1) & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def send_interrupts(child: Child, data: bytes) -> bytes:
    """Turn each Ctrl-C the board would take as an interrupt into SIGINT; keep the rest."""
    kept = bytearray()
    for i, piece in enumerate(data.split(b"\x03")):
        if i:
            if not _catches_sigint(child.proc.pid):
                kept += b"\x03"  # a REPL (or nothing yet) reads it: a plain byte
            elif time.monotonic() - child.sigint_at >= _SIGINT_AGAIN:
                child.sigint_at = time.monotonic()
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.proc.pid, signal.SIGINT)
        kept += piece
    return bytes(kept)


def end_child(child: Child) -> int | None:
    """SIGKILL a board's process group, reap it, close its tty. Returns the status."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.proc.pid, signal.SIGKILL)  # not reaped yet: the id is ours
    try:
        rc = child.proc.wait(timeout=_REAP_TIMEOUT)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
        log.error("board process %d did not die", child.proc.pid)
        rc = None
    with contextlib.suppress(OSError):
        os.close(child.fd)
    return rc


def has_exited(child: Child) -> bool:
    """Whether the board process has ended (without reaping it)."""
    try:
        info = os.waitid(os.P_PID, child.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


class BoardProcess:
    """Starts the board's process, ends it, and plans each restart.

    `child` is the running process (None while off or between starts); `respawn` the
    next start planned after the board ended by itself (cause, run main.py, raw), due
    at `respawn_at`; `failures` counts starts that died before their REPL answered.
    """

    def __init__(self, spawn: SpawnFn, reset_file: str | None) -> None:
        self._spawn_fn = spawn
        self.reset_file = reset_file
        self.child: Child | None = None
        self.respawn: tuple[str, bool, bool] | None = None  # cause, run main.py, raw
        self.respawn_at: float | None = None
        self.failures = 0
        self.last_returncode: int | None = None

    def start(self, cause: str, *, main: bool, reentry: RawReentry | None) -> Child:
        """Start the board with `cause`; `reentry` filters a raw-mode start's output."""
        argv, env = self._spawn_fn(cause)
        env = dict(os.environ if env is None else env)
        env["HANOTA_VB_MAIN"] = "1" if main else "0"
        env["HANOTA_VB_RESET_CAUSE"] = cause
        if self.reset_file:
            env["HANOTA_VB_RESET_FILE"] = self.reset_file
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.reset_file)
        master, slave = os.openpty()
        try:
            tty.setraw(slave)
            proc = subprocess.Popen(argv, env=env, stdin=slave, stdout=slave, stderr=slave,
                                    close_fds=True, start_new_session=True,
                                    preexec_fn=_child_setup)
        except BaseException as e:
            os.close(master)
            if isinstance(e, (OSError, subprocess.SubprocessError)):
                raise ConsoleError("cannot start the board (%s): %s" % (argv[0], e)) from e
            raise
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        self.child = Child(proc, master, time.monotonic(), reentry)
        return self.child

    def kill(self) -> int | None:
        """End the current board process, if any. Returns its exit status."""
        child, self.child = self.child, None
        return end_child(child) if child else None

    def cancel_respawn(self) -> None:
        self.respawn = self.respawn_at = None

    def take_respawn(self) -> tuple[str, bool, bool]:
        """The planned start (cause, run main.py, raw), now due; it is no longer planned."""
        respawn = self.respawn
        self.respawn = self.respawn_at = None
        return respawn

    def reap(self, child: Child, raw_mode: bool) -> str:
        """The board ended by itself: reap it, decide the reset cause, plan the restart.

        Returns the cause. A soft reset keeps the REPL mode (raw when `raw_mode`).
        """
        self.child = None
        rc = end_child(child)  # also ends anything the board left running
        self.last_returncode = rc
        cause = self._reset_cause_of(rc)
        if cause == "soft":
            raw = raw_mode  # the REPL mode survives a soft reset
            main = not raw
        else:
            raw, main = False, True
        # A start that keeps failing before its REPL (a bad command, say) is retried
        # with back-off; power cuts (SIGKILL) restart at once, as they do on a chip.
        alive = time.monotonic() - child.started
        if rc is not None and rc != -signal.SIGKILL and not child.ready and alive < _FAST_FAILURE:
            self.failures += 1
        else:
            self.failures = 0
        delay = 0.0 if self.failures < 2 else min(2.0, 0.1 * 2 ** (self.failures - 2))
        self.respawn = (cause, main, raw)
        self.respawn_at = time.monotonic() + delay
        return cause

    def _reset_cause_of(self, rc: int | None) -> str:
        if self.reset_file:
            try:
                with open(self.reset_file) as f:
                    word = f.read().strip()
                os.unlink(self.reset_file)
            except OSError:
                word = ""
            if word.isidentifier():
                return word
        if rc is not None and rc >= 0:
            return "soft"  # the unix port's exit is where firmware soft-resets
        if rc == -signal.SIGKILL:
            return "power"
        return "hard"
