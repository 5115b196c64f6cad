"""The virtual board's console, driven only by real clients: mpremote (CLI and library) and ampy.

The board behind the console is the real MicroPython unix port running the stand-in
bootloader tests/device/mpy/fakeboot.py over a temporary folder (its root filesystem);
boot.py logs each start's reset cause to /boot.log and main.py logs a line to /main.log,
so the tests count which scripts ran. A stand-in ``machine.reset()`` names its cause in
the console's reset file and SIGKILLs the process, like the chip's.
"""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hanota.vboard.console import Console, ConsoleError, ConsoleTimeout
from support.mpy import MPY_TESTS, micropython_cmd

pytestmark = pytest.mark.timeout(120)

BIN = Path(sys.executable).parent
MPREMOTE = str(BIN / "mpremote")
AMPY = str(BIN / "ampy")
FAKEBOOT = MPY_TESTS / "fakeboot.py"
RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"

BOOT_PY = """\
import os
f = open("/boot.log", "a")
f.write(os.getenv("HANOTA_VB_RESET_CAUSE") + "\\n")
f.close()
"""
MAIN_PY = """\
f = open("/main.log", "a")
f.write("main\\n")
f.close()
"""
MAIN_LOOPS_PY = MAIN_PY + """\
import time
while True:
    time.sleep_ms(10)
"""
MAIN_CHATTY_PY = MAIN_PY + """\
line = "x" * 99
for i in range(4000):
    print(line)
f = open("/chatty.done", "w")
f.close()
"""
MACHINE_PY = """\
import os


def _die(cause):
    os.system('printf %s > "$HANOTA_VB_RESET_FILE"; kill -9 $PPID' % cause)


def reset():
    _die("hard")


def soft_reset():
    _die("soft")
"""


# -- what this process holds ------------------------------------------------------------


_OTHERS: set[int] = set()


@pytest.fixture(autouse=True)
def _others_before():
    """Children this process had before the test (a session's PostgreSQL or nats-server, say,
    when an earlier test on this worker started one) are not the test's to answer for."""
    _OTHERS.clear()
    _OTHERS.update(child_pids())
    yield
    _OTHERS.clear()


def child_pids() -> list[int]:
    """Processes (running or zombie) whose parent is this process, other than those it had
    before the test began."""
    me, found = os.getpid(), []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                stat = f.read()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == me and int(name) not in _OTHERS:
            found.append(int(name))
    return found


def open_fds() -> dict[int, str]:
    """This process's open descriptors and what they point to."""
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[int(name)] = os.readlink("/proc/self/fd/" + name)
        except OSError:
            pass  # the descriptor listdir itself used
    return out


def tty_fds() -> dict[int, str]:
    return {fd: t for fd, t in open_fds().items() if t.startswith(("/dev/pts/", "/dev/ptmx"))}


def wait_for(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.02)


# -- the board ------------------------------------------------------------------------------


