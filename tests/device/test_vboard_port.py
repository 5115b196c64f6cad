"""The virtual boards offer exactly the modules of the real port and identify as it does.

The port's facts are data: the [port] table of boards/<real board>/board.toml (with the port
source it comes from). A probe script runs on the virtual board's console through mpremote,
as on a USB board, and lists what imports; every module of the unix port the board process
runs must be accounted for (present or absent on the real port), so nothing the real port
lacks slips through.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from hanota.boardspec import load_board
from hanota.vboard.portspec import port_facts
from support.mpy import MPY_TESTS, micropython_cmd

MPREMOTE = str(Path(sys.executable).with_name("mpremote"))
PROBE = MPY_TESTS / "port_probe.py"


def unix_port_modules():
    """The modules the unix port (the board process) has built in or frozen."""
    out = subprocess.run([micropython_cmd(), "-c", "help('modules')"], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    names = set()
    for word in out.split():
        if word in ("Plus", "any", "modules", "on", "the", "filesystem"):
            continue
        names.add(word.split("/")[0])
    names.discard("__main__")
    return names


def probe(port, tmp_path, names, attrs):
    script = tmp_path / "probe.py"
    script.write_text(PROBE.read_text().replace("NAMES = []", "NAMES = %r" % sorted(names))
                      .replace("ATTRS = []", "ATTRS = %r" % sorted(attrs)))
    r = subprocess.run([MPREMOTE, "connect", port, "run", str(script)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("PORT-PROBE "))
    return json.loads(line[len("PORT-PROBE "):])


def check_board(board, port, tmp_path):
    facts = port_facts(load_board(board))
    unaccounted = unix_port_modules() - set(facts["modules"]) - set(facts["absent"])
    assert not unaccounted, ("modules of the board process's unix port that the [port] table "
                             "neither lists nor marks absent: %s" % sorted(unaccounted))
    names = set(facts["modules"]) | set(facts["absent"]) | set(facts["not_emulated"])
    attrs = set(facts["absent_attrs"])
    got = probe(port, tmp_path, names, attrs)
    assert got["platform"] == facts["platform"]
    assert got["uname"] is not None, "os.uname() is missing"
    sysname, nodename, release, _version, machine = got["uname"]
    assert (sysname, nodename, release, machine) == (
        facts["sysname"], facts["sysname"], facts["release"], facts["machine"])
    missing = sorted(n for n in facts["modules"] if not got["imports"][n])
    extra = sorted(n for n in facts["absent"] + facts["not_emulated"] if got["imports"][n])
    assert not missing and not extra, "missing on the board: %s; importable but not on the port: %s" % (
        missing, extra)
    present_attrs = sorted(a for a in attrs if got["attrs"][a])
    assert not present_attrs, "attributes the real port lacks: %s" % present_attrs
    return facts, got


def test_vboard_nrf52840_is_the_nrf_port(vboards, tmp_path):
    b = vboards("vboard-nrf52840")
    b.console.wait_ready(15)
    facts, got = check_board("vboard-nrf52840", b.console.pty_path, tmp_path)
    assert facts["platform"] == "nrf" and not got["imports"]["cryptolib"]
    assert not got["imports"]["esp32"] and not got["imports"]["network"]
    assert not got["attrs"]["machine.WDT"] and not got["attrs"]["time.gmtime"]


def test_vboard_esp32_is_the_esp32_port(vboards, vfirmware, tmp_path):
    from hanota import flasher
    b = vboards("vboard-esp32")
    flasher.flash_firmware(b.romloader.url, vfirmware["firmware"], board="vboard-esp32")
    b.console.wait_ready(15)
    facts, got = check_board("vboard-esp32", b.console.pty_path, tmp_path)
    assert facts["platform"] == "esp32" and got["imports"]["cryptolib"] and not got["imports"]["nrf"]


@pytest.mark.parametrize("table,words", [
    ('[port]\nboard = "nosuch"\n', "nosuch"),
    ('[port]\nplatform = "nrf"\n', "sysname"),
    ('[port]\nplatform = "x"\nsysname = "x"\nrelease = "1"\nmachine = "m"\nmodules = ["a"]\nabsent = ["a"]\n',
     "both present and absent"),
    ('[port]\nplatform = "x"\nsysname = "x"\nrelease = "1"\nmachine = "m"\nabsent_attrs = ["WDT"]\n',
     "module.name"),
])
def test_bad_port_tables_are_named(tmp_path, monkeypatch, table, words):
    from hanota.boardspec import LayoutError
    src = Path(__file__).resolve().parents[2] / "boards" / "vboard-nrf52840" / "board.toml"
    text = src.read_text()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "board.toml").write_text(text[:text.rindex("\n[port]") + 1] + table)
    monkeypatch.setenv("HANOTA_BOARDS", str(tmp_path))
    with pytest.raises(LayoutError, match=words):
        port_facts(load_board(tmp_path / "b" / "board.toml"))
