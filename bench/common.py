"""What the benchmarks share: statistics, the machine, a workspace (keys, firmware, images),
a hub in a thread, and virtual boards brought up the way a user does (flash, deploy, join)."""

from __future__ import annotations

import os
import platform
import random
import shutil
import select
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from hanfw import otafile
from hanota import deploy, flasher, fwbuild, images
from hanota.hub.runner import ServerRunner
from hanota.keys import generate_keys, load_private_key
from hanota.server import UPGRADE_WAIT, Policy
from hanota.vboard.board import VirtualBoard

KiB = 1024
MiB = 1024 * 1024
V1 = 0x00010000
BIN = Path(sys.executable).parent
LOG_DIR: Path | None = None  # where a failed section's board logs are kept (python -m bench sets it)


class SectionFailed(Exception):
    """A section that ran but failed (a board hung): what it measured is kept in `results`."""

    def __init__(self, message: str, results):
        super().__init__(message)
        self.results = results


class ConsoleTap:
    """Everything a board prints on its console, appended to a file by a thread (the
    bench's boards are otherwise unread: a hung board's last words would be lost)."""

    def __init__(self, pty_path: str, path: Path):
        self.path = path
        self.fd = os.open(pty_path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        self.out = open(path, "ab")
        self._stop = False
        self.t = threading.Thread(target=self._run, name="console-tap", daemon=True)
        self.t.start()

    def _run(self) -> None:
        while not self._stop:
            r, _, _ = select.select([self.fd], [], [], 0.1)
            if r:
                try:
                    self.out.write(os.read(self.fd, 65536))
                    self.out.flush()
                except (BlockingIOError, OSError):
                    time.sleep(0.05)

    def close(self) -> None:
        self._stop = True
        self.t.join(timeout=2)
        os.close(self.fd)
        self.out.close()


def short(e: BaseException, n: int = 240) -> str:
    """An error as one short line: its type and the start of its message."""
    text = "%s: %s" % (type(e).__name__, e)
    return text if len(text) <= n else text[:n] + "..."


def keep_logs(b: "Board", why: str) -> Path | None:
    """Copy a board's console log and reset events to LOG_DIR (it outlives the workspace);
    the folder they went to, or None."""
    if LOG_DIR is None:
        return None
    dest = LOG_DIR / b.vb.name
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "why.txt").write_text(why + "\n")
    for src in (b.console_log, b.vb.dir / "events.log"):
        if src is not None and src.exists():
            shutil.copy(src, dest / src.name)
    return dest


def summary(values) -> dict:
    """Median, min, max and count of a list of numbers (None if empty)."""
    xs = sorted(v for v in values if v is not None)
    if not xs:
        return None
    return {"median": statistics.median(xs), "min": xs[0], "max": xs[-1], "n": len(xs)}


def cpu_seconds() -> float:
    """CPU time of this process and its finished children."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def machine() -> dict:
    """The machine the figures come from."""
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        kb = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        mem = "%.1f GiB" % (kb / 1024 / 1024)
    except (OSError, IndexError, ValueError):
        pass
    mpy = subprocess.run(
        [str(BIN / "micropython"), "-c", "import sys; print(sys.version)"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    mpr = subprocess.run([str(BIN / "mpremote"), "version"], capture_output=True, text=True)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": mem,
        "os": "%s %s" % (platform.system(), platform.release()),
        "python": platform.python_version(),
        "micropython": mpy,
        "mpremote": (mpr.stdout or mpr.stderr).strip().split()[-1] if mpr.returncode == 0 else "?",
        "load": os.getloadavg(),
    }


class Workspace:
    """A scratch folder with a signing key, firmware builds and upgrade files."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="hanota-bench-"))
        os.environ["HANOTA_HOME"] = str(self.dir / "home")  # `hanota vboard` registry
        self.keys = self.dir / "keys"
        generate_keys(self.keys)
        self.key = load_private_key(self.keys / "private.pem")
        self.pubkey = self.keys / "public.bin"
        self._fw: dict = {}
        self._version = V1

    def firmware(self, kind: str, version: str = "1.0.0") -> dict:
        if (kind, version) not in self._fw:
            self._fw[kind, version] = fwbuild.build(
                kind, version, self.dir / "fw" / (kind + version)
            )
        return self._fw[kind, version]

    @staticmethod
    def payload(size: int) -> bytes:
        """size bytes that do not compress (as a firmware's code mostly does not)."""
        return random.Random(size).randbytes(size)

    def image(self, size: int, kind: str) -> tuple[Path, int]:
        """A signed ppmid upgrade file around a size-byte payload, newer than any before."""
        self._version += 1
        kind_code = otafile.PAYLOAD_ESP_APP if kind == "vboard-esp32" else otafile.PAYLOAD_ROMFS
        path = self.dir / "img" / ("%d-%08x.ota" % (size, self._version))
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(
            images.build_image(
                self.payload(size),
                key=self.key,
                version=self._version,
                role="ppmid",
                payload_kind=kind_code,
            )
        )
        return path, self._version

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


HUB_EUI = bytes.fromhex("0100a0b0c0d0e0f0")


class BenchPolicy(Policy):
    """Offers the newest image; tells devices to hold it (no activation) unless `activate`;
    notes when each device's Upgrade End arrived: ended[eui] = (time, status, version)."""

    def __init__(self, activate: bool = False):
        super().__init__()
        self.activate = activate
        self.ended: dict = {}

    def upgrade_time(self, eui, image):
        return super().upgrade_time(eui, image) if self.activate else UPGRADE_WAIT

    def on_upgrade_end(self, eui, image, status):
        self.ended[eui] = (time.time(), status, image.file_version if image else None)
        super().on_upgrade_end(eui, image, status)


