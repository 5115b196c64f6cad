"""The device code and each real board's hal.py type-check against the published port stubs.

micropython-esp32-stubs and micropython-nrf-stubs (1.29.0.post1) are generated from the real
firmware, so a name the port lacks (cryptolib on the nRF, machine.WDT, a wrong argument) is a
pyright error. They are installed with `pip install --target` into .venv/stubs/<port>, one
folder per port (the packages cannot share one environment: both provide the same modules),
and pyright runs with tests/typecheck/pyright-<port>.json. Errors that allow.toml excuses,
each with its reason, pass; any other fails the test, listed.
"""
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
STUBS = ROOT / ".venv" / "stubs"
PINS = {  # the stub packages and the stdlib stubs they depend on, pinned
    "esp32": ["micropython-esp32-stubs==1.29.0.post1", "micropython-stdlib-stubs==1.29.0.post2"],
    "nrf": ["micropython-nrf-stubs==1.29.0.post1", "micropython-stdlib-stubs==1.29.0.post2"],
}
BOARDS = {"esp32": "esp32", "nrf": "nrf52840"}
KINDS = {"cpython-fallback", "other-port", "stub-bug", "not-port-api"}
PYRIGHT = Path(sys.executable).with_name("pyright")


def stubs_dir(port: str) -> Path:
    """.venv/stubs/<port> with the pinned stubs (installed once; safe for parallel workers)."""
    final = STUBS / port
    stamp = final / ".pins"
    want = "\n".join(PINS[port])
    if stamp.exists() and stamp.read_text() == want:
        return final
    STUBS.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=port + "-", dir=STUBS))
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        "--target", str(tmp), *PINS[port]], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError("installing the %s stubs failed:\n%s" % (port, r.stderr[-2000:]))
    (tmp / ".pins").write_text(want)
    old = STUBS / (".old-%s-%d" % (port, os.getpid()))
    if final.exists():
        final.rename(old)
    try:
        tmp.rename(final)
    except OSError:  # another worker won the race
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    return final


def load_allow():
    with open(HERE / "allow.toml", "rb") as f:
        entries = tomllib.load(f)["allow"]
    for e in entries:
        missing = {"port", "file", "rule", "message", "kind", "why"} - e.keys()
        assert not missing, "allow.toml entry %r lacks %s" % (e, sorted(missing))
        assert e["kind"] in KINDS, "allow.toml entry for %s: kind %r is not one of %s" % (
            e["file"], e["kind"], sorted(KINDS))
        assert e["port"] in ("esp32", "nrf", "both") and e["why"].strip()
    return entries


def pyright(port: str) -> dict:
    stubs_dir(port)
    r = subprocess.run([str(PYRIGHT), "-p", str(HERE / ("pyright-%s.json" % port)), "--outputjson"],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    out = r.stdout[r.stdout.find("{"):]  # the pip wrapper may print a notice first
    try:
        return json.loads(out)
    except ValueError:
        raise AssertionError("pyright gave no report (exit %d):\n%s\n%s" % (
            r.returncode, r.stdout[-2000:], r.stderr[-2000:])) from None


def matches(entry, port, diag):
    rel = os.path.relpath(diag["file"], ROOT)
    return (entry["port"] in (port, "both") and fnmatch.fnmatch(rel, entry["file"])
            and diag.get("rule") == entry["rule"] and entry["message"] in diag["message"])


@pytest.fixture(scope="module")
def reports():
    return {port: pyright(port) for port in PINS}


@pytest.mark.parametrize("port", sorted(PINS))
def test_device_code_and_hal_type_check_against_the_port_stubs(reports, port):
    report = reports[port]
    files = [os.path.relpath(p, ROOT) for p in (ROOT / "device").rglob("*.py")]
    assert report["summary"]["filesAnalyzed"] >= len(files) + 1, report["summary"]
    allow = load_allow()
    bad = []
    for d in report["generalDiagnostics"]:
        if d["severity"] != "error":
            continue
        if not any(matches(e, port, d) for e in allow):
            bad.append("%s:%d: %s [%s]" % (os.path.relpath(d["file"], ROOT), d["range"]["start"]["line"] + 1,
                                           d["message"].splitlines()[0], d.get("rule")))
    assert not bad, "%d pyright errors against the %s stubs (fix them, or excuse one in %s with its reason):\n%s" % (
        len(bad), port, HERE / "allow.toml", "\n".join(bad))


def test_every_allow_entry_still_excuses_something(reports):
    # (an entry for a file that is not in the tree is left alone: parallel work lands file by file)
    unused = [e for e in load_allow() if list(ROOT.glob(e["file"]))
              and not any(matches(e, port, d) for port in PINS for d in reports[port]["generalDiagnostics"])]
    assert not unused, "allow.toml entries that match no pyright error any more (remove them): %s" % [
        (e["port"], e["file"], e["message"]) for e in unused]


def test_the_stubs_are_the_ports(reports):
    # What the check rests on: the nrf stubs have no cryptolib and no machine.WDT, the esp32 ones do.
    nrf, esp = stubs_dir("nrf"), stubs_dir("esp32")
    assert not (nrf / "cryptolib.pyi").exists() and (esp / "cryptolib.pyi").exists()
    assert "class WDT" not in (nrf / "machine.pyi").read_text()
    assert "class WDT" in (esp / "machine.pyi").read_text()
    assert (nrf / "nrf.pyi").exists() and not (esp / "nrf.pyi").exists()


@pytest.mark.parametrize("port,names", [("nrf", ["cryptolib", "WDT", "gmtime"]), ("esp32", [])])
def test_a_name_the_port_lacks_is_an_error(tmp_path, port, names):
    (tmp_path / "probe.py").write_text("import cryptolib\nimport machine\nmachine.WDT(timeout=2000)\n"
                                       "import time\ntime.gmtime(0)\n")
    cfg = json.loads("\n".join(line for line in (HERE / ("pyright-%s.json" % port)).read_text().splitlines()
                               if not line.lstrip().startswith("//")))
    cfg.update(include=["probe.py"], extraPaths=[], stubPath=str(stubs_dir(port)),
               typeshedPath=str(stubs_dir(port)))
    (tmp_path / "pyrightconfig.json").write_text(json.dumps(cfg))
    r = subprocess.run([str(PYRIGHT), "-p", str(tmp_path), "--outputjson"], capture_output=True, text=True,
                       timeout=600, cwd=tmp_path)
    report = json.loads(r.stdout[r.stdout.find("{"):])
    found = sorted(d["message"].splitlines()[0] for d in report["generalDiagnostics"] if d["severity"] == "error")
    assert len(found) == len(names) and all(any(n in m for m in found) for n in names), found