class Board:
    """A console over fakeboot.py and a temporary root folder, with its event log."""

    def __init__(self, tmp: Path, main_py: str = MAIN_PY):
        self.root = tmp / "root"
        self.lib = tmp / "lib"
        self.root.mkdir(parents=True)
        self.lib.mkdir()
        (self.root / "boot.py").write_text(BOOT_PY)
        (self.root / "main.py").write_text(main_py)
        (self.lib / "machine.py").write_text(MACHINE_PY)
        self.events: list[tuple[str, str]] = []
        self.link = tmp / "console"
        self.console = Console(self.spawn, self.link, reset_file=tmp / "reset-cause",
                               on_event=lambda kind, detail: self.events.append((kind, detail)))

    def spawn(self, cause: str):
        env = dict(os.environ, MICROPYPATH=str(self.lib), HANOTA_FAKEBOOT_DIR=str(self.root))
        return [micropython_cmd(), "-X", "heapsize=256K", "-i", str(FAKEBOOT)], env

    @property
    def port(self) -> str:
        return self.console.pty_path

    def boots(self) -> list[str]:
        path = self.root / "boot.log"
        return path.read_text().split() if path.exists() else []

    def mains(self) -> int:
        path = self.root / "main.log"
        return len(path.read_text().split()) if path.exists() else 0

    def mpremote(self, *args: str, port: str | None = None) -> str:
        r = subprocess.run([MPREMOTE, "connect", port or self.port, *args],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, "mpremote %s failed:\n%s%s" % (args, r.stdout, r.stderr)
        return r.stdout

    def ampy(self, *args: str) -> str:
        r = subprocess.run([AMPY, "-p", self.port, *args],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, "ampy %s failed:\n%s%s" % (args, r.stdout, r.stderr)
        return r.stdout

    def transport(self):
        from mpremote.transport_serial import SerialTransport

        return SerialTransport(self.port, timeout=5)


@pytest.fixture
def make_board(tmp_path):
    """Start boards; afterwards stop them and insist nothing of theirs is left."""
    fds_before, started = open_fds(), []

    def make(main_py: str = MAIN_PY) -> Board:
        board = Board(tmp_path / ("b%d" % len(started)), main_py)
        started.append(board)
        board.console.start()
        return board

    yield make
    for board in started:
        board.console.stop()
    assert child_pids() == []
    assert tty_fds() == {}
    assert set(open_fds()) == set(fds_before)


@pytest.fixture
def board(make_board) -> Board:
    b = make_board()
    b.console.wait_ready(10)
    return b


def test_power_on_runs_boot_then_main_then_the_friendly_repl(board):
    assert board.console.wait_ready(10) == "friendly"
    assert board.boots() == ["power"]
    assert board.mains() == 1
    assert board.events[:2] == [("booted", "power"), ("ready", "friendly")]
    assert os.readlink(board.link) == board.port


def test_mpremote_cli_exec_eval_and_files_both_ways(board, tmp_path):
    data = bytes(range(256)) * 13 + b"\r\n\x00\x03\x04 end"
    local = tmp_path / "data.bin"
    local.write_bytes(data)
    back = tmp_path / "back.bin"

    assert board.mpremote("exec", "print('hello', 6 * 7)") == "hello 42\n"
    assert board.mpremote("eval", "[1 + 2, 'x']") == "[3, 'x']\n"
    out = board.mpremote("mkdir", ":d", "+", "cp", str(local), ":d/data.bin",
                         "+", "ls", ":d", "+", "sha256sum", ":d/data.bin",
                         "+", "cp", ":d/data.bin", str(back))
    assert " data.bin\n" in out
    assert hashlib.sha256(data).hexdigest() + "\n" in out
    assert back.read_bytes() == data
    assert (board.root / "d" / "data.bin").read_bytes() == data
    # through the stable symlink too (mpremote then polls instead of blocking reads)
    board.mpremote("rm", ":d/data.bin", port=str(board.link))
    assert not (board.root / "d" / "data.bin").exists()
    assert board.mpremote("ls", ":d") == "ls :d\n"
    # every run soft-reset the board from raw mode: boot.py each time, main.py never
    assert board.boots() == ["power"] + ["soft"] * 5
    assert board.mains() == 1


def test_mpremote_cli_soft_reset_skips_main_and_reset_runs_it(board):
    board.mpremote("soft-reset")
    assert board.boots() == ["power", "soft"]
    assert board.mains() == 1
    board.mpremote("reset")  # machine.reset() 100 ms later, not followed
    wait_for(lambda: board.boots()[-1:] == ["hard"], what="the hard reset's boot")
    assert board.console.wait_ready(10) == "friendly"
    assert board.mains() == 2
    assert ("exited", "hard") in board.events
    assert board.mpremote("exec", "import machine; print(machine.__name__)") == "machine\n"


def test_mpremote_library_raw_paste_files_and_soft_reset(board):
    t = board.transport()
    try:
        t.enter_raw_repl(soft_reset=True)
        assert t.exec("print('hi')") == b"hi\n"
        assert t.use_raw_paste  # the board answered raw-paste; no fallback to plain raw
        assert t.eval("[x * x for x in range(4)]") == [0, 1, 4, 9]
        data = bytes(range(256)) * 5
        t.fs_mkdir("/lib2")
        t.fs_writefile("/lib2/blob.bin", data)
        assert t.fs_readfile("/lib2/blob.bin") == data
        assert "blob.bin" in [entry.name for entry in t.fs_listdir("/lib2")]
        assert t.fs_stat("/lib2/blob.bin").st_size == len(data)
        assert t.fs_hashfile("/lib2/blob.bin", "sha256") == hashlib.sha256(data).digest()
        with pytest.raises(OSError):
            t.fs_stat("/missing")

        # Ctrl-D at the raw REPL: byte for byte what firmware sends (the leading '>' is
        # the prompt after the last command, which mpremote reads lazily)
        t.serial.write(b"\x04")
        assert t.read_until(1, RAW_BANNER, timeout=5) == (
            b">OK\r\nMPY: soft reboot\r\n" + RAW_BANNER)
        assert t.exec("print('after soft reset')") == b"after soft reset\n"
        t.enter_raw_repl(soft_reset=True)
        assert t.exec("import os; print(os.listdir('/lib2'))") == b"['blob.bin']\n"
        t.exit_raw_repl()
    finally:
        t.close()
    assert board.boots() == ["power", "soft", "soft", "soft"]
    assert board.mains() == 1
    # Ctrl-B took the REPL back to friendly mode; the console saw the banner
    wait_for(lambda: board.console.mode == "friendly", what="the friendly banner")


def test_a_reset_named_by_the_board_keeps_firmware_semantics(board):
    t = board.transport()
    try:
        t.enter_raw_repl(soft_reset=False)
        t.exec_raw_no_follow("import machine; machine.soft_reset()")  # SIGKILLs itself
        assert t.read_until(1, RAW_BANNER, timeout=5).endswith(
            b"MPY: soft reboot\r\n" + RAW_BANNER)
        assert t.exec("print('raw again')") == b"raw again\n"
    finally:
        t.close()
    assert board.boots() == ["power", "soft"]
    assert board.mains() == 1
    assert ("exited", "soft") in board.events


def test_ctrl_c_while_the_board_starts_does_not_kill_it(board):
    t = board.transport()
    try:
        board.console.power_cycle()
        for _ in range(5):  # what mpremote/ampy send, a few times over while the board boots
            t.serial.write(b"\x03")
            time.sleep(0.02)
        board.console.wait_ready(10)
        t.enter_raw_repl(soft_reset=True)
        assert t.exec("print('ok')") == b"ok\n"
    finally:
        t.close()
    assert [e for e in board.events if e[0] == "exited"] == [("exited", "soft")]


def test_soft_reset_from_friendly_repl_runs_main(board):
    t = board.transport()
    try:
        t.enter_raw_repl(soft_reset=False)
        t.exit_raw_repl()
        t.read_until(1, b">>> ", timeout=5)
        t.serial.write(b"\x04")  # Ctrl-D at the friendly prompt
        out = t.read_until(1, b"for more information.\r\n>>> ", timeout=5)
        assert b"MPY: soft reboot\r\n" in out
        assert out.endswith(b"for more information.\r\n>>> ")
    finally:
        t.close()
    assert board.boots() == ["power", "soft"]
    assert board.mains() == 2
    assert board.console.mode == "friendly"


def test_main_that_loops_forever_is_interrupted_by_mpremote(make_board):
    board = make_board(MAIN_LOOPS_PY)
    wait_for(lambda: board.mains() == 1, what="main.py to start")
    with pytest.raises(ConsoleTimeout):
        board.console.wait_ready(0.3)  # no REPL while main.py runs
    assert board.mpremote("exec", "print(6 * 7)") == "42\n"
    assert board.boots() == ["power", "soft"]
    assert board.mains() == 1  # the raw-mode soft reset did not start the loop again


def test_ampy_cli_and_library(board, tmp_path):
    from ampy.files import Files
    from ampy.pyboard import Pyboard

    data = bytes(range(256)) * 3
    (tmp_path / "up.bin").write_bytes(data)
    (tmp_path / "hello.py").write_text("print('hello from', 'ampy')\n")
    board.ampy("put", str(tmp_path / "up.bin"), "/up.bin")
    assert "/up.bin" in board.ampy("ls").split()
    board.ampy("get", "/up.bin", str(tmp_path / "down.bin"))
    assert (tmp_path / "down.bin").read_bytes() == data
    assert board.ampy("run", str(tmp_path / "hello.py")) == "hello from ampy\n"

    pyb = Pyboard(board.port)
    try:
        files = Files(pyb)
        files.mkdir("/sub")
        files.put("/sub/note.txt", b"note")
        assert files.ls("/sub", long_format=False) == ["/sub/note.txt"]
        files.rm("/up.bin")
        assert "/up.bin" not in files.ls("/", long_format=False)
    finally:
        pyb.close()
    assert (board.root / "sub" / "note.txt").read_bytes() == b"note"
    assert board.mains() == 1  # ampy soft-resets from raw mode every time
    assert board.boots()[0] == "power" and set(board.boots()[1:]) == {"soft"}


def test_halt_boot_power_cycle_and_power_cut(board):
    t = board.transport()
    try:
        t.enter_raw_repl(soft_reset=False)
        assert t.read_until(1, b">", timeout=5) == b">"  # the prompt mpremote left unread
        board.console.halt()
        assert board.console.child_pid is None
        assert child_pids() == []
        assert os.path.exists(board.port)  # the host side stays open, silent
        t.serial.write(b"\r\x03\r\x01")
        t.serial.timeout = 0.5
        assert t.serial.read(64) == b""  # nothing answers while halted
        t.serial.timeout = 5
        assert board.boots() == ["power"]

        board.console.boot()  # a hard reset: friendly REPL, main.py runs
        assert board.console.wait_ready(10) == "friendly"
        assert board.boots() == ["power", "hard"]
        assert board.mains() == 2
        t.enter_raw_repl(soft_reset=False)  # the same client is served again
        assert t.exec("print('back')") == b"back\n"

        board.console.power_cycle()
        board.console.wait_ready(10)
        assert board.boots()[-1] == "power"
        assert board.mains() == 3

        os.kill(board.console.child_pid, signal.SIGKILL)  # a power cut
        wait_for(lambda: board.mains() == 4, what="the board to come back")
        assert board.boots()[-1] == "power"
        assert ("exited", "power") in board.events
        t.enter_raw_repl(soft_reset=False)
        assert t.exec("print('alive')") == b"alive\n"
    finally:
        t.close()


def test_board_output_while_no_host_reads_never_blocks_the_board(make_board):
    board = make_board(MAIN_CHATTY_PY)  # prints ~400 KB at boot with nobody connected
    wait_for(lambda: (board.root / "chatty.done").exists(), what="main.py to finish")
    board.console.wait_ready(10)
    assert board.console.dropped > 0
    assert board.mpremote("exec", "print('still here')") == "still here\n"


def test_stop_alone_leaves_nothing_behind(tmp_path):
    threads_before = set(threading.enumerate())
    fds_before = open_fds()
    board = Board(tmp_path)
    board.console.start()
    board.console.wait_ready(10)
    port = board.port
    t = board.transport()
    t.enter_raw_repl(soft_reset=True)
    t.close()
    board.console.halt()
    board.console.boot("soft")
    os.kill(board.console.child_pid, signal.SIGKILL)
    board.console.stop()
    board.console.stop()  # idempotent

    assert child_pids() == []
    assert port not in tty_fds().values()
    assert set(open_fds()) == set(fds_before)
    assert not board.link.exists() and not board.link.is_symlink()
    assert set(threading.enumerate()) <= threads_before
    with pytest.raises(ConsoleError):
        board.console.halt()
    with pytest.raises(ConsoleError):
        board.console.start()


def test_a_board_that_cannot_start_is_reported_and_leaves_nothing(tmp_path):
    fds_before = open_fds()
    console = Console(lambda cause: ([str(tmp_path / "no-such-interpreter")], None))
    with pytest.raises(ConsoleError, match="cannot start the board"):
        console.start()
    console.stop()
    assert child_pids() == []
    assert set(open_fds()) == set(fds_before)
    with pytest.raises(ConsoleError):
        console.boot("bogus")