def hub(block_cap: int = 255, activate: bool = False, **kw) -> ServerRunner:
    """The hub's OTA server on its own thread, serving UDP on loopback (`.address`)."""
    kw.setdefault("stall_timeout", 30)
    return ServerRunner(HUB_EUI, BenchPolicy(activate), block_cap=block_cap, **kw)


class Board:
    """A virtual board running v1 of the ppmid role, deployed and in session with the hub.

    Every delivery its link makes towards the device is logged as (time, bytes), so that a
    transfer can be timed where it ends: at the device.
    """

    def __init__(
        self,
        ws: Workspace,
        hubt: ServerRunner,
        kind: str,
        name: str,
        settings: dict,
        rate: float | None = None,
        latency: float = 0.0,
        heap: str | None = None,
        tap: bool = False,
        drop_rate: float = 0.0,
        drop_seed: int = 0,
    ):
        self.kind, self.rate, self.hub = kind, rate, hubt
        self.tap: ConsoleTap | None = None
        self.console_log: Path | None = None
        self.vb = VirtualBoard(
            ws.dir / "boards" / name,
            board=kind,
            name=name,
            hub=hubt.address,
            link_rate=rate,
            link_latency=latency,
            heap=heap,
            drop_rate=drop_rate,
            drop_seed=drop_seed,
        ).start()
        try:
            if kind == "vboard-esp32":
                flasher.flash_firmware(
                    self.vb.romloader.url, ws.firmware(kind)["firmware"], board=kind
                )
            else:
                hubt.attach_serial(self.vb.info.link)
            self.vb.console.wait_ready(20)
            res = deploy.deploy(
                self.vb.console.pty_path, kind, "ppmid", [ws.pubkey], version=V1, settings=settings
            )
            if tap:  # after the deploy: mpremote needs the console to itself
                self.console_log = self.vb.dir / "console.log"
                self.tap = ConsoleTap(self.vb.console.pty_path, self.console_log)
            self.eui = hubt.add_device(res.eui64, res.install_code)
            hubt.wait_event("hello", self.eui, timeout=30)
        except BaseException as e:
            self.stop()
            if self.console_log is not None:
                keep_logs(self, "bring-up failed: %s" % short(e))
            raise
        self.log: list[tuple[float, int]] = []
        relay, log = self.vb.link, self.log
        schedule = relay._schedule

        def timed_schedule(direction, data, deliver):
            if direction == "down":

                def timed(d, deliver=deliver):
                    deliver(d)
                    log.append((time.time(), len(d)))

                return schedule(direction, data, timed)
            return schedule(direction, data, deliver)

        relay._schedule = timed_schedule

    def stop(self) -> None:
        if self.tap is not None:
            self.tap.close()
            self.tap = None
        self.vb.stop()


BRING_UP_RETRIES = []  # (board name, error) of bring-ups that had to be tried again


def board(ws: Workspace, hubt: ServerRunner, kind: str, name: str, settings: dict, **kw) -> Board:
    """A Board, brought up a second time (under a new name) if the first attempt fails."""
    try:
        return Board(ws, hubt, kind, name, settings, **kw)
    except Exception as e:
        BRING_UP_RETRIES.append((name, "%s: %s" % (type(e).__name__, e)))
        return Board(ws, hubt, kind, name + "-again", settings, **kw)


def udp_rcvbuf_errors() -> int:
    """The kernel's count of UDP datagrams dropped because a socket's receive buffer was full."""
    lines = [line.split() for line in open("/proc/net/snmp") if line.startswith("Udp:")]
    return int(dict(zip(lines[0][1:], lines[1][1:])).get("RcvbufErrors", 0))


def download(
    hubt: ServerRunner, group: list[Board], path: Path, version: int, payload: int, timeout: float
) -> list[dict]:
    """Offer the image at path to every board of group at once; wait until each has it
    verified (Upgrade End); return per board: the transfer phase's figures (udp_drops: the
    kernel's drops meanwhile, machine-wide)."""
    drops = udp_rcvbuf_errors()
    for b in group:
        b.log.clear()
        hubt.policy.ended.pop(b.eui, None)
    hubt.add_image(path)
    for b in group:
        hubt.call(hubt.server.notify(b.eui))
    deadline = time.monotonic() + timeout
    while any(hubt.policy.ended.get(b.eui, (0, 0, None))[2] != version for b in group):
        if time.monotonic() > deadline:
            raise TimeoutError(
                "no Upgrade End for version %08x within %.0f s" % (version, timeout)
            )
        time.sleep(0.05)
    drops = udp_rcvbuf_errors() - drops
    return [dict(measure(hubt, b, payload), udp_drops=drops) for b in group]


def measure(hubt: ServerRunner, b: Board, payload: int) -> dict:
    """The transfer phase of b's last download: from the hub's first block request to the
    last byte the link delivered before the device's Upgrade End."""
    t = hubt.server.transfers[b.eui]
    ended, status, _ = hubt.policy.ended[b.eui]
    start = t.started
    done = [(at, n) for at, n in list(b.log) if start <= at <= ended]
    last = done[-1][0]
    elapsed = last - start
    gaps = [y[0] - x[0] for x, y in zip([(start, 0)] + done, done)]
    out = {
        "status": status,
        "seconds": elapsed,
        "to_verified": ended - start,
        "goodput": payload / elapsed,
        "longest_gap": max(gaps),
        "carried": sum(n for _, n in done),
        "served": t.bytes_served,
        "re_served": t.bytes_served / t.size - 1,
    }
    if b.rate:
        out["fraction"] = out["goodput"] / b.rate
        out["utilisation"] = out["carried"] / elapsed / b.rate
    return out
