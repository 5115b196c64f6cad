"""`hanota board doctor`: what a board at a serial port has, against what hanota needs.

It talks to the board's REPL through mpremote's transport (as `deploy` does) and reports
the MicroPython version, the port (`sys.platform`) and board (`os.uname().machine`), the
free heap, the modules the device code imports (present or missing), the flash layout
against `boards/<B>/board.toml` (ESP32: the partition table through `esp32.Partition`;
nRF52840: the regions `nrf.Flash`, `nrf.unused_flash_*` and `vfs.rom_ioctl` report), and
what is deployed (boot.py, main.py, hanota.json, ota.json, the app bank's boot record).

Each difference is one `Finding` that names exactly what is missing or different. A port
with nothing on it (no such device, or no REPL answers) is a `DoctorError` (exit 2).
"""
from __future__ import annotations

import ast
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import boardspec, devcode
from .errors import HanotaError

# Modules the device code imports inside functions that only run for one link or bank
# kind: they count for a board only when its board.toml selects that kind (or its hal.py
# imports them). Imports at module level always count.
KIND_MODULES = {"socket": ("link", "udp"), "network": ("link", "udp"),
                "nrf": ("bank_kind", "app"), "esp32": ("bank_kind", "firmware")}

_MARK = "@@doctor "


class DoctorError(HanotaError):
    """Nothing usable answers at the port."""

    reason = "doctor"


@dataclass
class Finding:
    """One check: what was checked, whether it is as needed, and the exact detail."""

    check: str
    ok: bool
    detail: str


@dataclass
class Report:
    port: str
    board: str
    facts: dict = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.findings)

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if not f.ok]

    def add(self, check: str, ok: bool, detail: str) -> None:
        self.findings.append(Finding(check, ok, detail))

    def as_dict(self) -> dict:
        return {"port": self.port, "board": self.board, "ok": self.ok, "facts": self.facts,
                "findings": [asdict(f) for f in self.findings]}


# ---------------------------------------------------------------- what the code needs

def _optional_nodes(tree: ast.AST) -> set[int]:
    """Import nodes guarded by `try: ... except ImportError` (a fallback exists)."""
    out: set[int] = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Try) and any(
                h.type is None or (isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "Exception"))
                for h in n.handlers):
            for part in [*n.body, *(h for h in n.handlers)]:
                out.update(id(m) for m in ast.walk(part))
    return out


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(top-level module, at module level?) of the unguarded imports of one file."""
    tree = ast.parse(path.read_text(), str(path))
    optional = _optional_nodes(tree)
    top_level = {id(n) for n in tree.body}
    out = []
    for n in ast.walk(tree):
        if id(n) in optional:
            continue
        if isinstance(n, ast.Import):
            names = [a.name for a in n.names]
        elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module:
            names = [n.module]
        else:
            continue
        out.extend((name.split(".")[0], id(n) in top_level) for name in names)
    return out


def required_modules(board: boardspec.Board) -> dict[str, list[str]]:
    """The MicroPython modules the device code and the board's hal.py import, each with the
    files that import it: read from the code itself, so the list cannot go stale."""
    root = devcode.DEVICE_ROOT
    sources = [root / rel for rel in devcode.device_sources(root)]
    local = {p.stem for p in sources} | {p.name for p in root.iterdir() if p.is_dir()} | {"hal"}
    need: dict[str, list[str]] = {}

    def want(mod: str, where: str) -> None:
        if mod not in local and mod != "__future__":
            need.setdefault(mod, []).append(where)

    for p in sources:
        for mod, top in _imports(p):
            kind = KIND_MODULES.get(mod)
            if not top and kind and getattr(board, kind[0]) != kind[1]:
                continue
            want(mod, str(p.relative_to(root)))
    if board.hal_path.exists():
        for mod, _top in _imports(board.hal_path):
            want(mod, "boards/%s/hal.py" % (board.hal or board.name))
    return {m: sorted(set(w)) for m, w in sorted(need.items())}


# ---------------------------------------------------------------- talking to the board

_PROBE = """\
import sys, os, gc, json
r = {'version': '.'.join(str(v) for v in sys.implementation.version[:3]), 'platform': sys.platform}
try:
    u = os.uname()
    r['machine'] = u.machine
    r['release'] = u.release
