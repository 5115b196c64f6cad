"""The virtual board through the real clients: hanota CLI, esptool, mpremote, a UDP/serial peer."""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hanota.vboard import linkrelay

BIN = Path(sys.executable).parent
HANOTA = str(BIN / "hanota")
MPREMOTE = str(BIN / "mpremote")
ESPTOOL = str(BIN / "esptool")

# Reads the running app's esp_app_desc_t version, as device code can on a real ESP32.
READ_VERSION = (
    "import esp32\n"
    "p = esp32.Partition(esp32.Partition.RUNNING)\n"
    "b = bytearray(4096)\n"
    "p.readblocks(0, b)\n"
    "print('running', p.info()[4], bytes(b[0x30:0x50]).split(b'\\x00')[0].decode())\n"
)


def cli(env, *args, timeout=60):
    return subprocess.run([HANOTA, *args], capture_output=True, text=True, timeout=timeout, env=env)


def mpremote(port, *args, timeout=30):
    r = subprocess.run([MPREMOTE, "connect", port, *args], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def read_console(path, seconds=1.5):
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    out = b""
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            try:
                out += os.read(fd, 4096)
            except BlockingIOError:
                time.sleep(0.05)
    finally:
        os.close(fd)
    return out.decode(errors="replace")


@pytest.fixture
def env(tmp_path, request):
    if request.config.getoption("--board"):
        pytest.skip("virtual-board CLI test")
    e = dict(os.environ, HANOTA_HOME=str(tmp_path / "home"))
    yield e
    subprocess.run([HANOTA, "vboard", "stop", "--all"], env=e, capture_output=True, timeout=60)


def test_cli_fresh_chip_flash_boot_and_read_back_version(env, vfirmware, tmp_path):
    r = cli(env, "vboard", "start", "--board", "vboard-esp32", "--name", "ppmid1", "--role", "ppmid", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert {"name", "console", "link", "rom_loader", "dir"} <= info.keys()
    assert info["name"] == "ppmid1" and info["rom_loader"].startswith("socket://127.0.0.1:")
    assert info["link"].startswith("udp:127.0.0.1:")
    # a fresh chip: nothing to boot, but the ROM loader answers
    assert "invalid header: 0xffffffff" in read_console(info["console"])
    r = subprocess.run([ESPTOOL, "--chip", "esp32", "-p", info["rom_loader"], "--before", "no-reset",
                        "--after", "no-reset", "read-mac"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "MAC:" in r.stdout, r.stdout + r.stderr
    listed = json.loads(cli(env, "vboard", "list", "--json").stdout)
    assert [b["name"] for b in listed] == ["ppmid1"] and listed[0]["running"]
    # program the virtual firmware through the ROM loader, as on a real board
    r = cli(env, "board", "flash", "--board", "vboard-esp32", "--port", info["rom_loader"],
            "--firmware", str(vfirmware["firmware"]))
    assert r.returncode == 0 and "verified" in r.stdout, r.stdout + r.stderr
    out = mpremote(info["console"], "exec", READ_VERSION)
    assert "running ota_0 1.0.0" in out
    r = cli(env, "vboard", "stop", "ppmid1")
    assert r.returncode == 0 and "stopped" in r.stdout
    listed = json.loads(cli(env, "vboard", "list", "--json").stdout)
    assert listed[0]["running"] is False
    pid = info["pid"]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_cli_errors_are_named(env):
    r = cli(env, "vboard", "stop")
    assert r.returncode == 1 and "NAME or --all" in r.stderr
    r = cli(env, "vboard", "console", "nosuch")
    assert r.returncode == 2 and "no virtual board" in r.stderr
    r = cli(env, "board", "flash", "--board", "esp32", "--port", "socket://127.0.0.1:9", "--firmware", __file__)
    assert r.returncode == 2 and "ESP image header" in r.stderr
    r = cli(env, "vboard", "start", "--name", "x", "--torn")
    assert r.returncode == 1 and "--power-cut-at" in r.stderr


def test_flash_unreachable_port_is_a_clear_error(env, vfirmware):
    r = cli(env, "board", "flash", "--board", "esp32", "--port", "/dev/ttyNOSUCH",
            "--firmware", str(vfirmware["firmware"]))
    assert r.returncode == 2 and "cannot reach" in r.stderr and "/dev/ttyNOSUCH" in r.stderr


def test_esptool_erase_flash_leaves_a_fresh_chip(vboards, vfirmware):
    from hanota import flasher
    b = vboards()
    flasher.flash_firmware(b.romloader.url, vfirmware["firmware"], board="vboard-esp32")
    b.console.wait_ready(10)
    r = subprocess.run([ESPTOOL, "--chip", "esp32", "-p", b.romloader.url, "--before", "no-reset",
                        "erase-flash"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "invalid header: 0xffffffff" in read_console(b.console.pty_path)
    assert b.flash_path.read_bytes().count(b"\xff") == b.flash_path.stat().st_size


def test_mpremote_and_ampy_on_the_esp32_littlefs(vboards, vfirmware, tmp_path):
    from hanota import flasher
    b = vboards()
    flasher.flash_firmware(b.romloader.url, vfirmware["firmware"], board="vboard-esp32")
    b.console.wait_ready(10)
    port = b.console.pty_path
    src = tmp_path / "data.bin"
    src.write_bytes(os.urandom(3000))
    mpremote(port, "mkdir", ":d")
    mpremote(port, "cp", str(src), ":d/data.bin")
    back = tmp_path / "back.bin"
    mpremote(port, "cp", ":d/data.bin", str(back))
    assert back.read_bytes() == src.read_bytes()
    assert "data.bin" in mpremote(port, "ls", ":d")
    import hashlib
    assert hashlib.sha256(src.read_bytes()).hexdigest() in mpremote(port, "sha256sum", ":d/data.bin")
    r = subprocess.run([str(BIN / "ampy"), "-p", port, "ls"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "/d" in r.stdout, r.stderr
    mpremote(port, "rm", ":d/data.bin")
    # the file system lives in the emulated flash: gone after rm, across a power cycle
    b.power_cycle()
    b.console.wait_ready(10)
    assert "data.bin" not in mpremote(port, "ls", ":d")


def test_nrf52840_board_console_and_filesystem(vboards, tmp_path):
    b = vboards("vboard-nrf52840")
    b.console.wait_ready(10)
    port = b.console.pty_path
    out = mpremote(port, "exec", "import os; print(os.getcwd(), os.listdir('/flash'))")
    assert out.startswith("/flash")
    f = tmp_path / "x.txt"
    f.write_text("kept in flash")
    mpremote(port, "cp", str(f), ":x.txt")
    b.power_cycle()
    b.console.wait_ready(10)
    assert "kept in flash" in mpremote(port, "exec", "print(open('/flash/x.txt').read())")


def test_udp_link_endpoint_reaches_the_hub_and_back(vboards, vfirmware):
    from hanota import flasher
    hub = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    hub.bind(("127.0.0.1", 0))
    hub.settimeout(10)
    b = vboards(hub=hub.getsockname())
    flasher.flash_firmware(b.romloader.url, vfirmware["firmware"], board="vboard-esp32")
    b.console.wait_ready(10)
    code = ("import os, socket\n"
            "k, h, p = os.getenv('HANOTA_VB_LINK').split(':')\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "s.sendto(b'ping', socket.getaddrinfo(h, int(p))[0][-1])\n"
            "print(s.recv(64))\n")
    proc = subprocess.Popen([MPREMOTE, "connect", b.console.pty_path, "exec", code],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    data, addr = hub.recvfrom(64)
    assert data == b"ping"
    hub.sendto(b"pong", addr)
    out, err = proc.communicate(timeout=30)
    assert "b'pong'" in out, err
    hub.close()


def test_serial_link_endpoint_is_a_pty_pair(vboards):
    b = vboards("vboard-nrf52840")
    b.console.wait_ready(10)
    host = os.open(b.info.link, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        code = ("import machine, time\n"
                "u = machine.UART(1, 115200)\n"
                "u.write(b'\\xc0hello\\xc0')\n"
                "got = b''\n"
                "for i in range(500):\n"
                "    got += u.read(4) or b''\n"
                "    if len(got) >= 4: break\n"
                "    time.sleep_ms(10)\n"
                "print(got)\n")
        proc = subprocess.Popen([MPREMOTE, "connect", b.console.pty_path, "exec", code],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        got = b""
        end = time.monotonic() + 10
        while b"hello" not in got and time.monotonic() < end:
            try:
                got += os.read(host, 64)
            except BlockingIOError:
                time.sleep(0.02)
        assert b"\xc0hello\xc0" in got
        os.write(host, b"back")
        out, err = proc.communicate(timeout=30)
        assert "b'back'" in out, err
    finally:
        os.close(host)


def test_power_cut_restarts_the_board_from_its_flash(vboards):
    b = vboards("vboard-nrf52840")
    b.console.wait_ready(10)
    ops = b.counters()["ops"]
    from hanota.vboard.rt import vflash
    vflash.schedule_cut(str(b.ctl_path), ops + 3)
    proc = subprocess.Popen([MPREMOTE, "connect", b.console.pty_path, "exec",
                             "f = open('/flash/big.txt', 'w')\nfor i in range(200): f.write('x' * 200)\nf.close()"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while not any(k == "exited" and d == "power" for _, k, d in b.events) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()  # like a USB-serial adapter, the console stays; mpremote waits for output forever
    proc.wait()
    assert any(k == "exited" and d == "power" for _, k, d in b.events)
    b.console.wait_ready(10)
    c = b.counters()
    assert c["last_cut"] == ops + 3 and not c["dead"]
    assert "ok" in mpremote(b.console.pty_path, "exec", "import os; os.listdir('/flash'); print('ok')")


def test_pacer_rate_and_latency():
    p = linkrelay._Pacer(rate=1000, latency=0.05)
    assert p.due(10.0, 100) == pytest.approx(10.15)  # 0.1 s on the wire + 0.05 s latency
    assert p.due(10.0, 100) == pytest.approx(10.25)  # queued behind the first
    assert p.due(11.0, 10) == pytest.approx(11.06)  # the link was idle again
    assert linkrelay._Pacer(None, 0.0).due(5.0, 10 ** 6) == 5.0


def _micropython_children():
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                env = (d / "environ").read_bytes()
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if b"HANOTA_VB_FLASH=" in env and int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid():
                pids.append(int(d.name))
    return pids


def test_no_leftover_processes_or_ptys(vboards):
    before = set(os.listdir("/proc/self/fd"))
    b1 = vboards("vboard-esp32")
    b2 = vboards("vboard-nrf52840")
    b2.console.wait_ready(10)
    assert _micropython_children() or b1.console.child_pid is None
    b1.stop()
    b2.stop()
    time.sleep(0.2)
    assert _micropython_children() == []
    assert set(os.listdir("/proc/self/fd")) <= before


def test_board_process_dies_with_its_supervisor(tmp_path, request):
    if request.config.getoption("--board"):
        pytest.skip("virtual boards only")
    code = ("import sys, time\n"
            "from hanota.vboard.board import VirtualBoard\n"
            "b = VirtualBoard(sys.argv[1], board='vboard-nrf52840').start()\n"
            "b.console.wait_ready(20)\n"
            "print(b.console.child_pid, flush=True)\n"
            "time.sleep(600)\n")
    sup = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "b")], stdout=subprocess.PIPE, text=True)
    child = int(sup.stdout.readline())
    os.kill(child, 0)
    sup.kill()  # SIGKILL: no clean-up code runs in the supervisor
    sup.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("board process %d outlived its supervisor" % child)
