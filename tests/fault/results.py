"""Counts of the reliability and security tiers, and tests/fault/RESULTS.md.

Tests call `record(section, key, **counts)`; counts with the same section and key add up.
Records go to a folder shared by the pytest workers of one run (xdist's testrunuid), so
whichever worker finishes last sees them all and (re)writes RESULTS.md. The file keeps one
part per mode -- ``full`` (HANOTA_FAULT_FULL=1, `make fault` / `make fuzz`) and ``ci`` (the
stride `make test` samples) -- and a run merges its rows into its mode's part by their key
(bank kind, scenario, case...): it replaces the rows it produced and keeps every other row,
so running one test file leaves the rows of the others (and of earlier full runs). Each
row says which run it comes from (full or stride) and when that run wrote it; the data
behind the tables is kept in the file itself (a JSON comment).

A run that selects tests by keyword or marker writes nothing (its counts would be
partial); HANOTA_FAULT_RESULTS=0 turns writing off, =PATH writes elsewhere. A results file
whose data cannot be read is left as it is (the run says so) rather than rewritten.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS_MD = HERE / "RESULTS.md"
FULL = os.environ.get("HANOTA_FAULT_FULL", "") not in ("", "0")
MODE = "full" if FULL else "ci"
_DATA_TAG = "<!-- results-data "
_LABELS = {"full": "full", "ci": "stride"}  # how a row's run is named in the tables
_state = {"finished": False, "warned": False}
_T0 = time.time()  # about when the session started (conftests import this at collection)


def _run_id() -> str:
    rid = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if not rid:
        rid = os.environ.setdefault("HANOTA_FAULT_RUN", uuid.uuid4().hex)
    return rid


def run_dir() -> Path:
    d = Path(tempfile.gettempdir()) / ("hanota-results-" + _run_id())
    d.mkdir(parents=True, exist_ok=True)
    return d


def record(section: str, key, agg: str = "sum", **counts) -> None:
    """Add counts (numbers) under section/key; key is a string or a tuple of strings.
    agg="max" keeps the largest value instead (facts every worker measures again)."""
    key = [str(k) for k in key] if isinstance(key, (tuple, list)) else [str(key)]
    line = json.dumps({"section": section, "key": key, "counts": counts, "agg": agg})
    with open(run_dir() / ("%d.jsonl" % os.getpid()), "a") as f:
        f.write(line + "\n")


def collect(d: Path) -> dict:
    """{section: {key tuple: {count: total}}} of every record in d."""
    out: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(float)))
    for p in sorted(d.glob("*.jsonl")):
        for line in p.read_text().splitlines():
            with contextlib.suppress(ValueError, KeyError):
                r = json.loads(line)
                c = out[r["section"]][tuple(r["key"])]
                for k, v in r["counts"].items():
                    c[k] = max(c[k], v) if r.get("agg") == "max" else c[k] + v
    return out


def _wanted(config) -> str | None:
    target = os.environ.get("HANOTA_FAULT_RESULTS", "")
    if target == "0":
        return None
    opt = config.option
    if getattr(opt, "keyword", "") or getattr(opt, "markexpr", ""):
        return None
    if any("::" in str(a) for a in config.args):
        return None
    return target or str(RESULTS_MD)


def finish(session) -> None:
    """At the end of a worker's session: merge what this run recorded into RESULTS.md."""
    if _state["finished"]:
        return
    _state["finished"] = True
    write(session.config, complete=True)


def progress(config) -> None:
    """After each test: the same, marked as a run in progress (a long run that is
    interrupted still leaves its counts so far)."""
    if not _state["finished"]:
        write(config, complete=False)


def write(config, complete: bool) -> None:
    path = _wanted(config)
    d = run_dir()
    if path is None or not any(d.glob("*.jsonl")):
        return
    if complete:
        _prune(d)
    # one writer at a time per run (its pytest workers) and per results file (other runs)
    with open(d / ".lock", "w") as lock, open(_file_lock(Path(path)), "w") as flock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        fcntl.flock(flock, fcntl.LOCK_EX)
        now = collect(d)
        if "power-cut-runs" in now:
            for c in now["power-cut-runs"].values():
                if c.get("iterations"):
                    c["seconds per iteration"] = c["seconds"] / c["iterations"]
            wall = {"seconds": time.time() - _T0}
            now["power-cut-runs"][("(pytest session wall time)", "")] = wall
        try:
            data = load(Path(path))
        except ResultsError as e:
            if not _state["warned"]:
                _state["warned"] = True
                print("hanota fault results: %s; not rewritten" % e, file=sys.stderr)
            return
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        merge(data, MODE, now, stamp, complete)
        _replace(Path(path), render(data))