except Exception:
    pass
m = {}
for n in %r:
    try:
        __import__(n)
        m[n] = True
    except ImportError:
        m[n] = False
r['modules'] = m
r['cwd'] = os.getcwd()
gc.collect()
r['mem_free'] = gc.mem_free()
print(%r + json.dumps(r))
"""

_ESP32 = """\
import esp32, json
t = []
for k in (esp32.Partition.TYPE_APP, esp32.Partition.TYPE_DATA):
    for p in esp32.Partition.find(k):
        t.append(list(p.info()[:5]))
r = {'partitions': t}
try:
    r['running'] = esp32.Partition(esp32.Partition.RUNNING).info()[4]
except Exception:
    pass
try:
    import esp
    r['flash_size'] = esp.flash_size()
except Exception:
    pass
print(%r + json.dumps(r))
"""

_NRF = """\
import nrf, json
r = {'fs': repr(nrf.Flash()), 'unused': [nrf.unused_flash_start(), nrf.unused_flash_length()]}
try:
    import vfs
    r['romfs'] = repr(vfs.rom_ioctl(2, 0))
except Exception:
    pass
try:
    import machine
    r['flash_size'] = machine.mem32[0x10000010] * machine.mem32[0x10000014]
except Exception:
    pass
print(%r + json.dumps(r))
"""

_FILES = """\
import os, json
r = {}
for p in %r:
    try:
        os.stat(p)
        r[p] = True
    except OSError:
        r[p] = False
j = {}
for p in %r:
    try:
        with open(p) as f:
            j[p] = json.loads(f.read())
    except Exception as e:
        j[p] = None
