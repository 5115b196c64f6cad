"""A virtual board: emulated flash + console + ROM loader + link endpoint, in one process.

`VirtualBoard` runs in-process (tests use it directly); `hanota vboard start` runs one
in a background process (`hanota.vboard.daemon`) and finds it again through the
board's folder, where `board.json` says how to reach it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import HanotaError
from . import layout, linkrelay
from .console import Console
from .rt import vflash

DEFAULT_HUB = ("127.0.0.1", 17719)


class BoardError(HanotaError):
    """A virtual board could not be started, found or stopped."""

    reason = "vboard"


def home() -> Path:
    """Where `hanota vboard` keeps its boards (HANOTA_HOME, default ~/.hanota)."""
    return Path(os.environ.get("HANOTA_HOME", Path.home() / ".hanota"))


def registry() -> Path:
    return home() / "vboards"


def default_eui64(name: str) -> str:
    """A stable EUI-64 for a board name (locally administered, hanota's prefix)."""
    h = hashlib.sha256(name.encode()).digest()
    raw = bytes([0x02, 0x68, 0x61]) + h[:5]  # 02:68:61 ("ha", locally administered)
    return ":".join("%02x" % b for b in raw)


@dataclass
class BoardInfo:
    """What board.json holds: how to reach a running board."""

    name: str
    board: str
    dir: str
    eui64: str
    role: str | None = None
    pid: int | None = None
    console: str | None = None
    link: str | None = None  # "udp:127.0.0.1:PORT" or a pty path
    link_kind: str = "udp"
    rom_loader: str | None = None
    hub: str = "%s:%d" % DEFAULT_HUB
    ready: bool = False
    started: float = field(default_factory=time.time)

    def public(self) -> dict:
        d = asdict(self)
        return {k: d[k] for k in ("name", "board", "console", "link", "rom_loader", "dir", "eui64",
                                  "role", "pid", "hub")}


class VirtualBoard:
    """One virtual board, run from this process (threads for console, link, ROM loader)."""

    def __init__(self, dir: str | os.PathLike, board: str = "vboard-esp32", name: str | None = None,
                 role: str | None = None, eui64: str | None = None, power_cut_at: int | None = None,
                 torn: bool = False, link_rate: float | None = None, link_latency: float = 0.0,
                 hub: tuple[str, int] = DEFAULT_HUB, heap: str | None = None, drop_every: int = 0,
                 clock_offset: float = 0.0, drop_rate: float = 0.0, drop_seed: int = 0):
        kinds = layout.board_names(virtual=True)  # the board folders with virtual = true
        if board not in kinds:
            raise BoardError("unknown board %r (choose from %s)" % (board, ", ".join(kinds)))
        self.dir = Path(dir).resolve()
        self.spec = layout.load_board(board)
        self.name = name or self.dir.name
        old = self._previous_info()
        self.info = BoardInfo(name=self.name, board=board, dir=str(self.dir),
                              eui64=eui64 or (old.eui64 if old else default_eui64(self.name)),
                              role=role or (old.role if old else None),
                              link_kind=self.spec.link, hub="%s:%d" % hub)
        self.power_cut_at = power_cut_at
        self.torn = torn
        self.link_rate = link_rate
        self.link_latency = link_latency
        self.hub = hub
        self.heap = heap
        self.drop_every = drop_every
        self.drop_rate, self.drop_seed = drop_rate, drop_seed  # UDP link only (linkrelay)
        # seconds the board's wall clock (time.time/gmtime/localtime, where the port has
        # them) is off from the host's: boards have no RTC set at boot (rt/vclock.py)
        self.clock_offset = float(clock_offset)
        self.console: Console | None = None
        self.link = None
        self.romloader = None
        self.events: list[tuple[float, str, str]] = []

    # -- paths

    @property
    def flash_path(self) -> Path:
        return self.dir / "flash.bin"

    @property
    def ctl_path(self) -> Path:
        return layout.ctl_path(self.flash_path)

    @property
    def info_path(self) -> Path:
        return self.dir / "board.json"

    def _previous_info(self) -> BoardInfo | None:
        with contextlib.suppress(OSError, ValueError, TypeError):
            return BoardInfo(**json.loads((self.dir / "board.json").read_text()))
        return None

    # -- life cycle

    def start(self) -> "VirtualBoard":
        """Power the board on (a new board is a fresh chip: all flash erased)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self.flash_path.exists():
            layout.create_flash(self.spec, self.flash_path)
        vflash.clear_cut(str(self.ctl_path))
        if self.power_cut_at is not None:
            vflash.reset_counters(str(self.ctl_path))
            vflash.schedule_cut(str(self.ctl_path), self.power_cut_at, self.torn)
        try:
            self._start_link()
            self.console = Console(self._spawn, link_path=self.dir / "console",
                                   reset_file=layout.reset_marker(self.flash_path),
                                   on_event=self._event)
            self.console.start()
            if self.spec.chip == "esp32":
                from .romloader import RomLoader
                flash = vflash.NorFlash(str(self.flash_path), str(self.ctl_path))
                mac = bytes.fromhex(self.info.eui64.replace(":", ""))[-6:]
                self.romloader = RomLoader(flash, chip="esp32", mac=mac, on_enter=self._download_mode,
                                           on_exit=self._leave_download_mode)
                self.romloader.start()
                self.info.rom_loader = self.romloader.url
        except BaseException:
            self.stop()
            raise
        self.info.console = self.console.pty_path
        self.info.pid = os.getpid()
        self.info.ready = True
        self.info.started = time.time()
        self.write_info()
        return self

    def _start_link(self) -> None:
        if self.spec.link == "udp":
            self.link = linkrelay.UdpRelay(self.hub, rate=self.link_rate, latency=self.link_latency,
                                           drop_every=self.drop_every, drop_rate=self.drop_rate,
                                           drop_seed=self.drop_seed).start()
            host, port = self.link.address
            self.info.link = "udp:%s:%d" % (host, port)
            self._device_link = self.info.link
        else:
            self.link = linkrelay.UartLink(rate=self.link_rate, latency=self.link_latency).start()
            self.info.link = self.link.host_path
            self._device_link = "uart:%s:%d" % self.link.device_address

    def _spawn(self, cause: str):
        argv, env = layout.device_command(self.spec, self.flash_path, reset_cause=cause,
                                          eui64=self.info.eui64, heap=self.heap)
        env["HANOTA_VB_LINK"] = self._device_link
        env["HANOTA_VB_NAME"] = self.name
        if self.clock_offset:
            env["HANOTA_VB_CLOCK_OFFSET"] = repr(self.clock_offset)
        return argv, env

    def _event(self, kind: str, detail: str) -> None:
        self.events.append((time.time(), kind, detail))
        with contextlib.suppress(OSError):
            with open(self.dir / "events.log", "a") as f:
                f.write("%.3f %s %s\n" % (time.time(), kind, detail))

    def _download_mode(self) -> None:
        self._event("download", "esptool connected")
        self.console.halt()

    def _leave_download_mode(self, changed: bool) -> None:
        self._event("download", "esptool left (%s)" % ("flash changed" if changed else "no change"))
        vflash.clear_cut(str(self.ctl_path))
        self.console.boot("power")

    def write_info(self) -> None:
        tmp = self.info_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self.info), indent=1))
        os.replace(tmp, self.info_path)

    def stop(self) -> None:
        """Power off: stop the process, the ROM loader and the link; idempotent."""
        if self.romloader is not None:
            self.romloader.stop()
            self.romloader = None
        if self.console is not None:
            self.console.stop()
            self.console = None
        if self.link is not None:
            self.link.stop()
            self.link = None
        if self.info_path.exists():
            self.info.ready = False
            self.info.pid = None
            self.write_info()

    def power_cycle(self) -> None:
        self.console.power_cycle()

    def counters(self) -> dict:
        return vflash.counters(str(self.ctl_path))

    def __enter__(self) -> "VirtualBoard":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# ---------------------------------------------------------------- background boards (CLI)

def board_dir(name: str, dir: str | os.PathLike | None = None) -> Path:
    """The folder of a named board: --dir if given, else the registry entry."""
    if dir is not None:
        return Path(dir).resolve()
    return registry() / name


def read_info(path: Path) -> BoardInfo:
    try:
        return BoardInfo(**json.loads((path / "board.json").read_text()))
    except FileNotFoundError:
        raise BoardError("no virtual board at %s" % path, reason="no-board") from None
    except (ValueError, TypeError) as e:
        raise BoardError("board.json in %s is unreadable: %s" % (path, e)) from None


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start_background(name: str, board: str = "vboard-esp32", dir: str | os.PathLike | None = None,
                     role: str | None = None, power_cut_at: int | None = None, torn: bool = False,
                     link_rate: float | None = None, hub: str | None = None,
                     timeout: float = 30.0, clock_offset: float | None = None) -> BoardInfo:
    """Start a board in its own background process and wait until it is reachable."""
    path = board_dir(name, dir)
    reg = registry() / name
    if reg.exists() or reg.is_symlink():
        with contextlib.suppress(BoardError):
            old = read_info(reg)
            if old.ready and _alive(old.pid):
                raise BoardError("board %r is already running (pid %d)" % (name, old.pid), reason="running")
    path.mkdir(parents=True, exist_ok=True)
    if path != reg:
        reg.parent.mkdir(parents=True, exist_ok=True)
        if reg.is_symlink() or reg.exists():
            with contextlib.suppress(OSError):
                reg.unlink()
        reg.symlink_to(path, target_is_directory=True)
    argv = [sys.executable, "-m", "hanota.vboard.daemon", "--dir", str(path), "--board", board,
            "--name", name]
    for opt, val in (("--role", role), ("--power-cut-at", power_cut_at), ("--link-rate", link_rate),
                     ("--hub", hub), ("--clock-offset", clock_offset)):
        if val is not None:
            argv += [opt, str(val)]
    if torn:
        argv.append("--torn")
    with contextlib.suppress(FileNotFoundError):
        (path / "board.json").unlink()
    log = open(path / "daemon.log", "ab")
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True, close_fds=True)
    finally:
        log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (path / "daemon.log").read_text(errors="replace")[-2000:]
            raise BoardError("board %r failed to start (exit %s):\n%s" % (name, proc.returncode, tail))
        with contextlib.suppress(BoardError):
            info = read_info(path)
            if info.ready and info.pid == proc.pid:
                return info
        time.sleep(0.05)
    proc.kill()
    raise BoardError("board %r did not come up within %.0f s" % (name, timeout))


def list_boards() -> list[BoardInfo]:
    out = []
    if registry().is_dir():
        for entry in sorted(registry().iterdir()):
            with contextlib.suppress(BoardError):
                info = read_info(entry)
                info.ready = info.ready and _alive(info.pid)
                out.append(info)
    return out


def stop_background(name: str, timeout: float = 15.0) -> bool:
    """Stop a background board; returns False if it was not running."""
    path = registry() / name
    info = read_info(path)
    if not (info.ready and _alive(info.pid)):
        return False
    os.kill(info.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(info.pid):
            return True
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(info.pid, os.WNOHANG)
        time.sleep(0.05)
    os.kill(info.pid, signal.SIGKILL)
    return True