def merge(data: dict, mode: str, now: dict, stamp: str, complete: bool) -> dict:
    """Put a run's rows ({section: {key tuple: counts}}) into data's part for mode: a row
    with the same key is replaced, every other row is kept. Each row carries its run: the
    mode, when it was written and whether the run had finished."""
    part = data.setdefault(mode, {})
    run = {"mode": mode, "at": stamp, "complete": complete}
    for section, rows in now.items():
        kept = {tuple(r[0]): r for r in part.get(section, {}).get("rows", [])}
        for k, c in rows.items():
            kept[tuple(k)] = [list(k), {n: _num(v) for n, v in c.items()}, dict(run)]
        part[section] = {"rows": [kept[k] for k in sorted(kept)]}
    return data


def _file_lock(path: Path) -> Path:
    tag = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / ("hanota-fault-results-%s.lock" % tag)


def _replace(path: Path, text: str) -> None:
    """Write text to path through a new file renamed over it (an interrupted write leaves
    the old file)."""
    tmp = path.with_name(".%s.%d.tmp" % (path.name, os.getpid()))
    tmp.write_text(text)
    os.replace(tmp, path)


def _prune(keep: Path) -> None:
    """Remove record folders of earlier runs (older than a day)."""
    for d in Path(tempfile.gettempdir()).glob("hanota-results-*"):
        with contextlib.suppress(OSError):
            if d != keep and time.time() - d.stat().st_mtime > 86400:
                for p in d.iterdir():
                    p.unlink()
                d.rmdir()


def _num(v: float):
    return int(v) if float(v).is_integer() else round(v, 2)


class ResultsError(ValueError):
    """A results file that is there but whose data cannot be read."""


