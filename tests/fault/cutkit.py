"""Power-cut sweep harness: a deployed board snapshot, one upgrade per cut point, checks.

The method is MCUboot's simulator's (dual_bank.md 1.8) on the virtual board: count the flash
operations N of a clean update, then for a cut point i start a fresh copy of the deployed
board with a power cut armed before operation i (clean, or torn: half the write lands),
let the console restart it from the flash file, let the device finish or recover, and check:

- a verified image runs (the board says hello with V1 or V2; the flash decodes to a
  bootable, confirmed bank holding that version),
- the boot-control state is consistent (ESP32 otadata / the app-bank record),
- a download cut in the middle resumes at a durable point at or before where it was cut
  (or restarts at 0),
- the hub's last outcome (Activation Alert) and the version the device reports (Read
  Attributes CurrentFileVersion) are what the flash says runs.

An iteration that never reaches a running verified image is *bricked*; one that runs a
verified image but not the expected outcome within its time is *stuck*; both fail.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import random
import re
import shutil
import time
from pathlib import Path

from hanfw import zcl
from hanfw.bootctl import CONFIRMED, STATE_NAMES, TRIAL, Record, RECORD_LEN
from hanota import deploy, flasher, fwbuild, images
from hanota.keys import generate_keys, load_private_key
from hanota.server import Policy
from hanota.vboard import layout
from hanota.vboard.board import VirtualBoard
from hanota.vboard.rt import espfmt, vflash
from support.consolelog import ConsoleLog
from support.hubkit import HubThread

KINDS = ("vboard-esp32", "vboard-nrf52840")
V1 = 0x00010000
V2 = 0x00020000
VERSION_TEXT = {"1.0.0": V1, "2.0.0": V2, "2.0.0-broken": V2}
ROLE = "ppmid"
# small link timeouts keep an iteration short; health_timeout bounds the rollback scenario
SETTINGS = {"query_interval": 1, "block_timeout_ms": 300, "health_timeout": 3}
TRACE_DIR = Path(__file__).resolve().parent / "trace"
ITERATION_TIMEOUT = 90.0
HEALTH_FAULT = b"HEALTH = 'fails its health check on purpose'\n"

# The scenarios: what a clean run does and where it must end.
#   upgrade:  V1 -> V2, confirmed; a cut anywhere must still end with V2 confirmed (a cut
#             that rolls the trial back makes the device fetch V2 again).
#   rollback: V1 -> a V2 that fails its health check; must end with V1 running and the
#             hub told "rolled back".
SCENARIOS = ("upgrade", "rollback")
#   upgrade-zlib, upgrade-delta: the upgrade, its V2 sent compressed, or as a delta against
#             V1 (issue 15: the device decodes into the bank); must end as the upgrade does.
ENCODED_SCENARIOS = ("upgrade-zlib", "upgrade-delta")


def is_upgrade(scenario: str) -> bool:
    return scenario.startswith("upgrade")
PHASES = ("boot", "download", "verify", "activation", "trial", "confirm", "rollback")


# ---------------------------------------------------------------- build products

@dataclasses.dataclass
class Kit:
    """Keys, firmware and upgrade files for one session (one pytest worker)."""

    root: Path
    keys: Path
    payloads: dict
    files: dict  # (kind, scenario) -> OTA file path

    @classmethod
    def build(cls, root: Path) -> "Kit":
        """Build into root, or load what an earlier call built there."""
        root.mkdir(parents=True, exist_ok=True)
        keys = root / "keys"
        done = root / "built"
        if not done.exists():
            shutil.rmtree(keys, ignore_errors=True)
            generate_keys(keys)
        key = load_private_key(keys / "private.pem")
        payloads, files = {}, {}
        for kind in KINDS:
            for n, text, extra in ((1, "1.0.0", None), (2, "2.0.0", None),
                                   ("broken", "2.0.0-broken", {"hanfw/fault.py": HEALTH_FAULT})):
                out = root / ("%s-%s" % (kind, n))
                if done.exists():
                    payloads[kind, n] = {p.stem: p for p in out.iterdir()}
                else:
                    payloads[kind, n] = fwbuild.build(kind, text, out, extra=extra)
            for scenario, n in (("upgrade", 2), ("rollback", "broken")):
                p = root / ("%s-%s.ota" % (kind, scenario))
                if not done.exists():
                    payload = payloads[kind, n]["app"].read_bytes()
                    p.write_bytes(images.build_image(payload, key=key, version=V2, role=ROLE))
                files[kind, scenario] = p
            # V1 as the hub served it before: a delta is offered only against the image the
            # hub knows the device runs (server.policy.choose_variant)
            p = root / ("%s-v1.ota" % kind)
            if not p.exists():
                p.write_bytes(images.build_image(payloads[kind, 1]["app"].read_bytes(),
                                                 key=key, version=V1, role=ROLE))
            files[kind, "v1"] = p
            for scenario in ENCODED_SCENARIOS:
                p = root / ("%s-%s.ota" % (kind, scenario))
                if not p.exists():  # also into a kit built before these scenarios existed
                    enc = scenario.split("-")[1]
                    base = payloads[kind, 1]["app"].read_bytes() if enc == "delta" else None
                    p.write_bytes(images.build_image(payloads[kind, 2]["app"].read_bytes(),
                                                     key=key, version=V2, role=ROLE,
                                                     encoding=enc, base=base))
                files[kind, scenario] = p
        done.touch()
        return cls(root, keys, payloads, files)


# ---------------------------------------------------------------- boards and hub

class SweepBoard(VirtualBoard):
    """A virtual board; with `trace`, every flash op that takes effect is logged to a file
    (through the wrappers in trace/, which load the real vflash and boot scripts)."""

    def __init__(self, *a, trace: Path | None = None, then_cuts: list[int] = (), **kw):
        super().__init__(*a, **kw)
        self.trace = trace
        self.marks: list[tuple[str, int]] = []
        self.then_cuts = list(then_cuts)  # further cuts, each relative to the restart
        self._seen_cuts = 0

    def _event(self, kind, detail):
        super()._event(kind, detail)
        if kind == "exited":
            ops = -1
            with contextlib.suppress(OSError, ValueError):
                ops = vflash.counters(str(self.ctl_path))["ops"]
            self.marks.append(("reset" if detail == "hard" else "exit-" + detail, ops))

    def _spawn(self, cause):
        # called by the console just before it starts the board again: after a cut, arm
        # the next one here, so its op number does not depend on when the host looks
        c = vflash.counters(str(self.ctl_path))
        if c["cuts"] > self._seen_cuts:
            self._seen_cuts = c["cuts"]
            if self.then_cuts:
                vflash.schedule_cut(str(self.ctl_path), c["ops"] + self.then_cuts.pop(0),
                                    self.torn)
        argv, env = super()._spawn(cause)
        if self.trace is not None:
            env["HANOTA_FAULT_RT"] = str(layout.RT_DIR)
            env["HANOTA_FAULT_TRACE"] = str(self.trace)
            boot = str(layout.RT_DIR / self.spec.boot_script)
            argv = [str(TRACE_DIR / Path(a).name) if a == boot else a for a in argv]
        return argv, env


class SweepPolicy(Policy):
    """The hub's policy for one iteration: offers the scenario's image until the outcome
    is final, and notes the flash op counter at every event (the phase marks)."""

    def __init__(self, ctl: Path, scenario: str):
        super().__init__()
        self.ctl = str(ctl)
        self.scenario = scenario
        self.marks: list[tuple[str, int]] = []

    def ops(self) -> int:
        with contextlib.suppress(OSError, ValueError):
            return vflash.counters(self.ctl)["ops"]
        return -1

    def mark(self, name: str) -> None:
        self.marks.append((name, self.ops()))

    def offer(self, eui, manufacturer, image_type, file_version, hw_version):
        img = super().offer(eui, manufacturer, image_type, file_version, hw_version)
        if img is not None:
            self.mark("offer")
        return img

    def on_hello(self, eui, file_version):
        super().on_hello(eui, file_version)
        self.mark("hello-%x" % file_version)

    def on_progress(self, eui, image, offset, size):
        super().on_progress(eui, image, offset, size)
        if offset >= size:
            self.mark("last-block")

    def on_upgrade_end(self, eui, image, status):
        super().on_upgrade_end(eui, image, status)
        self.mark("upgrade-end-%d" % status)

    def on_alert(self, eui, running, previous, rolled_back, reason):
        super().on_alert(eui, running, previous, rolled_back, reason)
        self.mark("alert")
        if self.scenario == "rollback" and rolled_back:
            self.images.clear()  # the hub gives up on an image that was rolled back


@dataclasses.dataclass
class Snapshot:
    """A board with V1 deployed and known to the hub, stopped: its flash file + sidecar."""

    kind: str
    dir: Path
    eui64: str
    install_code: str

    @property
    def eui(self) -> bytes:
        return bytes(reversed(bytes.fromhex(self.eui64.replace(":", ""))))

    def to_json(self) -> dict:
        return dict(kind=self.kind, dir=str(self.dir), eui64=self.eui64,
                    install_code=self.install_code)

    @classmethod
    def from_json(cls, d: dict) -> "Snapshot":
        return cls(d["kind"], Path(d["dir"]), d["eui64"], d["install_code"])


def make_snapshot(kit: Kit, kind: str, root: Path) -> Snapshot:
    """Flash (ESP32) and deploy V1 on a fresh board, wait for its hello, power it off."""
    d = root / ("snap-" + kind)
    hub = HubThread(block_cap=64)
    b = VirtualBoard(d / "board", board=kind, name="snap-" + kind, hub=hub.udp)
    try:
        b.start()
        if kind == "vboard-esp32":
            flasher.flash_firmware(b.romloader.url, kit.payloads[kind, 1]["firmware"], board=kind)
        else:
            hub.attach_serial(b.info.link)
        b.console.wait_ready(30)
        res = deploy.deploy(b.console.pty_path, kind, ROLE, [kit.keys / "public.bin"], version=V1,
                            settings=SETTINGS)
        eui = hub.add_device(res.eui64, res.install_code)
        hub.wait_event("hello", eui, timeout=60)
        # idle: nothing is being written while the device waits for its next query
        _quiet(b.ctl_path, 0.5, 10)
    finally:
        b.stop()
        hub.stop()
    snap = Snapshot(kind, d, res.eui64, res.install_code)
    for name in ("flash.bin", "flash.bin.ctl"):
        shutil.copyfile(d / "board" / name, d / name)
    return snap


def _quiet(ctl: Path, quiet: float, timeout: float) -> bool:
    """Wait until no flash op happened for `quiet` seconds."""
    end = time.monotonic() + timeout
    last = vflash.counters(str(ctl))["ops"]
    since = time.monotonic()
    while time.monotonic() < end:
        time.sleep(0.05)
        now = vflash.counters(str(ctl))["ops"]
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return True
    return False


# ---------------------------------------------------------------- flash state on the host

@dataclasses.dataclass
class FlashState:
    """What the flash says runs, decoded on the host; `problems` lists inconsistencies."""

    version: int | None
    bank: str | None
    detail: str
    problems: list[str]


def decode_flash(kind: str, flash_path: Path) -> FlashState:
    spec = layout.load_board(kind)
    data = flash_path.read_bytes()
    if spec.bank_kind == "firmware":
        return _decode_esp32(spec, data)
    return _decode_app_banks(spec, data)


def _decode_esp32(spec, data: bytes) -> FlashState:
    problems = []
    od = spec.region("otadata")
    es = [espfmt.parse_ota(data[od.offset:od.offset + 32]),
          espfmt.parse_ota(data[od.offset + 4096:od.offset + 4096 + 32])]
    detail = "otadata [%s] [%s]" % (espfmt.ota_describe(es[0]), espfmt.ota_describe(es[1]))
    a = espfmt.ota_active(es)
    if a < 0:
        # both copies invalid: the bootloader tries ota_0 first
        slot = 0
        if not all(e[0] == espfmt.SEQ_NONE for e in es):
            problems.append("no valid otadata copy")
    else:
        slot = (es[a][0] - 1) % len(spec.banks)
        if es[a][2] not in (espfmt.VALID, espfmt.UNDEFINED):
            problems.append("active otadata copy is %s at rest"
                            % espfmt.STATE_NAMES.get(es[a][2], hex(es[a][2])))
    bank = spec.banks[slot]

    def readinto(addr, mv):
        mv[:] = data[addr:addr + len(mv)]
    try:
        espfmt.check_image(readinto, bank.offset, bank.size, bytearray(4096))
    except espfmt.FormatError as e:
        problems.append("%s does not hold a valid app image: %s" % (bank.name, e))
        return FlashState(None, bank.name, detail, problems)
    desc = espfmt.parse_app_desc(data[bank.offset + espfmt.APP_DESC_OFFSET:
                                      bank.offset + espfmt.APP_DESC_OFFSET + 256]) or {}
    version = VERSION_TEXT.get(desc.get("version"))
    if version is None:
        problems.append("%s holds unknown version %r" % (bank.name, desc.get("version")))
    return FlashState(version, bank.name, detail, problems)


def _decode_app_banks(spec, data: bytes) -> FlashState:
    problems = []
    ctl = spec.region("bootctl")
    recs = [Record.parse(data[ctl.offset + i * 4096:ctl.offset + i * 4096 + RECORD_LEN])
            for i in (0, 1)]
    valid = [r for r in recs if r is not None]
    if not valid:
        why = "no valid boot-control record"
        return FlashState(None, None, why, [why])
    r = max(valid, key=lambda r: r.seq)
    detail = r.describe()
    a = r.active
    bank = spec.banks[a]
    if r.state[a] != CONFIRMED:
        problems.append("active bank %d is %s at rest" % (a, STATE_NAMES[r.state[a]]))
    if r.state[1 - a] == TRIAL:
        problems.append("inactive bank %d is TRIAL" % (1 - a))
    n = r.length[a]
    held = data[bank.offset:bank.offset + n]
    if not 0 < n <= bank.size or hashlib.sha256(held).digest() != r.hash[a]:
        problems.append("active bank %d does not match its recorded hash" % a)
    if r.floor > max(r.secver):
        problems.append("anti-rollback floor %d above both banks' security versions" % r.floor)
    return FlashState(r.version[a], bank.name, detail, problems)


# ---------------------------------------------------------------- one iteration

@dataclasses.dataclass
class Outcome:
    """The result of one cut point (or a clean reference run)."""

    kind: str
    scenario: str
    cuts: list[int]
    torn: bool
    fired: int = 0  # cuts that actually fired
    phase: str | None = None  # protocol phase at the first cut
    verdict: str = "recovered"  # recovered | bricked | inconsistent | stuck
    why: str = ""
    final_version: int | None = None
    resumed_from: int | None = None
    cut_offset: int | None = None
    ops: int = 0
    marks: list = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.verdict == "recovered"


def expected_final(scenario: str) -> tuple[int, bool]:
    """(version that must run at the end, whether the hub's last alert says rolled back)."""
    return (V2, False) if is_upgrade(scenario) else (V1, True)


def phase_at(marks: list[tuple[str, int]], scenario: str) -> str:
    """The protocol phase, given the events seen so far in this iteration."""
    names = [m[0] for m in marks]
    if "alert" in names or any(n == "hello-%x" % V2 for n in names):
        return "confirm" if is_upgrade(scenario) else "rollback"
    if "reset" in names:
        return "trial"
    if any(n.startswith("upgrade-end-0") for n in names):
        return "activation"
    if "last-block" in names:
        return "verify"
    if "offer" in names:
        return "download"
    return "boot"


def run_iteration(kit: Kit, snap: Snapshot, scenario: str, workdir: Path, cuts: list[int],
                  torn: bool = False, trace: Path | None = None,
                  timeout: float = ITERATION_TIMEOUT) -> Outcome:
    """One update from the snapshot with power cuts before the given flash ops.

    cuts: the first is an absolute op number (counted from power-on of the snapshot);
    each further one is armed that many ops after the restart that follows the previous
    cut (random multi-cut runs). An empty list is the clean reference run. The board
    folder is removed afterwards unless the outcome is a failure.
    """
    kind = snap.kind
    out = Outcome(kind, scenario, list(cuts), torn)
    t0 = time.monotonic()
    d = workdir / ("it-%s-%s-%s%s" % (kind[7:], scenario, "-".join(map(str, cuts)) or "ref",
                                      "-torn" if torn else ""))
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    for name in ("flash.bin", "flash.bin.ctl"):
        shutil.copyfile(snap.dir / name, d / name)
    ctl = d / "flash.bin.ctl"
    vflash.clear_cut(str(ctl))
    vflash.reset_counters(str(ctl))
    policy = SweepPolicy(ctl, scenario)
    hub = HubThread(policy, block_cap=64)
    policy.joined[snap.eui] = dict(role=ROLE, manufacturer=images.DEFAULT_MANUFACTURER,
                                   image_type=images.ROLE_IMAGE_TYPES[ROLE],
                                   hw_version=deploy.DEFAULT_HW_VERSION, file_version=V1)
    hub.add_device(snap.eui64, snap.install_code)
    hub.add_image(kit.files[kind, scenario])
    if scenario == "upgrade-delta":
        hub.add_image(kit.files[kind, "v1"])
    b = SweepBoard(d, board=kind, name=d.name, eui64=snap.eui64, trace=trace,
                   power_cut_at=cuts[0] if cuts else None, torn=torn, hub=hub.udp,
                   then_cuts=cuts[1:])
    b.marks = policy.marks
    log, text = None, ""
    want_version, want_rolled_back = expected_final(scenario)
    eui = snap.eui
    fired = 0
    try:
        b.start()
        log = ConsoleLog(b.console.pty_path)
        if kind != "vboard-esp32":
            hub.attach_serial(b.info.link)
        log_at_cut = None
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            time.sleep(0.05)
            c = vflash.counters(str(ctl))
            if c["cuts"] > fired:
                if fired == 0:
                    out.phase = phase_at(list(policy.marks), scenario)
                    t = hub.server.transfers.get(eui)
                    downloading = t is not None and t.state == "downloading"
                    out.cut_offset = t.offset if downloading else None
                    log_at_cut = len(log.text)
                fired = c["cuts"]
                continue
            if not _final(hub, eui, want_version, want_rolled_back):
                continue
            if fired and not hello_since_last_cut(policy.marks):
                continue  # the outcome must be seen from the board running after the cut
            if _quiet(ctl, 0.6, 5) and vflash.counters(str(ctl))["cuts"] == fired:
                break
        out.fired = fired
        out.marks = list(policy.marks)
        out.ops = vflash.counters(str(ctl))["ops"]
        finished = _final(hub, eui, want_version, want_rolled_back)
        reported = None
        with contextlib.suppress(Exception):
            reported = hub.call(hub.server.read_attributes(
                eui, [zcl.ATTR_CURRENT_FILE_VERSION], timeout=2, retries=2))[0][3]
        text = log.text
        if log_at_cut is not None:
            m = re.search(r"from offset (\d+)", text[log_at_cut:])
            out.resumed_from = int(m.group(1)) if m else None
    finally:
        if log is not None:
            log.close()
        b.stop()
        hub.stop()
    state = decode_flash(kind, d / "flash.bin")
    out.final_version = state.version
    out.seconds = time.monotonic() - t0
    alerts = [e for e in policy.events if e[0] == "alert"]
    problems = list(state.problems)
    if state.version is None or not hello_since_last_cut(out.marks):
        out.verdict = "bricked"
        problems.append("no verified image runs")
    elif state.problems:
        out.verdict = "inconsistent"
    elif not finished:
        out.verdict = "stuck"
        problems.append("did not reach the expected outcome (V%d%s) within %.0f s"
                        % (want_version >> 16, ", rolled back" if want_rolled_back else "",
                           timeout))
    else:
        if state.version != want_version:
            problems.append("flash runs V%d, expected V%d"
                            % (state.version >> 16, want_version >> 16))
        if reported != state.version:
            problems.append("device reports %r, flash runs %r" % (reported, state.version))
        if alerts and alerts[-1][2] != state.version:
            problems.append("hub's last alert says %r runs, flash runs %r"
                            % (alerts[-1][2], state.version))
        if out.cut_offset is not None and out.resumed_from is not None \
                and out.resumed_from > out.cut_offset:
            problems.append("download resumed at %d, beyond the %d bytes received before the cut"
                            % (out.resumed_from, out.cut_offset))
        if problems:
            out.verdict = "stuck"
    out.why = "; ".join(problems) + (" [%s]" % state.detail if problems else "")
    if problems and text:
        out.why += "; the board's console ended: " + " | ".join(text.splitlines()[-12:])
    if out.ok:
        shutil.rmtree(d, ignore_errors=True)
    return out


def hello_since_last_cut(marks: list[tuple[str, int]]) -> bool:
    """Whether a verified image said hello after the board's last power cut.

    Uses the ordered marks, not a count taken when the host noticed the cut: the board
    restarts at once, and on a loaded machine its first hello can beat the host's poll.
    The console notes the exit (a SIGKILL) before it starts the board again, so every
    hello after the last exit mark comes from a boot after the cut."""
    last = max((i for i, (name, _) in enumerate(marks) if name == "exit-power"),
               default=-1)
    return any(name in ("hello-%x" % V1, "hello-%x" % V2) for name, _ in marks[last + 1:])


def _final(hub: HubThread, eui: bytes, version: int, rolled_back: bool) -> bool:
    alerts = hub.events("alert", eui)
    if not alerts:
        return False
    a = alerts[-1]
    return a[2] == version and bool(a[4]) == rolled_back


# ---------------------------------------------------------------- reference runs

@dataclasses.dataclass
class Reference:
    """A clean run: its op count, the ops at each phase mark, and the traced ops."""

    kind: str
    scenario: str
    total: int
    marks: list
    trace: list  # (op, kind "e"/"w", addr, length)
    seconds: float

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "Reference":
        return cls(**d)

    def phase_of(self, op: int) -> str:
        """The phase a cut before `op` falls in, by the clean run's marks."""
        marks = self.marks
        ph = "boot"
        exits = 0
        for name, at in marks:
            if at >= op:
                break
            if name == "offer" and ph == "boot":
                ph = "download"
            elif name == "last-block" and ph == "download":
                ph = "verify"
            elif name.startswith("upgrade-end-0") and ph in ("download", "verify"):
                ph = "activation"
            elif name == "reset":
                exits += 1
                if ph == "activation":
                    ph = "trial"
            elif name in ("hello-%x" % V2, "alert") and ph in ("trial", "activation"):
                ph = "confirm" if is_upgrade(self.scenario) else "rollback"
        return ph

    def metadata_writes(self, kind: str) -> list[int]:
        """Ops that write boot-control metadata (otadata / the boot-control record) or the
        device's state files (the filesystem): the torn-write targets."""
        spec = layout.load_board(kind)
        regions = [spec.region("otadata" if spec.bank_kind == "firmware" else "bootctl")]
        regions += [r for r in spec.regions if r.mount]
        return [op for op, k, addr, n in self.trace
                if k == "w" and any(r.offset <= addr < r.end for r in regions)]

    def mark(self, name: str, nth: int = 0) -> int:
        """Ops done when the nth event called `name` happened in the clean run."""
        return [at for n, at in self.marks if n == name][nth]

    def bootctl_writes(self) -> list[int]:
        """Ops that write the boot-control metadata (otadata / the boot-control record)."""
        spec = layout.load_board(self.kind)
        r = spec.region("otadata" if spec.bank_kind == "firmware" else "bootctl")
        return [op for op, k, addr, n in self.trace if k == "w" and r.offset <= addr < r.end]

    def region_of(self, kind: str, addr: int) -> str:
        spec = layout.load_board(kind)
        inside = [r for r in spec.regions if r.offset <= addr < r.end and r.name != "unused"]
        return min(inside, key=lambda r: r.size).name if inside else "?"


def reference_run(kit: Kit, snap: Snapshot, scenario: str, workdir: Path) -> Reference:
    trace = workdir / ("trace-%s-%s.txt" % (snap.kind, scenario))
    with contextlib.suppress(FileNotFoundError):
        trace.unlink()
    out = run_iteration(kit, snap, scenario, workdir, [], trace=trace)
    if not out.ok:
        raise AssertionError("clean reference run failed: %s" % out.why)
    ops = []
    for line in trace.read_text().splitlines():
        op, k, addr, n = line.split()
        ops.append((int(op), k, int(addr), int(n)))
    marks = list(out.marks)
    # the reset into the new image: the first op of the trial boot follows it
    return Reference(snap.kind, scenario, out.ops, marks, ops, out.seconds)


def random_cuts(rng: random.Random, total: int, most: int = 5) -> list[int]:
    """Up to `most` cuts in one update, as MCUboot's perm_with_random_fails: each at a
    random op in 1..remaining/2 (the first absolute, the others after each restart)."""
    cuts = []
    remaining = total
    for _ in range(rng.randint(1, most)):
        c = rng.randint(1, max(1, remaining // 2))
        cuts.append(c)
        remaining = max(1, remaining - c)
    return cuts


def cut_points(total: int, stride: int, offset: int = 0) -> list[int]:
    """1..total with a stride (every point when stride is 1); always includes the last."""
    pts = list(range(1 + offset % max(stride, 1), total + 1, max(stride, 1)))
    if total and pts[-1:] != [total]:
        pts.append(total)
    return pts
