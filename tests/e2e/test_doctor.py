"""`hanota board doctor` on virtual boards through their console, as on a USB board."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hanota import deploy, flasher
from hanota.keys import generate_keys
from hanota.vboard import layout
from hanota.vboard.rt import espfmt

HANOTA = str(Path(sys.executable).parent / "hanota")


def doctor(port, *args, timeout=120):
    r = subprocess.run([HANOTA, "board", "doctor", port, *args], capture_output=True, text=True,
                       timeout=timeout)
    return r


def doctor_json(port, *args):
    r = doctor(port, "--json", *args)
    assert r.returncode in (0, 1), r.stdout + r.stderr
    rep = json.loads(r.stdout)
    return r.returncode, rep, {f["check"]: f for f in rep["findings"]}


def assert_healthy(rc, rep, by, platform):
    """Everything is there, and the board identifies as its real port."""
    bad = [f for f in rep["findings"] if not f["ok"]]
    assert rc == 0 and rep["ok"] and not bad, bad
    assert by["port"]["ok"] and rep["facts"]["platform"] == platform


@pytest.fixture
def keys(tmp_path):
    generate_keys(tmp_path / "keys")
    return tmp_path / "keys"


def esp32_board(vboards, vfirmware, keys, table=None):
    """A vboard-esp32 with the firmware flashed (and, given `table`, that partition table
    written over the one in the firmware image), deployed as a ppmid."""
    b = vboards("vboard-esp32")
    flasher.flash_firmware(b.romloader.url, vfirmware["firmware"], board="vboard-esp32")
    b.console.wait_ready(15)
    if table is not None:
        layout.flash_write(b.flash_path, 0x8000, table)
        b.power_cycle()
        b.console.wait_ready(15)
    # after deploy's reset the board runs the app (its REPL is not idle); the doctor's raw
    # REPL interrupts it, as mpremote does on a USB board
    deploy.deploy(b.console.pty_path, "vboard-esp32", "ppmid", [keys / "public.bin"], version=1)
    return b


def test_healthy_vboard_esp32_is_ok(vboards, vfirmware, keys):
    b = esp32_board(vboards, vfirmware, keys)
    rc, rep, by = doctor_json(b.console.pty_path, "--board", "vboard-esp32")
    assert_healthy(rc, rep, by, "esp32")
    assert rep["facts"]["version"].startswith("1.") and rep["facts"]["mem_free"] > 0
    assert by["partition table"]["ok"] and "running ota_0" in by["partition table"]["detail"]
    assert by["modules"]["ok"] and "esp32" in by["modules"]["detail"]
    assert by["deployed files"]["ok"] and by["hanota.json"]["detail"].startswith("role ppmid")
    text = doctor(b.console.pty_path, "--board", "vboard-esp32")
    assert text.returncode == rc and "ok   partition table" in text.stdout
    assert "OK: everything hanota needs is there" in text.stdout


def test_healthy_vboard_nrf52840_is_ok(vboards, keys):
    b = vboards("vboard-nrf52840")
    b.console.wait_ready(15)
    deploy.deploy(b.console.pty_path, "vboard-nrf52840", "althan", [keys / "public.bin"], version=1)
    rc, rep, by = doctor_json(b.console.pty_path, "--board", "vboard-nrf52840")
    assert_healthy(rc, rep, by, "nrf")
    assert by["region fs"]["ok"] and "0xb4000" in by["region fs"]["detail"]
    assert by["region bootctl"]["ok"] and by["region app_a"]["ok"] and by["region app_b"]["ok"]
    assert by["bootcfg.json"]["ok"] and by["boot record"]["ok"]


def test_a_missing_module_is_named(vboards, vfirmware, keys):
    # checked against the nRF52840's board.toml, an ESP32 lacks what the nRF board code imports
    b = esp32_board(vboards, vfirmware, keys)
    r = doctor(b.console.pty_path, "--board", "nrf52840")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAIL module nrf" in r.stdout and "boards/nrf52840/hal.py" in r.stdout
    assert "no 'nrf' module" in r.stdout  # and so the flash layout cannot be read
    assert "FAIL port" in r.stdout and "needs 'nrf'" in r.stdout
    assert "FAIL board" in r.stdout and "'XIAO nRF52840 Sense with NRF52840'" in r.stdout


def test_a_wrong_partition_table_is_named(vboards, vfirmware, keys):
    spec = layout.load_board("vboard-esp32")
    entries = [e if e[4] != "ota_1" else (e[0], e[1], e[2], 0x100000, e[4], e[5])
               for e in layout.partition_entries(spec)]
    b = esp32_board(vboards, vfirmware, keys, table=espfmt.pack_table(entries))
    rc, rep, by = doctor_json(b.console.pty_path, "--board", "vboard-esp32")
    assert rc == 1 and not by["partition ota_1"]["ok"]
    assert "0x190000..0x290000" in by["partition ota_1"]["detail"]  # what the board has
    assert "0x190000..0x310000" in by["partition ota_1"]["detail"]  # what board.toml says
    assert [f["check"] for f in rep["findings"] if not f["ok"]] == ["partition ota_1"]  # nothing else


def test_a_port_with_nothing_on_it_exits_2_naming_it(tmp_path):
    r = doctor("/dev/ttyNOSUCH")
    assert r.returncode == 2 and "/dev/ttyNOSUCH" in r.stderr and "nothing answers" in r.stderr
    # a serial device that is there but never answers a REPL
    master, slave = os.openpty()
    try:
        name = os.ttyname(slave)
        r = doctor(name)
        assert r.returncode == 2 and name in r.stderr, r.stdout + r.stderr
    finally:
        os.close(master)
        os.close(slave)


def test_deploy_wifi_credentials_reach_hanota_json(vboards, vfirmware, keys):
    # what the ESP32's hal.link reads (cfg.wifi ssid/key); the doctor shows the file as deployed
    b = vboards("vboard-esp32")
    flasher.flash_firmware(b.romloader.url, vfirmware["firmware"], board="vboard-esp32")
    b.console.wait_ready(15)
    r = subprocess.run([HANOTA, "board", "deploy", "--board", "vboard-esp32", "--port", b.console.pty_path,
                        "--role", "ppmid", "--key", str(keys / "public.bin"), "--wifi", "HanLab",
                        "--wifi-key", "s3cret pass"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    # the board runs the app after deploy's reset; the doctor's raw REPL interrupts it
    _rc, rep, _by = doctor_json(b.console.pty_path, "--board", "vboard-esp32")
    cfg = rep["facts"]["files"]["json"][rep["facts"]["cwd"].rstrip("/") + "/hanota.json"]
    assert cfg["wifi"] == {"ssid": "HanLab", "key": "s3cret pass"}
    r = subprocess.run([HANOTA, "board", "deploy", "--board", "vboard-esp32", "--port", b.console.pty_path,
                        "--role", "ppmid", "--key", str(keys / "public.bin"), "--wifi-key", "x"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "--wifi-key goes with --wifi" in r.stderr


def test_without_board_the_real_board_of_the_port_is_used(vboards, keys):
    # the virtual nRF52840 identifies as the real port ("nrf") and has the real board's layout
    b = vboards("vboard-nrf52840")
    b.console.wait_ready(15)
    deploy.deploy(b.console.pty_path, "nrf52840", "ppmid", [keys / "public.bin"], version=1)
    rc, rep, _by = doctor_json(b.console.pty_path)
    assert rep["board"] == "nrf52840" and rc == 0, [f for f in rep["findings"] if not f["ok"]]
