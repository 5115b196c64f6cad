"""CI for the on-board tier: each virtual board is used exactly as a USB board would be.

Started as a user starts it (`hanota vboard start --json`), flashed through its own path (ESP32:
the esptool CLI through the ROM loader with firmware from `hanota firmware build`; the virtual
nRF52840 comes up running MicroPython, as a board flashed with stock firmware does, and the
tier's OTA test deploys the app onto it with `hanota.deploy`), then
`pytest --board <console> --board-kind <kind> --link <link> tests/board` runs in a subprocess:
it must pass with at least 25 tests that ran on the board.
"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MIN_ON_BOARD = 25


def hanota(env, *args, timeout=120):
    r = subprocess.run([str(BIN / "hanota"), *args], capture_output=True, text=True, timeout=timeout, env=env)
    assert r.returncode == 0, "hanota %s: %s" % (" ".join(args), r.stdout + r.stderr)
    return r.stdout


def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def env(tmp_path, request):
    if request.config.getoption("--board"):
        pytest.skip("runs the on-board tier against virtual boards (give tests/board the --board instead)")
    e = dict(os.environ, HANOTA_HOME=str(tmp_path / "home"))
    yield e
    subprocess.run([str(BIN / "hanota"), "vboard", "stop", "--all"], env=e, capture_output=True, timeout=60)


def start_and_flash(env, tmp_path, kind):
    """Start a vboard of `kind` as a user would; flash it; returns (console, link for the tier)."""
    args = ["vboard", "start", "--board", "vboard-" + kind, "--name", "tier", "--json"]
    hub = None
    if kind == "esp32":
        hub = "127.0.0.1:%d" % free_udp_port()  # where the board's UDP link goes: the tier's hub
        args += ["--hub", hub]
    info = json.loads(hanota(env, *args))
    if kind == "esp32":
        out = tmp_path / "fw"
        hanota(env, "firmware", "build", "--board", "vboard-esp32", "--version", "1.0.0", "-o", str(out))
        r = subprocess.run([sys.executable, "-m", "esptool", "--chip", "esp32", "--port", info["rom_loader"],
                            "--before", "no-reset", "--after", "hard-reset", "write-flash", "0x1000",
                            str(out / "firmware.bin")], capture_output=True, text=True, timeout=120, env=env)
        assert r.returncode == 0 and "verified" in r.stdout, r.stdout + r.stderr
        return info["console"], "udp:" + hub
    return info["console"], info["link"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["esp32", "nrf52840"])
def test_on_board_tier_passes_on_the_virtual_board(env, tmp_path, kind):
    console, link = start_and_flash(env, tmp_path, kind)
    # its own --basetemp: the inner run must not prune the outer run's temporary folders
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider",
                        "--basetemp", str(tmp_path / "inner"),
                        "--board", console, "--board-kind", kind, "--link", link, "tests/board"],
                       capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    tail = r.stdout[-6000:] + r.stderr[-2000:]
    assert r.returncode == 0, tail
    m = re.search(r"^(\d+) tests ran on the board$", r.stdout, re.M)
    assert m, tail
    assert int(m.group(1)) >= MIN_ON_BOARD, tail
    assert " failed" not in r.stdout and " error" not in r.stdout, tail
    # the board is asked what it is: the wrong --board-kind is named, not run
    wrong = "nrf52840" if kind == "esp32" else "esp32"
    r = run_tier("--board", console, "--board-kind", wrong,
                 "tests/board/test_board_p256.py::test_key_id_is_the_sha256_prefix")
    module = "esp32" if wrong == "esp32" else "nrf"
    assert r.returncode != 0
    assert "--board-kind %s: the board on %s has no `%s` module" % (wrong, console, module) in r.stdout, \
        r.stdout[-3000:]


def run_tier(*args, timeout=120):
    base = tempfile.mkdtemp(prefix="hbt-inner-")  # not pytest's numbered folders (see above)
    try:
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", "-rs",
                               "--basetemp", base, *args], capture_output=True, text=True, timeout=timeout,
                              cwd=ROOT)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_without_board_the_tier_skips_saying_what_it_needs(request):
    if request.config.getoption("--board"):
        pytest.skip("checks the tier without --board")
    r = run_tier("tests/board/test_board_p256.py")
    assert r.returncode == 0, r.stdout[-3000:]
    assert "needs --board PORT" in r.stdout and " passed" not in r.stdout


def test_a_port_that_is_not_there_is_named(request):
    if request.config.getoption("--board"):
        pytest.skip("checks the tier against a missing port")
    r = run_tier("--board", "/dev/ttyNOSUCH", "tests/board/test_board_p256.py")
    assert r.returncode != 0
    assert "cannot open the board's serial port /dev/ttyNOSUCH" in r.stdout, r.stdout[-3000:]


def test_a_board_that_does_not_answer_is_named(request):
    if request.config.getoption("--board"):
        pytest.skip("checks the tier against a silent port")
    import pty
    master, slave = pty.openpty()
    try:
        path = os.ttyname(slave)
        r = run_tier("--board", path, "tests/board/test_board_p256.py::test_known_answer_verifies")
    finally:
        os.close(master)
        os.close(slave)
    assert r.returncode != 0
    assert "no MicroPython REPL answers on %s" % path in r.stdout, r.stdout[-3000:]