print(%r + json.dumps({'exists': r, 'json': j}))
"""

_BOOTREC = """\
import sys, nrf
sys.path.append(%r)
from bootctl import BootControl
rec = BootControl(nrf.Flash(start=%d, len=%d)).load()
print(%r + (rec.describe() if rec else 'none'))
"""


def _run(sess, code: str) -> str:
    """The marked line the board printed for `code`."""
    out = sess.exec(code)
    for line in out.splitlines():
        if line.startswith(_MARK):
            return line[len(_MARK):]
    raise DoctorError("the board printed no answer to the doctor's probe: %s" % out.strip()[-200:])


def _connect(port: str):
    from .deploy import DeployError, _Session
    try:
        return _Session(port, timeout=5.0)
    except DeployError:
        raise DoctorError("nothing answers on %s: no such device, or no MicroPython REPL there" % port) from None


def guess_board(platform: str) -> str | None:
    """The real board for a port's `sys.platform` (its board.toml [port] platform) when
    --board is not given: the first board in name order that has its own board support."""
    for name in boardspec.board_names(virtual=False):
        b = boardspec.load_board(name)
        if _port_facts(b).get("platform") == platform and not b.hal:
            return name
    return None


# ---------------------------------------------------------------- the checks

def _hexr(offset: int, size: int) -> str:
    return "0x%x..0x%x (%d KiB)" % (offset, offset + size, size // 1024)


def _flash_repr(text: str | None) -> tuple[int, int] | None:
    """(start, len) of an `nrf.Flash` repr: "Flash(start=0x000b4000, len=262144)"."""
    m = re.search(r"start=(0x[0-9a-fA-F]+|\d+),\s*len=(0x[0-9a-fA-F]+|\d+)", text or "")
    return (int(m.group(1), 0), int(m.group(2), 0)) if m else None


def _port_facts(spec: boardspec.Board) -> dict:
    """The [port] table of the board (platform, machine...), or {} when it has none."""
    from .vboard.portspec import port_facts  # reads board.toml only (no virtual-board code)
    try:
        return port_facts(spec)
    except boardspec.LayoutError:
        return {}


def check_identity(rep: Report, spec: boardspec.Board, f: dict) -> None:
    port = _port_facts(spec)
    want = port.get("platform")
    if want is None:
        rep.add("port", False, "sys.platform %r; boards/%s/board.toml has no [port] table to check it "
                "against" % (f["platform"], spec.name))
    else:
        rep.add("port", f["platform"] == want,
                "sys.platform %r%s" % (f["platform"], "" if f["platform"] == want else
                                       ", but board %s (chip %s) needs %r" % (spec.name, spec.chip, want)))
    machine = f.get("machine")
    if port.get("machine"):
        # the firmware names the board it was built for: another board's build has another layout
        rep.add("board", machine == port["machine"], "os.uname().machine %r%s" % (
            machine, "" if machine == port["machine"] else
            "; the firmware %s needs is built for %r" % (spec.name, port["machine"])))
    rep.add("micropython", True, "MicroPython %s, board %s, %d bytes of heap free"
            % (f["version"], machine or "(os.uname not available)", f["mem_free"]))


def check_modules(rep: Report, need: dict[str, list[str]], have: dict[str, bool],
                  port: dict | None = None, board: str = "") -> None:
    """Each module the code needs, against what the board has and what the board's port
    facts (board.toml [port]) say stock MicroPython offers: a missing module is either
    one the stock firmware has (this firmware is another build) or one the port never
    has (the device code must not need it there); one the port lacks is a problem even
    when this board has it, as a real board of that kind will not."""
    port = port or {}
    stock = set(port.get("modules", ())) | set(port.get("not_emulated", ()))
    absent = set(port.get("absent", ()))
    bad = 0
    for m in need:
        where = ", ".join(need[m])
        if not have.get(m):
            if m in stock:
                why = "; stock MicroPython for %s has it (board.toml [port]): this firmware is another build" % board
            elif m in absent:
                why = "; the %s port has none (board.toml [port] absent): the device code must not need it" % board
            else:
                why = "; board.toml [port] of %s does not list it" % board if port else ""
            rep.add("module " + m, False, "missing: imported by %s%s" % (where, why))
            bad += 1
        elif m in absent:
            rep.add("module " + m, False, "present here, but the %s port has none (board.toml [port] absent): "
                    "imported by %s, which a real board cannot run" % (board, where))
            bad += 1
    if not bad:
        rep.add("modules", True, "all %d present: %s" % (len(need), " ".join(need)))


def check_esp32_flash(rep: Report, spec: boardspec.Board, f: dict) -> None:
    have = {p[4]: p for p in f.get("partitions", [])}
    diffs = 0
    for r in spec.partitions:
        t, st = boardspec.PARTITION_TYPES[r.type], boardspec.PARTITION_SUBTYPES[r.type][r.subtype]
        want = "%s/%s at %s" % (r.type, r.subtype, _hexr(r.offset, r.size))
        p = have.pop(r.name, None)
        if p is None:
            rep.add("partition " + r.name, False, "missing on the board (board.toml: %s)" % want)
        elif (p[0], p[1], p[2], p[3]) != (t, st, r.offset, r.size):
            rep.add("partition " + r.name, False, "the board has type 0x%02x/0x%02x at %s; board.toml: %s"
                    % (p[0], p[1], _hexr(p[2], p[3]), want))
        else:
            continue
        diffs += 1
    for label, p in sorted(have.items()):
        rep.add("partition " + label, False, "on the board (0x%02x/0x%02x at %s) but not in board.toml"
                % (p[0], p[1], _hexr(p[2], p[3])))
        diffs += 1
    if not diffs:
        rep.add("partition table", True, "%d partitions as in %s/board.toml, running %s"
                % (len(spec.partitions), spec.name, f.get("running", "?")))
    _check_flash_size(rep, spec, f)


def _check_flash_size(rep: Report, spec: boardspec.Board, f: dict) -> None:
    size = f.get("flash_size")
    if size is None:
        rep.add("flash size", True, "not reported by the firmware; board.toml says %d KiB" % (spec.flash_size // 1024))
    else:
        rep.add("flash size", size == spec.flash_size, "%d KiB on the board; board.toml: %d KiB"
                % (size // 1024, spec.flash_size // 1024))


def check_nrf_flash(rep: Report, spec: boardspec.Board, f: dict) -> None:
    fs = _flash_repr(f.get("fs"))
    want_fs = next((r for r in spec.regions if r.mount == "/flash"), None)
    if fs and want_fs:
        rep.add("region fs", fs == (want_fs.offset, want_fs.size), "nrf.Flash() is %s; board.toml fs: %s"
                % (_hexr(*fs), _hexr(want_fs.offset, want_fs.size)))
    free_lo, free_n = f["unused"]
    ctl = spec.region("bootctl")
    rep.add("region bootctl", free_lo <= ctl.offset and ctl.end <= free_lo + free_n,
            "board.toml bootctl %s; the firmware leaves %s free after its image (nrf.unused_flash_*)"
            % (_hexr(ctl.offset, ctl.size), _hexr(free_lo, free_n)))
    romfs = _flash_repr(f.get("romfs"))
    for b in spec.banks:
        if romfs:
            inside = romfs[0] <= b.offset and b.end <= romfs[0] + romfs[1]
            rep.add("region " + b.name, inside, "board.toml %s; the firmware's ROMFS region is %s"
                    % (_hexr(b.offset, b.size), _hexr(*romfs)))
            continue
        clash = [n for n, (lo, n_) in (("fs", fs), ("firmware", (0, free_lo)), ("bootctl", (ctl.offset, ctl.size)))
                 if lo is not None and b.offset < lo + n_ and lo < b.end] if fs else []
        rep.add("region " + b.name, not clash, "board.toml %s%s (no ROMFS region reported)"
                % (_hexr(b.offset, b.size), "; overlaps " + ", ".join(clash) if clash else ""))
    _check_flash_size(rep, spec, f)


def check_deployed(rep: Report, spec: boardspec.Board, root: str, files: dict, bootrec: str | None) -> None:
    missing = [n for n in deployed_files(spec) if not files["exists"].get(root + n)]
    code_there = any(files["exists"].get(p) for p in (root + "lib/hanfw", "/rom/hanfw"))
    if spec.bank_kind == "firmware" and not code_there:
        missing.append("hanfw (neither /rom/hanfw nor %slib/hanfw)" % root)
    rep.add("deployed files", not missing, "missing: %s (run hanota board deploy)" % ", ".join(missing)
            if missing else "boot.py, main.py, hanota.json, ota.json%s in %s"
            % (", bootcfg.json, lib/bootctl.mpy" if spec.bank_kind == "app" else "", root))
    cfg = files["json"].get(root + "hanota.json")
    if cfg:
        fam = cfg.get("family")
        rep.add("hanota.json", fam in (None, spec.chip), "role %s, EUI-64 %s, %d pinned key(s)%s"
                % (cfg.get("role"), cfg.get("eui64"), len(cfg.get("keys", ())),
                   "" if fam in (None, spec.chip) else "; family %s but board %s is %s" % (fam, spec.name, spec.chip)))
    ota = files["json"].get(root + "ota.json")
    if ota is not None:
        rep.facts["ota"] = ota
    bc = files["json"].get(root + "bootcfg.json")
    if spec.bank_kind == "app" and bc:
        want = {"banks": [[r.offset, r.size] for r in spec.banks],
                "bootctl": [spec.region("bootctl").offset, spec.region("bootctl").size]}
        rep.add("bootcfg.json", bc == want, "as board.toml" if bc == want else
                "banks %s bootctl %s on the board; board.toml: banks %s bootctl %s (redeploy)"
                % (bc.get("banks"), bc.get("bootctl"), want["banks"], want["bootctl"]))
    if bootrec is not None:
        rep.facts["boot_record"] = bootrec
        rep.add("boot record", bootrec != "none", bootrec if bootrec != "none" else
                "no valid boot-control record in %s" % _hexr(spec.region("bootctl").offset, spec.region("bootctl").size))
    elif ota and ota.get("versions"):
        rep.add("version", True, "running %s" % ", ".join("%s v%s" % kv for kv in sorted(ota["versions"].items())))


def deployed_files(spec: boardspec.Board) -> list[str]:
    """What `hanota board deploy` puts in the filesystem root of this kind of board."""
    base = ["boot.py", "main.py", "hanota.json", "ota.json"]
    return base + (["bootcfg.json", "lib/bootctl.mpy"] if spec.bank_kind == "app" else [])


# ---------------------------------------------------------------- the whole visit

def doctor(port: str, board: str | None = None) -> Report:
    """Visit the board at `port` and check it against boards/<board>/board.toml (by default
    the real board whose port `sys.platform` names). DoctorError when nothing answers."""
    spec = boardspec.load_board(board) if board else None
    sess = _connect(port)
    try:
        return _visit(sess, port, spec)
    finally:
        sess.close()


def _visit(sess, port: str, spec: boardspec.Board | None) -> Report:
    # every module any board needs is probed, so the facts say what the firmware has
    # even when the board is guessed after the probe
    all_needs = {m for n in boardspec.board_names() for m in required_modules(boardspec.load_board(n))}
    facts = json.loads(_run(sess, _PROBE % (sorted(all_needs), _MARK)))
    if spec is None:
        name = guess_board(facts["platform"])
        if name is None:
            raise DoctorError("%s runs MicroPython for port %r, which no board.toml describes; give --board"
                              % (port, facts["platform"]))
        spec = boardspec.load_board(name)
    rep = Report(port=port, board=spec.name, facts=facts)
    check_identity(rep, spec, facts)
    check_modules(rep, required_modules(spec), facts["modules"], _port_facts(spec), spec.name)
    _visit_flash(sess, rep, spec, facts)
    root = facts["cwd"].rstrip("/") + "/"
    paths = [root + n for n in deployed_files(spec)] + [root + "lib/hanfw", "/rom/hanfw"]
    jsons = [root + n for n in ("hanota.json", "ota.json", "bootcfg.json")]
    files = json.loads(_run(sess, _FILES % (paths, jsons, _MARK)))
    rep.facts["files"] = files
    bootrec = None
    if spec.bank_kind == "app" and files["exists"].get(root + "lib/bootctl.mpy") and facts["modules"].get("nrf"):
        ctl = spec.region("bootctl")
        try:
            bootrec = _run(sess, _BOOTREC % (root + "lib", ctl.offset, ctl.size, _MARK))
        except HanotaError as e:
            bootrec = "unreadable: %s" % e
    check_deployed(rep, spec, root, files, bootrec)
    return rep


def _visit_flash(sess, rep: Report, spec: boardspec.Board, facts: dict) -> None:
    mod = "esp32" if spec.bank_kind == "firmware" else "nrf"
    if not facts["modules"].get(mod):
        rep.add("flash layout", False, "cannot read it: the firmware has no %r module (board %s needs it)"
                % (mod, spec.name))
        return
    flash = json.loads(_run(sess, (_ESP32 if mod == "esp32" else _NRF) % (_MARK,)))
    rep.facts["flash"] = flash
    (check_esp32_flash if mod == "esp32" else check_nrf_flash)(rep, spec, flash)


def render(rep: Report) -> list[str]:
    """The report as lines: one per check, then the verdict."""
    f = rep.facts
    lines = ["%s: MicroPython %s, port %s, board %s, %s bytes heap free; checked against boards/%s"
             % (rep.port, f.get("version"), f.get("platform"), f.get("machine", "?"), f.get("mem_free"), rep.board)]
    lines += ["  %-4s %-22s %s" % ("ok" if x.ok else "FAIL", x.check, x.detail) for x in rep.findings]
    bad = rep.problems
    lines.append("OK: everything hanota needs is there" if not bad else
                 "%d problem(s): %s" % (len(bad), ", ".join(x.check for x in bad)))
    return lines