def load(path: Path) -> dict:
    """The data kept in a results file ({} if there is no file yet). Rows written before
    rows carried their run get the run their section's "updated" line named."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise ResultsError("%s: cannot be read (%s)" % (path, e)) from e
    if not text.strip():
        return {}
    try:
        i = text.index(_DATA_TAG)
        j = text.index("-->", i)
    except ValueError:
        raise ResultsError("%s: no data comment (%r ... -->) at its end; move the file away "
                           "or restore it" % (path, _DATA_TAG.strip())) from None
    try:
        data = json.loads(text[i + len(_DATA_TAG):j])
    except ValueError as e:
        raise ResultsError("%s: its data comment is not valid JSON (%s)" % (path, e)) from None
    if not isinstance(data, dict):
        raise ResultsError("%s: its data comment is not a JSON object" % path)
    for mode, part in data.items():
        for section, entry in part.items():
            try:
                _upgrade(mode, entry)
            except (TypeError, ValueError, KeyError, AttributeError, IndexError):
                raise ResultsError("%s: section %r of the %s part is not in the expected shape"
                                   % (path, section, mode)) from None
    return data


def _upgrade(mode: str, entry: dict) -> None:
    updated = entry.pop("updated", None)
    rows = entry["rows"]
    for r in rows:
        if len(r) == 2:  # written before rows carried their run
            at = str(updated or "?")
            r.append({"mode": mode, "at": at.replace(", run in progress", ""),
                      "complete": "run in progress" not in at})
        r[0], r[1] = list(r[0]), dict(r[1])
        if not isinstance(r[2], dict) or "at" not in r[2]:
            raise ValueError(r)


# ---------------------------------------------------------------- summary

def summary(data: dict, mode: str = MODE) -> list[str]:
    """A few lines of counts of one mode (what `make fault` / `make test` print)."""
    part = data.get(mode) or {}
    out = ["hanota fault/security results (%s run):" % _LABELS.get(mode, mode)]

    def rows(section):
        return [(r[0], r[1]) for r in part.get(section, {}).get("rows", [])]
    cuts: dict = defaultdict(lambda: defaultdict(int))
    for k, c in rows("power-cuts"):
        for n in ("tried", "recovered", "bricked", "inconsistent", "stuck"):
            cuts[(k[0], k[2])][n] += c.get(n, 0)
    for (kind, how), c in sorted(cuts.items()):
        out.append("  power cuts %-16s %-6s tried %5d  recovered %5d  bricked %d  "
                   "inconsistent %d  stuck %d" % (kind, how, c["tried"], c["recovered"],
                                                  c["bricked"], c["inconsistent"], c["stuck"]))
    t = [sum(c.get(n, 0) for _, c in rows("tamper")) for n in ("tried", "rejected")]
    if rows("tamper"):
        out.append("  tamper/policy cases tried %d  rejected with the named reason %d" % tuple(t))
    for k, c in rows("fuzz"):
        out.append("  fuzz %-8s %-10s executions %9d  crashes %d"
                   % (k[0], k[1], c.get("executions", 0), c.get("crashes", 0)))
    if rows("hub-abuse"):
        frames = sum(c.get("frames", 0) for _, c in rows("hub-abuse"))
        out.append("  hub abuse: %d cases, %d abusive frames" % (len(rows("hub-abuse")), frames))
    if rows("hub-kills"):
        k = [sum(c.get(n, 0) for _, c in rows("hub-kills"))
             for n in ("campaigns", "kills", "requests", "delivered_twice", "lost")]
        out.append("  hub kills: %d campaigns, %d kills, %d requests, delivered twice %d, "
                   "lost %d" % tuple(k))
    return out


# ---------------------------------------------------------------- rendering

_TITLES = {
    "power-cuts": "Power cuts",
    "power-cut-runs": "Power-cut sweeps: clean run sizes and cost",
    "tamper": "Tamper and policy cases",
    "fuzz": "Fuzzing",
    "hub-abuse": "Hub under abuse",
    "hub-kills": "Hub killed at random points",
}
_MODES = (("full", "Full run (`make fault`, `make fuzz`: every cut point, long fuzz budget)"),
          ("ci", "Stride run (`make test`: a fixed stride of cut points, short fuzz budget)"))


def render(data: dict) -> str:
    lines = ["# Reliability and security results", "",
             "Written by the fault and security tiers (`tests/fault/results.py`); do not edit.",
             "Power cuts: a cut before flash operation i of a clean update (torn: half of the",
             "write lands), the board boots again and must end on a verified image with a",
             "consistent boot-control state and the true outcome reported to the hub.",
             "*bricked* = no verified image runs; *inconsistent* = the boot-control state is",
             "not a rest state; *stuck* = a verified image runs but not the expected outcome.",
             "A run replaces the rows it produced (same key) and keeps the others; *run* says",
             "which run wrote a row (full or stride) and when.", ""]
    for mode, title in _MODES:
        part = data.get(mode)
        lines += ["## " + title, ""]
        if not part:
            lines += ["Not run yet.", ""]
            continue
        for section in ("power-cuts", "power-cut-runs", "tamper", "fuzz", "hub-abuse",
                        "hub-kills"):
            if section in part:
                lines += _table(section, part[section])
        for section in sorted(set(part) - set(_TITLES)):
            lines += _table(section, part[section])
    lines += [_DATA_TAG + json.dumps(data, sort_keys=True) + " -->", ""]
    return "\n".join(lines)


def _table(section: str, entry: dict) -> list[str]:
    rows = entry["rows"]
    keys = _KEYS.get(section, ["case"])
    cols: list[str] = []
    for _, c, _ in rows:
        for n in c:
            if n not in cols:
                cols.append(n)
    order = _COLS.get(section)
    if order:
        cols = [c for c in order if c in cols] + [c for c in cols if c not in order]
    out = ["### %s" % _TITLES.get(section, section), "",
           "| " + " | ".join(keys + cols + ["run"]) + " |",
           "|" + "---|" * (len(keys) + len(cols) + 1)]
    totals: dict = defaultdict(float)
    for k, c, run in rows:
        k = list(k) + [""] * (len(keys) - len(k))
        out.append("| " + " | ".join(k[:len(keys)] + [_fmt(c.get(n)) for n in cols]
                                     + [_run(run)]) + " |")
        for n in cols:
            if isinstance(c.get(n), (int, float)) and n in _SUMMED:
                totals[n] += c[n]
    if len(rows) > 1 and totals:
        out.append("| **total** " + "| " * (len(keys) - 1) + "| "
                   + " | ".join(_fmt(_num(totals[n])) if n in totals else "" for n in cols)
                   + " | |")
    return out + [""]


def _run(run: dict) -> str:
    """Which run a row comes from: full or stride, when, and whether it had finished."""
    return "%s, %s%s" % (_LABELS.get(run.get("mode"), run.get("mode")), run["at"],
                         "" if run.get("complete", True) else " (run in progress)")


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float) and not v.is_integer():
        return "%.2f" % v
    return str(int(v)) if isinstance(v, (int, float)) else str(v)


_KEYS = {
    "power-cuts": ["bank kind", "scenario", "cuts", "phase"],
    "power-cut-runs": ["bank kind", "scenario"],
    "tamper": ["bank kind", "case", "reason"],
    "fuzz": ["target", "engine"],
    "hub-abuse": ["case"],
    "hub-kills": ["campaign"],
}
_COLS = {
    "power-cuts": ["tried", "fired", "recovered", "bricked", "inconsistent", "stuck",
                   "resumed", "restarted", "seconds"],
    "power-cut-runs": ["clean run ops", "clean run seconds", "metadata writes", "iterations",
                       "seconds", "seconds per iteration"],
    "tamper": ["tried", "rejected"],
    "fuzz": ["executions", "seconds", "crashes", "corpus"],
    "hub-kills": ["campaigns", "kills", "requests", "activated", "delivered_twice", "lost"],
}
_SUMMED = {"tried", "fired", "recovered", "bricked", "inconsistent", "stuck", "resumed",
           "restarted", "seconds", "rejected", "executions", "crashes", "iterations",
           "frames", "dropped", "served", "campaigns", "kills", "requests", "activated",
           "delivered_twice", "lost", "kills while notifying", "kills while downloading",
           "kills while activating"}


if __name__ == "__main__":
    import sys
    print("\n".join(summary(load(RESULTS_MD), sys.argv[1] if len(sys.argv) > 1 else MODE)))
