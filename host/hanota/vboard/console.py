"""The virtual board's console: a pseudo-terminal that behaves like a board's USB REPL.

A `Console` owns a host-facing pseudo-terminal (`pty_path`, plus an optional stable
symlink) that stays the same for the console's whole life, and runs the board -- a
MicroPython unix-port process -- on a second pseudo-terminal of its own (the unix port
needs a tty on stdin to run its REPL). One background thread copies bytes both ways,
so `mpremote`, `ampy` or a terminal program drive the virtual board like a real one.

Firmware behaviour the console adds around the process:

- **Soft reset.** The unix port exits where firmware would soft-reset (Ctrl-D on an
  empty friendly REPL line prints ``\\r\\n`` and exits 0; Ctrl-D on an empty raw-REPL
  buffer prints ``OK\\r\\n`` and exits 0; SystemExit). The console then writes
  ``MPY: soft reboot\\r\\n`` and starts the board again with cause ``soft``. The
  REPL mode survives, as in firmware: after a reset from raw mode ``main.py`` is
  skipped and the new process is put into raw mode, its friendly banner swallowed, so
  the host reads ``OK\\r\\nMPY: soft reboot\\r\\n`` + boot.py's output +
  ``raw REPL; CTRL-B to exit\\r\\n>``; after a reset from the friendly REPL ``main.py``
  runs.
- **Hard reset.** A process that dies any other way restarts in the friendly REPL with
  ``main.py``: killed by SIGKILL means ``power`` (a flash power cut), another signal
  ``hard`` (a crash). The process can name the cause itself: when the console has a
  `reset_file`, a word written there before dying (``hard`` from ``machine.reset()``,
  ``soft`` from ``machine.soft_reset()``, ``power``...) wins.
- **Ctrl-C.** Firmware treats ``\\x03`` as an interrupt only while code runs (a
  KeyboardInterrupt; the byte is consumed) and as a plain byte while its REPL reads.
  The unix port handles SIGINT only while it runs code (it resets SIGINT to the default,
  fatal action otherwise), so the console decides per byte: when the board process has
  a SIGINT handler installed the console sends it SIGINT instead of the byte, otherwise
  the byte goes through. So a ``main.py`` that loops forever is interrupted by mpremote
  or ampy as on a real board, and a Ctrl-C at a prompt or during start-up is harmless.
  A second Ctrl-C within 0.2 s of a SIGINT the board has not finished handling is
  dropped (the unix port exits on a second pending SIGINT; firmware does not).

The child's environment gets ``HANOTA_VB_MAIN`` (``1`` run main.py, ``0`` skip it),
``HANOTA_VB_RESET_CAUSE`` (``power``, ``hard``, ``soft``, or the word from the reset
file) and, with a `reset_file`, ``HANOTA_VB_RESET_FILE``.

Both ttys are raw (no echo, no output processing: a real board sends ``\\r\\n`` itself
in its banners; the unix port's program output ends lines with a bare ``\\n``). The
console keeps the host tty's slave side open itself, so clients may come and go
(each opens `pty_path` anew) and its raw settings persist. Output produced while no
client reads is kept in a bounded backlog (the oldest bytes are dropped), so the board
never blocks on its console.

This module is the console itself: the bridge thread and the REPL mode it follows.
`consoletty` is the host's tty (symlink, backlog), `consoleproc` starts, ends and
restarts the board's process (reset causes, Ctrl-C as SIGINT), and `consolerepl` holds
the REPL's banners and the raw-REPL re-entry after a soft reset.
"""
from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import threading
import time
from typing import Callable

from .consoleproc import (
    BoardProcess, Child, ConsoleError, ConsoleTimeout, SpawnFn, end_child, has_exited,
    send_interrupts,
)
from .consolerepl import ENTER_RAW, FRIENDLY_BANNER, RAW_BANNER, SOFT_REBOOT, RawReentry
from .consoletty import BACKLOG, CHUNK, HostTty, write_some

__all__ = [
    "BACKLOG", "CAUSES", "ENTER_RAW", "FRIENDLY_BANNER", "RAW_BANNER", "SOFT_REBOOT",
    "TO_BOARD_LIMIT", "Console", "ConsoleError", "ConsoleTimeout", "EventFn", "SpawnFn",
]

log = logging.getLogger(__name__)

EventFn = Callable[[str, str], None]

CAUSES = ("power", "hard", "soft")

TO_BOARD_LIMIT = 64 * 1024  # host input queued for a board that does not read
_TICK = 0.1  # seconds: how often the bridge looks at its child without I/O


class Console:
    """A virtual board's serial console, supervising the board process.

    `spawn(cause)` returns ``(argv, env)`` for one start of the board, cause being
    ``power``, ``hard``, ``soft`` (or a word the board wrote to `reset_file`); env None
    means this process's environment. The console adds ``HANOTA_VB_MAIN``,
    ``HANOTA_VB_RESET_CAUSE`` and (with `reset_file`) ``HANOTA_VB_RESET_FILE`` to it.

    `on_event(kind, detail)` is called from the console's thread for logging:
    ``booted`` (detail: the cause), ``ready`` (``friendly`` or ``raw``: the REPL
    answered), ``exited`` (the cause the console decided), ``halted``, ``failed`` (a
    start failed; detail: the error), ``stopped``. It must not block; it may call
    `halt`, `boot` or `power_cycle`.
    """

    def __init__(self, spawn: SpawnFn, link_path: str | os.PathLike | None = None, *,
                 reset_file: str | os.PathLike | None = None,
                 on_event: EventFn | None = None) -> None:
        self._host = HostTty(os.fspath(link_path) if link_path is not None else None)
        self._board = BoardProcess(
            spawn, os.fspath(reset_file) if reset_file is not None else None)
        self.on_event = on_event
        self._lock = threading.Lock()
        self._wake_r: int | None = None
        self._wake_w: int | None = None
        self._thread: threading.Thread | None = None
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._stopping = False
        self._closed = False
        self._halted = False
        self._mode = "friendly"
        self._tail = b""
        self._ready = threading.Event()
        self._next_check = 0.0

    # -- public API -------------------------------------------------------------

    @property
    def pty_path(self) -> str:
        """The host side of the console, e.g. ``/dev/pts/7`` (fixed while started)."""
        if self._host.path is None:
            raise ConsoleError("the console is not started")
        return self._host.path

    @property
    def link_path(self) -> str | None:
        """The stable symlink to `pty_path`, when one was asked for."""
        return self._host.link_path

    @property
    def child_pid(self) -> int | None:
        """Process id of the running board, None while halted or between starts."""
        child = self._board.child
        return child.proc.pid if child else None

    @property
    def last_returncode(self) -> int | None:
        """Exit status of the last board process that ended by itself."""
        return self._board.last_returncode

    @property
    def mode(self) -> str:
        """``friendly`` or ``raw``: the REPL mode a soft reset would keep."""
        return self._mode

    @property
    def dropped(self) -> int:
        """Bytes of board output dropped because no host read them."""
        return self._host.dropped

    def start(self) -> None:
        """Open the host tty (and symlink), start the bridge, power the board on."""
        with self._lock:
            if self._closed:
                raise ConsoleError("the console was stopped; make a new one")
            if self._thread is not None:
                raise ConsoleError("the console is already started")
            try:
                self._host.open()
                self._wake_r, self._wake_w = os.pipe()
                os.set_blocking(self._wake_r, False)
                os.set_blocking(self._wake_w, False)
                self._thread = threading.Thread(target=self._run, name="vboard-console",
                                                daemon=True)
                self._thread.start()
            except BaseException:
                self._close_all()
                self._closed = True
                raise
        try:
            self._request("boot", "power")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Kill the board, end the bridge, close every descriptor, remove the symlink.

        Idempotent; enough on its own to leave no process, thread or tty behind.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stopping = True
            thread = self._thread
        if thread is threading.current_thread():
            return  # called by an event handler: the bridge cleans up as it ends
        if thread is not None:
            self._wake()
            thread.join(timeout=10)
            if thread.is_alive():  # pragma: no cover - the bridge never blocks
                log.error("console thread did not stop; closing under it")
        with self._lock:
            self._kill_child()
            self._close_all()
            self._fail_pending_commands()
        self._emit("stopped", "")

    def halt(self) -> None:
        """Stop the board (no restart); the host tty stays open but silent."""
        self._request("halt", "")

    def boot(self, cause: str = "hard") -> None:
        """Start the board (after a halt, or resetting it now) in the friendly REPL.

        `cause` (``power``, ``hard`` or ``soft``) is what the board is told; main.py runs.
        """
        if cause not in CAUSES:
            raise ConsoleError("unknown reset cause %r (expected one of %s)"
                               % (cause, ", ".join(CAUSES)))
        self._request("boot", cause)

    def power_cycle(self) -> None:
        """Cut the power and start again: the board boots with cause ``power``."""
        self._request("boot", "power")

    def wait_ready(self, timeout: float) -> str:
        """Wait until the current run's REPL answered; return its mode.

        Raises ConsoleTimeout when it does not within `timeout` seconds (for example a
        main.py that never ends, or a halted board).
        """
        if not self._ready.wait(timeout):
            raise ConsoleTimeout("the board's REPL did not answer within %.1f s" % timeout)
        return self._mode

    def __enter__(self) -> "Console":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return "<Console %s pid=%s mode=%s>" % (self._host.path, self.child_pid, self._mode)

    # -- set-up and tear-down ---------------------------------------------------------

    def _close_all(self) -> None:
        self._host.close()
        for name in ("_wake_r", "_wake_w"):
            fd = getattr(self, name)
            if fd is not None:
                setattr(self, name, None)
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._ready.clear()

    # -- requests to the bridge thread ------------------------------------------------

    def _request(self, what: str, arg: str, timeout: float = 30.0) -> None:
        if threading.current_thread() is self._thread:
            self._do(what, arg)
            return
        if self._stopping or self._thread is None or not self._thread.is_alive():
            raise ConsoleError("the console is not running")
        done = threading.Event()
        box: list[BaseException] = []
        self._commands.put((what, arg, done, box))
        self._wake()
        if not done.wait(timeout):
            raise ConsoleTimeout("the console did not %s within %.0f s" % (what, timeout))
        if box:
            raise box[0]

    def _wake(self) -> None:
        with contextlib.suppress(OSError, TypeError):
            os.write(self._wake_w, b"!")

    def _serve_commands(self) -> None:
        while True:
            try:
                what, arg, done, box = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                self._do(what, arg)
            except Exception as e:  # reported to the caller
                box.append(e)
            finally:
                done.set()

    def _fail_pending_commands(self) -> None:
        while True:
            try:
                _, _, done, box = self._commands.get_nowait()
            except queue.Empty:
                return
            box.append(ConsoleError("the console was stopped"))
            done.set()

    def _do(self, what: str, arg: str) -> None:
        if what == "halt":
            self._kill_child()
            self._board.cancel_respawn()
            self._halted = True
            self._emit("halted", "")
        elif what == "boot":
            self._kill_child()
            self._board.cancel_respawn()
            self._halted = False
            self._board.failures = 0
            self._spawn(arg, main=True, raw=False)

    # -- the board process ------------------------------------------------------------

    def _spawn(self, cause: str, *, main: bool, raw: bool) -> None:
        self._ready.clear()
        self._tail = b""
        self._mode = "raw" if raw else "friendly"
        self._board.start(cause, main=main, reentry=RawReentry() if raw else None)
        self._emit("booted", cause)

    def _kill_child(self) -> int | None:
        """End the current board process, if any. Returns its exit status."""
        if self._board.child is not None:
            self._ready.clear()
        return self._board.kill()

    def _end(self, child: Child) -> int | None:
        """SIGKILL a board's process group, reap it, close its tty. Returns the status."""
        self._ready.clear()
        return end_child(child)

    def _child_gone(self, child: Child) -> None:
        """The board ended by itself: decide the reset cause and start it again."""
        self._drain_child(child)
        if self._board.child is not child:  # an event handler already reset or halted it
            self._end(child)
            return
        self._ready.clear()
        cause = self._board.reap(child, raw_mode=self._mode == "raw")
        if cause == "soft":
            self._host.queue(SOFT_REBOOT)
        self._emit("exited", cause)

    def _respawn_due(self) -> None:
        cause, main, raw = self._board.take_respawn()
        try:
            self._spawn(cause, main=main, raw=raw)
        except Exception as e:
            log.exception("board start failed")
            self._emit("failed", str(e))

    # -- byte paths ----------------------------------------------------------------------

    def _from_board(self, child: Child, data: bytes) -> None:
        if child.reentry is not None:
            data, reply = child.reentry.feed(data)
            if reply:
                child.to_board[:0] = reply
        if not data:
            return
        self._host.queue(data)
        scan = self._tail + data
        raw_at, friendly_at = scan.rfind(RAW_BANNER), scan.rfind(FRIENDLY_BANNER)
        if raw_at >= 0 or friendly_at >= 0:
            self._mode = "raw" if raw_at > friendly_at else "friendly"
            if not child.ready:
                child.ready = True
                self._board.failures = 0
                self._ready.set()
                self._emit("ready", self._mode)
        self._tail = scan[-(len(FRIENDLY_BANNER) - 1):]

    def _drain_child(self, child: Child) -> None:
        while True:
            try:
                data = os.read(child.fd, CHUNK)
            except (BlockingIOError, OSError):
                return
            if not data:
                return
            self._from_board(child, data)

    def _read_host(self) -> None:
        data = self._host.read()
        if not data:
            return
        child = self._board.child
        if child is None or self._halted:
            return  # a board that is off or resetting hears nothing
        if b"\x03" in data:
            data = send_interrupts(child, data)
        child.to_board += data

    # -- the bridge thread -----------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping:
                self._step()
        except Exception:
            if not self._stopping:
                log.exception("console bridge failed; the board is stopped")
                self._halted = True
        finally:
            with contextlib.suppress(Exception):
                self._kill_child()
            self._fail_pending_commands()
            if self._stopping:  # stop() was called from an event handler, or is joining
                with self._lock:
                    self._close_all()

    def _step(self) -> None:
        self._serve_commands()
        if self._stopping:
            return
        board = self._board
        now = time.monotonic()
        if board.child is None and board.respawn is not None and now >= board.respawn_at:
            self._respawn_due()
        child = board.child
        host = self._host
        readers = [self._wake_r]
        if child is None or len(child.to_board) < TO_BOARD_LIMIT:
            readers.append(host.fd)  # else leave it unread: the host waits
        writers = [host.fd] if host.backlog else []
        if child is not None:
            readers.append(child.fd)
            if child.to_board:
                writers.append(child.fd)
        timeout = _TICK
        if child is None and board.respawn_at is not None:
            timeout = max(0.0, min(timeout, board.respawn_at - now))
        r, _, _ = select.select(readers, writers, [], timeout)
        if self._wake_r in r:
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 512)
        if host.fd in r:
            self._read_host()
        if child is not None and child is board.child:
            self._serve_child(child, r)
        host.flush()

    def _serve_child(self, child: Child, readable: list[int]) -> None:
        gone = False
        if child.fd in readable:
            try:
                data = os.read(child.fd, CHUNK)
            except BlockingIOError:
                data = None
            except OSError:  # EIO: every holder of the board's tty has closed it
                data = b""
            if data:
                self._from_board(child, data)
                if child is not self._board.child:  # an event handler reset or halted it
                    return
            elif data is not None:
                gone = True
        if child.to_board and not gone and not write_some(child.fd, child.to_board):
            child.to_board.clear()
        if not gone and time.monotonic() >= self._next_check:
            self._next_check = time.monotonic() + _TICK
            gone = has_exited(child)
        if gone:
            self._child_gone(child)

    def _emit(self, kind: str, detail: str) -> None:
        log.debug("console %s: %s %s", self._host.path, kind, detail)
        if self.on_event is None:
            return
        try:
            self.on_event(kind, detail)
        except Exception:
            log.exception("console event handler failed on %s", kind)
